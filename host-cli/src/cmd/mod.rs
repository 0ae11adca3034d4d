//! One module per subcommand, plus shared helpers.

pub mod demo;
pub mod eval;
pub mod export;
pub mod firmware;
pub mod fixtures;
pub mod images;
pub mod inspect;
pub mod purify;
pub mod train;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result};
use pursamere_trainer::eval::deployed;

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
    deployed::fast_scratch_len(model, cfg)
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
    deployed::parallel_ranges(n, f)
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
    Ok(deployed::purify_classify(model, cfg, x, &|| {
        if let Some(b) = bar {
            b.inc(1);
        }
    })?)
}

/// Classifies every image with the core (no purification).
pub fn core_classify(model: &pursamere_core::Model<'_>, x: &[f32]) -> Result<Vec<usize>> {
    Ok(deployed::classify(model, x)?)
}

/// Fraction of equal entries.
pub fn accuracy(pred: &[usize], truth: &[usize]) -> f64 {
    pred.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}
