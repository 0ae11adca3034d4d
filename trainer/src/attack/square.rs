//! The Square attack (Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a
//! query-efficient black-box adversarial attack via random search", ECCV 2020),
//! L∞ and L2, batched.
//!
//! Query-only: `query` returns the logits of the *whole defended pipeline* for a
//! batch, so no gradient is used and gradient masking cannot hide anything from it.
//! Random search over square-shaped updates, accepted when they lower the margin
//! `z_y − max_{j≠y} z_j`; the square covers a fraction `p` of the image that starts
//! at `p_init` (0.8, the paper's and AutoAttack's value) and halves at fixed
//! fractions of the query budget.
//!
//! - L∞: vertical-stripe initialisation (±ε per column), then squares of ±ε per
//!   channel.
//! - L2: a grid of "meta pseudo-Gaussian" blobs as initialisation; each step moves
//!   the perturbation mass of a second random window into a new blob in the first
//!   one, keeping `||δ||_2 = ε` before clipping to `[0, 1]`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::AttackNorm;

/// Square attack settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SquareConfig {
    /// Norm of the perturbation ball.
    pub norm: AttackNorm,
    /// Radius ε.
    pub eps: f32,
    /// Queries per example (the initial point included).
    pub queries: usize,
    /// Initial fraction of the image a square covers (0.8 in the paper).
    pub p_init: f32,
    /// Seed of the random search.
    pub seed: u64,
    /// Image layout: channels, height, width (channel-major).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

/// Result of a Square attack on a batch.
#[derive(Debug, Clone)]
pub struct SquareResult {
    /// The best adversarial batch found (row-major).
    pub adv: Vec<f32>,
    /// Queries spent per example.
    pub queries: Vec<usize>,
    /// Per example: whether the model was fooled.
    pub fooled: Vec<bool>,
}

/// Margin `z_y − max_{j≠y} z_j` (negative = misclassified).
pub fn margin(logits: &[f32], label: usize) -> f32 {
    let zy = logits.get(label).copied().unwrap_or(f32::NEG_INFINITY);
    let other = logits
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != label)
        .map(|(_, &v)| v)
        .fold(f32::NEG_INFINITY, f32::max);
    zy - other
}

/// Fraction of the image changed at query `it` of `n` (AutoAttack's schedule,
/// defined for 10,000 queries and rescaled).
fn p_selection(p_init: f32, it: usize, n: usize) -> f32 {
    let it = it * 10_000 / n.max(1);
    let halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
        .iter()
        .filter(|&&t| it > t)
        .count();
    p_init / f32::powi(2.0, halvings as i32)
}

/// Concentric rectangles of weight 1/(k+1)² around the centre of an `a × b` patch,
/// normalised to unit L2 norm (row-major).
fn pseudo_gaussian(a: usize, b: usize) -> Vec<f32> {
    let mut delta = vec![0.0f32; a * b];
    let (xc, yc) = (a / 2 + 1, b / 2 + 1);
    let (mut c0, mut c1) = (xc as isize - 1, yc as isize - 1);
    for counter in 0..xc.max(yc) {
        let r0 = c0.max(0) as usize;
        let r1 = ((c0 + 2 * counter as isize + 1).max(0) as usize).min(a);
        let q0 = c1.max(0) as usize;
        let q1 = ((c1 + 2 * counter as isize + 1).max(0) as usize).min(b);
        let v = 1.0 / ((counter + 1) * (counter + 1)) as f32;
        for r in r0..r1 {
            for q in q0..q1 {
                delta[r * b + q] += v;
            }
        }
        c0 -= 1;
        c1 -= 1;
    }
    normalise(&mut delta);
    delta
}

/// An `s × s` blob: a positive pseudo-Gaussian on one half, a negative one on the
/// other, randomly transposed; unit L2 norm.
fn meta_pseudo_gaussian(s: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut delta = vec![0.0f32; s * s];
    let top = s / 2;
    let a = pseudo_gaussian(top, s);
    let b = pseudo_gaussian(s - top, s);
    delta[..top * s].copy_from_slice(&a);
    for (o, v) in delta[top * s..].iter_mut().zip(&b) {
        *o = -v;
    }
    normalise(&mut delta);
    if rng.gen_bool(0.5) {
        let t = delta.clone();
        for r in 0..s {
            for c in 0..s {
                delta[r * s + c] = t[c * s + r];
            }
        }
    }
    delta
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    if n > 0.0 {
        for a in v.iter_mut() {
            *a /= n;
        }
    }
}

fn l2(v: &[f32]) -> f32 {
    v.iter().map(|a| a * a).sum::<f32>().sqrt()
}

/// One example's state.
struct Example {
    x0: Vec<f32>,
    /// Current best perturbation (`x_best − x0`, already clipped).
    delta: Vec<f32>,
    margin: f32,
    queries: usize,
}

/// Runs the Square attack on a batch (`x` row-major `[batch, c·h·w]`).
///
/// `query` gets a batch of candidate images and returns their logits, row-major.
pub fn square(
    mut query: impl FnMut(&[f32]) -> Vec<f32>,
    x: &[f32],
    labels: &[usize],
    cfg: &SquareConfig,
) -> SquareResult {
    let (c, h, w) = (cfg.channels.max(1), cfg.height.max(1), cfg.width.max(1));
    let d = c * h * w;
    let b = labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let eps = cfg.eps;
    let clip_delta = |x0: &[f32], delta: &mut [f32]| {
        for (dv, &a) in delta.iter_mut().zip(x0) {
            *dv = (a + *dv).clamp(0.0, 1.0) - a;
        }
    };
    let build = |x0: &[f32], delta: &[f32]| -> Vec<f32> {
        x0.iter().zip(delta).map(|(a, dv)| a + dv).collect()
    };
    // Initial perturbations.
    let mut ex: Vec<Example> = (0..b)
        .map(|k| {
            let x0 = x.get(k * d..(k + 1) * d).unwrap_or(&[]).to_vec();
            let mut delta = vec![0.0f32; d];
            match cfg.norm {
                AttackNorm::Linf => {
                    for ch in 0..c {
                        for col in 0..w {
                            let s = if rng.gen_bool(0.5) { eps } else { -eps };
                            for r in 0..h {
                                delta[ch * h * w + r * w + col] = s;
                            }
                        }
                    }
                }
                AttackNorm::L2 => {
                    let s = (h / 5).max(1);
                    let sp = (h.saturating_sub(s * 5)) / 2;
                    for i in 0..h / s {
                        for j in 0..w / s {
                            let blob = meta_pseudo_gaussian(s, &mut rng);
                            for ch in 0..c {
                                let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
                                for r in 0..s {
                                    for q in 0..s {
                                        let (rr, cc) = (sp + i * s + r, sp + j * s + q);
                                        if rr < h && cc < w {
                                            delta[ch * h * w + rr * w + cc] +=
                                                sign * blob[r * s + q];
                                        }
                                    }
                                }
                            }
                        }
                    }
                    let n = l2(&delta).max(1e-12);
                    for v in delta.iter_mut() {
                        *v *= eps / n;
                    }
                }
            }
            clip_delta(&x0, &mut delta);
            Example {
                x0,
                delta,
                margin: f32::INFINITY,
                queries: 0,
            }
        })
        .collect();
    // Margins of the initial points.
    let batch: Vec<f32> = ex.iter().flat_map(|e| build(&e.x0, &e.delta)).collect();
    let z = if b > 0 { query(&batch) } else { Vec::new() };
    if let Some(nc) = z.len().checked_div(b) {
        for (k, e) in ex.iter_mut().enumerate() {
            e.margin = margin(z.get(k * nc..(k + 1) * nc).unwrap_or(&[]), labels[k]);
            e.queries = 1;
        }
    }
    let n_features = d as f32;
    for it in 1..cfg.queries {
        let active: Vec<usize> = (0..b).filter(|&k| ex[k].margin >= 0.0).collect();
        if active.is_empty() {
            break;
        }
        let p = p_selection(cfg.p_init, it, cfg.queries);
        let mut cands: Vec<Vec<f32>> = Vec::with_capacity(active.len());
        for &k in &active {
            let e = &ex[k];
            let mut delta = e.delta.clone();
            match cfg.norm {
                AttackNorm::Linf => {
                    let s = ((p * n_features / c as f32).sqrt().round() as usize)
                        .clamp(1, h.min(w).saturating_sub(1).max(1));
                    let r0 = rng.gen_range(0..=h - s);
                    let c0 = rng.gen_range(0..=w - s);
                    // Re-draw the signs while the window would not change the image
                    // (e.g. it already holds those signs), at most a few times.
                    for _ in 0..10 {
                        let signs: Vec<f32> = (0..c)
                            .map(|_| if rng.gen_bool(0.5) { eps } else { -eps })
                            .collect();
                        let mut changed = false;
                        for (ch, &sv) in signs.iter().enumerate() {
                            for r in r0..r0 + s {
                                for q in c0..c0 + s {
                                    let i = ch * h * w + r * w + q;
                                    let v = (e.x0[i] + sv).clamp(0.0, 1.0) - e.x0[i];
                                    if (v - e.delta[i]).abs() > 1e-7 {
                                        changed = true;
                                    }
                                    delta[i] = v;
                                }
                            }
                        }
                        if changed {
                            break;
                        }
                    }
                }
                AttackNorm::L2 => {
                    let mut s = ((p * n_features / c as f32).sqrt().round() as usize).max(3);
                    if s.is_multiple_of(2) {
                        s += 1;
                    }
                    let s = s.min(h.min(w));
                    let (r1, q1) = (rng.gen_range(0..=h - s), rng.gen_range(0..=w - s));
                    let (r2, q2) = (rng.gen_range(0..=h - s), rng.gen_range(0..=w - s));
                    let in1 =
                        |r: usize, q: usize| (r1..r1 + s).contains(&r) && (q1..q1 + s).contains(&q);
                    let in2 =
                        |r: usize, q: usize| (r2..r2 + s).contains(&r) && (q2..q2 + s).contains(&q);
                    let norm_image = l2(&e.delta);
                    let blob = meta_pseudo_gaussian(s, &mut rng);
                    for ch in 0..c {
                        let base = ch * h * w;
                        let (mut win1, mut union) = (0.0f32, 0.0f32);
                        for r in 0..h {
                            for q in 0..w {
                                let v = e.delta[base + r * w + q];
                                if in1(r, q) {
                                    win1 += v * v;
                                }
                                if in1(r, q) || in2(r, q) {
                                    union += v * v;
                                }
                            }
                        }
                        let win1 = win1.sqrt();
                        let sign = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
                        let mut new: Vec<f32> = (0..s * s)
                            .map(|i| {
                                let (r, q) = (r1 + i / s, q1 + i % s);
                                sign * blob[i] + e.delta[base + r * w + q] / (1e-10 + win1)
                            })
                            .collect();
                        normalise(&mut new);
                        let mass = ((eps * eps - norm_image * norm_image).max(0.0) / c as f32
                            + union)
                            .sqrt();
                        for r in r2..r2 + s {
                            for q in q2..q2 + s {
                                delta[base + r * w + q] = 0.0;
                            }
                        }
                        for (i, v) in new.iter().enumerate() {
                            delta[base + (r1 + i / s) * w + q1 + i % s] = v * mass;
                        }
                    }
                    let n = l2(&delta).max(1e-12);
                    for v in delta.iter_mut() {
                        *v *= eps / n;
                    }
                }
            }
            clip_delta(&e.x0, &mut delta);
            cands.push(delta);
        }
        let batch: Vec<f32> = active
            .iter()
            .zip(&cands)
            .flat_map(|(&k, dl)| build(&ex[k].x0, dl))
            .collect();
        let z = query(&batch);
        let nc = z.len() / active.len();
        for (j, (&k, dl)) in active.iter().zip(cands).enumerate() {
            let m = margin(z.get(j * nc..(j + 1) * nc).unwrap_or(&[]), labels[k]);
            let e = &mut ex[k];
            e.queries += 1;
            if m < e.margin {
                e.margin = m;
                e.delta = dl;
            }
        }
    }
    SquareResult {
        adv: ex.iter().flat_map(|e| build(&e.x0, &e.delta)).collect(),
        queries: ex.iter().map(|e| e.queries).collect(),
        fooled: ex.iter().map(|e| e.margin < 0.0).collect(),
    }
}
