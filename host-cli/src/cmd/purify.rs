//! `pursamere purify` and `pursamere classify`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_core::digest_f32;
use pursamere_trainer::data::encode_png;
use serde_json::json;

use super::export::PurifierArgs;
use super::images::{class_names, load_inputs, model_bytes, parse_model, InputArgs};
use super::{fast_scratch, write_file};

#[derive(Args, Debug)]
pub struct PurifyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output folder (created if missing) for NAME.purified.png / NAME.purified.f32
    /// (NAME: the PNG's file name without extension, or idx-INDEX). Existing files
    /// are overwritten only with --force.
    #[arg(long, default_value = "purified")]
    pub out: PathBuf,
    /// Overwrite output files that --out already holds.
    #[arg(long)]
    pub force: bool,
    /// Also write the purified image as raw little-endian f32 values (NAME.purified.f32).
    #[arg(long)]
    pub raw: bool,
    /// Do not write PNG files.
    #[arg(long)]
    pub no_png: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub purifier: PurifierArgs,
}

#[derive(Args, Debug)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Purify each image (model's settings plus the purifier flags below) before
    /// classifying it; the purifier flags are refused without it.
    #[arg(long)]
    pub purify: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub purifier: PurifierArgs,
}

fn softmax_max(logits: &[f32]) -> f32 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|v| (v - m).exp()).sum();
    1.0 / z
}

/// Refuses inputs whose output files would overwrite each other: the same file
/// name (stem) from different folders, e.g. `a/x.png` and `b/x.png`.
fn check_distinct_names(png: &[PathBuf]) -> Result<()> {
    let mut seen: std::collections::HashMap<std::ffi::OsString, &PathBuf> =
        std::collections::HashMap::new();
    for p in png {
        let Some(stem) = p.file_stem() else { continue };
        if let Some(first) = seen.get(stem) {
            let same = match (first.canonicalize(), p.canonicalize()) {
                (Ok(x), Ok(y)) => x == y,
                _ => *first == p,
            };
            if same {
                anyhow::bail!("{} is given twice", p.display());
            }
            anyhow::bail!(
                "{} and {} would both be written as {}.purified.*; rename one or purify them in separate runs",
                first.display(),
                p.display(),
                stem.to_string_lossy()
            );
        }
        seen.insert(stem.to_owned(), p);
    }
    Ok(())
}

pub fn run_purify(a: PurifyArgs) -> Result<i32> {
    let bytes = model_bytes(&a.input.model)?;
    let model = parse_model(&bytes, &a.input.model)?;
    let cfg = a.purifier.apply(model.purifier_config())?;
    let inputs = load_inputs(&a.input, &model)?;
    if !a.no_png || a.raw {
        check_distinct_names(&a.input.png)?;
    }
    let files: Vec<String> = inputs
        .iter()
        .flat_map(|i| {
            let png = (!a.no_png).then(|| format!("{}.purified.png", i.name));
            let raw = a.raw.then(|| format!("{}.purified.f32", i.name));
            png.into_iter().chain(raw)
        })
        .collect();
    let out_dir = if files.is_empty() {
        None
    } else {
        Some(super::OutDir::prepare(&a.out, "--out", &files, a.force)?)
    };
    let write_out = |p: &std::path::Path, bytes: &[u8]| match &out_dir {
        Some(d) => d.write(p, bytes),
        None => write_file(p, bytes),
    };
    let shape = model.spec().meta.input_shape;
    let mut aligned = fast_scratch(&model, &cfg);
    let scratch = aligned.as_mut_slice();
    // SIMD dense kernels chosen for this CPU (same bits as the core's own).
    let kernels = pursamere_accel::Accel::detect().prepare(&model);
    // The noise depends on the settings, not the image: generated once.
    let mut noise_buf = vec![0.0; model.noise_table_len(&cfg)];
    let noise = model.noise_table(&cfg, &mut noise_buf)?;
    let mut logits = vec![0.0; model.num_classes()];
    let mut out = vec![0.0; model.input_len()];
    let mut report = Vec::new();
    for inp in &inputs {
        let before = model.classify_with(&kernels, &inp.pixels, &mut logits, scratch)?;
        model
            .purify_with_noise(&kernels, &inp.pixels, &cfg, &noise, &mut out, scratch)
            .with_context(|| format!("purifying {}", inp.name))?;
        let after = model.classify_with(&kernels, &out, &mut logits, scratch)?;
        let mut files = Vec::new();
        if !a.no_png {
            let px: Vec<u8> = out
                .iter()
                .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
                .collect();
            let p = a.out.join(format!("{}.purified.png", inp.name));
            write_out(
                &p,
                &encode_png(
                    usize::from(shape.channels),
                    usize::from(shape.width),
                    usize::from(shape.height),
                    &px,
                )
                .with_context(|| format!("writing {}", p.display()))?,
            )?;
            files.push(p.display().to_string());
        }
        if a.raw {
            let p = a.out.join(format!("{}.purified.f32", inp.name));
            let raw: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
            write_out(&p, &raw)?;
            files.push(p.display().to_string());
        }
        let max_change = out
            .iter()
            .zip(&inp.pixels)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let mut r = json!({"input": inp.name, "label_before": before, "label_after": after,
            "max_abs_change": max_change, "crc32": format!("{:08x}", digest_f32(&out)), "files": files});
        if let Some(t) = inp.label {
            r["true_label"] = json!(t);
        }
        report.push(r);
    }
    if let Some(d) = out_dir {
        d.keep()?;
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"purifier": cfg, "images": report}))?
        )?;
    } else {
        let known = inputs.iter().any(|i| i.label.is_some());
        outln!(
            "{:<24} {:>5} {:>6} {:>6} {:>11} {:>9}  files",
            "input",
            if known { "true" } else { "" },
            "before",
            "after",
            "max |diff|",
            "crc32"
        )?;
        for r in &report {
            outln!(
                "{:<24} {:>5} {:>6} {:>6} {:>11.4} {:>9}  {}",
                r["input"].as_str().unwrap_or(""),
                r["true_label"]
                    .as_u64()
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
                r["label_before"].as_u64().unwrap_or(0),
                r["label_after"].as_u64().unwrap_or(0),
                r["max_abs_change"].as_f64().unwrap_or(0.0),
                r["crc32"].as_str().unwrap_or(""),
                r["files"]
                    .as_array()
                    .map(|f| f
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(0)
}

pub fn run_classify(a: ClassifyArgs) -> Result<i32> {
    let given = a.purifier.given();
    if !a.purify && !given.is_empty() {
        anyhow::bail!(
            "purifier flags ({}) apply only with --purify: classify does not purify without it",
            given.join(", ")
        );
    }
    let bytes = model_bytes(&a.input.model)?;
    let model = parse_model(&bytes, &a.input.model)?;
    let cfg = a.purifier.apply(model.purifier_config())?;
    let inputs = load_inputs(&a.input, &model)?;
    let names = class_names(&model);
    let name = |l: usize| names.get(l).cloned().unwrap_or_else(|| l.to_string());
    let mut aligned = fast_scratch(&model, &cfg);
    let scratch = aligned.as_mut_slice();
    // SIMD dense kernels chosen for this CPU (same bits as the core's own).
    let kernels = pursamere_accel::Accel::detect().prepare(&model);
    // The noise depends on the settings, not the image: generated once.
    let mut noise_buf = vec![
        0.0;
        if a.purify {
            model.noise_table_len(&cfg)
        } else {
            0
        }
    ];
    let noise = if a.purify {
        Some(model.noise_table(&cfg, &mut noise_buf)?)
    } else {
        None
    };
    let mut logits = vec![0.0; model.num_classes()];
    let mut out = vec![0.0; model.input_len()];
    let mut report = Vec::new();
    for inp in &inputs {
        let x = if let Some(noise) = &noise {
            model.purify_with_noise(&kernels, &inp.pixels, &cfg, noise, &mut out, scratch)?;
            &out
        } else {
            &inp.pixels
        };
        let label = model.classify_with(&kernels, x, &mut logits, scratch)?;
        let mut r = json!({"input": inp.name, "label": label, "class": name(label),
            "confidence": softmax_max(&logits), "logits": logits.clone()});
        if let Some(t) = inp.label {
            r["true_label"] = json!(t);
            r["true_class"] = json!(name(t));
            r["correct"] = json!(t == label);
        }
        report.push(r);
    }
    let known: Vec<bool> = inputs.iter().map(|i| i.label.is_some()).collect();
    let correct = report.iter().filter(|r| r["correct"] == true).count();
    let labelled = known.iter().filter(|&&k| k).count();
    if a.json {
        let mut v = json!({"purified": a.purify, "images": report});
        if a.purify {
            v["purifier"] = json!(cfg);
        }
        if labelled > 0 {
            v["accuracy"] = json!(correct as f64 / labelled as f64);
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let width = names.iter().map(String::len).max().unwrap_or(5).max(5);
        if labelled > 0 {
            outln!(
                "{:<24} {:<w$} {:<w$} {:>10}",
                "input",
                "true",
                "predicted",
                "confidence",
                w = width.max(9)
            )?;
        } else {
            outln!(
                "{:<24} {:<w$} {:>10}",
                "input",
                "predicted",
                "confidence",
                w = width.max(9)
            )?;
        }
        for r in &report {
            let input = r["input"].as_str().unwrap_or("");
            let class = r["class"].as_str().unwrap_or("");
            let conf = 100.0 * r["confidence"].as_f64().unwrap_or(0.0);
            if labelled > 0 {
                let t = r["true_class"].as_str().unwrap_or("?");
                let mark = if r["correct"] == false { "  wrong" } else { "" };
                outln!(
                    "{input:<24} {t:<w$} {class:<w$} {conf:>8.1} %{mark}",
                    w = width.max(9)
                )?;
            } else {
                outln!("{input:<24} {class:<w$} {conf:>8.1} %", w = width.max(9))?;
            }
        }
        if labelled > 0 {
            outln!(
                "accuracy: {correct} of {labelled} correct ({:.1} %)",
                100.0 * correct as f64 / labelled as f64
            )?;
        }
    }
    Ok(0)
}
