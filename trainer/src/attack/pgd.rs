//! Projected gradient descent (PGD, Madry et al. 2018), batched on the host.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::oracle::{evaluate_rows_soft, GradientOracle};
use super::{project, AttackLoss, AttackNorm};

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
    pgd_soft(oracle, x, labels, &[], cfg)
}

/// [`pgd`] with a reference distribution per example (`[batch, classes]`) for
/// [`AttackLoss::Kl`], the inner maximisation of TRADES.
pub fn pgd_soft<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    soft: &[f32],
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
            let out = evaluate_rows_soft(oracle, &adv, labels, &[], soft, &active, cfg.loss);
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
        let out = evaluate_rows_soft(oracle, &adv, labels, &[], soft, &active, cfg.loss);
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
