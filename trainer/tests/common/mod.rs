//! Shared helpers for the trainer's tests.
#![allow(dead_code)]

use pursamere_trainer::data::{synthetic_bands, Dataset};

/// Small labelled images (see `synthetic_bands`).
pub fn synthetic(n: usize, side: usize, classes: usize, seed: u64) -> Dataset {
    synthetic_bands(n, side, classes, seed)
}

/// A small classifier trained on `synthetic(600, 6, 3, 2)` and its 120 validation
/// images `(net, pixels, labels)`.
pub fn trained_classifier() -> (pursamere_trainer::model::FloatNet, Vec<f32>, Vec<usize>) {
    use pursamere_trainer::model::FloatNet;
    use pursamere_trainer::train::{fresh_checkpoint, train, Objective, RunOptions, TrainConfig};
    let data = synthetic(600, 6, 3, 2);
    let (tr, val) = data.split_validation(120, 0).unwrap();
    let ck = fresh_checkpoint(
        Objective::Classifier { classes: 3 },
        TrainConfig {
            epochs: 3,
            batch_size: 32,
            lr: 3e-3,
            seed: 1,
            ..Default::default()
        },
        FloatNet::mlp(&[36, 24, 3], false, 1.0, 7),
    );
    let net = train(ck, &tr, &val, &RunOptions::default()).unwrap().net;
    let x: Vec<f32> = (0..val.len())
        .flat_map(|i| val.image_f32(i).unwrap())
        .collect();
    let y = val.labels.iter().map(|&l| usize::from(l)).collect();
    (net, x, y)
}

/// A run from `start` trained whole, and the same run stopped after one epoch,
/// checkpointed and resumed: `(whole, checkpoint after one epoch, resumed)`.
pub fn whole_and_resumed(
    start: &pursamere_trainer::train::Checkpoint,
    tr: &Dataset,
    val: &Dataset,
) -> (
    pursamere_trainer::train::Checkpoint,
    pursamere_trainer::train::Checkpoint,
    pursamere_trainer::train::Checkpoint,
) {
    use pursamere_trainer::train::{load_checkpoint, train, RunOptions};
    let whole = train(start.clone(), tr, val, &RunOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ck");
    let opts = RunOptions {
        checkpoint: Some(path.clone()),
        stop_after: Some(1),
        progress: false,
    };
    train(start.clone(), tr, val, &opts).unwrap();
    let ck = load_checkpoint(&path).unwrap();
    let resumed = train(ck.clone(), tr, val, &RunOptions::default()).unwrap();
    (whole, ck, resumed)
}
