//! Dense int8 × f32 kernels with a summation order fixed by design.
//!
//! Bit-identical results on every target need a fixed order of floating-point
//! operations; speed on the host needs SIMD. Both hold because the order below is
//! written out in the source, uses only `+` and `*` (Rust never fuses them into FMA),
//! and happens to be the order a vector unit wants:
//!
//! * **Dot products** (`dot_*`): element `i` is accumulated into partial sum `i % LANES`
//!   (`LANES = 16`), elements in increasing `i`; the sixteen partial sums are then
//!   combined in a fixed tree: `s[k] + s[k+8]`, then `+4`, `+2`, `+1`. Sixteen
//!   independent lanes map onto one AVX-512, two AVX2 or four SSE registers without
//!   reassociation, and the rows of a block of four are independent chains.
//! * **Transposed products** (`axpy_*`): `gx[i] += w[o][i] * c[o]` for rows `o` in
//!   increasing order, one row after another for each `i`. Every `i` is independent,
//!   so this vectorises over `i` with the per-element order untouched.

/// Number of interleaved partial sums in a dot product. Part of the numeric
/// definition of the format: changing it changes results.
pub(crate) const LANES: usize = 16;

/// A weight element: an int8 byte from the file, or the same value already
/// converted to f32 (the batched path converts a block of rows once and reuses it
/// for every noise sample). Both give exactly the same f32, so both paths give the
/// same bits.
pub(crate) trait Weight: Copy {
    /// The weight as f32 (exact).
    fn f(self) -> f32;
}

impl Weight for u8 {
    #[inline(always)]
    fn f(self) -> f32 {
        f32::from(self as i8)
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}

#[inline(always)]
fn w<W: Weight>(b: W) -> f32 {
    b.f()
}

/// Converts a row of int8 weight bytes to f32.
#[inline]
pub(crate) fn widen_row(src: &[u8], dst: &mut [f32]) {
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = w(b);
    }
}

/// The fixed reduction tree over the sixteen partial sums.
#[inline(always)]
fn tree_sum(a: &[f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for (k, s) in s8.iter_mut().enumerate() {
        *s = a[k] + a[k + 8];
    }
    let mut s4 = [0.0f32; 4];
    for (k, s) in s4.iter_mut().enumerate() {
        *s = s8[k] + s8[k + 4];
    }
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// `Σ_i w[i] * x[i]` in the fixed order. `w` and `x` must have equal length
/// (extra elements of the longer one are ignored).
#[inline]
pub(crate) fn dot<W: Weight>(wr: &[W], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (wc, wt) = wr.as_chunks::<LANES>();
    let (xc, xt) = x.as_chunks::<LANES>();
    for (wk, xk) in wc.iter().zip(xc) {
        for l in 0..LANES {
            acc[l] += w(wk[l]) * xk[l];
        }
    }
    for ((a, &wi), &xi) in acc.iter_mut().zip(wt).zip(xt) {
        *a += w(wi) * xi;
    }
    tree_sum(&acc)
}

/// [`dot`] for a core with few float registers (the Cortex-M4F has 32): the sixteen
/// lanes in two passes of eight over the row, so that the partial sums, the weights
/// and the inputs of a pass fit the register file. Each lane still adds its elements
/// in increasing order, and lanes never mix before the tree: the same bits.
#[inline]
pub(crate) fn dot_two_passes(wr: &[u8], x: &[f32]) -> f32 {
    dot_two_passes_with(wr, x, &mut half_pass)
}

/// Lanes of one pass of [`dot_two_passes`].
pub(crate) const HALF_LANES: usize = LANES / 2;

/// One pass of [`dot_two_passes`]: `Σ_{c < chunks} w[16c + l] · x[16c + l]` for
/// `l < 8`, each lane from `+0` in increasing `c` (`w` and `x` start at the pass's
/// first lane).
#[inline(always)]
fn half_pass(wr: &[u8], x: &[f32], chunks: usize) -> [f32; HALF_LANES] {
    let mut a = [0.0f32; HALF_LANES];
    for (wk, xk) in wr.chunks(LANES).zip(x.chunks(LANES)).take(chunks) {
        for (al, (&wi, &xi)) in a.iter_mut().zip(wk.iter().zip(xk)) {
            *al += w(wi) * xi;
        }
    }
    a
}

/// [`dot_two_passes`] with its passes computed by `pass` (a device kernel keeping
/// [`half_pass`]'s contract); the tail and the tree are the core's.
#[inline(always)]
pub(crate) fn dot_two_passes_with<F>(wr: &[u8], x: &[f32], pass: &mut F) -> f32
where
    F: FnMut(&[u8], &[f32], usize) -> [f32; HALF_LANES],
{
    let (wc, wt) = wr.as_chunks::<LANES>();
    let (xc, xt) = x.as_chunks::<LANES>();
    let chunks = wc.len().min(xc.len());
    let lo = pass(wr, x, chunks);
    let hi = pass(
        wr.get(HALF_LANES..).unwrap_or(&[]),
        x.get(HALF_LANES..).unwrap_or(&[]),
        chunks,
    );
    let mut acc = [0.0f32; LANES];
    for (a, &v) in acc.iter_mut().zip(lo.iter().chain(&hi)) {
        *a = v;
    }
    for ((a, &wi), &xi) in acc.iter_mut().zip(wt).zip(xt) {
        *a += w(wi) * xi;
    }
    tree_sum(&acc)
}

/// Four rows at once: each result is bit-identical to [`dot`] of that row; the
/// block only gives the CPU four independent dependency chains.
#[inline]
pub(crate) fn dot4<W: Weight>(rows: [&[W]; 4], x: &[f32]) -> [f32; 4] {
    let mut acc = [[0.0f32; LANES]; 4];
    let (xc, xt) = x.as_chunks::<LANES>();
    let (c0, t0) = rows[0].as_chunks::<LANES>();
    let (c1, t1) = rows[1].as_chunks::<LANES>();
    let (c2, t2) = rows[2].as_chunks::<LANES>();
    let (c3, t3) = rows[3].as_chunks::<LANES>();
    for ((((xk, w0), w1), w2), w3) in xc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..LANES {
            acc[0][l] += w(w0[l]) * xk[l];
            acc[1][l] += w(w1[l]) * xk[l];
            acc[2][l] += w(w2[l]) * xk[l];
            acc[3][l] += w(w3[l]) * xk[l];
        }
    }
    for (a, t) in acc.iter_mut().zip([t0, t1, t2, t3]) {
        for ((ai, &wi), &xi) in a.iter_mut().zip(t).zip(xt) {
            *ai += w(wi) * xi;
        }
    }
    [
        tree_sum(&acc[0]),
        tree_sum(&acc[1]),
        tree_sum(&acc[2]),
        tree_sum(&acc[3]),
    ]
}

/// `gx[i] += w[i] * c` for every `i`.
#[inline]
pub(crate) fn axpy<W: Weight>(gx: &mut [f32], wr: &[W], c: f32) {
    for (g, &wi) in gx.iter_mut().zip(wr) {
        *g += w(wi) * c;
    }
}

/// Four rows in order: bit-identical to four successive [`axpy`] calls, with one
/// load and store of `gx` instead of four.
#[inline]
pub(crate) fn axpy4<W: Weight>(gx: &mut [f32], rows: [&[W]; 4], c: [f32; 4]) {
    for ((((g, &a), &b), &d), &e) in gx
        .iter_mut()
        .zip(rows[0])
        .zip(rows[1])
        .zip(rows[2])
        .zip(rows[3])
    {
        *g = (((*g + w(a) * c[0]) + w(b) * c[1]) + w(d) * c[2]) + w(e) * c[3];
    }
}

/// `Σ_i x[i]²` in the same fixed lane order as [`dot`].
#[inline]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, xt) = x.as_chunks::<LANES>();
    for xk in xc {
        for l in 0..LANES {
            acc[l] += xk[l] * xk[l];
        }
    }
    for (a, &xi) in acc.iter_mut().zip(xt) {
        *a += xi * xi;
    }
    tree_sum(&acc)
}

/// Little-endian f32 at position `k` of a byte tensor (0.0 when out of range, which
/// validation rules out).
#[inline(always)]
pub(crate) fn f32_at(bytes: &[u8], k: usize) -> f32 {
    let (chunks, _) = bytes.as_chunks::<4>();
    chunks.get(k).map_or(0.0, |c| f32::from_le_bytes(*c))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{dot, dot_two_passes};

    /// The firmware's dot product (two passes of eight lanes) gives the bits of the
    /// one-pass definition, for lengths around the lane count and with tails.
    #[test]
    fn two_pass_dot_has_the_bits_of_dot() {
        let mut state = 0x9E37_79B9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for n in (0..70).chain([255, 256, 257, 784]) {
            let w: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            // Mixed magnitudes so that the order of additions shows in the bits.
            let x: Vec<f32> = (0..n)
                .map(|_| (next() >> 8) as f32 * f32::powi(2.0, (next() % 40) as i32 - 40))
                .collect();
            assert_eq!(
                dot_two_passes(&w, &x).to_bits(),
                dot(&w, &x).to_bits(),
                "length {n}"
            );
        }
    }
}
