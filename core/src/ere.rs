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

use crate::backend::{DenseKernels, Portable};
use crate::error::Error;
use crate::kernels::sum_sq;
use crate::model::{check_input, check_len, take_scratch, Model};
use crate::network;
use crate::purify::PurifierConfig;

/// Scratch of one ERE evaluation, carved from the caller's buffer (the noise block
/// is handed out beside it: [`EreScratch::split`]).
pub(crate) struct EreScratch<'s> {
    /// Noise samples evaluated together.
    batch: usize,
    /// `batch × d`: the residuals `r_m`.
    r: &'s mut [f32],
    acts: &'s mut [f32],
    ping: &'s mut [f32],
    pong: &'s mut [f32],
    rowbuf: &'s mut [f32],
}

impl<'s> EreScratch<'s> {
    /// Splits `scratch` for a noise batch of `batch` (its length must be at least
    /// [`Model::ere_scratch_len_batched`]): the `M × d` noise block, the evaluation's
    /// buffers and the rest of `scratch`.
    pub(crate) fn split(
        model: &Model<'_>,
        cfg: &PurifierConfig,
        batch: usize,
        scratch: &'s mut [f32],
    ) -> Result<(&'s mut [f32], Self, &'s mut [f32]), Error> {
        let needed = model.ere_scratch_len_batched(cfg, batch);
        let found = scratch.len();
        let Some((mine, rest)) = scratch.split_at_mut_checked(needed) else {
            return Err(Error::BufferLength {
                buffer: "scratch",
                expected: needed,
                found,
            });
        };
        let b = batch.clamp(1, (cfg.noise_samples as usize).max(1));
        let d = model.den.input_len;
        let w = model.den.max_width;
        let (noise, mine) = mine.split_at_mut(cfg.noise_samples as usize * d);
        let (r, mine) = mine.split_at_mut(b * d);
        let (acts, mine) = mine.split_at_mut(b * model.den.acts_len);
        let (ping, mine) = mine.split_at_mut(b * w);
        let (pong, rowbuf) = mine.split_at_mut(b * w);
        Ok((
            noise,
            EreScratch {
                batch: b,
                r,
                acts,
                ping,
                pong,
                rowbuf,
            },
            rest,
        ))
    }
}

/// The noise of a purifier configuration, `σ ε_m` for `m = 0..M` (`M × d` floats),
/// generated once and reused by every purification with the same settings — it
/// depends on the seed, σ, M, the generator and the input length, never on the
/// image. Made by [`Model::noise_table`] into a buffer the caller owns, which it
/// borrows immutably, so the values cannot change under it; used by
/// [`Model::purify_with_noise`], which refuses a table made for other settings.
/// The same bits as generating the noise inside every call (on the host this saves
/// the generator's time per image; on a device, RAM is usually worth more).
#[derive(Debug, Clone, Copy)]
pub struct NoiseTable<'n> {
    noise: &'n [f32],
    key: NoiseKey,
}

/// What a [`NoiseTable`]'s values depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NoiseKey {
    seed: u64,
    sigma_bits: u32,
    samples: u32,
    generator: crate::noise::NoiseGenerator,
    input_len: usize,
}

impl NoiseKey {
    fn of(model: &Model<'_>, cfg: &PurifierConfig) -> Self {
        NoiseKey {
            seed: cfg.seed,
            sigma_bits: cfg.sigma.to_bits(),
            samples: cfg.noise_samples,
            generator: cfg.noise,
            input_len: model.den.input_len,
        }
    }
}

impl<'n> NoiseTable<'n> {
    /// The values, `M × d` (`σ ε_m` for sample `m` at `m·d..(m+1)·d`).
    pub fn values(&self) -> &'n [f32] {
        self.noise
    }

    /// The table's values if it was made for `model` with `cfg`'s noise settings.
    pub(crate) fn for_config(
        &self,
        model: &Model<'_>,
        cfg: &PurifierConfig,
    ) -> Result<&'n [f32], Error> {
        if self.key == NoiseKey::of(model, cfg) {
            Ok(self.noise)
        } else {
            Err(Error::NoiseTableMismatch)
        }
    }
}

impl Model<'_> {
    /// Floats a [`NoiseTable`] for `cfg` needs: `M × d`.
    pub fn noise_table_len(&self, cfg: &PurifierConfig) -> usize {
        (cfg.noise_samples as usize).saturating_mul(self.den.input_len)
    }

    /// Generates the noise of `cfg` (its seed, σ, M and generator) into the start of
    /// `buf` (at least [`Model::noise_table_len`] floats) and returns it as a table
    /// for [`Model::purify_with_noise`].
    pub fn noise_table<'n>(
        &self,
        cfg: &PurifierConfig,
        buf: &'n mut [f32],
    ) -> Result<NoiseTable<'n>, Error> {
        cfg.validate()?;
        let len = self.noise_table_len(cfg);
        let found = buf.len();
        let Some(noise) = buf.get_mut(..len) else {
            return Err(Error::BufferLength {
                buffer: "noise table",
                expected: len,
                found,
            });
        };
        fill_noise(cfg, self.den.input_len, noise);
        Ok(NoiseTable {
            noise,
            key: NoiseKey::of(self, cfg),
        })
    }
}

/// Fills `noise` (`M × d`) with `σ ε_m` for `m = 0..M`.
pub(crate) fn fill_noise(cfg: &PurifierConfig, d: usize, noise: &mut [f32]) {
    if d == 0 {
        return;
    }
    for (m, block) in (0u32..).zip(noise.chunks_exact_mut(d)) {
        cfg.noise.fill(cfg.seed, m, block);
        for v in block.iter_mut() {
            *v *= cfg.sigma;
        }
    }
}

/// `F(x)` and `∇F(x)` into `grad`, for the noise `σ ε_m` in `noise` (`M × d`).
/// Shapes are guaranteed by the callers.
pub(crate) fn ere_eval<K: DenseKernels + ?Sized>(
    kernels: &K,
    model: &Model<'_>,
    cfg: &PurifierConfig,
    ws: &mut EreScratch<'_>,
    noise: &[f32],
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
    // Noise samples in chunks of `batch`; within and across chunks everything is
    // summed in increasing m, so the batch size never changes the bits.
    for noise_chunk in noise.chunks(ws.batch * d) {
        let nb = noise_chunk.len() / d;
        // y_m = x + σ ε_m into the network input slots.
        for (a, sigma_eps) in ws.acts.chunks_exact_mut(d).zip(noise_chunk.chunks_exact(d)) {
            for ((ai, &xi), &n) in a.iter_mut().zip(x).zip(sigma_eps) {
                *ai = xi + n;
            }
        }
        network::forward(kernels, net, info, ws.acts, nb, ws.rowbuf);
        let outs = network::output(info, ws.acts, nb);
        // r = D(y) − x, written where the VJP reads its seed (`ping`); a plain
        // network also keeps it in `r` for the `− r` term of its gradient.
        let seeds = ws.ping.chunks_exact_mut(d);
        for ((r, out), y) in seeds
            .zip(outs.chunks_exact(d))
            .zip(ws.acts.chunks_exact(d))
            .take(nb)
        {
            for (((ri, &o), &yi), &xi) in r.iter_mut().zip(out).zip(y).zip(x) {
                let dy = if residual { yi + o } else { o };
                *ri = dy - xi;
            }
            value += sum_sq(r);
        }
        if !residual {
            if let (Some(dst), Some(src)) = (ws.r.get_mut(..nb * d), ws.ping.get(..nb * d)) {
                dst.copy_from_slice(src);
            }
        }
        // v = J_netᵀ r for every sample of the chunk.
        let in_ping = network::vjp(kernels, net, info, ws.acts, ws.ping, ws.pong, nb, ws.rowbuf);
        let vs: &[f32] = if in_ping { ws.ping } else { ws.pong };
        for (v, r) in vs.chunks_exact(d).zip(ws.r.chunks_exact(d)).take(nb) {
            if residual {
                for (g, &vi) in grad.iter_mut().zip(v) {
                    *g += vi;
                }
            } else {
                for ((g, &vi), &ri) in grad.iter_mut().zip(v).zip(r) {
                    *g += vi - ri;
                }
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
    /// [`Model::ere_scratch_len`] floats (more, up to
    /// [`Model::ere_scratch_len_batched`] with `batch = M`, is faster and gives the
    /// same bits); its contents on entry do not matter.
    pub fn ere_value_and_grad(
        &self,
        x: &[f32],
        cfg: &PurifierConfig,
        grad: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<f32, Error> {
        self.ere_value_and_grad_with(&Portable, x, cfg, grad, scratch)
    }

    /// [`Model::ere_value_and_grad`] with other dense kernels (see
    /// [`crate::DenseKernels`]); the same bits when they keep their contract.
    pub fn ere_value_and_grad_with<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
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
        let batch = self.batch_for(cfg, scratch.len(), 0);
        let (noise, mut ws, _) = EreScratch::split(self, cfg, batch, scratch)?;
        fill_noise(cfg, d, noise);
        Ok(ere_eval(kernels, self, cfg, &mut ws, noise, x, grad))
    }
}
