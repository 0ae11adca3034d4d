//! The Square attack: stays in the ball, and is as strong as PGD on the
//! undefended classifier and on a smooth toy defence at a fixed budget.

mod common;

use pursamere_trainer::attack::{
    pgd, square, AttackNorm, ClassifierOracle, GradientOracle, PgdConfig, PurifiedOracle,
    PurifierGradient, SquareConfig,
};

fn cfg(norm: AttackNorm, eps: f32, queries: usize) -> SquareConfig {
    SquareConfig {
        norm,
        eps,
        queries,
        p_init: 0.8,
        seed: 3,
        channels: 1,
        height: 6,
        width: 6,
    }
}

fn in_ball(norm: AttackNorm, eps: f32, adv: &[f32], x: &[f32]) {
    for (a, b) in adv.chunks(36).zip(x.chunks(36)) {
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        match norm {
            AttackNorm::Linf => assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() <= eps + 1e-6)),
            AttackNorm::L2 => {
                let n = a
                    .iter()
                    .zip(b)
                    .map(|(p, q)| (p - q) * (p - q))
                    .sum::<f32>()
                    .sqrt();
                assert!(n <= eps + 1e-4, "L2 {n} > {eps}");
            }
        }
    }
}

fn robust(o: &dyn GradientOracle, adv: &[f32], y: &[usize]) -> usize {
    let z = o.logits(adv);
    z.chunks(3)
        .zip(y)
        .filter(|(zr, &l)| pursamere_trainer::attack::argmax(zr) == l)
        .count()
}

#[test]
fn square_stays_in_the_ball_and_matches_pgd_on_the_undefended_classifier() {
    let (net, x, y) = common::trained_classifier();
    let o = ClassifierOracle::new(&net, 36);
    let (x, y) = (&x[..36 * 60], &y[..60]);
    for (norm, eps) in [(AttackNorm::Linf, 0.3), (AttackNorm::L2, 1.5)] {
        let c = cfg(norm, eps, 300);
        let r = square(|b| o.logits(b), x, y, &c);
        in_ball(norm, eps, &r.adv, x);
        assert!(r.queries.iter().all(|&q| (1..=300).contains(&q)));
        // The fooled flags are the model's own verdict on the returned images.
        let pred = o.predict(&r.adv);
        for (k, &f) in r.fooled.iter().enumerate() {
            assert_eq!(f, pred[k] != y[k]);
        }
        let pc = PgdConfig {
            norm,
            step_size: 2.5 * eps / 20.0,
            ..PgdConfig::linf(eps, 20)
        };
        let (r_sq, r_pgd) = (robust(&o, &r.adv, y), robust(&o, &pgd(&o, x, y, &pc), y));
        eprintln!("{norm:?} {eps}: Square {r_sq}, PGD-20 {r_pgd} robust of 60");
        assert!(r_pgd < 55, "{norm:?}: the budget must matter ({r_pgd})");
        assert!(r_sq <= r_pgd + 1, "{norm:?}: Square {r_sq} vs PGD {r_pgd}");
    }
    // Zero budget: never fooled, images unchanged.
    let r = square(
        |b| o.logits(b),
        &x[..72],
        &y[..2],
        &cfg(AttackNorm::Linf, 0.0, 20),
    );
    assert!(r.fooled.iter().all(|f| !f) && r.adv == x[..72]);
}

#[test]
fn square_matches_pgd_on_a_smooth_toy_defence() {
    let (net, x, y) = common::trained_classifier();
    let (x, y) = (&x[..36 * 40], &y[..40]);
    let cfg_p = pursamere_core::PurifierConfig {
        sigma: 0.5,
        noise_samples: 2,
        iters: 3,
        eta: 0.1,
        rho: 0.0,
        radius: 0.1,
        norm: pursamere_core::Norm::Linf,
        step: pursamere_core::StepRule::Gradient,
        seed: 0,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    };
    let den = pursamere_trainer::model::FloatNet::mlp(&[36, 24, 36], false, 0.5, 9);
    let o = PurifiedOracle::new(&den, &net, 36, cfg_p, PurifierGradient::Full);
    let eps = 0.3;
    let r = square(|b| o.logits(b), x, y, &cfg(AttackNorm::Linf, eps, 300));
    in_ball(AttackNorm::Linf, eps, &r.adv, x);
    let pc = PgdConfig {
        early_stop: true,
        ..PgdConfig::linf(eps, 20)
    };
    let (r_sq, r_pgd) = (robust(&o, &r.adv, y), robust(&o, &pgd(&o, x, y, &pc), y));
    eprintln!("toy defence: Square {r_sq}, PGD-20 {r_pgd} robust of 40");
    assert!(r_sq <= r_pgd + 1, "Square {r_sq} vs PGD {r_pgd}");
}
