//! Shared code of the fuzz targets. The per-input functions live in `cases.rs`,
//! which the workspace's `tests/tests/fuzz_corpus.rs` includes too, so the regular
//! tests replay the committed corpus and crashes through exactly the same code.

/// The trainer's data readers, compiled from their source file (the trainer crate
/// itself needs dfdx, which does not build on nightly).
#[allow(dead_code, clippy::all)]
#[path = "../../trainer/src/data.rs"]
pub mod data;

pub mod cases;
