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
use pursamere_core::PurifierConfig;

use crate::gather::NetDevice;
use crate::model::{Batch, DeviceLayer, DeviceNet, FloatNet};

/// The float reference purifier for one denoiser and configuration.
pub struct Reference<E: Dtype, D: Device<E>> {
    pub(crate) dev: D,
    pub(crate) net: DeviceNet<E, D>,
    pub(crate) cfg: PurifierConfig,
    pub(crate) d: usize,
    /// `[M, d]`: σ ε_m.
    pub(crate) noise: Tensor<(usize, usize), E, D>,
    /// `[M, h₁]`: `σ ε_m W₁ᵀ` when the denoiser is dense (the
    /// first layer of a noisy row is then `x W₁ᵀ + b₁` plus this, computed once per
    /// example instead of once per row).
    pub(crate) noise_w1: Option<Tensor<(usize, usize), E, D>>,
}

fn cast<E: Float>(v: f32) -> E {
    E::from(v).unwrap_or_else(E::zero)
}

impl<E: Dtype + Float, D: NetDevice<E>> Reference<E, D> {
    /// A reference for `denoiser` (input length `d`) with configuration `cfg`.
    pub fn new(dev: &D, denoiser: &FloatNet, d: usize, cfg: PurifierConfig) -> Self {
        let m = cfg.noise_samples as usize;
        let mut noise = vec![0f32; m * d];
        for (mi, block) in (0u32..).zip(noise.chunks_mut(d.max(1))) {
            cfg.noise.fill(cfg.seed, mi, block);
            for v in block.iter_mut() {
                *v *= cfg.sigma;
            }
        }
        let net = DeviceNet::from_float(denoiser, dev);
        let noise: Tensor<(usize, usize), E, D> =
            dev.tensor_from_vec(noise.into_iter().map(cast).collect(), (m, d));
        let noise_w1 = match net.layers.first() {
            Some(DeviceLayer::Dense(first)) if first.w.shape().1 == d && !net.is_spatial() => Some(
                noise
                    .clone()
                    .matmul(first.w.clone().permute::<_, Axes2<1, 0>>()),
            ),
            _ => None,
        };
        Reference {
            dev: dev.clone(),
            net,
            cfg,
            d,
            noise,
            noise_w1,
        }
    }

    /// The same reference on the straightforward path: `∇F` by dfdx's autodiff on
    /// every noisy row and the masks recomputed in the backward pass, instead of the
    /// first layer once per example and masks kept from the forward pass. Same
    /// mathematics, slower: for tests and the side-by-side benchmark.
    pub fn without_fast_path(mut self) -> Self {
        self.noise_w1 = None;
        self
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
    /// SAM steps, flat-point rule and projection as the core (the loop itself is
    /// [`Reference::purify_trajectory`], which also records what the exact gradient
    /// needs).
    pub fn purify(&self, x0: &[E]) -> Vec<E> {
        let mut t = self.purify_trajectory(x0);
        t.xs.pop().unwrap_or_default()
    }
}
