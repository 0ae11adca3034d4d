//! PGD on the undefended classifier: gradients are right, perturbations stay in the
//! ball, and a large budget breaks the classifier. The one-shot-denoise oracle's
//! exact gradient is right.

mod common;

use pursamere_trainer::attack::{
    pgd, AttackLoss, AttackNorm, ClassifierOracle, DenoisedOracle, GradientOracle, PgdConfig,
    PurifierGradient,
};
use pursamere_trainer::model::FloatNet;

fn trained() -> (FloatNet, Vec<f32>, Vec<usize>) {
    common::trained_classifier()
}

/// A small purifier (K 3, M 2) and an untrained 36-24-36 denoiser.
fn small_purifier() -> (pursamere_core::PurifierConfig, FloatNet) {
    use pursamere_core::{Norm, PurifierConfig, StepRule};
    let cfg = PurifierConfig {
        sigma: 0.5,
        noise_samples: 2,
        iters: 3,
        eta: 0.1,
        rho: 0.0,
        radius: 0.3,
        norm: Norm::Linf,
        step: StepRule::Gradient,
        seed: 0,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    };
    (cfg, FloatNet::mlp(&[36, 24, 36], false, 1.0, 9))
}

#[test]
fn oracle_gradients_match_finite_differences() {
    let (net, x, y) = trained();
    let o = ClassifierOracle::new(&net, 36);
    for loss in [AttackLoss::CrossEntropy, AttackLoss::Margin] {
        let x1 = &x[..36];
        let out = o.evaluate(x1, &y[..1], loss);
        let h = 1e-2f32;
        for i in [0, 7, 20, 35] {
            let mut p = x1.to_vec();
            p[i] += h;
            let mut m = x1.to_vec();
            m[i] -= h;
            let fd = (o.evaluate(&p, &y[..1], loss).loss[0]
                - o.evaluate(&m, &y[..1], loss).loss[0])
                / (2.0 * h);
            let g = out.grad[i];
            assert!(
                (fd - g).abs() < 2e-2 * (1.0 + g.abs()),
                "{loss:?} d/dx[{i}]: grad {g}, FD {fd}"
            );
        }
    }
}

#[test]
fn pgd_stays_in_the_ball_and_breaks_the_undefended_classifier() {
    let (net, x, y) = trained();
    let o = ClassifierOracle::new(&net, 36);
    let clean = o.predict(&x).iter().zip(&y).filter(|(a, b)| a == b).count();
    assert!(clean as f32 > 0.9 * y.len() as f32);
    for norm in [AttackNorm::Linf, AttackNorm::L2] {
        let eps = if norm == AttackNorm::Linf { 0.5 } else { 3.0 };
        let cfg = PgdConfig {
            norm,
            eps,
            step_size: eps / 4.0,
            ..PgdConfig::linf(eps, 20)
        };
        let adv = pgd(&o, &x, &y, &cfg);
        for (a, b) in adv.chunks(36).zip(x.chunks(36)) {
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
            let size = match norm {
                AttackNorm::Linf => a
                    .iter()
                    .zip(b)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max),
                AttackNorm::L2 => a
                    .iter()
                    .zip(b)
                    .map(|(p, q)| (p - q) * (p - q))
                    .sum::<f32>()
                    .sqrt(),
            };
            assert!(size <= eps * 1.0001, "{norm:?} perturbation {size} > {eps}");
        }
        let robust = o
            .predict(&adv)
            .iter()
            .zip(&y)
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            robust * 20 <= y.len(),
            "{norm:?}: {robust}/{} still correct",
            y.len()
        );
    }
    // A zero budget changes nothing.
    let adv = pgd(&o, &x, &y, &PgdConfig::linf(0.0, 5));
    assert_eq!(adv, x);
}

#[test]
fn bpda_attacks_the_purified_classifier() {
    use pursamere_trainer::attack::{PurifiedOracle, PurifierGradient};
    let (net, x, y) = trained();
    let (cfg, den) = small_purifier();
    let o = PurifiedOracle::new(&den, &net, 36, cfg, PurifierGradient::Bpda);
    // The BPDA gradient is the classifier's gradient at the purified point.
    let reference = pursamere_trainer::reference::Reference::<f32, dfdx::prelude::Cpu>::new(
        &dfdx::prelude::Cpu::default(),
        &den,
        36,
        cfg,
    );
    let purified = reference.purify(&x[..36]);
    let direct =
        ClassifierOracle::new(&net, 36).evaluate(&purified, &y[..1], AttackLoss::CrossEntropy);
    let bpda = o.evaluate(&x[..36], &y[..1], AttackLoss::CrossEntropy);
    assert_eq!(bpda.grad, direct.grad);
    assert_eq!(bpda.loss, direct.loss);
    // A large budget breaks it (the purifier here is untrained).
    let adv = pgd(&o, &x[..36 * 20], &y[..20], &PgdConfig::linf(0.5, 10));
    let out = o.evaluate(&adv, &y[..20], AttackLoss::CrossEntropy);
    let robust = out.pred.iter().zip(&y).filter(|(a, b)| a == b).count();
    assert!(robust <= 4, "{robust}/20 survive BPDA at eps 0.5");
}

#[test]
fn full_gradient_attack_is_at_least_as_strong_as_bpda_here() {
    use pursamere_trainer::attack::{PurifiedOracle, PurifierGradient};
    let (net, x, y) = trained();
    let (cfg, den) = small_purifier();
    let (xs, ys) = (&x[..36 * 30], &y[..30]);
    // Summed over six noise seeds: with 30 images and an untrained purifier, one
    // seed alone may leave the attack nothing to find at this budget.
    let (mut clean, mut r_full, mut r_bpda) = (0, 0, 0);
    for seed in 0..6 {
        let cfg = pursamere_core::PurifierConfig { seed, ..cfg };
        let full = PurifiedOracle::new(&den, &net, 36, cfg, PurifierGradient::Full);
        let bpda = PurifiedOracle::new(&den, &net, 36, cfg, PurifierGradient::Bpda);
        let correct = |adv: &[f32]| {
            let pred = bpda.evaluate(adv, ys, AttackLoss::CrossEntropy).pred;
            pred.iter().zip(ys).filter(|(a, b)| a == b).count()
        };
        clean += correct(xs);
        r_full += correct(&pgd(&full, xs, ys, &PgdConfig::linf(0.2, 20)));
        r_bpda += correct(&pgd(&bpda, xs, ys, &PgdConfig::linf(0.2, 20)));
    }
    assert!(
        r_full + 5 < clean,
        "the full-gradient attack must find something: {r_full}/{clean}"
    );
    assert!(r_full <= r_bpda + 4, "full {r_full} vs BPDA {r_bpda}");
}

#[test]
fn cosine_schedule_decays_from_the_peak_to_zero() {
    use pursamere_trainer::attack::StepSchedule;
    let s = StepSchedule::Cosine;
    assert_eq!(s.step_size(0.4, 0, 10), 0.4);
    assert!((s.step_size(0.4, 5, 10) - 0.2).abs() < 1e-6);
    let steps: Vec<f32> = (0..10).map(|t| s.step_size(0.4, t, 10)).collect();
    assert!(steps.windows(2).all(|w| w[1] < w[0]), "{steps:?}");
    assert!(steps[9] > 0.0 && steps[9] < 0.01);
    assert_eq!(StepSchedule::Constant.step_size(0.4, 7, 10), 0.4);
}

#[test]
fn early_stop_keeps_the_first_fooling_iterate_and_spends_no_more_queries() {
    use pursamere_trainer::attack::StepSchedule;
    use std::cell::Cell;
    // Counts the rows it is asked about.
    struct Counting<'a>(&'a ClassifierOracle, Cell<usize>);
    impl GradientOracle for Counting<'_> {
        fn input_len(&self) -> usize {
            36
        }
        fn logits(&self, x: &[f32]) -> Vec<f32> {
            self.0.logits(x)
        }
        fn logits_vjp(
            &self,
            x: &[f32],
            weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
        ) -> (Vec<f32>, Vec<f32>) {
            self.1.set(self.1.get() + x.len() / 36);
            self.0.logits_vjp(x, weights)
        }
    }
    let (net, x, y) = trained();
    let o = ClassifierOracle::new(&net, 36);
    let (x, y) = (&x[..36 * 30], &y[..30]);
    for schedule in [StepSchedule::Constant, StepSchedule::Cosine] {
        let base = PgdConfig {
            schedule,
            step_size: 0.1,
            ..PgdConfig::linf(0.5, 20)
        };
        let full = Counting(&o, Cell::new(0));
        let adv_full = pgd(&full, x, y, &base);
        let stop = Counting(&o, Cell::new(0));
        let adv_stop = pgd(
            &stop,
            x,
            y,
            &PgdConfig {
                early_stop: true,
                ..base
            },
        );
        // Every example fooled without early stopping is fooled with it, at a
        // fraction of the oracle rows.
        let wrong = |adv: &[f32]| -> Vec<bool> {
            o.predict(adv).iter().zip(y).map(|(p, l)| p != l).collect()
        };
        let (wf, ws) = (wrong(&adv_full), wrong(&adv_stop));
        for (k, (&f, &s)) in wf.iter().zip(&ws).enumerate() {
            assert!(
                !f || s,
                "{schedule:?}: example {k} fooled only without early stop"
            );
        }
        assert!(wf.iter().filter(|&&w| w).count() >= 25);
        assert_eq!(full.1.get(), 30 * 21);
        assert!(
            stop.1.get() * 2 < full.1.get(),
            "{schedule:?}: early stop asked about {} rows, full run {}",
            stop.1.get(),
            full.1.get()
        );
    }
}

/// The exact one-shot-denoise oracle on a residual denoiser: its logits are the
/// classifier's at `D(x) = x + r(x)` (what BPDA and the core compute), and its
/// gradient agrees with central finite differences, skip path included.
#[test]
fn exact_denoise_gradient_matches_finite_differences_with_a_residual_denoiser() {
    let d = 12;
    let denoiser = FloatNet::mlp(&[d, 16, d], true, 1.0, 3);
    let classifier = FloatNet::mlp(&[d, 8, 4], false, 1.0, 4);
    let exact = DenoisedOracle::new(&denoiser, &classifier, d, PurifierGradient::Full);
    let bpda = DenoisedOracle::new(&denoiser, &classifier, d, PurifierGradient::Bpda);
    let x: Vec<f32> = (0..2 * d).map(|i| ((i * 7 % 11) as f32) / 11.0).collect();
    assert_eq!(exact.logits(&x), bpda.logits(&x));
    let w = [0.3f32, -1.0, 0.5, 0.7, -0.2, 0.9, -0.4, 0.1];
    let (_, grad) = exact.logits_vjp(&x, &mut |_| w.to_vec());
    let (_, bpda_grad) = bpda.logits_vjp(&x, &mut |_| w.to_vec());
    let f = |x: &[f32]| -> f64 {
        exact
            .logits(x)
            .iter()
            .zip(w)
            .map(|(&z, w)| f64::from(z) * f64::from(w))
            .sum()
    };
    let h = 1e-2f32;
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        let (mut up, mut down) = (x.clone(), x.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (f(&up) - f(&down)) / (2.0 * f64::from(h));
        worst = worst.max((fd - f64::from(grad[i])).abs());
    }
    assert!(worst < 2e-3, "largest finite-difference gap {worst}");
    // The denoiser's Jacobian is not the identity, so BPDA's gradient differs.
    let gap: f32 = grad
        .iter()
        .zip(&bpda_grad)
        .map(|(a, b)| (a - b).abs())
        .sum();
    assert!(gap > 1e-2, "exact and BPDA gradients coincide ({gap})");
}
