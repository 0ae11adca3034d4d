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
use super::images::{model_bytes, parse_model};
use super::{accuracy, core_classify, core_purify_classify_progress, read_file};
use pursamere_trainer::attack::{pgd, ClassifierOracle, PgdConfig};

/// Label agreement required between the core and the dequantised reference.
pub const MIN_AGREEMENT_DEQUANTISED: f64 = 0.995;
/// Label agreement required between the core and the float reference.
pub const MIN_AGREEMENT_FLOAT: f64 = 0.99;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Model file (.psm); default: the shipped MNIST model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Float weights (.safetensors); default: next to --model (the shipped model's
    /// float weights without --model).
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
    /// L-inf budget of the transfer attack that makes the adversarial set.
    #[arg(long, default_value_t = 0.3)]
    pub eps: f32,
    /// PGD steps of the transfer attack.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
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

/// The three implementations on one set of inputs.
#[derive(Serialize, Debug)]
struct SetReport {
    accuracy_without_purification_core: f64,
    accuracy_without_purification_float: f64,
    purified_accuracy_core: f64,
    purified_accuracy_float_reference: f64,
    core_vs_dequantised_reference: Pair,
    core_vs_float_reference: Pair,
}

#[derive(Serialize, Debug)]
struct Report {
    images: usize,
    purifier: PurifierConfig,
    denoiser_ere_per_image: f64,
    denoiser_ere_per_pixel: f64,
    clean: SetReport,
    transfer_attack: String,
    adversarial: SetReport,
    agreement_dequantised_all: f64,
    agreement_float_all: f64,
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

struct Ctx<'a> {
    model: &'a Model<'a>,
    cfg: PurifierConfig,
    float: &'a FloatModel,
    deq: &'a FloatModel,
    dev: Cpu,
    d: usize,
    truth: &'a [usize],
    core_secs: f64,
    ref_secs: f64,
}

impl Ctx<'_> {
    fn set(&mut self, x: &[f32], what: &str, show: bool) -> Result<SetReport> {
        let n = self.truth.len();
        // One bar per pass, each counting the images once: the core, then the float
        // reference on the dequantised weights, then on the float weights.
        let bar = |pass: usize, label: &str| {
            show.then(|| {
                let b = indicatif::ProgressBar::new(n as u64);
                if let Ok(st) = indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} images (ETA {eta})",
                ) {
                    b.set_style(st.progress_chars("=> "));
                }
                b.set_prefix(format!("verify {what}, pass {pass} of 3: {label}"));
                b
            })
        };
        let t = Instant::now();
        let core_bar = bar(1, "core");
        let (core_px, core_labels) =
            core_purify_classify_progress(self.model, &self.cfg, x, core_bar.as_ref())?;
        if let Some(b) = core_bar {
            b.finish_and_clear();
        }
        self.core_secs += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut refs = Vec::new();
        for (pass, label, net) in [
            (2, "reference, dequantised weights", self.deq),
            (3, "reference, float weights", self.float),
        ] {
            let b = bar(pass, label);
            let r: Reference<f32, Cpu> = Reference::new(&self.dev, &net.denoiser, self.d, self.cfg);
            let mut px = Vec::with_capacity(x.len());
            for chunk in x.chunks(100 * self.d) {
                px.extend(r.purify(chunk));
                if let Some(b) = &b {
                    b.inc((chunk.len() / self.d) as u64);
                }
            }
            if let Some(b) = b {
                b.finish_and_clear();
            }
            let labels = float_labels(&self.dev, &net.classifier, &px, self.d);
            refs.push((px, labels));
        }
        self.ref_secs += t.elapsed().as_secs_f64() / 2.0;
        Ok(SetReport {
            accuracy_without_purification_core: accuracy(
                &core_classify(self.model, x)?,
                self.truth,
            ),
            accuracy_without_purification_float: accuracy(
                &float_labels(&self.dev, &self.float.classifier, x, self.d),
                self.truth,
            ),
            purified_accuracy_core: accuracy(&core_labels, self.truth),
            purified_accuracy_float_reference: accuracy(&refs[1].1, self.truth),
            core_vs_dequantised_reference: compare(&core_px, &core_labels, &refs[0].0, &refs[0].1),
            core_vs_float_reference: compare(&core_px, &core_labels, &refs[1].0, &refs[1].1),
        })
    }
}

pub fn run(a: VerifyArgs) -> Result<i32> {
    super::demo::check_eps(a.eps)?;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let bytes = model_bytes(&a.model)?;
    let model = parse_model(&bytes, &a.model)?;
    // Before any other file is read: a model the float side cannot mirror
    // (convolutions) cannot be verified at all.
    let deq = FloatModel::from_spec(model.spec()).with_context(|| match &a.model {
        Some(p) => format!("{} cannot be verified", p.display()),
        None => "the shipped model cannot be verified".to_owned(),
    })?;
    let float_path = a
        .float
        .clone()
        .or_else(|| a.model.as_ref().map(|m| m.with_extension("safetensors")));
    let fm = match &float_path {
        Some(p) => {
            from_safetensors(&read_file(p)?).with_context(|| format!("reading {}", p.display()))?
        }
        None => from_safetensors(super::demo::SHIPPED_SAFETENSORS)
            .context("the shipped float weights are corrupt")?,
    };
    // Weights of another model (another input size or layer chain) would be
    // compared layer by layer with this one: refused here, naming both.
    let float_name = float_path.as_ref().map_or_else(
        || "the shipped float weights".to_owned(),
        |p| p.display().to_string(),
    );
    if fm.input_shape != deq.input_shape {
        let shape =
            |s: pursamere_core::InputShape| format!("{} × {} × {}", s.channels, s.height, s.width);
        bail!(
            "{float_name} are for {} images, but the model takes {}: give the float weights exported with this model (--float)",
            shape(fm.input_shape),
            shape(deq.input_shape)
        );
    }
    for (what, net) in [("denoiser", &fm.denoiser), ("classifier", &fm.classifier)] {
        net.check(model.input_len()).map_err(|e| {
            anyhow::anyhow!(
                "{float_name}: its {what} does not fit the model's {} inputs ({e}): give the float weights exported with this model (--float)",
                model.input_len()
            )
        })?;
    }
    let cfg = a.purifier.apply(model.purifier_config())?;
    let test: Dataset = load_mnist_dir(&a.data, Split::Test)?;
    if test.image_len() != model.input_len() {
        bail!(
            "test images have {} pixels but the model takes {}",
            test.image_len(),
            model.input_len()
        );
    }
    let (_, end) = super::select_range(a.start, a.count, test.len(), "the TEST split")?;
    let d = model.input_len();
    let idx: Vec<usize> = (a.start..end).collect();
    let sel = test.select(&idx);
    let x: Vec<f32> = (0..sel.len())
        .flat_map(|i| sel.image_f32(i).unwrap_or_default())
        .collect();
    let truth: Vec<usize> = sel.labels.iter().map(|&l| usize::from(l)).collect();
    let n = sel.len();
    let show = !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr());

    // F at the clean inputs (the denoiser's test ERE).
    let ere = super::parallel_ranges(n, |range| {
        let mut scratch =
            vec![0.0; model.ere_scratch_len_batched(&cfg, cfg.noise_samples as usize)];
        let mut g = vec![0.0; d];
        range
            .map(|i| {
                Ok(f64::from(model.ere_value_and_grad(
                    &x[i * d..(i + 1) * d],
                    &cfg,
                    &mut g,
                    &mut scratch,
                )?))
            })
            .collect()
    })?;
    let mean_ere = ere.iter().sum::<f64>() / n as f64;

    let attack = PgdConfig::linf(a.eps, a.steps);
    let adv = pgd(
        &ClassifierOracle::new(&fm.classifier, d),
        &x,
        &truth,
        &attack,
    );
    let mut ctx = Ctx {
        model: &model,
        cfg,
        float: &fm,
        deq: &deq,
        dev: Cpu::default(),
        d,
        truth: &truth,
        core_secs: 0.0,
        ref_secs: 0.0,
    };
    let clean = ctx.set(&x, "clean", show)?;
    let adversarial = ctx.set(&adv, "adversarial", show)?;
    // Thresholds apply to all 2N inputs together (clean and adversarial); per-set
    // figures are reported as well.
    let both = |f: fn(&SetReport) -> f64| 0.5 * (f(&clean) + f(&adversarial));
    let agreement_dequantised = both(|s| s.core_vs_dequantised_reference.label_agreement);
    let agreement_float = both(|s| s.core_vs_float_reference.label_agreement);
    let passed = agreement_dequantised >= MIN_AGREEMENT_DEQUANTISED
        && agreement_float >= MIN_AGREEMENT_FLOAT;
    let report = Report {
        images: n,
        purifier: cfg,
        denoiser_ere_per_image: mean_ere,
        denoiser_ere_per_pixel: mean_ere / d as f64,
        clean,
        transfer_attack: format!(
            "PGD L-inf eps {} ({} steps, cross-entropy) against the float classifier",
            a.eps, a.steps
        ),
        adversarial,
        agreement_dequantised_all: agreement_dequantised,
        agreement_float_all: agreement_float,
        core_seconds_per_image: ctx.core_secs / (2 * n) as f64,
        reference_seconds_per_image: ctx.ref_secs / (2 * n) as f64,
        passed,
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        let r = &report;
        outln!("images: {} (test split, from index {})", r.images, a.start)?;
        outln!(
            "denoiser ERE at sigma {} (M = {}): {:.3} per image, {:.5} per pixel",
            cfg.sigma,
            cfg.noise_samples,
            r.denoiser_ere_per_image,
            r.denoiser_ere_per_pixel
        )?;
        for (title, s) in [
            ("clean", &r.clean),
            (
                "adversarial (transfer: PGD on the undefended classifier)",
                &r.adversarial,
            ),
        ] {
            outln!("{title}:")?;
            outln!(
                "  accuracy without purification: float {:.2} %, core {:.2} %",
                100.0 * s.accuracy_without_purification_float,
                100.0 * s.accuracy_without_purification_core
            )?;
            outln!(
                "  accuracy after purification:   core {:.2} %, float reference {:.2} %",
                100.0 * s.purified_accuracy_core,
                100.0 * s.purified_accuracy_float_reference
            )?;
            for (name, p) in [
                ("dequantised reference", &s.core_vs_dequantised_reference),
                ("float reference", &s.core_vs_float_reference),
            ] {
                outln!(
                    "  core vs {name}: labels agree {:.2} %, pixels max |diff| {:.2e}, mean {:.2e}",
                    100.0 * p.label_agreement,
                    p.max_abs_pixel_diff,
                    p.mean_abs_pixel_diff
                )?;
            }
        }
        outln!(
            "time per purified image: core {:.1} ms (all threads), reference {:.1} ms",
            1e3 * r.core_seconds_per_image,
            1e3 * r.reference_seconds_per_image
        )?;
        outln!(
            "all {} inputs: core vs dequantised reference {:.2} % (need {:.1} %), core vs float reference {:.2} % (need {:.1} %)",
            2 * n,
            100.0 * r.agreement_dequantised_all,
            100.0 * MIN_AGREEMENT_DEQUANTISED,
            100.0 * r.agreement_float_all,
            100.0 * MIN_AGREEMENT_FLOAT
        )?;
        if passed {
            outln!("PASS")?;
        } else {
            let mut why = Vec::new();
            if r.agreement_dequantised_all < MIN_AGREEMENT_DEQUANTISED {
                why.push(format!(
                    "the core and the float reference on the same int8 weights agree on {:.2} % of the labels (need {:.1} %): the core or the reference is wrong — please report it",
                    100.0 * r.agreement_dequantised_all,
                    100.0 * MIN_AGREEMENT_DEQUANTISED
                ));
            }
            if r.agreement_float_all < MIN_AGREEMENT_FLOAT {
                why.push(format!(
                    "the core and the float weights agree on {:.2} % of the labels (need {:.1} %): is the .safetensors file the export of this .psm? `pursamere export` writes both together",
                    100.0 * r.agreement_float_all,
                    100.0 * MIN_AGREEMENT_FLOAT
                ));
            }
            outln!("FAIL: {}", why.join("; "))?;
        }
    }
    Ok(if passed { 0 } else { 1 })
}
