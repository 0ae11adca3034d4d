//! `pursamere export`, and the purifier flags shared by every command that purifies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use pursamere_core::{InputShape, Norm, PurifierConfig, StepRule};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{FloatModel, FloatNet};
use pursamere_trainer::safetensors_io::to_safetensors;
use pursamere_trainer::train::load_checkpoint;

/// The default purifier configuration written into new models: the setting the
/// fixtures sweep chose on a validation split of the MNIST TRAIN set (see
/// fixtures/README.md); `pursamere fixtures` re-chooses it for the shipped model.
pub const DEFAULT_PURIFIER: PurifierConfig = PurifierConfig {
    sigma: 0.5,
    noise_samples: 4,
    iters: 10,
    eta: 0.5,
    rho: 0.0,
    radius: 0.3,
    norm: Norm::Linf,
    step: StepRule::Gradient,
    seed: 0,
    noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
};

/// Norm of the purification ball on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BallArg {
    /// `‖x − x0‖∞ ≤ δ`: every pixel within δ of the input.
    Linf,
    /// `‖x − x0‖₂ ≤ δ`.
    L2,
}

/// Step rule on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StepArg {
    /// x ← x − η ∇F(x̃).
    Gradient,
    /// x ← x − η sign(∇F(x̃)).
    Sign,
}

/// Purifier overrides; unset flags keep the model's (or the default) value. The
/// defaults named in the help text are [`DEFAULT_PURIFIER`], which new exports and the
/// dense purifier model fixtures/mnist.psm use (a test checks that they agree).
#[derive(Args, Debug, Clone, Default)]
pub struct PurifierArgs {
    /// Noise level σ of the ERE (> 0). Default: the model's own setting (new exports:
    /// 0.5).
    #[arg(long)]
    pub sigma: Option<f32>,
    /// Number M of fixed noise vectors (1..=1024). Default: the model's own setting
    /// (new exports: 4).
    #[arg(long)]
    pub noise_samples: Option<u32>,
    /// Number K of SAM steps (0..=10000; 0 = purifier off). Default: the model's own
    /// setting (new exports: 10; the shipped default model: 0).
    #[arg(long)]
    pub iters: Option<u32>,
    /// Step size η (> 0). Default: the model's own setting (new exports:
    /// 0.5).
    #[arg(long)]
    pub eta: Option<f32>,
    /// SAM radius ρ (≥ 0; 0 = plain projected descent). Default: the model's own
    /// setting (new exports: 0).
    #[arg(long)]
    pub rho: Option<f32>,
    /// Purification radius δ (≥ 0), in the ball's norm (--ball). Default: the
    /// model's own setting (new exports: 0.3).
    #[arg(long)]
    pub radius: Option<f32>,
    /// Norm of the purification ball: `linf` (box) or `l2` (needs format version 2,
    /// which an export with it writes). Default: the model's own setting (new exports:
    /// linf).
    #[arg(long, value_enum)]
    pub ball: Option<BallArg>,
    /// Step rule. Default: the model's own setting (new exports:
    /// gradient).
    #[arg(long, value_enum)]
    pub step: Option<StepArg>,
    /// Seed of the noise vectors. Default: the model's own setting (new exports:
    /// 0).
    #[arg(long)]
    pub noise_seed: Option<u64>,
}

impl PurifierArgs {
    /// The flags given on the command line, as `--name` strings.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("--sigma", self.sigma.is_some()),
            ("--noise-samples", self.noise_samples.is_some()),
            ("--iters", self.iters.is_some()),
            ("--eta", self.eta.is_some()),
            ("--rho", self.rho.is_some()),
            ("--radius", self.radius.is_some()),
            ("--ball", self.ball.is_some()),
            ("--step", self.step.is_some()),
            ("--noise-seed", self.noise_seed.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }

    /// `base` with the given overrides, validated.
    pub fn apply(&self, base: PurifierConfig) -> Result<PurifierConfig> {
        let cfg = PurifierConfig {
            sigma: self.sigma.unwrap_or(base.sigma),
            noise_samples: self.noise_samples.unwrap_or(base.noise_samples),
            iters: self.iters.unwrap_or(base.iters),
            eta: self.eta.unwrap_or(base.eta),
            rho: self.rho.unwrap_or(base.rho),
            radius: self.radius.unwrap_or(base.radius),
            step: match self.step {
                Some(StepArg::Gradient) => StepRule::Gradient,
                Some(StepArg::Sign) => StepRule::Sign,
                None => base.step,
            },
            seed: self.noise_seed.unwrap_or(base.seed),
            norm: match self.ball {
                Some(BallArg::Linf) => Norm::Linf,
                Some(BallArg::L2) => Norm::L2,
                None => base.norm,
            },
            // The model's generator: its format version fixes it.
            noise: base.noise,
        };
        cfg.validate().context("invalid purifier setting")?;
        Ok(cfg)
    }
}

/// File names `export` writes in its `--out` folder.
pub const MODEL_FILE: &str = "model.psm";
/// The float weights written beside [`MODEL_FILE`] (`verify` finds them there).
pub const FLOAT_FILE: &str = "model.safetensors";

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Training run directory holding denoiser.ckpt and classifier.ckpt.
    #[arg(long)]
    pub run: PathBuf,
    /// Take the denoiser from this file instead of <run>/denoiser.ckpt: a `.psm`
    /// model (its denoiser, and its purifier setting as the default for the flags
    /// below) or a `.ckpt` checkpoint — to put an existing denoiser in front of a
    /// newly trained classifier.
    #[arg(long, value_name = "FILE")]
    pub denoiser: Option<PathBuf>,
    /// Output folder (created if missing) for model.psm (int8) and model.safetensors
    /// (float weights); default: the --run folder. Existing files are overwritten only
    /// with --force.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite model.psm / model.safetensors if --out holds them.
    #[arg(long)]
    pub force: bool,
    /// Removed: the float weights are always written as model.safetensors in --out.
    #[arg(long, hide = true, value_parser = super::removed_flag(
        "--safetensors was removed: export writes model.psm and model.safetensors together in the --out folder"
    ))]
    pub safetensors: Option<String>,
    /// Data set name stored in the model; a name containing "fashion" or "cifar"
    /// also stores Fashion-MNIST's or CIFAR-10's class names.
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
    /// Image height and width (square images; 32 for CIFAR-10). The channels follow
    /// from the classifier's input length.
    #[arg(long, default_value_t = 28)]
    pub side: u16,
    #[command(flatten)]
    pub purifier: PurifierArgs,
}

/// Writes both files or neither: each goes to a temporary name first, and only
/// when both are written are they renamed into place.
fn write_pair(files: [(&PathBuf, &[u8]); 2]) -> Result<()> {
    let cleanup = || {
        for (p, _) in &files {
            let _ = std::fs::remove_file(super::tmp_path(p));
        }
    };
    for (p, bytes) in &files {
        if let Err(e) = std::fs::write(super::tmp_path(p), bytes) {
            cleanup();
            return Err(e).with_context(|| format!("cannot write {}", p.display()));
        }
    }
    for (p, _) in &files {
        if let Err(e) = std::fs::rename(super::tmp_path(p), p) {
            cleanup();
            return Err(e).with_context(|| format!("cannot write {}", p.display()));
        }
    }
    Ok(())
}

/// The denoiser of `--denoiser` (a `.psm` model or a checkpoint) and the purifier
/// setting its `.psm` carries.
fn denoiser_from(path: &Path) -> Result<(FloatNet, Option<PurifierConfig>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.starts_with(&pursamere_core::MAGIC) {
        let model = pursamere_core::Model::parse(&bytes)
            .with_context(|| format!("{} is not a valid model", path.display()))?;
        let fm = FloatModel::from_spec(model.spec())?;
        return Ok((fm.denoiser, Some(fm.purifier)));
    }
    let ck = load_checkpoint(path).with_context(|| {
        format!(
            "--denoiser {}: neither a .psm model nor a checkpoint",
            path.display()
        )
    })?;
    Ok((ck.net, None))
}

pub fn run(a: ExportArgs) -> Result<i32> {
    if a.side == 0 {
        anyhow::bail!("--side must be at least 1");
    }
    let (den, den_cfg) = match &a.denoiser {
        Some(p) => denoiser_from(p)?,
        None => (load_checkpoint(&a.run.join("denoiser.ckpt"))?.net, None),
    };
    let cls = load_checkpoint(&a.run.join("classifier.ckpt"))?;
    // The networks take channels × side × side values: a wrong --side is named as
    // such, and the channels follow (1 for MNIST, 3 for colour).
    let pixels = usize::from(a.side) * usize::from(a.side);
    let mut channels = None;
    for (name, net) in [("denoiser", &den), ("classifier", &cls.net)] {
        let inputs = net.layers.iter().find_map(|l| l.input_len()).unwrap_or(0);
        let c = inputs / pixels;
        // Images are grey (IDX, grey PNG) or RGB (CIFAR-10, colour PNG): any other
        // count is a wrong --side read as channels (e.g. 12 × 16 × 16 for 3 × 32 × 32).
        if inputs % pixels != 0 || !matches!(c, 1 | 3) || channels.is_some_and(|k| k != c) {
            anyhow::bail!(
                "--side {} means {pixels} pixels per channel, but the {name} takes {inputs} values{}",
                a.side,
                match [1usize, 3]
                    .iter()
                    .find_map(|ch| (1..=(inputs / ch).isqrt()).find(|s| ch * s * s == inputs))
                {
                    Some(s) => format!(" (--side {s})"),
                    None => String::new(),
                }
            );
        }
        channels = Some(c);
    }
    let channels = u16::try_from(channels.unwrap_or(1))?;
    let classes = match cls.net.layers.last() {
        Some(pursamere_trainer::model::FloatLayer::Dense { outputs, .. }) => *outputs,
        _ => anyhow::bail!("the classifier checkpoint does not end in a dense layer"),
    };
    let fm = FloatModel {
        dataset: a.dataset.clone(),
        input_shape: InputShape {
            channels,
            height: a.side,
            width: a.side,
        },
        class_names: super::images::class_names_for(&a.dataset, classes),
        denoiser: den,
        classifier: cls.net,
        // A new model takes the current noise generator, even when its denoiser and
        // settings come from an older .psm.
        purifier: a.purifier.apply(PurifierConfig {
            noise: DEFAULT_PURIFIER.noise,
            ..den_cfg.unwrap_or(DEFAULT_PURIFIER)
        })?,
    };
    let q = QuantizedModel::from_float(&fm)?;
    let psm = q.to_psm()?;
    let st = to_safetensors(&fm)?;
    let dir = a.out.as_ref().unwrap_or(&a.run);
    let out = super::OutDir::prepare(
        dir,
        "--out",
        &[MODEL_FILE.to_owned(), FLOAT_FILE.to_owned()],
        a.force,
    )?;
    let (psm_path, st_path) = (out.join(MODEL_FILE), out.join(FLOAT_FILE));
    write_pair([(&psm_path, &psm), (&st_path, &st)])?;
    out.keep()?;
    outln!("layer quantisation error (int8 per output row):")?;
    outln!(
        "{:<11} {:>5} {:>12} {:>12} {:>12}",
        "network",
        "layer",
        "max |err|",
        "rms err",
        "rms/rms(w)"
    )?;
    for r in q.report() {
        outln!(
            "{:<11} {:>5} {:>12.3e} {:>12.3e} {:>11.3} %",
            r.network.to_string(),
            r.layer,
            r.max_abs,
            r.rms,
            100.0 * r.relative_rms
        )?;
    }
    outln!(
        "wrote {} ({} bytes) and {}",
        psm_path.display(),
        psm.len(),
        st_path.display()
    )?;
    Ok(0)
}
