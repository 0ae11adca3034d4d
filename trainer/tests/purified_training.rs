//! Training the classifier behind a fixed purifier (`Objective::PurifiedClassifier`):
//! validation sees purified images, adversarial training through the purifier's exact
//! gradient makes the defended system more robust than a classifier trained without
//! it, a resumed run ends with the weights of an uninterrupted one, and a purifier
//! that does not fit the data is an error.

mod common;

use pursamere_core::{noise::NoiseGenerator, Norm, PurifierConfig, StepRule};
use pursamere_trainer::attack::{
    argmax, pgd, AttackNorm, GradientOracle, PurifiedOracle, PurifierGradient,
};
use pursamere_trainer::model::{DeviceNet, FloatNet};
use pursamere_trainer::train::{
    evaluate, fresh_checkpoint, train, AdversarialMethod, AdversarialTraining, Dev, InLoopPurifier,
    Objective, RunOptions, TrainConfig, TrainError,
};

/// A residual denoiser on 6×6 images and a short L∞ purification.
fn purifier() -> InLoopPurifier {
    InLoopPurifier::new(
        FloatNet::mlp(&[36, 24, 36], true, 0.5, 21),
        PurifierConfig {
            sigma: 0.3,
            noise_samples: 1,
            iters: 3,
            eta: 0.2,
            rho: 0.0,
            radius: 0.1,
            norm: Norm::Linf,
            step: StepRule::Gradient,
            seed: 5,
            noise: NoiseGenerator::BoxMullerF32,
        },
    )
}

fn at() -> AdversarialTraining {
    AdversarialTraining {
        method: AdversarialMethod::Pgd,
        norm: AttackNorm::Linf,
        eps: 0.4,
        steps: 5,
        step_size: 0.5,
        random_start: true,
        warmup_epochs: 1,
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr: 3e-3,
        seed: 4,
        ..Default::default()
    }
}

fn pixels(data: &pursamere_trainer::data::Dataset) -> (Vec<f32>, Vec<usize>) {
    let x = (0..data.len())
        .flat_map(|i| data.image_f32(i).unwrap())
        .collect();
    (x, data.labels.iter().map(|&l| usize::from(l)).collect())
}

/// Accuracy of `classifier` behind the purifier at the PGD points of the whole
/// system (exact gradient through the purification).
fn defended_pgd_accuracy(classifier: &FloatNet, x: &[f32], y: &[usize]) -> f32 {
    let p = purifier();
    let oracle = PurifiedOracle::new(
        p.denoiser(),
        classifier,
        36,
        p.config(),
        PurifierGradient::Full,
    );
    let cfg = pursamere_trainer::attack::PgdConfig {
        steps: 20,
        ..at().pgd_config(0.4, 77)
    };
    let xa = pgd(&oracle, x, y, &cfg);
    let z = oracle.logits(&xa);
    let ok = z.chunks(3).zip(y).filter(|(z, &l)| argmax(z) == l).count();
    ok as f32 / y.len() as f32
}

#[test]
fn validation_accuracy_is_the_classifiers_on_purified_images() {
    let (net, x, y) = common::trained_classifier();
    let data = common::synthetic(600, 6, 3, 2);
    let (_, val) = data.split_validation(120, 0).unwrap();
    let p = purifier();
    let oracle = PurifiedOracle::new(p.denoiser(), &net, 36, p.config(), PurifierGradient::Bpda);
    let z = oracle.logits(&x);
    let manual =
        z.chunks(3).zip(&y).filter(|(z, &l)| argmax(z) == l).count() as f32 / y.len() as f32;
    let dev = Dev::seed_from_u64(0);
    let dn = DeviceNet::<f32, Dev>::from_float(&net, &dev);
    let behind = Objective::PurifiedClassifier {
        classes: 3,
        adversarial: None,
        purifier: p,
    };
    let (_, acc) = evaluate(&dev, &dn, &behind, &val, 1);
    assert_eq!(acc, Some(manual));
    // Not vacuous: the purifier moves the images, so the classifier's logits at them
    // differ from its logits at the images themselves.
    let logits_at_x = pursamere_trainer::attack::ClassifierOracle::new(&net, 36).logits(&x);
    assert_ne!(logits_at_x, z, "the purifier left every image unchanged");
}

#[test]
fn adversarial_training_through_the_purifier_makes_the_defended_system_more_robust() {
    let data = common::synthetic(800, 6, 3, 5);
    let (tr, val) = data.split_validation(200, 0).unwrap();
    let net = || FloatNet::mlp(&[36, 32, 3], false, 1.0, 7);
    let standard = train(
        fresh_checkpoint(Objective::Classifier { classes: 3 }, config(10), net()),
        &tr,
        &val,
        &RunOptions::default(),
    )
    .unwrap();
    let behind = train(
        fresh_checkpoint(
            Objective::PurifiedClassifier {
                classes: 3,
                adversarial: Some(at()),
                purifier: purifier(),
            },
            config(10),
            net(),
        ),
        &tr,
        &val,
        &RunOptions::default(),
    )
    .unwrap();
    let (x, y) = pixels(&val);
    let base = defended_pgd_accuracy(&standard.net, &x, &y);
    let acc = defended_pgd_accuracy(&behind.net, &x, &y);
    let clean = behind.history.last().unwrap().val_accuracy.unwrap();
    eprintln!("defended PGD accuracy {acc} (standard classifier {base}), clean {clean}");
    assert!(acc > base + 0.1, "{acc} vs standard {base}");
    assert!(clean > 0.5, "clean accuracy behind the purifier {clean}");
}

#[test]
fn resumed_training_behind_the_purifier_gives_identical_weights() {
    let data = common::synthetic(240, 6, 3, 6);
    let (tr, val) = data.split_validation(60, 0).unwrap();
    let start = fresh_checkpoint(
        Objective::PurifiedClassifier {
            classes: 3,
            adversarial: Some(at()),
            purifier: purifier(),
        },
        config(2),
        FloatNet::mlp(&[36, 16, 3], false, 1.0, 3),
    );
    let (whole, ck, resumed) = common::whole_and_resumed(&start, &tr, &val);
    assert_eq!(ck.epochs_done, 1);
    // The purifier comes back from the checkpoint as it went in.
    assert_eq!(ck.objective, start.objective);
    assert_eq!(resumed.net, whole.net);
    assert_eq!(resumed.adam_t, whole.adam_t);
}

#[test]
fn a_purifier_that_does_not_fit_the_images_is_an_error() {
    let data = common::synthetic(100, 6, 3, 6);
    let (tr, val) = data.split_validation(20, 0).unwrap();
    let p = purifier();
    let wrong = InLoopPurifier::new(FloatNet::mlp(&[49, 8, 49], true, 0.5, 1), p.config());
    let bad_config = InLoopPurifier::new(
        p.denoiser().clone(),
        PurifierConfig {
            eta: -1.0,
            ..p.config()
        },
    );
    for (purifier, what) in [(wrong, "denoiser"), (bad_config, "purifier in front")] {
        let ck = fresh_checkpoint(
            Objective::PurifiedClassifier {
                classes: 3,
                adversarial: None,
                purifier,
            },
            config(1),
            FloatNet::mlp(&[36, 8, 3], false, 1.0, 3),
        );
        match train(ck, &tr, &val, &RunOptions::default()) {
            Err(TrainError::Config(m)) => assert!(m.contains(what), "{m}"),
            other => panic!(
                "expected a configuration error, got {:?}",
                other.map(|c| c.epochs_done)
            ),
        }
    }
}
