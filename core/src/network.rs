//! Running a validated network: forward with stored activations, and the VJP.
//!
//! Activation buffer layout (`NetInfo::acts_len` floats): the network input, then
//! the output of every layer in order. Layer `l` reads its input at the running
//! offset and writes its output right after it, so the backward pass finds every
//! layer input where the forward pass left it.

use crate::format::{NetInfo, NetworkSpec};

/// Forward pass. `acts[..input_len]` must hold the input; on return the output is
/// `acts[acts_len - output_len .. acts_len]`.
pub(crate) fn forward(net: &NetworkSpec<'_>, info: &NetInfo, acts: &mut [f32]) {
    let mut off = 0usize;
    let mut len = info.input_len;
    for layer in &net.layers {
        let out_len = layer.output_len(len);
        let Some((head, tail)) = acts.split_at_mut_checked(off + len) else {
            return;
        };
        let (Some(x), Some(y)) = (head.get(off..), tail.get_mut(..out_len)) else {
            return;
        };
        layer.forward(x, y);
        off += len;
        len = out_len;
    }
}

/// The network output inside a forward-filled activation buffer.
pub(crate) fn output<'b>(info: &NetInfo, acts: &'b [f32]) -> &'b [f32] {
    acts.get(info.acts_len - info.output_len..info.acts_len)
        .unwrap_or(&[])
}

/// VJP of the layer stack (without the residual skip): reads `gy` (length
/// `output_len`) from `ping[..output_len]`, uses `pong` as the second buffer, and
/// returns `true` when the result (length `input_len`) ended in `ping`, `false` when
/// it is in `pong`.
pub(crate) fn vjp(
    net: &NetworkSpec<'_>,
    info: &NetInfo,
    acts: &[f32],
    ping: &mut [f32],
    pong: &mut [f32],
) -> bool {
    let mut in_ping = true;
    // Walk the layers backwards; `end` is the end offset of the current layer's
    // output in `acts`, so its input is the `in_len` floats before `end - out_len`.
    let mut end = info.acts_len;
    let mut out_len = info.output_len;
    for (idx, layer) in net.layers.iter().enumerate().rev() {
        let in_len = input_len_of(net, info, idx);
        let in_start = end - out_len - in_len;
        let x = acts.get(in_start..in_start + in_len).unwrap_or(&[]);
        let (src, dst) = if in_ping {
            (&*ping, &mut *pong)
        } else {
            (&*pong, &mut *ping)
        };
        let (Some(gy), Some(gx)) = (src.get(..out_len), dst.get_mut(..in_len)) else {
            return in_ping;
        };
        layer.vjp(x, gy, gx);
        in_ping = !in_ping;
        end -= out_len;
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
