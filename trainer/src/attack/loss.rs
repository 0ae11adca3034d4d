//! Attack objectives on the logits, with their gradients written out by hand.
//!
//! Every attack maximises one of these per example. The oracles only supply logits
//! and a vector–Jacobian product, so a new loss is added here once and works
//! through every gradient mode (undefended, BPDA, exact unrolled purifier).

use serde::{Deserialize, Serialize};

/// Attack objective (maximised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttackLoss {
    /// Softmax cross-entropy of the true label.
    CrossEntropy,
    /// Carlini–Wagner margin `max_{j≠y} z_j − z_y`.
    Margin,
    /// Difference of logits ratio (Croce & Hein 2020), untargeted:
    /// `−(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12)` with `π` the logits sorted
    /// in decreasing order. Invariant to shifting and scaling the logits.
    Dlr,
    /// Targeted DLR: `−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)` for the target
    /// class `t` given per example.
    DlrTargeted,
    /// `KL(p ‖ softmax(z))` to a reference distribution `p` given per example (the
    /// inner maximisation of TRADES, `p` the clean prediction). Without a reference
    /// it is the cross-entropy.
    Kl,
}

impl AttackLoss {
    /// Whether the loss needs a target class per example.
    pub fn is_targeted(self) -> bool {
        self == AttackLoss::DlrTargeted
    }

    /// Short name used in reports (`ce`, `margin`, `dlr`, `dlr-t`).
    pub fn name(self) -> &'static str {
        match self {
            AttackLoss::CrossEntropy => "ce",
            AttackLoss::Margin => "margin",
            AttackLoss::Dlr => "dlr",
            AttackLoss::DlrTargeted => "dlr-t",
            AttackLoss::Kl => "kl",
        }
    }
}

/// Indices of `z` sorted by decreasing value (ties: lower index first).
fn order(z: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]).then(a.cmp(&b)));
    idx
}

/// The largest logit other than `y`, and its index.
fn max_other(z: &[f32], y: usize) -> (usize, f32) {
    z.iter().enumerate().filter(|&(j, _)| j != y).fold(
        (usize::MAX, f32::NEG_INFINITY),
        |(bj, bv), (j, &v)| {
            if v > bv {
                (j, v)
            } else {
                (bj, bv)
            }
        },
    )
}

/// Loss value and its gradient with respect to the logits `z` of one example with
/// label `y` (and target `t`, used by targeted losses only). Labels outside the
/// logits give a zero loss and gradient rather than a panic.
pub fn loss_and_logit_grad(loss: AttackLoss, z: &[f32], y: usize, t: usize) -> (f32, Vec<f32>) {
    let c = z.len();
    let mut g = vec![0.0f32; c];
    if y >= c || c < 2 {
        return (0.0, g);
    }
    match loss {
        AttackLoss::CrossEntropy | AttackLoss::Kl => {
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            for (gi, ei) in g.iter_mut().zip(&e) {
                *gi = ei / s;
            }
            g[y] -= 1.0;
            (m + s.ln() - z[y], g)
        }
        AttackLoss::Margin => {
            let (o, zo) = max_other(z, y);
            g[o] += 1.0;
            g[y] -= 1.0;
            (zo - z[y], g)
        }
        AttackLoss::Dlr | AttackLoss::DlrTargeted => {
            if c < 4 && loss == AttackLoss::DlrTargeted || c < 3 {
                // Too few classes for the ratio: fall back to the margin.
                return loss_and_logit_grad(AttackLoss::Margin, z, y, t);
            }
            let p = order(z);
            // numerator n = z_y − z_o (o: the best other class, or the target)
            let o = if loss == AttackLoss::Dlr {
                max_other(z, y).0
            } else if t < c && t != y {
                t
            } else {
                max_other(z, y).0
            };
            let n = z[y] - z[o];
            // denominator q and its coefficients on the sorted logits
            let (q, coef): (f32, Vec<(usize, f32)>) = if loss == AttackLoss::Dlr {
                (z[p[0]] - z[p[2]] + 1e-12, vec![(p[0], 1.0), (p[2], -1.0)])
            } else {
                (
                    z[p[0]] - 0.5 * (z[p[2]] + z[p[3]]) + 1e-12,
                    vec![(p[0], 1.0), (p[2], -0.5), (p[3], -0.5)],
                )
            };
            // f = −n / q; ∂f/∂z = −(∂n/∂z)/q + n/q² ∂q/∂z
            g[y] -= 1.0 / q;
            g[o] += 1.0 / q;
            for (k, a) in coef {
                g[k] += n / (q * q) * a;
            }
            (-n / q, g)
        }
    }
}

/// `KL(p ‖ softmax(z))` and its gradient `softmax(z) − p` with respect to `z`
/// (`p` a probability vector as long as `z`).
pub fn kl_and_logit_grad(z: &[f32], p: &[f32]) -> (f32, Vec<f32>) {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    let lse = m + s.ln();
    let mut kl = 0.0f32;
    let mut g = Vec::with_capacity(z.len());
    for ((&zi, &pi), &ei) in z.iter().zip(p).zip(&e) {
        if pi > 0.0 {
            kl += pi * (pi.ln() - (zi - lse));
        }
        g.push(ei / s - pi);
    }
    (kl, g)
}
