//! The attack losses: values as defined, gradients against finite differences.

use pursamere_trainer::attack::loss::{loss_and_logit_grad, AttackLoss};

#[test]
fn logit_gradients_match_finite_differences() {
    let z = [0.3f32, 1.7, -0.4, 1.1, 0.9, -2.0];
    for loss in [
        AttackLoss::CrossEntropy,
        AttackLoss::Margin,
        AttackLoss::Dlr,
        AttackLoss::DlrTargeted,
    ] {
        for (y, t) in [(1, 3), (0, 4), (3, 1)] {
            let (_, g) = loss_and_logit_grad(loss, &z, y, t);
            for i in 0..z.len() {
                let h = 1e-3f32;
                let (mut zp, mut zm) = (z, z);
                zp[i] += h;
                zm[i] -= h;
                let fd = (loss_and_logit_grad(loss, &zp, y, t).0
                    - loss_and_logit_grad(loss, &zm, y, t).0)
                    / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 2e-3,
                    "{loss:?} y {y} t {t} logit {i}: analytic {} vs fd {fd}",
                    g[i]
                );
            }
        }
    }
}

#[test]
fn losses_have_their_published_values() {
    let z = [2.0f32, 5.0, 1.0, 3.0];
    // CE of label 1: log Σ e^z − z_1.
    let lse = z.iter().map(|v| v.exp()).sum::<f32>().ln();
    assert!((loss_and_logit_grad(AttackLoss::CrossEntropy, &z, 1, 0).0 - (lse - 5.0)).abs() < 1e-5);
    // Margin of label 1: 3 − 5.
    assert_eq!(loss_and_logit_grad(AttackLoss::Margin, &z, 1, 0).0, -2.0);
    // DLR of label 1: −(5 − 3) / (5 − 2) (sorted 5, 3, 2, 1).
    let dlr = loss_and_logit_grad(AttackLoss::Dlr, &z, 1, 0).0;
    assert!((dlr + 2.0 / 3.0).abs() < 1e-6, "{dlr}");
    // Targeted DLR of label 1, target 2: −(5 − 1) / (5 − (2 + 1)/2).
    let t = loss_and_logit_grad(AttackLoss::DlrTargeted, &z, 1, 2).0;
    assert!((t + 4.0 / 3.5).abs() < 1e-6, "{t}");
    // DLR is invariant to shifting and scaling the logits.
    let z2: Vec<f32> = z.iter().map(|v| 3.0 * v - 7.0).collect();
    assert!((loss_and_logit_grad(AttackLoss::Dlr, &z2, 1, 0).0 - dlr).abs() < 1e-6);
    // A label outside the logits is no panic.
    assert_eq!(loss_and_logit_grad(AttackLoss::Dlr, &z, 9, 0).0, 0.0);
}
