//! APGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks", ICML 2020), batched on the host.
//!
//! Gradient ascent with momentum (α = 0.75) whose step size starts at 2ε and is
//! halved at checkpoints where progress stalled: the checkpoint interval starts at
//! 22 % of the budget and shrinks by 3 % of it per checkpoint down to 6 %. At a
//! checkpoint an example's step is halved (and it restarts from its best point)
//! when fewer than 75 % of the steps since the previous checkpoint raised the loss,
//! or when the previous checkpoint did not halve it and the best loss has not
//! improved since. No step size to tune: the same settings serve every model,
//! which is what makes it a reference attack.
//!
//! With the targeted DLR loss the target of each example is the class ranked
//! `target_rank` by the logits at the clean input (2 = the runner-up).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::oracle::{evaluate_rows, GradientOracle};
use super::{classes_by_logit, project, AttackLoss, AttackNorm};

/// APGD settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ApgdConfig {
    /// Norm of the perturbation ball.
    pub norm: AttackNorm,
    /// Radius ε.
    pub eps: f32,
    /// Iterations per restart (AutoAttack: 100).
    pub steps: usize,
    /// Objective.
    pub loss: AttackLoss,
    /// Runs with fresh random starts; an example fooled by one run is not attacked
    /// by the next.
    pub restarts: usize,
    /// Seed of the random starts.
    pub seed: u64,
    /// For [`AttackLoss::DlrTargeted`]: attack the class ranked `target_rank` by the
    /// clean logits (2..=classes).
    pub target_rank: usize,
}

impl ApgdConfig {
    /// APGD-CE with AutoAttack's standard settings (100 steps, one restart).
    pub fn ce(norm: AttackNorm, eps: f32) -> Self {
        ApgdConfig {
            norm,
            eps,
            steps: 100,
            loss: AttackLoss::CrossEntropy,
            restarts: 1,
            seed: 0,
            target_rank: 2,
        }
    }
}

/// Result of APGD on a batch.
pub struct ApgdResult {
    /// Per example: the first iterate that fooled the oracle, else the point of
    /// highest loss; row-major `[batch, d]`.
    pub adv: Vec<f32>,
    /// Per example: whether the oracle was fooled.
    pub fooled: Vec<bool>,
    /// Oracle rows evaluated (the cost).
    pub rows_evaluated: usize,
}

/// A random point of the ε-ball around `x0` (then clipped to `[0, 1]`).
fn random_start(norm: AttackNorm, eps: f32, x0: &[f32], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x = x0.to_vec();
    match norm {
        AttackNorm::Linf => {
            for a in x.iter_mut() {
                *a += rng.gen_range(-1.0f32..=1.0) * eps;
            }
        }
        AttackNorm::L2 => {
            let t: Vec<f32> = (0..x0.len())
                .map(|_| StandardNormal.sample(&mut *rng))
                .collect();
            let n = t.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for (a, v) in x.iter_mut().zip(&t) {
                *a += eps * v / n;
            }
        }
    }
    project(norm, eps, x0, &mut x);
    x
}

/// One momentum step of APGD for one example (in place on `x`).
#[allow(clippy::too_many_arguments)]
fn step(
    norm: AttackNorm,
    eps: f32,
    x0: &[f32],
    x: &mut [f32],
    x_prev: &[f32],
    grad: &[f32],
    eta: f32,
    momentum: f32,
) {
    let mut z = x.to_vec();
    match norm {
        AttackNorm::Linf => {
            for (a, &g) in z.iter_mut().zip(grad) {
                *a += eta * g.signum() * f32::from(u8::from(g != 0.0));
            }
        }
        AttackNorm::L2 => {
            let n = grad.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-12;
            for (a, &g) in z.iter_mut().zip(grad) {
                *a += eta * g / n;
            }
        }
    }
    project(norm, eps, x0, &mut z);
    for ((a, &zi), &p) in x.iter_mut().zip(&z).zip(x_prev) {
        let cur = *a;
        *a = cur + momentum * (zi - cur) + (1.0 - momentum) * (cur - p);
    }
    project(norm, eps, x0, x);
}

/// Runs APGD on a batch (`x` row-major `[batch, d]`, `labels` per row).
///
/// Examples leave the batch at the first iterate the oracle misclassifies (that
/// iterate is returned), so the budget goes to the examples that still resist.
pub fn apgd<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    cfg: &ApgdConfig,
) -> ApgdResult {
    let d = oracle.input_len().max(1);
    let b = labels.len();
    let mut adv_out = x.to_vec();
    let mut fooled = vec![false; b];
    let mut best_loss_all = vec![f32::NEG_INFINITY; b];
    let mut rows_evaluated = 0;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // Targets from the clean logits.
    let targets: Vec<usize> = if cfg.loss.is_targeted() {
        rows_evaluated += b;
        let z = oracle.logits(x);
        let c = z.len() / b.max(1);
        z.chunks(c.max(1))
            .map(|zr| {
                classes_by_logit(zr)
                    .get(cfg.target_rank.max(2) - 1)
                    .copied()
                    .unwrap_or(usize::MAX)
            })
            .collect()
    } else {
        Vec::new()
    };
    let n_iter = cfg.steps.max(1);
    let n_iter_2 = ((0.22 * n_iter as f32) as usize).max(1);
    let n_iter_min = ((0.06 * n_iter as f32) as usize).max(1);
    let size_decr = ((0.03 * n_iter as f32) as usize).max(1);
    for _restart in 0..cfg.restarts.max(1) {
        let mut active: Vec<usize> = (0..b).filter(|&k| !fooled[k]).collect();
        if active.is_empty() {
            break;
        }
        let mut xs: Vec<f32> = vec![0.0; b * d];
        for &k in &active {
            let r = random_start(cfg.norm, cfg.eps, &x[k * d..(k + 1) * d], &mut rng);
            xs[k * d..(k + 1) * d].copy_from_slice(&r);
        }
        let mut x_prev = xs.clone();
        let mut x_best = xs.clone();
        let mut eta = vec![2.0 * cfg.eps; b];
        let mut loss_best = vec![f32::NEG_INFINITY; b];
        let mut grad = vec![0.0f32; b * d];
        let mut grad_best = vec![0.0f32; b * d];
        // Per example: losses of the iterates since the last checkpoint (with the
        // one before them), improvements counted on the fly.
        let mut last_loss = vec![f32::NEG_INFINITY; b];
        let mut increases = vec![0usize; b];
        let mut reduced_last = vec![true; b];
        let mut best_at_last_check = vec![f32::NEG_INFINITY; b];
        let mut k_int = n_iter_2;
        let mut counter = 0;
        for it in 0..=n_iter {
            if active.is_empty() {
                break;
            }
            // it = 0 evaluates the random start; later iterations step first.
            if it > 0 {
                let momentum = if it == 1 { 1.0 } else { 0.75 };
                for &k in &active {
                    let r = k * d..(k + 1) * d;
                    let prev = x_prev[r.clone()].to_vec();
                    x_prev[r.clone()].copy_from_slice(&xs[r.clone()]);
                    step(
                        cfg.norm,
                        cfg.eps,
                        &x[r.clone()],
                        &mut xs[r.clone()],
                        &prev,
                        &grad[r.clone()],
                        eta[k],
                        momentum,
                    );
                }
            }
            let out = evaluate_rows(oracle, &xs, labels, &targets, &active, cfg.loss);
            rows_evaluated += active.len();
            let mut still = Vec::with_capacity(active.len());
            for (j, &k) in active.iter().enumerate() {
                let r = k * d..(k + 1) * d;
                let loss = out.loss[j];
                if out.pred[j] != labels[k] {
                    adv_out[r.clone()].copy_from_slice(&xs[r]);
                    fooled[k] = true;
                    continue;
                }
                still.push(k);
                grad[r.clone()].copy_from_slice(&out.grad[j * d..(j + 1) * d]);
                if it > 0 && loss > last_loss[k] {
                    increases[k] += 1;
                }
                last_loss[k] = loss;
                if loss > loss_best[k] {
                    loss_best[k] = loss;
                    x_best[r.clone()].copy_from_slice(&xs[r.clone()]);
                    grad_best[r.clone()].copy_from_slice(&out.grad[j * d..(j + 1) * d]);
                }
                if loss_best[k] > best_loss_all[k] {
                    best_loss_all[k] = loss_best[k];
                    adv_out[r.clone()].copy_from_slice(&x_best[r]);
                }
            }
            active = still;
            if it == 0 {
                for &k in &active {
                    best_at_last_check[k] = loss_best[k];
                }
                continue;
            }
            counter += 1;
            if counter == k_int {
                for &k in &active {
                    let oscillating = (increases[k] as f32) < 0.75 * k_int as f32;
                    let no_improvement = !reduced_last[k] && best_at_last_check[k] >= loss_best[k];
                    let halve = oscillating || no_improvement;
                    reduced_last[k] = halve;
                    best_at_last_check[k] = loss_best[k];
                    increases[k] = 0;
                    if halve {
                        eta[k] *= 0.5;
                        let r = k * d..(k + 1) * d;
                        xs[r.clone()].copy_from_slice(&x_best[r.clone()]);
                        grad[r.clone()].copy_from_slice(&grad_best[r]);
                    }
                }
                k_int = k_int.saturating_sub(size_decr).max(n_iter_min);
                counter = 0;
            }
        }
    }
    ApgdResult {
        adv: adv_out,
        fooled,
        rows_evaluated,
    }
}
