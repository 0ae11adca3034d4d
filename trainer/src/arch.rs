//! Network architectures chosen at run time from a short description, so a model
//! can be resized for a board without recompiling.
//!
//! A description is a comma-separated list of hidden layers, each followed by a
//! ReLU; the output layer is added (to the classes for a classifier, back to the
//! image for a denoiser):
//!
//! * `dense<N>`: dense layer with `N` outputs (`dense256`);
//! * `conv<C>[x<K>][s<S>]`: `K × K` convolution (default 3) to `C` channels, stride
//!   `S` (1 or 2, default 1), "same" zero padding `⌊K/2⌋` (`conv32`, `conv64s2`,
//!   `conv16x5`);
//! * `up`: nearest-neighbour ×2 upsampling (no ReLU after it).
//!
//! A dense layer after a convolution reads the channel-major map as a vector; a
//! convolution after a dense layer is refused (it would have to guess a map shape).
//! The denoiser's output layer is a `3 × 3` convolution back to the image's
//! channels when the last hidden layer is spatial (it must then be at the image's
//! height and width: add `up` after a stride-2 layer), a dense layer otherwise.
//! Example: the classifier `conv32,conv32s2,conv64s2,dense128` and the denoiser
//! `conv32,conv32s2,conv32,up`.

use pursamere_core::InputShape;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{conv_layer, dense_layer, ConvGeometry, FloatLayer, FloatNet};

/// Largest convolution kernel side the core accepts.
const MAX_KERNEL: usize = pursamere_core::MAX_KERNEL as usize;

/// The most weights and biases a network built here may have (100 M: 400 MB of
/// f32, several times that with the optimiser's moments), and the most values one
/// layer may output per image: checked before anything is allocated, so a mistyped
/// width is an error naming it, not an allocation failure that aborts.
pub const MAX_PARAMETERS: usize = 100_000_000;
/// See [`MAX_PARAMETERS`].
pub const MAX_ACTIVATIONS: usize = 16_000_000;

/// One hidden layer of a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchLayer {
    /// Dense layer with this many outputs.
    Dense(usize),
    /// Convolution: output channels, kernel side, stride.
    Conv {
        /// Output channels.
        channels: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride (1 or 2).
        stride: usize,
    },
    /// Nearest-neighbour ×2 upsampling.
    Up,
}

/// A description that cannot be parsed or built; the message names the item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("architecture `{description}`: {why}")]
pub struct ArchError {
    /// The description as given.
    pub description: String,
    /// What is wrong.
    pub why: String,
}

/// What the network ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchOutput {
    /// A classifier: a dense layer to this many classes.
    Classes(usize),
    /// A denoiser: back to the image.
    Image,
}

/// Parses a description (see the module documentation). An empty string is no
/// hidden layer.
pub fn parse_arch(description: &str) -> Result<Vec<ArchLayer>, ArchError> {
    let err = |why: String| ArchError {
        description: description.to_owned(),
        why,
    };
    let mut out = Vec::new();
    for item in description
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let number = |s: &str, what: &str| -> Result<usize, ArchError> {
            match s.parse::<usize>() {
                Ok(0) | Err(_) => Err(err(format!(
                    "`{item}`: {what} must be a whole number ≥ 1, got `{s}`"
                ))),
                Ok(v) => Ok(v),
            }
        };
        let layer = if item == "up" {
            ArchLayer::Up
        } else if let Some(n) = item.strip_prefix("dense") {
            ArchLayer::Dense(number(n, "the width")?)
        } else if let Some(rest) = item.strip_prefix("conv") {
            let (rest, stride) = match rest.split_once('s') {
                Some((r, s)) => (r, number(s, "the stride")?),
                None => (rest, 1),
            };
            let (channels, kernel) = match rest.split_once('x') {
                Some((c, k)) => (number(c, "the channel count")?, number(k, "the kernel")?),
                None => (number(rest, "the channel count")?, 3),
            };
            if stride > 2 {
                return Err(err(format!("`{item}`: the stride must be 1 or 2")));
            }
            if kernel > MAX_KERNEL {
                return Err(err(format!(
                    "`{item}`: the kernel side must be at most {MAX_KERNEL}"
                )));
            }
            ArchLayer::Conv {
                channels,
                kernel,
                stride,
            }
        } else {
            return Err(err(format!(
                "unknown layer `{item}` (expected dense<N>, conv<C>[x<K>][s<S>] or up)"
            )));
        };
        out.push(layer);
    }
    Ok(out)
}

/// Builds a fresh network for images of `shape`: the hidden layers of `hidden`,
/// a ReLU after each dense or conv layer, then the output layer. Weights are
/// He-uniform scaled by `gain`, from `seed`.
pub fn build_arch(
    description: &str,
    hidden: &[ArchLayer],
    shape: InputShape,
    output: ArchOutput,
    residual: bool,
    gain: f32,
    seed: u64,
) -> Result<FloatNet, ArchError> {
    let err = |why: String| ArchError {
        description: description.to_owned(),
        why,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (c0, h0, w0) = (
        usize::from(shape.channels),
        usize::from(shape.height),
        usize::from(shape.width),
    );
    // The current map (channels, height, width), or `None` once flattened.
    let mut map = Some((c0, h0, w0));
    let mut len = c0 * h0 * w0;
    let mut layers = Vec::new();
    // Parameters so far; each layer's are added (and checked) before it is built.
    let mut parameters = 0usize;
    let mut grow = |what: String, weights: Option<usize>, out_len: Option<usize>| {
        let total = weights.and_then(|w| w.checked_add(parameters));
        match (total, out_len) {
            (Some(t), Some(o)) if t <= MAX_PARAMETERS && o <= MAX_ACTIVATIONS => {
                parameters = t;
                Ok(())
            }
            _ => Err(err(format!(
                "{what} makes the network larger than this trainer builds (at most \
                 {MAX_PARAMETERS} parameters, {MAX_ACTIVATIONS} values per layer output)"
            ))),
        }
    };
    let dense_size = |i: usize, o: usize| i.checked_mul(o).and_then(|w| w.checked_add(o));
    let conv_size = |c: usize, o: usize, k: usize| {
        c.checked_mul(o)
            .and_then(|w| w.checked_mul(k * k))
            .and_then(|w| w.checked_add(o))
    };
    for l in hidden {
        match *l {
            ArchLayer::Dense(n) => {
                grow(format!("dense{n}"), dense_size(len, n), Some(n))?;
                layers.push(dense_layer(len, n, gain, &mut rng));
                layers.push(FloatLayer::Relu);
                map = None;
                len = n;
            }
            ArchLayer::Conv {
                channels,
                kernel,
                stride,
            } => {
                let Some((c, h, w)) = map else {
                    return Err(err(format!(
                        "conv{channels} follows a dense layer; put convolutions first"
                    )));
                };
                let geometry = ConvGeometry {
                    in_channels: c,
                    out_channels: channels,
                    height: h,
                    width: w,
                    kernel,
                    stride,
                    padding: kernel / 2,
                };
                let out_len = channels
                    .checked_mul(geometry.out_height())
                    .and_then(|v| v.checked_mul(geometry.out_width()));
                grow(
                    format!("conv{channels}"),
                    conv_size(c, channels, kernel),
                    out_len,
                )?;
                if geometry.output_len() == 0 {
                    return Err(err(format!(
                        "a {kernel}x{kernel} kernel does not fit the {h}x{w} map"
                    )));
                }
                layers.push(conv_layer(geometry, gain, &mut rng));
                layers.push(FloatLayer::Relu);
                map = Some((channels, geometry.out_height(), geometry.out_width()));
                len = geometry.output_len();
            }
            ArchLayer::Up => {
                let Some((c, h, w)) = map else {
                    return Err(err("`up` follows a dense layer".to_owned()));
                };
                grow("`up`".to_owned(), Some(0), len.checked_mul(4))?;
                layers.push(FloatLayer::Upsample2x {
                    channels: c,
                    height: h,
                    width: w,
                });
                map = Some((c, 2 * h, 2 * w));
                len *= 4;
            }
        }
    }
    let out_weights = match (output, map) {
        (ArchOutput::Classes(n), _) => dense_size(len, n),
        (ArchOutput::Image, Some((c, _, _))) if !layers.is_empty() => conv_size(c, c0, 3),
        (ArchOutput::Image, _) => dense_size(len, c0 * h0 * w0),
    };
    grow("the output layer".to_owned(), out_weights, Some(len))?;
    match (output, map) {
        (ArchOutput::Classes(n), _) => layers.push(dense_layer(len, n, gain, &mut rng)),
        (ArchOutput::Image, Some((c, h, w))) if !layers.is_empty() => {
            if (h, w) != (h0, w0) {
                return Err(err(format!(
                    "the denoiser's last map is {h}x{w}, the image {h0}x{w0}: add `up` after each stride-2 layer"
                )));
            }
            layers.push(conv_layer(
                ConvGeometry {
                    in_channels: c,
                    out_channels: c0,
                    height: h,
                    width: w,
                    kernel: 3,
                    stride: 1,
                    padding: 1,
                },
                gain,
                &mut rng,
            ));
        }
        (ArchOutput::Image, _) => layers.push(dense_layer(len, c0 * h0 * w0, gain, &mut rng)),
    }
    let net = FloatNet { residual, layers };
    net.check(c0 * h0 * w0).map_err(err)?;
    Ok(net)
}
