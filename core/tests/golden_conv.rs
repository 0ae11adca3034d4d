//! Bit-exactness pin of the convolutional path: purified bytes and labels of a
//! fixed random conv model (stride-2 conv, ×2 upsampling, 1×1 conv, flatten).
//!
//! Like `golden.rs`, the same value must come out of every build (SSE2 baseline,
//! AVX2, `-C target-cpu=native`, Cortex-M4F); a change here means the conv numerics
//! changed. CI should run it next to `golden.rs` under every `RUSTFLAGS`
//! (`--test golden_conv`).

mod common;

use common::{assert_golden_pins, purify_classify_digest, OwnedAnyModel};
use pursamere_core::noise::NoiseGenerator;
use pursamere_core::PurifierConfig;

fn digest(
    noise: NoiseGenerator,
    cfg_edit: fn(&mut PurifierConfig),
    batch_fast: bool,
) -> (u32, Vec<usize>) {
    let mut owned = OwnedAnyModel::small_conv(78);
    owned.cfg.noise = noise;
    purify_classify_digest(&owned.bytes(), 2025, cfg_edit, batch_fast)
}

#[test]
fn conv_purified_bytes_are_pinned() {
    // Format version 3 (f32 noise) and version 2 (f64 noise; never changes).
    assert_golden_pins(
        "conv",
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

const PINNED_SAM: u32 = 0x339aa2ef;
const PINNED_SIGN: u32 = 0x61e0272e;
const PINNED_SAM_F64_NOISE: u32 = 0x4201948d;
const PINNED_SIGN_F64_NOISE: u32 = 0x3f1649eb;
