//! Bit-exactness pin of the shipped default, `fixtures/mnist-robust-int8.psm` (the
//! CNN classifier with int8 activations, purifier off, and the float conv denoiser
//! that rides along): the logits and labels of fixed pseudo-random images, and the
//! purified bytes with the purifier turned on.
//!
//! Like `golden.rs`, the same values must come out of every build (SSE2 baseline,
//! AVX2, `-C target-cpu=native`; CI runs this file under each, and the firmware test
//! compares the Cortex-M4F's digests with the host's). A change here means the
//! shipped system's numerics changed. The values are printed (`--nocapture`) so that
//! an intended change can update the pins.

mod common;

use common::{crc32, Rng};
use pursamere_core::Model;

fn shipped_bytes() -> Vec<u8> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist-robust-int8.psm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Images in [0, 1] with MNIST's look at the pixel level: most pixels 0, some 1,
/// the rest in between (so the int8 quantisation sees zeros, saturation and values).
fn image(rng: &mut Rng) -> Vec<f32> {
    (0..784)
        .map(|_| match rng.next_u64() % 4 {
            0 | 1 => 0.0,
            2 => 1.0,
            _ => rng.unit(),
        })
        .collect()
}

#[test]
fn shipped_default_classification_is_pinned() {
    let bytes = shipped_bytes();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(
        model.purifier_config().iters,
        0,
        "the shipped default has the purifier off"
    );
    let mut scratch = vec![0.0; model.classify_scratch_len()];
    let mut logits = vec![0.0; 10];
    let mut rng = Rng(2026);
    let mut all = Vec::new();
    let mut labels = Vec::new();
    for _ in 0..64 {
        let x = image(&mut rng);
        labels.push(model.classify(&x, &mut logits, &mut scratch).unwrap());
        all.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
    }
    let crc = crc32(&all);
    println!("shipped classification {crc:#010x} {labels:?}");
    assert_eq!(crc, PINNED_LOGITS, "the shipped default's logits changed");
    assert_eq!(labels, PINNED_LABELS);
}

#[test]
fn shipped_default_with_the_purifier_on_is_pinned() {
    // `--iters 2 --noise-samples 1`: the float conv denoiser's purification in front
    // of the int8 classifier, unbatched and batched paths alike.
    let bytes = shipped_bytes();
    let model = Model::parse(&bytes).unwrap();
    let mut cfg = model.purifier_config();
    cfg.iters = 2;
    cfg.noise_samples = 1;
    let mut got = Vec::new();
    for batched in [false, true] {
        let len = if batched {
            model.purify_scratch_len_batched(&cfg, 1)
        } else {
            model.purify_scratch_len(&cfg)
        };
        let mut scratch = vec![0.0; len.max(model.classify_scratch_len())];
        let mut out = vec![0.0; 784];
        let mut logits = vec![0.0; 10];
        let mut all = Vec::new();
        let mut labels = Vec::new();
        let mut r = Rng(2027);
        for _ in 0..4 {
            let x = image(&mut r);
            model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
            labels.push(model.classify(&out, &mut logits, &mut scratch).unwrap());
            all.extend(out.iter().chain(&logits).flat_map(|v| v.to_le_bytes()));
        }
        got.push((crc32(&all), labels));
    }
    println!("shipped purified {:#010x} {:?}", got[0].0, got[0].1);
    assert_eq!(got[0], got[1], "batched and unbatched purification differ");
    assert_eq!(
        got[0].0, PINNED_PURIFIED,
        "the shipped default's purification bits changed"
    );
}

const PINNED_LOGITS: u32 = 0x9615a026;
const PINNED_LABELS: [usize; 64] = [
    3, 3, 5, 0, 2, 8, 3, 3, 2, 3, 3, 0, 2, 0, 2, 2, 0, 3, 3, 8, 5, 2, 2, 2, 8, 3, 3, 3, 3, 3, 3, 3,
    5, 2, 3, 8, 3, 0, 3, 2, 8, 5, 5, 3, 3, 3, 2, 0, 2, 2, 3, 3, 8, 2, 8, 3, 3, 8, 3, 2, 3, 2, 8, 3,
];
const PINNED_PURIFIED: u32 = 0xeb270990;
