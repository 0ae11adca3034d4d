//! `pursamere train`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use pursamere_trainer::arch::{build_arch, parse_arch, ArchOutput};
use pursamere_trainer::attack::AttackNorm;
use pursamere_trainer::core::InputShape;
use pursamere_trainer::data::{load_dataset_dir, Split, HOLDOUT_SEED};
use pursamere_trainer::model::FloatModel;
use pursamere_trainer::model::{FloatLayer, FloatNet};
use pursamere_trainer::train::{
    fresh_checkpoint, load_checkpoint, train, AdversarialMethod, AdversarialTraining, Checkpoint,
    InLoopPurifier, Objective, RunOptions, TrainConfig,
};

/// How the classifier is trained.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Adversarial {
    /// Standard training (clean images).
    None,
    /// PGD adversarial training (Madry et al.): cross-entropy at the PGD point.
    Pgd,
    /// TRADES (Zhang et al.): clean cross-entropy + β · KL(clean ‖ adversarial).
    Trades,
    /// PGD adversarial training against two threats at once (Tramèr & Boneh, "max"):
    /// --adv-norm at --adv-eps and the other norm at --adv-second-eps; each example
    /// is trained at the point with the higher loss (twice the attack cost).
    PgdMax,
}

/// Threat norm of adversarial training.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum NormArg {
    /// L∞ ball.
    Linf,
    /// L2 ball.
    L2,
}

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
    /// Data set directory: MNIST-layout IDX files (gzipped or raw), e.g.
    /// ../shared/data/mnist, or CIFAR-10's binary batches (cifar-10-batches-bin).
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
    #[arg(long, default_value = "256,256", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub den_hidden: Vec<usize>,
    /// Hidden widths of the classifier, comma-separated.
    #[arg(long, default_value = "256,256", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub cls_hidden: Vec<usize>,
    /// Denoiser architecture instead of --den-hidden: comma-separated hidden layers
    /// `dense<N>`, `conv<C>[x<K>][s<S>]` (K×K kernel, default 3, stride 1 or 2,
    /// "same" padding) and `up` (×2 nearest-neighbour); a ReLU follows each dense
    /// and conv layer and the output layer back to the image is added, e.g.
    /// `conv32,conv32s2,conv32,up`.
    #[arg(long, value_name = "LAYERS")]
    pub den_arch: Option<String>,
    /// Classifier architecture instead of --cls-hidden (same syntax as --den-arch;
    /// the output layer to the classes is added), e.g. `conv32,conv32s2,conv64s2,dense128`.
    #[arg(long, value_name = "LAYERS")]
    pub cls_arch: Option<String>,
    /// Give the denoiser a global residual skip D(y) = y + net(y).
    #[arg(long)]
    pub residual: bool,
    /// Noise levels σ of the ERE loss, comma-separated; one is drawn per example.
    #[arg(long, default_value = "0.5", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub sigmas: Vec<f32>,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Peak learning rate (Adam, cosine decay to 5 % of it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Seed of initialisation, shuffling and noise (not of the hold-out: see --validation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training examples held out for validation (from the TRAIN set): the same
    /// images for every run, whatever --seed, so separately trained denoisers and
    /// classifiers share one hold-out and `eval`'s split = "validation" (5,000) is
    /// held out of both.
    #[arg(long, default_value_t = 5000)]
    pub validation: usize,
    /// Continue from the checkpoints in --out instead of starting afresh (the flags
    /// must be those the run was started with).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh even though --out holds checkpoints, overwriting them.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Train the classifier adversarially (with the project's PGD).
    #[arg(long, value_enum, default_value_t = Adversarial::None)]
    pub adversarial: Adversarial,
    /// Threat norm of adversarial training.
    #[arg(long, value_enum, default_value_t = NormArg::Linf, requires = "adversarial")]
    pub adv_norm: NormArg,
    /// Radius ε of adversarial training.
    #[arg(long, default_value_t = 0.3, requires = "adversarial")]
    pub adv_eps: f32,
    /// PGD steps per training batch.
    #[arg(long, default_value_t = 10, requires = "adversarial")]
    pub adv_steps: usize,
    /// PGD step as a multiple of ε.
    #[arg(long, default_value_t = 0.25, requires = "adversarial")]
    pub adv_step_size: f32,
    /// Start PGD at the clean image instead of a random point of the ball.
    #[arg(long, requires = "adversarial")]
    pub adv_no_random_start: bool,
    /// Epochs over which ε rises linearly from 0 (0: the full ε from the start).
    #[arg(long, default_value_t = 0, requires = "adversarial")]
    pub adv_warmup_epochs: usize,
    /// With --adversarial trades: TRADES β (weight of the robustness term)
    /// [default: 6].
    #[arg(long, requires = "adversarial")]
    pub trades_beta: Option<f32>,
    /// With --adversarial pgd-max: radius of the second threat, in the norm other
    /// than --adv-norm (--adv-norm linf --adv-eps 0.3 --adv-second-eps 2.0 trains
    /// against L∞ 0.3 and L2 2.0 together) [default: the MNIST standard radius of
    /// that norm: 2 in L2 with --adv-norm linf, 0.3 in L∞ with --adv-norm l2].
    #[arg(long, requires = "adversarial")]
    pub adv_second_eps: Option<f32>,
    /// Train the classifier behind the purifier of this model file (its denoiser and
    /// its stored purifier settings; export one with the settings you want, e.g.
    /// `export --iters 5 --ball l2 --radius 0.5`): on purified images, and with
    /// --adversarial on adversarial examples crafted through the whole purifier with
    /// its exact unrolled gradient (slow: every attack step purifies and
    /// differentiates the purification). Export the result with the same denoiser
    /// and settings.
    #[arg(long, value_name = "PSM")]
    pub purified_by: Option<PathBuf>,
    /// Start the classifier from the weights of this classifier checkpoint (e.g.
    /// runs/x/classifier.ckpt) instead of random ones: fine-tuning. Its architecture
    /// replaces --cls-arch / --cls-hidden.
    #[arg(long, value_name = "CKPT")]
    pub init_classifier: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print each network's final metrics as JSON on standard output when training
    /// ends (progress and messages stay on standard error).
    #[arg(long)]
    pub json: bool,
    /// TOML run file whose keys are these flags' long names (e.g. `den_epochs = 20`,
    /// `sigmas = [0.25, 0.5]`); flags on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Side file in the run directory recording the data split, which the
/// checkpoints do not hold, so that `--resume` can check it.
const RUN_DATA_FILE: &str = "train-data.json";

/// The file a `train` holds an exclusive lock on while it writes to its folder.
const TRAIN_LOCK_FILE: &str = "train.lock";

/// The data split of a run.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunData {
    /// `--validation`.
    validation: usize,
    /// Images in the data set's TRAIN file (before the validation split).
    train_file_images: usize,
    /// Seed of the hold-out draw. Absent in runs started before the hold-out was
    /// fixed: those drew it with the run's `--seed`.
    #[serde(default)]
    holdout_seed: Option<u64>,
    /// SHA-256 of the TRAIN images and labels (`eval::results::dataset_sha256`). Absent in runs
    /// started before it was recorded.
    #[serde(default)]
    train_sha256: Option<String>,
}

/// Joins numbers with commas, as the list flags take them.
fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// Default TRADES β: the value Zhang et al. (2019) use on MNIST and CIFAR-10.
const DEFAULT_TRADES_BETA: f32 = 6.0;

/// Default second radius of `pgd-max` when the second norm is L2: the MNIST
/// standard L2 radius.
const DEFAULT_SECOND_EPS_L2: f32 = 2.0;

/// Default second radius of `pgd-max` when the second norm is L∞: the MNIST
/// standard L∞ radius.
const DEFAULT_SECOND_EPS_LINF: f32 = 0.3;

/// `--trades-beta`, or its default.
fn trades_beta(a: &TrainArgs) -> f32 {
    a.trades_beta.unwrap_or(DEFAULT_TRADES_BETA)
}

/// `--adv-second-eps`, or the standard radius of the second norm (the one other
/// than `--adv-norm`): one default for both norms would be 2 in L∞, a ball that
/// holds every image.
fn adv_second_eps(a: &TrainArgs) -> f32 {
    a.adv_second_eps.unwrap_or(match a.adv_norm {
        NormArg::Linf => DEFAULT_SECOND_EPS_L2,
        NormArg::L2 => DEFAULT_SECOND_EPS_LINF,
    })
}

/// Checks every flag before any data is read or anything is written.
fn check_flags(a: &TrainArgs) -> Result<()> {
    if a.sigmas.is_empty() || a.sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("--sigmas must be finite and > 0, got {}", list(&a.sigmas));
    }
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        bail!("--lr must be finite and > 0, got {}", a.lr);
    }
    if a.adversarial != Adversarial::None {
        if !(a.adv_eps.is_finite() && a.adv_eps >= 0.0) {
            bail!("--adv-eps must be finite and ≥ 0, got {}", a.adv_eps);
        }
        if a.adv_steps == 0 {
            bail!("--adv-steps must be at least 1");
        }
        if !(a.adv_step_size.is_finite() && a.adv_step_size > 0.0) {
            bail!(
                "--adv-step-size must be finite and > 0, got {}",
                a.adv_step_size
            );
        }
        // A method's own setting given with another method would be ignored:
        // refuse it rather than train something other than what was asked.
        for (flag, given, method, name, value) in [
            (
                "--adv-second-eps",
                a.adv_second_eps,
                Adversarial::PgdMax,
                "pgd-max",
                adv_second_eps(a),
            ),
            (
                "--trades-beta",
                a.trades_beta,
                Adversarial::Trades,
                "trades",
                trades_beta(a),
            ),
        ] {
            if given.is_some() && a.adversarial != method {
                bail!("{flag} applies only to --adversarial {name}");
            }
            if !(value.is_finite() && value >= 0.0) {
                bail!("{flag} must be finite and ≥ 0, got {value}");
            }
        }
        if a.what == What::Denoiser {
            bail!("--adversarial trains the classifier: use --what classifier or both");
        }
    }
    for (flag, given) in [
        ("--purified-by", a.purified_by.is_some()),
        ("--init-classifier", a.init_classifier.is_some()),
    ] {
        if given && a.what != What::Classifier {
            bail!("{flag} trains the classifier alone: add --what classifier");
        }
    }
    if a.init_classifier.is_some() && a.cls_arch.is_some() {
        bail!("--init-classifier takes the architecture of its checkpoint: drop --cls-arch");
    }
    let nets = [
        (
            a.what != What::Classifier,
            "den",
            a.den_epochs,
            &a.den_hidden,
        ),
        (a.what != What::Denoiser, "cls", a.cls_epochs, &a.cls_hidden),
    ];
    for (used, prefix, epochs, hidden) in nets {
        if !used {
            continue;
        }
        if epochs == 0 {
            bail!("--{prefix}-epochs must be at least 1");
        }
        if hidden.contains(&0) {
            bail!(
                "--{prefix}-hidden {}: every hidden width must be at least 1",
                list(hidden)
            );
        }
    }
    Ok(())
}

/// The architecture of a network as the flags write it (hidden layers; the output
/// layer and the ReLUs implied), with its input and output length.
fn shape_of(net: &FloatNet) -> (String, usize, usize) {
    let n = net.layers.len();
    let hidden: Vec<String> = net
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l {
            _ if i + 1 == n => None,
            FloatLayer::Dense { outputs, .. } => Some(format!("dense{outputs}")),
            FloatLayer::Conv2d { geometry: g, .. } => Some(match (g.kernel, g.stride) {
                (3, 1) => format!("conv{}", g.out_channels),
                (3, s) => format!("conv{}s{s}", g.out_channels),
                (k, 1) => format!("conv{}x{k}", g.out_channels),
                (k, s) => format!("conv{}x{k}s{s}", g.out_channels),
            }),
            FloatLayer::Upsample2x { .. } => Some("up".to_owned()),
            FloatLayer::Relu | FloatLayer::QuantizeInput { .. } => None,
        })
        .collect();
    let input = net
        .layers
        .iter()
        .find_map(FloatLayer::input_len)
        .unwrap_or(0);
    let output = net.layers.last().map_or(0, |l| l.output_len(input));
    (hidden.join(","), input, output)
}

/// The purifier of the model file `path` as the classifier's fixed front end.
fn in_loop_purifier(path: &Path, shape: InputShape) -> Result<InLoopPurifier> {
    let context = || format!("--purified-by {}", path.display());
    let bytes = super::read_file(path).with_context(context)?;
    let model = super::images::parse_model(&bytes, &Some(path.to_owned())).with_context(context)?;
    let config = model.purifier_config();
    if config.iters == 0 {
        bail!(
            "--purified-by {}: its purifier is off (K = 0); export the model with the \
             settings to train behind (e.g. `pursamere export ... --iters 5 --ball l2 \
             --radius 0.5`)",
            path.display()
        );
    }
    let want = usize::from(shape.channels) * usize::from(shape.height) * usize::from(shape.width);
    if model.input_len() != want {
        bail!(
            "--purified-by {}: the model takes {}-pixel images, the data has {want}",
            path.display(),
            model.input_len()
        );
    }
    let fm = FloatModel::from_spec(model.spec()).with_context(context)?;
    Ok(InLoopPurifier::new(fm.denoiser, config))
}

/// Records `flag now` when it differs from the checkpoint's `then`.
fn differ(out: &mut Vec<String>, flag: String, now: String, then: String) {
    if now != then {
        out.push(format!("{flag} {now} (the checkpoint has {then})"));
    }
}

/// The adversarial-training flags that differ between a run and its checkpoint.
fn adversarial_differences(
    out: &mut Vec<String>,
    n: &AdversarialTraining,
    t: &AdversarialTraining,
) {
    let describe = |x: &AdversarialTraining| match x.method {
        AdversarialMethod::Pgd => "pgd".to_string(),
        AdversarialMethod::Trades { beta } => format!("trades --trades-beta {beta}"),
        AdversarialMethod::PgdMax { second_eps } => {
            format!("pgd-max --adv-second-eps {second_eps}")
        }
    };
    differ(out, "--adversarial".into(), describe(n), describe(t));
    differ(
        out,
        "--adv-norm".into(),
        format!("{:?}", n.norm).to_lowercase(),
        format!("{:?}", t.norm).to_lowercase(),
    );
    differ(
        out,
        "--adv-eps".into(),
        n.eps.to_string(),
        t.eps.to_string(),
    );
    differ(
        out,
        "--adv-steps".into(),
        n.steps.to_string(),
        t.steps.to_string(),
    );
    differ(
        out,
        "--adv-step-size".into(),
        n.step_size.to_string(),
        t.step_size.to_string(),
    );
    differ(
        out,
        "--adv-no-random-start".into(),
        (!n.random_start).to_string(),
        (!t.random_start).to_string(),
    );
    differ(
        out,
        "--adv-warmup-epochs".into(),
        n.warmup_epochs.to_string(),
        t.warmup_epochs.to_string(),
    );
}

/// What a run is asked to do, to compare with a checkpoint on `--resume`.
struct Wanted<'a> {
    prefix: &'static str,
    objective: &'a Objective,
    config: &'a TrainConfig,
    net: &'a FloatNet,
}

/// Every flag whose value differs from the checkpoint's, as `--flag X (checkpoint: Y)`.
fn differences(w: &Wanted<'_>, ck: &Checkpoint) -> Vec<String> {
    let mut out = Vec::new();
    let p = w.prefix;
    let (hidden, input, output) = shape_of(w.net);
    let (ck_hidden, ck_input, ck_output) = shape_of(&ck.net);
    // An MLP on both sides is named by --*-hidden widths, anything else by --*-arch.
    let widths = |h: &str| -> Option<String> {
        h.split(',')
            .filter(|v| !v.is_empty())
            .map(|v| v.strip_prefix("dense").map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(","))
    };
    match (widths(&hidden), widths(&ck_hidden)) {
        (Some(now), Some(then)) => differ(&mut out, format!("--{p}-hidden"), now, then),
        _ => differ(&mut out, format!("--{p}-arch"), hidden, ck_hidden),
    }
    if w.net.residual != ck.net.residual {
        out.push(if ck.net.residual {
            "no --residual (the checkpoint's denoiser has the residual skip)".to_owned()
        } else {
            "--residual (the checkpoint's denoiser has no residual skip)".to_owned()
        });
    }
    if input != ck_input {
        out.push(format!(
            "--data with {input}-pixel images (the checkpoint's network takes {ck_input} pixels)"
        ));
    }
    if output != ck_output && p == "cls" {
        out.push(format!(
            "{output} classes (the checkpoint's classifier has {ck_output})"
        ));
    }
    match (w.objective, &ck.objective) {
        (Objective::Denoiser { sigmas }, Objective::Denoiser { sigmas: then }) => {
            differ(&mut out, "--sigmas".into(), list(sigmas), list(then));
        }
        (Objective::Denoiser { .. }, _) | (_, Objective::Denoiser { .. }) => {
            out.push("a different network (the checkpoint trains the other one)".into())
        }
        // Two classifiers (the class count is the output width, compared above): the
        // purifier in front, then adversarial training.
        (now, then) => {
            match (now.purifier(), then.purifier()) {
                (Some(n), Some(t)) if n != t => out.push(
                    "--purified-by with another denoiser or other purifier settings (the \
                     checkpoint keeps the purifier it was trained behind)"
                        .into(),
                ),
                (Some(_), None) => out.push(
                    "--purified-by (the checkpoint's classifier was trained without a purifier in front)"
                        .into(),
                ),
                (None, Some(_)) => out.push(
                    "no --purified-by (the checkpoint's classifier was trained behind a purifier)"
                        .into(),
                ),
                _ => {}
            }
            match (now.adversarial(), then.adversarial()) {
                (Some(n), Some(t)) => adversarial_differences(&mut out, n, t),
                (None, None) => {}
                (Some(_), None) => out.push(
                    "--adversarial (the checkpoint's classifier was trained without it)".into(),
                ),
                (None, Some(_)) => out.push(
                    "no --adversarial (the checkpoint's classifier is adversarially trained)"
                        .into(),
                ),
            }
        }
    }
    let (c, k) = (w.config, &ck.config);
    differ(
        &mut out,
        format!("--{p}-epochs"),
        c.epochs.to_string(),
        k.epochs.to_string(),
    );
    differ(
        &mut out,
        "--batch-size".into(),
        c.batch_size.to_string(),
        k.batch_size.to_string(),
    );
    differ(&mut out, "--lr".into(), c.lr.to_string(), k.lr.to_string());
    differ(
        &mut out,
        "--seed".into(),
        c.seed.to_string(),
        k.seed.to_string(),
    );
    let fixed = |t: &TrainConfig| {
        (
            t.lr_final_fraction.to_bits(),
            t.beta1.to_bits(),
            t.beta2.to_bits(),
            t.eps.to_bits(),
        )
    };
    if fixed(c) != fixed(k) {
        out.push(format!(
            "optimiser constants (final lr fraction, Adam beta1, beta2, eps) {} {} {} {} (the checkpoint has {} {} {} {}; written by another version?)",
            c.lr_final_fraction, c.beta1, c.beta2, c.eps, k.lr_final_fraction, k.beta1, k.beta2, k.eps
        ));
    }
    out
}

/// Refuses to overwrite checkpoints without `--force`, and to `--resume` without one.
fn check_out_dir(a: &TrainArgs, names: &[&str]) -> Result<()> {
    let existing: Vec<String> = names
        .iter()
        .map(|n| format!("{n}.ckpt"))
        .filter(|f| a.out.join(f).exists())
        .collect();
    let dir = a.out.display();
    if a.resume && existing.is_empty() {
        bail!(
            "--resume: {dir} holds no checkpoint to continue ({}); drop --resume to start a new run",
            names
                .iter()
                .map(|n| format!("{n}.ckpt"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !a.resume && !a.force && !existing.is_empty() {
        bail!(
            "{dir} already holds a training run ({}); add --resume to continue it with the same flags, --force to start afresh and overwrite it, or choose another --out",
            existing.join(", ")
        );
    }
    Ok(())
}

/// Files exported from an earlier run, which `--force` leaves beside the new checkpoints.
fn exported_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "psm" || x == "safetensors")
        })
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

pub fn run(a: TrainArgs) -> Result<i32> {
    check_flags(&a)?;
    let mut names = Vec::new();
    if a.what != What::Classifier {
        names.push("denoiser");
    }
    if a.what != What::Denoiser {
        names.push("classifier");
    }
    check_out_dir(&a, &names)?;
    let full = load_dataset_dir(&a.data, Split::Train)?;
    let (tr, val) = full
        .split_validation(a.validation, HOLDOUT_SEED)
        .with_context(|| format!("--validation {}", a.validation))?;
    eprintln!(
        "data: {} training and {} validation images of {}x{} from {}",
        tr.len(),
        val.len(),
        full.rows,
        full.cols,
        a.data.display()
    );
    let mut jobs = Vec::new();
    let shape = InputShape {
        channels: u16::try_from(full.channels)?,
        height: u16::try_from(full.rows)?,
        width: u16::try_from(full.cols)?,
    };
    // `--*-arch` when given, else the MLP of `--*-hidden`.
    let build = |arch: &Option<String>,
                 hidden: &[usize],
                 output: ArchOutput,
                 residual: bool,
                 gain: f32,
                 seed: u64|
     -> Result<FloatNet> {
        let description = match arch {
            Some(desc) => desc.clone(),
            None => hidden
                .iter()
                .map(|w| format!("dense{w}"))
                .collect::<Vec<_>>()
                .join(","),
        };
        let layers = parse_arch(&description)?;
        Ok(build_arch(
            &description,
            &layers,
            shape,
            output,
            residual,
            gain,
            seed,
        )?)
    };
    if a.what != What::Classifier {
        let gain = if a.residual { 0.5 } else { 1.0 };
        jobs.push((
            "denoiser",
            "den",
            Objective::Denoiser {
                sigmas: a.sigmas.clone(),
            },
            build(
                &a.den_arch,
                &a.den_hidden,
                ArchOutput::Image,
                a.residual,
                gain,
                a.seed,
            )?,
            a.den_epochs,
        ));
    }
    if a.what != What::Denoiser {
        let adversarial = match a.adversarial {
            Adversarial::None => None,
            m => Some(AdversarialTraining {
                method: match m {
                    Adversarial::Trades => AdversarialMethod::Trades {
                        beta: trades_beta(&a),
                    },
                    Adversarial::PgdMax => AdversarialMethod::PgdMax {
                        second_eps: adv_second_eps(&a),
                    },
                    _ => AdversarialMethod::Pgd,
                },
                norm: match a.adv_norm {
                    NormArg::Linf => AttackNorm::Linf,
                    NormArg::L2 => AttackNorm::L2,
                },
                eps: a.adv_eps,
                steps: a.adv_steps,
                step_size: a.adv_step_size,
                random_start: !a.adv_no_random_start,
                warmup_epochs: a.adv_warmup_epochs,
            }),
        };
        let objective = match (&a.purified_by, adversarial) {
            (Some(path), adversarial) => Objective::PurifiedClassifier {
                classes: 10,
                adversarial,
                purifier: in_loop_purifier(path, shape)?,
            },
            (None, None) => Objective::Classifier { classes: 10 },
            (None, Some(adversarial)) => Objective::RobustClassifier {
                classes: 10,
                adversarial,
            },
        };
        let net = match &a.init_classifier {
            Some(path) => {
                let init = load_checkpoint(path)
                    .with_context(|| format!("--init-classifier {}", path.display()))?;
                if init.objective.classes() != Some(10) {
                    bail!(
                        "--init-classifier {}: not a 10-class classifier checkpoint",
                        path.display()
                    );
                }
                init.net.check(full.image_len()).map_err(|e| {
                    anyhow::anyhow!(
                        "--init-classifier {}: it does not take the images of --data {} ({e})",
                        path.display(),
                        a.data.display()
                    )
                })?;
                init.net
            }
            None => build(
                &a.cls_arch,
                &a.cls_hidden,
                ArchOutput::Classes(10),
                false,
                1.0,
                a.seed.wrapping_add(1),
            )?,
        };
        jobs.push(("classifier", "cls", objective, net, a.cls_epochs));
    }
    // The data split is not in the checkpoints: a side file records it.
    let split = RunData {
        validation: a.validation,
        train_file_images: full.len(),
        holdout_seed: Some(HOLDOUT_SEED),
        train_sha256: Some(pursamere_trainer::eval::results::dataset_sha256(&full)),
    };
    let split_path = a.out.join(RUN_DATA_FILE);
    // A network of the folder this command does not train keeps the split it was
    // trained on: the folder's one split file must keep describing it.
    let others: Vec<String> = ["denoiser", "classifier"]
        .iter()
        .filter(|n| !names.contains(n))
        .map(|n| format!("{n}.ckpt"))
        .filter(|f| a.out.join(f).exists())
        .collect();
    if a.resume || !others.is_empty() {
        if let Ok(text) = std::fs::read_to_string(&split_path) {
            let then: RunData = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid", split_path.display()))?;
            let mut diff = Vec::new();
            if then.validation != split.validation {
                diff.push(format!(
                    "--validation {} (the run has {})",
                    split.validation, then.validation
                ));
            }
            // The hold-out used to be drawn with the run's --seed; resuming such a
            // run now would silently train on part of its old hold-out.
            // (Only a resume may take the run's seed to be this command's --seed.)
            let then_seed = then
                .holdout_seed
                .or(a.resume.then_some(a.seed))
                .unwrap_or(HOLDOUT_SEED);
            if then_seed != HOLDOUT_SEED {
                diff.push(format!(
                    "its hold-out was drawn with seed {then_seed} by an older version of \
                     pursamere (every run now holds out the same images, seed {HOLDOUT_SEED}); \
                     resuming would train on images it held out, so start afresh with --force"
                ));
            }
            if then.train_file_images == split.train_file_images
                && then.train_sha256.is_some()
                && then.train_sha256 != split.train_sha256
            {
                diff.push(format!(
                    "--data {}: other training images than the run was started on (the same \
                     count, other pixels or labels)",
                    a.data.display()
                ));
            }
            if then.train_file_images != split.train_file_images {
                diff.push(format!(
                    "--data {} with {} training images (the run was started on {})",
                    a.data.display(),
                    split.train_file_images,
                    then.train_file_images
                ));
            }
            if !diff.is_empty() && !a.resume {
                bail!(
                    "{} holds {} trained on another split of the data: {}; train with the flags it was trained with, or train in another --out",
                    a.out.display(),
                    others.join(", "),
                    diff.join("; ")
                );
            }
            if !diff.is_empty() {
                bail!(
                    "cannot resume the run in {}: it was started with other settings: {}; resume with the flags the run was started with, or start a new run in another --out",
                    a.out.display(),
                    diff.join("; ")
                );
            }
        }
    }
    // Every checkpoint is checked against the flags before any training starts.
    let mut runs = Vec::new();
    for (name, prefix, objective, net, epochs) in jobs {
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
            let wanted = Wanted {
                prefix,
                objective: &objective,
                config: &config,
                net: &net,
            };
            let diff = differences(&wanted, &ck);
            if !diff.is_empty() {
                bail!(
                    "cannot resume {}: it was started with other settings: {}; resume with the flags the run was started with, or start a new run in another --out",
                    path.display(),
                    diff.join("; ")
                );
            }
            eprintln!(
                "{name}: resuming after epoch {} of {}",
                ck.epochs_done, ck.config.epochs
            );
            ck
        } else {
            if a.resume {
                eprintln!(
                    "{name}: no checkpoint in {}, starting afresh",
                    a.out.display()
                );
            }
            fresh_checkpoint(objective, config, net)
        };
        runs.push((name, path, epochs, ck));
    }
    if a.force {
        let old = exported_files(&a.out);
        if !old.is_empty() {
            eprintln!(
                "note: --force: {} exported from the earlier run stay in place; export again after training",
                old.join(", ")
            );
        }
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("--out {}: cannot create the folder", a.out.display()))?;
    // Held until training ends (released by the OS however the process ends): a
    // second `train` on the same folder would overwrite this one's checkpoints.
    let lock_path = a.out.join(TRAIN_LOCK_FILE);
    let Some(_lock) = pursamere_trainer::train::try_lock_file(&lock_path).with_context(|| {
        format!(
            "--out {}: cannot lock {}",
            a.out.display(),
            lock_path.display()
        )
    })?
    else {
        bail!(
            "--out {} is in use: another `train` is writing to it (it holds {}); wait for it to finish, or choose another --out",
            a.out.display(),
            lock_path.display()
        );
    };
    if !a.resume || !split_path.exists() {
        super::write_file(
            &split_path,
            serde_json::to_string_pretty(&split)?.as_bytes(),
        )?;
    }
    eprintln!(
        "checkpoints are written to {} after every epoch; if training stops (Ctrl-C), run the same command with --resume to continue",
        a.out.display()
    );
    let mut results = Vec::new();
    for (name, path, epochs, ck) in runs {
        let params = ck.net.params();
        eprintln!("{name}: {params} parameters, {epochs} epochs");
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
            let validation = if val.is_empty() {
                "no validation set (--validation 0)".to_owned()
            } else {
                format!(
                    "validation loss {:.4}{}",
                    last.val_loss,
                    last.val_accuracy
                        .map(|v| format!(", accuracy {:.2} %", 100.0 * v))
                        .unwrap_or_default()
                )
            };
            eprintln!(
                "{name}: done in {:.1} s ({ips:.0} training images/s); {validation}; checkpoint {}",
                start.elapsed().as_secs_f64(),
                path.display()
            );
            results.push(serde_json::json!({
                "network": name,
                "parameters": params,
                "epochs": done.epochs_done,
                "seconds": start.elapsed().as_secs_f64(),
                "images_per_second": ips,
                "train_loss": last.train_loss,
                "validation_loss": (!val.is_empty()).then_some(last.val_loss),
                "validation_accuracy": last.val_accuracy,
                "validation_images": val.len(),
                "checkpoint": path.display().to_string(),
            }));
        }
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "out": a.out.display().to_string(),
                "networks": results,
            }))?
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `train`'s flags alone, to parse them in tests.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn parse(args: &[&str]) -> TrainArgs {
        let argv = ["train", "--data", "d", "--out", "o"].iter().chain(args);
        match Cli::try_parse_from(argv) {
            Ok(c) => c.train,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn second_eps_defaults_to_the_standard_radius_of_the_second_norm() {
        let linf = parse(&["--adversarial", "pgd-max", "--adv-norm", "linf"]);
        assert_eq!(adv_second_eps(&linf), DEFAULT_SECOND_EPS_L2);
        let l2 = parse(&["--adversarial", "pgd-max", "--adv-norm", "l2"]);
        assert_eq!(adv_second_eps(&l2), DEFAULT_SECOND_EPS_LINF);
        const {
            assert!(
                DEFAULT_SECOND_EPS_LINF < 1.0,
                "an L∞ ball of 1 holds every image"
            )
        };
        let given = parse(&[
            "--adversarial",
            "pgd-max",
            "--adv-norm",
            "l2",
            "--adv-second-eps",
            "0.1",
        ]);
        assert_eq!(adv_second_eps(&given), 0.1);
        assert_eq!(
            trades_beta(&parse(&["--adversarial", "trades"])),
            DEFAULT_TRADES_BETA
        );
    }
}
