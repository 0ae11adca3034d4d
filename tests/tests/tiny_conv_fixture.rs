//! `fixtures/tiny-conv.psm` is exactly what its generator (`pursamere_tests::tiny_conv`)
//! writes, and it is the model the firmware check expects: conv layers (strides 1
//! and 2), ×2 upsampling, a residual denoiser, MNIST's input shape.
//!
//! Regenerate after an intended change:
//! `PURSAMERE_UPDATE_FIXTURES=1 cargo test -p pursamere-tests --test tiny_conv_fixture`.

use std::path::Path;

use pursamere_core::{Layer, Model};
use pursamere_tests::tiny_conv;

#[test]
fn committed_tiny_conv_fixture_is_what_the_generator_writes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(tiny_conv::PATH);
    let want = tiny_conv::bytes();
    // Deterministic: two runs give the same bytes.
    assert_eq!(want, tiny_conv::bytes());
    if std::env::var("PURSAMERE_UPDATE_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == want,
        "{} differs from its generator's output ({} vs {} bytes); if the change is intended, \
         regenerate it with PURSAMERE_UPDATE_FIXTURES=1 cargo test -p pursamere-tests --test tiny_conv_fixture",
        path.display(),
        got.len(),
        want.len()
    );
}

#[test]
fn tiny_conv_fixture_is_a_small_conv_model_for_the_firmware() {
    let bytes = tiny_conv::bytes();
    let model = Model::parse(&bytes).unwrap();
    let spec = model.spec();
    assert_eq!(model.input_len(), 784);
    assert_eq!(model.num_classes(), 10);
    assert!(spec.denoiser.residual);
    let kinds = |layers: &[Layer<'_>]| -> Vec<&'static str> {
        layers
            .iter()
            .map(|l| match l {
                Layer::Dense(_) => "dense",
                Layer::Relu => "relu",
                Layer::Conv2d(c) if c.stride == 2 => "conv/2",
                Layer::Conv2d(_) => "conv",
                Layer::Upsample2x(_) => "up",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(
        kinds(&spec.denoiser.layers),
        ["conv/2", "relu", "conv", "up"]
    );
    assert_eq!(
        kinds(&spec.classifier.layers),
        ["conv/2", "relu", "conv/2", "relu", "dense"]
    );
    assert_eq!(model.purifier_config(), tiny_conv::PURIFIER);
    // Small enough for the firmware's budget: a few KB of flash, and a scratch well
    // under the 64 KiB of RAM.
    assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
    let scratch = model
        .purify_scratch_len(&model.purifier_config())
        .max(model.classify_scratch_len());
    assert!(4 * scratch < 40 * 1024, "scratch {scratch} floats");

    // The purifier moves the input (the weights are random but not degenerate) and
    // stays in the ball.
    let x: Vec<f32> = (0..784).map(|i| ((i * 37) % 256) as f32 / 255.0).collect();
    let cfg = model.purifier_config();
    let mut out = vec![0.0; 784];
    let mut s = vec![0.0; model.scratch_len_fast()];
    model.purify(&x, &cfg, &mut out, &mut s).unwrap();
    assert_ne!(out, x);
    assert!(out
        .iter()
        .zip(&x)
        .all(|(o, x)| (o - x).abs() <= cfg.radius + 1e-6));
    println!(
        "tiny-conv: {} bytes, scratch {} floats",
        bytes.len(),
        scratch
    );
}
