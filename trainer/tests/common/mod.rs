//! Shared helpers for the trainer's tests.
#![allow(dead_code)]

use pursamere_trainer::data::{synthetic_bands, Dataset};

/// Small labelled images (see `synthetic_bands`).
pub fn synthetic(n: usize, side: usize, classes: usize, seed: u64) -> Dataset {
    synthetic_bands(n, side, classes, seed)
}
