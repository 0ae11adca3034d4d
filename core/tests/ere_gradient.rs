//! `F` and `∇F` from the core against an independent f64 reference and central
//! finite differences of it.
//!
//! Tolerance reached: the core's f32 gradient matches f64 central differences
//! (step 1e-6) to a relative error (|error| / ||∇F||₂) below 1e-5 along every
//! random direction and for every coordinate (measured worst case about 1.3e-7;
//! run with `--nocapture` to see it). A sign error or a swapped index
//! gives relative errors of order 1.

mod common;

use common::{ere_f64, Op, OwnedAnyModel, OwnedModel, Rng};
use pursamere_core::Model;

fn check_model(owned: &OwnedModel, seed: u64) -> f64 {
    check_file(&owned.bytes(), seed)
}

fn check_file(bytes: &[u8], seed: u64) -> f64 {
    let model = Model::parse(bytes).unwrap();
    let cfg = model.purifier_config();
    let spec = model.spec();
    let d = model.input_len();
    let mut rng = Rng(seed);
    let mut worst = 0.0f64;
    for _ in 0..3 {
        let x: Vec<f32> = (0..d).map(|_| rng.unit()).collect();
        let mut grad = vec![f32::NAN; d];
        let mut scratch = vec![1.0e30f32; model.ere_scratch_len(&cfg)];
        let value = model
            .ere_value_and_grad(&x, &cfg, &mut grad, &mut scratch)
            .unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let ref_value = ere_f64(spec, &cfg, &x64);
        assert!(
            (f64::from(value) - ref_value).abs() <= 1e-5 * ref_value.abs().max(1e-3),
            "F: core {value}, reference {ref_value}"
        );

        let h = 1e-6;
        let fd = |dir: &[f64]| {
            let plus: Vec<f64> = x64.iter().zip(dir).map(|(a, b)| a + h * b).collect();
            let minus: Vec<f64> = x64.iter().zip(dir).map(|(a, b)| a - h * b).collect();
            (ere_f64(spec, &cfg, &plus) - ere_f64(spec, &cfg, &minus)) / (2.0 * h)
        };
        let gnorm = grad
            .iter()
            .map(|&g| f64::from(g).powi(2))
            .sum::<f64>()
            .sqrt();
        // Random directions (unit norm).
        for _ in 0..4 {
            let mut dir: Vec<f64> = (0..d).map(|_| f64::from(rng.sym(1.0))).collect();
            let n = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
            dir.iter_mut().for_each(|v| *v /= n);
            let want = fd(&dir);
            let got: f64 = grad.iter().zip(&dir).map(|(&g, &v)| f64::from(g) * v).sum();
            let rel = (got - want).abs() / gnorm;
            worst = worst.max(rel);
            assert!(
                rel < 1e-5,
                "directional derivative: core {got}, FD {want}, rel {rel:e}"
            );
        }
        // Every coordinate.
        for i in 0..d {
            let mut e = vec![0.0; d];
            e[i] = 1.0;
            let want = fd(&e);
            let rel = (f64::from(grad[i]) - want).abs() / gnorm;
            worst = worst.max(rel);
            assert!(
                rel < 1e-5,
                "dF/dx[{i}]: core {}, FD {want}, rel {rel:e}",
                grad[i]
            );
        }
    }
    worst
}

#[test]
fn ere_gradient_matches_central_differences_residual() {
    let owned = OwnedModel::random(11, (4, 5), &[16, 12], true, &[8], 3);
    let worst = check_model(&owned, 1);
    println!("residual denoiser: worst relative gradient error {worst:e}");
}

#[test]
fn ere_gradient_matches_central_differences_plain() {
    let mut owned = OwnedModel::random(12, (3, 6), &[24], false, &[6], 4);
    owned.cfg.noise_samples = 3;
    owned.cfg.sigma = 0.5;
    let worst = check_model(&owned, 2);
    println!("non-residual denoiser: worst relative gradient error {worst:e}");
}

#[test]
fn ere_gradient_matches_central_differences_conv_denoiser() {
    // Residual conv denoiser that downsamples (stride 2) and upsamples back.
    let owned = OwnedAnyModel::build(
        14,
        (1, 6, 6),
        &[
            Op::Conv(3, 3, 1, 1),
            Op::Relu,
            Op::Conv(4, 3, 2, 1),
            Op::Relu,
            Op::Up,
            Op::Conv(1, 3, 1, 1),
        ],
        true,
        &[Op::Conv(2, 3, 2, 1), Op::Relu, Op::Dense(3)],
    );
    let worst = check_file(&owned.bytes(), 3);
    println!("residual conv denoiser: worst relative gradient error {worst:e}");
}

#[test]
fn ere_gradient_matches_central_differences_conv_denoiser_two_channels() {
    // Non-residual, two input channels, odd sizes, a 1×1 and a 5×5 kernel, a
    // stride-2 layer on an odd size followed by a dense bottleneck back to the
    // image (flatten), in a plain (non-residual) denoiser.
    let mut owned = OwnedAnyModel::build(
        15,
        (2, 5, 3),
        &[
            Op::Conv(3, 5, 1, 2),
            Op::Relu,
            Op::Conv(2, 1, 1, 0),
            Op::Relu,
            Op::Conv(4, 3, 2, 1),
            Op::Relu,
            Op::Dense(30),
        ],
        false,
        &[Op::Conv(2, 3, 1, 0), Op::Relu, Op::Dense(4)],
    );
    owned.cfg.noise_samples = 3;
    owned.cfg.sigma = 0.5;
    let worst = check_file(&owned.bytes(), 4);
    println!("plain two-channel conv denoiser: worst relative gradient error {worst:e}");
}

#[test]
fn ere_of_identity_like_denoiser_is_noise_energy() {
    // A residual denoiser whose net outputs ~0 gives D(y) ≈ y, so
    // F ≈ σ² · mean_m ||ε_m||²: a check of the noise wiring independent of the
    // reference implementation.
    let mut owned = OwnedModel::random(13, (4, 4), &[8], true, &[4], 2);
    for dense in &mut owned.den.dense {
        dense.bias.iter_mut().for_each(|b| *b = 0);
        dense.weights.iter_mut().for_each(|w| *w = 0);
    }
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    let cfg = model.purifier_config();
    let d = model.input_len();
    let mut grad = vec![0.0; d];
    let mut scratch = vec![0.0; model.ere_scratch_len(&cfg)];
    let x = vec![0.5; d];
    let f = model
        .ere_value_and_grad(&x, &cfg, &mut grad, &mut scratch)
        .unwrap();
    let mut energy = 0.0f64;
    for m in 0..cfg.noise_samples {
        for i in 0..d as u32 {
            let e = f64::from(cfg.noise.sample(cfg.seed, m, i) * cfg.sigma);
            energy += e * e;
        }
    }
    energy /= f64::from(cfg.noise_samples);
    assert!(
        (f64::from(f) - energy).abs() < 1e-5 * energy,
        "{f} vs {energy}"
    );
    assert!(
        grad.iter().all(|&g| g == 0.0),
        "zero network must give a zero gradient"
    );
}
