//! Projected gradient descent (PGD) attacks, batched on the host.
//!
//! The attack is written against a *gradient oracle*: a function that, for a batch
//! of inputs and labels, returns each example's loss, its gradient with respect to
//! the input and the predicted label. [`ClassifierOracle`] attacks the undefended
//! classifier (and gives the transfer examples); oracles through the purifier
//! (BPDA, the exact unrolled gradient) plug into the same loop.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{Batch, DeviceNet, FloatNet};

/// Threat model norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttackNorm {
    /// `||δ||_∞ ≤ ε`, signed-gradient steps.
    Linf,
    /// `||δ||_2 ≤ ε`, normalised-gradient steps.
    L2,
}

/// Attack objective (maximised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttackLoss {
    /// Softmax cross-entropy of the true label.
    CrossEntropy,
    /// Carlini–Wagner margin `max_{j≠y} z_j − z_y`.
    Margin,
}

/// How the PGD step size changes over the steps of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepSchedule {
    /// `α_t = α` for every step.
    Constant,
    /// `α_t = α · (1 + cos(π t / T)) / 2`: large steps explore first, small steps
    /// settle at the end (the final iterate is what gets judged).
    Cosine,
}

impl StepSchedule {
    /// Step size of step `t` of `steps` when the schedule's peak is `alpha`.
    pub fn step_size(self, alpha: f32, t: usize, steps: usize) -> f32 {
        match self {
            StepSchedule::Constant => alpha,
            StepSchedule::Cosine => {
                let frac = t as f32 / steps.max(1) as f32;
                alpha * 0.5 * (1.0 + (core::f32::consts::PI * frac).cos())
            }
        }
    }
}

/// PGD settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PgdConfig {
    /// Norm of the perturbation ball.
    pub norm: AttackNorm,
    /// Radius ε.
    pub eps: f32,
    /// Steps per restart.
    pub steps: usize,
    /// Step size α (absolute; `2.5 ε / steps` is a common choice); the peak of
    /// `schedule`.
    pub step_size: f32,
    /// How α changes over the steps.
    pub schedule: StepSchedule,
    /// Objective.
    pub loss: AttackLoss,
    /// Start from a random point of the ball (always true for restarts after the first).
    pub random_start: bool,
    /// Number of runs; per example the first run that fools the model wins, else
    /// the one with the highest final loss.
    pub restarts: usize,
    /// Seed of the random starts.
    pub seed: u64,
    /// Stop attacking an example as soon as the oracle misclassifies it (and keep
    /// that point). Right for white-box attacks, where the oracle *is* the defended
    /// system; wrong for transfer attacks, whose examples should push the surrogate's
    /// loss as high as possible.
    pub early_stop: bool,
}

impl PgdConfig {
    /// L∞ PGD with cross-entropy, `steps` steps of `2.5 ε / steps`, random start.
    pub fn linf(eps: f32, steps: usize) -> Self {
        PgdConfig {
            norm: AttackNorm::Linf,
            eps,
            steps,
            step_size: 2.5 * eps / steps.max(1) as f32,
            schedule: StepSchedule::Constant,
            loss: AttackLoss::CrossEntropy,
            random_start: true,
            restarts: 1,
            seed: 0,
            early_stop: false,
        }
    }
}

/// What an oracle returns for a batch.
pub struct OracleOutput {
    /// Loss per example.
    pub loss: Vec<f32>,
    /// Gradient of each example's loss with respect to its input, `[batch, d]`.
    pub grad: Vec<f32>,
    /// Predicted label per example.
    pub pred: Vec<usize>,
}

/// Anything PGD can attack.
pub trait GradientOracle {
    /// Input length.
    fn input_len(&self) -> usize;
    /// Loss, input gradient and prediction for a batch.
    fn evaluate(&self, x: &[f32], labels: &[usize], loss: AttackLoss) -> OracleOutput;
}

/// The undefended classifier in dfdx (float weights).
pub struct ClassifierOracle {
    dev: Cpu,
    net: DeviceNet<f32, Cpu>,
    d: usize,
    classes: usize,
}

impl ClassifierOracle {
    /// An oracle for `classifier` with input length `d`.
    pub fn new(classifier: &FloatNet, d: usize) -> Self {
        let dev = Cpu::default();
        let net = DeviceNet::from_float(classifier, &dev);
        let classes = classifier
            .layers
            .iter()
            .rev()
            .find_map(|l| match l {
                crate::model::FloatLayer::Dense { outputs, .. } => Some(*outputs),
                crate::model::FloatLayer::Relu => None,
            })
            .unwrap_or(1);
        ClassifierOracle {
            dev,
            net,
            d,
            classes,
        }
    }

    /// Predicted labels of a batch.
    pub fn predict(&self, x: &[f32]) -> Vec<usize> {
        let b = x.len() / self.d.max(1);
        let logits = self
            .net
            .forward(self.dev.tensor_from_vec(x.to_vec(), (b, self.d)))
            .as_vec();
        logits.chunks(self.classes.max(1)).map(argmax).collect()
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

impl GradientOracle for ClassifierOracle {
    fn input_len(&self) -> usize {
        self.d
    }

    fn evaluate(&self, x: &[f32], labels: &[usize], loss: AttackLoss) -> OracleOutput {
        let (b, d, c) = (labels.len(), self.d, self.classes);
        let x0: Batch<f32, Cpu> = self.dev.tensor_from_vec(x.to_vec(), (b, d));
        let mut onehot = vec![0.0f32; b * c];
        for (row, &l) in labels.iter().enumerate() {
            if let Some(v) = onehot.get_mut(row * c + l) {
                *v = 1.0;
            }
        }
        let onehot: Batch<f32, Cpu> = self.dev.tensor_from_vec(onehot, (b, c));
        let logits = self.net.forward(x0.leaky_trace());
        let pred: Vec<usize> = logits
            .retaped::<NoneTape>()
            .as_vec()
            .chunks(c)
            .map(argmax)
            .collect();
        let per = match loss {
            AttackLoss::CrossEntropy => {
                let lsm = logits.log_softmax::<Axis<1>>();
                (lsm * onehot).sum::<(usize,), Axis<1>>().negate()
            }
            AttackLoss::Margin => {
                let z_y = logits.with_empty_tape() * onehot.clone();
                let z_y = z_y.sum::<(usize,), Axis<1>>();
                let others = logits - onehot * 1e9;
                others.max::<(usize,), Axis<1>>() - z_y
            }
        };
        let loss_v = per.retaped::<NoneTape>().as_vec();
        let grads = per.sum::<Rank0, _>().backward();
        OracleOutput {
            loss: loss_v,
            grad: grads.get(&x0).as_vec(),
            pred,
        }
    }
}

/// How a gradient is taken through the purifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurifierGradient {
    /// BPDA (backward pass differentiable approximation): the purifier is the
    /// identity in the backward pass, i.e. the classifier's input gradient at the
    /// purified point. Catches defences whose exact gradient is masked.
    Bpda,
    /// The exact gradient propagated back through every unrolled purification step
    /// and the projection ([`crate::reference::Reference::purify_vjp`]).
    Full,
}

/// The defended pipeline as a gradient oracle: purification with the float host
/// reference, then the classifier.
pub struct PurifiedOracle {
    reference: crate::reference::Reference<f32, Cpu>,
    classifier: ClassifierOracle,
    mode: PurifierGradient,
}

impl PurifiedOracle {
    /// `denoiser` purification with `cfg`, then `classifier`, differentiated by `mode`.
    pub fn new(
        denoiser: &FloatNet,
        classifier: &FloatNet,
        d: usize,
        cfg: pursamere_core::PurifierConfig,
        mode: PurifierGradient,
    ) -> Self {
        let dev = Cpu::default();
        PurifiedOracle {
            reference: crate::reference::Reference::new(&dev, denoiser, d, cfg),
            classifier: ClassifierOracle::new(classifier, d),
            mode,
        }
    }
}

impl GradientOracle for PurifiedOracle {
    fn input_len(&self) -> usize {
        self.classifier.d
    }

    fn evaluate(&self, x: &[f32], labels: &[usize], loss: AttackLoss) -> OracleOutput {
        match self.mode {
            PurifierGradient::Bpda => {
                let purified = self.reference.purify(x);
                self.classifier.evaluate(&purified, labels, loss)
            }
            PurifierGradient::Full => {
                let t = self.reference.purify_trajectory(x);
                let out = self.classifier.evaluate(t.output(), labels, loss);
                OracleOutput {
                    grad: self.reference.purify_vjp(&t, &out.grad),
                    ..out
                }
            }
        }
    }
}

/// Projects `x` onto the ε-ball around `x0` (in `norm`) and then onto `[0, 1]`.
fn project(norm: AttackNorm, eps: f32, x0: &[f32], x: &mut [f32]) {
    if norm == AttackNorm::L2 {
        let n = x
            .iter()
            .zip(x0)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        if n > eps {
            let s = eps / n;
            for (a, &b) in x.iter_mut().zip(x0) {
                *a = b + (*a - b) * s;
            }
        }
    }
    for (a, &b) in x.iter_mut().zip(x0) {
        if norm == AttackNorm::Linf {
            *a = a.clamp(b - eps, b + eps);
        }
        *a = a.clamp(0.0, 1.0);
    }
}

/// The oracle's output for rows `rows` of the batch `x` (row length `d`).
fn evaluate_rows<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    rows: &[usize],
    d: usize,
    loss: AttackLoss,
) -> OracleOutput {
    let xa: Vec<f32> = rows
        .iter()
        .flat_map(|&k| x[k * d..(k + 1) * d].iter().copied())
        .collect();
    let la: Vec<usize> = rows.iter().map(|&k| labels[k]).collect();
    oracle.evaluate(&xa, &la, loss)
}

/// Runs PGD on a batch (`x` row-major `[batch, d]`); returns the adversarial batch.
///
/// Per example, the first restart that fools the oracle wins, else the one with the
/// highest final loss. With `early_stop`, an example leaves the batch at the first
/// iterate the oracle misclassifies, so the remaining steps are spent on the
/// examples that still resist.
pub fn pgd<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    cfg: &PgdConfig,
) -> Vec<f32> {
    let d = oracle.input_len().max(1);
    let b = labels.len();
    let mut best = x.to_vec();
    let mut best_loss = vec![f32::NEG_INFINITY; b];
    let mut fooled = vec![false; b];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    for restart in 0..cfg.restarts.max(1) {
        let mut adv = x.to_vec();
        if cfg.random_start || restart > 0 {
            for (row, x0) in adv.chunks_mut(d).zip(x.chunks(d)) {
                for a in row.iter_mut() {
                    *a += rng.gen_range(-1.0f32..=1.0) * cfg.eps;
                }
                project(cfg.norm, cfg.eps, x0, row);
            }
        }
        // Examples still attacked in this restart.
        let mut active: Vec<usize> = (0..b).filter(|&k| !fooled[k]).collect();
        for step in 0..cfg.steps {
            if active.is_empty() {
                break;
            }
            let out = evaluate_rows(oracle, &adv, labels, &active, d, cfg.loss);
            let alpha = cfg.schedule.step_size(cfg.step_size, step, cfg.steps);
            let mut still = Vec::with_capacity(active.len());
            for (j, &k) in active.iter().enumerate() {
                let row = &mut adv[k * d..(k + 1) * d];
                if cfg.early_stop && out.pred[j] != labels[k] {
                    best[k * d..(k + 1) * d].copy_from_slice(row);
                    best_loss[k] = out.loss[j];
                    fooled[k] = true;
                    continue;
                }
                still.push(k);
                let g = &out.grad[j * d..(j + 1) * d];
                match cfg.norm {
                    AttackNorm::Linf => {
                        for (a, &gi) in row.iter_mut().zip(g) {
                            *a += alpha * gi.signum() * f32::from(u8::from(gi != 0.0));
                        }
                    }
                    AttackNorm::L2 => {
                        let n = g.iter().map(|v| v * v).sum::<f32>().sqrt();
                        if n > 0.0 {
                            for (a, &gi) in row.iter_mut().zip(g) {
                                *a += alpha * gi / n;
                            }
                        }
                    }
                }
                project(cfg.norm, cfg.eps, &x[k * d..(k + 1) * d], row);
            }
            active = still;
        }
        if active.is_empty() {
            continue;
        }
        let out = evaluate_rows(oracle, &adv, labels, &active, d, cfg.loss);
        for (j, &k) in active.iter().enumerate() {
            let now_fooled = out.pred[j] != labels[k];
            if !fooled[k] && (now_fooled || out.loss[j] > best_loss[k]) {
                best[k * d..(k + 1) * d].copy_from_slice(&adv[k * d..(k + 1) * d]);
                best_loss[k] = out.loss[j];
                fooled[k] = now_fooled;
            }
        }
    }
    best
}

/// Result of a Square attack on one image.
#[derive(Debug, Clone)]
pub struct SquareResult {
    /// The best adversarial image found.
    pub adv: Vec<f32>,
    /// Queries spent.
    pub queries: usize,
    /// Whether the model was fooled.
    pub fooled: bool,
}

/// Margin `z_y − max_{j≠y} z_j` (negative = misclassified).
fn margin(logits: &[f32], label: usize) -> f32 {
    let zy = logits.get(label).copied().unwrap_or(f32::NEG_INFINITY);
    let other = logits
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    zy - other
}

/// Square attack, L∞, query-only (Andriushchenko et al., 2020), for one grey
/// `h × w` image. `query` returns the logits of the *whole defended pipeline* (for
/// PurSAMERE: the core's purification then classification), so no gradient is used
/// and gradient masking cannot hide anything from it.
#[allow(clippy::too_many_arguments)]
pub fn square_linf(
    mut query: impl FnMut(&[f32]) -> Vec<f32>,
    x0: &[f32],
    label: usize,
    h: usize,
    w: usize,
    eps: f32,
    max_queries: usize,
    seed: u64,
) -> SquareResult {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clip = |x0: f32, d: f32| (x0 + d).clamp(0.0, 1.0);
    // Vertical-stripe initialisation.
    let mut delta = vec![0.0f32; h * w];
    for c in 0..w {
        let s = if rng.gen_bool(0.5) { eps } else { -eps };
        for r in 0..h {
            delta[r * w + c] = s;
        }
    }
    let build = |delta: &[f32]| {
        x0.iter()
            .zip(delta)
            .map(|(&a, &d)| clip(a, d))
            .collect::<Vec<f32>>()
    };
    let mut best = build(&delta);
    let mut best_m = margin(&query(&best), label);
    let mut queries = 1;
    while best_m >= 0.0 && queries < max_queries {
        // Square size schedule (fraction of pixels changed), rescaled to 10,000 queries.
        let it = queries * 10_000 / max_queries.max(1);
        let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
            .iter()
            .filter(|&&t| it > t)
            .count();
        let p = 0.05 / f32::powi(2.0, halvings as i32);
        let side = ((p * (h * w) as f32).sqrt().round() as usize).clamp(1, h.min(w));
        let (r0, c0) = (rng.gen_range(0..=h - side), rng.gen_range(0..=w - side));
        let s = if rng.gen_bool(0.5) { eps } else { -eps };
        let mut cand = delta.clone();
        for r in r0..r0 + side {
            for c in c0..c0 + side {
                cand[r * w + c] = s;
            }
        }
        let x = build(&cand);
        let m = margin(&query(&x), label);
        queries += 1;
        if m < best_m {
            best_m = m;
            best = x;
            delta = cand;
        }
    }
    SquareResult {
        adv: best,
        queries,
        fooled: best_m < 0.0,
    }
}
