//! Converting a model's classifier to int8 activations (format version 4, the
//! core's `Int8Dense` / `Int8Conv2d`): calibration of each layer's input range on
//! training images, and the rewrite of the model file.
//!
//! Every `Dense` and `Conv2d` layer of the classifier becomes its int8 form with the
//! same int8 weights and biases. Its input multiplier is `m = 127 / r`, where `r` is
//! the largest `|input|` that layer saw over the calibration images (so nothing seen
//! in calibration is clipped; a first layer on `[0, 1]` pixels gets `m = 127`), and
//! its stored output scales become `scale / m` (the core dequantises an integer sum
//! with them). The denoiser and the purifier settings are copied unchanged.

use pursamere_core::{
    encoded_len, write_model, FormatError, Int8Conv2d, Int8Dense, Layer, Model, ModelSpec,
};

/// Why a classifier could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    /// No calibration images were given.
    #[error("no calibration images: the input ranges of the layers are measured on them")]
    NoImages,
    /// A calibration image has the wrong length.
    #[error("calibration image {index} has {found} values, the model takes {expected}")]
    ImageLength {
        /// Image index.
        index: usize,
        /// The model's input length.
        expected: usize,
        /// The image's length.
        found: usize,
    },
    /// A calibration image holds a NaN or an infinity.
    #[error("calibration image {index} holds a value that is not finite")]
    NonFinite {
        /// Image index.
        index: usize,
    },
    /// The classifier is already int8 (or has no dense or conv layer).
    #[error("the classifier has no float dense or conv layer to convert (already int8?)")]
    NothingToConvert,
    /// The converted model is not valid (e.g. a fan-in too large for int8 sums).
    #[error("the converted model is not valid: {0}")]
    Format(#[from] FormatError),
}

/// Largest `|input|` of every classifier layer over `images` (0 for a layer that
/// only saw zeros). Runs the core's layers one after another.
pub fn calibrate_input_ranges<'i>(
    model: &Model<'_>,
    images: impl IntoIterator<Item = &'i [f32]>,
) -> Result<Vec<f32>, Int8Error> {
    let layers = &model.spec().classifier.layers;
    let mut ranges = vec![0.0f32; layers.len()];
    let mut seen = 0usize;
    for (index, image) in images.into_iter().enumerate() {
        if image.len() != model.input_len() {
            return Err(Int8Error::ImageLength {
                index,
                expected: model.input_len(),
                found: image.len(),
            });
        }
        if image.iter().any(|v| !v.is_finite()) {
            return Err(Int8Error::NonFinite { index });
        }
        let mut x = image.to_vec();
        for (layer, r) in layers.iter().zip(&mut ranges) {
            *r = x.iter().fold(*r, |a, v| a.max(v.abs()));
            let mut y = vec![0.0f32; layer.output_len(x.len())];
            layer.forward(&x, &mut y);
            x = y;
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(Int8Error::NoImages);
    }
    Ok(ranges)
}

/// The input multiplier for a measured range (`127 / r`; 127 for a layer whose
/// input was always 0, as for `[0, 1]` pixels).
pub fn multiplier_for_range(r: f32) -> f32 {
    if r > 0.0 && r.is_finite() {
        127.0 / r
    } else {
        127.0
    }
}

/// Per-row scales divided by `m` (little-endian f32 bytes in, the same out).
fn folded_scales(scales: &[u8], m: f32) -> Vec<u8> {
    scales
        .chunks_exact(4)
        .flat_map(|c| {
            let s = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (s / m).to_le_bytes()
        })
        .collect()
}

/// `Ok` when `model`'s classifier has a float dense or conv layer to convert (check
/// it before reading calibration data), [`Int8Error::NothingToConvert`] otherwise.
pub fn ensure_convertible(model: &Model<'_>) -> Result<(), Int8Error> {
    let layers = &model.spec().classifier.layers;
    if layers
        .iter()
        .any(|l| matches!(l, Layer::Dense(_) | Layer::Conv2d(_)))
    {
        Ok(())
    } else {
        Err(Int8Error::NothingToConvert)
    }
}

/// Writes `model` with its classifier's dense and conv layers in int8 form, with the
/// input multipliers of `ranges` (one per classifier layer, from
/// [`calibrate_input_ranges`]). Returns the new file's bytes (format version 4).
pub fn int8_classifier_model(model: &Model<'_>, ranges: &[f32]) -> Result<Vec<u8>, Int8Error> {
    ensure_convertible(model)?;
    let layers = &model.spec().classifier.layers;
    let folded: Vec<(f32, Option<Vec<u8>>)> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let m = multiplier_for_range(ranges.get(i).copied().unwrap_or(0.0));
            let scales = match l {
                Layer::Dense(d) => Some(folded_scales(d.scales, m)),
                Layer::Conv2d(c) => Some(folded_scales(c.scales, m)),
                _ => None,
            };
            (m, scales)
        })
        .collect();
    let mut spec: ModelSpec<'_> = model.spec().clone();
    for (l, (m, scales)) in spec.classifier.layers.iter_mut().zip(&folded) {
        let Some(scales) = scales else { continue };
        *l = match *l {
            Layer::Dense(mut dense) => {
                dense.scales = scales;
                Layer::Int8Dense(Int8Dense {
                    input_multiplier: *m,
                    dense,
                })
            }
            Layer::Conv2d(mut conv) => {
                conv.scales = scales;
                Layer::Int8Conv2d(Int8Conv2d {
                    input_multiplier: *m,
                    conv,
                })
            }
            other => other,
        };
    }
    let mut out = vec![0u8; encoded_len(&spec)?];
    let n = write_model(&spec, &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/mnist-robust.psm"
        ))
        .unwrap()
    }

    #[test]
    fn conversion_keeps_weights_and_folds_the_scales() {
        let bytes = shipped();
        let model = Model::parse(&bytes).unwrap();
        let images: Vec<Vec<f32>> = (0..4)
            .map(|k| {
                (0..model.input_len())
                    .map(|i| ((i * 7 + k * 13) % 17) as f32 / 16.0)
                    .collect()
            })
            .collect();
        let ranges = calibrate_input_ranges(&model, images.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(ranges[0], 1.0);
        let out = int8_classifier_model(&model, &ranges).unwrap();
        let q = Model::parse(&out).unwrap();
        assert_eq!(q.spec().denoiser, model.spec().denoiser);
        assert_eq!(q.spec().purifier, model.spec().purifier);
        for ((a, b), &r) in model
            .spec()
            .classifier
            .layers
            .iter()
            .zip(&q.spec().classifier.layers)
            .zip(&ranges)
        {
            match (a, b) {
                (Layer::Dense(f), Layer::Int8Dense(i)) => {
                    assert_eq!(i.input_multiplier, multiplier_for_range(r));
                    assert_eq!(f.weights, i.dense.weights);
                    assert_eq!(f.bias, i.dense.bias);
                    assert_eq!(i.dense.scale(0), f.scale(0) / i.input_multiplier);
                }
                (Layer::Conv2d(f), Layer::Int8Conv2d(i)) => {
                    assert_eq!(f.weights, i.conv.weights);
                    assert_eq!(i.conv.scale(1), f.scale(1) / i.input_multiplier);
                }
                (Layer::Relu, Layer::Relu) => {}
                other => panic!("unexpected pair {other:?}"),
            }
        }
        // A second conversion has nothing left to do.
        assert!(matches!(
            int8_classifier_model(&q, &ranges),
            Err(Int8Error::NothingToConvert)
        ));
    }

    #[test]
    fn calibration_refuses_bad_images() {
        let bytes = shipped();
        let model = Model::parse(&bytes).unwrap();
        let none: [&[f32]; 0] = [];
        assert!(matches!(
            calibrate_input_ranges(&model, none),
            Err(Int8Error::NoImages)
        ));
        let short = vec![0.0f32; 3];
        assert!(matches!(
            calibrate_input_ranges(&model, [short.as_slice()]),
            Err(Int8Error::ImageLength { found: 3, .. })
        ));
        let mut nan = vec![0.0f32; model.input_len()];
        nan[5] = f32::NAN;
        assert!(matches!(
            calibrate_input_ranges(&model, [nan.as_slice()]),
            Err(Int8Error::NonFinite { index: 0 })
        ));
    }
}
