//! Running a validated network on a batch of samples: forward with stored
//! activations, and the VJP.
//!
//! Activation buffer layout for a batch of `B` samples (`B × NetInfo::acts_len`
//! floats): the network inputs of all samples (`B × input_len`, sample after
//! sample), then the outputs of layer 0 for all samples, then those of layer 1, and
//! so on. Layer `l` reads its inputs at the running offset and writes its outputs
//! right after them, so the backward pass finds every layer input where the forward
//! pass left it. With `B = 1` this is simply input, then each layer's output.

use crate::backend::DenseKernels;
use crate::format::{NetInfo, NetworkSpec};
use crate::layers::Layer;

/// Forward pass. `acts[..batch × input_len]` must hold the inputs; on return the
/// outputs are [`output`].
pub(crate) fn forward<K: DenseKernels + ?Sized>(
    kernels: &K,
    net: &NetworkSpec<'_>,
    info: &NetInfo,
    acts: &mut [f32],
    batch: usize,
    rowbuf: &mut [f32],
) {
    let mut off = 0usize;
    let mut len = info.input_len;
    for layer in &net.layers {
        let out_len = layer.output_len(len);
        let Some((head, tail)) = acts.split_at_mut_checked(off + batch * len) else {
            return;
        };
        let (Some(xs), Some(ys)) = (head.get(off..), tail.get_mut(..batch * out_len)) else {
            return;
        };
        layer.forward_batch(kernels, xs, ys, batch, rowbuf);
        off += batch * len;
        len = out_len;
    }
}

/// Forward pass of one sample that keeps no activations (classification): the
/// layers alternate between two buffers of [`NetInfo::max_width`] floats each,
/// `a` holding the input on entry. Returns the output (`output_len` floats, in `a`
/// or `b`). The same layer calls on the same values as [`forward`], so the same
/// bits, in `2 × max_width` floats instead of `acts_len` — except that a ReLU
/// feeding an int8 layer is not run: that layer quantises `relu(x)` straight from
/// `x` ([`crate::quantize_relu_activation`], the same values by construction), which
/// saves the ReLU's pass over memory; and two int8 dense layers in a row go to
/// [`DenseKernels::int8_dense_pair_forward`] as one call (by default the same two
/// layer calls).
pub(crate) fn forward_pingpong<'s, K: DenseKernels + ?Sized>(
    kernels: &K,
    net: &NetworkSpec<'_>,
    info: &NetInfo,
    a: &'s mut [f32],
    b: &'s mut [f32],
) -> &'s [f32] {
    let mut len = info.input_len;
    let (mut src, mut dst) = (a, b);
    let mut relu_pending = false;
    let mut layers = net.layers.iter().peekable();
    while let Some(layer) = layers.next() {
        if matches!(layer, Layer::Relu)
            && matches!(
                layers.peek(),
                Some(Layer::Int8Dense(_) | Layer::Int8Conv2d(_))
            )
        {
            // Fused into the next layer's input quantisation (ReLU keeps the length).
            relu_pending = true;
            continue;
        }
        let out_len = layer.output_len(len);
        // Two int8 dense layers in a row (a ReLU between them or not) go to the
        // kernels as one pair, which may pass the first one's output on already
        // quantised; the output ends in `src`, where the input was.
        if let Layer::Int8Dense(first) = layer {
            let mut ahead = layers.clone();
            let relu_between = matches!(ahead.peek(), Some(Layer::Relu));
            if relu_between {
                ahead.next();
            }
            if let Some(Layer::Int8Dense(second)) = ahead.peek() {
                let second_len = second.dense.outputs as usize;
                let (Some(io), Some(mid)) =
                    (src.get_mut(..len.max(second_len)), dst.get_mut(..out_len))
                else {
                    return &[];
                };
                kernels.int8_dense_pair_forward(first, second, relu_pending, relu_between, io, mid);
                ahead.next();
                layers = ahead;
                relu_pending = false;
                len = second_len;
                continue;
            }
        }
        let (Some(xs), Some(ys)) = (src.get(..len), dst.get_mut(..out_len)) else {
            return &[];
        };
        match layer {
            Layer::Int8Dense(q) if relu_pending => kernels.int8_dense_forward(q, xs, ys, true),
            Layer::Int8Conv2d(q) if relu_pending => kernels.int8_conv_forward(q, xs, ys, true),
            _ => layer.forward_batch(kernels, xs, ys, 1, &mut []),
        }
        relu_pending = false;
        core::mem::swap(&mut src, &mut dst);
        len = out_len;
    }
    src.get(..len).unwrap_or(&[])
}

/// The network outputs (`batch × output_len`) inside a forward-filled buffer.
pub(crate) fn output<'b>(info: &NetInfo, acts: &'b [f32], batch: usize) -> &'b [f32] {
    acts.get(batch * (info.acts_len - info.output_len)..batch * info.acts_len)
        .unwrap_or(&[])
}

/// VJP of the layer stack (without the residual skip): reads the output gradients
/// (`batch × output_len`) from the start of `ping`, uses `pong` as the second
/// buffer, and returns `true` when the input gradients (`batch × input_len`) ended
/// in `ping`, `false` when they are in `pong`.
#[allow(clippy::too_many_arguments)] // all buffers of one call; a struct would only rename them
pub(crate) fn vjp<K: DenseKernels + ?Sized>(
    kernels: &K,
    net: &NetworkSpec<'_>,
    info: &NetInfo,
    acts: &[f32],
    ping: &mut [f32],
    pong: &mut [f32],
    batch: usize,
    rowbuf: &mut [f32],
) -> bool {
    let mut in_ping = true;
    // Walk the layers backwards; `end` is where the current layer's outputs end in
    // `acts`, so its inputs are the `batch × in_len` floats before its outputs.
    let mut end = batch * info.acts_len;
    let mut out_len = info.output_len;
    for (idx, layer) in net.layers.iter().enumerate().rev() {
        let in_len = input_len_of(net, info, idx);
        let in_start = end - batch * (out_len + in_len);
        let xs = acts.get(in_start..in_start + batch * in_len).unwrap_or(&[]);
        let (src, dst) = if in_ping {
            (&*ping, &mut *pong)
        } else {
            (&*pong, &mut *ping)
        };
        let (Some(gys), Some(gxs)) = (src.get(..batch * out_len), dst.get_mut(..batch * in_len))
        else {
            return in_ping;
        };
        layer.vjp_batch(kernels, xs, gys, gxs, batch, rowbuf);
        in_ping = !in_ping;
        end -= batch * out_len;
        out_len = in_len;
    }
    in_ping
}

/// Input length of layer `idx` (the previous layer's output length).
fn input_len_of(net: &NetworkSpec<'_>, info: &NetInfo, idx: usize) -> usize {
    net.layers
        .iter()
        .take(idx)
        .fold(info.input_len, |len, l| l.output_len(len))
}
