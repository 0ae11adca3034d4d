//! [`Model`]: a validated, zero-copy view of a `.psm` file, and the memory each entry
//! point needs.

use crate::error::{Error, FormatError};
use crate::format::{self, ModelSpec, NetInfo};
use crate::purify::PurifierConfig;

/// A validated model whose tensors borrow from the file bytes.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    pub(crate) spec: ModelSpec<'a>,
    pub(crate) den: NetInfo,
    pub(crate) cls: NetInfo,
}

impl<'a> Model<'a> {
    /// Parses and validates a `.psm` file without copying its tensors.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let (version, payload) = format::unframe(bytes)?;
        let mut spec = format::decode(payload)?;
        format::check_version(&spec, version)?;
        // The noise generator is not stored: the format version names it.
        spec.purifier.noise = crate::noise::NoiseGenerator::for_format_version(version);
        Self::from_spec(spec)
    }

    /// Validates an in-memory specification (what the writer accepts).
    pub fn from_spec(spec: ModelSpec<'a>) -> Result<Self, FormatError> {
        let (den, cls) = format::validate(&spec)?;
        Ok(Model { spec, den, cls })
    }

    /// Everything the file holds.
    pub fn spec(&self) -> &ModelSpec<'a> {
        &self.spec
    }

    /// Number of input values (`channels × height × width`).
    pub fn input_len(&self) -> usize {
        self.den.input_len
    }

    /// Number of classes (length of the logits).
    pub fn num_classes(&self) -> usize {
        self.cls.output_len
    }

    /// The default purifier configuration stored in the file.
    pub fn purifier_config(&self) -> PurifierConfig {
        self.spec.purifier
    }

    /// Minimum scratch floats [`Model::ere_value_and_grad`] needs for `cfg`
    /// (noise samples processed one at a time).
    pub fn ere_scratch_len(&self, cfg: &PurifierConfig) -> usize {
        self.ere_scratch_len_batched(cfg, 1)
    }

    /// Scratch floats for evaluating `batch` noise samples at once (clamped to
    /// `1..=M`). Batching reuses each weight for several samples and is faster on
    /// hosts; the result is bit-identical for every batch size. Entry points use the
    /// largest batch the scratch they are given allows.
    pub fn ere_scratch_len_batched(&self, cfg: &PurifierConfig, batch: usize) -> usize {
        let b = batch.clamp(1, (cfg.noise_samples as usize).max(1));
        let d = self.den.input_len;
        let w = self.den.max_width;
        let rowbuf = if b >= 2 {
            crate::layers::row_buffer_len(self.den.max_dense_inputs)
        } else {
            0
        };
        // Saturating: callers may ask before validating an absurd configuration.
        (cfg.noise_samples as usize)
            .saturating_mul(d)
            .saturating_add(b.saturating_mul(d + self.den.acts_len + 2 * w))
            .saturating_add(rowbuf)
    }

    /// Minimum scratch floats [`Model::purify`] needs for `cfg`.
    pub fn purify_scratch_len(&self, cfg: &PurifierConfig) -> usize {
        self.purify_scratch_len_batched(cfg, 1)
    }

    /// Scratch floats for [`Model::purify`] with `batch` noise samples evaluated
    /// together (see [`Model::ere_scratch_len_batched`]); `batch = M` is fastest.
    /// With K = 0 the purifier is the identity and needs none.
    pub fn purify_scratch_len_batched(&self, cfg: &PurifierConfig, batch: usize) -> usize {
        if cfg.iters == 0 {
            return 0;
        }
        self.ere_scratch_len_batched(cfg, batch)
            .saturating_add(2 * self.den.input_len)
    }

    /// The largest noise batch whose ERE scratch plus `extra` fits in `available`
    /// (at least 1; the caller checks the minimum separately).
    pub(crate) fn batch_for(&self, cfg: &PurifierConfig, available: usize, extra: usize) -> usize {
        let mut b = (cfg.noise_samples as usize).max(1);
        while b > 1 && self.ere_scratch_len_batched(cfg, b).saturating_add(extra) > available {
            b -= 1;
        }
        b
    }

    /// Scratch floats [`Model::denoise`] needs.
    pub fn denoise_scratch_len(&self) -> usize {
        self.den.acts_len
    }

    /// Scratch floats [`Model::classify`] needs: two buffers as wide as the widest
    /// classifier layer (classification keeps no activations for a gradient).
    pub fn classify_scratch_len(&self) -> usize {
        2 * self.cls.max_width
    }

    /// Scratch floats that suffice for every entry point with the file's default
    /// purifier configuration (the minimum: noise samples one at a time).
    pub fn scratch_len(&self) -> usize {
        let cfg = self.spec.purifier;
        self.purify_scratch_len(&cfg)
            .max(self.classify_scratch_len())
            .max(self.denoise_scratch_len())
    }

    /// Like [`Model::scratch_len`], but enough for the fastest path (all M noise
    /// samples at once). Same results, more memory.
    pub fn scratch_len_fast(&self) -> usize {
        let cfg = self.spec.purifier;
        let m = cfg.noise_samples as usize;
        self.purify_scratch_len_batched(&cfg, m)
            .max(self.classify_scratch_len())
            .max(self.denoise_scratch_len())
    }

    /// Multiply–accumulates of one denoiser forward pass.
    pub fn denoiser_macs(&self) -> u64 {
        self.den.macs
    }

    /// Multiply–accumulates of one classifier forward pass.
    pub fn classifier_macs(&self) -> u64 {
        self.cls.macs
    }

    /// Nominal multiply–accumulates of one purification with `cfg`: every ∇F costs M
    /// denoiser forward passes and M VJPs of the same size; a SAM step (ρ > 0) needs
    /// two gradients, plain descent (ρ = 0) one. (The VJP skips rows whose
    /// coefficient is zero, so the executed count is somewhat lower.)
    pub fn purify_macs(&self, cfg: &PurifierConfig) -> u64 {
        let grads_per_step = if cfg.rho > 0.0 { 2 } else { 1 };
        u64::from(cfg.iters)
            .saturating_mul(grads_per_step * 2)
            .saturating_mul(u64::from(cfg.noise_samples))
            .saturating_mul(self.den.macs)
    }

    /// Classifies `input`: writes the logits (length [`Model::num_classes`]) and
    /// returns the arg-max (the first index on ties).
    pub fn classify(
        &self,
        input: &[f32],
        logits: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<usize, Error> {
        self.classify_with(&crate::backend::Portable, input, logits, scratch)
    }

    /// [`Model::classify`] with other dense kernels (see [`crate::DenseKernels`]);
    /// the same bits when they keep their contract.
    pub fn classify_with<K: crate::DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        input: &[f32],
        logits: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<usize, Error> {
        check_input(input, self.input_len(), false)?;
        check_len("logits", logits.len(), self.num_classes(), true)?;
        let w = self.cls.max_width;
        let (a, b) = take_scratch(scratch, 2 * w)?.split_at_mut(w);
        let (head, _) = a.split_at_mut(self.cls.input_len);
        head.copy_from_slice(input);
        let out = crate::network::forward_pingpong(kernels, &self.spec.classifier, &self.cls, a, b);
        if out.len() != logits.len() {
            // Unreachable for a validated model (its output length is the class count).
            return Err(Error::BufferLength {
                buffer: "logits",
                expected: out.len(),
                found: logits.len(),
            });
        }
        logits.copy_from_slice(out);
        Ok(argmax(logits))
    }

    /// One-shot denoising `D(y)` (an ablation baseline, and a sanity check).
    pub fn denoise(
        &self,
        input: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        check_input(input, self.input_len(), false)?;
        check_len("output", out.len(), self.input_len(), true)?;
        let acts = take_scratch(scratch, self.den.acts_len)?;
        let (head, _) = acts.split_at_mut(self.den.input_len);
        head.copy_from_slice(input);
        crate::network::forward(
            &crate::backend::Portable,
            &self.spec.denoiser,
            &self.den,
            acts,
            1,
            &mut [],
        );
        let net = crate::network::output(&self.den, acts, 1);
        for ((o, &n), &y) in out.iter_mut().zip(net).zip(input) {
            *o = if self.spec.denoiser.residual {
                y + n
            } else {
                n
            };
        }
        Ok(())
    }
}

/// Index of the largest value; the first one on ties; NaN never wins.
pub(crate) fn argmax(v: &[f32]) -> usize {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best
}

/// Length check; `exact = false` accepts longer buffers (scratch).
pub(crate) fn check_len(
    buffer: &'static str,
    found: usize,
    expected: usize,
    exact: bool,
) -> Result<(), Error> {
    if found == expected || (!exact && found > expected) {
        Ok(())
    } else {
        Err(Error::BufferLength {
            buffer,
            expected,
            found,
        })
    }
}

/// The first `n` floats of the scratch buffer, or a length error.
pub(crate) fn take_scratch(scratch: &mut [f32], n: usize) -> Result<&mut [f32], Error> {
    let found = scratch.len();
    scratch.get_mut(..n).ok_or(Error::BufferLength {
        buffer: "scratch",
        expected: n,
        found,
    })
}

/// Input length, finiteness and (for purification) range `[0, 1]`.
pub(crate) fn check_input(input: &[f32], expected: usize, unit_range: bool) -> Result<(), Error> {
    if input.len() != expected {
        return Err(Error::InputLength {
            expected,
            found: input.len(),
        });
    }
    for (index, &v) in input.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::NonFiniteInput { index });
        }
        if unit_range && !(0.0..=1.0).contains(&v) {
            return Err(Error::InputOutOfRange { index });
        }
    }
    Ok(())
}
