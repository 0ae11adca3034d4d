//! PGD on the undefended classifier: gradients are right, perturbations stay in the
//! ball, and a large budget breaks the classifier.

mod common;

use pursamere_trainer::attack::{
    pgd, AttackLoss, AttackNorm, ClassifierOracle, GradientOracle, PgdConfig,
};
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::{fresh_checkpoint, train, Objective, RunOptions, TrainConfig};

fn trained() -> (FloatNet, Vec<f32>, Vec<usize>) {
    let data = common::synthetic(600, 6, 3, 2);
    let (tr, val) = data.split_validation(120, 0).unwrap();
    let ck = fresh_checkpoint(
        Objective::Classifier { classes: 3 },
        TrainConfig {
            epochs: 3,
            batch_size: 32,
            lr: 3e-3,
            seed: 1,
            ..Default::default()
        },
        FloatNet::mlp(&[36, 24, 3], false, 1.0, 7),
    );
    let net = train(ck, &tr, &val, &RunOptions::default()).unwrap().net;
    let x: Vec<f32> = (0..val.len())
        .flat_map(|i| val.image_f32(i).unwrap())
        .collect();
    let y = val.labels.iter().map(|&l| usize::from(l)).collect();
    (net, x, y)
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
