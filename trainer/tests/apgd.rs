//! APGD: at least as strong as PGD, stays in the ball, and the targeted DLR loss
//! reaches its target.

use pursamere_trainer::attack::{
    apgd, pgd, ApgdConfig, AttackLoss, AttackNorm, ClassifierOracle, GradientOracle, PgdConfig,
};
use pursamere_trainer::model::{FloatLayer, FloatNet};

fn correct(o: &ClassifierOracle, x: &[f32], y: &[usize]) -> usize {
    o.predict(x).iter().zip(y).filter(|(a, b)| a == b).count()
}

/// The shipped MNIST model's classifier and the shipped sample of test images.
fn shipped() -> (ClassifierOracle, Vec<f32>, Vec<usize>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let bytes = std::fs::read(root.join("mnist.psm")).unwrap();
    let model = pursamere_core::Model::parse(&bytes).unwrap();
    let fm = pursamere_trainer::model::FloatModel::from_spec(model.spec()).unwrap();
    let data = pursamere_trainer::data::load_mnist_dir(
        &root.join("mnist-sample"),
        pursamere_trainer::data::Split::Test,
    )
    .unwrap();
    let n = 128;
    let x: Vec<f32> = (0..n).flat_map(|i| data.image_f32(i).unwrap()).collect();
    let y = data.labels[..n].iter().map(|&l| usize::from(l)).collect();
    (ClassifierOracle::new(&fm.classifier, 784), x, y)
}

#[test]
fn apgd_is_at_least_as_strong_as_pgd_on_the_undefended_classifier() {
    let (o, x, y) = shipped();
    let clean = correct(&o, &x, &y);
    for (norm, eps) in [(AttackNorm::Linf, 0.04), (AttackNorm::L2, 0.6)] {
        let pc = PgdConfig {
            norm,
            early_stop: true,
            step_size: 2.5 * eps / 100.0,
            ..PgdConfig::linf(eps, 100)
        };
        let r_pgd = correct(&o, &pgd(&o, &x, &y, &pc), &y);
        // The same budget: 100 gradient steps each, one start.
        let ac = ApgdConfig::ce(norm, eps);
        let r = apgd(&o, &x, &y, &ac);
        let r_apgd = correct(&o, &r.adv, &y);
        let dlr = apgd(
            &o,
            &x,
            &y,
            &ApgdConfig {
                loss: AttackLoss::Dlr,
                ..ac
            },
        );
        let r_dlr = correct(&o, &dlr.adv, &y);
        eprintln!("{norm:?} {eps}: clean {clean}, PGD {r_pgd}, APGD-CE {r_apgd}, APGD-DLR {r_dlr}");
        assert!(r_pgd + 10 < clean, "{norm:?}: the budget must matter");
        assert!(r_apgd <= r_pgd, "{norm:?}: APGD {r_apgd} vs PGD {r_pgd}");
        // DLR is built for robust models (scale-invariant); here it must still work.
        assert!(r_dlr + 10 < clean, "{norm:?}: APGD-DLR {r_dlr} of {clean}");
        // The fooled flags agree with the oracle, and every point is in the ball.
        let pred = o.predict(&r.adv);
        for (k, (&f, (&p, &l))) in r.fooled.iter().zip(pred.iter().zip(&y)).enumerate() {
            assert_eq!(f, p != l, "example {k}");
            let (a, b) = (&r.adv[k * 784..(k + 1) * 784], &x[k * 784..(k + 1) * 784]);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
            match norm {
                AttackNorm::Linf => {
                    assert!(a.iter().zip(b).all(|(p, q)| (p - q).abs() <= eps + 1e-6))
                }
                AttackNorm::L2 => {
                    let n = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum::<f32>();
                    assert!(n.sqrt() <= eps + 1e-4, "{}", n.sqrt());
                }
            }
        }
    }
}

/// `z = W x + b` on two inputs: class 0 (the label) is a constant 1.0, class 1 a
/// constant 0.9 (the runner-up, unreachable), class 2 = 2·x₀ and class 3 =
/// 2·x₁ − 1.5 (never above 0.5).
fn constructed() -> FloatNet {
    FloatNet {
        residual: false,
        layers: vec![FloatLayer::Dense {
            inputs: 2,
            outputs: 4,
            weights: vec![0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 2.0],
            bias: vec![1.0, 0.9, 0.0, -1.5],
        }],
    }
}

#[test]
fn targeted_dlr_reaches_the_target_class() {
    let o = ClassifierOracle::new(&constructed(), 2);
    let x = [0.3f32, 0.3];
    // Clean logits 1.0, 0.9, 0.6, −0.9: rank 3 is class 2.
    assert_eq!(o.predict(&x), vec![0]);
    let cfg = ApgdConfig {
        loss: AttackLoss::DlrTargeted,
        target_rank: 3,
        steps: 20,
        ..ApgdConfig::ce(AttackNorm::Linf, 0.5)
    };
    let r = apgd(&o, &x, &[0], &cfg);
    assert!(r.fooled[0]);
    assert_eq!(o.predict(&r.adv), vec![2], "{:?}", r.adv);
    // The targeted loss is what rose: z_2 − z_0 > 0 at the result.
    let out = o.evaluate_targeted(&r.adv, &[0], &[2], AttackLoss::DlrTargeted);
    assert!(out.logits[2] > out.logits[0]);
    // Rank 4 (class 3) cannot be reached within the ball: not fooled, in the box.
    let r = apgd(
        &o,
        &x,
        &[0],
        &ApgdConfig {
            target_rank: 4,
            ..cfg
        },
    );
    assert!(r.adv.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(o.predict(&r.adv)[0] == 0, !r.fooled[0]);
}
