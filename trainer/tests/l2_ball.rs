//! The L2 purification ball: the core stays in the ball and the box, the float
//! reference tracks the core, the model file records it (format version 2), and the
//! exact gradient through the L2 projection matches finite differences.

use dfdx::prelude::*;
use pursamere_core::{InputShape, Model, Norm, PurifierConfig, StepRule};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{FloatModel, FloatNet};
use pursamere_trainer::reference::Reference;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg(radius: f32, rho: f32) -> PurifierConfig {
    PurifierConfig {
        sigma: 0.3,
        noise_samples: 3,
        iters: 4,
        eta: 0.05,
        rho,
        radius,
        norm: Norm::L2,
        step: StepRule::Gradient,
        seed: 11,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    }
}

fn model(radius: f32) -> FloatModel {
    FloatModel {
        dataset: "synthetic".into(),
        input_shape: InputShape {
            channels: 1,
            height: 5,
            width: 5,
        },
        class_names: vec!["a".into(), "b".into(), "c".into()],
        denoiser: FloatNet::mlp(&[25, 30, 20, 25], false, 1.0, 3),
        classifier: FloatNet::mlp(&[25, 16, 3], false, 1.0, 4),
        purifier: cfg(radius, 0.05),
    }
}

#[test]
fn core_stays_in_the_l2_ball_and_the_reference_tracks_it() {
    for radius in [0.05f32, 0.3, 2.0] {
        let fm = model(radius);
        let bytes = QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap();
        // An L2 purifier needs format version 2 or later (bytes 4..6 of the prefix);
        // with the f32 noise generator of every new model, 3.
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 3);
        let core = Model::parse(&bytes).unwrap();
        assert_eq!(core.purifier_config().norm, Norm::L2);
        let deq = FloatModel::from_spec(core.spec()).unwrap();
        let reference: Reference<f64, Cpu> =
            Reference::new(&Cpu::default(), &deq.denoiser, 25, cfg(radius, 0.05));
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let batch: Vec<f32> = (0..4 * 25).map(|_| rng.gen_range(0.0..1.0)).collect();
        let x64: Vec<f64> = batch.iter().map(|&v| f64::from(v)).collect();
        let purified = reference.purify(&x64);
        let mut scratch = vec![0.0; core.scratch_len_fast()];
        let mut moved_to_edge = 0;
        for (k, x) in batch.chunks(25).enumerate() {
            let mut out = vec![0.0; 25];
            core.purify(x, &cfg(radius, 0.05), &mut out, &mut scratch)
                .unwrap();
            let n = out
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            assert!(n <= radius * (1.0 + 1e-5), "radius {radius}: moved {n}");
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            moved_to_edge += usize::from(n > 0.99 * radius);
            for (a, b) in out.iter().zip(&purified[k * 25..]) {
                assert!((f64::from(*a) - b).abs() < 1e-4, "purified {a} vs {b}");
            }
        }
        if radius < 0.1 {
            // A small ball is active: the projection is exercised.
            assert!(moved_to_edge > 0, "radius {radius}: never at the edge");
        }
    }
}

#[test]
fn exact_gradient_through_the_l2_projection_matches_finite_differences() {
    for (radius, rho) in [(0.05f32, 0.0f32), (0.05, 0.1), (5.0, 0.0)] {
        let net = FloatNet::mlp(&[16, 12, 16], false, 1.0, 5);
        let c = PurifierConfig {
            noise_samples: 2,
            iters: 3,
            ..cfg(radius, rho)
        };
        let r = Reference::<f64, Cpu>::new(&Cpu::default(), &net, 16, c);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x0: Vec<f64> = (0..16).map(|_| rng.gen_range(0.05..0.95)).collect();
        let w: Vec<f64> = (0..16).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let loss = |x: &[f64]| -> f64 { r.purify(x).iter().zip(&w).map(|(a, b)| a * b).sum() };
        let t = r.purify_trajectory(&x0);
        let moved = t
            .output()
            .iter()
            .zip(&x0)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        // The small ball is active (radial scaling on), the large one is not.
        assert_eq!(
            moved > 0.999 * f64::from(radius),
            radius < 1.0,
            "moved {moved}"
        );
        let grad = r.purify_vjp(&t, &w);
        let gnorm = grad.iter().map(|v| v * v).sum::<f64>().sqrt();
        let h = 1e-7;
        for _ in 0..6 {
            let dir: Vec<f64> = (0..16).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let p: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a + h * b).collect();
            let m: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a - h * b).collect();
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            let got: f64 = grad.iter().zip(&dir).map(|(a, b)| a * b).sum();
            let rel = (fd - got).abs() / gnorm.max(1e-12);
            assert!(
                rel < 1e-5,
                "radius {radius} rho {rho}: {got} vs FD {fd} (rel {rel:e})"
            );
        }
    }
}
