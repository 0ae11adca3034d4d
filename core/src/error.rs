//! Error values. The core never panics on bad input: every failure is one of these.

use core::fmt;

/// Which of the two networks in a model file an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkKind {
    /// The score model `D` (denoiser).
    Denoiser,
    /// The classifier `C`.
    Classifier,
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkKind::Denoiser => "denoiser",
            NetworkKind::Classifier => "classifier",
        })
    }
}

/// Which tensor of a dense or convolution layer an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// int8 weights, row-major `[outputs][inputs]` (dense) or `[out][in][ky][kx]`
    /// (convolution).
    Weights,
    /// One little-endian f32 scale per output row (dense) or channel (convolution).
    Scales,
    /// One little-endian f32 bias per output row or channel.
    Bias,
}

impl fmt::Display for TensorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TensorKind::Weights => "weights",
            TensorKind::Scales => "scales",
            TensorKind::Bias => "bias",
        })
    }
}

/// A purifier setting outside its allowed range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfigError {
    /// σ must be finite and > 0.
    Sigma(f32),
    /// M must be in `1..=MAX_NOISE_SAMPLES`.
    NoiseSamples(u32),
    /// K must be at most `MAX_ITERS`.
    Iterations(u32),
    /// η must be finite and > 0.
    StepSize(f32),
    /// ρ must be finite and ≥ 0.
    Rho(f32),
    /// δ must be finite and ≥ 0.
    Radius(f32),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::purify::{MAX_ITERS, MAX_NOISE_SAMPLES};
        match *self {
            ConfigError::Sigma(v) => write!(f, "noise level sigma = {v} must be finite and > 0"),
            ConfigError::NoiseSamples(v) => write!(
                f,
                "noise samples M = {v} must be between 1 and {MAX_NOISE_SAMPLES}"
            ),
            ConfigError::Iterations(v) => {
                write!(f, "iterations K = {v} exceeds the limit of {MAX_ITERS}")
            }
            ConfigError::StepSize(v) => write!(f, "step size eta = {v} must be finite and > 0"),
            ConfigError::Rho(v) => write!(f, "SAM radius rho = {v} must be finite and >= 0"),
            ConfigError::Radius(v) => {
                write!(f, "purification radius delta = {v} must be finite and >= 0")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why a `.psm` model file was rejected (or could not be written).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the fixed prefix plus the CRC.
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first four bytes are not `PSMR`.
    BadMagic([u8; 4]),
    /// A format version this build cannot read.
    UnsupportedVersion(u16),
    /// Flag bits this build does not know.
    UnknownFlags(u16),
    /// The payload length in the prefix disagrees with the file size.
    PayloadLength {
        /// Payload length the prefix declares.
        declared: u32,
        /// Payload bytes actually present between prefix and CRC.
        actual: usize,
    },
    /// The CRC-32 over prefix and payload does not match.
    CrcMismatch {
        /// CRC stored in the file.
        stored: u32,
        /// CRC computed over the bytes read.
        computed: u32,
    },
    /// The postcard payload could not be decoded (truncated field, bad tag,
    /// invalid UTF-8, too many layers or classes, ...).
    MalformedPayload,
    /// The postcard payload decoded but left bytes unused.
    TrailingPayload {
        /// Unused bytes.
        extra: usize,
    },
    /// The input shape has a zero dimension or is implausibly large.
    InputShape {
        /// Channels.
        channels: u16,
        /// Height.
        height: u16,
        /// Width.
        width: u16,
    },
    /// A network has no layers.
    EmptyNetwork(NetworkKind),
    /// A layer dimension (dense inputs/outputs, conv or upsampling channels,
    /// height or width) is zero, or a layer's input or output length is above
    /// `MAX_DIM`.
    LayerDimension {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// The offending dimension.
        dim: u32,
    },
    /// A layer's input length does not equal the previous layer's output length.
    LayerShape {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Length the previous layer produces.
        expected: usize,
        /// Length this layer accepts.
        found: usize,
    },
    /// A tensor has the wrong number of bytes for its layer's shape.
    TensorLength {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Which tensor.
        tensor: TensorKind,
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// A quantisation scale is NaN, infinite, zero or negative.
    BadScale {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Output row (dense) or output channel (convolution).
        row: usize,
    },
    /// A bias is NaN or infinite.
    BadBias {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Output row (dense) or output channel (convolution).
        row: usize,
    },
    /// A network's output length is wrong (denoiser: the input length;
    /// classifier: the number of classes).
    OutputLength {
        /// Network.
        network: NetworkKind,
        /// Required output length.
        expected: usize,
        /// Output length of the last layer.
        found: usize,
    },
    /// No class names.
    NoClasses,
    /// The default purifier configuration is out of range.
    Config(ConfigError),
    /// The output buffer given to the writer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A convolution or upsampling layer declares a different number of input
    /// channels than the previous feature map has.
    ChannelMismatch {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Channels the previous layer produces.
        expected: usize,
        /// Channels this layer takes.
        found: usize,
    },
    /// A convolution or upsampling layer declares a different input height or width
    /// than the previous feature map has.
    SpatialMismatch {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// `[height, width]` the previous layer produces.
        expected: [usize; 2],
        /// `[height, width]` this layer takes.
        found: [usize; 2],
    },
    /// A convolution kernel side outside `1 ..= MAX_KERNEL`.
    KernelSize {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// The kernel side.
        kernel: u16,
    },
    /// A convolution stride other than 1 or 2.
    Stride {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// The stride.
        stride: u16,
    },
    /// Zero padding larger than half the kernel (`2·padding > kernel`).
    Padding {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// The padding.
        padding: u16,
        /// The kernel side.
        kernel: u16,
    },
    /// The kernel does not fit in the padded input, so the output would be empty.
    KernelExceedsInput {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// The kernel side.
        kernel: u16,
        /// The padding.
        padding: u16,
        /// `[height, width]` of the input.
        input: [usize; 2],
    },
    /// The denoiser ends with a feature map whose `[channels, height, width]` is not
    /// the input image shape (same length, different shape).
    OutputShape {
        /// Network.
        network: NetworkKind,
        /// The input shape `[channels, height, width]`.
        expected: [usize; 3],
        /// The shape of the last feature map.
        found: [usize; 3],
    },
    /// A layer kind that needs a newer format version than the file declares.
    LayerVersion {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Layer kind (`conv2d`, ...).
        kind: &'static str,
        /// Oldest version that stores this kind.
        needed: u16,
        /// Version in the file prefix.
        declared: u16,
    },
    /// The purifier uses the L2 ball, which a version-1 file cannot declare.
    NormVersion {
        /// Version in the file prefix.
        declared: u16,
    },
    /// An int8-activation layer in the denoiser, which must be exactly
    /// differentiable.
    Int8InDenoiser {
        /// Layer index.
        layer: usize,
    },
    /// An int8-activation layer's input multiplier is not finite and positive.
    BadInputMultiplier {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
    },
    /// An int8-activation layer's fan-in could overflow its `i32` sums.
    FanInTooLarge {
        /// Network.
        network: NetworkKind,
        /// Layer index.
        layer: usize,
        /// Inputs per output.
        fan_in: u32,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match *self {
            TooShort { len } => write!(
                f,
                "file is {len} bytes, shorter than the {} bytes of prefix and CRC; it is truncated or not a model file",
                crate::format::PREFIX_LEN + crate::format::CRC_LEN
            ),
            BadMagic(m) => write!(
                f,
                "bad magic {:02x} {:02x} {:02x} {:02x}: not a PurSAMERE model file (expected \"PSMR\")",
                m[0], m[1], m[2], m[3]
            ),
            UnsupportedVersion(v) => write!(
                f,
                "model format version {v} is not supported (this build reads versions {} to {}); re-export the model with a matching `pursamere export`",
                crate::format::MIN_FORMAT_VERSION,
                crate::format::FORMAT_VERSION
            ),
            UnknownFlags(v) => write!(f, "unknown flag bits {v:#06x} in the model file prefix"),
            PayloadLength { declared, actual } => write!(
                f,
                "prefix declares a {declared}-byte payload but {actual} bytes are present; the file is truncated or has trailing data"
            ),
            CrcMismatch { stored, computed } => write!(
                f,
                "CRC-32 mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt"
            ),
            MalformedPayload => f.write_str(
                "payload could not be decoded (corrupt field, too many layers or classes, or invalid text)",
            ),
            TrailingPayload { extra } => {
                write!(f, "payload has {extra} unused bytes after the last field")
            }
            InputShape { channels, height, width } => write!(
                f,
                "input shape {channels}x{height}x{width} is empty or too large"
            ),
            EmptyNetwork(n) => write!(f, "the {n} has no layers"),
            LayerDimension { network, layer, dim } => write!(
                f,
                "{network} layer {layer}: dimension {dim} is zero or above {}",
                crate::format::MAX_DIM
            ),
            LayerShape { network, layer, expected, found } => write!(
                f,
                "{network} layer {layer} takes {found} inputs but the previous layer produces {expected}"
            ),
            TensorLength { network, layer, tensor, expected, found } => write!(
                f,
                "{network} layer {layer}: {tensor} tensor has {found} bytes, expected {expected}"
            ),
            BadScale { network, layer, row } => write!(
                f,
                "{network} layer {layer}: scale of row (output channel) {row} is not a finite positive number"
            ),
            BadBias { network, layer, row } => {
                write!(f, "{network} layer {layer}: bias of row (output channel) {row} is not finite")
            }
            OutputLength { network, expected, found } => write!(
                f,
                "the {network} produces {found} outputs but {expected} are required"
            ),
            NoClasses => f.write_str("the model declares no classes"),
            Config(e) => write!(f, "default purifier configuration: {e}"),
            BufferTooSmall { needed, available } => write!(
                f,
                "output buffer holds {available} bytes but the model file needs {needed}"
            ),
            ChannelMismatch { network, layer, expected, found } => write!(
                f,
                "{network} layer {layer} takes {found} input channels but the previous layer produces {expected}"
            ),
            SpatialMismatch { network, layer, expected, found } => write!(
                f,
                "{network} layer {layer} takes {}x{} (height x width) feature maps but the previous layer produces {}x{}",
                found[0], found[1], expected[0], expected[1]
            ),
            KernelSize { network, layer, kernel } => write!(
                f,
                "{network} layer {layer}: kernel size {kernel} is not between 1 and {}",
                crate::conv::MAX_KERNEL
            ),
            Stride { network, layer, stride } => write!(
                f,
                "{network} layer {layer}: stride {stride} is not supported (1 or 2)"
            ),
            Padding { network, layer, padding, kernel } => write!(
                f,
                "{network} layer {layer}: padding {padding} is more than half the kernel size {kernel}"
            ),
            KernelExceedsInput { network, layer, kernel, padding, input } => write!(
                f,
                "{network} layer {layer}: a {kernel}x{kernel} kernel does not fit in the {}x{} input padded by {padding}",
                input[0], input[1]
            ),
            OutputShape { network, expected, found } => write!(
                f,
                "the {network} produces {}x{}x{} (CxHxW) feature maps but the input images are {}x{}x{}",
                found[0], found[1], found[2], expected[0], expected[1], expected[2]
            ),
            LayerVersion { network, layer, kind, needed, declared } => write!(
                f,
                "{network} layer {layer} is a {kind} layer, which needs format version {needed}, but the file declares version {declared}"
            ),
            NormVersion { declared } => write!(
                f,
                "the purifier uses the L2 ball, which needs format version 2, but the file declares version {declared}"
            ),
            Int8InDenoiser { layer } => write!(
                f,
                "denoiser layer {layer} has int8 activations; only a classifier may (the purifier needs the denoiser's exact gradient)"
            ),
            BadInputMultiplier { network, layer } => write!(
                f,
                "{network} layer {layer}: the int8 input multiplier must be finite and > 0"
            ),
            FanInTooLarge { network, layer, fan_in } => write!(
                f,
                "{network} layer {layer}: fan-in {fan_in} is too large for int8 activations (at most {}, so that integer sums fit 32 bits)",
                crate::int8::MAX_FAN_IN
            ),
        }
    }
}

impl core::error::Error for FormatError {}

impl From<ConfigError> for FormatError {
    fn from(e: ConfigError) -> Self {
        FormatError::Config(e)
    }
}

/// Why a purification, gradient or classification call was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The input slice has the wrong length.
    InputLength {
        /// Length the model takes.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// The input holds NaN or ±Inf.
    NonFiniteInput {
        /// First offending index.
        index: usize,
    },
    /// Purification needs pixels in `[0, 1]`.
    InputOutOfRange {
        /// First offending index.
        index: usize,
    },
    /// A caller-supplied buffer has the wrong length.
    BufferLength {
        /// Which buffer.
        buffer: &'static str,
        /// Required length (for scratch: the minimum).
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// A purifier override is out of range.
    Config(ConfigError),
    /// A [`crate::NoiseTable`] was made for other noise settings (seed, σ, M,
    /// generator) or for a model with another input length.
    NoiseTableMismatch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::InputLength { expected, found } => {
                write!(f, "input has {found} values but the model takes {expected}")
            }
            Error::NonFiniteInput { index } => {
                write!(f, "input value at index {index} is NaN or infinite")
            }
            Error::InputOutOfRange { index } => {
                write!(f, "input value at index {index} is outside [0, 1]")
            }
            Error::BufferLength {
                buffer,
                expected,
                found,
            } => write!(
                f,
                "{buffer} buffer has {found} elements, {expected} required"
            ),
            Error::Config(e) => e.fmt(f),
            Error::NoiseTableMismatch => f.write_str(
                "the noise table was made for other noise settings (seed, sigma, \
                 noise samples, generator) or another model",
            ),
        }
    }
}

impl core::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
