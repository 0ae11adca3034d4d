//! Deterministic purification: K sharpness-aware steps on the ERE, projected onto
//! the L∞ or L2 ball of radius δ around the input, and onto `[0, 1]^d`.
//!
//! Each step, in this order (all f32):
//! 1. if ρ > 0: `g = ∇F(x)`, `n = sqrt(Σ g²)` (fixed lane order, `libm::sqrtf`);
//!    if `n > 0` and finite, `x̃[i] = x[i] + g[i] · (ρ / n)`, else `x̃ = x`
//!    (a flat point skips the SAM perturbation). If ρ = 0, `x̃ = x` and `∇F(x)` is
//!    computed once (plain projected descent).
//! 2. `h = ∇F(x̃)`.
//! 3. gradient rule: `x[i] ← x[i] − η · h[i]`; sign rule: `x[i] ← x[i] − η · sign(h[i])`
//!    with `sign(0) = 0`.
//! 4. projection, L∞: `lo = max(x0[i] − δ, 0)`, `hi = min(x0[i] + δ, 1)`;
//!    `x[i] ← lo` if `x[i]` is NaN or `x[i] < lo`, else `hi` if
//!    `x[i] > hi`, else unchanged.
//!    L2: `r[i] = x[i] − x0[i]` (0 where `x[i]` is NaN), `n = sqrt(Σ r²)` (fixed
//!    lane order, `libm::sqrtf`); if `n > δ`, `r[i] ← r[i] · (δ / n)`; then
//!    `x[i] ← x0[i] + r[i]` clipped to `[0, 1]`. (Radial scaling then clipping: a
//!    deterministic map into the ball ∩ box, not the Euclidean projection onto
//!    their intersection, which has no closed form; clipping towards `x0 ∈ [0, 1]`
//!    never leaves the ball.)

use serde::{Deserialize, Serialize};

use crate::backend::{DenseKernels, Portable};
use crate::ere::{ere_eval, fill_noise, EreScratch, NoiseTable};
use crate::error::{ConfigError, Error};
use crate::kernels::sum_sq;
use crate::model::{check_input, check_len, Model};
use crate::noise::NoiseGenerator;

/// Most purification steps a configuration may ask for.
pub const MAX_ITERS: u32 = 10_000;
/// Most noise vectors a configuration may ask for.
pub const MAX_NOISE_SAMPLES: u32 = 1_024;

/// The norm of the purification ball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Norm {
    /// `||x − x0||_∞ ≤ δ`.
    Linf,
    /// `||x − x0||_2 ≤ δ` (format version 2).
    L2,
}

/// How a step uses the gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepRule {
    /// `x ← x − η ∇F(x̃)`.
    Gradient,
    /// `x ← x − η sign(∇F(x̃))`.
    Sign,
}

/// Every knob of the purifier. The file stores a default; calls may override it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PurifierConfig {
    /// Noise level σ of the ERE (> 0).
    pub sigma: f32,
    /// Number M of fixed noise vectors (1 ..= [`MAX_NOISE_SAMPLES`]).
    pub noise_samples: u32,
    /// Number K of SAM steps (0 ..= [`MAX_ITERS`]).
    pub iters: u32,
    /// Step size η (> 0).
    pub eta: f32,
    /// SAM radius ρ (≥ 0; 0 gives plain projected descent).
    pub rho: f32,
    /// Purification radius δ (≥ 0).
    pub radius: f32,
    /// Ball norm.
    pub norm: Norm,
    /// Step rule.
    pub step: StepRule,
    /// Seed of the noise vectors.
    pub seed: u64,
    /// The noise generator (not stored in the file: its format version names it,
    /// and the reader sets it; see [`NoiseGenerator`]).
    #[serde(skip)]
    pub noise: NoiseGenerator,
}

impl PurifierConfig {
    /// Checks every range; the first violation is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.sigma.is_finite() && self.sigma > 0.0) {
            return Err(ConfigError::Sigma(self.sigma));
        }
        if self.noise_samples == 0 || self.noise_samples > MAX_NOISE_SAMPLES {
            return Err(ConfigError::NoiseSamples(self.noise_samples));
        }
        if self.iters > MAX_ITERS {
            return Err(ConfigError::Iterations(self.iters));
        }
        if !(self.eta.is_finite() && self.eta > 0.0) {
            return Err(ConfigError::StepSize(self.eta));
        }
        if !(self.rho.is_finite() && self.rho >= 0.0) {
            return Err(ConfigError::Rho(self.rho));
        }
        if !(self.radius.is_finite() && self.radius >= 0.0) {
            return Err(ConfigError::Radius(self.radius));
        }
        Ok(())
    }
}

impl Model<'_> {
    /// Purifies `input` (values in `[0, 1]`, length [`Model::input_len`]) into `out`
    /// with configuration `cfg` (usually [`Model::purifier_config`], possibly
    /// overridden). `scratch` needs [`Model::purify_scratch_len`] floats; up to
    /// [`Model::purify_scratch_len_batched`] with `batch = M` it is used to evaluate
    /// several noise samples at once, which is faster and gives the same bits. Its
    /// contents on entry do not matter. Deterministic: the same model, input and `cfg` give the
    /// same bits on every target.
    pub fn purify(
        &self,
        input: &[f32],
        cfg: &PurifierConfig,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        self.purify_with(&Portable, input, cfg, out, scratch)
    }

    /// [`Model::purify`] with other dense kernels (see [`crate::DenseKernels`]),
    /// e.g. SIMD chosen at run time by a host-side crate; the same bits when they
    /// keep their contract.
    pub fn purify_with<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        input: &[f32],
        cfg: &PurifierConfig,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        self.purify_impl(kernels, input, cfg, None, out, scratch)
    }

    /// [`Model::purify_with`] with the noise generated beforehand
    /// ([`Model::noise_table`]) instead of inside the call: the same bits, without
    /// the generator's cost per image. `Error::NoiseTableMismatch` if the table was
    /// made for other noise settings. `scratch` as for [`Model::purify`].
    pub fn purify_with_noise<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        input: &[f32],
        cfg: &PurifierConfig,
        noise: &NoiseTable<'_>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        self.purify_impl(kernels, input, cfg, Some(noise), out, scratch)
    }

    fn purify_impl<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        input: &[f32],
        cfg: &PurifierConfig,
        table: Option<&NoiseTable<'_>>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        cfg.validate()?;
        let given = table.map(|t| t.for_config(self, cfg)).transpose()?;
        let d = self.input_len();
        check_input(input, d, true)?;
        check_len("output", out.len(), d, true)?;
        if cfg.iters == 0 {
            // No step: the identity, with no noise and no scratch.
            out.copy_from_slice(input);
            return Ok(());
        }
        let found = scratch.len();
        let needed = self.purify_scratch_len(cfg);
        if found < needed {
            return Err(Error::BufferLength {
                buffer: "scratch",
                expected: needed,
                found,
            });
        }
        let batch = self.batch_for(cfg, found, 2 * d);
        let (noise_buf, mut ws, rest) = EreScratch::split(self, cfg, batch, scratch)?;
        let too_small = Error::BufferLength {
            buffer: "scratch",
            expected: needed,
            found,
        };
        let (x_tilde, rest) = rest.split_at_mut_checked(d).ok_or(too_small)?;
        let (g, _) = rest.split_at_mut_checked(d).ok_or(too_small)?;
        out.copy_from_slice(input);
        let noise: &[f32] = match given {
            Some(values) => values,
            None => {
                fill_noise(cfg, d, noise_buf);
                noise_buf
            }
        };
        for _ in 0..cfg.iters {
            // After this, `g` holds h = ∇F(x̃).
            if cfg.rho > 0.0 {
                ere_eval(kernels, self, cfg, &mut ws, noise, out, g);
                let n = libm::sqrtf(sum_sq(g));
                if n > 0.0 && n.is_finite() {
                    let s = cfg.rho / n;
                    for ((t, &xi), &gi) in x_tilde.iter_mut().zip(out.iter()).zip(g.iter()) {
                        *t = xi + gi * s;
                    }
                    ere_eval(kernels, self, cfg, &mut ws, noise, x_tilde, g);
                }
                // else: flat point, x̃ = x and g = ∇F(x) already.
            } else {
                ere_eval(kernels, self, cfg, &mut ws, noise, out, g);
            }
            step_and_project(cfg, input, out, g);
        }
        Ok(())
    }
}

/// Steps 3 and 4 of the module documentation; `h` is overwritten (it is the L2
/// projection's workspace).
fn step_and_project(cfg: &PurifierConfig, x0: &[f32], x: &mut [f32], h: &mut [f32]) {
    if cfg.norm == Norm::L2 {
        step_and_project_l2(cfg, x0, x, h);
        return;
    }
    let eta = cfg.eta;
    let delta = cfg.radius;
    for ((xi, &hi), &x0i) in x.iter_mut().zip(h.iter()).zip(x0) {
        let moved = step_value(cfg.step, eta, *xi, hi);
        let lo = {
            let v = x0i - delta;
            if v > 0.0 {
                v
            } else {
                0.0
            }
        };
        let hi_b = {
            let v = x0i + delta;
            if v < 1.0 {
                v
            } else {
                1.0
            }
        };
        *xi = if moved.is_nan() || moved < lo {
            lo
        } else if moved > hi_b {
            hi_b
        } else {
            moved
        };
    }
}

/// The step of step 3, `x − η h` or `x − η sign(h)`.
fn step_value(step: StepRule, eta: f32, x: f32, h: f32) -> f32 {
    match step {
        StepRule::Gradient => x - eta * h,
        StepRule::Sign => {
            let s = if h > 0.0 {
                1.0
            } else if h < 0.0 {
                -1.0
            } else {
                0.0
            };
            x - eta * s
        }
    }
}

/// Steps 3 and 4 with the L2 ball: `h` becomes `r = x − x0` after the step.
fn step_and_project_l2(cfg: &PurifierConfig, x0: &[f32], x: &mut [f32], h: &mut [f32]) {
    for ((hi, &xi), &x0i) in h.iter_mut().zip(x.iter()).zip(x0) {
        let moved = step_value(cfg.step, cfg.eta, xi, *hi);
        *hi = if moved.is_nan() { 0.0 } else { moved - x0i };
    }
    let n = libm::sqrtf(sum_sq(h));
    let scale = if n > cfg.radius { cfg.radius / n } else { 1.0 };
    for ((xi, &ri), &x0i) in x.iter_mut().zip(h.iter()).zip(x0) {
        *xi = (x0i + ri * scale).clamp(0.0, 1.0);
    }
}
