//! Network definitions on the host: plain float networks (what is exported and
//! checkpointed) and their dfdx counterparts (what is trained and run as the float
//! reference). Widths and depth are runtime values, so sizing a model for a
//! microcontroller needs no recompilation.

use dfdx::prelude::*;
use pursamere_core::{InputShape, Layer, ModelSpec, NetworkSpec, PurifierConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::gather::{NetDevice, RowIndex};

/// One float layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FloatLayer {
    /// Dense layer, weights row-major `[outputs][inputs]`.
    Dense {
        /// Input length.
        inputs: usize,
        /// Output length.
        outputs: usize,
        /// `outputs × inputs` weights.
        weights: Vec<f32>,
        /// `outputs` biases.
        bias: Vec<f32>,
    },
    /// `max(x, 0)`.
    Relu,
    /// 2-D convolution on a channel-major map (the core's `Conv2d`): square
    /// `kernel × kernel`, equal stride and zero padding on both axes.
    Conv2d {
        /// Geometry (channels, input size, kernel, stride, padding).
        geometry: ConvGeometry,
        /// `out × in × k × k` weights, `[out][in][ky][kx]` (PyTorch's layout).
        weights: Vec<f32>,
        /// `out` biases.
        bias: Vec<f32>,
    },
    /// Nearest-neighbour ×2 upsampling of a `channels × height × width` map.
    Upsample2x {
        /// Channels.
        channels: usize,
        /// Input height.
        height: usize,
        /// Input width.
        width: usize,
    },
    /// The input quantisation of the core's int8-activation layers (which mirror as
    /// this, then the float layer): forward `q(x) / m` with the core's
    /// `quantize_activation`, backward the identity (the straight-through
    /// estimator: rounding has no useful gradient, so attacks differentiate the
    /// float layer as if the rounding were not there).
    QuantizeInput {
        /// The layer's input multiplier `m`.
        multiplier: f32,
    },
}

/// Shape parameters of a convolution, as the core's `Conv2d` declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel side `k`.
    pub kernel: usize,
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvGeometry {
    /// Output size along an axis of input size `n` (PyTorch's rule, as the core):
    /// `⌊(n + 2p − k) / s⌋ + 1`, 0 when the kernel does not fit.
    fn out(&self, n: usize) -> usize {
        let padded = n + 2 * self.padding;
        if self.stride == 0 || self.kernel == 0 || padded < self.kernel {
            0
        } else {
            (padded - self.kernel) / self.stride + 1
        }
    }

    /// Output height.
    pub fn out_height(&self) -> usize {
        self.out(self.height)
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        self.out(self.width)
    }

    /// `in_channels × height × width`.
    pub fn input_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    /// `out_channels × out_height × out_width`.
    pub fn output_len(&self) -> usize {
        self.out_channels * self.out_height() * self.out_width()
    }

    /// Weights per output channel, `in_channels × k × k`.
    pub fn fan_in(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// The im2col gather of this convolution: for column `j = (ci, ky, kx)` and
    /// output position `p = (oy, ox)`, entry `j·P + p` is the input feature it reads,
    /// `None` where it falls in the zero padding.
    pub fn im2col(&self) -> Vec<Option<usize>> {
        let (oh, ow) = (self.out_height(), self.out_width());
        let (h, w, k, s) = (self.height, self.width, self.kernel, self.stride);
        let p = oh * ow;
        let mut idx = vec![None; self.fan_in() * p];
        for ci in 0..self.in_channels {
            for ky in 0..k {
                for kx in 0..k {
                    let j = (ci * k + ky) * k + kx;
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let at = j * p + oy * ow + ox;
                            let (iy, ix) = (oy * s + ky, ox * s + kx);
                            let inside = iy >= self.padding
                                && ix >= self.padding
                                && iy - self.padding < h
                                && ix - self.padding < w;
                            if inside {
                                idx[at] =
                                    Some((ci * h + iy - self.padding) * w + ix - self.padding);
                            }
                        }
                    }
                }
            }
        }
        idx
    }
}

/// The gather of nearest-neighbour ×2 upsampling: output feature `(c, y, x)` reads
/// input feature `(c, ⌊y/2⌋, ⌊x/2⌋)`.
pub fn upsample2x_index(channels: usize, height: usize, width: usize) -> Vec<usize> {
    let (oh, ow) = (2 * height, 2 * width);
    let mut idx = Vec::with_capacity(channels * oh * ow);
    for c in 0..channels {
        for y in 0..oh {
            for x in 0..ow {
                idx.push((c * height + y / 2) * width + x / 2);
            }
        }
    }
    idx
}

/// The float mirror of a dense layer: weights `w · scale · gain`.
fn float_dense(d: &pursamere_core::Dense<'_>, gain: f32) -> FloatLayer {
    let (n, m) = (d.inputs as usize, d.outputs as usize);
    FloatLayer::Dense {
        inputs: n,
        outputs: m,
        weights: dequantise(m, n, |o, i| f32::from(d.weight(o, i)) * (d.scale(o) * gain)),
        bias: (0..m).map(|o| d.bias(o)).collect(),
    }
}

/// The float mirror of a convolution: weights `w · scale · gain`.
fn float_conv(c: &pursamere_core::Conv2d<'_>, gain: f32) -> FloatLayer {
    let geometry = ConvGeometry {
        in_channels: usize::from(c.in_channels),
        out_channels: usize::from(c.out_channels),
        height: usize::from(c.height),
        width: usize::from(c.width),
        kernel: usize::from(c.kernel),
        stride: usize::from(c.stride),
        padding: usize::from(c.padding),
    };
    let k = geometry.kernel.max(1);
    FloatLayer::Conv2d {
        geometry,
        weights: dequantise(geometry.out_channels, geometry.fan_in(), |o, j| {
            let (ci, ky, kx) = (j / (k * k), (j / k) % k, j % k);
            f32::from(c.weight(o, ci, ky, kx)) * (c.scale(o) * gain)
        }),
        bias: (0..geometry.out_channels).map(|o| c.bias(o)).collect(),
    }
}

impl FloatLayer {
    /// The length of this layer's output for an input of `input_len` values
    /// (dense and conv layers declare theirs; ReLU keeps the length).
    pub fn output_len(&self, input_len: usize) -> usize {
        match self {
            FloatLayer::Dense { outputs, .. } => *outputs,
            FloatLayer::Relu => input_len,
            FloatLayer::Conv2d { geometry, .. } => geometry.output_len(),
            FloatLayer::Upsample2x {
                channels,
                height,
                width,
            } => 4 * channels * height * width,
            FloatLayer::QuantizeInput { .. } => input_len,
        }
    }

    /// The length of input this layer declares (`None` for ReLU).
    pub fn input_len(&self) -> Option<usize> {
        match self {
            FloatLayer::Dense { inputs, .. } => Some(*inputs),
            FloatLayer::Relu => None,
            FloatLayer::Conv2d { geometry, .. } => Some(geometry.input_len()),
            FloatLayer::Upsample2x {
                channels,
                height,
                width,
            } => Some(channels * height * width),
            FloatLayer::QuantizeInput { .. } => None,
        }
    }

    /// Multiply–accumulates of one forward pass (padded positions included, as the
    /// core counts them).
    pub fn macs(&self) -> usize {
        match self {
            FloatLayer::Dense { weights, .. } => weights.len(),
            FloatLayer::Conv2d { geometry, .. } => {
                geometry.fan_in()
                    * geometry.out_channels
                    * geometry.out_height()
                    * geometry.out_width()
            }
            FloatLayer::Relu | FloatLayer::Upsample2x { .. } | FloatLayer::QuantizeInput { .. } => {
                0
            }
        }
    }

    /// Short name (`dense`, `relu`, `conv2d`, `upsample2x`, `quantize-input`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            FloatLayer::Dense { .. } => "dense",
            FloatLayer::Relu => "relu",
            FloatLayer::Conv2d { .. } => "conv2d",
            FloatLayer::Upsample2x { .. } => "upsample2x",
            FloatLayer::QuantizeInput { .. } => "quantize-input",
        }
    }
}

/// A layer of a `.psm` model that the float side (reference, training, attacks)
/// has no mirror for (a layer kind newer than this trainer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{network} layer {index} ({kind}): the float reference, training and attacks do not \
     support this layer kind"
)]
pub struct UnsupportedLayer {
    /// `denoiser` or `classifier`.
    pub network: &'static str,
    /// Layer index.
    pub index: usize,
    /// Layer kind.
    pub kind: &'static str,
}

/// A float network (mirror of the core's `NetworkSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatNet {
    /// Global residual skip `y + net(y)`.
    pub residual: bool,
    /// Layers in order.
    pub layers: Vec<FloatLayer>,
}

/// Both networks plus metadata and the default purifier configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatModel {
    /// Data set name.
    pub dataset: String,
    /// Input shape.
    pub input_shape: InputShape,
    /// Class names.
    pub class_names: Vec<String>,
    /// Score model.
    pub denoiser: FloatNet,
    /// Classifier.
    pub classifier: FloatNet,
    /// Default purifier configuration.
    pub purifier: PurifierConfig,
}

/// Dequantised `[rows][cols]` weights from an accessor of int8 weight and scale.
fn dequantise(rows: usize, cols: usize, w: impl Fn(usize, usize) -> f32) -> Vec<f32> {
    (0..rows)
        .flat_map(|o| (0..cols).map(move |i| (o, i)))
        .map(|(o, i)| w(o, i))
        .collect()
}

impl FloatNet {
    /// A fresh MLP `dims[0] → … → dims[n]` with ReLU between dense layers; weights
    /// uniform in `±sqrt(6 / fan_in)·gain/√2` (He-uniform), biases zero.
    pub fn mlp(dims: &[usize], residual: bool, gain: f32, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for (k, w) in dims.windows(2).enumerate() {
            if k > 0 {
                layers.push(FloatLayer::Relu);
            }
            layers.push(dense_layer(w[0], w[1], gain, &mut rng));
        }
        FloatNet { residual, layers }
    }

    /// Dequantised copy of a network from a `.psm` file; `network` names it in the
    /// error for a layer kind without a float mirror (guessing would make every
    /// reference, attack and verification of the model silently wrong). An
    /// int8-activation layer becomes [`FloatLayer::QuantizeInput`] followed by the
    /// float layer with weights `w · scale · m` (its stored scale includes `1/m`).
    pub fn from_spec(
        spec: &NetworkSpec<'_>,
        network: &'static str,
    ) -> Result<Self, UnsupportedLayer> {
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (index, l) in spec.layers.iter().enumerate() {
            match l {
                Layer::Dense(d) => layers.push(float_dense(d, 1.0)),
                Layer::Relu => layers.push(FloatLayer::Relu),
                Layer::Conv2d(c) => layers.push(float_conv(c, 1.0)),
                Layer::Upsample2x(u) => layers.push(FloatLayer::Upsample2x {
                    channels: usize::from(u.channels),
                    height: usize::from(u.height),
                    width: usize::from(u.width),
                }),
                Layer::Int8Dense(q) => {
                    let m = q.input_multiplier;
                    layers.push(FloatLayer::QuantizeInput { multiplier: m });
                    layers.push(float_dense(&q.dense, m));
                }
                Layer::Int8Conv2d(q) => {
                    let m = q.input_multiplier;
                    layers.push(FloatLayer::QuantizeInput { multiplier: m });
                    layers.push(float_conv(&q.conv, m));
                }
                other => {
                    return Err(UnsupportedLayer {
                        network,
                        index,
                        kind: other.kind_name(),
                    })
                }
            }
        }
        Ok(FloatNet {
            residual: spec.residual,
            layers,
        })
    }

    /// The same architecture with every weight and bias zero (Adam's initial moments).
    pub fn zeros_like(&self) -> FloatNet {
        FloatNet {
            residual: self.residual,
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    FloatLayer::Dense {
                        inputs,
                        outputs,
                        weights,
                        bias,
                    } => FloatLayer::Dense {
                        inputs: *inputs,
                        outputs: *outputs,
                        weights: vec![0.0; weights.len()],
                        bias: vec![0.0; bias.len()],
                    },
                    FloatLayer::Conv2d {
                        geometry,
                        weights,
                        bias,
                    } => FloatLayer::Conv2d {
                        geometry: *geometry,
                        weights: vec![0.0; weights.len()],
                        bias: vec![0.0; bias.len()],
                    },
                    other => other.clone(),
                })
                .collect(),
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                FloatLayer::Dense { weights, bias, .. }
                | FloatLayer::Conv2d { weights, bias, .. } => weights.len() + bias.len(),
                FloatLayer::Relu
                | FloatLayer::Upsample2x { .. }
                | FloatLayer::QuantizeInput { .. } => 0,
            })
            .sum()
    }

    /// Multiply–accumulates of one forward pass.
    pub fn macs(&self) -> usize {
        self.layers.iter().map(FloatLayer::macs).sum()
    }

    /// Whether any layer is a convolution or upsampling (a spatial network).
    pub fn is_spatial(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, FloatLayer::Conv2d { .. } | FloatLayer::Upsample2x { .. }))
    }

    /// Checks the shape chain for an input of `input_len` values: every layer has
    /// a non-zero size and the tensors its shape needs, each takes what the one
    /// before returns (a conv reads a vector as the map it declares — the core's
    /// rule), and a residual network returns `input_len` values. Returns the output
    /// length, or a message naming the layer.
    pub fn check(&self, input_len: usize) -> Result<usize, String> {
        let mut len = input_len;
        for (i, l) in self.layers.iter().enumerate() {
            let (want_w, want_b) = match l {
                FloatLayer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => {
                    if *inputs == 0 || *outputs == 0 {
                        return Err(format!(
                            "layer {i} is {inputs} -> {outputs} wide; every layer needs at least one input and one output"
                        ));
                    }
                    (
                        Some((weights.len(), inputs * outputs)),
                        Some((bias.len(), *outputs)),
                    )
                }
                FloatLayer::Conv2d {
                    geometry: g,
                    weights,
                    bias,
                } => {
                    if g.in_channels == 0
                        || g.out_channels == 0
                        || g.kernel == 0
                        || !(1..=2).contains(&g.stride)
                        || 2 * g.padding > g.kernel
                        || g.output_len() == 0
                    {
                        return Err(format!(
                            "layer {i}: a {}x{} convolution with stride {} and padding {} on a {}x{}x{} map is not valid (channels ≥ 1, stride 1 or 2, 2·padding ≤ kernel, kernel fits the padded map)",
                            g.kernel, g.kernel, g.stride, g.padding, g.in_channels, g.height, g.width
                        ));
                    }
                    (
                        Some((weights.len(), g.out_channels * g.fan_in())),
                        Some((bias.len(), g.out_channels)),
                    )
                }
                FloatLayer::QuantizeInput { multiplier } => {
                    if !(multiplier.is_finite() && *multiplier > 0.0) {
                        return Err(format!(
                            "layer {i}: input multiplier {multiplier} must be finite and > 0"
                        ));
                    }
                    (None, None)
                }
                FloatLayer::Relu | FloatLayer::Upsample2x { .. } => (None, None),
            };
            if let Some(declared) = l.input_len() {
                if declared != len {
                    return Err(format!(
                        "layer {i} ({}) takes {declared} values but receives {len} (the images have {input_len} values)",
                        l.kind_name()
                    ));
                }
                if declared == 0 {
                    return Err(format!("layer {i} ({}) has an empty input", l.kind_name()));
                }
            }
            if let (Some((w, ww)), Some((b, wb))) = (want_w, want_b) {
                if w != ww || b != wb {
                    return Err(format!(
                        "layer {i} ({}) holds {w} weights and {b} biases, expected {ww} and {wb}",
                        l.kind_name()
                    ));
                }
            }
            len = l.output_len(len);
        }
        if self.residual && len != input_len {
            return Err(format!(
                "a residual network must return {input_len} values, this one returns {len}"
            ));
        }
        Ok(len)
    }
}

/// A fresh dense layer, He-uniform weights scaled by `gain`, zero biases.
pub(crate) fn dense_layer(
    inputs: usize,
    outputs: usize,
    gain: f32,
    rng: &mut ChaCha8Rng,
) -> FloatLayer {
    let a = gain * (3.0 / inputs.max(1) as f32).sqrt();
    FloatLayer::Dense {
        inputs,
        outputs,
        weights: (0..inputs * outputs)
            .map(|_| rng.gen_range(-a..a))
            .collect(),
        bias: vec![0.0; outputs],
    }
}

/// A fresh convolution, He-uniform weights (fan-in `in·k·k`) scaled by `gain`.
pub(crate) fn conv_layer(geometry: ConvGeometry, gain: f32, rng: &mut ChaCha8Rng) -> FloatLayer {
    let fan_in = geometry.fan_in().max(1);
    let a = gain * (3.0 / fan_in as f32).sqrt();
    FloatLayer::Conv2d {
        geometry,
        weights: (0..geometry.out_channels * fan_in)
            .map(|_| rng.gen_range(-a..a))
            .collect(),
        bias: vec![0.0; geometry.out_channels],
    }
}

impl FloatModel {
    /// Dequantised copy of a parsed `.psm` model; an error for a layer kind the
    /// float side has no mirror for.
    pub fn from_spec(spec: &ModelSpec<'_>) -> Result<Self, UnsupportedLayer> {
        Ok(FloatModel {
            dataset: spec.meta.dataset.to_owned(),
            input_shape: spec.meta.input_shape,
            class_names: spec
                .meta
                .class_names
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            denoiser: FloatNet::from_spec(&spec.denoiser, "denoiser")?,
            classifier: FloatNet::from_spec(&spec.classifier, "classifier")?,
            purifier: spec.purifier,
        })
    }

    /// The float twin of a model whose classifier has int8-activation layers: the
    /// same weights without the input quantisations (for a float model, a copy). A
    /// gradient-free attack queries it where the rounding would stall its random
    /// search on the model itself (the evaluation's `square-twin`).
    pub fn float_twin(&self) -> FloatModel {
        let strip = |net: &FloatNet| FloatNet {
            residual: net.residual,
            layers: net
                .layers
                .iter()
                .filter(|l| !matches!(l, FloatLayer::QuantizeInput { .. }))
                .cloned()
                .collect(),
        };
        FloatModel {
            denoiser: strip(&self.denoiser),
            classifier: strip(&self.classifier),
            ..self.clone()
        }
    }
}

/// A dense layer's parameters on a dfdx device: `w` is `[out, in]` like the file.
/// A convolution keeps its parameters in the same form, `w` being `[out, in·k·k]`.
#[derive(Debug, Clone)]
pub struct DeviceDense<E: Dtype, D: Device<E>> {
    /// Weights `[outputs, inputs]`.
    pub w: Tensor<(usize, usize), E, D>,
    /// Biases `[outputs]`.
    pub b: Tensor<(usize,), E, D>,
}

/// A convolution on a dfdx device, computed as an im2col row gather and one matmul
/// (dfdx 0.13 has no convolution on stable Rust).
#[derive(Debug, Clone)]
pub struct DeviceConv<E: Dtype, D: Device<E>> {
    /// Weights `[out, in·k·k]` and biases `[out]`.
    pub p: DeviceDense<E, D>,
    /// The geometry.
    pub geometry: ConvGeometry,
    /// The im2col rows: `[in·k·k · P]`, column `j` of output position `p` at `j·P + p`.
    index: RowIndex<E, D>,
}

/// One layer on a dfdx device.
#[derive(Debug, Clone)]
pub enum DeviceLayer<E: Dtype, D: Device<E>> {
    /// Dense layer.
    Dense(DeviceDense<E, D>),
    /// ReLU.
    Relu,
    /// Convolution.
    Conv(DeviceConv<E, D>),
    /// Nearest-neighbour ×2 upsampling: `(channels, height, width)` of the input
    /// and the gather.
    Upsample((usize, usize, usize), RowIndex<E, D>),
    /// The input quantisation of an int8-activation layer, with the straight-through
    /// gradient (see [`FloatLayer::QuantizeInput`]): the multiplier.
    QuantizeInput(f32),
}

impl<E: Dtype, D: Device<E>> DeviceLayer<E, D> {
    /// The trainable parameters (dense and conv layers).
    pub fn params(&self) -> Option<&DeviceDense<E, D>> {
        match self {
            DeviceLayer::Dense(d) => Some(d),
            DeviceLayer::Conv(c) => Some(&c.p),
            _ => None,
        }
    }

    /// The trainable parameters, mutably.
    pub fn params_mut(&mut self) -> Option<&mut DeviceDense<E, D>> {
        match self {
            DeviceLayer::Dense(d) => Some(d),
            DeviceLayer::Conv(c) => Some(&mut c.p),
            _ => None,
        }
    }
}

/// A network on a dfdx device.
///
/// Dense networks run row-major (`[batch, features]`). Networks with convolutions
/// run feature-major inside (`[features, batch]`: every im2col element is then a
/// whole row, and a conv's matmul output is already channel-major);
/// [`DeviceNet::enter`] and [`DeviceNet::leave`] convert at the ends.
#[derive(Debug, Clone)]
pub struct DeviceNet<E: Dtype, D: Device<E>> {
    /// Global residual skip.
    pub residual: bool,
    /// Layers in order.
    pub layers: Vec<DeviceLayer<E, D>>,
}

/// A dfdx batch: `[batch, features]`.
pub type Batch<E, D, T = NoneTape> = Tensor<(usize, usize), E, D, T>;

/// `x + (q(x)/m − x)` with the correction carried as a constant: the forward value is
/// the core's quantised input `q(x)/m` (`pursamere_core::quantize_activation`, in
/// f32), the gradient that of the identity (straight-through). With `bias = false`
/// (the linear part of a layer) it is the identity.
fn quantize_input<E, D, T>(a: Batch<E, D, T>, m: f32, bias: bool) -> Batch<E, D, T>
where
    E: Dtype + num_traits::Float,
    D: NetDevice<E>,
    T: Tape<E, D> + Merge<NoneTape>,
{
    if !bias {
        return a;
    }
    let shape = *a.shape();
    let delta: Vec<E> = a
        .as_vec()
        .into_iter()
        .map(|x| {
            let xf = x.to_f32().unwrap_or(0.0);
            let q = pursamere_core::quantize_activation(xf, m) as f32 / m;
            E::from(q).unwrap_or(E::zero()) - x
        })
        .collect();
    let delta = a.device().tensor_from_vec(delta, shape);
    a + delta
}

impl<E: Dtype + num_traits::Float, D: NetDevice<E>> DeviceNet<E, D> {
    /// Uploads a float network.
    pub fn from_float(net: &FloatNet, dev: &D) -> Self {
        let conv = |v: &[f32]| {
            v.iter()
                .map(|&x| E::from(x).unwrap_or(E::zero()))
                .collect::<Vec<E>>()
        };
        let layers = net
            .layers
            .iter()
            .map(|l| match l {
                FloatLayer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => DeviceLayer::Dense(DeviceDense {
                    w: dev.tensor_from_vec(conv(weights), (*outputs, *inputs)),
                    b: dev.tensor_from_vec(conv(bias), (*outputs,)),
                }),
                FloatLayer::Relu => DeviceLayer::Relu,
                FloatLayer::Conv2d {
                    geometry,
                    weights,
                    bias,
                } => {
                    let rows = geometry.im2col();
                    DeviceLayer::Conv(DeviceConv {
                        p: DeviceDense {
                            w: dev.tensor_from_vec(
                                conv(weights),
                                (geometry.out_channels, geometry.fan_in()),
                            ),
                            b: dev.tensor_from_vec(conv(bias), (geometry.out_channels,)),
                        },
                        geometry: *geometry,
                        index: RowIndex::new(dev, rows),
                    })
                }
                FloatLayer::Upsample2x {
                    channels,
                    height,
                    width,
                } => {
                    let idx = upsample2x_index(*channels, *height, *width);
                    DeviceLayer::Upsample(
                        (*channels, *height, *width),
                        RowIndex::new(dev, idx.into_iter().map(Some).collect()),
                    )
                }
                FloatLayer::QuantizeInput { multiplier } => DeviceLayer::QuantizeInput(*multiplier),
            })
            .collect();
        DeviceNet {
            residual: net.residual,
            layers,
        }
    }

    /// Downloads the parameters as a float network.
    pub fn to_float(&self) -> FloatNet {
        let conv = |v: Vec<E>| {
            v.into_iter()
                .map(|x| x.to_f32().unwrap_or(0.0))
                .collect::<Vec<f32>>()
        };
        FloatNet {
            residual: self.residual,
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    DeviceLayer::Dense(d) => FloatLayer::Dense {
                        inputs: d.w.shape().1,
                        outputs: d.w.shape().0,
                        weights: conv(d.w.as_vec()),
                        bias: conv(d.b.as_vec()),
                    },
                    DeviceLayer::Relu => FloatLayer::Relu,
                    DeviceLayer::Conv(c) => FloatLayer::Conv2d {
                        geometry: c.geometry,
                        weights: conv(c.p.w.as_vec()),
                        bias: conv(c.p.b.as_vec()),
                    },
                    DeviceLayer::Upsample((channels, height, width), _) => FloatLayer::Upsample2x {
                        channels: *channels,
                        height: *height,
                        width: *width,
                    },
                    DeviceLayer::QuantizeInput(m) => FloatLayer::QuantizeInput { multiplier: *m },
                })
                .collect(),
        }
    }

    /// Whether any layer is a convolution or upsampling.
    pub fn is_spatial(&self) -> bool {
        self.layers
            .iter()
            .any(|l| matches!(l, DeviceLayer::Conv(_) | DeviceLayer::Upsample(..)))
    }

    /// A row-major batch `[batch, features]` in the layout the layers run in
    /// (feature-major for a network with convolutions).
    pub fn enter<T>(&self, a: Batch<E, D, T>) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        if self.is_spatial() {
            a.permute::<_, Axes2<1, 0>>().contiguous()
        } else {
            a
        }
    }

    /// Back to row-major `[batch, features]` (the inverse of [`DeviceNet::enter`]).
    pub fn leave<T>(&self, a: Batch<E, D, T>) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        self.enter(a)
    }

    /// One layer on a batch in the network's layout (see [`DeviceNet::enter`]);
    /// `bias: false` gives the linear part only (what a Jacobian–vector product
    /// applies). ReLU is applied as `max(x, 0)` (a caller that needs the masks
    /// handles ReLU itself).
    pub fn apply_layer<T>(
        &self,
        layer: &DeviceLayer<E, D>,
        a: Batch<E, D, T>,
        bias: bool,
    ) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        if !self.is_spatial() {
            return match layer {
                DeviceLayer::Dense(d) => {
                    let (batch, out) = (a.shape().0, d.w.shape().0);
                    let y = a.matmul(d.w.clone().permute::<_, Axes2<1, 0>>());
                    if bias {
                        y + d.b.clone().broadcast_like::<_, Axis<0>>(&(batch, out))
                    } else {
                        y
                    }
                }
                DeviceLayer::Relu => a.relu(),
                DeviceLayer::QuantizeInput(m) => quantize_input(a, *m, bias),
                // A network with these layers is spatial.
                DeviceLayer::Conv(_) | DeviceLayer::Upsample(..) => a,
            };
        }
        // Feature-major `[features, batch]`.
        match layer {
            DeviceLayer::Dense(d) => {
                let (batch, out) = (a.shape().1, d.w.shape().0);
                let y = d.w.retaped::<T>().matmul(a);
                if bias {
                    y + d.b.clone().broadcast_like::<_, Axis<1>>(&(out, batch))
                } else {
                    y
                }
            }
            DeviceLayer::Relu => a.relu(),
            DeviceLayer::Conv(c) => {
                // im2col rows [in·k·k · P, batch] → [in·k·k, P·batch]; one matmul
                // gives [out, P·batch], which is the channel-major output map.
                let batch = a.shape().1;
                let cols = D::gather_rows(a, &c.index);
                let (out, fan_in) = *c.p.w.shape();
                let positions = c.index.len() / fan_in.max(1);
                let y =
                    c.p.w
                        .retaped::<T>()
                        .matmul(cols.reshape_like(&(fan_in, positions * batch)));
                let y = if bias {
                    y + c
                        .p
                        .b
                        .clone()
                        .broadcast_like::<_, Axis<1>>(&(out, positions * batch))
                } else {
                    y
                };
                y.reshape_like(&(out * positions, batch))
            }
            DeviceLayer::Upsample(_, index) => D::gather_rows(a, index),
            DeviceLayer::QuantizeInput(m) => quantize_input(a, *m, bias),
        }
    }

    /// Forward pass of a batch; the tape (if any) rides on the input.
    pub fn forward<T>(&self, x: Batch<E, D, T>) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        let skip = if self.residual {
            Some(x.with_empty_tape())
        } else {
            None
        };
        let mut a = self.enter(x);
        for l in &self.layers {
            a = self.apply_layer(l, a, true);
        }
        let a = self.leave(a);
        match skip {
            Some(s) => a + s,
            None => a,
        }
    }
}
