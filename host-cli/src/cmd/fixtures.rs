//! `pursamere fixtures`: regenerates the dense purifier fixture `fixtures/mnist.psm`
//! from the MNIST data — chooses the default purifier configuration on a validation
//! split of the TRAIN set for a trained run, exports the model, writes the test-image
//! sample and the golden vectors. (The shipped default, `mnist-robust.psm`, is made
//! by `train` and `export`: fixtures/README.md.)

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_core::{Model, PurifierConfig, StepRule};
use pursamere_trainer::attack::{pgd, ClassifierOracle, PgdConfig};
use pursamere_trainer::data::{idx_gz_files, load_mnist_dir, Split};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::FloatModel;
use pursamere_trainer::safetensors_io::to_safetensors;
use pursamere_trainer::train::load_checkpoint;
use serde::Serialize;
use serde_json::json;

use super::export::DEFAULT_PURIFIER;
use super::{accuracy, core_classify, core_purify_classify};

/// Test images shipped in the sample.
pub const SAMPLE_IMAGES: usize = 256;

#[derive(Args, Debug)]
pub struct FixturesArgs {
    /// MNIST directory (IDX files).
    #[arg(long, required_unless_present = "golden_only")]
    pub data: Option<PathBuf>,
    /// Output folder (created if missing) for mnist.psm, mnist.safetensors,
    /// mnist-sample/, golden.json and sweep.json. Existing files are overwritten only
    /// with --force (regenerating the shipped fixtures: --out fixtures --force).
    #[arg(long, default_value = "fixtures")]
    pub out: PathBuf,
    /// Overwrite the fixtures --out already holds.
    #[arg(long)]
    pub force: bool,
    /// Training run to use (denoiser.ckpt, classifier.ckpt). Train one first with
    /// `pursamere train --data DATA --out RUN` (about 2.5 minutes on 2 cores).
    #[arg(long, default_value = "runs/mnist")]
    pub run: PathBuf,
    /// Validation images (from the TRAIN hold-out) used to choose the purifier settings.
    #[arg(long, default_value_t = 500)]
    pub tune_images: usize,
    /// Only recompute golden.json from the mnist.psm and mnist-sample/ already in
    /// --out (after `pursamere upgrade` of the shipped model); needs --force, as it
    /// replaces golden.json, and neither --data nor a training run.
    #[arg(long, conflicts_with_all = ["data", "run"])]
    pub golden_only: bool,
}

#[derive(Serialize)]
struct SweepRow {
    config: PurifierConfig,
    clean_accuracy: f64,
    transfer_accuracy: f64,
    macs: u64,
}

/// The candidate configurations of the sweep (M = 4 keeps the microcontroller's
/// scratch within its RAM budget).
fn candidates() -> Vec<PurifierConfig> {
    let base = PurifierConfig {
        noise_samples: 4,
        ..DEFAULT_PURIFIER
    };
    let mut v = Vec::new();
    for iters in [10, 20] {
        for rho in [0.0, 0.1] {
            for eta in [0.02, 0.1, 0.5] {
                v.push(PurifierConfig {
                    iters,
                    rho,
                    eta,
                    ..base
                });
            }
        }
    }
    for eta in [0.01, 0.02] {
        v.push(PurifierConfig {
            iters: 20,
            rho: 0.1,
            eta,
            step: StepRule::Sign,
            ..base
        });
    }
    v
}

/// What `fixtures` writes in its `--out` folder.
const FIXTURE_FILES: [&str; 5] = [
    "mnist.psm",
    "mnist.safetensors",
    "mnist-sample",
    "golden.json",
    "sweep.json",
];

pub fn run(a: FixturesArgs) -> Result<i32> {
    let start = Instant::now();
    if a.golden_only {
        return golden_only(&a.out, a.force);
    }
    let Some(data) = a.data.clone() else {
        anyhow::bail!("--data is needed (the MNIST folder)");
    };
    if a.tune_images == 0 {
        anyhow::bail!("--tune-images must be at least 1");
    }
    let den_path = a.run.join("denoiser.ckpt");
    if !den_path.exists() {
        anyhow::bail!(
            "--run {}: no denoiser.ckpt; train a run first: pursamere train --data {} --out {}",
            a.run.display(),
            data.display(),
            a.run.display()
        );
    }
    let den = load_checkpoint(&den_path)?;
    let cls = load_checkpoint(&a.run.join("classifier.ckpt"))?;
    let mut out =
        super::OutDir::prepare(&a.out, "--out", &FIXTURE_FILES.map(String::from), a.force)?;
    // The fixtures are 28 × 28 grey MNIST: check both splits and the run before any
    // work (and before anything is written).
    let full = load_mnist_dir(&data, Split::Train)?;
    let test = load_mnist_dir(&data, Split::Test)?;
    for (split, d) in [("TRAIN", &full), ("TEST", &test)] {
        if (d.channels, d.rows, d.cols) != (1, 28, 28) {
            anyhow::bail!(
                "--data {}: its {split} images are {} × {} × {}, not MNIST's 1 × 28 × 28",
                data.display(),
                d.channels,
                d.rows,
                d.cols
            );
        }
    }
    for (what, net) in [("denoiser", &den.net), ("classifier", &cls.net)] {
        net.check(784).map_err(|e| {
            anyhow::anyhow!(
                "--run {}: its {what} does not take 28 × 28 grey images ({e}); `fixtures` \
                 makes the MNIST fixtures — export another model with `pursamere export`",
                a.run.display()
            )
        })?;
    }
    let mut fm = FloatModel {
        dataset: "mnist".into(),
        input_shape: pursamere_core::InputShape {
            channels: 1,
            height: 28,
            width: 28,
        },
        class_names: (0..10).map(|c| c.to_string()).collect(),
        denoiser: den.net,
        classifier: cls.net,
        purifier: DEFAULT_PURIFIER,
    };

    // Tuning data: the TRAIN hold-out (the split and seed of `pursamere train`'s
    // default `--validation 5000`, which made the run).
    let (_, val) = full
        .split_validation(5000, pursamere_trainer::data::HOLDOUT_SEED)
        .with_context(|| {
            format!(
                "--data {}: the tuning hold-out is TRAIN's seeded 5,000 (as `train` holds out), \
                 and TRAIN has {} images",
                data.display(),
                full.len()
            )
        })?;
    let n = a.tune_images.min(val.len());
    let x: Vec<f32> = (0..n)
        .flat_map(|i| val.image_f32(i).unwrap_or_default())
        .collect();
    let y: Vec<usize> = val.labels[..n].iter().map(|&l| usize::from(l)).collect();
    let oracle = ClassifierOracle::new(&fm.classifier, 784);
    let adv = pgd(&oracle, &x, &y, &PgdConfig::linf(0.3, 40));
    let q = QuantizedModel::from_float(&fm)?;
    let bytes = q.to_psm()?;
    let model = Model::parse(&bytes)?;
    let base_clean = accuracy(&core_classify(&model, &x)?, &y);
    let base_adv = accuracy(&core_classify(&model, &adv)?, &y);
    eprintln!("tuning on {n} validation images: no purification: clean {:.1} %, transfer PGD (L-inf 0.3) {:.1} %", 100.0 * base_clean, 100.0 * base_adv);
    let mut rows = Vec::new();
    for cfg in candidates() {
        let (_, lc) = core_purify_classify(&model, &cfg, &x)?;
        let (_, la) = core_purify_classify(&model, &cfg, &adv)?;
        let row = SweepRow {
            config: cfg,
            clean_accuracy: accuracy(&lc, &y),
            transfer_accuracy: accuracy(&la, &y),
            macs: model.purify_macs(&cfg),
        };
        eprintln!(
            "  K {:>2} M {} eta {:<5} rho {:<4} step {:<8?}: clean {:5.1} %  transfer {:5.1} %",
            cfg.iters,
            cfg.noise_samples,
            cfg.eta,
            cfg.rho,
            cfg.step,
            100.0 * row.clean_accuracy,
            100.0 * row.transfer_accuracy
        );
        rows.push(row);
    }
    let chosen = choose(&rows, base_clean);
    eprintln!("chosen: {chosen:?}");
    fm.purifier = chosen;

    let q = QuantizedModel::from_float(&fm)?;
    let psm = q.to_psm()?;
    out.write(&out.join("mnist.psm"), &psm)?;
    out.write(&out.join("mnist.safetensors"), &to_safetensors(&fm)?)?;

    let idx: Vec<usize> = (0..SAMPLE_IMAGES.min(test.len())).collect();
    let sample = test.select(&idx);
    let sample_dir = out.subdir("mnist-sample")?;
    for (name, bytes) in idx_gz_files("t10k", &sample)
        .with_context(|| format!("writing {}", sample_dir.display()))?
    {
        out.write(&sample_dir.join(name), &bytes)?;
    }

    let golden = golden_json(&psm, &sample)?;
    out.write(
        &out.join("golden.json"),
        serde_json::to_string_pretty(&golden)?.as_bytes(),
    )?;
    let sweep = json!({"tune_images": n, "no_purification": {"clean_accuracy": base_clean, "transfer_accuracy": base_adv},
                       "attack": "PGD L-inf eps 0.3, 40 steps, cross-entropy, on the float classifier (transfer)", "rows": rows, "chosen": chosen});
    out.write(
        &out.join("sweep.json"),
        serde_json::to_string_pretty(&sweep)?.as_bytes(),
    )?;
    out.keep()?;
    outln!(
        "wrote {}/mnist.psm ({} bytes), mnist.safetensors, mnist-sample/ ({} images), golden.json, sweep.json in {:.0} s",
        a.out.display(),
        psm.len(),
        sample.len(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(0)
}

/// The selection rule: among settings that cost at most 3 points of clean accuracy,
/// take the best mean of clean and transfer accuracy; among those within 1 point of
/// it, the cheapest (fewest MACs). Written down in fixtures/README.md.
fn choose(rows: &[SweepRow], base_clean: f64) -> PurifierConfig {
    let ok: Vec<&SweepRow> = rows
        .iter()
        .filter(|r| r.clean_accuracy >= base_clean - 0.03)
        .collect();
    let score = |r: &SweepRow| 0.5 * (r.clean_accuracy + r.transfer_accuracy);
    let best = ok
        .iter()
        .map(|r| score(r))
        .fold(f64::NEG_INFINITY, f64::max);
    ok.iter()
        .filter(|r| score(r) >= best - 0.01)
        .min_by(|a, b| a.macs.cmp(&b.macs).then(score(b).total_cmp(&score(a))))
        .map(|r| r.config)
        .unwrap_or(DEFAULT_PURIFIER)
}

/// golden.json: the core's outputs on the sample with the model's own purifier setting.
fn golden_json(psm: &[u8], sample: &pursamere_trainer::data::Dataset) -> Result<serde_json::Value> {
    let model = Model::parse(psm)?;
    let cfg = model.purifier_config();
    let sx: Vec<f32> = (0..sample.len())
        .flat_map(|i| sample.image_f32(i).unwrap_or_default())
        .collect();
    let clean = core_classify(&model, &sx)?;
    let (px, labels) = core_purify_classify(&model, &cfg, &sx)?;
    let images: Vec<_> = px
        .chunks(model.input_len().max(1))
        .enumerate()
        .map(|(i, p)| {
            json!({"index": i, "label": sample.labels[i], "clean_prediction": clean[i],
                   "purified_prediction": labels[i], "purified_crc32": format!("{:08x}", pursamere_core::digest_f32(p))})
        })
        .collect();
    Ok(json!({
        "about": "Core (host build) outputs for fixtures/mnist-sample with fixtures/mnist.psm and its default purifier configuration. purified_crc32 = CRC-32 of the purified image's f32 little-endian bytes (pursamere_core::digest_f32). Regenerate with `pursamere fixtures` (`--golden-only` keeps the model and sample).",
        // (A CRC-32 of the whole file would be the constant residue 0x2144df1c: the
        // file ends in its own CRC.)
        "model_sha256": pursamere_trainer::eval::results::sha256_hex(psm),
        "format_version": u16::from_le_bytes([psm[4], psm[5]]),
        "noise_generator": cfg.noise.name(),
        "purifier": cfg,
        "images": images,
    }))
}

/// `fixtures --golden-only`: golden.json again from the model and sample in `dir`.
fn golden_only(dir: &std::path::Path, force: bool) -> Result<i32> {
    let path = dir.join("golden.json");
    if path.exists() && !force {
        anyhow::bail!("{} exists; add --force to replace it", path.display());
    }
    let psm = super::read_file(&dir.join("mnist.psm"))?;
    let sample = load_mnist_dir(&dir.join("mnist-sample"), Split::Test)
        .with_context(|| format!("reading {}", dir.join("mnist-sample").display()))?;
    let golden = golden_json(&psm, &sample)?;
    super::write_file(&path, serde_json::to_string_pretty(&golden)?.as_bytes())?;
    outln!(
        "wrote {} ({} images, {} model)",
        path.display(),
        sample.len(),
        golden["noise_generator"].as_str().unwrap_or("")
    )?;
    Ok(0)
}
