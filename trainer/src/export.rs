//! Float networks and their export to the core's `.psm` format.
//!
//! Quantisation uses the core's rule ([`pursamere_core::quantize`]) and the file is
//! written by the core's writer, so there is one definition of both.

use crate::model::{FloatLayer, FloatModel, FloatNet};
use pursamere_core::quantize::quantize_per_channel;
use pursamere_core::{
    encode_f32_le, encoded_len, write_model, Conv2d, Dense, FormatError, InputShape, Layer,
    Metadata, ModelSpec, NetworkKind, NetworkSpec, PurifierConfig, Upsample2x, MAX_CLASSES,
    MAX_LAYERS,
};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The core rejected the model (shape chain, sizes, configuration, ...).
    #[error("invalid model: {0}")]
    Format(#[from] FormatError),
    /// A dense layer's tensors do not match its declared shape.
    #[error("{network} layer {layer}: {what}")]
    Shape {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// What is wrong.
        what: String,
    },
    /// More layers or classes than the format holds.
    #[error("{0}")]
    Capacity(String),
}

/// Quantisation error of one dense or conv layer (dequantised minus float weights).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantError {
    /// Network.
    pub network: NetworkKind,
    /// Layer index.
    pub layer: usize,
    /// Largest absolute weight error.
    pub max_abs: f32,
    /// Root-mean-square weight error.
    pub rms: f32,
    /// RMS error divided by the RMS weight.
    pub relative_rms: f32,
}

struct QDense {
    inputs: u32,
    outputs: u32,
    weights: Vec<u8>,
    scales: Vec<u8>,
    bias: Vec<u8>,
}

struct QConv {
    in_channels: u16,
    out_channels: u16,
    height: u16,
    width: u16,
    kernel: u16,
    stride: u16,
    padding: u16,
    weights: Vec<u8>,
    scales: Vec<u8>,
    bias: Vec<u8>,
}

enum QLayer {
    Dense(QDense),
    Relu,
    Conv(QConv),
    Upsample(Upsample2x),
}

/// A quantised model that owns its tensors and lends the core a [`ModelSpec`].
pub struct QuantizedModel {
    dataset: String,
    input_shape: InputShape,
    class_names: Vec<String>,
    denoiser: (bool, Vec<QLayer>),
    classifier: (bool, Vec<QLayer>),
    purifier: PurifierConfig,
    report: Vec<QuantError>,
}

fn quantize_net(
    net: &FloatNet,
    kind: NetworkKind,
    report: &mut Vec<QuantError>,
) -> Result<Vec<QLayer>, ExportError> {
    if net.layers.len() > MAX_LAYERS {
        return Err(ExportError::Capacity(format!(
            "the {kind} has {} layers; the format holds at most {MAX_LAYERS}",
            net.layers.len()
        )));
    }
    let mut out = Vec::with_capacity(net.layers.len());
    for (layer, l) in net.layers.iter().enumerate() {
        let shape_err = |what: String| ExportError::Shape {
            network: kind,
            layer,
            what,
        };
        let dim16 = |v: usize| {
            u16::try_from(v)
                .map_err(|_| shape_err(format!("dimension {v} does not fit the format")))
        };
        match l {
            FloatLayer::QuantizeInput { .. } => {
                return Err(shape_err(
                    "an int8 input quantisation (a float mirror of an int8-activation model) \
                     is not exported; export the float model and convert it with `pursamere int8`"
                        .to_owned(),
                ))
            }
            FloatLayer::Relu => out.push(QLayer::Relu),
            FloatLayer::Dense {
                inputs,
                outputs,
                weights,
                bias,
            } => {
                if weights.len() != inputs * outputs || bias.len() != *outputs || *inputs == 0 {
                    return Err(shape_err(format!(
                        "{} weights and {} biases for a {inputs} -> {outputs} layer",
                        weights.len(),
                        bias.len()
                    )));
                }
                let q = quantize_rows(weights, *inputs, bias, kind, layer, report)?;
                let dim = |v: usize| {
                    u32::try_from(v).map_err(|_| shape_err(format!("dimension {v} too large")))
                };
                out.push(QLayer::Dense(QDense {
                    inputs: dim(*inputs)?,
                    outputs: dim(*outputs)?,
                    weights: q.0,
                    scales: q.1,
                    bias: q.2,
                }));
            }
            FloatLayer::Conv2d {
                geometry: g,
                weights,
                bias,
            } => {
                let fan_in = g.fan_in();
                if fan_in == 0
                    || weights.len() != g.out_channels * fan_in
                    || bias.len() != g.out_channels
                {
                    return Err(shape_err(format!(
                        "{} weights and {} biases for a {}x{} convolution {} -> {} channels",
                        weights.len(),
                        bias.len(),
                        g.kernel,
                        g.kernel,
                        g.in_channels,
                        g.out_channels
                    )));
                }
                // [out][in][ky][kx] row by row: the per-output-channel rule.
                let q = quantize_rows(weights, fan_in, bias, kind, layer, report)?;
                out.push(QLayer::Conv(QConv {
                    in_channels: dim16(g.in_channels)?,
                    out_channels: dim16(g.out_channels)?,
                    height: dim16(g.height)?,
                    width: dim16(g.width)?,
                    kernel: dim16(g.kernel)?,
                    stride: dim16(g.stride)?,
                    padding: dim16(g.padding)?,
                    weights: q.0,
                    scales: q.1,
                    bias: q.2,
                }));
            }
            FloatLayer::Upsample2x {
                channels,
                height,
                width,
            } => out.push(QLayer::Upsample(Upsample2x {
                channels: dim16(*channels)?,
                height: dim16(*height)?,
                width: dim16(*width)?,
            })),
        }
    }
    Ok(out)
}

/// Int8 weights, scales and biases of one layer, as file bytes.
type QuantizedRows = (Vec<u8>, Vec<u8>, Vec<u8>);

/// Quantises `rows × cols` weights per row with the core's rule, records the error
/// and encodes scales and biases: `(int8 weights, scales, biases)` as file bytes.
fn quantize_rows(
    weights: &[f32],
    cols: usize,
    bias: &[f32],
    kind: NetworkKind,
    layer: usize,
    report: &mut Vec<QuantError>,
) -> Result<QuantizedRows, ExportError> {
    let rows = bias.len();
    let mut q = vec![0i8; weights.len()];
    let mut s = vec![0f32; rows];
    quantize_per_channel(weights, cols, &mut q, &mut s);
    let (mut max_abs, mut se, mut sw) = (0f32, 0f64, 0f64);
    for (row, (qrow, &scale)) in weights.chunks(cols).zip(q.chunks(cols).zip(&s)) {
        for (&w, &qi) in row.iter().zip(qrow) {
            let e = f32::from(qi) * scale - w;
            max_abs = max_abs.max(e.abs());
            se += f64::from(e) * f64::from(e);
            sw += f64::from(w) * f64::from(w);
        }
    }
    let n = weights.len().max(1) as f64;
    report.push(QuantError {
        network: kind,
        layer,
        max_abs,
        rms: (se / n).sqrt() as f32,
        relative_rms: if sw > 0.0 {
            (se / sw).sqrt() as f32
        } else {
            0.0
        },
    });
    let mut scales = vec![0u8; 4 * rows];
    let mut bias_b = vec![0u8; 4 * rows];
    encode_f32_le(&s, &mut scales)?;
    encode_f32_le(bias, &mut bias_b)?;
    Ok((q.iter().map(|&v| v as u8).collect(), scales, bias_b))
}

fn net_spec(residual: bool, layers: &[QLayer]) -> NetworkSpec<'_> {
    let mut v = heapless::Vec::new();
    for l in layers {
        let layer = match l {
            QLayer::Relu => Layer::Relu,
            QLayer::Dense(d) => Layer::Dense(Dense {
                inputs: d.inputs,
                outputs: d.outputs,
                weights: &d.weights,
                scales: &d.scales,
                bias: &d.bias,
            }),
            QLayer::Conv(c) => Layer::Conv2d(Conv2d {
                in_channels: c.in_channels,
                out_channels: c.out_channels,
                height: c.height,
                width: c.width,
                kernel: c.kernel,
                stride: c.stride,
                padding: c.padding,
                weights: &c.weights,
                scales: &c.scales,
                bias: &c.bias,
            }),
            QLayer::Upsample(u) => Layer::Upsample2x(*u),
        };
        // Capacity was checked in `quantize_net`.
        let _ = v.push(layer);
    }
    NetworkSpec {
        residual,
        layers: v,
    }
}

impl QuantizedModel {
    /// Quantises both networks with the core's per-row int8 rule.
    pub fn from_float(model: &FloatModel) -> Result<Self, ExportError> {
        if model.class_names.len() > MAX_CLASSES {
            return Err(ExportError::Capacity(format!(
                "{} classes; the format holds at most {MAX_CLASSES}",
                model.class_names.len()
            )));
        }
        let mut report = Vec::new();
        let den = quantize_net(&model.denoiser, NetworkKind::Denoiser, &mut report)?;
        let cls = quantize_net(&model.classifier, NetworkKind::Classifier, &mut report)?;
        let q = QuantizedModel {
            dataset: model.dataset.clone(),
            input_shape: model.input_shape,
            class_names: model.class_names.clone(),
            denoiser: (model.denoiser.residual, den),
            classifier: (model.classifier.residual, cls),
            purifier: model.purifier,
            report,
        };
        pursamere_core::Model::from_spec(q.spec())?;
        Ok(q)
    }

    /// The specification the core validates and writes.
    pub fn spec(&self) -> ModelSpec<'_> {
        let mut names = heapless::Vec::new();
        for n in &self.class_names {
            // Capacity was checked in `from_float`.
            let _ = names.push(n.as_str());
        }
        ModelSpec {
            meta: Metadata {
                dataset: &self.dataset,
                input_shape: self.input_shape,
                class_names: names,
            },
            denoiser: net_spec(self.denoiser.0, &self.denoiser.1),
            classifier: net_spec(self.classifier.0, &self.classifier.1),
            purifier: self.purifier,
        }
    }

    /// Per-layer quantisation error, in network and layer order.
    pub fn report(&self) -> &[QuantError] {
        &self.report
    }

    /// The `.psm` file bytes.
    pub fn to_psm(&self) -> Result<Vec<u8>, ExportError> {
        let spec = self.spec();
        let mut out = vec![0u8; encoded_len(&spec)?];
        let n = write_model(&spec, &mut out)?;
        out.truncate(n);
        Ok(out)
    }
}
