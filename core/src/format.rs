//! The `.psm` model file, versions 1 to 3: one definition shared by reader and
//! writer.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PSMR"
//! 4       2     format version, u16 little-endian (1, 2 or 3)
//! 6       2     flags, u16 little-endian (= 0; no flags are defined)
//! 8       4     payload length P, u32 little-endian
//! 12      P     postcard encoding of `ModelSpec`
//! 12+P    4     CRC-32 (ISO-HDLC, as zlib/PNG) of bytes 0..12+P, u32 little-endian
//! ```
//!
//! Tensors are postcard byte strings (varint length, then raw bytes), so the reader
//! borrows them from the file without copying: int8 weights as bytes, f32 scales and
//! biases as little-endian IEEE-754 bytes. Field order inside the payload is the
//! declaration order of the structs below.
//!
//! Version 2 only adds layer variants (`Conv2d`, `Upsample2x`) at the end of the
//! layer enum and the L2 purification ball; version 3 changes no byte of the
//! encoding, only the meaning: its models draw their noise with the f32 Box–Muller
//! generator ([`crate::noise::NoiseGenerator`]), versions 1 and 2 with the f64 one, so
//! a model written before keeps its exact purifications. The writer stamps the oldest
//! version that can hold the model — with the f32 generator, which every new model
//! has, that is 3 — so an older reader rejects a newer model with a version message
//! rather than decoding it with the wrong noise or failing to decode. The reader
//! accepts all three and rejects a version-1 file that holds a version-2 layer.

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::error::{FormatError, NetworkKind, TensorKind};
use crate::layers::Layer;
use crate::purify::PurifierConfig;

/// File magic.
pub const MAGIC: [u8; 4] = *b"PSMR";
/// The newest format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 4;
/// The oldest format version this build reads (and writes, for models that need
/// nothing newer).
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Bytes before the payload.
pub const PREFIX_LEN: usize = 12;
/// Bytes of the trailing CRC.
pub const CRC_LEN: usize = 4;
/// Most layers in one network.
pub const MAX_LAYERS: usize = 16;
/// Most classes a classifier may have.
pub const MAX_CLASSES: usize = 64;
/// Largest accepted layer dimension (keeps every size computation far from overflow).
pub const MAX_DIM: u32 = 1 << 20;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// The shape of one input image (`channels × height × width`, stored channel-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Channels (1 for grey images).
    pub channels: u16,
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

impl InputShape {
    /// Number of input values.
    pub fn len(&self) -> usize {
        usize::from(self.channels) * usize::from(self.height) * usize::from(self.width)
    }

    /// True when a dimension is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the model is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata<'a> {
    /// Data set name, e.g. `"mnist"`.
    pub dataset: &'a str,
    /// Shape of one input.
    pub input_shape: InputShape,
    /// One name per classifier output.
    #[serde(borrow)]
    pub class_names: Vec<&'a str, MAX_CLASSES>,
}

/// One network: a list of layers, optionally wrapped in a global residual skip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec<'a> {
    /// `true`: the network computes `y + net(y)` (only meaningful for the denoiser,
    /// whose output length equals its input length).
    pub residual: bool,
    /// Layers in order.
    #[serde(borrow)]
    pub layers: Vec<Layer<'a>, MAX_LAYERS>,
}

/// Everything a model file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec<'a> {
    /// Data set, input shape, classes.
    #[serde(borrow)]
    pub meta: Metadata<'a>,
    /// The score model `D`.
    #[serde(borrow)]
    pub denoiser: NetworkSpec<'a>,
    /// The classifier `C`.
    #[serde(borrow)]
    pub classifier: NetworkSpec<'a>,
    /// The default purifier configuration.
    pub purifier: PurifierConfig,
}

/// Sizes derived from a validated network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetInfo {
    pub input_len: usize,
    pub output_len: usize,
    /// Widest layer input or output.
    pub max_width: usize,
    /// Largest dense-layer input (0 without dense layers): sizes the row buffer of
    /// the batched dense kernels.
    pub max_dense_inputs: usize,
    /// Sum of all layer inputs plus the final output.
    pub acts_len: usize,
    pub macs: u64,
}

/// The shape of the values flowing between two layers: a feature map
/// (`channels × height × width`, channel-major) or a flat vector. A dense layer
/// reads either as a flat vector in memory order (the flatten boundary is a shape
/// rule, not a copy); a conv or upsampling layer reads a flat vector as the map it
/// declares when the lengths agree, and a map only when channels, height and width
/// all agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Flat(usize),
    Map { c: usize, h: usize, w: usize },
}

impl Shape {
    fn len(self) -> usize {
        match self {
            Shape::Flat(n) => n,
            Shape::Map { c, h, w } => c * h * w,
        }
    }
}

/// A size as the `u32` an error reports (saturating).
fn dim32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Checks the declared input map of a conv or upsampling layer against the shape
/// that reaches it.
fn check_map_input(
    kind: NetworkKind,
    layer: usize,
    prev: Shape,
    (c, h, w): (u16, u16, u16),
) -> Result<(), FormatError> {
    for dim in [c, h, w] {
        if dim == 0 {
            return Err(FormatError::LayerDimension {
                network: kind,
                layer,
                dim: 0,
            });
        }
    }
    let (c, h, w) = (usize::from(c), usize::from(h), usize::from(w));
    let in_len = c as u64 * h as u64 * w as u64;
    if in_len > u64::from(MAX_DIM) {
        return Err(FormatError::LayerDimension {
            network: kind,
            layer,
            dim: dim32(in_len),
        });
    }
    match prev {
        Shape::Flat(n) if n != c * h * w => Err(FormatError::LayerShape {
            network: kind,
            layer,
            expected: n,
            found: c * h * w,
        }),
        Shape::Map { c: pc, .. } if pc != c => Err(FormatError::ChannelMismatch {
            network: kind,
            layer,
            expected: pc,
            found: c,
        }),
        Shape::Map { h: ph, w: pw, .. } if (ph, pw) != (h, w) => {
            Err(FormatError::SpatialMismatch {
                network: kind,
                layer,
                expected: [ph, pw],
                found: [h, w],
            })
        }
        _ => Ok(()),
    }
}

/// Tensor byte lengths, scales and biases of a layer with `rows` output rows
/// (dense) or channels (conv).
fn check_tensors(
    kind: NetworkKind,
    layer: usize,
    tensors: [(TensorKind, usize, u64); 3],
    rows: usize,
    scale: impl Fn(usize) -> f32,
    bias: impl Fn(usize) -> f32,
) -> Result<(), FormatError> {
    for (tensor, found, expected) in tensors {
        if found as u64 != expected {
            return Err(FormatError::TensorLength {
                network: kind,
                layer,
                tensor,
                expected: usize::try_from(expected).unwrap_or(usize::MAX),
                found,
            });
        }
    }
    for row in 0..rows {
        let s = scale(row);
        if !(s.is_finite() && s > 0.0) {
            return Err(FormatError::BadScale {
                network: kind,
                layer,
                row,
            });
        }
        if !bias(row).is_finite() {
            return Err(FormatError::BadBias {
                network: kind,
                layer,
                row,
            });
        }
    }
    Ok(())
}

/// Validates one layer given the shape that reaches it; returns the shape it
/// produces.
fn validate_layer(
    l: &Layer<'_>,
    kind: NetworkKind,
    layer: usize,
    prev: Shape,
) -> Result<Shape, FormatError> {
    match l {
        Layer::Dense(d) => validate_dense(d, kind, layer, prev),
        Layer::Relu => Ok(prev),
        Layer::Conv2d(c) => validate_conv(c, kind, layer, prev),
        Layer::Int8Dense(q) => {
            check_int8(kind, layer, q.input_multiplier, q.dense.inputs.into())?;
            validate_dense(&q.dense, kind, layer, prev)
        }
        Layer::Int8Conv2d(q) => {
            let c = &q.conv;
            let k = u64::from(c.kernel);
            check_int8(
                kind,
                layer,
                q.input_multiplier,
                u64::from(c.in_channels) * k * k,
            )?;
            validate_conv(c, kind, layer, prev)
        }
        Layer::Upsample2x(u) => {
            check_map_input(kind, layer, prev, (u.channels, u.height, u.width))?;
            let out_len = 4 * u.input_len() as u64;
            if out_len > u64::from(MAX_DIM) {
                return Err(FormatError::LayerDimension {
                    network: kind,
                    layer,
                    dim: dim32(out_len),
                });
            }
            Ok(Shape::Map {
                c: usize::from(u.channels),
                h: 2 * usize::from(u.height),
                w: 2 * usize::from(u.width),
            })
        }
    }
}

/// The rules an int8-activation layer adds to its float counterpart's: classifier
/// only, a finite positive input multiplier, a fan-in whose integer sums fit `i32`.
fn check_int8(
    kind: NetworkKind,
    layer: usize,
    multiplier: f32,
    fan_in: u64,
) -> Result<(), FormatError> {
    if kind != NetworkKind::Classifier {
        return Err(FormatError::Int8InDenoiser { layer });
    }
    if !(multiplier.is_finite() && multiplier > 0.0) {
        return Err(FormatError::BadInputMultiplier {
            network: kind,
            layer,
        });
    }
    if fan_in > u64::from(crate::int8::MAX_FAN_IN) {
        return Err(FormatError::FanInTooLarge {
            network: kind,
            layer,
            fan_in: dim32(fan_in),
        });
    }
    Ok(())
}

fn validate_dense(
    d: &crate::layers::Dense<'_>,
    kind: NetworkKind,
    layer: usize,
    prev: Shape,
) -> Result<Shape, FormatError> {
    for dim in [d.inputs, d.outputs] {
        if dim == 0 || dim > MAX_DIM {
            return Err(FormatError::LayerDimension {
                network: kind,
                layer,
                dim,
            });
        }
    }
    if d.inputs as usize != prev.len() {
        return Err(FormatError::LayerShape {
            network: kind,
            layer,
            expected: prev.len(),
            found: d.inputs as usize,
        });
    }
    let rows = d.outputs as usize;
    // u64: on 32-bit targets the product of two large dimensions overflows usize.
    let weight_len = u64::from(d.outputs) * u64::from(d.inputs);
    check_tensors(
        kind,
        layer,
        [
            (TensorKind::Weights, d.weights.len(), weight_len),
            (TensorKind::Scales, d.scales.len(), rows as u64 * 4),
            (TensorKind::Bias, d.bias.len(), rows as u64 * 4),
        ],
        rows,
        |r| d.scale(r),
        |r| d.bias(r),
    )?;
    Ok(Shape::Flat(rows))
}

fn validate_conv(
    c: &crate::layers::Conv2d<'_>,
    kind: NetworkKind,
    layer: usize,
    prev: Shape,
) -> Result<Shape, FormatError> {
    check_map_input(kind, layer, prev, (c.in_channels, c.height, c.width))?;
    if c.out_channels == 0 {
        return Err(FormatError::LayerDimension {
            network: kind,
            layer,
            dim: 0,
        });
    }
    if c.kernel == 0 || c.kernel > crate::conv::MAX_KERNEL {
        return Err(FormatError::KernelSize {
            network: kind,
            layer,
            kernel: c.kernel,
        });
    }
    if !matches!(c.stride, 1 | 2) {
        return Err(FormatError::Stride {
            network: kind,
            layer,
            stride: c.stride,
        });
    }
    if 2 * u32::from(c.padding) > u32::from(c.kernel) {
        return Err(FormatError::Padding {
            network: kind,
            layer,
            padding: c.padding,
            kernel: c.kernel,
        });
    }
    let (oh, ow) = (c.out_height(), c.out_width());
    if oh == 0 || ow == 0 {
        return Err(FormatError::KernelExceedsInput {
            network: kind,
            layer,
            kernel: c.kernel,
            padding: c.padding,
            input: [usize::from(c.height), usize::from(c.width)],
        });
    }
    let rows = usize::from(c.out_channels);
    let out_len = rows as u64 * oh as u64 * ow as u64;
    if out_len > u64::from(MAX_DIM) {
        return Err(FormatError::LayerDimension {
            network: kind,
            layer,
            dim: dim32(out_len),
        });
    }
    check_tensors(
        kind,
        layer,
        [
            (TensorKind::Weights, c.weights.len(), c.weight_len()),
            (TensorKind::Scales, c.scales.len(), rows as u64 * 4),
            (TensorKind::Bias, c.bias.len(), rows as u64 * 4),
        ],
        rows,
        |r| c.scale(r),
        |r| c.bias(r),
    )?;
    Ok(Shape::Map {
        c: rows,
        h: oh,
        w: ow,
    })
}

fn validate_network(
    spec: &NetworkSpec<'_>,
    kind: NetworkKind,
    input: Shape,
) -> Result<(NetInfo, Shape), FormatError> {
    if spec.layers.is_empty() {
        return Err(FormatError::EmptyNetwork(kind));
    }
    let input_len = input.len();
    let mut shape = input;
    let mut max_width = input_len;
    let mut max_dense_inputs = 0;
    let mut acts_len = input_len;
    let mut macs = 0u64;
    for (layer, l) in spec.layers.iter().enumerate() {
        if let Layer::Dense(d) = l {
            max_dense_inputs = max_dense_inputs.max(d.inputs as usize);
        }
        shape = validate_layer(l, kind, layer, shape)?;
        let len = shape.len();
        macs += l.macs();
        max_width = max_width.max(len);
        acts_len += len;
    }
    Ok((
        NetInfo {
            input_len,
            output_len: shape.len(),
            max_width,
            max_dense_inputs,
            acts_len,
            macs,
        },
        shape,
    ))
}

/// The oldest format version that can store `spec` (what the writer stamps).
pub fn required_version(spec: &ModelSpec<'_>) -> u16 {
    spec.denoiser
        .layers
        .iter()
        .chain(&spec.classifier.layers)
        .map(Layer::min_format_version)
        .fold(MIN_FORMAT_VERSION, u16::max)
        .max(match spec.purifier.norm {
            crate::purify::Norm::L2 => 2,
            _ => MIN_FORMAT_VERSION,
        })
        .max(spec.purifier.noise.format_version())
}

/// Rejects a layer kind newer than the version the file declares.
pub(crate) fn check_version(spec: &ModelSpec<'_>, declared: u16) -> Result<(), FormatError> {
    if spec.purifier.norm == crate::purify::Norm::L2 && declared < 2 {
        return Err(FormatError::NormVersion { declared });
    }
    for (network, net) in [
        (NetworkKind::Denoiser, &spec.denoiser),
        (NetworkKind::Classifier, &spec.classifier),
    ] {
        for (layer, l) in net.layers.iter().enumerate() {
            let needed = l.min_format_version();
            if needed > declared {
                return Err(FormatError::LayerVersion {
                    network,
                    layer,
                    kind: l.kind_name(),
                    needed,
                    declared,
                });
            }
        }
    }
    Ok(())
}

/// Checks every invariant of a model; returns the derived sizes of both networks.
pub(crate) fn validate(spec: &ModelSpec<'_>) -> Result<(NetInfo, NetInfo), FormatError> {
    let s = spec.meta.input_shape;
    // u64: three u16 factors overflow a 32-bit usize.
    let d64 = u64::from(s.channels) * u64::from(s.height) * u64::from(s.width);
    if d64 == 0 || d64 > u64::from(MAX_DIM) {
        return Err(FormatError::InputShape {
            channels: s.channels,
            height: s.height,
            width: s.width,
        });
    }
    let d = s.len();
    let classes = spec.meta.class_names.len();
    if classes == 0 {
        return Err(FormatError::NoClasses);
    }
    let input = Shape::Map {
        c: usize::from(s.channels),
        h: usize::from(s.height),
        w: usize::from(s.width),
    };
    let (den, den_shape) = validate_network(&spec.denoiser, NetworkKind::Denoiser, input)?;
    if let Shape::Map { c, h, w } = den_shape {
        if den_shape != input {
            return Err(FormatError::OutputShape {
                network: NetworkKind::Denoiser,
                expected: [
                    usize::from(s.channels),
                    usize::from(s.height),
                    usize::from(s.width),
                ],
                found: [c, h, w],
            });
        }
    }
    if den.output_len != d {
        return Err(FormatError::OutputLength {
            network: NetworkKind::Denoiser,
            expected: d,
            found: den.output_len,
        });
    }
    let (cls, _) = validate_network(&spec.classifier, NetworkKind::Classifier, input)?;
    if cls.output_len != classes {
        return Err(FormatError::OutputLength {
            network: NetworkKind::Classifier,
            expected: classes,
            found: cls.output_len,
        });
    }
    spec.purifier.validate()?;
    Ok((den, cls))
}

/// Splits and checks the framing; returns the declared version and the payload
/// bytes.
pub(crate) fn unframe(bytes: &[u8]) -> Result<(u16, &[u8]), FormatError> {
    let too_short = FormatError::TooShort { len: bytes.len() };
    let (prefix, rest) = bytes.split_first_chunk::<PREFIX_LEN>().ok_or(too_short)?;
    let (body, crc) = rest.split_last_chunk::<CRC_LEN>().ok_or(too_short)?;
    let [m0, m1, m2, m3, v0, v1, f0, f1, p0, p1, p2, p3] = *prefix;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(FormatError::BadMagic([m0, m1, m2, m3]));
    }
    let version = u16::from_le_bytes([v0, v1]);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let flags = u16::from_le_bytes([f0, f1]);
    if flags != 0 {
        return Err(FormatError::UnknownFlags(flags));
    }
    let declared = u32::from_le_bytes([p0, p1, p2, p3]);
    if declared as usize != body.len() {
        return Err(FormatError::PayloadLength {
            declared,
            actual: body.len(),
        });
    }
    let stored = u32::from_le_bytes(*crc);
    let mut digest = CRC32.digest();
    digest.update(prefix);
    digest.update(body);
    let computed = digest.finalize();
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    Ok((version, body))
}

/// Decodes a payload (no validation beyond what postcard checks).
pub(crate) fn decode(payload: &[u8]) -> Result<ModelSpec<'_>, FormatError> {
    let (spec, rest) = postcard::take_from_bytes::<ModelSpec<'_>>(payload)
        .map_err(|_| FormatError::MalformedPayload)?;
    if !rest.is_empty() {
        return Err(FormatError::TrailingPayload { extra: rest.len() });
    }
    Ok(spec)
}

/// Exact size of the file [`write_model`] produces for `spec`.
pub fn encoded_len(spec: &ModelSpec<'_>) -> Result<usize, FormatError> {
    let payload = postcard::serialize_with_flavor::<_, postcard::ser_flavors::Size, usize>(
        spec,
        postcard::ser_flavors::Size::default(),
    )
    .map_err(|_| FormatError::MalformedPayload)?;
    Ok(PREFIX_LEN + payload + CRC_LEN)
}

/// Validates `spec` and writes it as a `.psm` file into `out`; returns the number of
/// bytes written (the file is `&out[..n]`). Use [`encoded_len`] to size `out`. The
/// prefix carries [`required_version`]`(spec)`: 4 when the classifier has an
/// int8-activation layer, else 3 with the f32 noise generator (every new model); with
/// the f64 one, 1 for dense/ReLU models and 2 when a convolution, upsampling layer or
/// L2 ball is present.
pub fn write_model(spec: &ModelSpec<'_>, out: &mut [u8]) -> Result<usize, FormatError> {
    validate(spec)?;
    let needed = encoded_len(spec)?;
    let available = out.len();
    let file = out
        .get_mut(..needed)
        .ok_or(FormatError::BufferTooSmall { needed, available })?;
    let payload_len = needed - PREFIX_LEN - CRC_LEN;
    let declared = u32::try_from(payload_len).map_err(|_| FormatError::MalformedPayload)?;
    let (prefix, rest) = file
        .split_first_chunk_mut::<PREFIX_LEN>()
        .ok_or(FormatError::BufferTooSmall { needed, available })?;
    let (body, crc) = rest
        .split_last_chunk_mut::<CRC_LEN>()
        .ok_or(FormatError::BufferTooSmall { needed, available })?;
    prefix[..4].copy_from_slice(&MAGIC);
    prefix[4..6].copy_from_slice(&required_version(spec).to_le_bytes());
    prefix[6..8].copy_from_slice(&0u16.to_le_bytes());
    prefix[8..12].copy_from_slice(&declared.to_le_bytes());
    postcard::to_slice(spec, body)
        .map_err(|_| FormatError::BufferTooSmall { needed, available })?;
    let mut digest = CRC32.digest();
    digest.update(prefix);
    digest.update(body);
    *crc = digest.finalize().to_le_bytes();
    Ok(needed)
}

/// Encodes f32 values as the little-endian bytes a tensor field stores
/// (`out` must hold `4 * values.len()` bytes; extra bytes are left alone).
pub fn encode_f32_le(values: &[f32], out: &mut [u8]) -> Result<(), FormatError> {
    let needed = values.len() * 4;
    if out.len() < needed {
        return Err(FormatError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let (chunks, _) = out.as_chunks_mut::<4>();
    for (c, v) in chunks.iter_mut().zip(values) {
        *c = v.to_le_bytes();
    }
    Ok(())
}
