//! The expected reconstruction error of a point and its gradient:
//!
//! `F(x) = (1/M) Σ_m ||D(x + σ ε_m) − x||²`, `∇F(x) = (2/M) Σ_m (J_D(y_m)ᵀ r_m − r_m)`
//! with `y_m = x + σ ε_m` and `r_m = D(y_m) − x`. For a residual denoiser
//! `D(y) = y + net(y)` the Jacobian is `I + J_net`, so the `r_m` terms cancel exactly
//! and `∇F(x) = (2/M) Σ_m J_net(y_m)ᵀ r_m`; the code uses that form (no cancellation
//! in floating point).
//!
//! Order of operations (part of the numeric definition): `σε_m[i]` is computed once
//! as `sigma * ε_m[i]` (f32); `y_m[i] = x[i] + σε_m[i]`; for a residual network
//! `D(y)[i] = y[i] + net(y)[i]`; `r_m[i] = D(y)[i] − x[i]`; `F` sums
//! `Σ_i r_m[i]²` (fixed lane order) over `m` in increasing order, then multiplies by
//! `1/M`; the gradient sums the per-`m` VJPs in increasing `m`, then multiplies each
//! element by `2/M`.

use crate::error::Error;
use crate::kernels::sum_sq;
use crate::model::{check_input, check_len, take_scratch, Model};
use crate::network;
use crate::noise::fill_standard_normal;
use crate::purify::PurifierConfig;

/// Scratch of one ERE evaluation, carved from the caller's buffer.
pub(crate) struct EreScratch<'s> {
    /// `M × d`: `σ ε_m` for every `m`.
    pub noise: &'s mut [f32],
    r: &'s mut [f32],
    acts: &'s mut [f32],
    ping: &'s mut [f32],
    pong: &'s mut [f32],
}

impl<'s> EreScratch<'s> {
    /// Splits `scratch` (at least [`Model::ere_scratch_len`] floats) and returns the
    /// rest of it.
    pub(crate) fn split(
        model: &Model<'_>,
        cfg: &PurifierConfig,
        scratch: &'s mut [f32],
    ) -> Result<(Self, &'s mut [f32]), Error> {
        let needed = model.ere_scratch_len(cfg);
        let found = scratch.len();
        let Some((mine, rest)) = scratch.split_at_mut_checked(needed) else {
            return Err(Error::BufferLength {
                buffer: "scratch",
                expected: needed,
                found,
            });
        };
        let d = model.den.input_len;
        let w = model.den.max_width;
        let (noise, mine) = mine.split_at_mut(cfg.noise_samples as usize * d);
        let (r, mine) = mine.split_at_mut(d);
        let (acts, mine) = mine.split_at_mut(model.den.acts_len);
        let (ping, pong) = mine.split_at_mut(w);
        Ok((
            EreScratch {
                noise,
                r,
                acts,
                ping,
                pong,
            },
            rest,
        ))
    }

    /// Fills the noise block with `σ ε_m` for `m = 0..M`.
    pub(crate) fn fill_noise(&mut self, cfg: &PurifierConfig, d: usize) {
        if d == 0 {
            return;
        }
        for (m, block) in (0u32..).zip(self.noise.chunks_exact_mut(d)) {
            fill_standard_normal(cfg.seed, m, block);
            for v in block.iter_mut() {
                *v *= cfg.sigma;
            }
        }
    }
}

/// `F(x)` and `∇F(x)` into `grad`, with the noise already in `ws`. Shapes are
/// guaranteed by the callers.
pub(crate) fn ere_eval(
    model: &Model<'_>,
    cfg: &PurifierConfig,
    ws: &mut EreScratch<'_>,
    x: &[f32],
    grad: &mut [f32],
) -> f32 {
    let d = model.den.input_len;
    let net = &model.spec.denoiser;
    let info = &model.den;
    let residual = net.residual;
    grad.fill(0.0);
    let mut value = 0.0f32;
    if d == 0 {
        return value;
    }
    for sigma_eps in ws.noise.chunks_exact(d) {
        // y_m = x + σ ε_m into the network input slot.
        for ((a, &xi), &n) in ws.acts.iter_mut().zip(x).zip(sigma_eps) {
            *a = xi + n;
        }
        network::forward(net, info, ws.acts);
        let out = network::output(info, ws.acts);
        // r = D(y) − x.
        for (((r, &o), &y), &xi) in ws.r.iter_mut().zip(out).zip(ws.acts.iter()).zip(x) {
            let dy = if residual { y + o } else { o };
            *r = dy - xi;
        }
        value += sum_sq(ws.r);
        // v = J_netᵀ r.
        if let Some(dst) = ws.ping.get_mut(..d) {
            dst.copy_from_slice(ws.r);
        }
        let in_ping = network::vjp(net, info, ws.acts, ws.ping, ws.pong);
        let v: &[f32] = if in_ping { ws.ping } else { ws.pong };
        if residual {
            for (g, &vi) in grad.iter_mut().zip(v) {
                *g += vi;
            }
        } else {
            for ((g, &vi), &ri) in grad.iter_mut().zip(v).zip(ws.r.iter()) {
                *g += vi - ri;
            }
        }
    }
    let m = cfg.noise_samples as f32;
    let two_over_m = 2.0 / m;
    for g in grad.iter_mut() {
        *g *= two_over_m;
    }
    value * (1.0 / m)
}

impl Model<'_> {
    /// `F(x)` (returned) and `∇F(x)` (written to `grad`) for purifier settings `cfg`
    /// (σ, M and the seed matter here). `scratch` needs
    /// [`Model::ere_scratch_len`] floats; its contents on entry do not matter.
    pub fn ere_value_and_grad(
        &self,
        x: &[f32],
        cfg: &PurifierConfig,
        grad: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<f32, Error> {
        cfg.validate()?;
        let d = self.input_len();
        check_input(x, d, false)?;
        check_len("gradient", grad.len(), d, true)?;
        take_scratch(scratch, self.ere_scratch_len(cfg))?;
        let (mut ws, _) = EreScratch::split(self, cfg, scratch)?;
        ws.fill_noise(cfg, d);
        Ok(ere_eval(self, cfg, &mut ws, x, grad))
    }
}
