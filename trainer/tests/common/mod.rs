//! Synthetic data for trainer tests: small images whose class decides a pattern.
#![allow(dead_code)]

use pursamere_trainer::data::Dataset;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` images of `side × side` pixels in `classes` classes: class `c` lights up a
/// band of rows, plus background noise.
pub fn synthetic(n: usize, side: usize, classes: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for k in 0..n {
        let c = k % classes;
        labels.push(c as u8);
        for r in 0..side {
            let on = r * classes / side == c;
            for _ in 0..side {
                let base: f32 = if on { 200.0 } else { 20.0 };
                let v = base + rng.gen_range(-20.0..20.0);
                pixels.push(v.clamp(0.0, 255.0) as u8);
            }
        }
    }
    Dataset {
        rows: side,
        cols: side,
        pixels,
        labels,
    }
}
