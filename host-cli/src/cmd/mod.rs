//! One module per subcommand, plus shared helpers.

pub mod export;
pub mod inspect;
pub mod train;
pub mod verify;

use std::path::Path;

use anyhow::{Context, Result};

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes a file atomically (temporary file, then rename), naming it in the error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    pursamere_trainer::train::write_atomic(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
