//! The exact gradient through the unrolled purifier against central finite
//! differences of the whole pipeline, in f64.

use dfdx::prelude::*;
use pursamere_core::{Norm, PurifierConfig, StepRule};
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::reference::Reference;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const D: usize = 16;

fn cfg(rho: f32, radius: f32, step: StepRule) -> PurifierConfig {
    PurifierConfig {
        sigma: 0.4,
        noise_samples: 2,
        iters: 3,
        eta: 0.05,
        rho,
        radius,
        norm: Norm::Linf,
        step,
        seed: 3,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    }
}

fn reference(c: PurifierConfig, residual: bool) -> Reference<f64, Cpu> {
    let net = FloatNet::mlp(&[D, 12, D], residual, 1.0, 5);
    Reference::new(&Cpu::default(), &net, D, c)
}

fn random(rng: &mut ChaCha8Rng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

#[test]
fn hessian_vector_product_matches_differences_of_gradients() {
    for residual in [false, true] {
        let r = reference(cfg(0.0, 0.3, StepRule::Gradient), residual);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = random(&mut rng, 2 * D, 0.2, 0.8);
        let u = random(&mut rng, 2 * D, -1.0, 1.0);
        let hu = r.ere_hvp(&x, &u);
        let h = 1e-6;
        let plus: Vec<f64> = x.iter().zip(&u).map(|(a, b)| a + h * b).collect();
        let minus: Vec<f64> = x.iter().zip(&u).map(|(a, b)| a - h * b).collect();
        let (gp, gm) = (
            r.ere_value_and_grad(&plus).1,
            r.ere_value_and_grad(&minus).1,
        );
        let norm = hu.iter().map(|v| v * v).sum::<f64>().sqrt();
        for i in 0..2 * D {
            let fd = (gp[i] - gm[i]) / (2.0 * h);
            assert!(
                (fd - hu[i]).abs() < 1e-5 * norm,
                "residual {residual}, [{i}]: Hu {} vs FD {fd}",
                hu[i]
            );
        }
    }
}

fn check_full_gradient(c: PurifierConfig, residual: bool) -> f64 {
    let r = reference(c, residual);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x0 = random(&mut rng, D, 0.05, 0.95);
    let weights = random(&mut rng, D, -1.0, 1.0);
    let loss = |x: &[f64]| -> f64 { r.purify(x).iter().zip(&weights).map(|(a, b)| a * b).sum() };
    let t = r.purify_trajectory(&x0);
    assert_eq!(
        t.output(),
        r.purify(&x0).as_slice(),
        "trajectory and purify differ"
    );
    let grad = r.purify_vjp(&t, &weights);
    let gnorm = grad.iter().map(|v| v * v).sum::<f64>().sqrt();
    let h = 1e-7;
    let mut worst = 0.0f64;
    for _ in 0..6 {
        let dir = random(&mut rng, D, -1.0, 1.0);
        let p: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a + h * b).collect();
        let m: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a - h * b).collect();
        let fd = (loss(&p) - loss(&m)) / (2.0 * h);
        let got: f64 = grad.iter().zip(&dir).map(|(a, b)| a * b).sum();
        let rel = (fd - got).abs() / gnorm.max(1e-12);
        worst = worst.max(rel);
        assert!(
            rel < 1e-5,
            "{c:?} residual {residual}: directional derivative {got} vs FD {fd} (rel {rel:e})"
        );
    }
    worst
}

#[test]
fn full_gradient_matches_finite_differences_plain_descent() {
    let w = check_full_gradient(cfg(0.0, 0.3, StepRule::Gradient), false);
    println!("rho = 0: worst relative error {w:e}");
}

#[test]
fn full_gradient_matches_finite_differences_with_sam() {
    let w = check_full_gradient(cfg(0.1, 0.3, StepRule::Gradient), true);
    println!("rho = 0.1: worst relative error {w:e}");
}

#[test]
fn full_gradient_includes_the_projection_ball() {
    // A tiny radius clips most coordinates: the gradient then flows through the
    // ball's dependence on the input.
    let c = PurifierConfig {
        eta: 0.5,
        ..cfg(0.0, 0.01, StepRule::Gradient)
    };
    check_full_gradient(c, false);
}

#[test]
fn sign_steps_have_identity_jacobian_inside_the_ball() {
    let r = reference(cfg(0.0, 0.3, StepRule::Sign), false);
    let x0 = vec![0.5; D];
    let t = r.purify_trajectory(&x0);
    let v: Vec<f64> = (0..D).map(|i| i as f64).collect();
    assert_eq!(r.purify_vjp(&t, &v), v);
}

#[test]
fn full_gradient_of_purify_and_classify_matches_finite_differences() {
    use pursamere_trainer::model::DeviceNet;
    let dev = Cpu::default();
    let r = reference(cfg(0.05, 0.2, StepRule::Gradient), false);
    let cls = DeviceNet::<f64, Cpu>::from_float(&FloatNet::mlp(&[D, 10, 4], false, 1.0, 9), &dev);
    let label = 2usize;
    let mut onehot = vec![0.0; 4];
    onehot[label] = 1.0;
    // Cross-entropy of the true label after purification, and its gradient with
    // respect to the purified image (dfdx autodiff through the classifier).
    let ce = |xk: &[f64]| -> (f64, Vec<f64>) {
        let x: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(xk.to_vec(), (1, D));
        let t: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(onehot.clone(), (1, 4));
        let loss = cross_entropy_with_logits_loss(cls.forward(x.leaky_trace()), t);
        let v = loss.array();
        (v, loss.backward().get(&x).as_vec())
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for _ in 0..3 {
        let x0 = random(&mut rng, D, 0.05, 0.95);
        let t = r.purify_trajectory(&x0);
        let (_, v) = ce(t.output());
        let grad = r.purify_vjp(&t, &v);
        let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        for _ in 0..4 {
            let dir = random(&mut rng, D, -1.0, 1.0);
            let h = 1e-7;
            let p: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a + h * b).collect();
            let m: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a - h * b).collect();
            let fd = (ce(&r.purify(&p)).0 - ce(&r.purify(&m)).0) / (2.0 * h);
            let got: f64 = grad.iter().zip(&dir).map(|(a, b)| a * b).sum();
            assert!(
                (fd - got).abs() < 1e-5 * gnorm.max(1e-9),
                "pipeline gradient {got} vs FD {fd}"
            );
        }
    }
}

#[test]
fn fast_path_gradient_matches_autodiff_on_deeper_networks() {
    // The trajectory computes ∇F by hand (first layer once per example, masks kept
    // for the backward pass); dfdx's autodiff of F is the independent reference.
    for residual in [false, true] {
        let net = FloatNet::mlp(&[D, 12, 10, D], residual, 1.0, 11);
        let r =
            Reference::<f64, Cpu>::new(&Cpu::default(), &net, D, cfg(0.1, 0.3, StepRule::Gradient));
        let x0: Vec<f64> = (0..3 * D).map(|i| ((i * 37 % 17) as f64) / 17.0).collect();
        let t = r.purify_trajectory(&x0);
        assert!(!t.g.is_empty());
        for (k, g) in t.g.iter().enumerate() {
            let auto = r.ere_value_and_grad(&t.xs[k]).1;
            for (a, b) in g.iter().zip(&auto) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "residual {residual}, step {k}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn fast_path_vjp_matches_the_autodiff_path() {
    for (rho, residual) in [(0.0, false), (0.1, false), (0.1, true)] {
        let c = cfg(rho, 0.3, StepRule::Gradient);
        let net = FloatNet::mlp(&[D, 12, 10, D], residual, 1.0, 13);
        let fast = Reference::<f64, Cpu>::new(&Cpu::default(), &net, D, c);
        let slow = Reference::<f64, Cpu>::new(&Cpu::default(), &net, D, c).without_fast_path();
        let x0: Vec<f64> = (0..2 * D).map(|i| ((i * 29 % 13) as f64) / 13.0).collect();
        let v: Vec<f64> = (0..2 * D).map(|i| ((i * 7 % 5) as f64) - 2.0).collect();
        let (tf, ts) = (fast.purify_trajectory(&x0), slow.purify_trajectory(&x0));
        for (a, b) in tf.output().iter().zip(ts.output()) {
            assert!((a - b).abs() < 1e-12, "rho {rho}: purified {a} vs {b}");
        }
        let (gf, gs) = (fast.purify_vjp(&tf, &v), slow.purify_vjp(&ts, &v));
        for (a, b) in gf.iter().zip(&gs) {
            assert!(
                (a - b).abs() <= 1e-10 * (1.0 + b.abs()),
                "rho {rho} residual {residual}: {a} vs {b}"
            );
        }
    }
}
