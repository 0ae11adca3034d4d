//! Convolution and nearest-neighbour upsampling, with a summation order fixed by
//! design (see `docs/CONV.md` for the whole story).
//!
//! Layout: every feature map is channel-major, row-major (`[c][y][x]`, CHW), the
//! layout of the model's input images; int8 conv weights are `[out][in][ky][kx]`
//! (PyTorch's `Conv2d.weight` layout).
//!
//! * **Forward** `y[o][oy][ox] = scale[o] · acc + bias[o]` with
//!   `acc = Σ_{ci, ky, kx} w[o][ci][ky][kx] · x[ci][oy·s + ky − p][ox·s + kx − p]`:
//!   one f32 accumulator per output element, starting at `+0`, terms added in
//!   increasing `(ci, ky, kx)` (lexicographic) order, each term one f32 product of
//!   the widened weight and the input value. Zero padding: a term whose input
//!   position is outside the map is `w · 0 = ±0`; adding `±0` to an accumulator that
//!   started at `+0` never changes its bits (round-to-nearest gives `+0 + −0 = +0`,
//!   and an exact cancellation gives `+0`), so the kernel skips those terms and the
//!   result is the same as if it had added them. Then `acc · scale[o]`, then
//!   `+ bias[o]` (two roundings, no FMA), as in the dense layer.
//! * **VJP** `gx[ci][iy][ix] = Σ w[o][ci][ky][kx] · c[o][oy][ox]` with
//!   `c = scale[o] · gy[o][oy][ox]` (one f32 product, the dense layer's coefficient)
//!   over every `(o, ky, kx)` with `iy = oy·s + ky − p`, `ix = ox·s + kx − p`: one
//!   accumulator per input element starting at `+0`, terms in increasing
//!   `(o, ky, kx)` order. Only terms whose output position `(oy, ox)` exists are
//!   summed (padding has no gradient); terms with a zero coefficient are added like
//!   any other (unlike the dense VJP, nothing is skipped: a per-pixel test would cost
//!   more than it saves, and adding `±0` does not change the bits anyway).
//! * **Upsample ×2** forward copies `x[c][i][j]` to the four outputs
//!   `y[c][2i + a][2j + b]`; the VJP is
//!   `gx[c][i][j] = ((gy[2i][2j] + gy[2i][2j+1]) + gy[2i+1][2j]) + gy[2i+1][2j+1]`.
//!
//! Vectorisation: the order above is per output (forward) or per input (VJP)
//! element; neighbouring elements are independent chains. The forward pass keeps a
//! block of 4 output channels (on the Cortex-M4F one for each channel left over)
//! × 8 adjacent output columns in registers and runs every `(ci, ky, kx)` over it
//! (one input window load feeds 32 multiply–adds, the 8 lanes are one AVX or two
//! SSE registers). The windows of one input row are read from a small zero-padded
//! copy of the positions the block needs (or, on a host, from the row itself when
//! none of them is padding), so no lane tests its bounds. The VJP loops
//! `o, ci, ky, kx, row` and runs its innermost loop along a row of inputs
//! (`gx[ix0..] += w · c[ox0..]`, contiguous with stride 1). Neither reorders any
//! element's sum, so both give the documented bits (`core/tests/conv.rs` checks
//! them against a plain implementation of the order, bit for bit).

use serde::{Deserialize, Serialize};

use crate::kernels::f32_at;

/// Largest accepted convolution kernel side.
pub const MAX_KERNEL: u16 = 7;

/// A 2-D convolution with int8 weights, one f32 scale per output channel and an
/// f32 bias, all borrowed from the model file bytes. Square kernel, equal stride and
/// zero padding on both axes; input and output channel-major (CHW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Conv2d<'a> {
    /// Input channels.
    pub in_channels: u16,
    /// Output channels.
    pub out_channels: u16,
    /// Input height (rows).
    pub height: u16,
    /// Input width (columns).
    pub width: u16,
    /// Kernel side `k` (the kernel is `k × k`; `1 ..= MAX_KERNEL`).
    pub kernel: u16,
    /// Stride `s` on both axes (1 or 2).
    pub stride: u16,
    /// Zero padding `p` on every side (`2p ≤ k`).
    pub padding: u16,
    /// `out × in × k × k` two's-complement int8 weights, `[out][in][ky][kx]`.
    pub weights: &'a [u8],
    /// `out` little-endian f32 scales (dequantised weight = `w · scale`).
    pub scales: &'a [u8],
    /// `out` little-endian f32 biases.
    pub bias: &'a [u8],
}

/// Nearest-neighbour upsampling by two on both axes: `channels × height × width`
/// in, `channels × 2·height × 2·width` out, channel-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upsample2x {
    /// Channels.
    pub channels: u16,
    /// Input height.
    pub height: u16,
    /// Input width.
    pub width: u16,
}

/// Output size along one axis: `⌊(n + 2p − k) / s⌋ + 1`, or 0 when the kernel is
/// larger than the padded input or the stride is 0 (rejected by validation).
pub(crate) fn conv_out(n: usize, k: usize, s: usize, p: usize) -> usize {
    let padded = n + 2 * p;
    if s == 0 || k == 0 || padded < k {
        0
    } else {
        (padded - k) / s + 1
    }
}

/// Output positions `o` in `lo..hi` whose input position `o·s + off − p` lies in
/// `0..n` (`out` outputs in all).
#[inline]
fn valid_range(n: usize, out: usize, off: usize, s: usize, p: usize) -> (usize, usize) {
    let s = s.max(1);
    let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
    let hi = if n + p > off {
        ((n + p - off - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo, hi.max(lo))
}

/// The shape parameters of a conv layer as `usize`.
#[derive(Clone, Copy)]
struct Geometry {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Conv2d<'_> {
    fn geometry(&self) -> Geometry {
        let (h, w) = (usize::from(self.height), usize::from(self.width));
        let (k, s, p) = (
            usize::from(self.kernel),
            usize::from(self.stride),
            usize::from(self.padding),
        );
        Geometry {
            cin: usize::from(self.in_channels),
            cout: usize::from(self.out_channels),
            h,
            w,
            k,
            s,
            p,
            oh: conv_out(h, k, s, p),
            ow: conv_out(w, k, s, p),
        }
    }

    /// Output height.
    pub fn out_height(&self) -> usize {
        self.geometry().oh
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        self.geometry().ow
    }

    /// Input length `in_channels × height × width`.
    pub fn input_len(&self) -> usize {
        let g = self.geometry();
        g.cin * g.h * g.w
    }

    /// Output length `out_channels × out_height × out_width`.
    pub fn output_len(&self) -> usize {
        let g = self.geometry();
        g.cout * g.oh * g.ow
    }

    /// Stored weights `out × in × k × k`.
    pub fn weight_len(&self) -> u64 {
        let k = u64::from(self.kernel);
        u64::from(self.out_channels) * u64::from(self.in_channels) * k * k
    }

    /// Nominal multiply–accumulates of one forward pass (padded positions included).
    pub fn macs(&self) -> u64 {
        let g = self.geometry();
        self.weight_len() * (g.oh as u64) * (g.ow as u64)
    }

    /// The quantised weight `w[o][ci][ky][kx]` (0 when out of range).
    pub fn weight(&self, o: usize, ci: usize, ky: usize, kx: usize) -> i8 {
        let g = self.geometry();
        if ci >= g.cin || ky >= g.k || kx >= g.k {
            return 0;
        }
        let idx = ((o * g.cin + ci) * g.k + ky) * g.k + kx;
        self.weights.get(idx).map_or(0, |&b| b as i8)
    }

    /// The scale of output channel `o` (0.0 when out of range).
    pub fn scale(&self, o: usize) -> f32 {
        f32_at(self.scales, o)
    }

    /// The bias of output channel `o` (0.0 when out of range).
    pub fn bias(&self, o: usize) -> f32 {
        f32_at(self.bias, o)
    }

    /// The int8 weights of output channel `o` (`in × k × k` bytes; empty when out
    /// of range).
    fn channel_weights(&self, o: usize, g: &Geometry) -> &[u8] {
        let n = g.cin * g.k * g.k;
        self.weights.get(o * n..(o + 1) * n).unwrap_or(&[])
    }

    /// Forward pass (validated shapes assumed; a mismatch computes what fits and
    /// never panics).
    ///
    /// Register blocking: a block of up to `OBLK` output channels × `CHUNK`
    /// adjacent output columns of one row is accumulated in registers over every
    /// `(ci, ky, kx)` in order, then stored. Each input window is loaded once for
    /// the whole channel block. Window lanes outside the input are 0 (adding
    /// `w · 0` leaves the bits unchanged, see the module documentation), rows
    /// outside the input are skipped. On the Cortex-M4F the channels left over
    /// after the full blocks run one at a time, so that a layer with fewer than
    /// `OBLK` output channels (every denoiser's last layer has as many as the
    /// image) does no multiply–adds for channels it does not have. Each output's
    /// sum is the same whatever block it runs in, so the block sizes do not change
    /// any bits.
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let g = self.geometry();
        let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
        if in_plane == 0 || out_plane == 0 || kk == 0 {
            return;
        }
        let x = x.get(..g.cin * in_plane).unwrap_or(x);
        let mut o0 = 0;
        while o0 < g.cout {
            let left = g.cout - o0;
            let Some(yblock) = y.get_mut(o0 * out_plane..) else {
                return;
            };
            // On a host the channels left over run in a full block all the same:
            // a shorter one leaves too few independent accumulator chains to hide
            // the float adds' latency (measured: a one-channel layer 12 % slower in
            // a block of one than in a block of four with three idle channels). On
            // the Cortex-M4F every idle channel costs its multiply–adds (the same
            // layer twice as fast in a block of one: QEMU, docs/BENCHMARKS.md).
            // Blocks of two would save little more for 1.4 KB of flash in every
            // firmware.
            o0 += if left >= OBLK || !cfg!(target_arch = "arm") {
                self.forward_block::<OBLK>(&g, x, yblock, o0)
            } else {
                self.forward_block::<1>(&g, x, yblock, o0)
            };
        }
    }

    /// Output channels `o0 .. o0 + B` of [`Conv2d::forward`] into `yblock` (which
    /// starts at channel `o0`'s plane); returns `B`.
    #[inline(always)]
    fn forward_block<const B: usize>(
        &self,
        g: &Geometry,
        x: &[f32],
        yblock: &mut [f32],
        o0: usize,
    ) -> usize {
        let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
        let wb: [&[u8]; B] = core::array::from_fn(|b| self.channel_weights(o0 + b, g));
        // Padded input positions one chunk's windows read, over every kx.
        let need = ((CHUNK - 1) * g.s + g.k).min(SEGMENT);
        let mut seg = [0.0f32; SEGMENT];
        for oy in 0..g.oh {
            let mut ox0 = 0;
            while ox0 < g.ow {
                let lanes = CHUNK.min(g.ow - ox0);
                let mut acc = [[0.0f32; CHUNK]; B];
                for (ci, xplane) in x.chunks_exact(in_plane).enumerate() {
                    for ky in 0..g.k {
                        let Some(iy) = (oy * g.s + ky).checked_sub(g.p).filter(|&v| v < g.h) else {
                            continue;
                        };
                        let xrow = xplane.get(iy * g.w..(iy + 1) * g.w).unwrap_or(&[]);
                        // The padded positions the chunk's windows read: on a
                        // host straight from the row when they are all inside
                        // it, else (and always on the Cortex-M4F, where reading
                        // a stack array is cheaper: measured under QEMU) copied
                        // once, zero-padded, for every kx.
                        let base = ox0 * g.s;
                        let inside = if cfg!(target_arch = "arm") {
                            None
                        } else {
                            base.checked_sub(g.p).and_then(|a| xrow.get(a..a + need))
                        };
                        let src: &[f32] = match inside {
                            Some(inside) => inside,
                            None => {
                                fill_segment(&mut seg, xrow, base, g.p, need);
                                seg.get(..need).unwrap_or(&seg)
                            }
                        };
                        for kx in 0..g.k {
                            let win = window(src, kx, g.s);
                            let at = ci * kk + ky * g.k + kx;
                            let wv: [f32; B] =
                                wb.map(|wo| wo.get(at).map_or(0.0, |&v| f32::from(v as i8)));
                            for (a, &wi) in acc.iter_mut().zip(&wv) {
                                for (al, &xl) in a.iter_mut().zip(&win) {
                                    *al += wi * xl;
                                }
                            }
                        }
                    }
                }
                for (b, (yplane, a)) in yblock.chunks_exact_mut(out_plane).zip(&acc).enumerate() {
                    let (sc, bias) = (self.scale(o0 + b), self.bias(o0 + b));
                    let start = oy * g.ow + ox0;
                    if let Some(dst) = yplane.get_mut(start..start + lanes) {
                        for (d, &v) in dst.iter_mut().zip(a) {
                            *d = v * sc + bias;
                        }
                    }
                }
                ox0 += lanes;
            }
        }
        B
    }

    /// `gx = ∂L/∂x` from `gy = ∂L/∂y` in the documented order.
    pub(crate) fn vjp(&self, gy: &[f32], gx: &mut [f32]) {
        gx.fill(0.0);
        let g = self.geometry();
        let (in_plane, out_plane, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
        if in_plane == 0 || out_plane == 0 || kk == 0 {
            return;
        }
        let wlen = g.cin * kk;
        for (o, (gyplane, wo)) in gy
            .chunks_exact(out_plane)
            .zip(self.weights.chunks_exact(wlen))
            .enumerate()
            .take(g.cout)
        {
            let sc = self.scale(o);
            for (gxplane, wc) in gx.chunks_exact_mut(in_plane).zip(wo.chunks_exact(kk)) {
                for (ky, wrow) in wc.chunks_exact(g.k).enumerate() {
                    let (oy0, oy1) = valid_range(g.h, g.oh, ky, g.s, g.p);
                    for (kx, &wb) in wrow.iter().enumerate() {
                        let wv = f32::from(wb as i8);
                        let (ox0, ox1) = valid_range(g.w, g.ow, kx, g.s, g.p);
                        if ox0 >= ox1 {
                            continue;
                        }
                        let ix0 = (ox0 * g.s + kx).saturating_sub(g.p);
                        for oy in oy0..oy1 {
                            let iy = (oy * g.s + ky).saturating_sub(g.p);
                            let (Some(gxrow), Some(gyrow)) = (
                                gxplane.get_mut(iy * g.w + ix0..(iy + 1) * g.w),
                                gyplane.get(oy * g.ow + ox0..oy * g.ow + ox1),
                            ) else {
                                continue;
                            };
                            row_scatter(gxrow, gyrow, wv, sc, g.s);
                        }
                    }
                }
            }
        }
    }
}

/// Output channels accumulated together by the forward pass.
const OBLK: usize = 4;
/// Adjacent columns accumulated together (one register block).
const CHUNK: usize = 8;

/// Padded input positions one chunk reads: `(CHUNK − 1)·s + k` with `s ≤ 2` and
/// `k ≤ MAX_KERNEL` (validation bounds both).
const SEGMENT: usize = (CHUNK - 1) * 2 + MAX_KERNEL as usize;

/// `seg[t] = row[base + t − p]` for `t < need`, 0 where that position is padding:
/// the chunk's input once, so that every window is read without a bounds test per
/// lane. (`base = ox0·s` is the chunk's first window in padded coordinates.)
#[inline(always)]
fn fill_segment(seg: &mut [f32; SEGMENT], row: &[f32], base: usize, p: usize, need: usize) {
    let need = need.min(SEGMENT);
    // Inside the row: padded positions p .. p + len.
    let t0 = p.saturating_sub(base).min(need);
    let t1 = (p + row.len()).saturating_sub(base).clamp(t0, need);
    let (head, rest) = seg.split_at_mut(t0);
    head.fill(0.0);
    let (mid, tail) = rest.split_at_mut(t1 - t0);
    let src = (base + t0)
        .checked_sub(p)
        .and_then(|a| row.get(a..a + mid.len()));
    match src {
        Some(src) => mid.copy_from_slice(src),
        None => mid.fill(0.0),
    }
    if let Some(tail) = tail.get_mut(..need - t1) {
        tail.fill(0.0);
    }
}

/// `win[l] = seg[kx + l·s]` (the window of kernel column `kx`; 0 past the segment).
#[inline(always)]
fn window(seg: &[f32], kx: usize, s: usize) -> [f32; CHUNK] {
    if s == 1 {
        if let Some(w) = seg
            .get(kx..kx + CHUNK)
            .and_then(|v| <&[f32; CHUNK]>::try_from(v).ok())
        {
            return *w;
        }
    } else if s == 2 {
        if let Some(w) = seg
            .get(kx..kx + 2 * CHUNK - 1)
            .and_then(|v| <&[f32; 2 * CHUNK - 1]>::try_from(v).ok())
        {
            return core::array::from_fn(|l| w.get(2 * l).copied().unwrap_or(0.0));
        }
    }
    core::array::from_fn(|l| seg.get(kx + l * s).copied().unwrap_or(0.0))
}

/// `gx[j·s] += w · (sc · gy[j])` for every `j` of `gy`.
#[inline(always)]
fn row_scatter(gx: &mut [f32], gy: &[f32], wv: f32, sc: f32, s: usize) {
    if s == 1 {
        for (g, &c) in gx.iter_mut().zip(gy) {
            *g += wv * (sc * c);
        }
    } else {
        for (g, &c) in gx.iter_mut().step_by(s.max(1)).zip(gy) {
            *g += wv * (sc * c);
        }
    }
}

impl Upsample2x {
    /// Input length `channels × height × width`.
    pub fn input_len(&self) -> usize {
        usize::from(self.channels) * usize::from(self.height) * usize::from(self.width)
    }

    /// Output length (four times the input length).
    pub fn output_len(&self) -> usize {
        4 * self.input_len()
    }

    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let w = usize::from(self.width);
        if w == 0 {
            return;
        }
        let rows = usize::from(self.channels) * usize::from(self.height);
        for (xrow, ypair) in x.chunks_exact(w).zip(y.chunks_exact_mut(4 * w)).take(rows) {
            let (y0, y1) = ypair.split_at_mut(2 * w);
            let (pairs, _) = y0.as_chunks_mut::<2>();
            for (pair, &v) in pairs.iter_mut().zip(xrow) {
                *pair = [v, v];
            }
            y1.copy_from_slice(y0);
        }
    }

    pub(crate) fn vjp(&self, gy: &[f32], gx: &mut [f32]) {
        let w = usize::from(self.width);
        if w == 0 {
            return;
        }
        let rows = usize::from(self.channels) * usize::from(self.height);
        for (gxrow, gypair) in gx
            .chunks_exact_mut(w)
            .zip(gy.chunks_exact(4 * w))
            .take(rows)
        {
            let (g0, g1) = gypair.split_at(2 * w);
            let (top, _) = g0.as_chunks::<2>();
            let (bottom, _) = g1.as_chunks::<2>();
            for ((g, &[a, b]), &[c, d]) in gxrow.iter_mut().zip(top).zip(bottom) {
                *g = ((a + b) + c) + d;
            }
        }
    }
}
