//! The dfdx host reference against the core: same F, same ∇F, same purification
//! (up to float-vs-int8 weights and summation order), and the same labels.

mod common;

use dfdx::prelude::*;
use pursamere_core::{InputShape, Model, Norm, PurifierConfig, StepRule};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{FloatModel, FloatNet};
use pursamere_trainer::reference::Reference;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg() -> PurifierConfig {
    PurifierConfig {
        sigma: 0.3,
        noise_samples: 3,
        iters: 4,
        eta: 0.02,
        rho: 0.05,
        radius: 0.25,
        norm: Norm::Linf,
        step: StepRule::Gradient,
        seed: 11,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    }
}

fn model(residual: bool) -> FloatModel {
    FloatModel {
        dataset: "synthetic".into(),
        input_shape: InputShape {
            channels: 1,
            height: 5,
            width: 5,
        },
        class_names: vec!["a".into(), "b".into(), "c".into()],
        denoiser: FloatNet::mlp(&[25, 30, 20, 25], residual, 1.0, 3),
        classifier: FloatNet::mlp(&[25, 16, 3], false, 1.0, 4),
        purifier: cfg(),
    }
}

fn check_against_core(residual: bool) {
    let fm = model(residual);
    let bytes = QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap();
    let core = Model::parse(&bytes).unwrap();
    let deq = FloatModel::from_spec(core.spec()).unwrap();
    let dev = Cpu::default();
    let reference: Reference<f64, Cpu> = Reference::new(&dev, &deq.denoiser, 25, cfg());
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let batch: Vec<f32> = (0..4 * 25).map(|_| rng.gen_range(0.0..1.0)).collect();
    let x64: Vec<f64> = batch.iter().map(|&v| f64::from(v)).collect();
    let (values, grads) = reference.ere_value_and_grad(&x64);
    let mut scratch = vec![0.0; core.scratch_len_fast()];
    for (k, x) in batch.chunks(25).enumerate() {
        let mut g = vec![0.0; 25];
        let f = core
            .ere_value_and_grad(x, &cfg(), &mut g, &mut scratch)
            .unwrap();
        assert!(
            (f64::from(f) - values[k]).abs() < 1e-5 * values[k],
            "F {f} vs {}",
            values[k]
        );
        let gref = &grads[k * 25..(k + 1) * 25];
        let norm = gref.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (a, b) in g.iter().zip(gref) {
            assert!((f64::from(*a) - b).abs() < 1e-5 * norm, "grad {a} vs {b}");
        }
    }
    // Purification: the f64 reference on dequantised weights tracks the core.
    let purified = reference.purify(&x64);
    for (k, x) in batch.chunks(25).enumerate() {
        let mut out = vec![0.0; 25];
        core.purify(x, &cfg(), &mut out, &mut scratch).unwrap();
        for (a, b) in out.iter().zip(&purified[k * 25..]) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "purified {a} vs {b}");
        }
    }
}

#[test]
fn reference_matches_core_non_residual() {
    check_against_core(false);
}

#[test]
fn reference_matches_core_residual() {
    check_against_core(true);
}

#[test]
fn reference_gradient_matches_finite_differences_in_f64() {
    let fm = model(false);
    let dev = Cpu::default();
    let r: Reference<f64, Cpu> = Reference::new(&dev, &fm.denoiser, 25, cfg());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f64> = (0..25).map(|_| rng.gen_range(0.0..1.0)).collect();
    let (_, g) = r.ere_value_and_grad(&x);
    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
    let h = 1e-6;
    for i in 0..25 {
        let mut p = x.clone();
        p[i] += h;
        let mut m = x.clone();
        m[i] -= h;
        let fd = (r.ere_value_and_grad(&p).0[0] - r.ere_value_and_grad(&m).0[0]) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-6 * norm,
            "dF/dx[{i}]: {} vs FD {fd}",
            g[i]
        );
    }
}

#[test]
fn f32_reference_with_float_weights_agrees_on_labels() {
    // Float weights (not dequantised) in f32: pixels differ slightly from the core,
    // labels agree.
    let fm = model(false);
    let bytes = QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap();
    let core = Model::parse(&bytes).unwrap();
    let dev = Cpu::default();
    let reference: Reference<f32, Cpu> = Reference::new(&dev, &fm.denoiser, 25, cfg());
    let data = common::synthetic(64, 5, 3, 1);
    let x: Vec<f32> = (0..64).flat_map(|i| data.image_f32(i).unwrap()).collect();
    let purified = reference.purify(&x);
    let cls = pursamere_trainer::model::DeviceNet::<f32, Cpu>::from_float(&fm.classifier, &dev);
    let logits = cls
        .forward(dev.tensor_from_vec(purified.clone(), (64usize, 25usize)))
        .as_vec();
    let mut scratch = vec![0.0; core.scratch_len_fast()];
    let mut agree = 0;
    for k in 0..64 {
        let mut out = vec![0.0; 25];
        let mut lg = vec![0.0; 3];
        core.purify(&x[k * 25..(k + 1) * 25], &cfg(), &mut out, &mut scratch)
            .unwrap();
        let label = core.classify(&out, &mut lg, &mut scratch).unwrap();
        let row = &logits[k * 3..k * 3 + 3];
        let want = (0..3).fold(0, |a, c| if row[c] > row[a] { c } else { a });
        agree += usize::from(label == want);
    }
    assert!(agree >= 60, "labels agree on {agree}/64");
}
