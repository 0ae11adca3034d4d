//! Training: an interrupted and resumed run ends with exactly the weights of an
//! uninterrupted one; checkpoints are written atomically; the trained model exports
//! to a `.psm` the core runs.

mod common;

use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{
    fresh_checkpoint, load_checkpoint, train, Checkpoint, Objective, RunOptions, TrainConfig,
    TrainError,
};

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 32,
        lr: 3e-3,
        seed: 42,
        ..Default::default()
    }
}

fn strip_timing(ck: &Checkpoint) -> Checkpoint {
    let mut c = ck.clone();
    for h in &mut c.history {
        h.images_per_second = 0.0;
    }
    c
}

fn resume_matches(objective: Objective, net: FloatNet) {
    let data = common::synthetic(300, 6, 3, 1);
    let (tr, val) = data.split_validation(60, 0).unwrap();
    let start = fresh_checkpoint(objective, config(), net);

    let full = train(start.clone(), &tr, &val, &RunOptions::default()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    let opts = RunOptions {
        checkpoint: Some(path.clone()),
        stop_after: Some(1),
        progress: false,
    };
    let partial = train(start, &tr, &val, &opts).unwrap();
    assert_eq!(partial.epochs_done, 1);
    assert!(
        !dir.path().join("run.ckpt.tmp").exists(),
        "temporary file left behind"
    );
    let loaded = load_checkpoint(&path).unwrap();
    assert_eq!(loaded, partial);
    let resumed = train(loaded, &tr, &val, &RunOptions::default()).unwrap();

    assert_eq!(resumed.epochs_done, 3);
    assert_eq!(
        strip_timing(&resumed),
        strip_timing(&full),
        "resumed run differs"
    );
    assert_ne!(full.net, partial.net, "training must change the weights");
}

#[test]
fn resumed_classifier_run_equals_uninterrupted_run() {
    resume_matches(
        Objective::Classifier { classes: 3 },
        FloatNet::mlp(&[36, 24, 3], false, 1.0, 7),
    );
}

#[test]
fn resumed_denoiser_run_equals_uninterrupted_run() {
    resume_matches(
        Objective::Denoiser {
            sigmas: vec![0.3, 0.6],
        },
        FloatNet::mlp(&[36, 24, 36], false, 1.0, 8),
    );
}

#[test]
fn training_learns_the_synthetic_task() {
    let data = common::synthetic(600, 6, 3, 2);
    let (tr, val) = data.split_validation(120, 0).unwrap();
    let ck = fresh_checkpoint(
        Objective::Classifier { classes: 3 },
        config(),
        FloatNet::mlp(&[36, 24, 3], false, 1.0, 7),
    );
    let done = train(ck, &tr, &val, &RunOptions::default()).unwrap();
    let acc = done.history.last().unwrap().val_accuracy.unwrap();
    assert!(acc > 0.95, "validation accuracy {acc}");
    let first = done.history.first().unwrap().train_loss;
    let last = done.history.last().unwrap().train_loss;
    assert!(last < first, "loss went from {first} to {last}");
}

#[test]
fn bad_settings_and_files_are_errors() {
    let data = common::synthetic(50, 6, 3, 3);
    let ck = fresh_checkpoint(
        Objective::Denoiser { sigmas: vec![0.0] },
        config(),
        FloatNet::mlp(&[36, 8, 36], false, 1.0, 1),
    );
    let e = train(ck, &data, &data, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, TrainError::Config(_)) && e.to_string().contains("noise levels"));

    // Zero-width and mismatched networks are errors, not panics inside dfdx.
    for (dims, word) in [
        (&[36, 0, 36][..], "at least one"),
        (&[36, 8, 0][..], "at least one"),
        (&[25, 8, 36][..], "the images have 36 values"),
    ] {
        let ck = fresh_checkpoint(
            Objective::Denoiser { sigmas: vec![0.5] },
            config(),
            FloatNet::mlp(dims, false, 1.0, 1),
        );
        let e = train(ck, &data, &data, &RunOptions::default()).unwrap_err();
        assert!(
            matches!(e, TrainError::Config(_)) && e.to_string().contains(word),
            "{dims:?}: {e}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.ckpt");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert!(matches!(
        load_checkpoint(&junk),
        Err(TrainError::BadCheckpoint { .. })
    ));
    let missing = dir.path().join("missing.ckpt");
    let e = load_checkpoint(&missing).unwrap_err();
    assert!(e.to_string().contains("missing.ckpt"));
}
