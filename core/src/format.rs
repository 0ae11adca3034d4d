//! The `.psm` model file, version 1: one definition shared by reader and writer.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "PSMR"
//! 4       2     format version, u16 little-endian (= 1)
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

use heapless::Vec;
use serde::{Deserialize, Serialize};

use crate::error::{FormatError, NetworkKind, TensorKind};
use crate::layers::Layer;
use crate::purify::PurifierConfig;

/// File magic.
pub const MAGIC: [u8; 4] = *b"PSMR";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
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
    /// Sum of all layer inputs plus the final output.
    pub acts_len: usize,
    pub macs: u64,
}

fn validate_network(
    spec: &NetworkSpec<'_>,
    kind: NetworkKind,
    input_len: usize,
) -> Result<NetInfo, FormatError> {
    if spec.layers.is_empty() {
        return Err(FormatError::EmptyNetwork(kind));
    }
    let mut len = input_len;
    let mut max_width = input_len;
    let mut acts_len = input_len;
    let mut macs = 0u64;
    for (layer, l) in spec.layers.iter().enumerate() {
        if let Layer::Dense(d) = l {
            for dim in [d.inputs, d.outputs] {
                if dim == 0 || dim > MAX_DIM {
                    return Err(FormatError::LayerDimension {
                        network: kind,
                        layer,
                        dim,
                    });
                }
            }
            if d.inputs as usize != len {
                return Err(FormatError::LayerShape {
                    network: kind,
                    layer,
                    expected: len,
                    found: d.inputs as usize,
                });
            }
            let rows = d.outputs as usize;
            // Checked: on 32-bit targets the product of two large dimensions overflows.
            let Some(weight_len) = rows.checked_mul(d.inputs as usize) else {
                return Err(FormatError::LayerDimension {
                    network: kind,
                    layer,
                    dim: d.outputs,
                });
            };
            let checks = [
                (TensorKind::Weights, d.weights.len(), weight_len),
                (TensorKind::Scales, d.scales.len(), rows * 4),
                (TensorKind::Bias, d.bias.len(), rows * 4),
            ];
            for (tensor, found, expected) in checks {
                if found != expected {
                    return Err(FormatError::TensorLength {
                        network: kind,
                        layer,
                        tensor,
                        expected,
                        found,
                    });
                }
            }
            for row in 0..rows {
                let s = d.scale(row);
                if !(s.is_finite() && s > 0.0) {
                    return Err(FormatError::BadScale {
                        network: kind,
                        layer,
                        row,
                    });
                }
                if !d.bias(row).is_finite() {
                    return Err(FormatError::BadBias {
                        network: kind,
                        layer,
                        row,
                    });
                }
            }
        }
        macs += l.macs();
        len = l.output_len(len);
        max_width = max_width.max(len);
        acts_len += len;
    }
    Ok(NetInfo {
        input_len,
        output_len: len,
        max_width,
        acts_len,
        macs,
    })
}

/// Checks every invariant of a model; returns the derived sizes of both networks.
pub(crate) fn validate(spec: &ModelSpec<'_>) -> Result<(NetInfo, NetInfo), FormatError> {
    let s = spec.meta.input_shape;
    let d = s.len();
    if d == 0 || d > MAX_DIM as usize {
        return Err(FormatError::InputShape {
            channels: s.channels,
            height: s.height,
            width: s.width,
        });
    }
    let classes = spec.meta.class_names.len();
    if classes == 0 {
        return Err(FormatError::NoClasses);
    }
    let den = validate_network(&spec.denoiser, NetworkKind::Denoiser, d)?;
    if den.output_len != d {
        return Err(FormatError::OutputLength {
            network: NetworkKind::Denoiser,
            expected: d,
            found: den.output_len,
        });
    }
    let cls = validate_network(&spec.classifier, NetworkKind::Classifier, d)?;
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

/// Splits and checks the framing; returns the payload bytes.
pub(crate) fn unframe(bytes: &[u8]) -> Result<&[u8], FormatError> {
    let too_short = FormatError::TooShort { len: bytes.len() };
    let (prefix, rest) = bytes.split_first_chunk::<PREFIX_LEN>().ok_or(too_short)?;
    let (body, crc) = rest.split_last_chunk::<CRC_LEN>().ok_or(too_short)?;
    let [m0, m1, m2, m3, v0, v1, f0, f1, p0, p1, p2, p3] = *prefix;
    if [m0, m1, m2, m3] != MAGIC {
        return Err(FormatError::BadMagic([m0, m1, m2, m3]));
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != FORMAT_VERSION {
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
    Ok(body)
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
/// bytes written (the file is `&out[..n]`). Use [`encoded_len`] to size `out`.
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
    prefix[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
