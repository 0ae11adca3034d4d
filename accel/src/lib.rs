//! # pursamere-accel
//!
//! Host-side dense kernels for [`pursamere_core`], chosen at run time from the CPU's
//! features: the core is `no_std` with no `unsafe` and no feature detection, so it
//! always runs its portable kernels (SSE2 on a default x86-64 build); this crate
//! plugs SIMD versions of the same kernels into [`Model::purify_with`] and
//! [`Model::ere_value_and_grad_with`] through [`DenseKernels`].
//!
//! **Same bits, by construction.** The SIMD kernels perform exactly the core's
//! operations in exactly its order (sixteen interleaved partial sums combined by the
//! fixed tree for dot products; rows in increasing order for the transposed
//! product; a separate multiply and add everywhere, never a fused multiply–add), so
//! every level gives the bits of [`Portable`], of every other build and of the
//! Cortex-M4F firmware. The tests check this against the portable kernels on random
//! shapes and through whole purifications, and the golden vectors pin it.
//!
//! ```
//! use pursamere_accel::{Accel, AlignedF32};
//! use pursamere_core::Model;
//!
//! let bytes = std::fs::read("../fixtures/mnist.psm").or_else(|_| std::fs::read("fixtures/mnist.psm")).unwrap();
//! let model = Model::parse(&bytes).unwrap();
//! let mut cfg = model.purifier_config();
//! cfg.iters = 2;
//! // The fastest level this CPU has, with the denoiser's weights widened once.
//! let kernels = Accel::detect().prepare(&model);
//! let mut scratch = AlignedF32::zeroed(model.scratch_len_fast());
//! let x = vec![0.5f32; model.input_len()];
//! let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
//! model.purify_with(&kernels, &x, &cfg, &mut a, scratch.as_mut_slice()).unwrap();
//! model.purify(&x, &cfg, &mut b, scratch.as_mut_slice()).unwrap(); // the core's own kernels
//! assert_eq!(a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), b.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
//! ```
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use pursamere_core::{Dense, DenseKernels, Layer, Model, Portable};

#[cfg(target_arch = "x86_64")]
mod x86;

/// A SIMD level of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The core's own portable kernels.
    Portable,
    /// x86-64 AVX-512F with AVX-512VL (512-bit registers: one register holds the
    /// sixteen partial sums of a dot product).
    Avx512,
}

impl Level {
    /// Every level, slowest first.
    pub const ALL: [Level; 2] = [Level::Portable, Level::Avx512];

    /// Lowercase name (`portable`, `avx512`), as `PURSAMERE_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx512 => false,
        }
    }
}

/// Dense kernels at a SIMD level this CPU supports (the only way to build one is
/// through a check). Pass it to [`Model::purify_with`] or
/// [`Model::ere_value_and_grad_with`].
///
/// [`Model::purify_with`]: pursamere_core::Model::purify_with
/// [`Model::ere_value_and_grad_with`]: pursamere_core::Model::ere_value_and_grad_with
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accel {
    level: Level,
}

impl Accel {
    /// The fastest level this CPU supports, capped by the environment variable
    /// `PURSAMERE_SIMD` (`portable` or `avx512`) when it is set to a known name.
    pub fn detect() -> Self {
        let cap = std::env::var("PURSAMERE_SIMD")
            .ok()
            .and_then(|v| Level::ALL.into_iter().find(|l| l.name() == v.trim()));
        let level = Level::ALL
            .into_iter()
            .rev()
            .find(|l| cap.is_none_or(|c| *l <= c) && l.available())
            .unwrap_or(Level::Portable);
        Accel { level }
    }

    /// The core's portable kernels.
    pub fn portable() -> Self {
        Accel {
            level: Level::Portable,
        }
    }

    /// `level`, when this CPU supports it.
    pub fn with_level(level: Level) -> Option<Self> {
        level.available().then_some(Accel { level })
    }

    /// The level in use.
    pub fn level(&self) -> Level {
        self.level
    }
}

impl Default for Accel {
    fn default() -> Self {
        Self::detect()
    }
}

/// The shapes the SIMD kernels rely on (checked once per call; anything else goes
/// to the portable kernels, which handle it without panicking).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn shapes_ok(layer: &Dense<'_>, xs: usize, ys: usize, batch: usize) -> bool {
    let (n, m) = (layer.inputs as usize, layer.outputs as usize);
    n > 0
        && m > 0
        && n.checked_mul(m).is_some_and(|nm| layer.weights.len() >= nm)
        && layer.scales.len() / 4 >= m
        && layer.bias.len() / 4 >= m
        && batch.checked_mul(n).is_some_and(|v| xs >= v)
        && batch.checked_mul(m).is_some_and(|v| ys >= v)
}

impl DenseKernels for Accel {
    fn dense_forward_batch(
        &self,
        layer: &Dense<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.level == Level::Avx512 && shapes_ok(layer, xs.len(), ys.len(), batch) {
            // SAFETY: `Accel` holds `Avx512` only after `is_x86_feature_detected!`
            // said yes; the lengths the kernel reads and writes were checked above.
            unsafe { x86::avx512::forward(layer, layer.weights, xs, ys, batch) };
            return;
        }
        Portable.dense_forward_batch(layer, xs, ys, batch, rowbuf);
    }

    fn dense_vjp_batch(
        &self,
        layer: &Dense<'_>,
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.level == Level::Avx512 && shapes_ok(layer, gxs.len(), gys.len(), batch) {
            // SAFETY: as in `dense_forward_batch` (inputs ↔ gxs, outputs ↔ gys).
            unsafe { x86::avx512::vjp(layer, layer.weights, gys, gxs, batch) };
            return;
        }
        Portable.dense_vjp_batch(layer, gys, gxs, batch, rowbuf);
    }
}

/// [`Accel`] with a model's dense weights widened to f32 once, up front: the
/// kernels then read f32 weights instead of converting int8 on every use (faster
/// on x86-64, four times the memory of the weights). The arithmetic is the same, so
/// are the bits. Borrows the weights it widened, so they cannot change under it;
/// a layer it does not know (another model's) runs from its int8 bytes.
#[derive(Debug, Clone)]
pub struct Prepared<'a> {
    accel: Accel,
    layers: Vec<(&'a [u8], AlignedF32)>,
}

/// Sixteen f32 on a 64-byte boundary (one cache line, one AVX-512 register).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A buffer of f32 that starts on a cache line (64 bytes), so that the vector loads
/// of rows whose length is a multiple of 16 never straddle two lines. Give
/// [`AlignedF32::as_mut_slice`] as the scratch of
/// [`Model::purify_with`](pursamere_core::Model::purify_with) (a few per cent
/// faster than a plain `Vec<f32>`, which is only 16-byte aligned; same bits).
#[derive(Debug, Clone)]
pub struct AlignedF32 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedF32 {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        AlignedF32 {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// Int8 weight bytes as f32 (exact).
    fn from_int8(bytes: &[u8]) -> Self {
        let mut out = Self::zeroed(bytes.len());
        for (v, &b) in out.as_mut_slice().iter_mut().zip(bytes) {
            *v = f32::from(b as i8);
        }
        out
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        let len = self.len.min(16 * self.lines.len());
        // SAFETY: `Line` is `repr(C)` around `[f32; 16]` and exactly 64 bytes (no
        // padding), so `lines` is `16 × lines.len()` initialised, contiguous f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), len) }
    }

    /// The values, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.len.min(16 * self.lines.len());
        // SAFETY: as in `as_slice`, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), len) }
    }
}

impl Accel {
    /// Widens the dense weights of `model`'s denoiser and classifier (the layers a
    /// purification and a classification run through these kernels) for the SIMD
    /// level in use; at the portable level
    /// nothing is widened (the core's kernels read int8).
    pub fn prepare<'a>(self, model: &Model<'a>) -> Prepared<'a> {
        let spec = model.spec();
        let weights: Vec<&'a [u8]> = spec
            .denoiser
            .layers
            .iter()
            .chain(&spec.classifier.layers)
            .filter_map(|l| match l {
                Layer::Dense(d) => Some(d.weights),
                _ => None,
            })
            .collect();
        self.prepare_weights(&weights)
    }

    /// Like [`Accel::prepare`] for any dense layers, given their weight bytes
    /// ([`Dense::weights`]).
    pub fn prepare_weights<'a>(self, weights: &[&'a [u8]]) -> Prepared<'a> {
        let layers = if self.level == Level::Portable {
            Vec::new()
        } else {
            weights
                .iter()
                .map(|w| (*w, AlignedF32::from_int8(w)))
                .collect()
        };
        Prepared {
            accel: self,
            layers,
        }
    }
}

impl Prepared<'_> {
    /// The SIMD level in use.
    pub fn level(&self) -> Level {
        self.accel.level
    }

    /// The widened weights of `layer`, when this is one of the prepared layers.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn widened(&self, layer: &Dense<'_>) -> Option<&[f32]> {
        self.layers
            .iter()
            .find(|(w, _)| core::ptr::eq(*w, layer.weights))
            .map(|(_, f)| f.as_slice())
    }
}

impl DenseKernels for Prepared<'_> {
    fn dense_forward_batch(
        &self,
        layer: &Dense<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.accel.level == Level::Avx512 && shapes_ok(layer, xs.len(), ys.len(), batch) {
            if let Some(w) = self.widened(layer) {
                // SAFETY: as in `Accel`; `w` is `layer.weights` widened, same length.
                unsafe { x86::avx512::forward(layer, w, xs, ys, batch) };
                return;
            }
        }
        self.accel.dense_forward_batch(layer, xs, ys, batch, rowbuf);
    }

    fn dense_vjp_batch(
        &self,
        layer: &Dense<'_>,
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if self.accel.level == Level::Avx512 && shapes_ok(layer, gxs.len(), gys.len(), batch) {
            if let Some(w) = self.widened(layer) {
                // SAFETY: as in `Accel`; `w` is `layer.weights` widened, same length.
                unsafe { x86::avx512::vjp(layer, w, gys, gxs, batch) };
                return;
            }
        }
        self.accel.dense_vjp_batch(layer, gys, gxs, batch, rowbuf);
    }
}
