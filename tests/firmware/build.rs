//! Prepares what the firmware embeds, from build-time environment variables (all
//! optional; README "Flashing to a device"):
//!
//! | variable | default | what |
//! | --- | --- | --- |
//! | `PURSAMERE_MODEL` | `fixtures/mnist-robust-int8.psm` (the shipped default) | the `.psm` model to embed |
//! | `PURSAMERE_FW_IMAGES` | `16` | how many images to run |
//! | `PURSAMERE_FW_IDX_IMAGES` | `fixtures/mnist-sample/t10k-images-idx3-ubyte.gz` | IDX images (gzipped or raw) |
//! | `PURSAMERE_FW_IDX_LABELS` | `fixtures/mnist-sample/t10k-labels-idx1-ubyte.gz` | their IDX labels |
//! | `PURSAMERE_FW_ITERS` | the file's K | purifier steps K |
//! | `PURSAMERE_FW_NOISE_SAMPLES` | the file's M | noise samples M |
//!
//! A relative path is looked up from `tests/firmware/` first, then from the
//! repository root. The model is parsed and validated here with the host build of
//! the core; the image size must match the model's input shape; the scratch buffer
//! is sized for the model and configuration; and the flash and RAM the model needs
//! are checked against `memory.x` — each problem fails the build with a message
//! that names it. Writes `model.psm`, `images.bin`, `labels.bin`, `config.rs` and
//! `memory.x` to `OUT_DIR`.

use std::io::Read;
use std::path::{Path, PathBuf};

use pursamere_core::Model;

const ENV_MODEL: &str = "PURSAMERE_MODEL";
const ENV_IMAGES: &str = "PURSAMERE_FW_IMAGES";
const ENV_IDX_IMAGES: &str = "PURSAMERE_FW_IDX_IMAGES";
const ENV_IDX_LABELS: &str = "PURSAMERE_FW_IDX_LABELS";
const ENV_ITERS: &str = "PURSAMERE_FW_ITERS";
const ENV_NOISE: &str = "PURSAMERE_FW_NOISE_SAMPLES";

const DEFAULT_MODEL: &str = "fixtures/mnist-robust-int8.psm";
const DEFAULT_IMAGES: usize = 16;
const DEFAULT_IDX_IMAGES: &str = "fixtures/mnist-sample/t10k-images-idx3-ubyte.gz";
const DEFAULT_IDX_LABELS: &str = "fixtures/mnist-sample/t10k-labels-idx1-ubyte.gz";

/// Stack the firmware needs besides its buffers (measured high-water mark about
/// 9.3 KB with the shipped model, 12.4 KB with the conv fixture; footprint.json).
const CALL_STACK: u64 = 16 * 1024;

type Res<T> = Result<T, String>;

fn main() {
    for v in [
        ENV_MODEL,
        ENV_IMAGES,
        ENV_IDX_IMAGES,
        ENV_IDX_LABELS,
        ENV_ITERS,
        ENV_NOISE,
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = run() {
        eprintln!("\nerror: pursamere-firmware build: {e}\n");
        std::process::exit(1);
    }
}

/// The value of an environment variable; unset and empty are the same.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Resolves a path given in `var` (or the default, relative to the repository root)
/// and registers it for rebuilds.
fn resolve(var: &str, default: &str) -> Res<PathBuf> {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = here.join("../..");
    let path = match env(var) {
        None => root.join(default),
        Some(v) => {
            let p = PathBuf::from(&v);
            if p.is_absolute() {
                p
            } else {
                let candidates = [here.join(&p), root.join(&p)];
                match candidates.iter().find(|c| c.exists()) {
                    Some(c) => c.clone(),
                    None => {
                        return Err(format!(
                            "{var}={v}: no such file (looked in {} and {}); give an absolute path or one relative to the repository root",
                            candidates[0].display(),
                            candidates[1].display()
                        ))
                    }
                }
            }
        }
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        return Err(format!(
            "{}{}: no such file",
            path.display(),
            if env(var).is_some() {
                format!(" (from {var})")
            } else {
                format!(" (the default; set {var} to choose another)")
            }
        ));
    }
    Ok(path)
}

fn read(path: &Path, var: &str) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("{} ({var}): cannot read: {e}", path.display()))
}

/// The file's bytes, gunzipped if they start with the gzip magic.
fn read_maybe_gz(path: &Path, var: &str) -> Res<Vec<u8>> {
    let raw = read(path, var)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("{} ({var}): not a valid gzip file: {e}", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX file of unsigned bytes with `ndims` dimensions: `(dims, data)`.
fn idx(bytes: &[u8], ndims: u8, path: &Path, var: &str) -> Res<(Vec<usize>, Vec<u8>)> {
    let what = if ndims == 3 {
        "images (magic 0x00000803: count × rows × columns)"
    } else {
        "labels (magic 0x00000801)"
    };
    if bytes.len() < 4 || bytes[..4] != [0, 0, 8, ndims] {
        return Err(format!(
            "{} ({var}): not an IDX file of unsigned-byte {what}; header {:02x?}",
            path.display(),
            &bytes[..bytes.len().min(4)]
        ));
    }
    let head = 4 + 4 * usize::from(ndims);
    if bytes.len() < head {
        return Err(format!("{} ({var}): truncated IDX header", path.display()));
    }
    let dims: Vec<usize> = bytes[4..head]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("{} ({var}): absurd IDX dimensions {dims:?}", path.display()))?;
    if bytes.len() - head != len {
        return Err(format!(
            "{} ({var}): IDX dimensions {dims:?} need {len} data bytes, the file has {}",
            path.display(),
            bytes.len() - head
        ));
    }
    Ok((dims, bytes[head..].to_vec()))
}

/// `LENGTH` of a region in memory.x, in bytes (`None` if it cannot be read).
fn region_length(memory_x: &str, region: &str) -> Option<u64> {
    let line = memory_x
        .lines()
        .find(|l| l.trim_start().starts_with(region) && l.contains("LENGTH"))?;
    let v = line.split("LENGTH").nth(1)?.trim_start();
    let v = v.strip_prefix('=')?.trim();
    let v = v.trim_end_matches([',', ';']).trim();
    let (num, mul) = if let Some(n) = v.strip_suffix(['K', 'k']) {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix(['M', 'm']) {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    let n = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse().ok()?
    };
    Some(n * mul)
}

fn parse_count(var: &str, what: &str) -> Res<Option<u32>> {
    env(var)
        .map(|v| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{var}={v}: {what} must be a non-negative integer"))
        })
        .transpose()
}

fn run() -> Res<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // The `layer-profile` feature: a measuring build, run only under QEMU
    // (scripts/fw-cycle-estimate.sh), with a larger scratch and stack.
    let profile = env("CARGO_FEATURE_LAYER_PROFILE").is_some();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(out.join(name), bytes)
            .map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))
    };

    // The model, validated by the host build of the same core.
    let model_path = resolve(ENV_MODEL, DEFAULT_MODEL)?;
    let model_bytes = read(&model_path, ENV_MODEL)?;
    let model = Model::parse(&model_bytes).map_err(|e| {
        format!(
            "{} ({ENV_MODEL}) is not a valid .psm model: {e}",
            model_path.display()
        )
    })?;
    let shape = model.spec().meta.input_shape;
    let d = model.input_len();

    // The purifier configuration the firmware will run.
    let mut cfg = model.purifier_config();
    if let Some(k) = parse_count(ENV_ITERS, "the number of purifier steps K")? {
        cfg.iters = k;
    }
    if let Some(m) = parse_count(ENV_NOISE, "the number of noise samples M")? {
        cfg.noise_samples = m;
    }
    cfg.validate().map_err(|e| {
        format!(
            "purifier configuration (K {}, M {}): {e}",
            cfg.iters, cfg.noise_samples
        )
    })?;
    let mut scratch = model
        .purify_scratch_len(&cfg)
        .max(model.classify_scratch_len());
    // The layer profile runs each layer on its own: input, output and input
    // gradient side by side in the scratch buffer.
    if profile {
        let spec = model.spec();
        for net in [&spec.denoiser, &spec.classifier] {
            let mut len = model.input_len();
            for layer in &net.layers {
                let out = layer.output_len(len);
                scratch = scratch.max(2 * len + out);
                len = out;
            }
        }
    }

    // Images and labels.
    let images_path = resolve(ENV_IDX_IMAGES, DEFAULT_IDX_IMAGES)?;
    let labels_path = resolve(ENV_IDX_LABELS, DEFAULT_IDX_LABELS)?;
    if env(ENV_IDX_IMAGES).is_some() != env(ENV_IDX_LABELS).is_some() {
        return Err(format!(
            "set both {ENV_IDX_IMAGES} and {ENV_IDX_LABELS} (images and their labels), or neither"
        ));
    }
    let (dims, pixels) = idx(
        &read_maybe_gz(&images_path, ENV_IDX_IMAGES)?,
        3,
        &images_path,
        ENV_IDX_IMAGES,
    )?;
    let (ldims, labels) = idx(
        &read_maybe_gz(&labels_path, ENV_IDX_LABELS)?,
        1,
        &labels_path,
        ENV_IDX_LABELS,
    )?;
    let (available, rows, cols) = (dims[0], dims[1], dims[2]);
    if shape.channels != 1 || usize::from(shape.height) != rows || usize::from(shape.width) != cols
    {
        return Err(format!(
            "the images of {} are 1 × {rows} × {cols} (grey IDX), but the model {} takes {} × {} × {} inputs; \
             choose images of the model's size with {ENV_IDX_IMAGES}/{ENV_IDX_LABELS}",
            images_path.display(),
            model_path.display(),
            shape.channels,
            shape.height,
            shape.width
        ));
    }
    if ldims[0] != available {
        return Err(format!(
            "{} has {available} images but {} has {} labels",
            images_path.display(),
            labels_path.display(),
            ldims[0]
        ));
    }
    let count = match env(ENV_IMAGES) {
        None => DEFAULT_IMAGES.min(available),
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                format!("{ENV_IMAGES}={v}: the number of images must be an integer ≥ 1")
            })?,
    };
    if count > available {
        return Err(format!(
            "{ENV_IMAGES}={count}, but {} holds only {available} images",
            images_path.display()
        ));
    }
    if let Some((i, &l)) = labels[..count]
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= model.num_classes())
    {
        return Err(format!(
            "label {l} of image {i} in {} is not one of the model's {} classes",
            labels_path.display(),
            model.num_classes()
        ));
    }

    // The memory budget of memory.x, checked before the linker does it less clearly.
    let memory_x = std::fs::read_to_string("memory.x")
        .map_err(|e| format!("cannot read tests/firmware/memory.x: {e}"))?;
    let embedded = (model_bytes.len() + count * d + count) as u64;
    if let Some(flash) = region_length(&memory_x, "FLASH") {
        if embedded > flash {
            return Err(format!(
                "the model ({} bytes) and {count} images ({} bytes) do not fit the {flash} bytes of FLASH in memory.x; \
                 embed fewer images ({ENV_IMAGES}) or set FLASH to your part's size",
                model_bytes.len(),
                count * (d + 1)
            ));
        }
    }
    // The layer profile (a measuring build, run only under QEMU) holds each layer's
    // input, output and gradient at once, more than the budget's RAM: its stack
    // starts at the top of the emulated board's 4 MiB of data RAM instead (the
    // linker reads memory.x from this directory, so the stack top is moved, not
    // the region). Its RAM is not checked against the budget.
    if profile {
        println!("cargo:rustc-link-arg=--defsym=_stack_start=0x20400000");
    }
    // Scratch plus the input and purified image live on the stack, with the call
    // stack of the core and the console beside them.
    let buffers = (4 * (scratch + 2 * d + model.num_classes())) as u64;
    if let Some(ram) = region_length(&memory_x, "RAM").filter(|_| !profile) {
        if buffers + CALL_STACK > ram {
            return Err(format!(
                "the model {} with K {} and M {} needs {buffers} bytes of scratch and image buffers plus about {CALL_STACK} of call stack, \
                 more than the {ram} bytes of RAM in memory.x; lower M ({ENV_NOISE}) or set RAM to your part's size",
                model_path.display(),
                cfg.iters,
                cfg.noise_samples,
            ));
        }
    }

    write("model.psm", &model_bytes)?;
    write("images.bin", &pixels[..count * d])?;
    write("labels.bin", &labels[..count])?;
    write("memory.x", memory_x.as_bytes())?;
    let config = format!(
        "// Generated by build.rs from {model}.\n\
         /// Input values per image.\n\
         pub const D: usize = {d};\n\
         /// Classes (length of the logits).\n\
         pub const CLASSES: usize = {classes};\n\
         /// Scratch floats: enough for purify and classify with the configuration below.\n\
         pub const SCRATCH: usize = {scratch};\n\
         /// Purifier steps K (the file's or {ENV_ITERS}).\n\
         pub const ITERS: u32 = {iters};\n\
         /// Noise samples M (the file's or {ENV_NOISE}).\n\
         pub const NOISE_SAMPLES: u32 = {noise};\n",
        model = model_path.display().to_string().escape_default(),
        classes = model.num_classes(),
        iters = cfg.iters,
        noise = cfg.noise_samples,
    );
    write("config.rs", config.as_bytes())?;
    println!("cargo:rustc-link-search={}", out.display());
    Ok(())
}
