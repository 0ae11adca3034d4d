//! The deployed system: the int8 core's predictions, on every thread.
//!
//! Every verdict of the evaluation comes from here, never from the float reference
//! the gradient attacks differentiate. Purification runs with the host's SIMD
//! kernels (`pursamere-accel`, chosen at run time), which give the core's bits
//! exactly (`accel/tests/same_bits.rs`); `PURSAMERE_SIMD=portable` uses the
//! core's own kernels.

use pursamere_accel::{Accel, AlignedF32};
use pursamere_core::{Error as CoreError, Model, PurifierConfig};

use super::workers::parallel_ranges;

/// Length of the scratch for the fastest host path of `purify` with `cfg` (all
/// noise samples batched) that also serves `classify`, `denoise`.
pub fn fast_scratch_len(model: &Model<'_>, cfg: &PurifierConfig) -> usize {
    model
        .purify_scratch_len_batched(cfg, cfg.noise_samples as usize)
        .max(model.classify_scratch_len())
        .max(model.denoise_scratch_len())
}

/// Purifies and classifies every image of `x` (row-major) with the core on all
/// threads: `(purified pixels, labels)`; `on_image` is called once per image.
pub fn purify_classify(
    model: &Model<'_>,
    cfg: &PurifierConfig,
    x: &[f32],
    on_image: &(dyn Fn() + Sync),
) -> Result<(Vec<f32>, Vec<usize>), CoreError> {
    let d = model.input_len();
    let n = x.len() / d.max(1);
    let kernels = Accel::detect().prepare(model);
    // The noise depends on the settings only: generated once for every image.
    let mut noise_buf = vec![0.0; model.noise_table_len(cfg)];
    let noise = model.noise_table(cfg, &mut noise_buf)?;
    let rows = parallel_ranges(n, |range| {
        let mut scratch = AlignedF32::zeroed(fast_scratch_len(model, cfg));
        let scratch = scratch.as_mut_slice();
        let mut logits = vec![0.0; model.num_classes()];
        let mut out = Vec::with_capacity(range.len());
        for i in range {
            let img = x.get(i * d..(i + 1) * d).unwrap_or(&[]);
            let mut p = vec![0.0; d];
            model.purify_with_noise(&kernels, img, cfg, &noise, &mut p, scratch)?;
            let l = model.classify_with(&kernels, &p, &mut logits, scratch)?;
            out.push((p, l));
            on_image();
        }
        Ok::<_, CoreError>(out)
    })?;
    let mut px = Vec::with_capacity(x.len());
    let mut labels = Vec::with_capacity(n);
    for (p, l) in rows {
        px.extend(p);
        labels.push(l);
    }
    Ok((px, labels))
}

/// Classifies every image with the core (no purification).
pub fn classify(model: &Model<'_>, x: &[f32]) -> Result<Vec<usize>, CoreError> {
    let d = model.input_len();
    let mut scratch = vec![0.0; model.classify_scratch_len()];
    let mut logits = vec![0.0; model.num_classes()];
    x.chunks(d.max(1))
        .map(|img| model.classify(img, &mut logits, &mut scratch))
        .collect()
}

/// Denoises once with the core, then classifies.
pub fn denoise_classify(model: &Model<'_>, x: &[f32]) -> Result<Vec<usize>, CoreError> {
    let d = model.input_len();
    let mut out = vec![0.0; x.len()];
    let mut scratch = vec![0.0; model.denoise_scratch_len()];
    for (xi, oi) in x.chunks(d.max(1)).zip(out.chunks_mut(d.max(1))) {
        model.denoise(xi, oi, &mut scratch)?;
    }
    // The denoiser may leave [0, 1]; the classifier takes any finite input.
    classify(model, &out)
}

/// Logits of the deployed system for every image of `x` (row-major), on all
/// threads: purified with `purifier` when given, else denoised once when `denoise`,
/// else classified as they are. What the Square attack queries.
pub fn logits(
    model: &Model<'_>,
    purifier: Option<&PurifierConfig>,
    denoise: bool,
    x: &[f32],
) -> Result<Vec<f32>, CoreError> {
    let d = model.input_len();
    let n = x.len() / d.max(1);
    let c = model.num_classes();
    // Widening the weights and generating the noise once per call cost far less
    // than one purification.
    let mut noise_buf = purifier.map_or_else(Vec::new, |cfg| vec![0.0; model.noise_table_len(cfg)]);
    let purifier = match purifier {
        Some(cfg) => Some((
            cfg,
            Accel::detect().prepare(model),
            model.noise_table(cfg, &mut noise_buf)?,
        )),
        None => None,
    };
    let rows = parallel_ranges(n, |range| {
        let len = match &purifier {
            Some((cfg, _, _)) => fast_scratch_len(model, cfg),
            None => model
                .denoise_scratch_len()
                .max(model.classify_scratch_len()),
        };
        let mut scratch = AlignedF32::zeroed(len);
        let scratch = scratch.as_mut_slice();
        let mut buf = vec![0.0; d];
        let mut out = Vec::with_capacity(range.len() * c);
        for i in range {
            let img = x.get(i * d..(i + 1) * d).unwrap_or(&[]);
            let input: &[f32] = match &purifier {
                Some((cfg, kernels, noise)) => {
                    model.purify_with_noise(kernels, img, cfg, noise, &mut buf, scratch)?;
                    &buf
                }
                None if denoise => {
                    model.denoise(img, &mut buf, scratch)?;
                    &buf
                }
                None => img,
            };
            let mut z = vec![0.0; c];
            model.classify(input, &mut z, scratch)?;
            out.push(z);
        }
        Ok::<_, CoreError>(out)
    })?;
    Ok(rows.into_iter().flatten().collect())
}
