//! Training loops: the score model with the expected-reconstruction-error loss
//! `E ||D(x + σε) − x||²`, the classifier with cross-entropy, and the classifier
//! adversarially trained (PGD-AT, Madry et al. 2018, or TRADES, Zhang et al. 2019,
//! with the project's one PGD, [`crate::attack::pgd`]); Adam with a cosine
//! learning-rate schedule; atomic per-epoch checkpoints and exact resume.
//!
//! Determinism: every random choice of epoch `e` (shuffle, σ per example, noise)
//! comes from a ChaCha8 stream seeded by `(seed, e)`, and the optimiser state is in
//! the checkpoint, so a run resumed from the checkpoint after epoch `e` ends with
//! exactly the weights of an uninterrupted run.
//!
//! Adam is written here with dfdx tensor ops (dfdx's own optimisers need
//! compile-time shapes; ours are runtime so widths are a command-line choice).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::attack::GradientOracle;
use crate::data::Dataset;
use crate::model::{Batch, DeviceNet, FloatNet};

/// The device the trainer uses: the CPU, or CUDA with the `cuda` feature.
pub type Dev = AutoDevice;

/// What is being trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    /// Score model: ERE loss with σ drawn per example from `sigmas`.
    Denoiser {
        /// Noise levels (one is drawn uniformly per example).
        sigmas: Vec<f32>,
    },
    /// Classifier: softmax cross-entropy over `classes`.
    Classifier {
        /// Number of classes.
        classes: usize,
    },
    /// Classifier trained on adversarial examples of its current weights.
    RobustClassifier {
        /// Number of classes.
        classes: usize,
        /// How the adversarial examples are made and used.
        adversarial: AdversarialTraining,
    },
    /// Classifier trained behind a fixed purifier, on what the purifier makes of its
    /// inputs: `C(P(x))`, or with `adversarial`, `C(P(x'))` where `x'` attacks the
    /// whole defended system `C ∘ P` through the exact unrolled gradient of the
    /// purification (the same oracle as the evaluation's `apgd-ce`). The purifier
    /// does not depend on the classifier's weights, so only the classifier learns.
    /// (Last variant: checkpoints of the others decode as before.)
    PurifiedClassifier {
        /// Number of classes.
        classes: usize,
        /// Adversarial training through the purifier (`None`: purified clean inputs).
        adversarial: Option<AdversarialTraining>,
        /// The purifier in front.
        purifier: InLoopPurifier,
    },
}

/// A fixed purifier in front of a classifier being trained (the denoiser and the
/// settings of a `.psm`; kept in the checkpoint, so a resumed run cannot change it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InLoopPurifier {
    /// The denoiser (dequantised from the model file).
    denoiser: FloatNet,
    /// The purification settings (their `noise` field is not serialised: see
    /// `noise_f64`).
    config: pursamere_core::PurifierConfig,
    /// Whether the noise generator is Box–Muller in f64 (model formats 1 and 2)
    /// rather than in f32.
    noise_f64: bool,
}

impl InLoopPurifier {
    /// The purifier `denoiser` with `config` (the noise generator included).
    pub fn new(denoiser: FloatNet, config: pursamere_core::PurifierConfig) -> Self {
        InLoopPurifier {
            denoiser,
            config,
            noise_f64: config.noise == pursamere_core::noise::NoiseGenerator::BoxMullerF64,
        }
    }

    /// The denoiser.
    pub fn denoiser(&self) -> &FloatNet {
        &self.denoiser
    }

    /// The purification settings, with their noise generator.
    pub fn config(&self) -> pursamere_core::PurifierConfig {
        pursamere_core::PurifierConfig {
            noise: if self.noise_f64 {
                pursamere_core::noise::NoiseGenerator::BoxMullerF64
            } else {
                pursamere_core::noise::NoiseGenerator::BoxMullerF32
            },
            ..self.config
        }
    }

    /// The float reference of this purifier for inputs of length `d`.
    fn reference(&self, d: usize) -> crate::reference::Reference<f32, Cpu> {
        crate::reference::Reference::new(&Cpu::default(), &self.denoiser, d, self.config())
    }
}

impl PartialEq for InLoopPurifier {
    fn eq(&self, other: &Self) -> bool {
        self.denoiser == other.denoiser && self.config() == other.config()
    }
}

impl Objective {
    /// Number of classes of a classifier objective.
    pub fn classes(&self) -> Option<usize> {
        match self {
            Objective::Denoiser { .. } => None,
            Objective::Classifier { classes }
            | Objective::RobustClassifier { classes, .. }
            | Objective::PurifiedClassifier { classes, .. } => Some(*classes),
        }
    }

    /// The purifier in front of the classifier, if the objective has one.
    pub fn purifier(&self) -> Option<&InLoopPurifier> {
        match self {
            Objective::PurifiedClassifier { purifier, .. } => Some(purifier),
            _ => None,
        }
    }

    /// The adversarial-training settings, if the objective has them.
    pub fn adversarial(&self) -> Option<&AdversarialTraining> {
        match self {
            Objective::RobustClassifier { adversarial, .. } => Some(adversarial),
            Objective::PurifiedClassifier { adversarial, .. } => adversarial.as_ref(),
            _ => None,
        }
    }
}

/// How adversarial examples enter the loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum AdversarialMethod {
    /// PGD adversarial training (Madry et al. 2018): cross-entropy at the PGD point.
    Pgd,
    /// TRADES (Zhang et al. 2019): cross-entropy at the clean point plus
    /// `β · KL(p(x) ‖ p(x'))`, `x'` maximising that KL by PGD.
    Trades {
        /// Weight β of the robustness term.
        beta: f32,
    },
    /// PGD adversarial training against two threats at once (Tramèr & Boneh 2019,
    /// the "max" strategy): PGD in `norm` at `eps` and PGD in the other norm at
    /// `second_eps`; each example is trained at whichever point has the higher
    /// cross-entropy. Twice the attack cost of [`AdversarialMethod::Pgd`].
    PgdMax {
        /// Radius of the second threat (in the norm other than `norm`; scaled by
        /// the ε warm-up like `eps`).
        second_eps: f32,
    },
}

/// Adversarial-training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdversarialTraining {
    /// PGD-AT or TRADES.
    pub method: AdversarialMethod,
    /// Threat norm.
    pub norm: crate::attack::AttackNorm,
    /// Radius ε (reached after the warm-up).
    pub eps: f32,
    /// PGD steps per training batch.
    pub steps: usize,
    /// PGD step as a multiple of the current ε.
    pub step_size: f32,
    /// Start PGD at a random point of the ball.
    pub random_start: bool,
    /// Epochs over which ε rises linearly from 0 to `eps` (0: full ε from the start).
    pub warmup_epochs: usize,
}

impl AdversarialTraining {
    /// ε at global step `step` of `steps_per_epoch` per epoch.
    pub fn eps_at(&self, step: usize, steps_per_epoch: usize) -> f32 {
        let warm = self.warmup_epochs * steps_per_epoch;
        if warm == 0 {
            self.eps
        } else {
            self.eps * ((step + 1) as f32 / warm as f32).min(1.0)
        }
    }

    /// The PGD configuration at radius `eps` with seed `seed`.
    pub fn pgd_config(&self, eps: f32, seed: u64) -> crate::attack::PgdConfig {
        crate::attack::PgdConfig {
            norm: self.norm,
            eps,
            steps: self.steps,
            step_size: self.step_size * eps,
            schedule: crate::attack::StepSchedule::Constant,
            loss: match self.method {
                AdversarialMethod::Pgd | AdversarialMethod::PgdMax { .. } => {
                    crate::attack::AttackLoss::CrossEntropy
                }
                AdversarialMethod::Trades { .. } => crate::attack::AttackLoss::Kl,
            },
            random_start: self.random_start,
            restarts: 1,
            seed,
            early_stop: false,
        }
    }

    /// The second threat of [`AdversarialMethod::PgdMax`] at the warm-up point
    /// where the first has radius `eps`: the other norm, its radius scaled alike.
    /// `None` for the other methods.
    pub fn second_pgd_config(&self, eps: f32, seed: u64) -> Option<crate::attack::PgdConfig> {
        let AdversarialMethod::PgdMax { second_eps } = self.method else {
            return None;
        };
        let scale = if self.eps > 0.0 { eps / self.eps } else { 1.0 };
        let e2 = second_eps * scale;
        Some(crate::attack::PgdConfig {
            norm: match self.norm {
                crate::attack::AttackNorm::Linf => crate::attack::AttackNorm::L2,
                crate::attack::AttackNorm::L2 => crate::attack::AttackNorm::Linf,
            },
            eps: e2,
            step_size: self.step_size * e2,
            seed: seed ^ 0x005E_C04D,
            ..self.pgd_config(eps, seed)
        })
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad(format!("adversarial ε {} must be finite and ≥ 0", self.eps));
        }
        if self.steps == 0 {
            return bad("adversarial PGD needs at least 1 step".into());
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return bad(format!(
                "adversarial step size {} must be finite and > 0",
                self.step_size
            ));
        }
        if let AdversarialMethod::PgdMax { second_eps } = self.method {
            if !(second_eps.is_finite() && second_eps >= 0.0) {
                return bad(format!(
                    "second adversarial ε {second_eps} must be finite and ≥ 0"
                ));
            }
        }
        if let AdversarialMethod::Trades { beta } = self.method {
            if !(beta.is_finite() && beta >= 0.0) {
                return bad(format!("TRADES β {beta} must be finite and ≥ 0"));
            }
        }
        Ok(())
    }
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Learning rate at the end of the cosine schedule, as a fraction of `lr`.
    pub lr_final_fraction: f32,
    /// Adam β₁.
    pub beta1: f32,
    /// Adam β₂.
    pub beta2: f32,
    /// Adam ε.
    pub eps: f32,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 128,
            lr: 1e-3,
            lr_final_fraction: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            seed: 0,
        }
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epoch index (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f32,
    /// Validation loss (ERE per example, or cross-entropy).
    pub val_loss: f32,
    /// Validation accuracy (classifier only).
    pub val_accuracy: Option<f32>,
    /// Training throughput.
    pub images_per_second: f32,
}

/// Everything needed to continue a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Checkpoint format version.
    pub version: u32,
    /// What is trained.
    pub objective: Objective,
    /// How.
    pub config: TrainConfig,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Adam step counter.
    pub adam_t: u64,
    /// Current weights.
    pub net: FloatNet,
    /// Adam first moments (same layout as `net`).
    pub adam_m: FloatNet,
    /// Adam second moments.
    pub adam_v: FloatNet,
    /// Per-epoch history.
    pub history: Vec<EpochStats>,
}

const CHECKPOINT_VERSION: u32 = 1;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a checkpoint failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A checkpoint file could not be decoded.
    #[error("{path}: not a valid checkpoint ({why})")]
    BadCheckpoint {
        /// File.
        path: PathBuf,
        /// Cause.
        why: String,
    },
    /// Settings that cannot work.
    #[error("{0}")]
    Config(String),
}

/// Options of one call to [`train`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write a checkpoint here after every epoch (atomically).
    pub checkpoint: Option<PathBuf>,
    /// Stop after this many epochs in total (to test resuming).
    pub stop_after: Option<usize>,
    /// Show a progress bar and per-epoch lines on stderr.
    pub progress: bool,
}

/// Adam moments on the device, one pair per dense layer.
struct Moments {
    m: DeviceNet<f32, Dev>,
    v: DeviceNet<f32, Dev>,
}

/// A new run's starting state.
pub fn fresh_checkpoint(objective: Objective, config: TrainConfig, net: FloatNet) -> Checkpoint {
    let zeros = net.zeros_like();
    Checkpoint {
        version: CHECKPOINT_VERSION,
        objective,
        config,
        epochs_done: 0,
        adam_t: 0,
        net,
        adam_m: zeros.clone(),
        adam_v: zeros,
        history: Vec::new(),
    }
}

/// Reads a checkpoint.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })?;
    let ck: Checkpoint = postcard::from_bytes(&bytes).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        why: format!(
            "{} bytes that do not decode as a checkpoint written by `pursamere train`: \
             the file is truncated, corrupt or of another kind ({e})",
            bytes.len()
        ),
    })?;
    if ck.version != CHECKPOINT_VERSION {
        return Err(TrainError::BadCheckpoint {
            path: path.to_owned(),
            why: format!(
                "version {} (this build reads {CHECKPOINT_VERSION})",
                ck.version
            ),
        });
    }
    Ok(ck)
}

/// Takes an exclusive advisory lock (`flock`) on the file at `path`, creating it:
/// `Ok(Some(file))` holds it until the file is dropped or the process ends however
/// it ends; `Ok(None)` when another process (or another open of it) holds it.
/// What a run holds on its output folder so that two runs never write one folder.
pub fn try_lock_file(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// then a rename, so a crash never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // No half-written file left behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn save_checkpoint(path: &Path, ck: &Checkpoint) -> Result<(), TrainError> {
    let bytes = postcard::to_allocvec(ck).map_err(|e| TrainError::BadCheckpoint {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    write_atomic(path, &bytes).map_err(|source| TrainError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Seed of the random stream `stream` of epoch `epoch`.
fn epoch_seed(seed: u64, epoch: usize, stream: u64) -> u64 {
    pursamere_core::noise::noise_bits(seed, stream as u32, epoch as u32)
}

/// Uploads examples `idx` of `data` as a `[batch, d]` tensor scaled to `[0, 1]`.
fn batch_pixels(data: &Dataset, idx: &[usize]) -> Vec<f32> {
    let d = data.image_len();
    let mut v = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        if let Some(img) = data.image(i) {
            v.extend(img.iter().map(|&p| f32::from(p) / 255.0));
        }
    }
    v
}

fn one_hot(data: &Dataset, idx: &[usize], classes: usize) -> Vec<f32> {
    let mut v = vec![0.0; idx.len() * classes];
    for (row, &i) in idx.iter().enumerate() {
        let l = data.labels.get(i).copied().unwrap_or(0) as usize;
        if let Some(x) = v.get_mut(row * classes + l) {
            *x = 1.0;
        }
    }
    v
}

/// A batch loss with its tape.
type TapedLoss = Tensor<Rank0, f32, Dev, OwnedTape<f32, Dev>>;

/// Clean and adversarial accuracy of one adversarial-training batch (for the
/// progress display).
#[derive(Debug, Clone, Copy, Default)]
struct AdversarialBatch {
    clean_correct: usize,
    adversarial_correct: usize,
    images: usize,
}

/// How many rows of `logits` (`[b, classes]`) put their largest value on the label.
/// Per example, replaces the row of `a` by the row of `b` where `b` has the
/// higher cross-entropy (the "max" strategy of multi-threat adversarial training).
fn keep_higher_loss<O: crate::attack::GradientOracle>(
    a: &mut [f32],
    b: &[f32],
    oracle: &O,
    labels: &[usize],
    classes: usize,
    d: usize,
) {
    let (za, zb) = (oracle.logits(a), oracle.logits(b));
    let ce = |z: &[f32], y: usize| {
        crate::attack::loss::loss_and_logit_grad(crate::attack::AttackLoss::CrossEntropy, z, y, 0).0
    };
    for (i, &y) in labels.iter().enumerate() {
        let (Some(ra), Some(rb)) = (
            za.get(i * classes..(i + 1) * classes),
            zb.get(i * classes..(i + 1) * classes),
        ) else {
            continue;
        };
        if ce(rb, y) > ce(ra, y) {
            if let (Some(dst), Some(src)) =
                (a.get_mut(i * d..(i + 1) * d), b.get(i * d..(i + 1) * d))
            {
                dst.copy_from_slice(src);
            }
        }
    }
}

fn correct(logits: &[f32], labels: &[usize], classes: usize) -> usize {
    logits
        .chunks(classes.max(1))
        .zip(labels)
        .filter(|(z, &y)| {
            let best =
                z.iter().enumerate().fold(
                    (0, f32::NEG_INFINITY),
                    |a, (i, &v)| if v > a.1 { (i, v) } else { a },
                );
            best.0 == y
        })
        .count()
}

/// Loss of one batch (with the tape on the input so parameter gradients exist), and
/// for adversarial training the batch's clean and adversarial accuracy. `adv` is
/// the current ε and PGD seed of adversarial training.
fn batch_loss(
    dev: &Dev,
    net: &DeviceNet<f32, Dev>,
    objective: &Objective,
    data: &Dataset,
    idx: &[usize],
    rng: &mut ChaCha8Rng,
    adv: (f32, u64),
) -> (TapedLoss, Option<AdversarialBatch>) {
    let b = idx.len();
    let d = data.image_len();
    let x = batch_pixels(data, idx);
    match objective {
        Objective::Denoiser { sigmas } => {
            let mut y = x.clone();
            for row in y.chunks_mut(d) {
                let s = sigmas[rng.gen_range(0..sigmas.len())];
                for v in row {
                    let e: f32 = rng.sample(StandardNormal);
                    *v += s * e;
                }
            }
            let y: Batch<f32, Dev> = dev.tensor_from_vec(y, (b, d));
            let x: Batch<f32, Dev> = dev.tensor_from_vec(x, (b, d));
            let out = net.forward(y.leaky_traced());
            ((out - x).square().sum::<Rank0, _>() / b as f32, None)
        }
        Objective::Classifier { classes } => {
            let t: Batch<f32, Dev> =
                dev.tensor_from_vec(one_hot(data, idx, *classes), (b, *classes));
            let x: Batch<f32, Dev> = dev.tensor_from_vec(x, (b, d));
            (
                cross_entropy_with_logits_loss(net.forward(x.leaky_traced()), t),
                None,
            )
        }
        Objective::RobustClassifier {
            classes,
            adversarial,
        } => {
            let oracle = crate::attack::NetOracle { dev, net, d };
            let (loss, stats) = robust_loss(
                dev,
                net,
                &oracle,
                &|v: &[f32]| v.to_vec(),
                Some(adversarial),
                x,
                data,
                idx,
                *classes,
                adv,
            );
            (loss, Some(stats))
        }
        Objective::PurifiedClassifier {
            classes,
            adversarial,
            purifier,
        } => {
            // The attack differentiates the whole system at the current weights.
            let classifier = net.to_float();
            let oracle = crate::attack::PurifiedOracle::new(
                purifier.denoiser(),
                &classifier,
                d,
                purifier.config(),
                crate::attack::PurifierGradient::Full,
            );
            let (loss, stats) = robust_loss(
                dev,
                net,
                &oracle,
                &|v: &[f32]| oracle.purify(v),
                adversarial.as_ref(),
                x,
                data,
                idx,
                *classes,
                adv,
            );
            (loss, adversarial.is_some().then_some(stats))
        }
    }
}

/// The loss of a classifier that sees `view(x)` (the input itself, or what a
/// purifier makes of it) at the adversarial examples of `oracle` (the system being
/// attacked: the classifier, or the purifier and the classifier), and the batch's
/// clean and adversarial accuracy. Without `adversarial`, cross-entropy at
/// `view(x)`. `x` is the batch `idx` of `data` in `[0, 1]`.
#[allow(clippy::too_many_arguments)]
fn robust_loss<O: GradientOracle>(
    dev: &Dev,
    net: &DeviceNet<f32, Dev>,
    oracle: &O,
    view: &dyn Fn(&[f32]) -> Vec<f32>,
    adversarial: Option<&AdversarialTraining>,
    x: Vec<f32>,
    data: &Dataset,
    idx: &[usize],
    classes: usize,
    adv: (f32, u64),
) -> (TapedLoss, AdversarialBatch) {
    let b = idx.len();
    let d = data.image_len();
    let labels: Vec<usize> = idx
        .iter()
        .map(|&i| usize::from(data.labels.get(i).copied().unwrap_or(0)))
        .collect();
    let t: Batch<f32, Dev> = dev.tensor_from_vec(one_hot(data, idx, classes), (b, classes));
    let (eps, seed) = adv;
    let mut stats = AdversarialBatch {
        images: b,
        ..Default::default()
    };
    let Some(adversarial) = adversarial else {
        let xv: Batch<f32, Dev> = dev.tensor_from_vec(view(&x), (b, d));
        let lc = net.forward(xv.leaky_traced());
        stats.clean_correct = correct(&lc.as_vec(), &labels, classes);
        stats.adversarial_correct = stats.clean_correct;
        return (cross_entropy_with_logits_loss(lc, t), stats);
    };
    let cfg = adversarial.pgd_config(eps, seed);
    let loss = match adversarial.method {
        AdversarialMethod::Pgd | AdversarialMethod::PgdMax { .. } => {
            // One forward pass without the tape for the clean accuracy.
            stats.clean_correct = correct(&oracle.logits(&x), &labels, classes);
            let mut xa = if eps > 0.0 {
                crate::attack::pgd(oracle, &x, &labels, &cfg)
            } else {
                x.clone()
            };
            let second = adversarial.second_pgd_config(eps, seed);
            if let Some(cfg2) = second.filter(|_| eps > 0.0) {
                let xb = crate::attack::pgd(oracle, &x, &labels, &cfg2);
                keep_higher_loss(&mut xa, &xb, oracle, &labels, classes, d);
            }
            let xa: Batch<f32, Dev> = dev.tensor_from_vec(view(&xa), (b, d));
            let la = net.forward(xa.leaky_traced());
            stats.adversarial_correct = correct(&la.as_vec(), &labels, classes);
            cross_entropy_with_logits_loss(la, t)
        }
        AdversarialMethod::Trades { beta } => {
            // The clean prediction is the reference of the KL attack.
            let clean = oracle.logits(&x);
            stats.clean_correct = correct(&clean, &labels, classes);
            let soft: Vec<f32> = clean
                .chunks(classes)
                .flat_map(|z| {
                    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
                    let s: f32 = e.iter().sum();
                    e.into_iter().map(move |v| v / s)
                })
                .collect();
            let xa = if eps > 0.0 {
                crate::attack::pgd_soft(oracle, &x, &labels, &soft, &cfg)
            } else {
                x.clone()
            };
            let xc: Batch<f32, Dev> = dev.tensor_from_vec(view(&x), (b, d));
            let xa: Batch<f32, Dev> = dev.tensor_from_vec(view(&xa), (b, d));
            let lc = net.forward(xc.leaky_traced());
            let la = net.forward(xa.leaky_traced());
            stats.adversarial_correct = correct(&la.as_vec(), &labels, classes);
            // KL(p_c ‖ p_a) with gradients through both, as in TRADES.
            let pc = lc.with_empty_tape().softmax::<Axis<1>>();
            let log_pc = lc.with_empty_tape().log_softmax::<Axis<1>>();
            let log_pa = la.log_softmax::<Axis<1>>();
            let kl = (pc * (log_pc - log_pa)).sum::<Rank0, _>() / b as f32;
            cross_entropy_with_logits_loss(lc, t) + kl * beta
        }
    };
    (loss, stats)
}

/// Validation figures: (loss, accuracy). The denoiser's loss is the ERE at the first
/// σ with noise fixed by the seed.
pub fn evaluate(
    dev: &Dev,
    net: &DeviceNet<f32, Dev>,
    objective: &Objective,
    data: &Dataset,
    seed: u64,
) -> (f32, Option<f32>) {
    let n = data.len();
    let d = data.image_len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let all: Vec<usize> = (0..n).collect();
    // A classifier behind a purifier is validated on purified images.
    let reference = match objective {
        Objective::PurifiedClassifier { purifier, .. } => Some(purifier.reference(d)),
        _ => None,
    };
    for idx in all.chunks(512) {
        let b = idx.len();
        let mut x = batch_pixels(data, idx);
        if let Some(r) = &reference {
            x = r.purify(&x);
        }
        match objective {
            Objective::Denoiser { sigmas } => {
                let s = sigmas.first().copied().unwrap_or(0.5);
                let y: Vec<f32> = x
                    .iter()
                    .map(|&v| v + s * rng.sample::<f32, _>(StandardNormal))
                    .collect();
                let out = net.forward(dev.tensor_from_vec(y, (b, d)));
                let x: Batch<f32, Dev> = dev.tensor_from_vec(x, (b, d));
                loss += f64::from((out - x).square().sum::<Rank0, _>().array());
            }
            Objective::Classifier { classes }
            | Objective::RobustClassifier { classes, .. }
            | Objective::PurifiedClassifier { classes, .. } => {
                let logits = net.forward(dev.tensor_from_vec(x, (b, d)));
                let lv = logits.as_vec();
                for (row, &i) in lv.chunks(*classes).zip(idx) {
                    let best = (0..*classes).fold(0, |a, c| if row[c] > row[a] { c } else { a });
                    correct += usize::from(data.labels.get(i) == Some(&(best as u8)));
                }
                let t: Batch<f32, Dev> =
                    dev.tensor_from_vec(one_hot(data, idx, *classes), (b, *classes));
                loss += f64::from(cross_entropy_with_logits_loss(logits, t).array()) * b as f64;
            }
        }
    }
    let acc = objective
        .classes()
        .map(|_| correct as f32 / n.max(1) as f32);
    ((loss / n.max(1) as f64) as f32, acc)
}

/// Accuracy of `net` under the training PGD at full ε on the first `count` images
/// of `data` (fixed seed): what adversarial training is raising.
pub fn pgd_accuracy(
    dev: &Dev,
    net: &DeviceNet<f32, Dev>,
    adversarial: &AdversarialTraining,
    data: &Dataset,
    count: usize,
    seed: u64,
) -> f32 {
    let n = count.min(data.len());
    let idx: Vec<usize> = (0..n).collect();
    let x = batch_pixels(data, &idx);
    let y: Vec<usize> = idx
        .iter()
        .map(|&i| usize::from(data.labels.get(i).copied().unwrap_or(0)))
        .collect();
    let oracle = crate::attack::NetOracle {
        dev,
        net,
        d: data.image_len(),
    };
    let cfg = crate::attack::PgdConfig {
        loss: crate::attack::AttackLoss::CrossEntropy,
        random_start: true,
        ..adversarial.pgd_config(adversarial.eps, seed)
    };
    let robust = |cfg: &crate::attack::PgdConfig| -> Vec<bool> {
        let z = oracle.logits(&crate::attack::pgd(&oracle, &x, &y, cfg));
        let c = z.len() / n.max(1);
        z.chunks(c.max(1))
            .zip(&y)
            .map(|(zr, &l)| crate::attack::argmax(zr) == l)
            .collect()
    };
    let mut ok = robust(&cfg);
    // Against two threats, robust means robust to both.
    if let Some(cfg2) = adversarial.second_pgd_config(adversarial.eps, seed) {
        let cfg2 = crate::attack::PgdConfig {
            loss: crate::attack::AttackLoss::CrossEntropy,
            random_start: true,
            ..cfg2
        };
        for (o, r) in ok.iter_mut().zip(robust(&cfg2)) {
            *o &= r;
        }
    }
    ok.iter().filter(|&&o| o).count() as f32 / n.max(1) as f32
}

/// Runs (or continues) training from `ck` on `train_set`, validating on `val_set`
/// after every epoch. Returns the final checkpoint.
pub fn train(
    mut ck: Checkpoint,
    train_set: &Dataset,
    val_set: &Dataset,
    opts: &RunOptions,
) -> Result<Checkpoint, TrainError> {
    let cfg = ck.config.clone();
    if cfg.batch_size == 0 || train_set.is_empty() {
        return Err(TrainError::Config(
            "batch size and training set must be non-empty".into(),
        ));
    }
    if let Some(adversarial) = ck.objective.adversarial() {
        adversarial.validate()?;
    }
    if let Objective::PurifiedClassifier { purifier, .. } = &ck.objective {
        purifier
            .config()
            .validate()
            .map_err(|e| TrainError::Config(format!("the purifier in front: {e}")))?;
        let out = purifier
            .denoiser
            .check(train_set.image_len())
            .map_err(|e| TrainError::Config(format!("the purifier's denoiser: {e}")))?;
        if out != train_set.image_len() {
            return Err(TrainError::Config(format!(
                "the purifier's denoiser returns {out} values for {}-pixel images",
                train_set.image_len()
            )));
        }
    }
    if let Objective::Denoiser { sigmas } = &ck.objective {
        if sigmas.is_empty() || sigmas.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(TrainError::Config(format!(
                "noise levels {sigmas:?} must be finite and > 0"
            )));
        }
    }
    check_network(&ck.net, train_set.image_len())?;
    let dev = Dev::seed_from_u64(cfg.seed);
    let mut net = DeviceNet::<f32, Dev>::from_float(&ck.net, &dev);
    let mut mom = Moments {
        m: DeviceNet::from_float(&ck.adam_m, &dev),
        v: DeviceNet::from_float(&ck.adam_v, &dev),
    };
    let n = train_set.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let last = opts.stop_after.unwrap_or(cfg.epochs).min(cfg.epochs);

    for epoch in ck.epochs_done..last {
        let start = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed(
            cfg.seed, epoch, 1,
        )));
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed(cfg.seed, epoch, 2));
        let bar = progress_bar(opts.progress, steps_per_epoch, epoch, cfg.epochs);
        let mut loss_sum = 0.0f64;
        let mut epoch_adv = AdversarialBatch::default();
        for (step, idx) in order.chunks(cfg.batch_size).enumerate() {
            let global = epoch * steps_per_epoch + step;
            let progress = global as f32 / total_steps as f32;
            let lr = cfg.lr
                * (cfg.lr_final_fraction
                    + (1.0 - cfg.lr_final_fraction)
                        * 0.5
                        * (1.0 + (std::f32::consts::PI * progress).cos()));
            let adv = match ck.objective.adversarial() {
                Some(adversarial) => (
                    adversarial.eps_at(global, steps_per_epoch),
                    epoch_seed(cfg.seed, epoch, 3) ^ (step as u64).wrapping_mul(0x9E37_79B9),
                ),
                None => (0.0, 0),
            };
            let (loss, adv_stats) =
                batch_loss(&dev, &net, &ck.objective, train_set, idx, &mut rng, adv);
            if let Some(a) = adv_stats {
                epoch_adv.clean_correct += a.clean_correct;
                epoch_adv.adversarial_correct += a.adversarial_correct;
                epoch_adv.images += a.images;
            }
            // Running clean / adversarial accuracy of this epoch's training batches.
            let acc = (epoch_adv.images > 0).then(|| {
                let n = epoch_adv.images as f64;
                format!(
                    "  clean acc {:.1} %  adv acc {:.1} %",
                    100.0 * epoch_adv.clean_correct as f64 / n,
                    100.0 * epoch_adv.adversarial_correct as f64 / n
                )
            });
            let acc = acc.unwrap_or_default();
            let lv = loss.array();
            loss_sum += f64::from(lv);
            let grads = loss.backward();
            ck.adam_t += 1;
            adam_step(&mut net, &mut mom, &grads, &cfg, lr, ck.adam_t);
            if let Some(b) = &bar {
                b.inc(1);
                let ips = || ((step + 1) * cfg.batch_size) as f64 / start.elapsed().as_secs_f64();
                if step % 20 == 0 {
                    b.set_message(format!("loss {lv:.4}{acc}  {:.0} img/s", ips()));
                }
                // A log file gets no bar: a line every tenth of an epoch instead.
                let tenth = steps_per_epoch.div_ceil(10).max(1);
                if !std::io::stderr().is_terminal() && (step + 1) % tenth == 0 {
                    eprintln!(
                        "epoch {}/{}  step {}/{steps_per_epoch}  loss {lv:.4}{acc}  {:.0} img/s",
                        epoch + 1,
                        cfg.epochs,
                        step + 1,
                        ips()
                    );
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let (val_loss, val_accuracy) =
            evaluate(&dev, &net, &ck.objective, val_set, cfg.seed ^ 0x5EED);
        let stats = EpochStats {
            epoch,
            train_loss: (loss_sum / steps_per_epoch as f64) as f32,
            val_loss,
            val_accuracy,
            images_per_second: (n as f64 / secs) as f32,
        };
        if opts.progress {
            // Adversarial accuracy on (part of) the validation set, printed only: the
            // checkpoint format stays as it is.
            let adv = match &ck.objective {
                Objective::RobustClassifier { adversarial, .. } => format!(
                    "  val PGD acc {:.2} % ({}, first {} images)",
                    100.0 * pgd_accuracy(&dev, &net, adversarial, val_set, 512, cfg.seed),
                    match adversarial.method {
                        AdversarialMethod::PgdMax { second_eps } => format!(
                            "{:?} ε {} and the other norm's ε {second_eps}",
                            adversarial.norm, adversarial.eps
                        ),
                        _ => format!("ε {}", adversarial.eps),
                    },
                    val_set.len().min(512)
                ),
                _ => String::new(),
            };
            let train_acc = if epoch_adv.images > 0 {
                let n = epoch_adv.images as f64;
                format!(
                    " (batches: clean acc {:.2} %, adv acc {:.2} %)",
                    100.0 * epoch_adv.clean_correct as f64 / n,
                    100.0 * epoch_adv.adversarial_correct as f64 / n
                )
            } else {
                String::new()
            };
            eprintln!(
                "epoch {:>3}/{}  train loss {:.4}{train_acc}  val loss {:.4}{}{adv}  {:.0} img/s",
                epoch + 1,
                cfg.epochs,
                stats.train_loss,
                stats.val_loss,
                stats
                    .val_accuracy
                    .map(|a| format!("  val acc {:.2} %", 100.0 * a))
                    .unwrap_or_default(),
                stats.images_per_second
            );
        }
        ck.history.push(stats);
        ck.epochs_done = epoch + 1;
        ck.net = net.to_float();
        ck.adam_m = mom.m.to_float();
        ck.adam_v = mom.v.to_float();
        if let Some(path) = &opts.checkpoint {
            save_checkpoint(path, &ck)?;
        }
    }
    ck.net = net.to_float();
    ck.adam_m = mom.m.to_float();
    ck.adam_v = mom.v.to_float();
    Ok(ck)
}

/// Checks the network's shape chain for `input_len` inputs (dfdx would panic
/// instead); see [`FloatNet::check`].
fn check_network(net: &FloatNet, input_len: usize) -> Result<(), TrainError> {
    net.check(input_len).map(|_| ()).map_err(TrainError::Config)
}

fn progress_bar(
    show: bool,
    steps: usize,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} {msg} (ETA {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    Some(bar)
}

/// One Adam step (bias-corrected) on every dense and conv layer, with dfdx tensor ops so it
/// runs on whichever device holds the weights.
fn adam_step(
    net: &mut DeviceNet<f32, Dev>,
    mom: &mut Moments,
    grads: &Gradients<f32, Dev>,
    cfg: &TrainConfig,
    lr: f32,
    t: u64,
) {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let c1 = 1.0 - b1.powi(t as i32);
    let c2 = 1.0 - b2.powi(t as i32);
    let step = lr / c1;
    let c2s = c2.sqrt();
    for ((p, m), v) in net
        .layers
        .iter_mut()
        .zip(mom.m.layers.iter_mut())
        .zip(mom.v.layers.iter_mut())
    {
        let (Some(p), Some(m), Some(v)) = (p.params_mut(), m.params_mut(), v.params_mut()) else {
            continue;
        };
        let gw = grads.get(&p.w);
        let gb = grads.get(&p.b);
        m.w = m.w.clone() * b1 + gw.clone() * (1.0 - b1);
        v.w = v.w.clone() * b2 + gw.square() * (1.0 - b2);
        p.w = p.w.clone() - m.w.clone() * step / ((v.w.clone().sqrt() / c2s) + cfg.eps);
        m.b = m.b.clone() * b1 + gb.clone() * (1.0 - b1);
        v.b = v.b.clone() * b2 + gb.square() * (1.0 - b2);
        p.b = p.b.clone() - m.b.clone() * step / ((v.b.clone().sqrt() / c2s) + cfg.eps);
    }
}
