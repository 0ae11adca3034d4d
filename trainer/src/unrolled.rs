//! The exact gradient of purification with respect to its input, through all K
//! unrolled steps and the projection (including the projection ball's dependence on
//! the input): what the white-box "full" attack uses.
//!
//! dfdx has no second-order autodiff, so the Hessian–vector products `F` needs are
//! derived by hand. For a ReLU denoiser `D` is piecewise linear, so almost everywhere
//! `∇²F(x) = (2/M) Σ_m (J_m − I)ᵀ (J_m − I)` with `J_m` the Jacobian of `D` at
//! `y_m = x + σ ε_m` (the second-derivative term of `D` vanishes). One JVP and one
//! VJP per noise vector; both are computed from the ReLU masks of a forward pass.
//!
//! One step is `x' = Π(x − η h)` with `h = ∇F(x̃)`, `x̃ = x + ρ g/‖g‖`, `g = ∇F(x)`.
//! Its vector–Jacobian product, for `u = v ⊙ [x' not clipped]`:
//! `vᵀ ∂x'/∂x = u − η (∂x̃/∂x)ᵀ ∇²F(x̃) u`, with
//! `(∂x̃/∂x)ᵀ w = w + ρ ∇²F(x) (w/‖g‖ − g (gᵀw)/‖g‖³)`; clipped coordinates pass
//! `v` to the input when their bound is `x0 ∓ δ` (not 0 or 1). Sign steps have a
//! zero derivative almost everywhere (the gradient is masked — which is why BPDA and
//! the Square attack must always run alongside).

use dfdx::prelude::*;
use num_traits::Float;
use pursamere_core::StepRule;

use crate::model::Batch;
use crate::reference::Reference;

/// Everything the backward pass needs from a purification of a batch.
pub struct Trajectory<E> {
    /// The input batch.
    pub x0: Vec<E>,
    /// Iterates `x_0 … x_K` (`x_0 = x0`).
    pub xs: Vec<Vec<E>>,
    /// Per step: `x̃_k` (equal to `x_k` where no SAM perturbation happened).
    pub x_tilde: Vec<Vec<E>>,
    /// Per step: `g_k = ∇F(x_k)` (empty when ρ = 0).
    pub g: Vec<Vec<E>>,
    /// Per step: whether each row was SAM-perturbed.
    pub perturbed: Vec<Vec<bool>>,
    /// Per step: the pre-projection point `z_k = x_k − η h_k`.
    pub z: Vec<Vec<E>>,
}

impl<E> Trajectory<E> {
    /// The purified batch `x_K`.
    pub fn output(&self) -> &[E] {
        self.xs.last().map_or(&[], |v| v.as_slice())
    }
}

/// ReLU masks of the denoiser at the rows of `Y` (`[B·M, d]`), one per ReLU layer.
struct Linearisation<E: Dtype, D: Device<E>> {
    masks: Vec<Option<Batch<E, D>>>,
}

/// The projection box of one coordinate, `[max(x0 − δ, 0), min(x0 + δ, 1)]`, and
/// whether each bound is the one that moves with `x0` (not 0 or 1).
fn ball_bounds<E: Float>(x0: E, delta: E) -> (E, bool, E, bool) {
    let (zero, one) = (E::zero(), E::one());
    let lo_from_x0 = x0 - delta > zero;
    let hi_from_x0 = x0 + delta < one;
    (
        if lo_from_x0 { x0 - delta } else { zero },
        lo_from_x0,
        if hi_from_x0 { x0 + delta } else { one },
        hi_from_x0,
    )
}

fn cast<E: Float>(v: f64) -> E {
    E::from(v).unwrap_or_else(E::zero)
}

impl<E: Dtype + Float, D: Device<E>> Reference<E, D> {
    /// The rows `x_b + σ ε_m` for every example `b` and noise vector `m`.
    fn noisy_rows(&self, x: &[E]) -> (Batch<E, D>, usize) {
        let d = self.d;
        let b = x.len() / d.max(1);
        let m = self.cfg.noise_samples as usize;
        let xt: Batch<E, D> = self.dev.tensor_from_vec(x.to_vec(), (b, d));
        let y = xt.broadcast_like::<_, Axis<1>>(&(b, m, d))
            + self.noise.clone().broadcast_like::<_, Axis<0>>(&(b, m, d));
        (y.reshape_like(&(b * m, d)), b)
    }

    fn linearise(&self, x: &[E]) -> Linearisation<E, D> {
        let (mut a, _) = self.noisy_rows(x);
        let mut masks = Vec::new();
        for l in &self.net.layers {
            match l {
                Some(dense) => {
                    let (rows, out) = (a.shape().0, dense.w.shape().0);
                    a = a.matmul(dense.w.clone().permute::<_, Axes2<1, 0>>())
                        + dense.b.clone().broadcast_like::<_, Axis<0>>(&(rows, out));
                    masks.push(None);
                }
                None => {
                    let shape = *a.shape();
                    let mask: Vec<E> = a
                        .as_vec()
                        .into_iter()
                        .map(|v| if v > E::zero() { E::one() } else { E::zero() })
                        .collect();
                    let mask: Batch<E, D> = self.dev.tensor_from_vec(mask, shape);
                    a = a * mask.clone();
                    masks.push(Some(mask));
                }
            }
        }
        Linearisation { masks }
    }

    /// `J t` for every row (`t`: `[rows, d]`), residual skip included.
    fn jvp(&self, lin: &Linearisation<E, D>, t0: Batch<E, D>) -> Batch<E, D> {
        let mut t = t0.clone();
        for (l, mask) in self.net.layers.iter().zip(&lin.masks) {
            t = match (l, mask) {
                (Some(dense), _) => t.matmul(dense.w.clone().permute::<_, Axes2<1, 0>>()),
                (None, Some(m)) => t * m.clone(),
                (None, None) => t,
            };
        }
        if self.net.residual {
            t + t0
        } else {
            t
        }
    }

    /// `Jᵀ w` for every row.
    fn vjp_rows(&self, lin: &Linearisation<E, D>, w0: Batch<E, D>) -> Batch<E, D> {
        let mut w = w0.clone();
        for (l, mask) in self.net.layers.iter().zip(&lin.masks).rev() {
            w = match (l, mask) {
                (Some(dense), _) => w.matmul(dense.w.clone()),
                (None, Some(m)) => w * m.clone(),
                (None, None) => w,
            };
        }
        if self.net.residual {
            w + w0
        } else {
            w
        }
    }

    /// `∇²F(x) u` for every example of the batch `x` (row-major `[batch, d]`).
    pub fn ere_hvp(&self, x: &[E], u: &[E]) -> Vec<E> {
        let d = self.d;
        let b = x.len() / d.max(1);
        let m = self.cfg.noise_samples as usize;
        let lin = self.linearise(x);
        let ut: Batch<E, D> = self.dev.tensor_from_vec(u.to_vec(), (b, d));
        let urows = ut
            .broadcast_like::<_, Axis<1>>(&(b, m, d))
            .reshape_like(&(b * m, d));
        let a = self.jvp(&lin, urows.clone()) - urows; // (J − I) u
        let at = self.vjp_rows(&lin, a.clone()) - a; // (J − I)ᵀ (J − I) u
        let h = at.reshape_like(&(b, m, d)).sum::<(usize, usize), Axis<1>>()
            * cast::<E>(2.0 / m as f64);
        h.as_vec()
    }

    /// Purifies a batch and records the trajectory (same result as [`Reference::purify`]).
    pub fn purify_trajectory(&self, x0: &[E]) -> Trajectory<E> {
        let d = self.d.max(1);
        let cfg = &self.cfg;
        let (rho, eta, delta) = (
            cast::<E>(f64::from(cfg.rho)),
            cast::<E>(f64::from(cfg.eta)),
            cast::<E>(f64::from(cfg.radius)),
        );
        let (zero, one) = (E::zero(), E::one());
        let mut t = Trajectory {
            x0: x0.to_vec(),
            xs: vec![x0.to_vec()],
            x_tilde: vec![],
            g: vec![],
            perturbed: vec![],
            z: vec![],
        };
        let mut x = x0.to_vec();
        for _ in 0..cfg.iters {
            let (h, xt, g, pert) = if cfg.rho > 0.0 {
                let (_, g) = self.ere_value_and_grad(&x);
                let mut xt = x.clone();
                let mut pert = Vec::new();
                for ((tr, xi), gi) in xt.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let n = gi.iter().fold(zero, |a, &v| a + v * v).sqrt();
                    let p = n > zero && n.is_finite();
                    if p {
                        let s = rho / n;
                        for ((ti, &xv), &gv) in tr.iter_mut().zip(xi).zip(gi) {
                            *ti = xv + gv * s;
                        }
                    }
                    pert.push(p);
                }
                let h = if pert.iter().any(|&p| p) {
                    self.ere_value_and_grad(&xt).1
                } else {
                    g.clone()
                };
                (h, xt, g, pert)
            } else {
                let (_, h) = self.ere_value_and_grad(&x);
                (h, x.clone(), Vec::new(), vec![false; x.len() / d])
            };
            let mut z = vec![zero; x.len()];
            for (((xi, &hi), &oi), zi) in x.iter_mut().zip(&h).zip(x0).zip(z.iter_mut()) {
                let step = match cfg.step {
                    StepRule::Gradient => hi,
                    StepRule::Sign => {
                        if hi > zero {
                            one
                        } else if hi < zero {
                            -one
                        } else {
                            zero
                        }
                    }
                };
                let moved = *xi - eta * step;
                *zi = moved;
                let (lo, _, hb, _) = ball_bounds(oi, delta);
                *xi = if moved.is_nan() || moved < lo {
                    lo
                } else if moved > hb {
                    hb
                } else {
                    moved
                };
            }
            t.x_tilde.push(xt);
            t.g.push(g);
            t.perturbed.push(pert);
            t.z.push(z);
            t.xs.push(x.clone());
        }
        t
    }

    /// `vᵀ ∂x_K/∂x0`: the gradient with respect to the input of any loss whose
    /// gradient with respect to the purified output is `v`.
    pub fn purify_vjp(&self, t: &Trajectory<E>, v_out: &[E]) -> Vec<E> {
        let d = self.d.max(1);
        let cfg = &self.cfg;
        let (rho, eta, delta) = (
            cast::<E>(f64::from(cfg.rho)),
            cast::<E>(f64::from(cfg.eta)),
            cast::<E>(f64::from(cfg.radius)),
        );
        let zero = E::zero();
        let mut v = v_out.to_vec();
        let mut g_x0 = vec![zero; v.len()];
        for k in (0..t.z.len()).rev() {
            let mut u = vec![zero; v.len()];
            for i in 0..v.len() {
                let (z, o) = (t.z[k][i], t.x0[i]);
                let (lo, lo_from_x0, hb, hi_from_x0) = ball_bounds(o, delta);
                if z.is_nan() || z < lo {
                    if lo_from_x0 {
                        g_x0[i] += v[i];
                    }
                } else if z > hb {
                    if hi_from_x0 {
                        g_x0[i] += v[i];
                    }
                } else {
                    u[i] = v[i];
                }
            }
            v = match cfg.step {
                StepRule::Sign => u,
                StepRule::Gradient => {
                    let mut w = self.ere_hvp(&t.x_tilde[k], &u);
                    if cfg.rho > 0.0 && t.perturbed[k].iter().any(|&p| p) {
                        let mut q = vec![zero; w.len()];
                        for (row, ((qr, wr), gr)) in q
                            .chunks_mut(d)
                            .zip(w.chunks(d))
                            .zip(t.g[k].chunks(d))
                            .enumerate()
                        {
                            if !t.perturbed[k][row] {
                                continue;
                            }
                            let n = gr.iter().fold(zero, |a, &x| a + x * x).sqrt();
                            let gw = gr.iter().zip(wr).fold(zero, |a, (&x, &y)| a + x * y);
                            for ((qi, &wi), &gi) in qr.iter_mut().zip(wr).zip(gr) {
                                *qi = wi / n - gi * gw / (n * n * n);
                            }
                        }
                        let extra = self.ere_hvp(&t.xs[k], &q);
                        for (wi, ei) in w.iter_mut().zip(extra) {
                            *wi += rho * ei;
                        }
                    }
                    u.iter().zip(&w).map(|(&ui, &wi)| ui - eta * wi).collect()
                }
            };
        }
        v.iter().zip(&g_x0).map(|(&a, &b)| a + b).collect()
    }
}
