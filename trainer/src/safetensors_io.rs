//! Float weights as `.safetensors`, so PyTorch or JAX users can load the same
//! networks. Layout and names are documented in `docs/FORMAT.md`:
//!
//! * `{net}.dense{j}.weight`: f32 `[outputs, inputs]` (PyTorch `nn.Linear` layout),
//!   `{net}.dense{j}.bias`: f32 `[outputs]`, `net` ∈ {`denoiser`, `classifier`},
//!   `j` counting dense layers from 0;
//! * `{net}.conv{j}.weight`: f32 `[out, in, k, k]` (PyTorch `nn.Conv2d` layout),
//!   `{net}.conv{j}.bias`: f32 `[out]`, `j` counting conv layers from 0;
//! * metadata (strings): `format` = `pursamere-float-v1`; `dataset`; `input_shape`
//!   = `C,H,W`; `class_names` (JSON array); `{net}.layers` = the layer list, e.g.
//!   `dense,relu,dense` or `conv2d:s2:p1:28x28,relu,upsample2x:8x14x14` (stride,
//!   padding and input size of a conv; channels and kernel are in its weight); `{net}.residual` = `true`/`false`; `purifier` (JSON object
//!   with the fields of `PurifierConfig`); `noise_generator` = `box-muller-f32` or
//!   `box-muller-f64` (absent in files written before it existed, which all used
//!   the f64 generator).

use std::collections::{BTreeMap, HashMap};

use pursamere_core::noise::NoiseGenerator;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, TensorView};

use crate::model::{FloatLayer, FloatModel, FloatNet};

/// The `format` metadata value this build writes and reads.
pub const FLOAT_FORMAT: &str = "pursamere-float-v1";

/// Why a safetensors file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The container itself is malformed.
    #[error("safetensors: {0}")]
    Container(String),
    /// A required metadata entry or tensor is missing or malformed.
    #[error("safetensors: {0}")]
    Content(String),
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The layer list: `dense`, `relu`, `conv2d:s{stride}:p{padding}:{height}x{width}`
/// (channels and kernel come from the weight's shape), `upsample2x:{c}x{h}x{w}`.
fn net_layers(net: &FloatNet) -> String {
    net.layers
        .iter()
        .map(|l| match l {
            FloatLayer::Dense { .. } => "dense".to_owned(),
            FloatLayer::Relu => "relu".to_owned(),
            FloatLayer::Conv2d { geometry: g, .. } => {
                format!(
                    "conv2d:s{}:p{}:{}x{}",
                    g.stride, g.padding, g.height, g.width
                )
            }
            FloatLayer::Upsample2x {
                channels,
                height,
                width,
            } => format!("upsample2x:{channels}x{height}x{width}"),
            FloatLayer::QuantizeInput { multiplier } => format!("quantize-input:{multiplier}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The numbers of a layer token's fields after its kind: `conv2d:s2:p1:28x28` →
/// `[2, 1, 28, 28]` (each field's letter prefix dropped, `x` separating numbers).
fn token_numbers(token: &str) -> Option<Vec<usize>> {
    token
        .split(':')
        .skip(1)
        .flat_map(|f| {
            f.trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .split('x')
        })
        .map(|v| v.parse().ok())
        .collect()
}

/// Rewrites a safetensors header with every key sorted (metadata entries and
/// tensors), so the same model always gives the same bytes: the `safetensors` crate
/// writes its metadata map in hash order.
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>, SafetensorsError> {
    let bad = |why: String| SafetensorsError::Container(format!("serialised header: {why}"));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .ok_or_else(|| bad("too short".into()))?;
    let end = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("length {n}")))?;
    let mut header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(e.to_string()))?;
    if let Some(meta) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta.take()).map_err(|e| bad(e.to_string()))?;
        *meta = serde_json::to_value(sorted).map_err(|e| bad(e.to_string()))?;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // Keep the data 8-byte aligned, as the crate does.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Says in words why `bytes` is not a readable safetensors file.
fn container_error(bytes: &[u8], e: SafeTensorError) -> SafetensorsError {
    let why = match e {
        _ if bytes.starts_with(b"PSMR") => {
            "this is a .psm model file, not a .safetensors file".to_owned()
        }
        _ if bytes.is_empty() => "the file is empty, not a .safetensors file".to_owned(),
        SafeTensorError::HeaderTooSmall
        | SafeTensorError::HeaderTooLarge
        | SafeTensorError::InvalidHeaderLength
        | SafeTensorError::InvalidHeader
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization => {
            format!("not a .safetensors file (its header is unreadable: {e:?})")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the file is truncated (it ends before the tensor data the header lists)".to_owned()
        }
        other => format!("not a valid .safetensors file ({other:?})"),
    };
    SafetensorsError::Container(why)
}

/// Serialises a float model; the same model always gives the same bytes.
pub fn to_safetensors(model: &FloatModel) -> Result<Vec<u8>, SafetensorsError> {
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut meta = HashMap::new();
    meta.insert("format".to_owned(), FLOAT_FORMAT.to_owned());
    meta.insert("dataset".to_owned(), model.dataset.clone());
    let s = model.input_shape;
    meta.insert(
        "input_shape".to_owned(),
        format!("{},{},{}", s.channels, s.height, s.width),
    );
    let json = |e: serde_json::Error| SafetensorsError::Content(e.to_string());
    meta.insert(
        "class_names".to_owned(),
        serde_json::to_string(&model.class_names).map_err(json)?,
    );
    meta.insert(
        "purifier".to_owned(),
        serde_json::to_string(&model.purifier).map_err(json)?,
    );
    meta.insert(
        "noise_generator".to_owned(),
        model.purifier.noise.name().to_owned(),
    );
    for (name, net) in [
        ("denoiser", &model.denoiser),
        ("classifier", &model.classifier),
    ] {
        meta.insert(format!("{name}.layers"), net_layers(net));
        meta.insert(format!("{name}.residual"), net.residual.to_string());
        let (mut dense, mut conv) = (0, 0);
        for l in &net.layers {
            match l {
                FloatLayer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => {
                    let j = dense;
                    dense += 1;
                    buffers.push((
                        format!("{name}.dense{j}.weight"),
                        vec![*outputs, *inputs],
                        le_bytes(weights),
                    ));
                    buffers.push((
                        format!("{name}.dense{j}.bias"),
                        vec![*outputs],
                        le_bytes(bias),
                    ));
                }
                FloatLayer::Conv2d {
                    geometry: g,
                    weights,
                    bias,
                } => {
                    let j = conv;
                    conv += 1;
                    // PyTorch's Conv2d.weight layout [out, in, kh, kw].
                    buffers.push((
                        format!("{name}.conv{j}.weight"),
                        vec![g.out_channels, g.in_channels, g.kernel, g.kernel],
                        le_bytes(weights),
                    ));
                    buffers.push((
                        format!("{name}.conv{j}.bias"),
                        vec![g.out_channels],
                        le_bytes(bias),
                    ));
                }
                FloatLayer::Relu | FloatLayer::Upsample2x { .. } => {}
                FloatLayer::QuantizeInput { .. } => {
                    return Err(SafetensorsError::Content(format!(
                        "the {name} has int8-activation layers, which have no float safetensors form"
                    )))
                }
            }
        }
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, shape, bytes) in &buffers {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| SafetensorsError::Content(format!("{name}: {e:?}")))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, &Some(meta))
        .map_err(|e| SafetensorsError::Container(format!("{e:?}")))?;
    canonical_header(bytes)
}

/// Reads a float model written by [`to_safetensors`].
pub fn from_safetensors(bytes: &[u8]) -> Result<FloatModel, SafetensorsError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| container_error(bytes, e))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| container_error(bytes, e))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| SafetensorsError::Content(format!("metadata entry `{k}` is missing")))
    };
    let format = get("format")?;
    if format != FLOAT_FORMAT {
        return Err(SafetensorsError::Content(format!(
            "format `{format}` is not `{FLOAT_FORMAT}`"
        )));
    }
    let shape: Vec<u16> = get("input_shape")?
        .split(',')
        .map(|v| v.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .map_err(|e| SafetensorsError::Content(format!("input_shape: {e}")))?;
    let [channels, height, width] = shape[..] else {
        return Err(SafetensorsError::Content(
            "input_shape must be C,H,W".into(),
        ));
    };
    let json = |k: &str, e: serde_json::Error| SafetensorsError::Content(format!("{k}: {e}"));
    let class_names: Vec<String> =
        serde_json::from_str(&get("class_names")?).map_err(|e| json("class_names", e))?;
    let mut purifier: pursamere_core::PurifierConfig =
        serde_json::from_str(&get("purifier")?).map_err(|e| json("purifier", e))?;
    // Files written before the key existed all used the f64 generator.
    purifier.noise = match meta.get("noise_generator") {
        None => NoiseGenerator::BoxMullerF64,
        Some(name) => NoiseGenerator::from_name(name).ok_or_else(|| {
            SafetensorsError::Content(format!(
                "noise_generator: unknown generator {name:?} (this build knows box-muller-f32 and box-muller-f64)"
            ))
        })?,
    };
    let mut nets = Vec::new();
    for name in ["denoiser", "classifier"] {
        let residual = get(&format!("{name}.residual"))? == "true";
        let mut layers = Vec::new();
        let (mut j, mut jc) = (0, 0);
        let read = |key: String| -> Result<(Vec<usize>, Vec<f32>), SafetensorsError> {
            let v = st
                .tensor(&key)
                .map_err(|_| SafetensorsError::Content(format!("tensor `{key}` is missing")))?;
            if v.dtype() != Dtype::F32 {
                return Err(SafetensorsError::Content(format!(
                    "tensor `{key}` is not F32"
                )));
            }
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((v.shape().to_vec(), data))
        };
        for kind in get(&format!("{name}.layers"))?.split(',') {
            let bad_token = || {
                SafetensorsError::Content(format!(
                    "{name}.layers: malformed layer `{kind}` (expected conv2d:s<stride>:p<padding>:<height>x<width> or upsample2x:<c>x<h>x<w>)"
                ))
            };
            match kind.split(':').next().unwrap_or_default() {
                "relu" => layers.push(FloatLayer::Relu),
                "dense" => {
                    let (ws, weights) = read(format!("{name}.dense{j}.weight"))?;
                    let (bs, bias) = read(format!("{name}.dense{j}.bias"))?;
                    let [m, n] = ws[..] else {
                        return Err(SafetensorsError::Content(format!(
                            "{name}.dense{j}.weight must be 2-D"
                        )));
                    };
                    if bs != [m] {
                        return Err(SafetensorsError::Content(format!(
                            "{name}.dense{j}.bias has shape {bs:?}, expected [{m}]"
                        )));
                    }
                    layers.push(FloatLayer::Dense {
                        inputs: n,
                        outputs: m,
                        weights,
                        bias,
                    });
                    j += 1;
                }
                "conv2d" => {
                    let Some([stride, padding, height, width]) =
                        token_numbers(kind).and_then(|v| <[usize; 4]>::try_from(v).ok())
                    else {
                        return Err(bad_token());
                    };
                    let (ws, weights) = read(format!("{name}.conv{jc}.weight"))?;
                    let (bs, bias) = read(format!("{name}.conv{jc}.bias"))?;
                    let [o, i, kh, kw] = ws[..] else {
                        return Err(SafetensorsError::Content(format!(
                            "{name}.conv{jc}.weight must be 4-D [out, in, k, k]"
                        )));
                    };
                    if kh != kw || bs != [o] {
                        return Err(SafetensorsError::Content(format!(
                            "{name}.conv{jc}: weight {ws:?} and bias {bs:?} do not describe a square-kernel convolution"
                        )));
                    }
                    layers.push(FloatLayer::Conv2d {
                        geometry: crate::model::ConvGeometry {
                            in_channels: i,
                            out_channels: o,
                            height,
                            width,
                            kernel: kh,
                            stride,
                            padding,
                        },
                        weights,
                        bias,
                    });
                    jc += 1;
                }
                "upsample2x" => {
                    let Some([channels, height, width]) =
                        token_numbers(kind).and_then(|v| <[usize; 3]>::try_from(v).ok())
                    else {
                        return Err(bad_token());
                    };
                    layers.push(FloatLayer::Upsample2x {
                        channels,
                        height,
                        width,
                    });
                }
                other => {
                    return Err(SafetensorsError::Content(format!(
                        "{name}.layers: unknown layer kind `{other}`"
                    )))
                }
            }
        }
        nets.push(FloatNet { residual, layers });
    }
    let classifier = nets.pop().unwrap_or(FloatNet {
        residual: false,
        layers: vec![],
    });
    let denoiser = nets.pop().unwrap_or(FloatNet {
        residual: false,
        layers: vec![],
    });
    Ok(FloatModel {
        dataset: get("dataset")?,
        input_shape: pursamere_core::InputShape {
            channels,
            height,
            width,
        },
        class_names,
        denoiser,
        classifier,
        purifier,
    })
}
