//! One module per subcommand, plus shared helpers.

pub mod demo;
pub mod eval;
pub mod export;
pub mod firmware;
pub mod fixtures;
pub mod images;
pub mod inspect;
pub mod plot;
pub mod purify;
pub mod train;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result};

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a file atomically (temporary file, then rename), naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    pursamere_trainer::train::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Length of the scratch for the fastest host path of `purify` with `cfg` (all
/// noise samples batched) that also serves `classify`.
pub fn fast_scratch_len(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
) -> usize {
    model
        .purify_scratch_len_batched(cfg, cfg.noise_samples as usize)
        .max(model.classify_scratch_len())
}

/// Scratch of [`fast_scratch_len`].
pub fn fast_scratch(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
) -> Vec<f32> {
    vec![0.0; fast_scratch_len(model, cfg)]
}

/// Runs `f` over `0..n` split into one contiguous range per CPU thread and
/// concatenates the results in order.
pub fn parallel_ranges<T: Send>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .clamp(1, n.max(1));
    let per = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                s.spawn(move || f(t * per..((t + 1) * per).min(n)))
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("worker thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// Purifies and classifies every image of `x` (row-major) with the core on all
/// threads: `(purified pixels, labels)`.
pub fn core_purify_classify(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
    x: &[f32],
) -> Result<(Vec<f32>, Vec<usize>)> {
    core_purify_classify_progress(model, cfg, x, None)
}

/// [`core_purify_classify`] advancing a progress bar by one per image.
pub fn core_purify_classify_progress(
    model: &pursamere_core::Model<'_>,
    cfg: &pursamere_core::PurifierConfig,
    x: &[f32],
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(Vec<f32>, Vec<usize>)> {
    let d = model.input_len();
    let n = x.len() / d.max(1);
    let rows = parallel_ranges(n, |range| {
        let mut scratch = fast_scratch(model, cfg);
        let mut logits = vec![0.0; model.num_classes()];
        let mut out = Vec::with_capacity(range.len());
        for i in range {
            let img = x.get(i * d..(i + 1) * d).unwrap_or(&[]);
            let mut p = vec![0.0; d];
            model.purify(img, cfg, &mut p, &mut scratch)?;
            let l = model.classify(&p, &mut logits, &mut scratch)?;
            out.push((p, l));
            if let Some(b) = bar {
                b.inc(1);
            }
        }
        Ok(out)
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
pub fn core_classify(model: &pursamere_core::Model<'_>, x: &[f32]) -> Result<Vec<usize>> {
    let d = model.input_len();
    let mut scratch = vec![0.0; model.classify_scratch_len()];
    let mut logits = vec![0.0; model.num_classes()];
    x.chunks(d.max(1))
        .map(|img| Ok(model.classify(img, &mut logits, &mut scratch)?))
        .collect()
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}
