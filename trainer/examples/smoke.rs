//! A few training epochs on synthetic data, printing the losses; used by
//! `scripts/gpu-smoke.sh` to compare the CPU and CUDA devices. Besides the
//! dense pair it trains a convolutional denoiser (im2col gather, upsampling)
//! and a PGD-adversarially-trained conv classifier, so the device's gather and
//! the attack inside training are compared too.
//!
//! Output: one line per network and epoch,
//! `NAME epoch E train_loss L val_loss V`.

use pursamere_core::InputShape;
use pursamere_trainer::arch::{build_arch, parse_arch, ArchOutput};
use pursamere_trainer::attack::AttackNorm;
use pursamere_trainer::data::synthetic_bands;
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{
    fresh_checkpoint, train, AdversarialMethod, AdversarialTraining, Objective, RunOptions,
    TrainConfig,
};

const SHAPE: InputShape = InputShape {
    channels: 1,
    height: 28,
    width: 28,
};

fn conv(description: &str, output: ArchOutput, residual: bool, seed: u64) -> FloatNet {
    let hidden = parse_arch(description).unwrap_or_else(|e| panic!("{e}"));
    build_arch(description, &hidden, SHAPE, output, residual, 1.0, seed)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = synthetic_bands(2048, 28, 10, 1);
    let (tr, val) = data.split_validation(256, 0)?;
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 128,
        seed: 5,
        ..Default::default()
    };
    let adversarial = AdversarialTraining {
        method: AdversarialMethod::Pgd,
        norm: AttackNorm::Linf,
        eps: 0.3,
        steps: 3,
        step_size: 0.5,
        random_start: true,
        warmup_epochs: 1,
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
        (
            "conv-denoiser",
            Objective::Denoiser { sigmas: vec![0.5] },
            conv("conv8s2,conv8,up", ArchOutput::Image, true, 3),
        ),
        (
            "conv-robust-classifier",
            Objective::RobustClassifier {
                classes: 10,
                adversarial: adversarial.clone(),
            },
            conv("conv8,conv16s2,dense32", ArchOutput::Classes(10), false, 4),
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
