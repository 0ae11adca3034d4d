//! The batched float host reference of the purifier, in dfdx.
//!
//! The same algorithm as `pursamere_core::Model::purify` (see `core/src/purify.rs`),
//! with the same noise (`σ ε_m` from the core's generator, computed in f32 exactly as
//! the core does), run on a batch at once, in f32 or f64, with float weights or with
//! the dequantised weights of a `.psm` file. Differences from the core come only from
//! the weights (float vs int8) and the order of floating-point sums.
//!
//! [`Reference::ere_value_and_grad`] gives `F` and `∇F` for every example of a
//! batch; the attacks build on it.

use dfdx::prelude::*;
use num_traits::Float;
use pursamere_core::{PurifierConfig, StepRule};

use crate::model::{Batch, DeviceNet, FloatNet};

/// The float reference purifier for one denoiser and configuration.
pub struct Reference<E: Dtype, D: Device<E>> {
    pub(crate) dev: D,
    pub(crate) net: DeviceNet<E, D>,
    pub(crate) cfg: PurifierConfig,
    pub(crate) d: usize,
    /// `[M, d]`: σ ε_m.
    pub(crate) noise: Tensor<(usize, usize), E, D>,
}

fn cast<E: Float>(v: f32) -> E {
    E::from(v).unwrap_or_else(E::zero)
}

impl<E: Dtype + Float, D: Device<E>> Reference<E, D> {
    /// A reference for `denoiser` (input length `d`) with configuration `cfg`.
    pub fn new(dev: &D, denoiser: &FloatNet, d: usize, cfg: PurifierConfig) -> Self {
        let m = cfg.noise_samples as usize;
        let mut noise = vec![0f32; m * d];
        for (mi, block) in (0u32..).zip(noise.chunks_mut(d.max(1))) {
            pursamere_core::noise::fill_standard_normal(cfg.seed, mi, block);
            for v in block.iter_mut() {
                *v *= cfg.sigma;
            }
        }
        Reference {
            dev: dev.clone(),
            net: DeviceNet::from_float(denoiser, dev),
            cfg,
            d,
            noise: dev.tensor_from_vec(noise.into_iter().map(cast).collect(), (m, d)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PurifierConfig {
        &self.cfg
    }

    /// `F(x)` per example and `∇F(x)` (row-major `[batch, d]`) for a batch `x`
    /// (row-major `[batch, d]`).
    pub fn ere_value_and_grad(&self, x: &[E]) -> (Vec<E>, Vec<E>) {
        let d = self.d;
        let b = x.len() / d.max(1);
        let m = self.cfg.noise_samples as usize;
        let x0: Batch<E, D> = self.dev.tensor_from_vec(x.to_vec(), (b, d));
        // `x` enters twice (in y and in the residual r = D(y) − x); both paths share
        // its id, so their gradients add up.
        let y = x0.leaky_trace().broadcast_like::<_, Axis<1>>(&(b, m, d))
            + self.noise.clone().broadcast_like::<_, Axis<0>>(&(b, m, d));
        let out = self.net.forward(y.reshape_like(&(b * m, d)));
        let target = x0.leaky_trace().broadcast_like::<_, Axis<1>>(&(b, m, d));
        let r = out.reshape_like(&(b, m, d)) - target;
        let per = r.square().sum::<(usize,), Axes2<1, 2>>() * cast::<E>(1.0 / m as f32);
        let values = per.retaped::<NoneTape>().as_vec();
        let grads = per.sum::<Rank0, _>().backward();
        (values, grads.get(&x0).as_vec())
    }

    /// Purifies a batch (row-major `[batch, d]`, values in `[0, 1]`) with the same
    /// SAM steps, flat-point rule and projection as the core.
    pub fn purify(&self, x0: &[E]) -> Vec<E> {
        let d = self.d.max(1);
        let cfg = &self.cfg;
        let (rho, eta, delta) = (
            cast::<E>(cfg.rho),
            cast::<E>(cfg.eta),
            cast::<E>(cfg.radius),
        );
        let (zero, one) = (E::zero(), E::one());
        let mut x = x0.to_vec();
        for _ in 0..cfg.iters {
            let h = if cfg.rho > 0.0 {
                let (_, g) = self.ere_value_and_grad(&x);
                let mut xt = x.clone();
                let mut any = false;
                for ((t, xi), gi) in xt.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                    let n = gi.iter().fold(zero, |a, &v| a + v * v).sqrt();
                    if n > zero && n.is_finite() {
                        any = true;
                        let s = rho / n;
                        for ((ti, &xv), &gv) in t.iter_mut().zip(xi).zip(gi) {
                            *ti = xv + gv * s;
                        }
                    }
                }
                if any {
                    // Rows at a flat point have x̃ = x, so their gradient is unchanged.
                    self.ere_value_and_grad(&xt).1
                } else {
                    g
                }
            } else {
                self.ere_value_and_grad(&x).1
            };
            for ((xi, &hi), &oi) in x.iter_mut().zip(&h).zip(x0) {
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
                let lo = if oi - delta > zero { oi - delta } else { zero };
                let hi_b = if oi + delta < one { oi + delta } else { one };
                *xi = if moved.is_nan() || moved < lo {
                    lo
                } else if moved > hi_b {
                    hi_b
                } else {
                    moved
                };
            }
        }
        x
    }
}
