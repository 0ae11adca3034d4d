//! `pursamere demo`: the shipped model on the shipped sample, no data and no flags
//! needed. Crafts adversarial examples against the *undefended* float classifier
//! (a transfer attack), purifies with the core, and reports accuracies and speed;
//! writes an annotated PNG: clean | adversarial | purified images with their true
//! and predicted labels, wrong predictions in red.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_core::Model;
use pursamere_trainer::attack::{pgd, ClassifierOracle, PgdConfig};
use pursamere_trainer::data::dataset_from_idx_bytes;
use pursamere_trainer::safetensors_io::from_safetensors;
use serde_json::json;

use super::{accuracy, core_classify, core_purify_classify};

/// The shipped default model and sample, compiled into the binary: of the systems
/// measured that fit the Cortex-M4 budget, the one with the higher worse case of
/// the two headline threats (L∞ 0.3, L2 2.0), its classifier in int8-activation form
/// (a quarter of the float form's device cycles: fixtures/README.md).
pub const SHIPPED_PSM: &[u8] = include_bytes!("../../../fixtures/mnist-robust-int8.psm");
/// Float weights of the shipped model (the network before its activations were
/// quantised: the demo's PGD runs on them, the verdicts are the int8 core's).
pub const SHIPPED_SAFETENSORS: &[u8] = include_bytes!("../../../fixtures/mnist-robust.safetensors");
/// The shipped test-image sample (gzipped IDX).
pub const SAMPLE_IMAGES: &[u8] =
    include_bytes!("../../../fixtures/mnist-sample/t10k-images-idx3-ubyte.gz");
/// Its labels.
pub const SAMPLE_LABELS: &[u8] =
    include_bytes!("../../../fixtures/mnist-sample/t10k-labels-idx1-ubyte.gz");

/// The measured white-box figures (written by `eval --summary`), for the line that
/// says what the shipped model defends against.
const SUMMARY_JSON: &str = include_str!("../../../docs/eval/summary.json");

/// "L∞ 0.1: 76.1 %, …" for the shipped model's defended rows, or a note that none
/// were measured.
fn defends_against(purifier_on: bool) -> String {
    use pursamere_trainer::eval::{
        results::sha256_hex,
        summary::{defended_rows, Bound},
    };
    let rows = defended_rows(SUMMARY_JSON, &sha256_hex(SHIPPED_PSM), purifier_on);
    if rows.is_empty() {
        return "no white-box evaluation of this model is recorded in docs/eval/summary.json"
            .into();
    }
    let n = rows.iter().map(|r| r.n).min().unwrap_or(0);
    let figures: Vec<String> = rows
        .iter()
        .map(|r| {
            let norm = if r.norm == "linf" { "L-inf" } else { "L2" };
            let bound = match r.bound {
                Bound::Measured => "",
                Bound::UpperBound => " (upper bound)",
                Bound::Unrecorded => " (sanity flags not recorded)",
            };
            format!("{norm} {} {:.1} %{bound}", r.eps, 100.0 * r.worst_case)
        })
        .collect();
    format!(
        "white-box worst case of this system (docs/EVALUATION.md, {n}+ MNIST test images): {}",
        figures.join(", ")
    )
}

/// The picture `demo` writes in its `--out` folder.
pub const DEMO_PICTURE: &str = "pursamere-demo.png";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output folder (created if missing) for pursamere-demo.png, the annotated
    /// picture: clean | adversarial | adversarial purified, 16 images each, with true
    /// and predicted labels. An existing picture is overwritten only with --force.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Overwrite pursamere-demo.png if --out holds one.
    #[arg(long)]
    pub force: bool,
    /// First image of the shipped 256-image sample to use.
    #[arg(long, default_value_t = 0)]
    pub start: usize,
    /// Number of sample images to use, from --start (default: the rest of the sample).
    #[arg(long)]
    pub count: Option<usize>,
    /// L-inf budget of the transfer attack.
    #[arg(long, default_value_t = 0.3)]
    pub eps: f32,
    /// PGD steps of the transfer attack.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Machine-readable output (accuracies, settings, per-image labels).
    #[arg(long)]
    pub json: bool,
}

/// Checks the `--eps` budget of a transfer attack (finite and ≥ 0).
pub fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        anyhow::bail!("--eps must be finite and >= 0, got {eps}");
    }
    Ok(())
}

pub fn run(a: DemoArgs) -> Result<i32> {
    check_eps(a.eps)?;
    let sample = dataset_from_idx_bytes("fixtures/mnist-sample", SAMPLE_IMAGES, SAMPLE_LABELS, 10)?;
    let count = a
        .count
        .unwrap_or_else(|| sample.len().saturating_sub(a.start).max(1));
    let (start, end) = super::select_range(a.start, count, sample.len(), "the shipped sample")?;
    let out = super::OutDir::prepare(&a.out, "--out", &[DEMO_PICTURE.to_owned()], a.force)?;
    let picture = out.join(DEMO_PICTURE);
    let model = Model::parse(SHIPPED_PSM).context("the shipped model is corrupt")?;
    let float = from_safetensors(SHIPPED_SAFETENSORS)?;
    let n = end - start;
    let d = model.input_len();
    let x: Vec<f32> = (start..end)
        .flat_map(|i| sample.image_f32(i).unwrap_or_default())
        .collect();
    let y: Vec<usize> = sample.labels[start..end]
        .iter()
        .map(|&l| usize::from(l))
        .collect();
    let cfg = model.purifier_config();
    // K = 0: the purifier is off and the classifier is the whole system, so the PGD
    // below is white-box (on its float weights; the verdicts are the int8 core's).
    let purifier_on = cfg.iters > 0;
    if !a.json {
        if purifier_on {
            outln!(
                "PurSAMERE demo: shipped MNIST model, {n} test images, purifier K = {} M = {} sigma = {} eta = {} rho = {} delta = {}",
                cfg.iters, cfg.noise_samples, cfg.sigma, cfg.eta, cfg.rho, cfg.radius
            )?;
        } else {
            outln!(
                "PurSAMERE demo: shipped MNIST model, {n} test images: an adversarially trained CNN with int8 activations, purifier off (K = 0) — no purifier setting measured so far adds robustness in front of it (docs/EVALUATION.md)"
            )?;
        }
    }

    let t = Instant::now();
    let oracle = ClassifierOracle::new(&float.classifier, d);
    let adv = pgd(&oracle, &x, &y, &PgdConfig::linf(a.eps, a.steps));
    let attack_secs = t.elapsed().as_secs_f64();

    let clean_plain = core_classify(&model, &x)?;
    let adv_plain = core_classify(&model, &adv)?;
    let t = Instant::now();
    let (_, clean_lab) = core_purify_classify(&model, &cfg, &x)?;
    let (adv_px, adv_lab) = core_purify_classify(&model, &cfg, &adv)?;
    let purify_secs = t.elapsed().as_secs_f64();
    let threads = pursamere_trainer::eval::workers::cpu_threads();
    let ms_per_image = 1e3 * purify_secs / (2 * n) as f64;

    let names: Vec<String> = model
        .spec()
        .meta
        .class_names
        .iter()
        .map(|s| s.to_string())
        .collect();
    let name = |l: usize| names.get(l).cloned().unwrap_or_else(|| l.to_string());
    let shown = n.min(GRID_IMAGES);
    let pct = |p: &[usize]| format!("{:.1} % of {n} correct", 100.0 * accuracy(p, &y));
    let subtitles = [
        format!("classifier alone: {}", pct(&clean_plain)),
        format!("classifier alone: {}", pct(&adv_plain)),
        if purifier_on {
            format!("purified, then classified: {}", pct(&adv_lab))
        } else {
            format!("purifier off (K = 0): {}", pct(&adv_lab))
        },
    ];
    let attack_name = if purifier_on {
        "adversarial (transfer)"
    } else {
        "adversarial (white-box PGD)"
    };
    let columns = [
        GridColumn {
            title: "clean",
            subtitle: &subtitles[0],
            pixels: &x,
            predicted: &clean_plain,
        },
        GridColumn {
            title: attack_name,
            subtitle: &subtitles[1],
            pixels: &adv,
            predicted: &adv_plain,
        },
        GridColumn {
            title: if purifier_on {
                "adversarial, purified"
            } else {
                "adversarial, purifier off"
            },
            subtitle: &subtitles[2],
            pixels: &adv_px,
            predicted: &adv_lab,
        },
    ];
    let title = if purifier_on {
        format!(
            "PurSAMERE demo, shipped MNIST model: transfer PGD L\u{221e} \u{3b5} = {} ({} steps) against the undefended classifier",
            a.eps, a.steps
        )
    } else {
        format!(
            "PurSAMERE demo, shipped MNIST model (purifier off): white-box PGD L\u{221e} \u{3b5} = {} ({} steps) against the classifier",
            a.eps, a.steps
        )
    };
    let png = draw_grid(&title, &columns, &y[..shown], &names)?;
    out.write(&picture, &png)?;
    out.keep()?;

    if a.json {
        let images: Vec<_> = (0..n)
            .map(|i| {
                json!({
                    "index": start + i,
                    "true": name(y[i]),
                    "clean": name(clean_plain[i]),
                    "clean_purified": name(clean_lab[i]),
                    "adversarial": name(adv_plain[i]),
                    "adversarial_purified": name(adv_lab[i]),
                    "in_picture": i < shown,
                })
            })
            .collect();
        let report = json!({
            "model": "shipped MNIST model",
            "images": n,
            "purifier": cfg,
            "attack": {"kind": if purifier_on { "transfer PGD L-inf against the undefended float classifier" } else { "white-box PGD L-inf against the float classifier (the purifier is off)" }, "eps": a.eps, "steps": a.steps},
            "defends_against": defends_against(purifier_on),
            "accuracy": {
                "classifier_clean": accuracy(&clean_plain, &y),
                "classifier_adversarial": accuracy(&adv_plain, &y),
                "purified_clean": accuracy(&clean_lab, &y),
                "purified_adversarial": accuracy(&adv_lab, &y),
            },
            "attack_seconds": attack_secs,
            "purify_classify_ms_per_image": ms_per_image,
            "threads": threads,
            "picture": picture.display().to_string(),
            "per_image": images,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }

    outln!()?;
    outln!("{:<44} {:>10} {:>12}", "", "clean", "adversarial")?;
    outln!(
        "{:<44} {:>9.1} % {:>11.1} %",
        "classifier alone (int8 core)",
        100.0 * accuracy(&clean_plain, &y),
        100.0 * accuracy(&adv_plain, &y)
    )?;
    if purifier_on {
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
        outln!("it is not a white-box attack on the purifier, so it does not measure robustness;")?;
    } else {
        outln!()?;
        outln!(
            "adversarial = white-box PGD L-inf eps {} ({} steps) on the classifier's float weights, one start —",
            a.eps, a.steps
        )?;
        outln!("a quick look; the evaluation's full suite (APGD, Square, restarts) is stronger;")?;
    }
    outln!("{}", defends_against(purifier_on))?;
    outln!(
        "time: attack {:.2} s; purify + classify {:.1} ms per image ({} threads, {:.1} ms per image per thread)",
        attack_secs,
        ms_per_image,
        threads,
        ms_per_image * threads as f64
    )?;
    outln!()?;
    outln!("the first {shown} images, as in the picture (predicted labels; * = wrong):")?;
    outln!(
        "{:>5} {:>5} {:>7} {:>13} {:>13}",
        "image",
        "true",
        "clean",
        "adversarial",
        if purifier_on {
            "purified adv"
        } else {
            "K = 0 adv"
        }
    )?;
    let mark = |p: usize, t: usize| if p == t { " " } else { "*" };
    for i in 0..shown {
        outln!(
            "{:>5} {:>5} {:>6}{} {:>12}{} {:>12}{}",
            start + i,
            name(y[i]),
            name(clean_plain[i]),
            mark(clean_plain[i], y[i]),
            name(adv_plain[i]),
            mark(adv_plain[i], y[i]),
            name(adv_lab[i]),
            mark(adv_lab[i], y[i])
        )?;
    }
    outln!(
        "wrote {} (columns: clean | adversarial | adversarial {}; under each image: true -> predicted, red = wrong)",
        picture.display(),
        if purifier_on {
            "purified"
        } else {
            "after the purifier (off, K = 0)"
        }
    )?;
    Ok(0)
}

/// Images per column of the demo picture (a 4 × 4 block).
pub const GRID_IMAGES: usize = 16;
/// Images per row of a column's block.
const GRID_PER_ROW: usize = 4;
/// Magnification of each 28 × 28 image.
const GRID_SCALE: usize = 3;

/// One column of the demo picture.
struct GridColumn<'a> {
    title: &'a str,
    subtitle: &'a str,
    /// Images, row-major, one after another (at least as many as labels shown).
    pixels: &'a [f32],
    /// Predicted label of each image.
    predicted: &'a [usize],
}

struct GridGeometry {
    side: usize,
    cell: usize,
    pitch_x: usize,
    pitch_y: usize,
    block_w: usize,
    top: usize,
    width: usize,
    height: usize,
}

const MARGIN: usize = 16;
const COLUMN_GAP: usize = 28;
const TITLE_H: usize = 56;
const HEADER_H: usize = 48;
const LABEL_H: usize = 22;

impl GridGeometry {
    fn new(side: usize, shown: usize) -> Self {
        let cell = side * GRID_SCALE;
        let pitch_x = cell + 20;
        let pitch_y = cell + LABEL_H + 12;
        let block_w = GRID_PER_ROW * pitch_x;
        let rows = shown.div_ceil(GRID_PER_ROW).max(1);
        let top = MARGIN + TITLE_H + HEADER_H;
        GridGeometry {
            side,
            cell,
            pitch_x,
            pitch_y,
            block_w,
            top,
            width: 2 * MARGIN + 3 * block_w + 2 * COLUMN_GAP,
            height: top + rows * pitch_y + MARGIN,
        }
    }

    /// Top-left corner of image `i` of column `c`.
    fn origin(&self, c: usize, i: usize) -> (usize, usize) {
        (
            MARGIN + c * (self.block_w + COLUMN_GAP) + (i % GRID_PER_ROW) * self.pitch_x + 10,
            self.top + (i / GRID_PER_ROW) * self.pitch_y,
        )
    }
}

/// Draws the annotated demo picture: a title, a header over each column, and under
/// every image its true and predicted label, red (with a red frame) when wrong.
fn draw_grid(
    title: &str,
    columns: &[GridColumn<'_>; 3],
    truth: &[usize],
    names: &[String],
) -> Result<Vec<u8>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let _ = plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        dejavu::sans::regular(),
    );
    let g = GridGeometry::new(28, truth.len());
    let (w, h) = (g.width, g.height);
    let mut rgb = vec![255u8; w * h * 3];
    let red = RGBColor(200, 0, 0);
    let grey = RGBColor(150, 150, 150);
    let name = |l: usize| names.get(l).cloned().unwrap_or_else(|| l.to_string());
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw the demo picture: {e}");
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w as u32, h as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let left = Pos::new(HPos::Left, VPos::Top);
        let centre = Pos::new(HPos::Center, VPos::Top);
        let font = |size: i32| ("sans-serif", size).into_font();
        root.draw(&Text::new(
            title.to_owned(),
            (MARGIN as i32, MARGIN as i32),
            font(18).color(&BLACK).pos(left),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&Text::new(
            "under each image: true label \u{2192} predicted label; red = wrong prediction",
            (MARGIN as i32, MARGIN as i32 + 26),
            font(15).color(&RGBColor(60, 60, 60)).pos(left),
        ))
        .map_err(|e| err(&e))?;
        for (c, col) in columns.iter().enumerate() {
            let cx = (MARGIN + c * (g.block_w + COLUMN_GAP) + g.block_w / 2) as i32;
            let y0 = (MARGIN + TITLE_H) as i32;
            root.draw(&Text::new(
                col.title.to_owned(),
                (cx, y0),
                font(20).color(&BLACK).pos(centre),
            ))
            .map_err(|e| err(&e))?;
            root.draw(&Text::new(
                col.subtitle.to_owned(),
                (cx, y0 + 24),
                font(15).color(&RGBColor(60, 60, 60)).pos(centre),
            ))
            .map_err(|e| err(&e))?;
            for (i, &t) in truth.iter().enumerate() {
                let (x0, y0) = g.origin(c, i);
                let p = col.predicted[i];
                let wrong = p != t;
                let (x0, y0, cell) = (x0 as i32, y0 as i32, g.cell as i32);
                let frame = if wrong { 3 } else { 1 };
                let colour = if wrong { red } else { grey };
                root.draw(&Rectangle::new(
                    [
                        (x0 - frame, y0 - frame),
                        (x0 + cell + frame - 1, y0 + cell + frame - 1),
                    ],
                    colour.filled(),
                ))
                .map_err(|e| err(&e))?;
                root.draw(&Text::new(
                    format!("{} \u{2192} {}", name(t), name(p)),
                    (x0 + cell / 2, y0 + cell + 5),
                    font(16)
                        .color(if wrong { &red } else { &BLACK })
                        .pos(centre),
                ))
                .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    // The images themselves, inside their frames, magnified without smoothing.
    let d = g.side * g.side;
    for (c, col) in columns.iter().enumerate() {
        for i in 0..truth.len() {
            let im = &col.pixels[i * d..(i + 1) * d];
            let (x0, y0) = g.origin(c, i);
            for py in 0..g.cell {
                for px in 0..g.cell {
                    let v = im[(py / GRID_SCALE) * g.side + px / GRID_SCALE];
                    let v = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    let o = ((y0 + py) * w + x0 + px) * 3;
                    rgb[o..o + 3].copy_from_slice(&[v, v, v]);
                }
            }
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header()?;
        wr.write_image_data(&rgb)?;
    }
    Ok(png_bytes)
}
