//! `pursamere demo`: the shipped model on the shipped sample, no data and no flags
//! needed. Crafts adversarial examples against the *undefended* float classifier
//! (a transfer attack), purifies with the core, and reports accuracies and speed;
//! writes a PNG grid of original | adversarial | purified images.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_core::Model;
use pursamere_trainer::attack::{pgd, ClassifierOracle, PgdConfig};
use pursamere_trainer::data::{dataset_from_idx_bytes, encode_png_gray};
use pursamere_trainer::safetensors_io::from_safetensors;

use super::{accuracy, core_classify, core_purify_classify, write_file};

/// The shipped model and sample, compiled into the binary.
pub const SHIPPED_PSM: &[u8] = include_bytes!("../../../fixtures/mnist.psm");
/// Float weights of the shipped model.
pub const SHIPPED_SAFETENSORS: &[u8] = include_bytes!("../../../fixtures/mnist.safetensors");
/// The shipped test-image sample (gzipped IDX).
pub const SAMPLE_IMAGES: &[u8] =
    include_bytes!("../../../fixtures/mnist-sample/t10k-images-idx3-ubyte.gz");
/// Its labels.
pub const SAMPLE_LABELS: &[u8] =
    include_bytes!("../../../fixtures/mnist-sample/t10k-labels-idx1-ubyte.gz");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to write the image grid (original | adversarial | purified).
    #[arg(long, default_value = "pursamere-demo.png")]
    pub out: PathBuf,
    /// Number of sample images to use (1..=256).
    #[arg(long, default_value_t = 256)]
    pub count: usize,
    /// L-inf budget of the transfer attack.
    #[arg(long, default_value_t = 0.3)]
    pub eps: f32,
    /// PGD steps of the transfer attack.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
}

/// Checks the `--eps` budget of a transfer attack (finite and ≥ 0).
pub fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        anyhow::bail!("--eps must be finite and >= 0, got {eps}");
    }
    Ok(())
}

/// Checks, before any work, that `path` can be written: its directory exists and
/// accepts files (tried with the temporary name the final write uses).
pub fn check_writable(path: &std::path::Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        anyhow::bail!("cannot write {}: it is a directory", path.display());
    }
    let mut probe = path.as_os_str().to_owned();
    probe.push(".tmp");
    let probe = PathBuf::from(probe);
    std::fs::File::create(&probe).with_context(|| format!("cannot write {}", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(a: DemoArgs) -> Result<i32> {
    if a.count == 0 || a.count > 256 {
        anyhow::bail!("--count must be between 1 and 256, got {}", a.count);
    }
    check_eps(a.eps)?;
    check_writable(&a.out)?;
    let model = Model::parse(SHIPPED_PSM).context("the shipped model is corrupt")?;
    let float = from_safetensors(SHIPPED_SAFETENSORS)?;
    let sample = dataset_from_idx_bytes("fixtures/mnist-sample", SAMPLE_IMAGES, SAMPLE_LABELS, 10)?;
    let n = a.count.min(sample.len());
    let d = model.input_len();
    let x: Vec<f32> = (0..n)
        .flat_map(|i| sample.image_f32(i).unwrap_or_default())
        .collect();
    let y: Vec<usize> = sample.labels[..n].iter().map(|&l| usize::from(l)).collect();
    let cfg = model.purifier_config();
    outln!(
        "PurSAMERE demo: shipped MNIST model, {n} test images, purifier K = {} M = {} sigma = {} eta = {} rho = {} delta = {}",
        cfg.iters, cfg.noise_samples, cfg.sigma, cfg.eta, cfg.rho, cfg.radius
    )?;

    let t = Instant::now();
    let oracle = ClassifierOracle::new(&float.classifier, d);
    let adv = pgd(&oracle, &x, &y, &PgdConfig::linf(a.eps, a.steps));
    let attack_secs = t.elapsed().as_secs_f64();

    let clean = accuracy(&core_classify(&model, &x)?, &y);
    let adv_plain = accuracy(&core_classify(&model, &adv)?, &y);
    let t = Instant::now();
    let (clean_px, clean_lab) = core_purify_classify(&model, &cfg, &x)?;
    let (adv_px, adv_lab) = core_purify_classify(&model, &cfg, &adv)?;
    let purify_secs = t.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());

    outln!()?;
    outln!("{:<44} {:>10} {:>12}", "", "clean", "adversarial")?;
    outln!(
        "{:<44} {:>9.1} % {:>11.1} %",
        "classifier alone (int8 core)",
        100.0 * clean,
        100.0 * adv_plain
    )?;
    outln!(
        "{:<44} {:>9.1} % {:>11.1} %",
        "purified, then classified (int8 core)",
        100.0 * accuracy(&clean_lab, &y),
        100.0 * accuracy(&adv_lab, &y)
    )?;
    outln!()?;
    outln!(
        "adversarial = PGD L-inf eps {} ({} steps) against the UNDEFENDED float classifier, transferred;",
        a.eps, a.steps
    )?;
    outln!("it is not a white-box attack on the purifier, so it does not measure robustness.")?;
    outln!(
        "time: attack {:.2} s; purify + classify {:.1} ms per image ({} threads, {:.1} ms per image per thread)",
        attack_secs,
        1e3 * purify_secs / (2 * n) as f64,
        threads,
        1e3 * purify_secs * threads as f64 / (2 * n) as f64
    )?;
    let _ = clean_px;

    // Grid: up to 8 rows of original | adversarial | purified, 3x magnified.
    let rows = n.min(8);
    let (side, scale, gap) = (28usize, 3usize, 4usize);
    let cell = side * scale;
    let width = 3 * cell + 4 * gap;
    let height = rows * cell + (rows + 1) * gap;
    let mut img = vec![128u8; width * height];
    for r in 0..rows {
        for (c, src) in [&x, &adv, &adv_px].iter().enumerate() {
            let im = &src[r * d..(r + 1) * d];
            for py in 0..cell {
                for px in 0..cell {
                    let v = im[(py / scale) * side + px / scale];
                    let (gx, gy) = (gap + c * (cell + gap) + px, gap + r * (cell + gap) + py);
                    img[gy * width + gx] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    write_file(&a.out, &encode_png_gray(width, height, &img)?)?;
    outln!(
        "wrote {} (columns: original | adversarial | purified)",
        a.out.display()
    )?;
    Ok(0)
}
