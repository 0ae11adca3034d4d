//! A few training epochs on synthetic data, printing the losses; used by
//! `scripts/gpu-smoke.sh` to compare the CPU and CUDA devices.

use pursamere_trainer::data::synthetic_bands;
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{fresh_checkpoint, train, Objective, RunOptions, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = synthetic_bands(2048, 28, 10, 1);
    let (tr, val) = data.split_validation(256, 0)?;
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 128,
        seed: 5,
        ..Default::default()
    };
    for (name, objective, net) in [
        (
            "denoiser",
            Objective::Denoiser { sigmas: vec![0.5] },
            FloatNet::mlp(&[784, 256, 256, 784], false, 1.0, 1),
        ),
        (
            "classifier",
            Objective::Classifier { classes: 10 },
            FloatNet::mlp(&[784, 256, 256, 10], false, 1.0, 2),
        ),
    ] {
        let done = train(
            fresh_checkpoint(objective, cfg.clone(), net),
            &tr,
            &val,
            &RunOptions::default(),
        )?;
        for h in &done.history {
            println!(
                "{name} epoch {} train_loss {} val_loss {}",
                h.epoch, h.train_loss, h.val_loss
            );
        }
    }
    Ok(())
}
