//! The whole pipeline on a model built with the core's writer from a convolutional
//! denoiser (stride-2 downsampling, ×2 upsampling, residual) and a convolutional
//! classifier (conv → conv stride 2 → 1×1 conv → flatten → dense).

mod common;

use common::{denoise_f64, layer_forward_f64, OwnedAnyModel, Rng};
use pursamere_core::{Model, PurifierConfig, StepRule};

const GARBAGE: [f32; 4] = [f32::NAN, 1.0e30, -7.5, f32::INFINITY];

fn dirty(n: usize) -> Vec<f32> {
    (0..n).map(|i| GARBAGE[i % 4]).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn images(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| (0..d).map(|_| rng.unit()).collect())
        .collect()
}

#[test]
fn conv_model_purifies_and_classifies() {
    let owned = OwnedAnyModel::small_conv(61);
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(model.input_len(), 64);
    assert_eq!(model.num_classes(), 10);
    let cfg = PurifierConfig {
        iters: 4,
        noise_samples: 3,
        ..model.purifier_config()
    };
    let d = model.input_len();
    for (k, x) in images(6, d, 9).into_iter().enumerate() {
        // Minimum scratch (one noise sample at a time) and the fastest batch give
        // the same bits; scratch contents on entry do not matter.
        let mut runs = Vec::new();
        for batch in 1..=cfg.noise_samples as usize {
            let mut out = dirty(d);
            let mut scratch = dirty(model.purify_scratch_len_batched(&cfg, batch));
            model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
            runs.push(bits(&out));
            for (&o, &x0) in out.iter().zip(&x) {
                assert!((0.0..=1.0).contains(&o));
                assert!((o - x0).abs() <= cfg.radius + 1e-6);
            }
        }
        assert!(runs.windows(2).all(|w| w[0] == w[1]), "image {k}");
        let out: Vec<f32> = runs[0].iter().map(|&b| f32::from_bits(b)).collect();
        assert_ne!(out, x, "purification moved nothing");

        // Classification against the f64 reference.
        let mut logits = dirty(10);
        let mut scratch = dirty(model.scratch_len());
        let label = model.classify(&out, &mut logits, &mut scratch).unwrap();
        let mut a: Vec<f64> = out.iter().map(|&v| f64::from(v)).collect();
        for l in &model.spec().classifier.layers {
            a = layer_forward_f64(l, &a);
        }
        for (g, w) in logits.iter().zip(&a) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
        assert_eq!(
            label,
            (0..10).fold(0, |b, i| if a[i] > a[b] { i } else { b })
        );

        // One-shot denoising against the f64 reference.
        let mut den = dirty(d);
        model.denoise(&x, &mut den, &mut scratch).unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let want = denoise_f64(&model.spec().denoiser, &x64);
        for (g, w) in den.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()));
        }
    }
}

#[test]
fn conv_model_scratch_lengths_are_minimal_and_sufficient() {
    let owned = OwnedAnyModel::small_conv(62);
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    let cfg = model.purifier_config();
    let d = model.input_len();
    let x = vec![0.5; d];
    let mut out = vec![0.0; d];
    let need = model.purify_scratch_len(&cfg);
    assert!(model.scratch_len() >= need);
    let mut short = vec![0.0; need - 1];
    assert!(model.purify(&x, &cfg, &mut out, &mut short).is_err());
    let mut exact = vec![0.0; need];
    model.purify(&x, &cfg, &mut out, &mut exact).unwrap();
    let mut logits = vec![0.0; 10];
    let mut short = vec![0.0; model.classify_scratch_len() - 1];
    assert!(model.classify(&x, &mut logits, &mut short).is_err());
    // Activations: input, then every layer's output (8×8 → 4×8×8 → relu →
    // 6×4×4 → relu → 6×8×8 → 1×8×8).
    assert_eq!(
        model.denoise_scratch_len(),
        64 + 256 + 256 + 96 + 96 + 384 + 64
    );
    // The conv layers never use the dense row buffer: the fast scratch only adds
    // the per-sample buffers.
    let m = cfg.noise_samples as usize;
    assert_eq!(
        model.purify_scratch_len_batched(&cfg, m) - model.purify_scratch_len(&cfg),
        (m - 1) * (d + model.denoise_scratch_len() + 2 * 384)
    );
}

#[test]
fn sign_steps_and_plain_descent_run_on_conv_models() {
    let owned = OwnedAnyModel::small_conv(63);
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    let d = model.input_len();
    let x = &images(1, d, 3)[0];
    for (step, rho) in [(StepRule::Sign, 0.0), (StepRule::Gradient, 0.0)] {
        let cfg = PurifierConfig {
            step,
            rho,
            iters: 3,
            eta: 0.01,
            ..model.purifier_config()
        };
        let mut a = vec![0.0; d];
        let mut b = vec![0.0; d];
        model
            .purify(x, &cfg, &mut a, &mut dirty(model.scratch_len_fast()))
            .unwrap();
        model
            .purify(
                x,
                &cfg,
                &mut b,
                &mut vec![0.0; model.purify_scratch_len(&cfg)],
            )
            .unwrap();
        assert_eq!(bits(&a), bits(&b));
    }
}
