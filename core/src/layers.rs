//! The layer set: what the model file stores and what the kernels run.
//!
//! Every layer has a forward pass and a vector–Jacobian product (VJP) with respect
//! to its *input* (never its weights: the core does not train). A network stores the
//! input of every layer in an activation buffer during the forward pass so the VJP
//! can read it; the buffer layout is computed from [`Layer::output_len`] alone, so a
//! new layer kind is one new enum variant plus its two kernels, and the public API
//! does not change. Convolutions and upsampling live in `conv` (see `docs/CONV.md`).
//!
//! Variant order is the file encoding (postcard writes the variant index): `Dense`
//! = 0 and `Relu` = 1 since format version 1, `Conv2d` = 2 and `Upsample2x` = 3
//! since version 2, `Int8Dense` = 4 and `Int8Conv2d` = 5 since version 4. New
//! variants go at the end.

use serde::{Deserialize, Serialize};

use crate::backend::DenseKernels;
pub use crate::conv::{Conv2d, Upsample2x};
pub use crate::int8::{Int8Conv2d, Int8Dense};
use crate::kernels::{
    axpy, axpy4, dot, dot4, dot_two_passes, dot_two_passes_with, f32_at, widen_row, HALF_LANES,
};

/// One layer of a network.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Layer<'a> {
    /// Fully connected: `y[o] = scale[o] · Σ_i w[o][i] x[i] + bias[o]`.
    Dense(#[serde(borrow)] Dense<'a>),
    /// `y = max(x, 0)` elementwise; its length (and shape) is that of the previous
    /// layer.
    Relu,
    /// 2-D convolution over a channel-major feature map (format version 2).
    Conv2d(#[serde(borrow)] Conv2d<'a>),
    /// Nearest-neighbour upsampling by two (format version 2).
    Upsample2x(Upsample2x),
    /// Dense layer on int8-quantised inputs, integer accumulation (format version
    /// 4; classifier only; see `int8`).
    Int8Dense(#[serde(borrow)] Int8Dense<'a>),
    /// Convolution on int8-quantised inputs, integer accumulation (format version
    /// 4; classifier only).
    Int8Conv2d(#[serde(borrow)] Int8Conv2d<'a>),
}

/// A dense layer with int8 weights, one f32 scale per output row and an f32 bias,
/// all borrowed from the model file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dense<'a> {
    /// Input length.
    pub inputs: u32,
    /// Output length.
    pub outputs: u32,
    /// `outputs × inputs` two's-complement int8 weights, row-major `[out][in]`.
    pub weights: &'a [u8],
    /// `outputs` little-endian f32 scales (dequantised weight = `w · scale`).
    pub scales: &'a [u8],
    /// `outputs` little-endian f32 biases.
    pub bias: &'a [u8],
}

impl Dense<'_> {
    /// The quantised weight `w[o][i]` (0 when out of range).
    pub fn weight(&self, o: usize, i: usize) -> i8 {
        let idx = o
            .checked_mul(self.inputs as usize)
            .and_then(|v| v.checked_add(i));
        idx.and_then(|k| self.weights.get(k))
            .map_or(0, |&b| b as i8)
    }

    /// The scale of output row `o` (0.0 when out of range).
    pub fn scale(&self, o: usize) -> f32 {
        f32_at(self.scales, o)
    }

    /// The bias of output row `o` (0.0 when out of range).
    pub fn bias(&self, o: usize) -> f32 {
        f32_at(self.bias, o)
    }

    /// `y = W x` with the dequantising scale and bias (validated shapes assumed;
    /// a mismatch computes on the common prefix and never panics).
    pub(crate) fn forward(&self, x: &[f32], y: &mut [f32]) {
        let n = self.inputs as usize;
        if n == 0 {
            return;
        }
        let mut rows = self.weights.chunks_exact(n);
        // On a 32-bit Arm core (the Cortex-M4F has 32 single-precision registers) one
        // row's 16 partial sums stay in registers where four rows' 64 would live in
        // memory; elsewhere four rows share each load of `x`. The same bits.
        if cfg!(target_arch = "arm") {
            for (yo, row) in y.iter_mut().zip(rows) {
                *yo = dot_two_passes(row, x);
            }
            self.apply_scale_bias(y);
            return;
        }
        let mut blocks = y.chunks_exact_mut(4);
        for yb in &mut blocks {
            let (Some(r0), Some(r1), Some(r2), Some(r3)) =
                (rows.next(), rows.next(), rows.next(), rows.next())
            else {
                return;
            };
            yb.copy_from_slice(&dot4([r0, r1, r2, r3], x));
        }
        for (yo, row) in blocks.into_remainder().iter_mut().zip(rows) {
            *yo = dot(row, x);
        }
        self.apply_scale_bias(y);
    }

    /// [`Dense`]'s forward pass in the core's two-pass order (what it runs on a 32-bit
    /// Arm core) with each pass supplied by a device kernel: `pass(w, x, chunks)` must
    /// return, for each lane `l < 8`, `Σ_{c < chunks} w[16c + l] · x[16c + l]`
    /// accumulated from `+0` in increasing `c`, each weight widened exactly and each
    /// product and sum one f32 rounding (`w` and `x` start at the pass's first lane;
    /// the row's first pass starts at element 0, its second at element 8). The tail,
    /// the reduction tree, the scale and the bias are the core's, so a kernel that
    /// keeps this contract gives the core's bits.
    pub fn forward_with<F>(&self, x: &[f32], y: &mut [f32], mut pass: F)
    where
        F: FnMut(&[u8], &[f32], usize) -> [f32; HALF_LANES],
    {
        let n = self.inputs as usize;
        if n == 0 {
            return;
        }
        for (yo, row) in y.iter_mut().zip(self.weights.chunks_exact(n)) {
            *yo = dot_two_passes_with(row, x, &mut pass);
        }
        self.apply_scale_bias(y);
    }

    /// `gx = Wᵀ (scale ⊙ gy)`: rows in increasing order, four at a time. Rows whose
    /// coefficient is exactly zero (common after a ReLU) are skipped: they would add
    /// `±0` and change nothing but, at most, the sign of an exact zero.
    pub(crate) fn vjp(&self, gy: &[f32], gx: &mut [f32]) {
        self.vjp_with(gy, gx, axpy4::<u8>);
    }

    /// [`Dense`]'s VJP (`gx = Wᵀ (scale ⊙ gy)`, the core's order) with the four-row
    /// update supplied by a device kernel: `rows4(gx, rows, c)` must set every
    /// `gx[i]` (for `i` below the shortest of `gx` and the rows) to
    /// `(((gx[i] + w0[i]·c0) + w1[i]·c1) + w2[i]·c2) + w3[i]·c3`, with each weight
    /// widened exactly and each product and sum one f32 rounding. The rest — which
    /// rows are skipped (coefficient exactly zero), how they are grouped, the rows
    /// left over — is the core's, so a kernel that keeps this contract gives the
    /// core's bits.
    pub fn vjp_with<F>(&self, gy: &[f32], gx: &mut [f32], mut rows4: F)
    where
        F: FnMut(&mut [f32], [&[u8]; 4], [f32; 4]),
    {
        gx.fill(0.0);
        let n = self.inputs as usize;
        if n == 0 {
            return;
        }
        let mut pending: [(&[u8], f32); 4] = [(&[], 0.0); 4];
        let mut count = 0usize;
        for (o, (row, &g)) in self.weights.chunks_exact(n).zip(gy).enumerate() {
            let c = self.scale(o) * g;
            if c == 0.0 {
                continue;
            }
            if let Some(slot) = pending.get_mut(count) {
                *slot = (row, c);
                count += 1;
            }
            if count == 4 {
                let [p0, p1, p2, p3] = pending;
                rows4(gx, [p0.0, p1.0, p2.0, p3.0], [p0.1, p1.1, p2.1, p3.1]);
                count = 0;
            }
        }
        for &(row, c) in pending.iter().take(count) {
            axpy(gx, row, c);
        }
    }
}

/// Scratch floats the batched kernels use to hold four rows widened to f32.
pub(crate) fn row_buffer_len(max_inputs: usize) -> usize {
    4 * max_inputs
}

/// Four row buffers of `n` floats carved from `rowbuf`, when the batched path
/// applies (at least two samples and a large enough buffer).
fn row_buffers(rowbuf: &mut [f32], n: usize, batch: usize) -> Option<[&mut [f32]; 4]> {
    if batch < 2 {
        return None;
    }
    let rb = rowbuf.get_mut(..row_buffer_len(n))?;
    let (r0, rest) = rb.split_at_mut(n);
    let (r1, rest) = rest.split_at_mut(n);
    let (r2, r3) = rest.split_at_mut(n);
    Some([r0, r1, r2, r3])
}

impl Dense<'_> {
    fn apply_scale_bias(&self, y: &mut [f32]) {
        for (o, yo) in y.iter_mut().enumerate() {
            *yo = *yo * self.scale(o) + self.bias(o);
        }
    }

    /// Forward pass of `batch` samples stored one after another in `xs`/`ys`.
    /// With `rowbuf` (at least `4 × inputs` floats) and `batch ≥ 2`, each block of
    /// four rows is widened to f32 once and reused for every sample; the arithmetic
    /// per sample is exactly that of [`Dense::forward`], so the bits are the same.
    pub(crate) fn forward_batch(
        &self,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        let (n, m) = (self.inputs as usize, self.outputs as usize);
        if n == 0 || m == 0 {
            return;
        }
        let Some([r0, r1, r2, r3]) = row_buffers(rowbuf, n, batch) else {
            for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                self.forward(x, y);
            }
            return;
        };
        let mut rows = self.weights.chunks_exact(n);
        let mut o = 0usize;
        while o + 4 <= m {
            let (Some(w0), Some(w1), Some(w2), Some(w3)) =
                (rows.next(), rows.next(), rows.next(), rows.next())
            else {
                return;
            };
            widen_row(w0, r0);
            widen_row(w1, r1);
            widen_row(w2, r2);
            widen_row(w3, r3);
            for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                if let Some(yb) = y.get_mut(o..o + 4) {
                    yb.copy_from_slice(&dot4([&*r0, &*r1, &*r2, &*r3], x));
                }
            }
            o += 4;
        }
        for row in rows {
            widen_row(row, r0);
            for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                if let Some(yo) = y.get_mut(o) {
                    *yo = dot(&*r0, x);
                }
            }
            o += 1;
        }
        for y in ys.chunks_exact_mut(m).take(batch) {
            self.apply_scale_bias(y);
        }
    }

    /// VJP of `batch` samples; bit-identical per sample to [`Dense::vjp`] (each
    /// sample sees its non-zero rows in increasing order, added one after another).
    pub(crate) fn vjp_batch(&self, gys: &[f32], gxs: &mut [f32], batch: usize, rowbuf: &mut [f32]) {
        let (n, m) = (self.inputs as usize, self.outputs as usize);
        if n == 0 || m == 0 {
            return;
        }
        let Some([r0, r1, r2, r3]) = row_buffers(rowbuf, n, batch) else {
            for (gy, gx) in gys.chunks_exact(m).zip(gxs.chunks_exact_mut(n)).take(batch) {
                self.vjp(gy, gx);
            }
            return;
        };
        for gx in gxs.chunks_exact_mut(n).take(batch) {
            gx.fill(0.0);
        }
        for (blk, wblock) in self.weights.chunks(4 * n).enumerate() {
            let o = blk * 4;
            let k = wblock.len() / n;
            let scales = [
                self.scale(o),
                self.scale(o + 1),
                self.scale(o + 2),
                self.scale(o + 3),
            ];
            let any = gys
                .chunks_exact(m)
                .take(batch)
                .any(|gy| (0..k).any(|j| gy.get(o + j).is_some_and(|&g| scales[j] * g != 0.0)));
            if !any {
                continue;
            }
            for (j, (w, r)) in wblock
                .chunks_exact(n)
                .zip([&mut *r0, &mut *r1, &mut *r2, &mut *r3])
                .enumerate()
            {
                if j < k {
                    widen_row(w, r);
                }
            }
            let rows: [&[f32]; 4] = [&*r0, &*r1, &*r2, &*r3];
            for (gy, gx) in gys.chunks_exact(m).zip(gxs.chunks_exact_mut(n)).take(batch) {
                let mut sel: [(&[f32], f32); 4] = [(&[], 0.0); 4];
                let mut count = 0usize;
                for (j, &row) in rows.iter().enumerate().take(k) {
                    let c = scales[j] * gy.get(o + j).copied().unwrap_or(0.0);
                    if c != 0.0 {
                        if let Some(slot) = sel.get_mut(count) {
                            *slot = (row, c);
                            count += 1;
                        }
                    }
                }
                if count == 4 {
                    let [p0, p1, p2, p3] = sel;
                    axpy4(gx, [p0.0, p1.0, p2.0, p3.0], [p0.1, p1.1, p2.1, p3.1]);
                } else {
                    for &(row, c) in sel.iter().take(count) {
                        axpy(gx, row, c);
                    }
                }
            }
        }
    }
}

impl Layer<'_> {
    /// Output length for a given input length.
    pub fn output_len(&self, input_len: usize) -> usize {
        match self {
            Layer::Dense(d) => d.outputs as usize,
            Layer::Relu => input_len,
            Layer::Conv2d(c) => c.output_len(),
            Layer::Upsample2x(u) => u.output_len(),
            Layer::Int8Dense(q) => q.dense.outputs as usize,
            Layer::Int8Conv2d(q) => q.conv.output_len(),
        }
    }

    /// Multiply–accumulate operations of one forward pass.
    pub fn macs(&self) -> u64 {
        match self {
            Layer::Dense(d) => u64::from(d.inputs) * u64::from(d.outputs),
            Layer::Relu | Layer::Upsample2x(_) => 0,
            Layer::Conv2d(c) => c.macs(),
            Layer::Int8Dense(q) => u64::from(q.dense.inputs) * u64::from(q.dense.outputs),
            Layer::Int8Conv2d(q) => q.conv.macs(),
        }
    }

    /// Number of stored parameters (weights, scales and biases).
    pub fn params(&self) -> u64 {
        match self {
            Layer::Dense(d) => {
                u64::from(d.inputs) * u64::from(d.outputs) + 2 * u64::from(d.outputs)
            }
            Layer::Relu | Layer::Upsample2x(_) => 0,
            Layer::Conv2d(c) => c.weight_len() + 2 * u64::from(c.out_channels),
            Layer::Int8Dense(q) => {
                let d = &q.dense;
                u64::from(d.inputs) * u64::from(d.outputs) + 2 * u64::from(d.outputs) + 1
            }
            Layer::Int8Conv2d(q) => q.conv.weight_len() + 2 * u64::from(q.conv.out_channels) + 1,
        }
    }

    /// Forward pass `x → y` (`y` has [`Layer::output_len`] elements). Lengths are
    /// the caller's contract (a validated [`crate::Model`] keeps it); a mismatch
    /// computes on the common prefix and never panics.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        match self {
            Layer::Dense(d) => d.forward(x, y),
            Layer::Relu => {
                for (yo, &xi) in y.iter_mut().zip(x) {
                    *yo = if xi > 0.0 { xi } else { 0.0 };
                }
            }
            Layer::Conv2d(c) => c.forward(x, y),
            Layer::Upsample2x(u) => u.forward(x, y),
            Layer::Int8Dense(q) => q.forward(x, y),
            Layer::Int8Conv2d(q) => q.forward(x, y),
        }
    }

    /// Forward pass of `batch` samples stored one after another (`len` inputs each).
    pub(crate) fn forward_batch<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        match self {
            Layer::Dense(d) => kernels.dense_forward_batch(d, xs, ys, batch, rowbuf),
            // Elementwise: the batch is one long vector.
            Layer::Relu => self.forward(xs, ys),
            // The int8 layers run in classifiers, one sample at a time.
            Layer::Int8Dense(q) => {
                let (n, m) = (self.input_len_hint(), self.output_len(0));
                if n == 0 || m == 0 {
                    return;
                }
                for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                    kernels.int8_dense_forward(q, x, y, false);
                }
            }
            Layer::Int8Conv2d(q) => {
                let (n, m) = (self.input_len_hint(), self.output_len(0));
                if n == 0 || m == 0 {
                    return;
                }
                for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                    kernels.int8_conv_forward(q, x, y, false);
                }
            }
            // Every weight is already reused for every output pixel: one sample at a
            // time (bit-identical by construction).
            Layer::Conv2d(_) | Layer::Upsample2x(_) => {
                let (n, m) = (self.input_len_hint(), self.output_len(0));
                if n == 0 || m == 0 {
                    return;
                }
                for (x, y) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(m)).take(batch) {
                    self.forward(x, y);
                }
            }
        }
    }

    /// VJP of `batch` samples stored one after another.
    pub(crate) fn vjp_batch<K: DenseKernels + ?Sized>(
        &self,
        kernels: &K,
        xs: &[f32],
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        match self {
            Layer::Dense(d) => kernels.dense_vjp_batch(d, gys, gxs, batch, rowbuf),
            Layer::Relu => self.vjp(xs, gys, gxs),
            Layer::Conv2d(_)
            | Layer::Upsample2x(_)
            | Layer::Int8Dense(_)
            | Layer::Int8Conv2d(_) => {
                let (n, m) = (self.input_len_hint(), self.output_len(0));
                if n == 0 || m == 0 {
                    return;
                }
                for (gy, gx) in gys.chunks_exact(m).zip(gxs.chunks_exact_mut(n)).take(batch) {
                    self.vjp(&[], gy, gx);
                }
            }
        }
    }

    /// Vector–Jacobian product: given the layer input `x` seen in the forward pass
    /// and `gy = ∂L/∂y`, writes `gx = ∂L/∂x`.
    pub fn vjp(&self, x: &[f32], gy: &[f32], gx: &mut [f32]) {
        match self {
            Layer::Dense(d) => d.vjp(gy, gx),
            Layer::Relu => {
                for ((g, &gyi), &xi) in gx.iter_mut().zip(gy).zip(x) {
                    *g = if xi > 0.0 { gyi } else { 0.0 };
                }
            }
            Layer::Conv2d(c) => c.vjp(gy, gx),
            Layer::Upsample2x(u) => u.vjp(gy, gx),
            Layer::Int8Dense(q) => q.vjp(gy, gx),
            Layer::Int8Conv2d(q) => q.vjp(gy, gx),
        }
    }

    /// Input length the layer declares (0 for ReLU, which takes any length).
    fn input_len_hint(&self) -> usize {
        match self {
            Layer::Dense(d) => d.inputs as usize,
            Layer::Relu => 0,
            Layer::Conv2d(c) => c.input_len(),
            Layer::Upsample2x(u) => u.input_len(),
            Layer::Int8Dense(q) => q.dense.inputs as usize,
            Layer::Int8Conv2d(q) => q.conv.input_len(),
        }
    }

    /// The oldest format version that can store this layer kind.
    pub fn min_format_version(&self) -> u16 {
        match self {
            Layer::Dense(_) | Layer::Relu => 1,
            Layer::Conv2d(_) | Layer::Upsample2x(_) => 2,
            Layer::Int8Dense(_) | Layer::Int8Conv2d(_) => 4,
        }
    }

    /// Short lowercase name of the layer kind (`dense`, `relu`, `conv2d`,
    /// `upsample2x`, `int8-dense`, `int8-conv2d`), for messages and listings.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Layer::Dense(_) => "dense",
            Layer::Relu => "relu",
            Layer::Conv2d(_) => "conv2d",
            Layer::Upsample2x(_) => "upsample2x",
            Layer::Int8Dense(_) => "int8-dense",
            Layer::Int8Conv2d(_) => "int8-conv2d",
        }
    }
}
