//! `pursamere verify`: the core (int8, host build) against the float host reference
//! (dfdx) with float weights and with dequantised weights, on clean test images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use dfdx::prelude::*;
use pursamere_core::{Model, PurifierConfig};
use pursamere_trainer::data::{load_mnist_dir, Dataset, Split};
use pursamere_trainer::model::{DeviceNet, FloatModel, FloatNet};
use pursamere_trainer::reference::Reference;
use pursamere_trainer::safetensors_io::from_safetensors;
use serde::Serialize;

use super::export::PurifierArgs;
use super::read_file;

/// Label agreement required between the core and the dequantised reference.
pub const MIN_AGREEMENT_DEQUANTISED: f64 = 0.995;
/// Label agreement required between the core and the float reference.
pub const MIN_AGREEMENT_FLOAT: f64 = 0.99;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Model file (.psm).
    #[arg(long)]
    pub model: PathBuf,
    /// Float weights (.safetensors); default: next to --model.
    #[arg(long)]
    pub float: Option<PathBuf>,
    /// Data set directory (MNIST layout); the TEST split is used.
    #[arg(long)]
    pub data: PathBuf,
    /// Number of test images (from --start).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// First test image.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub purifier: PurifierArgs,
}

#[derive(Serialize, Debug)]
struct Pair {
    label_agreement: f64,
    max_abs_pixel_diff: f32,
    mean_abs_pixel_diff: f32,
}

#[derive(Serialize, Debug)]
struct Report {
    images: usize,
    purifier: PurifierConfig,
    clean_accuracy_float: f64,
    clean_accuracy_core: f64,
    denoiser_ere_per_image: f64,
    denoiser_ere_per_pixel: f64,
    purified_accuracy_core: f64,
    purified_accuracy_float_reference: f64,
    core_vs_dequantised_reference: Pair,
    core_vs_float_reference: Pair,
    core_seconds_per_image: f64,
    reference_seconds_per_image: f64,
    passed: bool,
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Classifies a batch with a float network; returns labels.
fn float_labels(dev: &Cpu, net: &FloatNet, x: &[f32], d: usize) -> Vec<usize> {
    let n = x.len() / d;
    let dn = DeviceNet::<f32, Cpu>::from_float(net, dev);
    let logits = dn.forward(dev.tensor_from_vec(x.to_vec(), (n, d))).as_vec();
    let c = logits.len() / n.max(1);
    logits.chunks(c.max(1)).map(argmax).collect()
}

/// What the core computed for every image.
struct CoreRun {
    /// Purified pixels.
    purified: Vec<f32>,
    /// Labels after purification.
    labels: Vec<usize>,
    /// Labels of the unpurified images.
    clean: Vec<usize>,
    /// F of each input.
    ere: Vec<f32>,
}

/// The core on every image, on all cores.
fn run_core(model: &Model<'_>, cfg: &PurifierConfig, x: &[f32]) -> Result<CoreRun> {
    let d = model.input_len();
    let n = x.len() / d;
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let per = n.div_ceil(threads.max(1));
    let mut purified = vec![0.0; x.len()];
    let mut labels = vec![0usize; n];
    let mut clean = vec![0usize; n];
    let mut ere = vec![0.0f32; n];
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for ((((xs, ps), ls), cs), es) in x
            .chunks(per * d)
            .zip(purified.chunks_mut(per * d))
            .zip(labels.chunks_mut(per))
            .zip(clean.chunks_mut(per))
            .zip(ere.chunks_mut(per))
        {
            handles.push(s.spawn(move || -> Result<()> {
                let mut scratch = vec![
                    0.0;
                    model.scratch_len_fast().max(
                        model.purify_scratch_len_batched(cfg, cfg.noise_samples as usize)
                    )
                ];
                let mut logits = vec![0.0; model.num_classes()];
                let mut g = vec![0.0; d];
                for ((((img, out), l), c), e) in
                    xs.chunks(d).zip(ps.chunks_mut(d)).zip(ls).zip(cs).zip(es)
                {
                    *c = model.classify(img, &mut logits, &mut scratch)?;
                    *e = model.ere_value_and_grad(img, cfg, &mut g, &mut scratch)?;
                    model.purify(img, cfg, out, &mut scratch)?;
                    *l = model.classify(out, &mut logits, &mut scratch)?;
                }
                Ok(())
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(CoreRun {
        purified,
        labels,
        clean,
        ere,
    })
}

fn compare(core_px: &[f32], core_labels: &[usize], ref_px: &[f32], ref_labels: &[usize]) -> Pair {
    let agree = core_labels
        .iter()
        .zip(ref_labels)
        .filter(|(a, b)| a == b)
        .count();
    let diffs: Vec<f32> = core_px
        .iter()
        .zip(ref_px)
        .map(|(a, b)| (a - b).abs())
        .collect();
    Pair {
        label_agreement: agree as f64 / core_labels.len().max(1) as f64,
        max_abs_pixel_diff: diffs.iter().cloned().fold(0.0, f32::max),
        mean_abs_pixel_diff: diffs.iter().sum::<f32>() / diffs.len().max(1) as f32,
    }
}

pub fn run(a: VerifyArgs) -> Result<i32> {
    let bytes = read_file(&a.model)?;
    let model = Model::parse(&bytes)
        .with_context(|| format!("{} is not a valid model", a.model.display()))?;
    let float_path = a
        .float
        .clone()
        .unwrap_or_else(|| a.model.with_extension("safetensors"));
    let fm = from_safetensors(&read_file(&float_path)?)
        .with_context(|| format!("reading {}", float_path.display()))?;
    let deq = FloatModel::from_spec(model.spec());
    let cfg = a.purifier.apply(model.purifier_config())?;
    let test: Dataset = load_mnist_dir(&a.data, Split::Test)?;
    if test.image_len() != model.input_len() {
        bail!(
            "test images have {} pixels but the model takes {}",
            test.image_len(),
            model.input_len()
        );
    }
    let end = a
        .start
        .checked_add(a.count)
        .filter(|&e| e <= test.len() && a.count > 0);
    let Some(end) = end else {
        bail!(
            "--start {} --count {} is outside the {} test images",
            a.start,
            a.count,
            test.len()
        );
    };
    let d = model.input_len();
    let idx: Vec<usize> = (a.start..end).collect();
    let sel = test.select(&idx);
    let x: Vec<f32> = (0..sel.len())
        .flat_map(|i| sel.image_f32(i).unwrap_or_default())
        .collect();
    let truth: Vec<usize> = sel.labels.iter().map(|&l| usize::from(l)).collect();
    let n = sel.len();
    let acc = |l: &[usize]| l.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / n as f64;

    let t = Instant::now();
    let CoreRun {
        purified: core_px,
        labels: core_labels,
        clean: core_clean,
        ere,
    } = run_core(&model, &cfg, &x)?;
    let core_secs = t.elapsed().as_secs_f64();

    let dev = Cpu::default();
    let t = Instant::now();
    let mut refs = Vec::new();
    for net in [&deq, &fm] {
        let r: Reference<f32, Cpu> = Reference::new(&dev, &net.denoiser, d, cfg);
        let mut px = Vec::with_capacity(x.len());
        for chunk in x.chunks(100 * d) {
            px.extend(r.purify(chunk));
        }
        let labels = float_labels(&dev, &net.classifier, &px, d);
        refs.push((px, labels));
    }
    let ref_secs = t.elapsed().as_secs_f64() / 2.0;
    let float_clean = float_labels(&dev, &fm.classifier, &x, d);

    let deq_pair = compare(&core_px, &core_labels, &refs[0].0, &refs[0].1);
    let float_pair = compare(&core_px, &core_labels, &refs[1].0, &refs[1].1);
    let passed = deq_pair.label_agreement >= MIN_AGREEMENT_DEQUANTISED
        && float_pair.label_agreement >= MIN_AGREEMENT_FLOAT;
    let mean_ere = ere.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let report = Report {
        images: n,
        purifier: cfg,
        clean_accuracy_float: acc(&float_clean),
        clean_accuracy_core: acc(&core_clean),
        denoiser_ere_per_image: mean_ere,
        denoiser_ere_per_pixel: mean_ere / d as f64,
        purified_accuracy_core: acc(&core_labels),
        purified_accuracy_float_reference: acc(&refs[1].1),
        core_vs_dequantised_reference: deq_pair,
        core_vs_float_reference: float_pair,
        core_seconds_per_image: core_secs / n as f64,
        reference_seconds_per_image: ref_secs / n as f64,
        passed,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let r = &report;
        println!("images: {} (test split, from index {})", r.images, a.start);
        println!(
            "clean accuracy: float classifier {:.2} %, core (int8) {:.2} %",
            100.0 * r.clean_accuracy_float,
            100.0 * r.clean_accuracy_core
        );
        println!(
            "denoiser ERE at sigma {} (M = {}): {:.3} per image, {:.5} per pixel",
            cfg.sigma, cfg.noise_samples, r.denoiser_ere_per_image, r.denoiser_ere_per_pixel
        );
        println!(
            "accuracy after purification: core {:.2} %, float reference {:.2} %",
            100.0 * r.purified_accuracy_core,
            100.0 * r.purified_accuracy_float_reference
        );
        for (name, p, min) in [
            (
                "dequantised reference",
                &r.core_vs_dequantised_reference,
                MIN_AGREEMENT_DEQUANTISED,
            ),
            (
                "float reference",
                &r.core_vs_float_reference,
                MIN_AGREEMENT_FLOAT,
            ),
        ] {
            println!(
                "core vs {name}: labels agree {:.2} % (need {:.1} %), pixels max |diff| {:.2e}, mean {:.2e}",
                100.0 * p.label_agreement, 100.0 * min, p.max_abs_pixel_diff, p.mean_abs_pixel_diff
            );
        }
        println!(
            "time per image: core {:.1} ms (all threads), reference {:.1} ms",
            1e3 * r.core_seconds_per_image,
            1e3 * r.reference_seconds_per_image
        );
        println!(
            "{}",
            if passed {
                "PASS"
            } else {
                "FAIL: agreement below threshold"
            }
        );
    }
    Ok(if passed { 0 } else { 1 })
}
