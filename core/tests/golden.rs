//! Bit-exactness pin: purified bytes and labels of a fixed random model.
//!
//! The same value must come out of every build: the SSE2 baseline, `-C
//! target-cpu=native` (AVX2/AVX-512), and the Cortex-M4F. CI runs this file under
//! several `RUSTFLAGS`; a change here means the numerics changed, which needs a
//! format version bump.

mod common;

use common::{assert_golden_pins, crc32, purify_classify_digest, OwnedModel};
use pursamere_core::noise::NoiseGenerator;
use pursamere_core::PurifierConfig;

fn digest(
    noise: NoiseGenerator,
    cfg_edit: fn(&mut PurifierConfig),
    batch_fast: bool,
) -> (u32, Vec<usize>) {
    let mut owned = OwnedModel::random(77, (8, 8), &[40, 24], true, &[20], 10);
    // Through the file: the version the writer stamps names the generator.
    owned.cfg.noise = noise;
    purify_classify_digest(&owned.bytes(), 2024, cfg_edit, batch_fast)
}

#[test]
fn purified_bytes_are_pinned() {
    // Format version 3 (f32 noise), and versions 1–2 (f64 noise), whose bits must
    // never change: files of those versions exist.
    assert_golden_pins(
        "dense",
        digest,
        [
            (NoiseGenerator::BoxMullerF32, PINNED_SAM, PINNED_SIGN),
            (
                NoiseGenerator::BoxMullerF64,
                PINNED_SAM_F64_NOISE,
                PINNED_SIGN_F64_NOISE,
            ),
        ],
    );
}

const PINNED_SAM: u32 = 0x488a8f01;
const PINNED_SIGN: u32 = 0x0cf8e5b8;
const PINNED_SAM_F64_NOISE: u32 = 0xc4fc5757;
const PINNED_SIGN_F64_NOISE: u32 = 0x3168aa22;

#[test]
fn digest_is_crc32_of_little_endian_bytes() {
    let v = [1.0f32, -0.5, 0.0];
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(pursamere_core::digest_f32(&v), crc32(&bytes));
    assert_eq!(pursamere_core::digest_f32(&[]), 0);
}
