//! Helpers shared by the binary's integration tests: running it, and writing
//! generated data in the real file formats (nothing here needs `../shared`).

// Each test crate uses its own subset.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pursamere_trainer::data::synthetic_bands;

/// The `pursamere` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pursamere"))
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run pursamere")
}

/// Standard output and standard error together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The repository's `fixtures/` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A gzipped IDX file: big-endian `magic`, dimensions, then `data`.
pub fn write_idx_gz(path: &Path, magic: u32, dims: &[u32], data: &[u8]) {
    let mut raw = magic.to_be_bytes().to_vec();
    for d in dims {
        raw.extend_from_slice(&d.to_be_bytes());
    }
    raw.extend_from_slice(data);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

/// A data folder of `side × side` band images of `classes` classes
/// (`synthetic_bands`) in MNIST's layout, one `(prefix, images, seed)` per split
/// (`train`, `t10k`).
pub fn write_bands(dir: &Path, side: u32, classes: usize, splits: &[(&str, u32, u64)]) {
    std::fs::create_dir_all(dir).unwrap();
    for &(prefix, n, seed) in splits {
        let ds = synthetic_bands(n as usize, side as usize, classes, seed);
        write_idx_gz(
            &dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
            0x803,
            &[n, side, side],
            &ds.pixels,
        );
        write_idx_gz(
            &dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
            0x801,
            &[n],
            &ds.labels,
        );
    }
}
