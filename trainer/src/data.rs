//! Data sets: IDX files (MNIST, Fashion-MNIST; gzipped or raw), the CIFAR-10 binary
//! batches, seeded shuffling and a validation split carved from the TRAIN set.
//!
//! IDX (LeCun's format): a big-endian header `0x00 0x00 type ndims`, then `ndims`
//! big-endian u32 dimensions, then the data. Images are type `0x08` (unsigned byte)
//! with three dimensions (count, rows, columns): magic `0x00000803`; labels are type
//! `0x08` with one dimension: magic `0x00000801`.
//!
//! CIFAR-10 (binary version, the `cifar-10-batches-bin` directory of
//! `cifar-10-binary.tar.gz`): `data_batch_1.bin` … `data_batch_5.bin` (train) and
//! `test_batch.bin` (test), each a plain sequence of 3,073-byte records: one label
//! byte (0..=9) then 3,072 pixel bytes, the 32×32 red plane, then green, then blue,
//! each plane row-major. No header; 10,000 records per file in the real data.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Magic number of an IDX image file.
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX label file.
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// What is wrong with a data file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read (or its gzip stream is corrupt).
    #[error("{path}: cannot read: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A data-set directory without the files of the expected layout.
    #[error("{dir} is not an MNIST-layout directory: it has no {expected}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    NotAnMnistDir {
        /// Directory.
        dir: PathBuf,
        /// The file names looked for.
        expected: String,
        /// Where such files were found instead, if anywhere nearby.
        hint: Option<String>,
    },
    /// Wrong magic number: not an IDX file of the expected kind.
    #[error("{path}: magic number {found:#010x}, expected {expected:#010x} ({what}); is this the right file?")]
    BadMagic {
        /// File.
        path: PathBuf,
        /// Magic required.
        expected: u32,
        /// Magic found.
        found: u32,
        /// "images" or "labels".
        what: &'static str,
    },
    /// The file is shorter than an IDX header: empty or cut off.
    #[error("{path}: {}; an IDX {what} file starts with a {needed}-byte header", if *.found == 0 { "the file is empty".to_owned() } else { format!("the file is truncated ({found} bytes)") })]
    Truncated {
        /// File.
        path: PathBuf,
        /// Bytes present.
        found: u64,
        /// Header bytes needed.
        needed: u64,
        /// "images" or "labels".
        what: &'static str,
    },
    /// A dimension is zero or the image size is implausible.
    #[error("{path}: bad dimensions {dims:?}")]
    BadDims {
        /// File.
        path: PathBuf,
        /// Dimensions in the header.
        dims: Vec<u32>,
    },
    /// Fewer (or more) data bytes than the header promises.
    #[error("{path}: header promises {expected} data bytes but the file holds {found}")]
    Length {
        /// File.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Image and label counts differ.
    #[error("{images} holds {image_count} images but {labels} holds {label_count} labels")]
    CountMismatch {
        /// Image file.
        images: PathBuf,
        /// Label file.
        labels: PathBuf,
        /// Images.
        image_count: usize,
        /// Labels.
        label_count: usize,
    },
    /// A label is not below the number of classes.
    #[error("{path}: label {label} at index {index} is out of range (the data set has {classes} classes)")]
    LabelRange {
        /// File.
        path: PathBuf,
        /// Position.
        index: usize,
        /// Value.
        label: u8,
        /// Number of classes.
        classes: usize,
    },
    /// A PNG image could not be decoded or has the wrong size.
    #[error("{path}: {why}")]
    Image {
        /// File.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A line of a labels file is malformed.
    #[error("{path}:{line}: {why}")]
    LabelsFile {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A requested split does not fit the data.
    #[error("cannot hold out {requested} validation examples from {available}")]
    Split {
        /// Requested validation size.
        requested: usize,
        /// Examples available.
        available: usize,
    },
    /// CIFAR-10 batch files are missing from a directory.
    #[error(
        "{dir}: no {} here; a CIFAR-10 directory holds data_batch_1.bin … data_batch_5.bin \
         and test_batch.bin (the cifar-10-batches-bin directory of the binary version, \
         cifar-10-binary.tar.gz){}",
        missing.join(", "),
        if *nested { "; this directory has a cifar-10-batches-bin subdirectory: point at that instead" } else { "" }
    )]
    CifarMissing {
        /// Directory searched.
        dir: PathBuf,
        /// File names expected for the requested split but absent.
        missing: Vec<String>,
        /// The directory has a `cifar-10-batches-bin` subdirectory (the tarball was
        /// unpacked and its parent given).
        nested: bool,
    },
    /// A CIFAR-10 batch file's size is not a whole number of records.
    #[error(
        "{path}: {}; a CIFAR-10 batch file is a sequence of 3,073-byte records (1 label \
         byte + 3,072 pixel bytes)",
        if *size == 0 {
            "the file is empty".to_owned()
        } else {
            format!(
                "{size} bytes is not a whole number of records ({} × 3,073 + {})",
                size / CIFAR10_RECORD_LEN as u64,
                size % CIFAR10_RECORD_LEN as u64
            )
        }
    )]
    CifarSize {
        /// File.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A CIFAR-10 record's label byte is not a class index.
    #[error(
        "{path}: record {record} (byte offset {offset}) has label {label}; CIFAR-10 labels \
         are 0..=9; is this the CIFAR-100 or another file?"
    )]
    CifarLabel {
        /// File.
        path: PathBuf,
        /// Record index in the file (from 0).
        record: usize,
        /// Byte offset of the label byte.
        offset: u64,
        /// The label byte found.
        label: u8,
    },
}

/// Seed of the TRAIN hold-out: every `pursamere train` run holds out the same
/// images (the first `--validation` of this seeded shuffle, whatever the run's
/// `--seed`), so a denoiser and a classifier trained in separate runs share one
/// hold-out, and the evaluation's `split = "validation"` is held out of both.
pub const HOLDOUT_SEED: u64 = 0;

/// Images with labels, as bytes (0..=255): each image channel-major (all of channel
/// 0, then channel 1, …), each channel plane row-major — the core's input layout.
/// Grey data sets (IDX, PNG directories) have one channel; CIFAR-10 has three (R, G,
/// B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    /// Channels per image (1 grey, 3 RGB).
    pub channels: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `len × channels × rows × cols` pixel bytes.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image (`channels × rows × cols`).
    pub fn image_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// Image `i` as bytes (`None` past the end).
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.image_len();
        self.pixels.get(i * n..(i + 1) * n)
    }

    /// Image `i` scaled to `[0, 1]` f32 (`value / 255`), as the purifier takes it.
    pub fn image_f32(&self, i: usize) -> Option<Vec<f32>> {
        self.image(i)
            .map(|b| b.iter().map(|&v| f32::from(v) / 255.0).collect())
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if let (Some(img), Some(&l)) = (self.image(i), self.labels.get(i)) {
                pixels.extend_from_slice(img);
                labels.push(l);
            }
        }
        Dataset {
            channels: self.channels,
            rows: self.rows,
            cols: self.cols,
            pixels,
            labels,
        }
    }

    /// A seeded permutation of `0..len` (ChaCha8, reproducible across platforms).
    pub fn permutation(&self, seed: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        idx
    }

    /// Splits off `validation` examples chosen by a seeded shuffle (`pursamere
    /// train` and the evaluation's `split = "validation"` use [`HOLDOUT_SEED`]): returns
    /// `(train, validation)`. Hyper-parameters are tuned on the validation part of
    /// the TRAIN set, never on the test set.
    pub fn split_validation(
        &self,
        validation: usize,
        seed: u64,
    ) -> Result<(Dataset, Dataset), DataError> {
        if validation >= self.len() {
            return Err(DataError::Split {
                requested: validation,
                available: self.len(),
            });
        }
        let perm = self.permutation(seed);
        let (val, train) = perm.split_at(validation);
        Ok((self.select(train), self.select(val)))
    }
}

/// Reads a whole file, transparently un-gzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut raw = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
    gunzip_if_needed(path, raw)
}

fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| DataError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Decodes an image/label IDX pair held in memory (gzipped or raw); `name` labels
/// errors.
pub fn dataset_from_idx_bytes(
    name: &str,
    images: &[u8],
    labels: &[u8],
    classes: usize,
) -> Result<Dataset, DataError> {
    let path = PathBuf::from(name);
    let img = gunzip_if_needed(&path, images.to_vec())?;
    let lab = gunzip_if_needed(&path, labels.to_vec())?;
    let (dims, pixels) = parse_idx(&path, &img, IDX_IMAGES_MAGIC, "images")?;
    let (_, label_v) = parse_idx(&path, &lab, IDX_LABELS_MAGIC, "labels")?;
    let [count, rows, cols] = [dims[0], dims[1], dims[2]].map(|d| d as usize);
    if label_v.len() != count || rows == 0 || cols == 0 {
        return Err(DataError::BadDims { path, dims });
    }
    if let Some((index, &label)) = label_v
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= classes)
    {
        return Err(DataError::LabelRange {
            path,
            index,
            label,
            classes,
        });
    }
    Ok(Dataset {
        channels: 1,
        rows,
        cols,
        pixels: pixels.to_vec(),
        labels: label_v.to_vec(),
    })
}

/// Encodes 8-bit grey pixels (`width × height`, row-major) as PNG bytes.
pub fn encode_png_gray(width: usize, height: usize, pixels: &[u8]) -> Result<Vec<u8>, DataError> {
    encode_png(1, width, height, pixels)
}

/// Encodes an 8-bit image stored channel-major, as the models take it
/// (`channels × height × width`), as PNG bytes: grey for 1 channel, RGB for 3.
pub fn encode_png(
    channels: usize,
    width: usize,
    height: usize,
    planar: &[u8],
) -> Result<Vec<u8>, DataError> {
    let bad = |why: String| DataError::Image {
        path: PathBuf::from("<png>"),
        why,
    };
    let color = match channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        c => {
            return Err(bad(format!(
                "a PNG holds 1 (grey) or 3 (RGB) channels, not {c}"
            )))
        }
    };
    let plane = width * height;
    if planar.len() != channels * plane {
        return Err(bad(format!(
            "{} pixel values for a {channels} × {height} × {width} image",
            planar.len()
        )));
    }
    // PNG interleaves the channels of each pixel.
    let pixels: Vec<u8> = (0..plane)
        .flat_map(|i| (0..channels).map(move |c| c * plane + i))
        .map(|k| planar.get(k).copied().unwrap_or(0))
        .collect();
    let err = |e: png::EncodingError| bad(e.to_string());
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(&pixels).map_err(err)?;
    }
    Ok(out)
}

/// Parses an IDX header; returns the dimensions and the data.
fn parse_idx<'b>(
    path: &Path,
    bytes: &'b [u8],
    magic: u32,
    what: &'static str,
) -> Result<(Vec<u32>, &'b [u8]), DataError> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 + 4 * ndims;
    if bytes.len() < 4 {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            found: bytes.len() as u64,
            needed: header_len as u64,
            what,
        });
    }
    let found_magic = bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    match found_magic {
        Some(m) if m == magic => {}
        other => {
            return Err(DataError::BadMagic {
                path: path.to_owned(),
                expected: magic,
                found: other.unwrap_or(0),
                what,
            })
        }
    }
    let Some(header) = bytes.get(4..header_len) else {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            found: bytes.len() as u64,
            needed: header_len as u64,
            what,
        });
    };
    let dims: Vec<u32> = header
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let data = &bytes[header_len..];
    // Checked: three u32 dimensions can overflow a u64 (found by fuzzing).
    let Some(expected) = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
    else {
        return Err(DataError::BadDims {
            path: path.to_owned(),
            dims,
        });
    };
    if expected != data.len() as u64 {
        return Err(DataError::Length {
            path: path.to_owned(),
            expected,
            found: data.len() as u64,
        });
    }
    Ok((dims, data))
}

/// Reads an IDX image file (gzipped or raw): `(count, rows, cols, pixels)`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, data) = parse_idx(path, &bytes, IDX_IMAGES_MAGIC, "images")?;
    let [count, rows, cols] = [dims[0], dims[1], dims[2]].map(|d| d as usize);
    if rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        return Err(DataError::BadDims {
            path: path.to_owned(),
            dims,
        });
    }
    Ok((count, rows, cols, data.to_vec()))
}

/// Reads an IDX label file (gzipped or raw).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (_, data) = parse_idx(path, &bytes, IDX_LABELS_MAGIC, "labels")?;
    Ok(data.to_vec())
}

/// Reads an image file and its label file, checking that the counts agree and that
/// every label is below `classes`.
pub fn load_idx_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    let (count, rows, cols, pixels) = read_idx_images(images)?;
    let labels_v = read_idx_labels(labels)?;
    if labels_v.len() != count {
        return Err(DataError::CountMismatch {
            images: images.to_owned(),
            labels: labels.to_owned(),
            image_count: count,
            label_count: labels_v.len(),
        });
    }
    if let Some((index, &label)) = labels_v
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= classes)
    {
        return Err(DataError::LabelRange {
            path: labels.to_owned(),
            index,
            label,
            classes,
        });
    }
    Ok(Dataset {
        channels: 1,
        rows,
        cols,
        pixels,
        labels: labels_v,
    })
}

/// Which part of a data set directory to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]` (MNIST layout);
    /// `data_batch_1.bin` … `data_batch_5.bin` (CIFAR-10).
    Train,
    /// `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]` (MNIST layout);
    /// `test_batch.bin` (CIFAR-10).
    Test,
}

/// Loads a split of whichever data set `dir` holds: CIFAR-10 (binary version:
/// `data_batch_*.bin` / `test_batch.bin`, or a directory with a
/// `cifar-10-batches-bin` subdirectory is pointed at it) or MNIST-style IDX files
/// (MNIST, Fashion-MNIST). The errors are those of the MNIST loader when neither
/// is there.
pub fn load_dataset_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let cifar = |d: &Path| d.join("data_batch_1.bin").exists() || d.join("test_batch.bin").exists();
    if cifar(dir) {
        load_cifar10_dir(dir, split)
    } else if cifar(&dir.join("cifar-10-batches-bin")) {
        load_cifar10_dir(&dir.join("cifar-10-batches-bin"), split)
    } else {
        load_mnist_dir(dir, split)
    }
}

/// Loads the train or test part of an MNIST-layout directory (MNIST, Fashion-MNIST),
/// accepting gzipped or raw files under their standard names; 10 classes.
pub fn load_mnist_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let find = |stem: String| {
        let gz = dir.join(format!("{stem}.gz"));
        if gz.exists() {
            gz
        } else {
            dir.join(stem)
        }
    };
    let images = format!("{prefix}-images-idx3-ubyte");
    let has = |d: &Path| d.join(&images).exists() || d.join(format!("{images}.gz")).exists();
    if !has(dir) {
        // A directory one level off (the parent of the data set, or a file) is the
        // usual mistake: say where the files are.
        let below: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && has(p))
            .map(|p| p.display().to_string())
            .collect();
        let hint = if !below.is_empty() {
            Some(format!(
                "they are in {}: pass that directory",
                below.join(", ")
            ))
        } else if dir.parent().is_some_and(has) {
            Some(format!(
                "they are in {}: pass that directory",
                dir.parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        } else {
            None
        };
        return Err(DataError::NotAnMnistDir {
            dir: dir.to_path_buf(),
            expected: format!(
                "{images}[.gz] and {prefix}-labels-idx1-ubyte[.gz] (the files of the data set's homepage, gzipped or not)"
            ),
            hint,
        });
    }
    load_idx_pair(
        &find(format!("{prefix}-images-idx3-ubyte")),
        &find(format!("{prefix}-labels-idx1-ubyte")),
        10,
    )
}

/// A synthetic data set for tests, smoke runs and demos without downloads: `n`
/// images of `side × side` pixels in `classes` classes, where class `c` lights up
/// the `c`-th band of rows, plus uniform noise. Deterministic in `seed`.
pub fn synthetic_bands(n: usize, side: usize, classes: usize, seed: u64) -> Dataset {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for k in 0..n {
        let c = k % classes.max(1);
        labels.push(c as u8);
        for r in 0..side {
            let on = r * classes / side.max(1) == c;
            for _ in 0..side {
                let base: f32 = if on { 200.0 } else { 20.0 };
                let v = base + rng.gen_range(-20.0..20.0);
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    Dataset {
        channels: 1,
        rows: side,
        cols: side,
        pixels,
        labels,
    }
}

/// Largest decoded size, in bytes, [`read_png_8bit`] accepts (1 GiB).
pub const MAX_PNG_BYTES: usize = 1 << 30;

/// Reads a PNG as 8-bit samples: `(width, height, channels, samples)` with
/// `channels` 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); 16-bit and palette
/// images are reduced to 8 bits first.
pub fn read_png_8bit(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let img_err = |why: String| DataError::Image {
        path: path.to_owned(),
        why,
    };
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut decoder = png::Decoder::new(io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| img_err(format!("not a readable PNG ({e})")))?;
    // png 0.17 panics expanding a palette whose length is not a multiple of 3 or
    // that has more than 256 entries (found by fuzzing): refuse such files first.
    if let Some(palette) = reader.info().palette.as_deref() {
        if palette.is_empty() || !palette.len().is_multiple_of(3) || palette.len() > 3 * 256 {
            return Err(img_err(format!(
                "invalid palette ({} bytes; expected 3 bytes per entry, 1 to 256 entries)",
                palette.len()
            )));
        }
    }
    // The header alone must not make us allocate without bound (found by fuzzing:
    // a 77-byte file claiming 16.8M × 4.3G pixels aborted the process).
    if reader.output_buffer_size() > MAX_PNG_BYTES {
        let info = reader.info();
        return Err(img_err(format!(
            "image too large ({} × {} pixels; at most {MAX_PNG_BYTES} decoded bytes are read)",
            info.width, info.height
        )));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| img_err(format!("not a readable PNG ({e})")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => return Err(img_err(format!("unsupported colour type {other:?}"))),
    };
    buf.truncate(w * h * channels);
    Ok((w, h, channels, buf))
}

/// Reads a PNG as 8-bit grey pixels: `(width, height, pixels)`. Grey images are
/// taken as they are; RGB(A) images are converted with the Rec. 601 luma weights
/// (0.299 R + 0.587 G + 0.114 B); alpha is ignored.
pub fn read_png_gray(path: &Path) -> Result<(usize, usize, Vec<u8>), DataError> {
    let (w, h, channels, data) = read_png_8bit(path)?;
    let pixels = data
        .chunks_exact(channels)
        .map(|p| match p {
            [g] | [g, _] => *g,
            [r, g, b] | [r, g, b, _] => {
                (0.299 * f32::from(*r) + 0.587 * f32::from(*g) + 0.114 * f32::from(*b)).round()
                    as u8
            }
            _ => 0,
        })
        .collect();
    Ok((w, h, pixels))
}

/// Reads a directory of PNG images listed in a labels file. Each non-empty line of
/// `labels` that does not start with `#` is `<file name> <label>`, the file name
/// relative to `dir`; all images must have the same size and every label must be
/// below `classes`.
pub fn load_png_dir(dir: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(labels).map_err(|source| DataError::Io {
        path: labels.to_owned(),
        source,
    })?;
    let mut size = None;
    let mut pixels = Vec::new();
    let mut label_v = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| DataError::LabelsFile {
            path: labels.to_owned(),
            line: k + 1,
            why,
        };
        let (name, label) = line
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| bad("expected `<file name> <label>`".into()))?;
        let label: u8 = label
            .parse()
            .ok()
            .filter(|&l| usize::from(l) < classes)
            .ok_or_else(|| {
                bad(format!(
                    "label `{label}` is not a class index below {classes}"
                ))
            })?;
        let path = dir.join(name.trim());
        let (w, h, img) = read_png_gray(&path)?;
        match size {
            None => size = Some((w, h)),
            Some((sw, sh)) if (sw, sh) != (w, h) => {
                return Err(DataError::Image {
                    path,
                    why: format!("is {w}x{h} but the first image is {sw}x{sh}"),
                })
            }
            _ => {}
        }
        pixels.extend(img);
        label_v.push(label);
    }
    let Some((cols, rows)) = size else {
        return Err(DataError::LabelsFile {
            path: labels.to_owned(),
            line: 0,
            why: "lists no images".into(),
        });
    };
    Ok(Dataset {
        channels: 1,
        rows,
        cols,
        pixels,
        labels: label_v,
    })
}

/// Writes `data` as a gzipped MNIST-layout pair in `dir` (`{prefix}-images-idx3-ubyte.gz`,
/// `{prefix}-labels-idx1-ubyte.gz`), readable by [`load_mnist_dir`] when `prefix` is
/// `train` or `t10k`. Grey data only: an IDX image file has no channel axis.
pub fn write_idx_gz(dir: &Path, prefix: &str, data: &Dataset) -> io::Result<()> {
    for (name, bytes) in idx_gz_files(prefix, data)? {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

/// The two files [`write_idx_gz`] writes, as `(file name, gzipped bytes)`: images,
/// then labels.
pub fn idx_gz_files(prefix: &str, data: &Dataset) -> io::Result<[(String, Vec<u8>); 2]> {
    use std::io::Write;
    if data.channels != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an IDX image file holds grey images; this data set has {} channels",
                data.channels
            ),
        ));
    }
    let gz = |bytes: &[u8]| -> io::Result<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes)?;
        e.finish()
    };
    let n = data.len() as u32;
    let mut images = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
    for v in [n, data.rows as u32, data.cols as u32] {
        images.extend_from_slice(&v.to_be_bytes());
    }
    images.extend_from_slice(&data.pixels);
    let mut labels = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend_from_slice(&data.labels);
    Ok([
        (format!("{prefix}-images-idx3-ubyte.gz"), gz(&images)?),
        (format!("{prefix}-labels-idx1-ubyte.gz"), gz(&labels)?),
    ])
}

/// Bytes per CIFAR-10 record: one label byte, then 3 × 32 × 32 pixel bytes.
pub const CIFAR10_RECORD_LEN: usize = 1 + 3 * 32 * 32;

/// CIFAR-10's class names, in label order (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The CIFAR-10 TRAIN batch files, in the order their records are concatenated.
pub const CIFAR10_TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// The CIFAR-10 TEST batch file.
pub const CIFAR10_TEST_FILE: &str = "test_batch.bin";

/// Decodes CIFAR-10 batch bytes (see the module docs) held in memory; `path` names
/// the source in errors. A 3 × 32 × 32 data set, pixels in the file's own
/// channel-major order.
pub fn cifar10_from_bytes(path: &Path, bytes: &[u8]) -> Result<Dataset, DataError> {
    let size = bytes.len() as u64;
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR10_RECORD_LEN) {
        return Err(DataError::CifarSize {
            path: path.to_owned(),
            size,
        });
    }
    let n = bytes.len() / CIFAR10_RECORD_LEN;
    let mut pixels = Vec::with_capacity(n * (CIFAR10_RECORD_LEN - 1));
    let mut labels = Vec::with_capacity(n);
    for (record, r) in bytes.chunks_exact(CIFAR10_RECORD_LEN).enumerate() {
        let label = r[0];
        if usize::from(label) >= CIFAR10_CLASSES.len() {
            return Err(DataError::CifarLabel {
                path: path.to_owned(),
                record,
                offset: (record * CIFAR10_RECORD_LEN) as u64,
                label,
            });
        }
        labels.push(label);
        pixels.extend_from_slice(&r[1..]);
    }
    Ok(Dataset {
        channels: 3,
        rows: 32,
        cols: 32,
        pixels,
        labels,
    })
}

/// Reads one CIFAR-10 batch file (raw, or gzipped by the user).
pub fn read_cifar10_batch(path: &Path) -> Result<Dataset, DataError> {
    cifar10_from_bytes(path, &read_maybe_gz(path)?)
}

/// Loads the train (the five data batches, in order: 50,000 images in the real data)
/// or test (`test_batch.bin`: 10,000) part of a CIFAR-10 binary directory. Every
/// missing file of the split is named in one error before anything is read.
pub fn load_cifar10_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let names: &[&str] = match split {
        Split::Train => &CIFAR10_TRAIN_FILES,
        Split::Test => &[CIFAR10_TEST_FILE],
    };
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !dir.join(n).exists())
        .map(|n| (*n).to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::CifarMissing {
            dir: dir.to_owned(),
            missing,
            nested: dir.join("cifar-10-batches-bin").is_dir(),
        });
    }
    let mut all = Dataset {
        channels: 3,
        rows: 32,
        cols: 32,
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for name in names {
        let batch = read_cifar10_batch(&dir.join(name))?;
        all.pixels.extend_from_slice(&batch.pixels);
        all.labels.extend_from_slice(&batch.labels);
    }
    Ok(all)
}
