//! Bit-exactness pin of the convolutional path: purified bytes and labels of a
//! fixed random conv model (stride-2 conv, ×2 upsampling, 1×1 conv, flatten).
//!
//! Like `golden.rs`, the same value must come out of every build (SSE2 baseline,
//! AVX2, `-C target-cpu=native`, Cortex-M4F); a change here means the conv numerics
//! changed. CI should run it next to `golden.rs` under every `RUSTFLAGS`
//! (`--test golden_conv`).

mod common;

use common::{assert_golden_pins, crc32, OwnedAnyModel, Rng};
use pursamere_core::noise::NoiseGenerator;
use pursamere_core::{Model, PurifierConfig};

fn digest(
    noise: NoiseGenerator,
    cfg_edit: fn(&mut PurifierConfig),
    batch_fast: bool,
) -> (u32, Vec<usize>) {
    let mut owned = OwnedAnyModel::small_conv(78);
    owned.cfg.noise = noise;
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    let mut cfg = model.purifier_config();
    cfg_edit(&mut cfg);
    let mut rng = Rng(2025);
    let mut all = Vec::new();
    let mut labels = Vec::new();
    let len = if batch_fast {
        model.purify_scratch_len_batched(&cfg, cfg.noise_samples as usize)
    } else {
        model.purify_scratch_len(&cfg)
    };
    let mut scratch = vec![0.0; len.max(model.classify_scratch_len())];
    for _ in 0..4 {
        let x: Vec<f32> = (0..64).map(|_| rng.unit()).collect();
        let mut out = vec![0.0; 64];
        let mut logits = vec![0.0; 10];
        model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
        labels.push(model.classify(&out, &mut logits, &mut scratch).unwrap());
        all.extend(out.iter().chain(&logits).flat_map(|v| v.to_le_bytes()));
    }
    (crc32(&all), labels)
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
