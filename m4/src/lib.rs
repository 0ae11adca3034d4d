//! # pursamere-m4
//!
//! Cortex-M4 kernels for the core's int8-activation layers (`Int8Dense`,
//! `Int8Conv2d`, format version 4) and its float dense layer, plugged in through
//! [`pursamere_core::DenseKernels`]:
//!
//! ```
//! use pursamere_core::Model;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bytes = std::fs::read("fixtures/mnist-robust-int8.psm")
//!     .or_else(|_| std::fs::read("../fixtures/mnist-robust-int8.psm"))?;
//! let model = Model::parse(&bytes)?;
//! let image = vec![0.5f32; model.input_len()];
//! let mut logits = vec![0.0f32; model.num_classes()];
//! let mut scratch = vec![0.0f32; model.classify_scratch_len()];
//! let label = model.classify_with(&pursamere_m4::M4Kernels, &image, &mut logits, &mut scratch)?;
//! // The same bits as the core's own kernels (exact integer sums).
//! let mut core_logits = vec![0.0f32; model.num_classes()];
//! assert_eq!(label, model.classify(&image, &mut core_logits, &mut scratch)?);
//! assert_eq!(logits, core_logits);
//! # Ok(())
//! # }
//! ```
//!
//! An int8 layer's sums are exact integers, so every summation order gives the
//! core's bits: these kernels reorder freely and stay bit-identical (the firmware
//! test compares every image's digest with the host). The M4's `SMLAD` multiplies
//! two pairs of signed halfwords and adds both products in one cycle; `SXTB16`
//! unpacks bytes 0 and 2 (or 1 and 3) of a word into such a pair. Four int8 weights
//! of a row, loaded as one word, meet four quantised inputs, loaded as one word,
//! in two `SMLAD`s after four `SXTB16`s (CMSIS-NN's scheme); the inputs' unpacking
//! is shared by four rows.
//!
//! The layer input (f32) is quantised once per call into a stack buffer of at most
//! [`MAX_INPUT`] bytes (a convolution also builds each output position's patch, at
//! most [`MAX_PATCH`] bytes); a larger layer falls back to the core's own kernel. A
//! single-channel 3×3 convolution (an image classifier's usual first layer, fan-in 9)
//! has its own kernel: its input becomes a plane of signed halfwords, where two taps
//! of a kernel row are already one `SMLAD` operand, and each output channel sweeps
//! the positions with its weights in registers; with stride 2 (the shipped first
//! layer) neighbouring positions share a column, and each position costs three
//! words of a stream built once instead of a five-word patch.
//! The float dense layer (a dense denoiser, a float classifier) runs its forward pass
//! and VJP in `asm!` loops with the core's summation order (`float_dense`, on the
//! hard-float targets); other float layers run the core's portable kernels.
//! Elsewhere than on an Armv7E-M target the DSP instructions are emulated and the
//! float loops have portable twins, so the host tests run the same algorithm; on a
//! Cortex-M4 without the FPU (`thumbv7em-none-eabi`) the loops that use FPU registers
//! run their twins too. [`kernels_match_portable`] checks every `asm!` loop against
//! its twin on edge values; the firmware runs it at boot.
#![no_std]
#![deny(missing_docs)]

mod dsp;
mod float_dense;
mod self_check;

pub use self_check::kernels_match_portable;

use dsp::{
    dense_pairs, dot22_pairs, dot2_steps, pair5_run, quantize_bytes, quantize_halves_rows, smlad,
    ssat8, stride2_rows, sxtb16, sxtb16_ror8, usat7, word,
};
use pursamere_core::{
    int8_dense_pair_in_turn, Conv2d, Dense, DenseKernels, Int8Conv2d, Int8Dense, Portable,
};

/// Largest int8-layer input (values) quantised on the stack; a larger layer runs the
/// core's kernel.
pub const MAX_INPUT: usize = 4096;
/// Largest dense-layer input that gets the small quantisation buffer.
const SMALL_INPUT: usize = 256;
/// Largest output of the first of two int8 dense layers in a row that the M4
/// passes to the second as bytes (a stack buffer, zeroed per call); a wider one
/// goes through a float buffer, as the core does.
const PAIR_MID: usize = 256;
/// The pair's small buffer (a 64-unit hidden layer, as the shipped classifier's).
const SMALL_PAIR_MID: usize = 64;
/// Largest convolution fan-in (`in_channels × kernel²`) these kernels take.
pub const MAX_PATCH: usize = 1024;
/// Output channels whose scale and bias a convolution decodes once per call.
const CACHED: usize = 64;
/// Bytes of convolution weights regrouped, two output channels interleaved by
/// word, on the stack per call (a larger layer takes [`dot2`] per position).
const MAX_INTERLEAVED: usize = 4608;
/// Largest padded fan-in (`in_channels × kernel²` rounded up to eight) of the
/// convolution's two-position path (a 3×3 kernel over up to 32 channels): its second
/// patch and its expanded patch pair (one word per input: two halfwords for each of
/// two positions) take `5 · PAIR_FAN` bytes of stack.
const PAIR_FAN: usize = 288;
/// Output positions whose patches the single-channel 3×3 convolution builds at once.
const PATCH_RUN: usize = 64;
/// Words of the stride-2 single-channel 3×3 convolution's input stream built at once
/// (`2 + 3 · out_width` per output row): a 28 × 28 input's 14 rows in one run, so
/// that each channel's weights, scale and bias are read once and its loop runs once.
const STREAM_WORDS: usize = 640;
/// Bytes of the single-channel 3×3 convolution's quantised input plane (two per
/// value, border included): a 32 × 32 image with a one-pixel border takes 2,312. Not
/// larger, because the whole buffer is zeroed on every call.
const PLANE_BYTES: usize = 2560;

/// The device kernels: the int8 layers on the DSP instructions, the float dense layer
/// forward and VJP in `asm!` loops, everything else the core's [`Portable`] kernels.
#[derive(Debug, Clone, Copy, Default)]
pub struct M4Kernels;

impl DenseKernels for M4Kernels {
    fn dense_forward_batch(
        &self,
        layer: &Dense<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        _rowbuf: &mut [f32],
    ) {
        // One sample at a time (the microcontroller's path): the same bits as the
        // core's row-buffered batch, which widens rows once for several samples.
        float_dense::dense_forward_batch(layer, xs, ys, batch);
    }

    fn dense_vjp_batch(
        &self,
        layer: &Dense<'_>,
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        _rowbuf: &mut [f32],
    ) {
        float_dense::dense_vjp_batch(layer, gys, gxs, batch);
    }

    // Not inlined: their stack buffers then exist only while an int8 layer runs, not
    // in the frame of every caller (a float model's firmware pays no RAM for them).
    #[inline(never)]
    fn int8_dense_forward(
        &self,
        layer: &Int8Dense<'_>,
        x: &[f32],
        y: &mut [f32],
        relu_input: bool,
    ) {
        if !int8_dense(layer, x, y, relu_input) {
            Portable.int8_dense_forward(layer, x, y, relu_input);
        }
    }

    // The first layer's outputs go to the second as int8 bytes (the second would
    // quantise them first anyway): no float store, load or quantisation pass.
    #[inline(never)]
    fn int8_dense_pair_forward(
        &self,
        first: &Int8Dense<'_>,
        second: &Int8Dense<'_>,
        relu_input: bool,
        relu_between: bool,
        io: &mut [f32],
        mid: &mut [f32],
    ) {
        let n_mid = first.dense.outputs as usize;
        let done = if n_mid <= SMALL_PAIR_MID {
            int8_dense_pair::<SMALL_PAIR_MID>(first, second, relu_input, relu_between, io)
        } else if n_mid <= PAIR_MID {
            int8_dense_pair::<PAIR_MID>(first, second, relu_input, relu_between, io)
        } else {
            false
        };
        if !done {
            int8_dense_pair_in_turn(self, first, second, relu_input, relu_between, io, mid);
        }
    }

    #[inline(never)]
    fn int8_conv_forward(
        &self,
        layer: &Int8Conv2d<'_>,
        x: &[f32],
        y: &mut [f32],
        relu_input: bool,
    ) {
        // The single-channel kernel serves a network's first layer, which no ReLU
        // feeds; the general kernel takes any other.
        let done = (!relu_input
            && (int8_conv_single_3x3_s2(layer, x, y) || int8_conv_single_3x3(layer, x, y)))
            || int8_conv(layer, x, y, relu_input);
        if !done {
            Portable.int8_conv_forward(layer, x, y, relu_input);
        }
    }
}

/// The core's `quantize_activation(v, m)`, the same function (the tests compare them
/// on NaN, infinities and both clamps), as `ssat8(max(t, 0) − 127)`: BIC, SUB and
/// SSAT after the conversion on the M4, where the compiler's own clamp takes five.
/// With `RELU`, the core's `quantize_relu_activation(v, m)` (the quantisation of
/// `relu(v)`), as `usat7(max(t, 0) − 127)`: as cheap, and the ReLU's own pass over
/// memory is gone.
#[inline(always)]
fn quantize<const RELU: bool>(v: f32, m: f32) -> i32 {
    let t = (v * m + 127.5) as i32;
    if RELU {
        usat7(t.max(0) - 127)
    } else {
        ssat8(t.max(0) - 127)
    }
}

/// Quantises `x` (or, with `relu`, `relu(x)`) into `q` (one two's-complement byte
/// per value). The choice is made once per call, outside the loop.
#[inline(always)]
fn quantize_into(x: &[f32], m: f32, q: &mut [u8], relu: bool) {
    if relu {
        quantize_bytes::<true>(x, m, q);
    } else {
        quantize_bytes::<false>(x, m, q);
    }
}

/// Two products of four int8 weights (one word) with four quantised inputs (one
/// word, already unpacked into bytes 0, 2 and bytes 1, 3), added to `acc`.
#[inline(always)]
fn mac4(w: u32, xa: u32, xb: u32, acc: i32) -> i32 {
    smlad(sxtb16_ror8(w), xb, smlad(sxtb16(w), xa, acc))
}

/// `[Σ_i w_0[i] · q[i], Σ_i w_1[i] · q[i]]` over `q` (rows at least as long as
/// `q`; a shorter row gives 0). Two rows share each unpacked input word; eight
/// inputs per step keep both rows' pointers, both sums and two input words in
/// the M4's registers.
#[inline(always)]
fn dot2(r0: &[u8], r1: &[u8], q: &[u8]) -> [i32; 2] {
    let n8 = q.len() / 8 * 8;
    let (Some((h0, t0)), Some((h1, t1))) = (r0.split_at_checked(n8), r1.split_at_checked(n8))
    else {
        return [0, 0];
    };
    let (qh, qt) = q.split_at(n8);
    let [mut a0, mut a1] = dot2_steps(qh, h0, h1, n8 / 8, [0, 0]);
    for (i, &xb) in qt.iter().enumerate() {
        let x = i32::from(xb as i8);
        a0 = a0.wrapping_add(t0.get(i).map_or(0, |&b| i32::from(b as i8)) * x);
        a1 = a1.wrapping_add(t1.get(i).map_or(0, |&b| i32::from(b as i8)) * x);
    }
    [a0, a1]
}

/// `Σ_i w[i] · q[i]` for one row at least as long as `q` (0 when shorter).
#[inline(always)]
fn dot1(row: &[u8], q: &[u8]) -> i32 {
    let Some(row) = row.get(..q.len()) else {
        return 0;
    };
    let n4 = q.len() / 4 * 4;
    let (qh, qt) = q.split_at(n4);
    let (h0, t0) = row.split_at(n4);
    let mut a = 0i32;
    for (xq, w0) in qh.chunks_exact(4).zip(h0.chunks_exact(4)) {
        let xw = word(xq);
        a = mac4(word(w0), sxtb16(xw), sxtb16_ror8(xw), a);
    }
    for (&xb, &wb) in qt.iter().zip(t0) {
        a = a.wrapping_add(i32::from(wb as i8) * i32::from(xb as i8));
    }
    a
}

/// Up to four little-endian bytes as a word, zero-filled past the end of `c`.
#[inline(always)]
fn word_padded(c: &[u8]) -> u32 {
    match *c {
        [a, b, c, d, ..] => u32::from_le_bytes([a, b, c, d]),
        [a, b, c] => u32::from_le_bytes([a, b, c, 0]),
        [a, b] => u32::from_le_bytes([a, b, 0, 0]),
        [a] => u32::from(a),
        [] => 0,
    }
}

/// `dst = src` for a kernel row (k ≤ 7 bytes): the common 3×3 case as three byte
/// moves (a loop here becomes a `memcpy` call, which costs more than the copy).
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    match (dst, src) {
        ([d0, d1, d2], [s0, s1, s2]) => (*d0, *d1, *d2) = (*s0, *s1, *s2),
        (dst, src) => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v;
            }
        }
    }
}

/// The dequantised output `(acc as f32) · scale + bias`, as the core defines it.
#[inline(always)]
fn dequantize(acc: i32, scale: f32, bias: f32) -> f32 {
    acc as f32 * scale + bias
}

/// The int8 dense layer (of `relu(x)` with `relu`) on the DSP path; `false` when it
/// is too large for it.
fn int8_dense(layer: &Int8Dense<'_>, x: &[f32], y: &mut [f32], relu: bool) -> bool {
    // The buffer is zeroed on every call (safe Rust has no uninitialised arrays):
    // a small layer gets a small one, or zeroing 4 KiB would cost it more than its
    // multiply–accumulates (a 64 → 10 output layer: 3,100 cycles against 1,700).
    let dequantized = |q: &[u8]| int8_dense_quantized_unchecked(&layer.dense, q, y);
    if (layer.dense.inputs as usize) <= SMALL_INPUT {
        with_quantized_input::<SMALL_INPUT>(layer, x, relu, dequantized)
    } else {
        with_quantized_input::<MAX_INPUT>(layer, x, relu, dequantized)
    }
}

/// Quantises the layer's input `x` (or `relu(x)`) into an `N`-byte stack buffer and
/// runs `body` on it; `false` when the input does not fit (or is empty or short).
#[inline(always)]
fn with_quantized_input<const N: usize>(
    layer: &Int8Dense<'_>,
    x: &[f32],
    relu: bool,
    body: impl FnOnce(&[u8]),
) -> bool {
    let n = layer.dense.inputs as usize;
    if n == 0 || n > N || x.len() < n {
        return false;
    }
    let mut qbuf = [0u8; N];
    let Some(q) = qbuf.get_mut(..n) else {
        return false;
    };
    quantize_dense_input(x, layer.input_multiplier, q, relu);
    body(q);
    true
}

/// [`quantize_into`] for the dense layers, one copy for every buffer size (a
/// dense layer's quantisation is one loop over its inputs; a call costs a few
/// cycles, the four inlined copies 1 KB of flash).
#[inline(never)]
fn quantize_dense_input(x: &[f32], m: f32, q: &mut [u8], relu: bool) {
    quantize_into(x, m, q, relu);
}

/// Each row's integer sum over the quantised input `q` (`q.len()` = the layer's
/// inputs), in row order, to `emit`: two rows per pass, a last odd row alone.
#[inline(always)]
fn for_each_row_sum(d: &Dense<'_>, q: &[u8], mut emit: impl FnMut(i32)) {
    let Some(n) = core::num::NonZeroUsize::new(q.len()) else {
        return;
    };
    let mut rows = d.weights.chunks_exact(n.get()).take(d.outputs as usize);
    while let Some(r0) = rows.next() {
        let Some(r1) = rows.next() else {
            emit(dot1(r0, q));
            return;
        };
        let [a0, a1] = dot2(r0, r1, q);
        emit(a0);
        emit(a1);
    }
}

/// `y` = the dense layer's dequantised outputs over the quantised input `q`: whole
/// pairs of rows in one `asm!` loop when the input length is a multiple of 16, the
/// rest here. One copy for every caller (inlined into each, it cost 2 KB of flash
/// for a call's few cycles).
#[inline(never)]
fn int8_dense_quantized_unchecked(d: &Dense<'_>, q: &[u8], y: &mut [f32]) {
    let outputs = (d.outputs as usize).min(y.len());
    let (yv, _) = y.split_at_mut(outputs);
    let done = 2 * dense_pairs(q, d.weights, d.scales, d.bias, yv);
    if done == outputs {
        return;
    }
    let rest = Dense {
        outputs: d.outputs.saturating_sub(done as u32),
        weights: d.weights.get(done * q.len()..).unwrap_or(&[]),
        scales: d.scales.get(4 * done..).unwrap_or(&[]),
        bias: d.bias.get(4 * done..).unwrap_or(&[]),
        ..*d
    };
    let y = yv.get_mut(done..).unwrap_or(&mut []);
    let mut outs = y
        .iter_mut()
        .zip(dsp::scales_and_biases(rest.scales, rest.bias));
    let d = &rest;
    for_each_row_sum(d, q, |a| {
        if let Some((yo, (scale, bias))) = outs.next() {
            *yo = dequantize(a, scale, bias);
        }
    });
}

/// The int8 dense layer on an input already quantised (`q`: one two's-complement
/// byte per input, as [`int8_dense_requantized`] writes them): `y` = its outputs,
/// the core's bits. `false` (and `y` untouched) when `q` is not the layer's input
/// length or `y` is shorter than its output.
pub fn int8_dense_quantized(layer: &Int8Dense<'_>, q: &[u8], y: &mut [f32]) -> bool {
    let d = &layer.dense;
    if q.is_empty() || q.len() != d.inputs as usize || y.len() < d.outputs as usize {
        return false;
    }
    int8_dense_quantized_unchecked(d, q, y);
    true
}

/// The int8 dense layer on `x` (on `relu(x)` with `relu_input`) with its outputs
/// quantised for the next int8 layer instead of stored as floats: `q[o]` =
/// the core's `quantize_activation(y[o], next_multiplier)` (with `relu_output`,
/// `quantize_relu_activation`, a ReLU between the layers) of the output `y[o]` the
/// core computes, as two's-complement bytes. `false` (and `q` untouched) when the
/// layer is too large for the DSP path, `x` is short or `q` is not the layer's
/// output length.
pub fn int8_dense_requantized(
    layer: &Int8Dense<'_>,
    x: &[f32],
    relu_input: bool,
    next_multiplier: f32,
    relu_output: bool,
    q: &mut [u8],
) -> bool {
    let d = &layer.dense;
    if q.is_empty() || q.len() != d.outputs as usize {
        return false;
    }
    let requantize = |qin: &[u8]| requantize_rows(d, qin, next_multiplier, relu_output, q);
    if (d.inputs as usize) <= SMALL_INPUT {
        with_quantized_input::<SMALL_INPUT>(layer, x, relu_input, requantize)
    } else {
        with_quantized_input::<MAX_INPUT>(layer, x, relu_input, requantize)
    }
}

/// `q[o]` = the quantisation (of the ReLU, with `relu_output`) of the dense layer's
/// output `o` over the quantised input `qin`, with the next layer's multiplier `m`.
/// One copy for both buffer sizes of [`int8_dense_requantized`].
#[inline(never)]
fn requantize_rows(d: &Dense<'_>, qin: &[u8], m: f32, relu_output: bool, q: &mut [u8]) {
    let mut outs = q.iter_mut().zip(dsp::scales_and_biases(d.scales, d.bias));
    // The quantisation is chosen per output (a branch per row, against hundreds of
    // multiply–accumulates), so that the row loop exists once.
    for_each_row_sum(d, qin, |a| {
        if let Some((qo, (scale, bias))) = outs.next() {
            let v = dequantize(a, scale, bias);
            *qo = if relu_output {
                quantize::<true>(v, m)
            } else {
                quantize::<false>(v, m)
            } as u8;
        }
    });
}

/// Two int8 dense layers in a row with the first one's outputs passed on quantised
/// (in an `N`-byte stack buffer); `false` (and `io` untouched) when they do not
/// take the DSP path.
fn int8_dense_pair<const N: usize>(
    first: &Int8Dense<'_>,
    second: &Int8Dense<'_>,
    relu_input: bool,
    relu_between: bool,
    io: &mut [f32],
) -> bool {
    let n_mid = first.dense.outputs as usize;
    if second.dense.inputs as usize != n_mid || io.len() < second.dense.outputs as usize {
        return false;
    }
    let mut qbuf = [0u8; N];
    let (Some(q), Some(x)) = (qbuf.get_mut(..n_mid), io.get(..first.dense.inputs as usize)) else {
        return false;
    };
    int8_dense_requantized(
        first,
        x,
        relu_input,
        second.input_multiplier,
        relu_between,
        q,
    ) && int8_dense_quantized(second, q, io)
}

/// A signed byte as a zero-extended signed halfword (one lane of an `SMLAD` pair).
#[inline(always)]
fn lane(b: u8) -> u32 {
    u32::from(b as i8 as i16 as u16)
}

/// Decodes the first `CACHED` output channels' scales and biases from their stored
/// bytes, once per call (a kernel reads them for every output position).
#[inline(always)]
fn decode_scales(c: &Conv2d<'_>, scales: &mut [f32; CACHED], biases: &mut [f32; CACHED]) {
    let cout = usize::from(c.out_channels);
    for (o, (sv, bv)) in scales.iter_mut().zip(biases).enumerate().take(cout) {
        (*sv, *bv) = (c.scale(o), c.bias(o));
    }
}

/// The single-channel kernels' input: `h` rows of `width` values quantised into
/// `plane` (zeroed by the caller) as signed halfwords (two neighbouring columns one
/// `SMLAD` operand), inside `p` zero rows and columns, rows `wp` halfwords apart.
#[inline(always)]
fn quantize_plane(
    plane: &mut [u8; PLANE_BYTES],
    m: f32,
    x: &[f32],
    width: usize,
    h: usize,
    p: usize,
    wp: usize,
) {
    if let Some(dst) = plane.get_mut(2 * (p * wp + p)..) {
        quantize_halves_rows(x, width, m, dst, 2 * wp, h);
    }
}

/// `lo` as the low halfword, `hi`'s low halfword as the high one (`PKHBT … LSL #16`).
#[inline(always)]
fn pack_lo(lo: u32, hi: u32) -> u32 {
    (lo & 0xffff) | (hi << 16)
}

/// `lo`'s high halfword as the low one, `hi`'s high halfword as the high one
/// (`PKHTB … ASR #16`).
#[inline(always)]
fn pack_hi(lo: u32, hi: u32) -> u32 {
    (hi & 0xffff_0000) | (lo >> 16)
}

/// The single-channel 3×3 convolution with stride 2 and an even output width of at
/// least four (the shipped classifier's first layer: 28 × 28 → 14 × 14) on the DSP
/// path; `false` for any other shape, which [`int8_conv_single_3x3`] or the general
/// kernel then takes.
///
/// With stride 2, position `i` of an output row reads columns `2i`, `2i + 1`,
/// `2i + 2` of three input rows `r0`, `r1`, `r2`; in the quantised halfword plane
/// (rows padded to whole words) columns `2i`, `2i + 1` of a row are one aligned
/// word. The first two rows' taps pair vertically — `V[c] = (x[r0][c], x[r1][c])`,
/// three `SMLAD`s — and the third row's first two taps are word `i` of the row,
/// `H[i]`, its third tap the low half of `H[i + 1]`. Neighbouring positions share
/// `V[2i + 2]` and `H[i + 1]`, so each output row becomes a stream `V[0], H[0]`, then
/// `V[2i + 1], V[2i + 2], H[i + 1]` per position, built once for all channels: three
/// words per position where a patch takes five, and no patch to build
/// ([`dsp::portable_stride2_rows`]).
#[inline(never)]
fn int8_conv_single_3x3_s2(layer: &Int8Conv2d<'_>, x: &[f32], y: &mut [f32]) -> bool {
    let c = &layer.conv;
    if c.in_channels != 1 || c.kernel != 3 || c.stride != 2 {
        return false;
    }
    let cout = usize::from(c.out_channels);
    let (h, width, p) = (
        usize::from(c.height),
        usize::from(c.width),
        usize::from(c.padding),
    );
    let (oh, ow) = (c.out_height(), c.out_width());
    let out_plane = oh * ow;
    // Plane rows padded to whole words, so that every row starts word-aligned.
    let (hp, wp) = (h + 2 * p, (width + 2 * p + 1) & !1);
    let per_row = 2 + 3 * ow;
    if h == 0
        || width == 0
        || ow < 4
        || !ow.is_multiple_of(2)
        || 2 * hp * wp > PLANE_BYTES
        || per_row > STREAM_WORDS
        || x.len() < h * width
        || y.len() < cout * out_plane
    {
        return false;
    }
    let mut plane = [0u8; PLANE_BYTES];
    quantize_plane(&mut plane, layer.input_multiplier, x, width, h, p, wp);
    let mut stream = [0u32; STREAM_WORDS];
    let rows_per_run = STREAM_WORDS / per_row;
    let mut oy = 0;
    while oy < oh {
        let rows = rows_per_run.min(oh - oy);
        for (r, sr) in (oy..oy + rows).zip(stream.chunks_exact_mut(per_row)) {
            let row = |k: usize| {
                let b = 2 * (2 * r + k) * wp;
                plane.get(b..b + 2 * wp).unwrap_or(&[])
            };
            // Each row's words in turn (no index, no bounds test per word); the
            // previous word of the first two rows is carried.
            let words = |k: usize| row(k).chunks_exact(4).map(word);
            let (mut w0, mut w1, mut w2) = (words(0), words(1), words(2));
            if let ([v0, h0, rest @ ..], Some(a0), Some(a1), Some(c0)) =
                (sr, w0.next(), w1.next(), w2.next())
            {
                (*v0, *h0) = (pack_lo(a0, a1), c0);
                let (mut a0, mut a1) = (a0, a1);
                for (tw, ((b0, b1), c)) in rest.chunks_exact_mut(3).zip(w0.zip(w1).zip(w2)) {
                    if let [t0, t1, t2] = tw {
                        (*t0, *t1, *t2) = (pack_hi(a0, a1), pack_lo(b0, b1), c);
                    }
                    (a0, a1) = (b0, b1);
                }
            }
        }
        let run = stream.get(..rows * per_row).unwrap_or(&[]);
        for (o, taps) in c.weights.chunks_exact(9).take(cout).enumerate() {
            if let (&[t0, t1, t2, t3, t4, t5, t6, t7, t8], Some(yo)) = (
                taps,
                y.get_mut(o * out_plane + oy * ow..o * out_plane + (oy + rows) * ow),
            ) {
                let w = [
                    lane(t0) | lane(t3) << 16,
                    lane(t1) | lane(t4) << 16,
                    lane(t2) | lane(t5) << 16,
                    lane(t6) | lane(t7) << 16,
                    lane(t8),
                ];
                stride2_rows(run, w, ow, c.scale(o), c.bias(o), yo);
            }
        }
        oy += rows;
    }
    true
}

/// The single-channel 3×3 convolution (an image classifier's usual first layer) on
/// the DSP path; `false` when the layer has another shape or is too large for it.
///
/// Its fan-in of nine is too short for the general kernel (a third of its 16-byte
/// steps would be padding, and per-position overhead dominates). Here the input is
/// quantised once into a zero-bordered plane of signed halfwords, where two
/// neighbouring taps of a kernel row are already one `SMLAD` operand (one word
/// load); each position's nine taps become five such words (three row pairs, the
/// third column's two taps packed, the last tap with a zero), and each output
/// channel then runs over the positions with its five weight words held in
/// registers ([`dsp::portable_pair5_run`]).
#[inline(never)]
fn int8_conv_single_3x3(layer: &Int8Conv2d<'_>, x: &[f32], y: &mut [f32]) -> bool {
    let c = &layer.conv;
    if c.in_channels != 1 || c.kernel != 3 {
        return false;
    }
    let cout = usize::from(c.out_channels);
    let (h, width) = (usize::from(c.height), usize::from(c.width));
    let (s, p) = (usize::from(c.stride), usize::from(c.padding));
    let (oh, ow) = (c.out_height(), c.out_width());
    let out_plane = oh * ow;
    let (hp, wp) = (h + 2 * p, width + 2 * p);
    if h == 0
        || width == 0
        || out_plane == 0
        || 2 * hp * wp > PLANE_BYTES
        || ow > PATCH_RUN
        || cout > CACHED
        || x.len() < h * width
        || y.len() < cout * out_plane
    {
        return false;
    }
    let mut plane = [0u8; PLANE_BYTES];
    quantize_plane(&mut plane, layer.input_multiplier, x, width, h, p, wp);
    // Each channel's weights in the patch words' tap order: (0, 1), (3, 4), (6, 7),
    // (2, 5), (8, –).
    let mut wbuf = [0u32; 5 * CACHED];
    let (mut sbuf, mut bbuf) = ([0.0f32; CACHED], [0.0f32; CACHED]);
    decode_scales(c, &mut sbuf, &mut bbuf);
    for (o, wo) in wbuf.chunks_exact_mut(5).take(cout).enumerate() {
        let t = |i: usize| c.weights.get(9 * o + i).map_or(0, |&b| lane(b));
        wo.copy_from_slice(&[
            t(0) | t(1) << 16,
            t(3) | t(4) << 16,
            t(6) | t(7) << 16,
            t(2) | t(5) << 16,
            t(8),
        ]);
    }
    let mut patches = [0u32; 5 * PATCH_RUN];
    // Runs of whole output rows.
    let rows_per_run = PATCH_RUN / ow;
    let mut oy = 0;
    while oy < oh {
        let rows = rows_per_run.min(oh - oy);
        let (start, n) = (oy * ow, rows * ow);
        for (r, pr) in (oy..oy + rows).zip(patches.chunks_exact_mut(5 * ow)) {
            // The three plane rows under output row `r`, and each position's taps
            // 0–2 in them: six bytes (three halfwords) of each row.
            let b = 2 * r * s * wp;
            let row = |k: usize| {
                plane
                    .get(b + 2 * k * wp..b + 2 * (k + 1) * wp)
                    .unwrap_or(&[])
            };
            let taps = |k: usize| row(k).windows(6).step_by(2 * s);
            for (pw, ((a, b), c)) in pr
                .chunks_exact_mut(5)
                .zip(taps(0).zip(taps(1)).zip(taps(2)))
            {
                if let (
                    &[a0, a1, a2, a3, a4, a5],
                    &[b0, b1, b2, b3, b4, b5],
                    &[c0, c1, c2, c3, c4, c5],
                ) = (a, b, c)
                {
                    pw.copy_from_slice(&[
                        u32::from_le_bytes([a0, a1, a2, a3]),
                        u32::from_le_bytes([b0, b1, b2, b3]),
                        u32::from_le_bytes([c0, c1, c2, c3]),
                        u32::from_le_bytes([a4, a5, b4, b5]),
                        u32::from_le_bytes([c4, c5, 0, 0]),
                    ]);
                }
            }
        }
        let run = &patches[..5 * n];
        for (o, ((wo, &sc), &b)) in wbuf
            .chunks_exact(5)
            .zip(&sbuf)
            .zip(&bbuf)
            .take(cout)
            .enumerate()
        {
            let at = o * out_plane + start;
            if let (Some(yo), &[w0, w1, w2, w3, w4]) = (y.get_mut(at..at + n), wo) {
                pair5_run(run, [w0, w1, w2, w3, w4], sc, b, yo);
            }
        }
        oy += rows;
    }
    true
}

/// Builds output position `pos`'s int8 patch in the weights' (ci, ky, kx) order
/// from the zero-bordered quantised input planes (`hp × wp` bytes each, `cin` of
/// them at the start of `qin`): for each input channel, `k` rows of `k` bytes.
/// Bytes of `patch` past the fan-in are left as they are (the caller keeps them
/// zero).
#[inline(always)]
fn build_patch(qin: &[u8], cin: usize, patch: &mut [u8], g: &PatchGeometry, pos: usize) {
    let PatchGeometry { hp, wp, k, s, ow } = *g;
    let (oy, ox) = (pos / ow.max(1), pos % ow.max(1));
    let corner = (oy * s) * wp + ox * s;
    let plane_len = hp * wp;
    if k == 3 {
        // The common 3×3 kernel: each kernel row is read as one (unaligned) word,
        // whose fourth byte belongs to the next column or the next row and is
        // dropped, and a channel's nine bytes are written as two words and a byte:
        // three loads and three stores where byte moves take eighteen. The fourth
        // byte of the last plane's last row may lie past the planes: `qin` is the
        // whole buffer, and a read that does not fit takes the byte moves.
        let span = (cin.max(1) - 1) * plane_len + 2 * wp + 4;
        if let Some(window) = qin.get(corner..corner + span) {
            // Every channel's three row words lie inside `window`: one range check
            // per position, and the per-channel reads below cannot fail.
            for (ci, dst) in (0..cin).zip(patch.chunks_exact_mut(9)) {
                let src = window.get(ci * plane_len..).unwrap_or(&[]);
                let word_at = |at: usize| {
                    src.get(at..)
                        .and_then(<[u8]>::first_chunk::<4>)
                        .map_or(0, |b| u32::from_le_bytes(*b))
                };
                let (a, b, c) = (word_at(0), word_at(wp), word_at(2 * wp));
                if let Some((d0, rest)) = dst.split_first_chunk_mut::<4>() {
                    *d0 = (a & 0x00ff_ffff | b << 24).to_le_bytes();
                    if let Some((d1, [d2, ..])) = rest.split_first_chunk_mut::<4>() {
                        *d1 = ((b >> 8) & 0xffff | c << 16).to_le_bytes();
                        *d2 = (c >> 16) as u8;
                    }
                }
            }
            return;
        }
        for (ci, dst) in (0..cin).zip(patch.chunks_exact_mut(9)) {
            let at = ci * plane_len + corner;
            if let (Some([a, b, c]), Some([d, e, f]), Some([g, h, i])) = (
                qin.get(at..at + 3),
                qin.get(at + wp..at + wp + 3),
                qin.get(at + 2 * wp..at + 2 * wp + 3),
            ) {
                dst.copy_from_slice(&[*a, *b, *c, *d, *e, *f, *g, *h, *i]);
            }
        }
    } else {
        let planes = qin.chunks_exact(plane_len).take(cin);
        for (plane, rows) in planes.zip(patch.chunks_exact_mut(k * k)) {
            let window = plane.get(corner..).unwrap_or(&[]);
            for (src, dst) in window.chunks(wp).zip(rows.chunks_exact_mut(k)) {
                copy_small(dst, src.get(..k).unwrap_or(&[]));
            }
        }
    }
}

/// Where a convolution's patches come from: the padded input planes' height and
/// width, the kernel size, the stride and the output width.
#[derive(Clone, Copy)]
struct PatchGeometry {
    hp: usize,
    wp: usize,
    k: usize,
    s: usize,
    ow: usize,
}

/// The int8 convolution on the DSP path; `false` when it is too large for it.
///
/// im2col by pairs of output positions: both positions' patches are built, then
/// unpacked once into signed halfword pairs (`expanded`, the layout of
/// [`dsp::portable_dot22_pairs`]), and every pair of output channels (their weight
/// rows interleaved word by word once per call) runs over them in one `asm!` loop
/// that unpacks each weight word once for both positions. An odd last position runs
/// with whatever the second patch holds and its sums are dropped. An odd last channel
/// and channels past the first [`CACHED`] take [`dot2`] / [`dot1`] per position, and
/// so does every channel when the fan-in exceeds [`PAIR_FAN`] or the regrouped
/// weights exceed [`MAX_INTERLEAVED`] (positions then one at a time).
// Not inlined: its stack buffers and those of `int8_conv_single_3x3` are then
// never live at once.
#[inline(never)]
fn int8_conv(layer: &Int8Conv2d<'_>, x: &[f32], y: &mut [f32], relu: bool) -> bool {
    let c = &layer.conv;
    let (cin, cout) = (usize::from(c.in_channels), usize::from(c.out_channels));
    let (h, width) = (usize::from(c.height), usize::from(c.width));
    let (k, s, p) = (
        usize::from(c.kernel),
        usize::from(c.stride),
        usize::from(c.padding),
    );
    let (oh, ow) = (c.out_height(), c.out_width());
    let (in_len, fan, out_plane) = (cin * h * width, cin * k * k, oh * ow);
    // The quantised input with its zero border: every patch row is then one plain
    // copy of k bytes.
    let (hp, wp) = (h + 2 * p, width + 2 * p);
    let padded_len = cin * hp * wp;
    if in_len == 0 || padded_len > MAX_INPUT || fan == 0 || fan > MAX_PATCH || x.len() < in_len {
        return false;
    }
    if y.len() < cout * out_plane {
        return false;
    }
    let mut qbuf = [0u8; MAX_INPUT];
    for (xrow, r) in x.chunks_exact(width).take(cin * h).zip(0..) {
        let (ci, iy) = (r / h, r % h);
        let start = (ci * hp + iy + p) * wp + p;
        if let Some(dst) = qbuf.get_mut(start..start + width) {
            quantize_into(xrow, layer.input_multiplier, dst, relu);
        }
    }
    let geometry = PatchGeometry { hp, wp, k, s, ow };
    // The patches, zero-padded to a multiple of eight bytes: a row's last words
    // may then read past its end (into the next row's weights, times zero) instead
    // of taking a byte-by-byte tail. The second position's patch exists only on the
    // two-position path (fan-in up to PAIR_FAN).
    let fan8 = fan.div_ceil(8) * 8;
    let mut pbuf = [0u8; MAX_PATCH + 8 + PAIR_FAN];
    let (b0, b1) = pbuf.split_at_mut(MAX_PATCH + 8);
    let Some(patch0) = b0.get_mut(..fan8) else {
        return false;
    };
    let patch1 = b1.get_mut(..fan8);
    let w = |o: usize, len: usize| c.weights.get(o * fan..o * fan + len);
    // The output channels' scales and biases, decoded once (up to CACHED channels).
    let (mut sbuf, mut bbuf) = ([0.0f32; CACHED], [0.0f32; CACHED]);
    decode_scales(c, &mut sbuf, &mut bbuf);
    let cached = cout.min(CACHED);
    let (scales, biases) = (&sbuf[..cached], &bbuf[..cached]);
    // Pairs of output channels (up to CACHED channels: the rest take the
    // per-position path), their rows interleaved word by word; a row's last word is
    // zero-filled past its end, where the patch's padding is zero too.
    let mut ibuf = [0u32; MAX_INTERLEAVED / 4];
    let paired = cout.min(CACHED) / 2 * 2;
    let pairs = if patch1.is_some() && paired * fan8 <= MAX_INTERLEAVED {
        paired / 2
    } else {
        0
    };
    let rows = c.weights.chunks(fan);
    for (block, (r0, r1)) in ibuf
        .chunks_exact_mut(fan8 / 2)
        .zip(rows.clone().step_by(2).zip(rows.skip(1).step_by(2)))
        .take(pairs)
    {
        for (dst, (w0, w1)) in block
            .chunks_exact_mut(2)
            .zip(r0.chunks(4).zip(r1.chunks(4)))
        {
            if let [d0, d1] = dst {
                (*d0, *d1) = (word_padded(w0), word_padded(w1));
            }
        }
    }
    let interleaved = &ibuf[..pairs * fan8 / 2];
    let mut expanded = [0u32; PAIR_FAN];
    let mut sbuf4 = [0i32; 2 * CACHED];
    let out = |y: &mut [f32], o: usize, pos: usize, a: i32| {
        if let Some(yo) = y.get_mut(o * out_plane + pos) {
            *yo = match (scales.get(o), biases.get(o)) {
                (Some(&sc), Some(&b)) => dequantize(a, sc, b),
                _ => dequantize(a, c.scale(o), c.bias(o)),
            };
        }
    };
    // Positions two at a time on the two-position path, else one at a time.
    let mut patch1 = patch1.filter(|_| pairs > 0);
    let step = if patch1.is_some() { 2 } else { 1 };
    for pos in (0..out_plane).step_by(step) {
        build_patch(&qbuf, cin, patch0, &geometry, pos);
        let second = match patch1.as_deref_mut() {
            Some(p1) if pos + 1 < out_plane => {
                build_patch(&qbuf, cin, p1, &geometry, pos + 1);
                true
            }
            _ => false,
        };
        if let Some(p1) = patch1.as_deref() {
            let xs = &mut expanded[..fan8];
            for (e, (a, b)) in xs
                .chunks_exact_mut(4)
                .zip(patch0.chunks_exact(4).zip(p1.chunks_exact(4)))
            {
                let (a, b) = (word(a), word(b));
                e.copy_from_slice(&[sxtb16(a), sxtb16_ror8(a), sxtb16(b), sxtb16_ror8(b)]);
            }
            let xs = &*xs;
            let sums = &mut sbuf4[..4 * pairs];
            dot22_pairs(xs, interleaved, fan8 / 8, sums);
            // Dequantised straight into each channel's plane: two outputs per
            // channel, the pair's scales and biases read once.
            let planes = y.chunks_exact_mut(2 * out_plane);
            let scale_pairs = scales.chunks_exact(2).zip(biases.chunks_exact(2));
            for ((yy, (sc, bi)), s4) in planes.zip(scale_pairs).zip(sums.chunks_exact(4)) {
                let (y0, y1) = yy.split_at_mut(out_plane);
                if let (&[s0, s1], &[b0, b1], &[a00, a10, a01, a11]) = (sc, bi, s4) {
                    if let (Some(o0), Some(o1)) = (y0.get_mut(pos), y1.get_mut(pos)) {
                        (*o0, *o1) = (dequantize(a00, s0, b0), dequantize(a10, s1, b1));
                    }
                    if second {
                        if let (Some(o0), Some(o1)) = (y0.get_mut(pos + 1), y1.get_mut(pos + 1)) {
                            (*o0, *o1) = (dequantize(a01, s0, b0), dequantize(a11, s1, b1));
                        }
                    }
                }
            }
        }
        // The channels left over (an odd last one, or all of them off the
        // two-position path), position by position.
        let patches = [Some(&*patch0), patch1.as_deref().filter(|_| second)];
        for (at, patch) in (pos..).zip(patches.into_iter().flatten()) {
            let exact = patch.get(..fan).unwrap_or(patch);
            let mut o = 2 * pairs;
            while o + 2 <= cout {
                let [a0, a1] = match (w(o, fan8), w(o + 1, fan8)) {
                    (Some(r0), Some(r1)) => dot2(r0, r1, patch),
                    _ => [
                        w(o, fan).map_or(0, |r| dot1(r, exact)),
                        w(o + 1, fan).map_or(0, |r| dot1(r, exact)),
                    ],
                };
                out(y, o, at, a0);
                out(y, o + 1, at, a1);
                o += 2;
            }
            if o < cout {
                out(y, o, at, w(o, fan).map_or(0, |r| dot1(r, exact)));
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::quantize;
    use pursamere_core::{quantize_activation, quantize_relu_activation};

    #[test]
    fn quantisation_is_the_cores_with_and_without_the_relu() {
        // Edge values and pseudo-random bit patterns (NaNs, infinities, subnormals),
        // for several multipliers; on the host `ssat8`/`usat7` are their emulations,
        // on the M4 the instructions (the firmware test compares the digests).
        let edges = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            -f32::MAX,
            1e-45,
            -1e-45,
            1.0,
            -1.0,
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut random = core::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits((state >> 32) as u32)
        });
        for m in [127.0, 60.0, 1.0, 1e-3, 1e30] {
            for v in edges.into_iter().chain((&mut random).take(20_000)) {
                assert_eq!(
                    quantize::<false>(v, m),
                    quantize_activation(v, m),
                    "{v} {m}"
                );
                assert_eq!(
                    quantize::<true>(v, m),
                    quantize_relu_activation(v, m),
                    "{v} {m}"
                );
            }
        }
    }
}
