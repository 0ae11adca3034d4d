//! Inputs and outputs of `purify` and `classify`: PNG files or an IDX range in, PNG
//! and/or raw f32 files out.

use std::borrow::Cow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::Model;
use pursamere_trainer::data::{read_idx_images, read_png_8bit};

use super::demo::SHIPPED_PSM;
use super::read_file;

/// Where the images and the model come from.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// PNG images: 8-bit grayscale, the model's input size (28x28 for MNIST).
    #[arg(conflicts_with = "idx")]
    pub png: Vec<PathBuf>,
    /// An IDX image file (gzipped or raw) instead of PNG files.
    #[arg(long)]
    pub idx: Option<PathBuf>,
    /// Images of the IDX file to use: `START..END` (END excluded) or one index.
    #[arg(long, default_value = "0..16", requires = "idx")]
    pub range: String,
    /// Model file (.psm); default: the shipped MNIST model.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// One input image.
pub struct Input {
    /// Name used in reports and output file names.
    pub name: String,
    /// Pixels in `[0, 1]`.
    pub pixels: Vec<f32>,
}

/// Model bytes: a file, or the shipped model.
pub fn model_bytes(path: &Option<PathBuf>) -> Result<Cow<'static, [u8]>> {
    Ok(match path {
        Some(p) => Cow::Owned(read_file(p)?),
        None => Cow::Borrowed(SHIPPED_PSM),
    })
}

/// Parses a model, naming its source in the error.
pub fn parse_model<'a>(bytes: &'a [u8], path: &Option<PathBuf>) -> Result<Model<'a>> {
    Model::parse(bytes).with_context(|| match path {
        Some(p) => format!("{} is not a valid model", p.display()),
        None => "the shipped model is corrupt".to_owned(),
    })
}

fn parse_range(s: &str) -> Result<(usize, usize)> {
    let bad = || anyhow::anyhow!("--range `{s}` is not START..END or an index");
    if let Some((a, b)) = s.split_once("..") {
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a >= b {
            bail!("--range `{s}` is empty");
        }
        Ok((a, b))
    } else {
        let i: usize = s.trim().parse().map_err(|_| bad())?;
        Ok((i, i.saturating_add(1)))
    }
}

/// Loads the inputs and checks them against the model's input shape.
pub fn load_inputs(a: &InputArgs, model: &Model<'_>) -> Result<Vec<Input>> {
    let shape = model.spec().meta.input_shape;
    let (h, w, c) = (
        usize::from(shape.height),
        usize::from(shape.width),
        usize::from(shape.channels),
    );
    let expected = format!(
        "{w}x{h} {}",
        if c == 1 {
            "8-bit grayscale"
        } else {
            "8-bit RGB"
        }
    );
    if let Some(idx) = &a.idx {
        let (count, rows, cols, pixels) = read_idx_images(idx)?;
        if (rows, cols) != (h, w) || c != 1 {
            bail!(
                "{} holds {cols}x{rows} images but the model takes {expected}",
                idx.display()
            );
        }
        let (start, end) = parse_range(&a.range)?;
        if end > count {
            bail!(
                "--range {start}..{end} is outside the {count} images of {}",
                idx.display()
            );
        }
        return Ok((start..end)
            .map(|i| Input {
                name: format!("idx-{i}"),
                pixels: pixels[i * h * w..(i + 1) * h * w]
                    .iter()
                    .map(|&p| f32::from(p) / 255.0)
                    .collect(),
            })
            .collect());
    }
    if a.png.is_empty() {
        bail!("no input: give PNG files or --idx FILE");
    }
    a.png
        .iter()
        .map(|p| {
            let (pw, ph, pc, data) = read_png_8bit(p)?;
            if (pw, ph, pc) != (w, h, c) {
                let kind = match pc {
                    1 => "grayscale",
                    2 => "grayscale+alpha",
                    3 => "RGB",
                    _ => "RGBA",
                };
                bail!(
                    "{} is a {pw}x{ph} {kind} PNG; the model takes {expected}",
                    p.display()
                );
            }
            let name = p
                .file_stem()
                .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            Ok(Input {
                name,
                pixels: data.iter().map(|&v| f32::from(v) / 255.0).collect(),
            })
        })
        .collect()
}
