//! Opt-in (needs `../shared/data/mnist`): a short real training run, exported and run
//! by the core on a few hundred test images, agreeing with the host reference.

use std::path::Path;

use dfdx::prelude::*;
use pursamere_core::{InputShape, Model, Norm, PurifierConfig, StepRule};
use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{DeviceNet, FloatModel, FloatNet};
use pursamere_trainer::reference::Reference;
use pursamere_trainer::train::{fresh_checkpoint, train, Objective, RunOptions, TrainConfig};

#[test]
#[ignore = "needs ../shared/data/mnist (run with --ignored)"]
fn short_mnist_run_exports_and_agrees_with_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
    let full = load_mnist_dir(&dir, Split::Train).unwrap();
    let small = full.select(&full.permutation(0)[..6000]);
    let (tr, val) = small.split_validation(1000, 0).unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        seed: 1,
        ..Default::default()
    };
    let den = train(
        fresh_checkpoint(
            Objective::Denoiser { sigmas: vec![0.5] },
            cfg.clone(),
            FloatNet::mlp(&[784, 128, 784], false, 1.0, 1),
        ),
        &tr,
        &val,
        &RunOptions::default(),
    )
    .unwrap();
    let cls = train(
        fresh_checkpoint(
            Objective::Classifier { classes: 10 },
            cfg,
            FloatNet::mlp(&[784, 128, 10], false, 1.0, 2),
        ),
        &tr,
        &val,
        &RunOptions::default(),
    )
    .unwrap();
    let purifier = PurifierConfig {
        sigma: 0.5,
        noise_samples: 4,
        iters: 5,
        eta: 0.01,
        rho: 0.05,
        radius: 0.3,
        norm: Norm::Linf,
        step: StepRule::Gradient,
        seed: 0,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    };
    let fm = FloatModel {
        dataset: "mnist".into(),
        input_shape: InputShape {
            channels: 1,
            height: 28,
            width: 28,
        },
        class_names: (0..10).map(|c| c.to_string()).collect(),
        denoiser: den.net,
        classifier: cls.net,
        purifier,
    };
    let bytes = QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap();
    let model = Model::parse(&bytes).unwrap();

    let test = load_mnist_dir(&dir, Split::Test).unwrap();
    let n = 300;
    let x: Vec<f32> = (0..n).flat_map(|i| test.image_f32(i).unwrap()).collect();
    let mut scratch = vec![0.0; model.scratch_len_fast()];
    let mut logits = vec![0.0; 10];
    let mut out = vec![0.0; 784];
    let mut core_labels = Vec::new();
    for img in x.chunks(784) {
        model
            .purify(img, &purifier, &mut out, &mut scratch)
            .unwrap();
        core_labels.push(model.classify(&out, &mut logits, &mut scratch).unwrap());
    }
    let correct = core_labels
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| **a == usize::from(**b))
        .count();
    // A 2-epoch run on 5,000 images: well above chance (10 %), far from converged.
    assert!(
        correct >= 240,
        "core accuracy after purification {correct}/{n}"
    );

    let dev = Cpu::default();
    let deq = FloatModel::from_spec(model.spec()).unwrap();
    let r: Reference<f32, Cpu> = Reference::new(&dev, &deq.denoiser, 784, purifier);
    let px = r.purify(&x);
    let cls = DeviceNet::<f32, Cpu>::from_float(&deq.classifier, &dev);
    let lg = cls.forward(dev.tensor_from_vec(px, (n, 784usize))).as_vec();
    let agree = lg
        .chunks(10)
        .zip(&core_labels)
        .filter(|(row, &l)| (0..10).fold(0, |b, c| if row[c] > row[b] { c } else { b }) == l)
        .count();
    assert!(
        agree >= 297,
        "core and dequantised reference agree on {agree}/{n} labels"
    );
}
