//! Adversarial training: it raises PGD accuracy over standard training on generated
//! data, and a resumed run ends with exactly the weights of an uninterrupted one.

mod common;

use pursamere_trainer::attack::AttackNorm;
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{
    fresh_checkpoint, pgd_accuracy, train, AdversarialMethod, AdversarialTraining, Dev, Objective,
    RunOptions, TrainConfig,
};

fn at(method: AdversarialMethod) -> AdversarialTraining {
    AdversarialTraining {
        method,
        norm: AttackNorm::Linf,
        eps: 0.33,
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

#[test]
fn adversarial_training_raises_pgd_accuracy() {
    let data = common::synthetic(800, 6, 3, 5);
    let (tr, val) = data.split_validation(200, 0).unwrap();
    let net = || FloatNet::mlp(&[36, 32, 3], false, 1.0, 7);
    let dev = Dev::seed_from_u64(0);
    let attack = at(AdversarialMethod::Pgd);
    let measure = |n: &FloatNet| {
        let dn = pursamere_trainer::model::DeviceNet::<f32, Dev>::from_float(n, &dev);
        pgd_accuracy(&dev, &dn, &attack, &val, 200, 99)
    };
    let standard = train(
        fresh_checkpoint(Objective::Classifier { classes: 3 }, config(10), net()),
        &tr,
        &val,
        &RunOptions::default(),
    )
    .unwrap();
    let base = measure(&standard.net);
    for method in [
        AdversarialMethod::Pgd,
        AdversarialMethod::Trades { beta: 6.0 },
    ] {
        let robust = train(
            fresh_checkpoint(
                Objective::RobustClassifier {
                    classes: 3,
                    adversarial: at(method),
                },
                config(10),
                net(),
            ),
            &tr,
            &val,
            &RunOptions::default(),
        )
        .unwrap();
        let acc = measure(&robust.net);
        let clean = robust.history.last().unwrap().val_accuracy.unwrap();
        eprintln!("{method:?}: PGD accuracy {acc} (standard {base}), clean {clean}");
        assert!(acc > base + 0.1, "{method:?}: {acc} vs standard {base}");
        assert!(clean > 0.5, "{method:?}: clean accuracy {clean}");
    }
}

#[test]
fn resumed_adversarial_training_gives_identical_weights() {
    let data = common::synthetic(300, 6, 3, 6);
    let (tr, val) = data.split_validation(60, 0).unwrap();
    let start = fresh_checkpoint(
        Objective::RobustClassifier {
            classes: 3,
            adversarial: at(AdversarialMethod::Trades { beta: 3.0 }),
        },
        config(3),
        FloatNet::mlp(&[36, 16, 3], false, 1.0, 3),
    );
    let (whole, ck, resumed) = common::whole_and_resumed(&start, &tr, &val);
    assert_eq!(ck.epochs_done, 1);
    assert_eq!(resumed.net, whole.net);
    assert_eq!(resumed.adam_t, whole.adam_t);
    // Every figure of the history but the measured throughput.
    let figures = |h: &[pursamere_trainer::train::EpochStats]| {
        h.iter()
            .map(|e| (e.epoch, e.train_loss, e.val_loss, e.val_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&resumed.history), figures(&whole.history));
}

#[test]
fn bad_adversarial_settings_are_errors() {
    let data = common::synthetic(100, 6, 3, 6);
    let (tr, val) = data.split_validation(20, 0).unwrap();
    for (adv, msg) in [
        (
            AdversarialTraining {
                eps: f32::NAN,
                ..at(AdversarialMethod::Pgd)
            },
            "ε",
        ),
        (
            AdversarialTraining {
                steps: 0,
                ..at(AdversarialMethod::Pgd)
            },
            "step",
        ),
        (at(AdversarialMethod::Trades { beta: -1.0 }), "β"),
        (
            at(AdversarialMethod::PgdMax {
                second_eps: f32::INFINITY,
            }),
            "second adversarial ε",
        ),
    ] {
        let ck = fresh_checkpoint(
            Objective::RobustClassifier {
                classes: 3,
                adversarial: adv,
            },
            config(1),
            FloatNet::mlp(&[36, 8, 3], false, 1.0, 3),
        );
        let e = train(ck, &tr, &val, &RunOptions::default()).unwrap_err();
        assert!(e.to_string().contains(msg), "{e}");
    }
}

#[test]
fn the_second_threat_is_the_other_norm_scaled_by_the_warm_up() {
    let max = at(AdversarialMethod::PgdMax { second_eps: 1.5 });
    assert!(at(AdversarialMethod::Pgd)
        .second_pgd_config(0.33, 1)
        .is_none());
    let full = max.second_pgd_config(0.33, 1).unwrap();
    assert_eq!(full.norm, AttackNorm::L2);
    assert_eq!(full.eps, 1.5);
    assert_eq!(full.step_size, 0.5 * 1.5);
    assert!(full.random_start);
    // Half-way through the warm-up both radii are halved.
    let half = max.second_pgd_config(0.165, 1).unwrap();
    assert!((half.eps - 0.75).abs() < 1e-6, "{}", half.eps);
    let l2_first = AdversarialTraining {
        norm: AttackNorm::L2,
        eps: 1.5,
        ..at(AdversarialMethod::PgdMax { second_eps: 0.3 })
    };
    let other = l2_first.second_pgd_config(1.5, 1).unwrap();
    assert_eq!((other.norm, other.eps), (AttackNorm::Linf, 0.3));
}

/// L∞ 0.33 and L2 2.0 on 6×6 images.
#[test]
fn max_training_raises_accuracy_against_both_threats() {
    let data = common::synthetic(800, 6, 3, 5);
    let (tr, val) = data.split_validation(200, 0).unwrap();
    let net = || FloatNet::mlp(&[36, 32, 3], false, 1.0, 7);
    let dev = Dev::seed_from_u64(0);
    let both = at(AdversarialMethod::PgdMax { second_eps: 2.0 });
    let measure = |n: &FloatNet, a: &AdversarialTraining| {
        let dn = pursamere_trainer::model::DeviceNet::<f32, Dev>::from_float(n, &dev);
        pgd_accuracy(&dev, &dn, a, &val, 200, 99)
    };
    let fit = |objective: Objective| {
        train(
            fresh_checkpoint(objective, config(10), net()),
            &tr,
            &val,
            &RunOptions::default(),
        )
        .unwrap()
    };
    let robust_to = |adversarial: AdversarialTraining| Objective::RobustClassifier {
        classes: 3,
        adversarial,
    };
    let standard = fit(Objective::Classifier { classes: 3 });
    let robust = fit(robust_to(both.clone()));
    let linf_only = fit(robust_to(at(AdversarialMethod::Pgd)));
    let (base, acc) = (measure(&standard.net, &both), measure(&robust.net, &both));
    let one = measure(&linf_only.net, &both);
    eprintln!("robust to both: max-trained {acc}, L∞-trained {one}, standard {base}");
    assert!(acc > base + 0.1, "{acc} vs standard {base}");
    // At this L2 radius training against L∞ alone leaves almost nothing: the L2
    // points the max strategy picks are what makes the difference.
    assert!(acc > one + 0.1, "{acc} vs L∞-trained {one}");
    // Robust to both is never more than robust to the first threat alone.
    assert!(acc <= measure(&robust.net, &at(AdversarialMethod::Pgd)) + 1e-6);
}
