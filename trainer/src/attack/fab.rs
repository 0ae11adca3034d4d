//! FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, "Minimally
//! distorted adversarial examples with a fast adaptive boundary attack", ICML 2020),
//! as AutoAttack's standard suite runs it, batched on the host.
//!
//! FAB looks for the adversarial point *closest* to the clean input rather than the
//! one of highest loss inside the ball. Per target class `t` it linearises
//! `f = z_t − z_y` at the current iterate and projects both the iterate and the clean
//! input onto that hyperplane intersected with the box `[0, 1]^d` (the minimal
//! L∞ / L2 step that keeps the image valid); the next iterate is a convex combination
//! of the two projections, each extrapolated by `eta`, with the clean input's weight
//! `α = ‖δ_x‖ / (‖δ_x‖ + ‖δ_0‖)` capped at `alpha_max` (a pull back towards the
//! clean input that keeps the iterate near it). Once an iterate is misclassified it
//! is kept if it is the closest so far, and the iterate steps back towards the clean
//! input by `beta` to search for a closer one. Being a boundary search, not a loss
//! ascent, it does not rely on a loss whose gradient may vanish, which is why
//! AutoAttack runs it after APGD-CE and APGD-T.
//!
//! Follows AutoAttack's `fab_pt.py` (targeted): targets are the classes ranked
//! 2, 3, … by the clean logits (the runner-up first, like APGD-T), the first restart
//! starts at the clean input and later ones at a random point at distance ε/2.
//! Differences, none of which can report a point outside the threat model:
//! - an example leaves the batch once it holds a misclassified point within ε
//!   (`early_stop`), since a closer one changes no verdict at this ε;
//! - the point returned is projected onto the ε-ball and `[0, 1]` and checked again
//!   with the oracle's logits: an example counts as fooled only if that projected
//!   point is misclassified (so a point found just outside ε may count after its
//!   projection, where AutoAttack would drop it).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::oracle::{argmax, GradientOracle};
use super::{classes_by_logit, distance, gather_rows, project, AttackNorm};

/// FAB-T settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FabConfig {
    /// Norm whose distance FAB minimises (and of the ε-ball of the verdict).
    pub norm: AttackNorm,
    /// Radius ε: an example is fooled by a point within ε; random starts lie at ε/2.
    pub eps: f32,
    /// Iterations per target and restart (AutoAttack: 100).
    pub steps: usize,
    /// Runs per target class (AutoAttack: 1); the first starts at the clean input
    /// unless `random_first_start`, later ones at random points.
    pub restarts: usize,
    /// Number of target classes (AutoAttack: 9, every other class of 10).
    pub targets: usize,
    /// Rank (by the clean logits) of the first target class: 2 = the runner-up.
    pub target_rank: usize,
    /// Largest weight of the projection of the clean input (AutoAttack: 0.1).
    pub alpha_max: f32,
    /// Extrapolation of each projection, to land beyond the linearised boundary
    /// (AutoAttack: 1.05).
    pub eta: f32,
    /// Backward step towards the clean input after a misclassified iterate
    /// (AutoAttack: 0.9).
    pub beta: f32,
    /// Seed of the random starts.
    pub seed: u64,
    /// Start the first run from a random point too (a restart check, where a run
    /// from the clean input would repeat the first pass exactly).
    pub random_first_start: bool,
    /// Stop attacking an example once it holds a misclassified point within ε
    /// (AutoAttack keeps minimising its distance).
    pub early_stop: bool,
}

impl FabConfig {
    /// FAB-T with AutoAttack's standard settings (100 steps, one run, 9 targets,
    /// α_max 0.1, η 1.05, β 0.9), stopping early per example.
    pub fn new(norm: AttackNorm, eps: f32) -> Self {
        FabConfig {
            norm,
            eps,
            steps: 100,
            restarts: 1,
            targets: 9,
            target_rank: 2,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            seed: 0,
            random_first_start: false,
            early_stop: true,
        }
    }
}

/// Result of FAB-T on a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct FabResult {
    /// Per example: the adversarial point when fooled (in `[0, 1]` and within ε),
    /// else the clean input; row-major `[batch, d]`.
    pub adv: Vec<f32>,
    /// Per example: the oracle misclassifies `adv`, which is within ε.
    pub fooled: Vec<bool>,
    /// Per example: the smallest distance (in the threat norm) of a misclassified
    /// point found, before the projection onto the ε-ball; 0 for an input the
    /// oracle already misclassifies, infinite if none was found.
    pub min_dist: Vec<f32>,
    /// Oracle rows evaluated (forward passes and gradients: the cost).
    pub rows_evaluated: usize,
}

/// The size of `v` in `norm`.
fn size(norm: AttackNorm, v: &[f32]) -> f32 {
    match norm {
        AttackNorm::Linf => v.iter().fold(0.0, |m, a| m.max(a.abs())),
        AttackNorm::L2 => v.iter().map(|a| a * a).sum::<f32>().sqrt(),
    }
}

/// The smallest step `δ` in `norm` with `⟨w, t + δ⟩ = b` and `t + δ ∈ [0, 1]^d`:
/// the projection of `t` onto the hyperplane intersected with the box. When the box
/// does not reach the hyperplane, the step to the corner of the box closest to it
/// (every coordinate with `w_i ≠ 0` at its bound in the direction that moves
/// `⟨w, x⟩` towards `b`), as in FAB.
///
/// Coordinates with `w_i = 0` (or non-finite) do not move. Both norms reduce to one
/// monotone one-dimensional equation: with `r = b − ⟨w, t⟩ > 0` (after flipping the
/// sign of `w`) and `room_i` the distance of `t_i` to the bound in the direction of
/// `w_i`, the optimal step is
/// - L∞: `δ_i = sign(w_i) · min(λ, room_i)`, the smallest `λ` with
///   `Σ |w_i| min(λ, room_i) = r`;
/// - L2: `δ_i = w_i · min(μ, room_i / |w_i|)` (the KKT conditions of the box-
///   constrained least-norm problem), the `μ` with `Σ w_i² min(μ, room_i / |w_i|) = r`.
///
/// Both left-hand sides are piecewise linear and nondecreasing in the level, with
/// breakpoints at `room_i` (resp. `room_i / |w_i|`): sorting the breakpoints finds
/// the segment that holds the solution, `O(d log d)`. Computed in f64 (`b` too: it
/// is `⟨w, x⟩ − f`, whose two terms can be much larger than their difference).
pub fn project_hyperplane_box(norm: AttackNorm, t: &[f32], w: &[f32], b: f64) -> Vec<f32> {
    let mut delta = vec![0.0f32; t.len()];
    let wt: f64 = t
        .iter()
        .zip(w)
        .filter(|(_, wi)| wi.is_finite())
        .map(|(&ti, &wi)| f64::from(ti) * f64::from(wi))
        .sum();
    let r = b - wt;
    if !r.is_finite() || r == 0.0 {
        return delta;
    }
    // Flip w so that ⟨w, δ⟩ must rise by r > 0.
    let flip = r.signum();
    let r = r.abs();
    // (breakpoint, slope weight, coordinate) of every coordinate that can move.
    let mut items: Vec<(f64, f64, usize)> = Vec::with_capacity(t.len());
    for (i, (&ti, &wi)) in t.iter().zip(w).enumerate() {
        let wi = f64::from(wi) * flip;
        if wi == 0.0 || !wi.is_finite() {
            continue;
        }
        let ti = f64::from(ti);
        let room = if wi > 0.0 { 1.0 - ti } else { ti }.max(0.0);
        items.push(match norm {
            AttackNorm::Linf => (room, wi.abs(), i),
            AttackNorm::L2 => (room / wi.abs(), wi * wi, i),
        });
    }
    items.sort_by(|p, q| p.0.total_cmp(&q.0));
    // Suffix sums of the weights: the slope above each breakpoint, summed from the
    // small end so no subtraction loses precision.
    let mut slope = vec![0.0f64; items.len() + 1];
    for k in (0..items.len()).rev() {
        slope[k] = slope[k + 1] + items[k].1;
    }
    // Below breakpoint k, coordinates before k are saturated (contributing
    // `saturated`) and the rest move with the level: F(s) = saturated + slope[k]·s.
    // An infeasible hyperplane leaves the level infinite: every coordinate at its
    // bound.
    let mut level = f64::INFINITY;
    let mut saturated = 0.0f64;
    for (k, &(brk, weight, _)) in items.iter().enumerate() {
        if saturated + slope[k] * brk >= r {
            level = (r - saturated) / slope[k];
            break;
        }
        saturated += weight * brk;
    }
    for &(brk, _, i) in &items {
        let wi = f64::from(w[i]) * flip;
        let size = match norm {
            AttackNorm::Linf => level.min(brk),
            AttackNorm::L2 => wi.abs() * level.min(brk),
        };
        delta[i] = (wi.signum() * size) as f32;
    }
    delta
}

/// A random point at distance `radius` from `x0` in `norm`, clipped to `[0, 1]`
/// (AutoAttack's FAB start).
fn random_start(norm: AttackNorm, radius: f32, x0: &[f32], rng: &mut ChaCha8Rng) -> Vec<f32> {
    let t: Vec<f32> = match norm {
        AttackNorm::Linf => (0..x0.len())
            .map(|_| rng.gen_range(-1.0f32..=1.0))
            .collect(),
        AttackNorm::L2 => (0..x0.len())
            .map(|_| StandardNormal.sample(&mut *rng))
            .collect(),
    };
    let n = size(norm, &t).max(1e-12);
    x0.iter()
        .zip(&t)
        .map(|(&a, &v)| (a + radius * v / n).clamp(0.0, 1.0))
        .collect()
}

/// Per example of one run: the closest misclassified point found (distance and
/// point), infinite distance if none.
struct RunBest {
    dist: Vec<f32>,
    point: Vec<f32>,
}

/// One FAB run (one target per example, one start) on the examples `run` of the
/// batch: positions into `x`, `labels` and `targets`.
#[allow(clippy::too_many_arguments)]
fn single_run<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    targets: &[usize],
    run: &[usize],
    cfg: &FabConfig,
    random: bool,
    rng: &mut ChaCha8Rng,
    rows_evaluated: &mut usize,
) -> RunBest {
    let d = oracle.input_len().max(1);
    let n = run.len();
    let x0 = gather_rows(x, d, run);
    let mut x1 = x0.clone();
    if random {
        for j in 0..n {
            let r = j * d..(j + 1) * d;
            let s = random_start(cfg.norm, 0.5 * cfg.eps, &x0[r.clone()], rng);
            x1[r].copy_from_slice(&s);
        }
    }
    let mut best = RunBest {
        dist: vec![f32::INFINITY; n],
        point: x0.clone(),
    };
    // Positions into `run` still iterating.
    let mut active: Vec<usize> = (0..n).collect();
    for _ in 0..cfg.steps {
        if active.is_empty() {
            break;
        }
        let la: Vec<usize> = active.iter().map(|&j| labels[run[j]]).collect();
        let ta: Vec<usize> = active.iter().map(|&j| targets[run[j]]).collect();
        let xa = gather_rows(&x1, d, &active);
        // The gradient of f = z_t − z_y: weights +1 on the target, −1 on the label.
        let (z, g) = oracle.logits_vjp(&xa, &mut |z: &[f32]| {
            let c = z.len() / la.len().max(1);
            let mut w = vec![0.0f32; z.len()];
            for (row, (&y, &t)) in la.iter().zip(&ta).enumerate() {
                if let Some(v) = w.get_mut(row * c + t) {
                    *v += 1.0;
                }
                if let Some(v) = w.get_mut(row * c + y) {
                    *v -= 1.0;
                }
            }
            w
        });
        *rows_evaluated += active.len();
        let c = z.len() / active.len();
        for (row, &j) in active.iter().enumerate() {
            let r = j * d..(j + 1) * d;
            let zr = &z[row * c..(row + 1) * c];
            let f = zr.get(ta[row]).copied().unwrap_or(f32::NAN)
                - zr.get(la[row]).copied().unwrap_or(f32::NAN);
            let w = &g[row * d..(row + 1) * d];
            // The linearised boundary f(x1) + ⟨w, x − x1⟩ = 0, i.e. ⟨w, x⟩ = b.
            let b = w
                .iter()
                .zip(&x1[r.clone()])
                .map(|(&wi, &xi)| f64::from(wi) * f64::from(xi))
                .sum::<f64>()
                - f64::from(f);
            let d1 = project_hyperplane_box(cfg.norm, &x1[r.clone()], w, b);
            let d2 = project_hyperplane_box(cfg.norm, &x0[r.clone()], w, b);
            let a1 = size(cfg.norm, &d1).max(1e-8);
            let a2 = size(cfg.norm, &d2).max(1e-8);
            // max/min rather than clamp: no panic on an odd `alpha_max`.
            let alpha = (a1 / (a1 + a2)).max(0.0).min(cfg.alpha_max);
            for (i, xi) in x1[r.clone()].iter_mut().enumerate() {
                let from_x1 = *xi + cfg.eta * d1[i];
                let from_x0 = x0[j * d + i] + cfg.eta * d2[i];
                *xi = ((1.0 - alpha) * from_x1 + alpha * from_x0).clamp(0.0, 1.0);
            }
        }
        let zn = oracle.logits(&gather_rows(&x1, d, &active));
        *rows_evaluated += active.len();
        let c = zn.len() / active.len();
        for (row, &j) in active.iter().enumerate() {
            if argmax(&zn[row * c..(row + 1) * c]) == la[row] {
                continue;
            }
            let r = j * d..(j + 1) * d;
            let t = distance(cfg.norm, &x1[r.clone()], &x0[r.clone()]);
            if t < best.dist[j] {
                best.dist[j] = t;
                best.point[r.clone()].copy_from_slice(&x1[r.clone()]);
            }
            // Back towards the clean input, to look for a closer crossing.
            for (xi, &oi) in x1[r.clone()].iter_mut().zip(&x0[r]) {
                *xi = oi + cfg.beta * (*xi - oi);
            }
        }
        if cfg.early_stop {
            active.retain(|&j| best.dist[j] > cfg.eps);
        }
    }
    best
}

/// Runs FAB-T on a batch (`x` row-major `[batch, d]`, `labels` per row): for each
/// of `cfg.targets` target classes (ranked from `cfg.target_rank` by the clean
/// logits) and each restart, a FAB run on the examples not yet fooled.
///
/// An example is fooled only by a point in `[0, 1]` within ε of its clean input that
/// the oracle's logits misclassify; an input the oracle already misclassifies is
/// fooled as it is.
///
/// # Panics
/// If `x` does not hold `labels.len()` rows of the oracle's input length (an
/// attack that quietly skipped such a batch would overstate robustness).
pub fn fab_t<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    cfg: &FabConfig,
) -> FabResult {
    let d = oracle.input_len().max(1);
    let b = labels.len();
    assert_eq!(
        x.len(),
        b * d,
        "fab_t: {} values are not {b} inputs of {d}",
        x.len()
    );
    let mut out = FabResult {
        adv: x.to_vec(),
        fooled: vec![false; b],
        min_dist: vec![f32::INFINITY; b],
        rows_evaluated: 0,
    };
    if b == 0 {
        return out;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let z = oracle.logits(x);
    out.rows_evaluated += b;
    let c = z.len() / b;
    // Classes by decreasing clean logit (ties by index, as APGD-T ranks them).
    let order: Vec<Vec<usize>> = z.chunks(c.max(1)).map(classes_by_logit).collect();
    for (k, o) in order.iter().enumerate() {
        if o.first() != Some(&labels[k]) {
            out.fooled[k] = true;
            out.min_dist[k] = 0.0;
        }
    }
    let first = cfg.target_rank.max(2);
    for rank in first..first + cfg.targets {
        let targets: Vec<usize> = order
            .iter()
            .map(|o| o.get(rank - 1).copied().unwrap_or(usize::MAX))
            .collect();
        for restart in 0..cfg.restarts.max(1) {
            let run: Vec<usize> = (0..b)
                .filter(|&k| !out.fooled[k] && targets[k] < c && targets[k] != labels[k])
                .collect();
            if run.is_empty() {
                break;
            }
            let random = restart > 0 || cfg.random_first_start;
            let best = single_run(
                oracle,
                x,
                labels,
                &targets,
                &run,
                cfg,
                random,
                &mut rng,
                &mut out.rows_evaluated,
            );
            // Every point found, projected onto the ε-ball and the box, is checked
            // again: only what the oracle misclassifies after the projection counts.
            let found: Vec<usize> = (0..run.len())
                .filter(|&j| best.dist[j].is_finite())
                .collect();
            if found.is_empty() {
                continue;
            }
            let mut pts = Vec::with_capacity(found.len() * d);
            for &j in &found {
                let k = run[j];
                out.min_dist[k] = out.min_dist[k].min(best.dist[j]);
                let mut p = best.point[j * d..(j + 1) * d].to_vec();
                project(cfg.norm, cfg.eps, &x[k * d..(k + 1) * d], &mut p);
                pts.extend(p);
            }
            let zp = oracle.logits(&pts);
            out.rows_evaluated += found.len();
            let cp = zp.len() / found.len();
            for (row, &j) in found.iter().enumerate() {
                let k = run[j];
                if argmax(&zp[row * cp..(row + 1) * cp]) != labels[k] {
                    out.fooled[k] = true;
                    out.adv[k * d..(k + 1) * d].copy_from_slice(&pts[row * d..(row + 1) * d]);
                }
            }
        }
    }
    out
}
