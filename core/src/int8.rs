//! Layers with int8 activations (format version 4): the integer path for a
//! classifier on a microcontroller.
//!
//! A float layer multiplies int8 weights by f32 activations; on a Cortex-M4 every
//! multiply–accumulate then costs an int8 → f32 conversion and an FPU multiply and
//! add (5–6 cycles at best). An int8-activation layer quantises its *input* to int8
//! and accumulates exact integer products in `i32`, which the M4's DSP instructions
//! do two at a time. Because integer sums are exact, every summation order gives the
//! same result: any kernel, on any target, is bit-identical by construction.
//!
//! The numeric definition, for a layer with input multiplier `m` (stored in the file,
//! the reciprocal of the input's quantisation step) and the stored per-row `scale`
//! and `bias` of the wrapped [`Dense`] or [`Conv2d`]:
//!
//! * input: `q = quantize_activation(x, m)`: `t = x · m + 127.5` (two IEEE
//!   binary32 operations), converted to an integer the way Rust's `as i32` does
//!   (toward zero, saturating, NaN → 0), clamped to `[0, 254]`, minus 127: round
//!   half up of `x · m` clamped to `[−127, 127]`; NaN gives −127. (Four
//!   instructions on a Cortex-M4: `VMUL`, `VADD`, `VCVT`, which saturates, and a
//!   clamp);
//! * `acc[o] = Σ w[o][i] · q[i]` in `i32` (exact: validation bounds the fan-in by
//!   [`MAX_FAN_IN`], so no sum can overflow); zero padding of a convolution is `q = 0`;
//! * output: `y[o] = (acc[o] as f32) · scale[o] + bias[o]` (round to nearest, then a
//!   separate multiply and add).
//!
//! So `scale[o]` is the product of the row's weight scale and the input step `1/m`:
//! the converter folds it in. The layer's output is f32 again, so it feeds ReLU, the
//! next layer, or the logits like any other.
//!
//! These layers belong to a classifier only: a denoiser must be differentiable
//! exactly (the purifier descends its gradient), and rounding has no useful
//! derivative. Their [`Layer::vjp`](crate::Layer::vjp) is the straight-through
//! estimator — the VJP of the float layer `y = scale ⊙ (W · m x) + bias`, as if the
//! rounding were the identity — which is what an attacker differentiates instead of
//! the zero-almost-everywhere true gradient.

use serde::{Deserialize, Serialize};

use crate::conv::{conv_out, Conv2d, MAX_KERNEL};
use crate::layers::Dense;

/// Largest fan-in (inputs per output) of an int8-activation layer:
/// `127 · 127 · MAX_FAN_IN < 2³¹`, so no accumulator can overflow.
pub const MAX_FAN_IN: u32 = (i32::MAX as u32) / (127 * 127);

/// The quantised activation `q(x) ∈ [−127, 127]` (see the module documentation).
#[inline]
pub fn quantize_activation(x: f32, multiplier: f32) -> i32 {
    // `as` truncates toward zero, saturates, and maps NaN to 0 on every target; the
    // clamp after it equals clamping `x · m` to [−127, 127] first. Written as
    // `clamp(max(t, 0) − 127, −128, 127)`, the same function as
    // `clamp(t, 0, 254) − 127` (for t ≥ 0 the value is at least −127), because the
    // Cortex-M4 does that in two instructions (BIC, SSAT) after the subtraction.
    let t = (x * multiplier + 127.5) as i32;
    (t.max(0) - 127).clamp(-128, 127)
}

/// `quantize_activation(relu(x), m)` for `m > 0` (every validated model's
/// multiplier), computed without the ReLU: ReLU maps every `x ≤ 0` and NaN to 0,
/// which quantises to 0, and quantisation is monotone in `x` with `q(0) = 0`, so the
/// value is `max(q(x), 0)` — here `clamp(max(t, 0) − 127, 0, 127)`, one saturation
/// (`USAT`) on a Cortex-M4 in place of `SSAT`. A classification fuses each ReLU that
/// feeds an int8 layer into this quantisation (`network::forward_pingpong`): the
/// same bits without the ReLU's pass over memory.
#[inline]
pub fn quantize_relu_activation(x: f32, multiplier: f32) -> i32 {
    let t = (x * multiplier + 127.5) as i32;
    (t.max(0) - 127).clamp(0, 127)
}

/// The input quantisation of an int8 layer: of `x` itself (`lowest` = −128: the
/// clamp of [`quantize_activation`]), or of `relu(x)` (`lowest` = 0:
/// [`quantize_relu_activation`]). One loop serves both kernels (no second copy of
/// either in a device's flash).
#[inline(always)]
fn quantize_input(x: f32, multiplier: f32, lowest: i32) -> i32 {
    let t = (x * multiplier + 127.5) as i32;
    (t.max(0) - 127).max(lowest).min(127)
}

/// The `lowest` of [`quantize_input`] for a layer whose input is (`relu_input`) or
/// is not passed through ReLU first.
fn lowest_quantized(relu_input: bool) -> i32 {
    if relu_input {
        0
    } else {
        -128
    }
}

/// A dense layer whose input is quantised to int8 (format version 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Int8Dense<'a> {
    /// Input multiplier `m` (finite, > 0): `q = round(x · m)`.
    pub input_multiplier: f32,
    /// Weights, output scales (weight scale × `1/m`) and biases.
    #[serde(borrow)]
    pub dense: Dense<'a>,
}

/// A convolution whose input is quantised to int8 (format version 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Int8Conv2d<'a> {
    /// Input multiplier `m` (finite, > 0): `q = round(x · m)`.
    pub input_multiplier: f32,
    /// Geometry, weights, output scales (weight scale × `1/m`) and biases.
    #[serde(borrow)]
    pub conv: Conv2d<'a>,
}

/// Inputs quantised together by the dense kernel (a stack buffer).
const DENSE_CHUNK: usize = 32;
/// Output rows accumulated together by the dense kernel.
const DENSE_ROWS: usize = 4;

impl Int8Dense<'_> {
    /// Forward pass (validated shapes assumed; a mismatch computes on the common
    /// prefix and never panics). Four rows at a time; each chunk of inputs is
    /// quantised once per block of rows.
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.forward_with(x, y, false);
    }

    /// The forward pass of `x`, or with `relu_input` of `relu(x)`: the ReLU fused
    /// into the input quantisation ([`quantize_relu_activation`]; the multiplier
    /// must be > 0, as validation ensures).
    pub fn forward_with(&self, x: &[f32], y: &mut [f32], relu_input: bool) {
        let lowest = lowest_quantized(relu_input);
        let d = &self.dense;
        let n = (d.inputs as usize).min(x.len());
        let cols = d.inputs as usize;
        if cols == 0 {
            return;
        }
        let m = self.input_multiplier;
        let mut rows = d.weights.chunks_exact(cols);
        let mut o = 0usize;
        for yb in y.chunks_mut(DENSE_ROWS) {
            let block: [&[u8]; DENSE_ROWS] = core::array::from_fn(|j| {
                if j < yb.len() {
                    rows.next().unwrap_or(&[])
                } else {
                    &[]
                }
            });
            let mut acc = [0i32; DENSE_ROWS];
            let mut q = [0i32; DENSE_CHUNK];
            for (c, xc) in x.get(..n).unwrap_or(x).chunks(DENSE_CHUNK).enumerate() {
                for (qi, &xi) in q.iter_mut().zip(xc) {
                    *qi = quantize_input(xi, m, lowest);
                }
                let start = c * DENSE_CHUNK;
                for (a, row) in acc.iter_mut().zip(&block) {
                    let wc = row.get(start..start + xc.len()).unwrap_or(&[]);
                    for (&wb, &qi) in wc.iter().zip(&q) {
                        *a = a.wrapping_add(i32::from(wb as i8) * qi);
                    }
                }
            }
            for (j, (yo, &a)) in yb.iter_mut().zip(&acc).enumerate() {
                *yo = dequantize(a, d.scale(o + j), d.bias(o + j));
            }
            o += yb.len();
        }
    }

    /// Straight-through VJP: `gx = m · Wᵀ (scale ⊙ gy)`.
    pub(crate) fn vjp(&self, gy: &[f32], gx: &mut [f32]) {
        self.dense.vjp(gy, gx);
        for g in gx.iter_mut() {
            *g *= self.input_multiplier;
        }
    }
}

/// `y = (acc as f32) · scale + bias`.
#[inline(always)]
fn dequantize(acc: i32, scale: f32, bias: f32) -> f32 {
    acc as f32 * scale + bias
}

/// Output channels accumulated together by the conv kernel.
const CONV_OBLK: usize = 4;
/// Adjacent output columns accumulated together by the conv kernel.
const CONV_CHUNK: usize = 4;
/// Padded input positions one chunk reads: `(CONV_CHUNK − 1)·s + k`, `s ≤ 2`.
const CONV_SEGMENT: usize = (CONV_CHUNK - 1) * 2 + MAX_KERNEL as usize;

impl Int8Conv2d<'_> {
    /// Forward pass (validated shapes assumed; a mismatch computes what fits and
    /// never panics). A block of output channels × adjacent output columns is
    /// accumulated over every `(ci, ky, kx)`; the input positions a chunk reads are
    /// quantised once per `(ci, ky)` into a zero-padded segment.
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.forward_with(x, y, false);
    }

    /// The forward pass of `x`, or with `relu_input` of `relu(x)`: the ReLU fused
    /// into the input quantisation ([`quantize_relu_activation`]; the multiplier
    /// must be > 0, as validation ensures).
    pub fn forward_with(&self, x: &[f32], y: &mut [f32], relu_input: bool) {
        let lowest = lowest_quantized(relu_input);
        let c = &self.conv;
        let (cin, cout) = (usize::from(c.in_channels), usize::from(c.out_channels));
        let (h, w) = (usize::from(c.height), usize::from(c.width));
        let (k, s, p) = (
            usize::from(c.kernel),
            usize::from(c.stride),
            usize::from(c.padding),
        );
        let (oh, ow) = (conv_out(h, k, s, p), conv_out(w, k, s, p));
        let (in_plane, out_plane, kk) = (h * w, oh * ow, k * k);
        if in_plane == 0 || out_plane == 0 || kk == 0 || s == 0 {
            return;
        }
        let m = self.input_multiplier;
        let wlen = cin * kk;
        let need = ((CONV_CHUNK - 1) * s + k).min(CONV_SEGMENT);
        for (blk, yblock) in y
            .chunks_mut(CONV_OBLK * out_plane)
            .enumerate()
            .take(cout.div_ceil(CONV_OBLK))
        {
            let o0 = blk * CONV_OBLK;
            let wb: [&[u8]; CONV_OBLK] = core::array::from_fn(|b| {
                c.weights
                    .get((o0 + b) * wlen..(o0 + b + 1) * wlen)
                    .unwrap_or(&[])
            });
            for oy in 0..oh {
                let mut ox0 = 0;
                while ox0 < ow {
                    let lanes = CONV_CHUNK.min(ow - ox0);
                    let mut acc = [[0i32; CONV_CHUNK]; CONV_OBLK];
                    for (ci, xplane) in x.chunks_exact(in_plane).enumerate().take(cin) {
                        for ky in 0..k {
                            let Some(iy) = (oy * s + ky).checked_sub(p).filter(|&v| v < h) else {
                                continue;
                            };
                            let xrow = xplane.get(iy * w..(iy + 1) * w).unwrap_or(&[]);
                            let mut seg = [0i32; CONV_SEGMENT];
                            let base = ox0 * s;
                            for (t, q) in seg.iter_mut().enumerate().take(need) {
                                *q = (base + t)
                                    .checked_sub(p)
                                    .and_then(|ix| xrow.get(ix))
                                    .map_or(0, |&v| quantize_input(v, m, lowest));
                            }
                            for kx in 0..k {
                                let at = ci * kk + ky * k + kx;
                                for (a, wo) in acc.iter_mut().zip(&wb) {
                                    let wv = wo.get(at).map_or(0, |&v| i32::from(v as i8));
                                    for (l, al) in a.iter_mut().enumerate() {
                                        *al = al.wrapping_add(
                                            wv * seg.get(l * s + kx).copied().unwrap_or(0),
                                        );
                                    }
                                }
                            }
                        }
                    }
                    for (b, (yplane, a)) in yblock.chunks_exact_mut(out_plane).zip(&acc).enumerate()
                    {
                        let (sc, bias) = (c.scale(o0 + b), c.bias(o0 + b));
                        let start = oy * ow + ox0;
                        if let Some(dst) = yplane.get_mut(start..start + lanes) {
                            for (d, &v) in dst.iter_mut().zip(a) {
                                *d = dequantize(v, sc, bias);
                            }
                        }
                    }
                    ox0 += lanes;
                }
            }
        }
    }

    /// Straight-through VJP: the float convolution's VJP, times `m`.
    pub(crate) fn vjp(&self, gy: &[f32], gx: &mut [f32]) {
        self.conv.vjp(gy, gx);
        for g in gx.iter_mut() {
            *g *= self.input_multiplier;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_activation_is_the_clamp_of_the_definition() {
        // Every truncated value t the clamp can see near its edges, and extremes.
        let m = 1.0;
        for t in (-300..=600).chain([i32::MIN / 2, -1 << 24, 1 << 24]) {
            let x = t as f32 - 127.5 + 0.25;
            let want = ((x * m + 127.5) as i32).clamp(0, 254) - 127;
            assert_eq!(quantize_activation(x, m), want, "t = {t}");
        }
        for x in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
        ] {
            let want = ((x * m + 127.5) as i32).clamp(0, 254) - 127;
            assert_eq!(quantize_activation(x, m), want, "x = {x}");
        }
    }

    #[test]
    fn quantize_relu_activation_is_the_quantisation_of_the_relu() {
        // What the classification's fused walk relies on, for every multiplier a
        // validated model can hold (finite, > 0): edge values and random bit
        // patterns (NaNs, infinities, subnormals and both signs among them).
        let relu = |x: f32| if x > 0.0 { x } else { 0.0 };
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let edges = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            0.5 / 127.0,
            -0.5 / 127.0,
            1.0,
            -1.0,
        ];
        for m in [127.0, 1.0, 1e-3, 3.7, 1e-38, 1e30, f32::MAX, 1e-45] {
            for &x in &edges {
                assert_eq!(
                    quantize_relu_activation(x, m),
                    quantize_activation(relu(x), m),
                    "x = {x}, m = {m}"
                );
            }
            for _ in 0..20_000 {
                let r = next();
                // Half arbitrary bit patterns, half values around the rounding steps.
                let x = if r & 1 == 0 {
                    f32::from_bits((r >> 32) as u32)
                } else {
                    ((r >> 40) as i32 - (1 << 23)) as f32 / (1u32 << 14) as f32 / m.max(1e-3)
                };
                assert_eq!(
                    quantize_relu_activation(x, m),
                    quantize_activation(relu(x), m),
                    "x = {x} ({:#010x}), m = {m}",
                    x.to_bits()
                );
                // The kernels' one loop for both.
                assert_eq!(
                    quantize_input(x, m, lowest_quantized(true)),
                    quantize_relu_activation(x, m)
                );
                assert_eq!(
                    quantize_input(x, m, lowest_quantized(false)),
                    quantize_activation(x, m)
                );
            }
        }
    }

    #[test]
    fn quantize_activation_rounds_half_up_and_clamps() {
        let m = 127.0;
        assert_eq!(quantize_activation(0.0, m), 0);
        assert_eq!(quantize_activation(1.0, m), 127);
        assert_eq!(quantize_activation(2.0, m), 127);
        assert_eq!(quantize_activation(-3.0, m), -127);
        assert_eq!(quantize_activation(f32::NAN, m), -127);
        assert_eq!(quantize_activation(f32::NEG_INFINITY, m), -127);
        assert_eq!(quantize_activation(1e30, m), 127);
        assert_eq!(quantize_activation(-1.0001, m), -127);
        assert_eq!(quantize_activation(f32::INFINITY, m), 127);
        assert_eq!(quantize_activation(0.5, 1.0), 1);
        assert_eq!(quantize_activation(-0.5, 1.0), 0);
        assert_eq!(quantize_activation(1.49, 1.0), 1);
        assert_eq!(quantize_activation(-1.51, 1.0), -2);
    }

    #[test]
    fn max_fan_in_cannot_overflow() {
        assert!(i64::from(MAX_FAN_IN) * 127 * 127 <= i64::from(i32::MAX));
        assert!(i64::from(MAX_FAN_IN + 1) * 127 * 127 > i64::from(i32::MAX));
    }
}
