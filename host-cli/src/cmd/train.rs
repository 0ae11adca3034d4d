//! `pursamere train`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{
    fresh_checkpoint, load_checkpoint, train, Objective, RunOptions, TrainConfig,
};

/// Which networks to train.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum What {
    /// Score model and classifier.
    Both,
    /// Score model only.
    Denoiser,
    /// Classifier only.
    Classifier,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Data set directory with MNIST-layout IDX files (gzipped or raw), e.g. ../shared/data/mnist.
    #[arg(long)]
    pub data: PathBuf,
    /// Output directory for checkpoints (denoiser.ckpt, classifier.ckpt); created if missing.
    #[arg(long)]
    pub out: PathBuf,
    /// Which networks to train.
    #[arg(long, value_enum, default_value_t = What::Both)]
    pub what: What,
    /// Epochs for the denoiser.
    #[arg(long, default_value_t = 20)]
    pub den_epochs: usize,
    /// Epochs for the classifier.
    #[arg(long, default_value_t = 20)]
    pub cls_epochs: usize,
    /// Hidden widths of the denoiser, comma-separated.
    #[arg(long, default_value = "256,256", value_delimiter = ',')]
    pub den_hidden: Vec<usize>,
    /// Hidden widths of the classifier, comma-separated.
    #[arg(long, default_value = "256,256", value_delimiter = ',')]
    pub cls_hidden: Vec<usize>,
    /// Give the denoiser a global residual skip D(y) = y + net(y).
    #[arg(long)]
    pub residual: bool,
    /// Noise levels σ of the ERE loss, comma-separated; one is drawn per example.
    #[arg(long, default_value = "0.5", value_delimiter = ',')]
    pub sigmas: Vec<f32>,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Peak learning rate (Adam, cosine decay to 5 % of it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Seed of initialisation, shuffling and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training examples held out for validation (from the TRAIN set).
    #[arg(long, default_value_t = 5000)]
    pub validation: usize,
    /// Continue from the checkpoints in --out instead of starting afresh.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// TOML run file whose keys are these flags' long names (e.g. `den_epochs = 20`,
    /// `sigmas = [0.25, 0.5]`); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(a: TrainArgs) -> Result<i32> {
    if a.sigmas.is_empty() || a.sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--sigmas must be finite and > 0, got {:?}", a.sigmas);
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be finite and > 0, got {}", a.lr);
    }
    let full = load_mnist_dir(&a.data, Split::Train)?;
    let (tr, val) = full.split_validation(a.validation, a.seed)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let d = full.image_len();
    eprintln!(
        "data: {} training and {} validation images of {}x{} from {}",
        tr.len(),
        val.len(),
        full.rows,
        full.cols,
        a.data.display()
    );
    let mut jobs = Vec::new();
    if a.what != What::Classifier {
        let mut dims = vec![d];
        dims.extend(&a.den_hidden);
        dims.push(d);
        let gain = if a.residual { 0.5 } else { 1.0 };
        jobs.push((
            "denoiser",
            Objective::Denoiser {
                sigmas: a.sigmas.clone(),
            },
            FloatNet::mlp(&dims, a.residual, gain, a.seed),
            a.den_epochs,
        ));
    }
    if a.what != What::Denoiser {
        let mut dims = vec![d];
        dims.extend(&a.cls_hidden);
        dims.push(10);
        jobs.push((
            "classifier",
            Objective::Classifier { classes: 10 },
            FloatNet::mlp(&dims, false, 1.0, a.seed.wrapping_add(1)),
            a.cls_epochs,
        ));
    }
    for (name, objective, net, epochs) in jobs {
        let path = a.out.join(format!("{name}.ckpt"));
        let config = TrainConfig {
            epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
            ..Default::default()
        };
        let ck = if a.resume && path.exists() {
            let ck = load_checkpoint(&path)?;
            if ck.objective != objective || ck.config != config {
                bail!(
                    "{} was written with other settings ({:?}, {:?}); resume with the same flags",
                    path.display(),
                    ck.objective,
                    ck.config
                );
            }
            eprintln!("{name}: resuming after epoch {}", ck.epochs_done);
            ck
        } else {
            fresh_checkpoint(objective, config, net)
        };
        eprintln!("{name}: {} parameters, {} epochs", ck.net.params(), epochs);
        let opts = RunOptions {
            checkpoint: Some(path.clone()),
            stop_after: None,
            progress: !a.quiet,
        };
        let start = std::time::Instant::now();
        let done = train(ck, &tr, &val, &opts)?;
        if let Some(last) = done.history.last() {
            let ips = done
                .history
                .iter()
                .map(|h| f64::from(h.images_per_second))
                .sum::<f64>()
                / done.history.len().max(1) as f64;
            eprintln!(
                "{name}: done in {:.1} s ({ips:.0} training images/s); validation loss {:.4}{}; checkpoint {}",
                start.elapsed().as_secs_f64(),
                last.val_loss,
                last.val_accuracy
                    .map(|v| format!(", accuracy {:.2} %", 100.0 * v))
                    .unwrap_or_default(),
                path.display()
            );
        }
    }
    Ok(0)
}
