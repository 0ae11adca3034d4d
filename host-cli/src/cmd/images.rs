//! Inputs and outputs of `purify` and `classify`: PNG files or an IDX range in, PNG
//! and/or raw f32 files out.

use std::borrow::Cow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::Model;
use pursamere_trainer::data::{read_idx_images, read_idx_labels, read_png_8bit};

use super::demo::SHIPPED_PSM;
use super::read_file;

/// Where the images and the model come from.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// PNG images of the model's input size and channels (28x28 grayscale for MNIST, RGB
    /// for colour models), 8- or 16-bit (16-bit samples are reduced to 8 bits).
    #[arg(conflicts_with = "idx")]
    pub png: Vec<PathBuf>,
    /// An IDX image file (gzipped or raw) instead of PNG files.
    #[arg(long)]
    pub idx: Option<PathBuf>,
    /// First image of the IDX file to use.
    #[arg(long, default_value_t = 0, requires = "idx")]
    pub start: usize,
    /// Number of IDX images to use, from --start.
    #[arg(long, default_value_t = 16, requires = "idx")]
    pub count: usize,
    /// Removed: every command selects images with --start/--count.
    #[arg(long, hide = true, value_parser = super::removed_flag(
        "--range was removed: select images with --start FIRST --count N, as in every command (--range A..B is --start A --count B-A)"
    ))]
    pub range: Option<String>,
    /// IDX label file with the true labels of the --idx images; default: the
    /// `*-labels-idx1-ubyte[.gz]` file beside --idx, when there is one.
    #[arg(long, requires = "idx")]
    pub labels: Option<PathBuf>,
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
    /// True label, when known (IDX images with a label file).
    pub label: Option<usize>,
}

/// The label file that goes with an IDX image file: `--labels`, or the
/// `*-labels-idx1-ubyte[.gz]` file beside it when there is one.
fn labels_path(a: &InputArgs, idx: &std::path::Path) -> Option<PathBuf> {
    if let Some(l) = &a.labels {
        return Some(l.clone());
    }
    let name = idx.file_name()?.to_str()?;
    if !name.contains("images-idx3") {
        return None;
    }
    let sibling = idx.with_file_name(name.replace("images-idx3", "labels-idx1"));
    sibling.is_file().then_some(sibling)
}

/// Model bytes: a file, or the shipped model.
pub fn model_bytes(path: &Option<PathBuf>) -> Result<Cow<'static, [u8]>> {
    Ok(match path {
        Some(p) => Cow::Owned(read_file(p)?),
        None => Cow::Borrowed(SHIPPED_PSM),
    })
}

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Class names stored for a data set by `export`: Fashion-MNIST's or CIFAR-10's
/// names for such a model, the label numbers otherwise.
pub fn class_names_for(dataset: &str, classes: usize) -> Vec<String> {
    if is_fashion(dataset) && classes == FASHION_MNIST_CLASSES.len() {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else if dataset.to_ascii_lowercase().contains("cifar")
        && classes == pursamere_trainer::data::CIFAR10_CLASSES.len()
    {
        pursamere_trainer::data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        (0..classes).map(|c| c.to_string()).collect()
    }
}

fn is_fashion(dataset: &str) -> bool {
    dataset.to_ascii_lowercase().contains("fashion")
}

/// The model's class names for reports: those it stores, except that a
/// Fashion-MNIST model written with bare numbers (older exports) gets the data set's
/// names.
pub fn class_names(model: &Model<'_>) -> Vec<String> {
    let meta = &model.spec().meta;
    let stored: Vec<String> = meta.class_names.iter().map(|s| s.to_string()).collect();
    let numbered = stored.iter().enumerate().all(|(i, s)| *s == i.to_string());
    if numbered && is_fashion(meta.dataset) {
        class_names_for(meta.dataset, stored.len())
    } else {
        stored
    }
}

/// Parses a model, naming its source in the error.
pub fn parse_model<'a>(bytes: &'a [u8], path: &Option<PathBuf>) -> Result<Model<'a>> {
    Model::parse(bytes).with_context(|| match path {
        Some(p) => format!("{} is not a valid model", p.display()),
        None => "the shipped model is corrupt".to_owned(),
    })
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
        let (start, end) =
            super::select_range(a.start, a.count, count, &idx.display().to_string())?;
        let labels = match labels_path(a, idx) {
            Some(p) => {
                let l = read_idx_labels(&p)?;
                if l.len() != count {
                    bail!(
                        "{} holds {} labels but {} holds {count} images",
                        p.display(),
                        l.len(),
                        idx.display()
                    );
                }
                Some(l)
            }
            None => None,
        };
        return Ok((start..end)
            .map(|i| Input {
                name: format!("idx-{i}"),
                pixels: pixels[i * h * w..(i + 1) * h * w]
                    .iter()
                    .map(|&p| f32::from(p) / 255.0)
                    .collect(),
                label: labels.as_ref().map(|l| usize::from(l[i])),
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
            // PNG samples are interleaved (pixel by pixel); the core takes colour
            // images channel-major (all of R, then G, then B).
            let pixels = (0..c)
                .flat_map(|ch| data.iter().skip(ch).step_by(c.max(1)))
                .map(|&v| f32::from(v) / 255.0)
                .collect();
            Ok(Input {
                name,
                pixels,
                label: None,
            })
        })
        .collect()
}
