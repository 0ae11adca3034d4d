//! Adversarial attacks, batched on the host: one attack per file.
//!
//! - [`pgd`]: projected gradient descent (fixed or cosine step).
//! - [`apgd`]: APGD (Croce & Hein 2020): step-size adaptation with checkpoints and
//!   momentum, with the cross-entropy or the (targeted) DLR loss.
//! - [`fab`]: FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein 2020),
//!   L∞ and L2: a minimal-distance search along linearised decision boundaries.
//! - [`square`]: the query-only Square attack (Andriushchenko et al. 2020), L∞ and L2.
//!
//! Gradient attacks are written against a [`GradientOracle`] (logits and their
//! vector–Jacobian product): the undefended classifier, BPDA or the exact unrolled
//! gradient through the purifier. Losses ([`AttackLoss`]) are computed on the logits
//! in [`loss`], so each works through every oracle.

pub mod apgd;
pub mod fab;
pub mod loss;
pub mod oracle;
pub mod pgd;
pub mod square;

use serde::{Deserialize, Serialize};

pub use apgd::{apgd, ApgdConfig};
pub use fab::{fab_t, project_hyperplane_box, FabConfig, FabResult};
pub use loss::AttackLoss;
pub use oracle::{
    argmax, ClassifierOracle, DenoisedOracle, GradientOracle, NetOracle, OracleOutput,
    PurifiedOracle, PurifierGradient,
};
pub use pgd::{pgd, pgd_soft, PgdConfig, StepSchedule};
pub use square::{square, SquareConfig, SquareResult};

/// Threat model norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttackNorm {
    /// `||δ||_∞ ≤ ε`, signed-gradient steps.
    Linf,
    /// `||δ||_2 ≤ ε`, normalised-gradient steps.
    L2,
}

impl AttackNorm {
    /// `linf` or `l2`.
    pub fn name(self) -> &'static str {
        match self {
            AttackNorm::Linf => "linf",
            AttackNorm::L2 => "l2",
        }
    }
}

/// Rows `idx` of a row-major batch with rows of length `d`.
pub fn gather_rows(x: &[f32], d: usize, idx: &[usize]) -> Vec<f32> {
    idx.iter()
        .flat_map(|&k| x.get(k * d..(k + 1) * d).unwrap_or(&[]).iter().copied())
        .collect()
}

/// Distance of `a` from `b` in `norm` ([`project`] measures the L2 ball with it, so a
/// point within ε by this measure is left alone there).
pub(crate) fn distance(norm: AttackNorm, a: &[f32], b: &[f32]) -> f32 {
    match norm {
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
    }
}

/// The classes of one row of logits by decreasing logit, ties by index: the target
/// ranking of APGD-T and FAB-T (rank 2, the runner-up, is `[1]`).
pub(crate) fn classes_by_logit(z: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&i, &j| z[j].total_cmp(&z[i]).then(i.cmp(&j)));
    idx
}

/// Projects `x` onto the ε-ball around `x0` (in `norm`) and then onto `[0, 1]`.
pub(crate) fn project(norm: AttackNorm, eps: f32, x0: &[f32], x: &mut [f32]) {
    if norm == AttackNorm::L2 {
        let n = distance(norm, x, x0);
        if n > eps {
            let s = eps / n;
            for (a, &b) in x.iter_mut().zip(x0) {
                *a = b + (*a - b) * s;
            }
        }
    }
    for (a, &b) in x.iter_mut().zip(x0) {
        if norm == AttackNorm::Linf {
            *a = a.clamp(b - eps, b + eps);
        }
        *a = a.clamp(0.0, 1.0);
    }
}
