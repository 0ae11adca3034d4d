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
use pursamere_core::{Norm, StepRule};

use crate::gather::NetDevice;
use crate::model::{Batch, DeviceLayer};
use crate::reference::Reference;

/// Everything the backward pass needs from a purification of a batch.
pub struct Trajectory<E: Dtype, D: Device<E>> {
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
    /// Per step: the denoiser's ReLU masks at the noisy rows of `x̃_k`, kept from the
    /// forward pass so the backward pass need not recompute them (`None` where the
    /// fast path does not apply).
    lin_tilde: Vec<Option<Linearisation<E, D>>>,
    /// Per step: the same at `x_k` (SAM only).
    lin_x: Vec<Option<Linearisation<E, D>>>,
}

impl<E: Dtype, D: Device<E>> Trajectory<E, D> {
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

/// `r = z − x0` of the L2 projection (0 where the step gave NaN, as in the core).
fn l2_r<E: Float>(z: E, x0: E) -> E {
    if z.is_nan() {
        E::zero()
    } else {
        z - x0
    }
}

/// The radial factor of the L2 projection of one row, `min(1, δ / ||r||)`, and
/// `||r||`.
fn l2_scale<E: Float>(z: &[E], x0: &[E], delta: E) -> (E, E) {
    let n = z
        .iter()
        .zip(x0)
        .fold(E::zero(), |a, (&zi, &oi)| {
            let r = l2_r(zi, oi);
            a + r * r
        })
        .sqrt();
    (if n > delta { delta / n } else { E::one() }, n)
}

fn clip01<E: Float>(v: E) -> E {
    if v < E::zero() {
        E::zero()
    } else if v > E::one() {
        E::one()
    } else {
        v
    }
}

fn cast<E: Float>(v: f64) -> E {
    E::from(v).unwrap_or_else(E::zero)
}

impl<E: Dtype + Float, D: NetDevice<E>> Reference<E, D> {
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

    /// Forward pass of `layers` on the rows `a`, recording the ReLU masks (one
    /// entry per layer, `None` for the others); returns the output rows.
    fn forward_masked<'l>(
        &self,
        mut a: Batch<E, D>,
        layers: impl Iterator<Item = &'l DeviceLayer<E, D>>,
        masks: &mut Vec<Option<Batch<E, D>>>,
    ) -> Batch<E, D>
    where
        E: 'l,
        D: 'l,
    {
        for l in layers {
            match l {
                DeviceLayer::Relu => {
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
                other => {
                    a = self.net.apply_layer(other, a, true);
                    masks.push(None);
                }
            }
        }
        a
    }

    fn linearise(&self, x: &[E]) -> Linearisation<E, D> {
        let (a, _) = self.noisy_rows(x);
        let mut masks = Vec::new();
        // Masks in the network's own layout (what `jvp` multiplies by).
        self.forward_masked(self.net.enter(a), self.net.layers.iter(), &mut masks);
        Linearisation { masks }
    }

    /// `J t` for every row (`t`: `[rows, d]`), residual skip included; the tape
    /// (if any) rides on `t0`.
    fn jvp<T>(&self, lin: &Linearisation<E, D>, t0: Batch<E, D, T>) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        let skip = self.net.residual.then(|| t0.with_empty_tape());
        let mut t = self.net.enter(t0);
        for (l, mask) in self.net.layers.iter().zip(&lin.masks) {
            t = match (l, mask) {
                (DeviceLayer::Relu, Some(m)) => t * m.clone(),
                (DeviceLayer::Relu, None) => t,
                (other, _) => self.net.apply_layer(other, t, false),
            };
        }
        let t = self.net.leave(t);
        match skip {
            Some(s) => t + s,
            None => t,
        }
    }

    /// `Jᵀ w` for every row. Dense networks transpose each layer by hand; networks
    /// with convolutions differentiate the (linear) `J t` by autodiff, which is the
    /// transpose of the gather and matmul by construction.
    fn vjp_rows(&self, lin: &Linearisation<E, D>, w0: Batch<E, D>) -> Batch<E, D> {
        if self.net.is_spatial() {
            let t0: Batch<E, D> = self.dev.zeros_like(w0.shape());
            let jt = self.jvp(lin, t0.leaky_trace());
            let grads = (jt * w0).sum::<Rank0, _>().backward();
            return grads.get(&t0);
        }
        let mut w = w0.clone();
        for (l, mask) in self.net.layers.iter().zip(&lin.masks).rev() {
            w = match (l, mask) {
                (DeviceLayer::Dense(dense), _) => w.matmul(dense.w.clone()),
                (_, Some(m)) => w * m.clone(),
                (_, None) => w,
            };
        }
        if self.net.residual {
            w + w0
        } else {
            w
        }
    }

    /// The first dense layer `(W₁, b₁)` when the denoiser starts with one: the fast
    /// path computes it once per example and adds the precomputed `σ ε_m W₁ᵀ`,
    /// instead of once per noisy row.
    fn first_dense(&self) -> Option<&crate::model::DeviceDense<E, D>> {
        match (self.net.layers.first(), &self.noise_w1) {
            (Some(DeviceLayer::Dense(d)), Some(_)) => Some(d),
            _ => None,
        }
    }

    /// `Σ_m J_mᵀ w_m` per example, `w` being `[B·M, d]` rows; the masks are those of
    /// `lin`, the first layer summed over `m` before its transpose (fast path).
    fn vjp_summed(&self, lin: &Linearisation<E, D>, w0: Batch<E, D>, b: usize) -> Batch<E, D> {
        let m = self.cfg.noise_samples as usize;
        let d = self.d;
        let mut w = w0.clone();
        // Fast path only: the network is dense (see `Reference::new`).
        for (l, mask) in self.net.layers.iter().zip(&lin.masks).skip(1).rev() {
            w = match (l, mask) {
                (DeviceLayer::Dense(dense), _) => w.matmul(dense.w.clone()),
                (_, Some(mk)) => w * mk.clone(),
                (_, None) => w,
            };
        }
        let h1 = w.shape().1;
        let summed = w.reshape_like(&(b, m, h1)).sum::<(usize, usize), Axis<1>>();
        let mut out = match self.first_dense() {
            Some(dense) => summed.matmul(dense.w.clone()),
            None => summed,
        };
        if self.net.residual {
            out = out + w0.reshape_like(&(b, m, d)).sum::<(usize, usize), Axis<1>>();
        }
        out
    }

    /// `∇F(x)` per example (row-major) and the masks at the noisy rows, by the
    /// fast path: hand-written forward and backward of the ReLU network, first layer
    /// once per example. `None` when the denoiser does not start with a dense layer.
    fn ere_grad_fast(&self, x: &[E]) -> Option<(Vec<E>, Linearisation<E, D>)> {
        let first = self.first_dense()?;
        let n1 = self.noise_w1.clone()?;
        let d = self.d;
        let b = x.len() / d.max(1);
        let m = self.cfg.noise_samples as usize;
        let xt: Batch<E, D> = self.dev.tensor_from_vec(x.to_vec(), (b, d));
        let h1 = first.w.shape().0;
        let a1 = xt
            .clone()
            .matmul(first.w.clone().permute::<_, Axes2<1, 0>>())
            + first.b.clone().broadcast_like::<_, Axis<0>>(&(b, h1));
        let a: Batch<E, D> = (a1.broadcast_like::<_, Axis<1>>(&(b, m, h1))
            + n1.broadcast_like::<_, Axis<0>>(&(b, m, h1)))
        .reshape_like(&(b * m, h1));
        let mut masks = vec![None];
        let a = self.forward_masked(a, self.net.layers.iter().skip(1), &mut masks);
        let lin = Linearisation { masks };
        // r_m = D(x + σε_m) − x (the residual skip adds the noisy row itself).
        let target = xt.clone().broadcast_like::<_, Axis<1>>(&(b, m, d));
        let out = if self.net.residual {
            let (y, _) = self.noisy_rows(x);
            a + y
        } else {
            a
        };
        let r = out.reshape_like(&(b, m, d)) - target;
        let r_rows = r.clone().reshape_like(&(b * m, d));
        // ∇F = (2/M) Σ_m (J_mᵀ r_m − r_m)
        let g = self.vjp_summed(&lin, r_rows, b) - r.sum::<(usize, usize), Axis<1>>();
        Some(((g * cast::<E>(2.0 / m as f64)).as_vec(), lin))
    }

    /// `∇²F(x) u` per example from saved masks (fast path).
    fn ere_hvp_with(&self, lin: &Linearisation<E, D>, u: &[E]) -> Vec<E> {
        let d = self.d;
        let b = u.len() / d.max(1);
        let m = self.cfg.noise_samples as usize;
        let ut: Batch<E, D> = self.dev.tensor_from_vec(u.to_vec(), (b, d));
        let urows = ut
            .clone()
            .broadcast_like::<_, Axis<1>>(&(b, m, d))
            .reshape_like(&(b * m, d));
        // J u: the first layer once per example, then the masked rows.
        let mut t = match self.first_dense() {
            Some(dense) => {
                let h1 = dense.w.shape().0;
                ut.matmul(dense.w.clone().permute::<_, Axes2<1, 0>>())
                    .broadcast_like::<_, Axis<1>>(&(b, m, h1))
                    .reshape_like(&(b * m, h1))
            }
            None => urows.clone(),
        };
        for (l, mask) in self.net.layers.iter().zip(&lin.masks).skip(1) {
            t = match (l, mask) {
                (DeviceLayer::Relu, Some(mk)) => t * mk.clone(),
                (DeviceLayer::Relu, None) => t,
                (other, _) => self.net.apply_layer(other, t, false),
            };
        }
        let ju = if self.net.residual {
            t + urows.clone()
        } else {
            t
        };
        let a = ju - urows; // (J − I) u, per row
        let at = self.vjp_summed(lin, a.clone(), b)
            - a.reshape_like(&(b, m, d)).sum::<(usize, usize), Axis<1>>();
        (at * cast::<E>(2.0 / m as f64)).as_vec()
    }

    /// `∇F(x)` and, on the fast path, the masks for the backward pass.
    fn grad_for_trajectory(&self, x: &[E]) -> (Vec<E>, Option<Linearisation<E, D>>) {
        match self.ere_grad_fast(x) {
            Some((g, lin)) => (g, Some(lin)),
            None => (self.ere_value_and_grad(x).1, None),
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
    pub fn purify_trajectory(&self, x0: &[E]) -> Trajectory<E, D> {
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
            lin_tilde: vec![],
            lin_x: vec![],
        };
        let mut x = x0.to_vec();
        for _ in 0..cfg.iters {
            let (h, xt, g, pert, lin_t, lin_x) = if cfg.rho > 0.0 {
                let (g, lin_x) = self.grad_for_trajectory(&x);
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
                let (h, lin_t) = if pert.iter().any(|&p| p) {
                    self.grad_for_trajectory(&xt)
                } else {
                    // x̃ = x: the same masks serve both.
                    (g.clone(), None)
                };
                (h, xt, g, pert, lin_t, lin_x)
            } else {
                let (h, lin) = self.grad_for_trajectory(&x);
                (
                    h,
                    x.clone(),
                    Vec::new(),
                    vec![false; x.len() / d],
                    lin,
                    None,
                )
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
                if cfg.norm == Norm::L2 {
                    continue; // projected per row below
                }
                let (lo, _, hb, _) = ball_bounds(oi, delta);
                *xi = if moved.is_nan() || moved < lo {
                    lo
                } else if moved > hb {
                    hb
                } else {
                    moved
                };
            }
            if cfg.norm == Norm::L2 {
                for ((xr, zr), or) in x.chunks_mut(d).zip(z.chunks(d)).zip(x0.chunks(d)) {
                    let (scale, _) = l2_scale(zr, or, delta);
                    for ((xi, &zi), &oi) in xr.iter_mut().zip(zr).zip(or) {
                        *xi = clip01(oi + l2_r(zi, oi) * scale);
                    }
                }
            }
            t.x_tilde.push(xt);
            t.g.push(g);
            t.perturbed.push(pert);
            t.z.push(z);
            t.lin_tilde.push(lin_t);
            t.lin_x.push(lin_x);
            t.xs.push(x.clone());
        }
        t
    }

    /// `vᵀ ∂x_K/∂x0`: the gradient with respect to the input of any loss whose
    /// gradient with respect to the purified output is `v`.
    pub fn purify_vjp(&self, t: &Trajectory<E, D>, v_out: &[E]) -> Vec<E> {
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
            if cfg.norm == Norm::L2 {
                // p = clip(x0 + s·r), r = z − x0, s = min(1, δ/||r||): with m the
                // unclipped mask and v' = m ⊙ v, ∂/∂z = s (v' − r (r·v') / ||r||²)
                // when scaled (else v'), and ∂/∂x0 = v' − ∂/∂z.
                for (((ur, vr), zr), (or, gr)) in u
                    .chunks_mut(d)
                    .zip(v.chunks(d))
                    .zip(t.z[k].chunks(d))
                    .zip(t.x0.chunks(d).zip(g_x0.chunks_mut(d)))
                {
                    let (s, n) = l2_scale(zr, or, delta);
                    let scaled = n > delta;
                    let vm: Vec<E> = vr
                        .iter()
                        .zip(zr.iter().zip(or))
                        .map(|(&vi, (&zi, &oi))| {
                            let p = oi + l2_r(zi, oi) * s;
                            if p < zero || p > E::one() {
                                zero
                            } else {
                                vi
                            }
                        })
                        .collect();
                    let rv = zr
                        .iter()
                        .zip(or)
                        .zip(&vm)
                        .fold(zero, |a, ((&zi, &oi), &vi)| a + l2_r(zi, oi) * vi);
                    for (i, ui) in ur.iter_mut().enumerate() {
                        let uz = if scaled {
                            s * (vm[i] - l2_r(zr[i], or[i]) * rv / (n * n))
                        } else {
                            vm[i]
                        };
                        // A NaN step does not depend on z (r = 0 there).
                        *ui = if zr[i].is_nan() { zero } else { uz };
                        gr[i] += vm[i] - *ui;
                    }
                }
            }
            for i in 0..v.len() {
                if cfg.norm == Norm::L2 {
                    break;
                }
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
                    // Masks at x̃_k: saved ones (at x_k when no row was perturbed).
                    let saved_t = t.lin_tilde.get(k).and_then(Option::as_ref);
                    let saved_x = t.lin_x.get(k).and_then(Option::as_ref);
                    let hvp_at = |saved: Option<&Linearisation<E, D>>, x: &[E], u: &[E]| match saved
                    {
                        Some(lin) => self.ere_hvp_with(lin, u),
                        None => self.ere_hvp(x, u),
                    };
                    let mut w = hvp_at(saved_t.or(saved_x), &t.x_tilde[k], &u);
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
                        let extra = hvp_at(saved_x, &t.xs[k], &q);
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
