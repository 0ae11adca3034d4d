//! Pluggable kernels: the seam where a host-side or device crate may substitute faster
//! implementations (e.g. SIMD chosen at run time) of the batched dense layer, which
//! is nearly all of a purification's arithmetic, and of the int8-activation layers.
//!
//! The numeric definition does not move: an implementation must give, for every
//! input, exactly the bits of [`Portable`] (the kernels in this crate, documented in
//! `kernels.rs` and on [`Dense`]). In short, for each sample `b` of the batch:
//!
//! * forward: `y[o] = dot(w[o], x) * scale[o] + bias[o]` (a separate multiply and
//!   add, never fused), where `dot` accumulates element `i` into partial sum
//!   `i % 16` (in increasing `i`, each step a product then a sum) and combines the
//!   sixteen partial sums as `s[k] + s[k+8]`, then `+4`, `+2`, `+1`;
//! * VJP: `c[o] = scale[o] * gy[o]`, then `gx[i] = (…((0 + w[o₀][i]·c[o₀]) +
//!   w[o₁][i]·c[o₁]) + …)` over the rows in increasing `o`. Rows with `c[o] = 0` may
//!   be skipped or not: the sum starts at `+0`, so it can never be `−0`, and adding
//!   `±0` to it changes no bit.
//!
//! The int8-activation layers (`int8.rs`) go through the same seam, one sample at a
//! time: their integer sums are exact, so an implementation may sum in any order and
//! still give the core's bits (`pursamere-m4` runs them on the Cortex-M4's `SMLAD`).
//! Their methods have default bodies (the core's kernels), so a host crate that only
//! speeds up the float dense layer implements the two dense methods alone.
//!
//! The core itself only ever uses [`Portable`] (it has no `unsafe` and no run-time
//! feature detection); [`crate::Model::purify_with`],
//! [`crate::Model::ere_value_and_grad_with`] and [`crate::Model::classify_with`] take
//! another implementation.

use crate::layers::{Dense, Int8Conv2d, Int8Dense};

/// Batched kernels of a dense layer. `xs`/`gxs` hold `batch` samples of
/// `layer.inputs` floats one after another, `ys`/`gys` `batch` samples of
/// `layer.outputs` floats; `rowbuf` is scratch the implementation may use (its
/// contents on entry and exit do not matter; it may be empty). Lengths are the
/// caller's contract; an implementation must not panic on a mismatch.
pub trait DenseKernels {
    /// Forward pass of `batch` samples, bit-identical to [`Portable`].
    fn dense_forward_batch(
        &self,
        layer: &Dense<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    );

    /// VJP with respect to the input of `batch` samples, bit-identical to
    /// [`Portable`].
    fn dense_vjp_batch(
        &self,
        layer: &Dense<'_>,
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    );

    /// Forward pass of one sample through an int8-activation dense layer (its
    /// integer sums are exact, so any summation order gives the core's bits); with
    /// `relu_input`, of `relu(x)`: the ReLU fused into the input quantisation
    /// ([`crate::quantize_relu_activation`]). Default: the core's kernel.
    fn int8_dense_forward(
        &self,
        layer: &Int8Dense<'_>,
        x: &[f32],
        y: &mut [f32],
        relu_input: bool,
    ) {
        layer.forward_with(x, y, relu_input);
    }

    /// Two int8-activation dense layers in a row, one sample: `first` on `x` (on
    /// `relu(x)` with `relu_input`), then `second` on its output (through a ReLU with
    /// `relu_between`). `io` holds `x` (`first.dense.inputs` floats) on entry and
    /// `second`'s output (`second.dense.outputs` floats) on return; `mid` is scratch
    /// of at least `first.dense.outputs` floats (its contents on return do not
    /// matter). The second layer's first step quantises the first's output, so an
    /// implementation may write that output already quantised (int8 outputs, as
    /// CMSIS-NN's layers have) and save a float store, a load and a pass; the bits
    /// are those of the two layers in turn ([`int8_dense_pair_in_turn`], the default).
    fn int8_dense_pair_forward(
        &self,
        first: &Int8Dense<'_>,
        second: &Int8Dense<'_>,
        relu_input: bool,
        relu_between: bool,
        io: &mut [f32],
        mid: &mut [f32],
    ) {
        int8_dense_pair_in_turn(self, first, second, relu_input, relu_between, io, mid);
    }

    /// Forward pass of one sample through an int8-activation convolution, of
    /// `relu(x)` with `relu_input` (as [`DenseKernels::int8_dense_forward`]).
    /// Default: the core's kernel.
    fn int8_conv_forward(
        &self,
        layer: &Int8Conv2d<'_>,
        x: &[f32],
        y: &mut [f32],
        relu_input: bool,
    ) {
        layer.forward_with(x, y, relu_input);
    }
}

/// [`DenseKernels::int8_dense_pair_forward`] as its definition states it: `first`
/// into `mid`, then `second` from `mid` into `io`, each through
/// [`DenseKernels::int8_dense_forward`] of `kernels`. Buffers too short for the
/// layers leave `io` as it is.
pub fn int8_dense_pair_in_turn<K: DenseKernels + ?Sized>(
    kernels: &K,
    first: &Int8Dense<'_>,
    second: &Int8Dense<'_>,
    relu_input: bool,
    relu_between: bool,
    io: &mut [f32],
    mid: &mut [f32],
) {
    let n_in = first.dense.inputs as usize;
    let n_mid = first.dense.outputs as usize;
    let n_out = second.dense.outputs as usize;
    let (Some(x), Some(m)) = (io.get(..n_in), mid.get_mut(..n_mid)) else {
        return;
    };
    kernels.int8_dense_forward(first, x, m, relu_input);
    if let Some(y) = io.get_mut(..n_out) {
        kernels.int8_dense_forward(second, m, y, relu_between);
    }
}

/// The core's own kernels: portable Rust with the summation order written out, the
/// numeric definition every other implementation must match.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl DenseKernels for Portable {
    fn dense_forward_batch(
        &self,
        layer: &Dense<'_>,
        xs: &[f32],
        ys: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        layer.forward_batch(xs, ys, batch, rowbuf);
    }

    fn dense_vjp_batch(
        &self,
        layer: &Dense<'_>,
        gys: &[f32],
        gxs: &mut [f32],
        batch: usize,
        rowbuf: &mut [f32],
    ) {
        layer.vjp_batch(gys, gxs, batch, rowbuf);
    }
}
