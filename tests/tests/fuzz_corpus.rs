//! Replays the fuzz targets' committed inputs on stable, without libFuzzer: every
//! seed under `fuzz/corpus/<target>/` and every crash kept under
//! `fuzz/artifacts/<target>/` goes through exactly the code the fuzz target runs
//! (`fuzz/src/cases.rs`, included here). See docs/FUZZING.md.

use std::path::{Path, PathBuf};

/// What `cases.rs` calls `crate::data`: the trainer's readers (the fuzz crate
/// compiles the same source file).
mod data {
    pub use pursamere_trainer::data::*;
}

#[path = "../../fuzz/src/cases.rs"]
mod cases;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none when the folder is absent).
fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs `case` on every seed and every kept crash of `target`; a panic names the file.
fn replay(target: &str, case: fn(&[u8])) {
    let seeds = files("corpus", target);
    assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ holds no seeds");
    for path in seeds.iter().chain(&files("artifacts", target)) {
        let bytes = std::fs::read(path).expect("readable corpus file");
        if std::panic::catch_unwind(|| case(&bytes)).is_err() {
            panic!("fuzz target {target} panics on {}", path.display());
        }
    }
}

#[test]
fn parse_and_run_replays_corpus_and_crashes() {
    replay("parse_and_run", cases::parse_and_run);
}

#[test]
fn idx_replays_corpus_and_crashes() {
    replay("idx", cases::idx);
}

#[test]
fn png_replays_corpus_and_crashes() {
    replay("png", cases::png);
}

/// The hand-made model seeds (`*.psm`; the rest of the corpus is what the fuzzer
/// kept, mostly invalid files) stay meaningful: every one is a valid model.
#[test]
fn model_seeds_parse() {
    let models: Vec<PathBuf> = files("corpus", "parse_and_run")
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "psm"))
        .collect();
    assert!(
        models.len() >= 4,
        "fuzz/corpus/parse_and_run/ lost its *.psm seeds"
    );
    for path in models {
        let bytes = std::fs::read(&path).unwrap();
        let parsed = pursamere_core::Model::parse(&bytes).map(|_| ());
        if let Err(e) = parsed {
            panic!("{}: {e:?}", path.display());
        }
    }
}

/// The IDX crash (dimensions whose product overflows a u64) is a `BadDims` error.
#[test]
fn idx_crash_is_a_bad_dims_error() {
    let bytes =
        std::fs::read(fuzz_dir().join("artifacts/idx/crash-dims-product-overflow")).unwrap();
    let (images, labels) = bytes[3..]
        .split_at(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])) % (bytes.len() - 2));
    let err =
        data::dataset_from_idx_bytes("crash", images, labels, usize::from(bytes[2])).unwrap_err();
    assert!(matches!(err, data::DataError::BadDims { .. }), "{err}");
}

/// The PNG crash (a header promising 16M × 33M pixels) is a readable error, not an
/// allocation abort.
#[test]
fn png_crash_is_an_image_too_large_error() {
    let path = fuzz_dir().join("artifacts/png/crash-huge-header-alloc-abort");
    let err = data::read_png_8bit(&path).unwrap_err();
    assert!(err.to_string().contains("image too large"), "{err}");
}

/// The second PNG crash (a 13-byte palette, which made png 0.17 panic while
/// expanding it) is a readable error.
#[test]
fn png_bad_palette_is_an_error() {
    let path = fuzz_dir().join("artifacts/png/crash-palette-not-multiple-of-3");
    let err = data::read_png_8bit(&path).unwrap_err();
    assert!(err.to_string().contains("invalid palette"), "{err}");
}
