//! `pursamere int8`: convert a model's classifier to int8 activations (format
//! version 4), calibrated on TRAIN images, and report the accuracy it keeps on the
//! TRAIN hold-out.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::Model;
use pursamere_trainer::data::{load_dataset_dir, Dataset, Split, HOLDOUT_SEED};
use pursamere_trainer::eval::deployed::classify;
use pursamere_trainer::int8::{
    calibrate_input_ranges, ensure_convertible, int8_classifier_model, multiplier_for_range,
};

use super::read_file;

#[derive(Args, Debug)]
pub struct Int8Args {
    /// The model whose classifier to convert (.psm).
    #[arg(long)]
    pub model: PathBuf,
    /// Data set directory (its TRAIN split: calibration and hold-out).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder (created if missing); the model is written there as
    /// `<name>-int8.psm`, `<name>` being --model's file stem.
    #[arg(long)]
    pub out: PathBuf,
    /// TRAIN images (after the hold-out) whose layer inputs set the quantisation ranges.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calibration: u64,
    /// TRAIN hold-out size (the same seeded hold-out as `train --validation`) on which
    /// the float and int8 classifiers' accuracies are reported; 0 skips the report.
    #[arg(long, default_value_t = 5000)]
    pub validation: usize,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Accuracy of `model`'s classifier (no purification) on every image of `data`.
fn accuracy(model: &Model<'_>, data: &Dataset) -> Result<f64> {
    let x: Vec<f32> = data.pixels.iter().map(|&v| f32::from(v) / 255.0).collect();
    let labels = classify(model, &x)?;
    let right = labels
        .iter()
        .zip(&data.labels)
        .filter(|(&c, &l)| c == usize::from(l))
        .count();
    Ok(right as f64 / data.len().max(1) as f64)
}

pub fn run(a: Int8Args) -> Result<i32> {
    let bytes = read_file(&a.model)?;
    let model = Model::parse(&bytes)
        .with_context(|| format!("{} is not a valid model", a.model.display()))?;
    let Some(stem) = a.model.file_stem().and_then(|n| n.to_str()) else {
        bail!("--model {}: not a file name", a.model.display());
    };
    // Before reading any data.
    ensure_convertible(&model).with_context(|| format!("--model {}", a.model.display()))?;
    let name = format!("{stem}-int8.psm");
    let out_dir = super::OutDir::prepare(&a.out, "--out", std::slice::from_ref(&name), a.force)?;
    let full = load_dataset_dir(&a.data, Split::Train)?;
    if full.image_len() != model.input_len() {
        bail!(
            "{}: images have {} values, the model takes {}",
            a.data.display(),
            full.image_len(),
            model.input_len()
        );
    }
    let (train, holdout) = if a.validation > 0 {
        full.split_validation(a.validation, HOLDOUT_SEED)
            .with_context(|| {
                format!(
                    "--validation {}: the TRAIN split of --data has {} images (a smaller --validation, or 0 to skip the report)",
                    a.validation,
                    full.len()
                )
            })?
    } else {
        let empty = full.select(&[]);
        (full, empty)
    };
    let n = usize::try_from(a.calibration)
        .unwrap_or(usize::MAX)
        .min(train.len());
    let images: Vec<Vec<f32>> = (0..n).filter_map(|i| train.image_f32(i)).collect();
    let ranges = calibrate_input_ranges(&model, images.iter().map(Vec::as_slice))?;
    let out = int8_classifier_model(&model, &ranges)?;
    let converted = Model::parse(&out).context("the converted model does not read back")?;
    let path = out_dir.join(&name);
    out_dir.write(&path, &out)?;
    out_dir.keep()?;
    outln!(
        "wrote {} (format version 4): the classifier's dense and conv layers on int8 inputs, calibrated on {n} TRAIN images",
        path.display()
    )?;
    for (i, (l, &r)) in model
        .spec()
        .classifier
        .layers
        .iter()
        .zip(&ranges)
        .enumerate()
    {
        if matches!(l.kind_name(), "dense" | "conv2d") {
            outln!(
                "  layer {i} ({}): input range {r:.4}, multiplier {:.4}",
                l.kind_name(),
                multiplier_for_range(r)
            )?;
        }
    }
    if !holdout.is_empty() {
        let (f, q) = (accuracy(&model, &holdout)?, accuracy(&converted, &holdout)?);
        outln!(
            "clean accuracy on the {} TRAIN hold-out images (classifier alone): float {:.2} %, int8 {:.2} %",
            holdout.len(),
            100.0 * f,
            100.0 * q
        )?;
    }
    Ok(0)
}
