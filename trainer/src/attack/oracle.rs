//! Gradient oracles: what the attacks differentiate.
//!
//! An oracle maps a batch of inputs to logits and gives the vector–Jacobian product
//! of those logits with the input. Losses live in [`super::loss`], so every loss
//! works through every oracle: the undefended classifier ([`ClassifierOracle`]),
//! BPDA and the exact unrolled gradient through the purifier ([`PurifiedOracle`]),
//! one-shot denoising ([`DenoisedOracle`]).

use dfdx::prelude::*;

use super::loss::{kl_and_logit_grad, loss_and_logit_grad, AttackLoss};
use crate::gather::NetDevice;
use crate::model::{Batch, DeviceNet, FloatNet};

/// What an oracle returns for a batch under one loss.
pub struct OracleOutput {
    /// Loss per example.
    pub loss: Vec<f32>,
    /// Gradient of each example's loss with respect to its input, `[batch, d]`.
    pub grad: Vec<f32>,
    /// Predicted label per example.
    pub pred: Vec<usize>,
    /// Logits, `[batch, classes]`.
    pub logits: Vec<f32>,
}

/// Anything the gradient attacks can attack.
pub trait GradientOracle {
    /// Input length of one example.
    fn input_len(&self) -> usize;

    /// Logits of a batch (row-major `[batch, d]` in, `[batch, classes]` out).
    fn logits(&self, x: &[f32]) -> Vec<f32>;

    /// Logits of a batch and the input gradient of `Σ_b ⟨w_b, z_b⟩`, where the
    /// weights `w = weights(z)` are computed from the logits `z` themselves (the
    /// gradient of a loss with respect to the logits).
    fn logits_vjp(
        &self,
        x: &[f32],
        weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>);

    /// Loss, input gradient and prediction for a batch (untargeted losses).
    fn evaluate(&self, x: &[f32], labels: &[usize], loss: AttackLoss) -> OracleOutput {
        self.evaluate_targeted(x, labels, &[], loss)
    }

    /// [`GradientOracle::evaluate`] with a target class per example (used by
    /// targeted losses; may be empty otherwise).
    fn evaluate_targeted(
        &self,
        x: &[f32],
        labels: &[usize],
        targets: &[usize],
        loss: AttackLoss,
    ) -> OracleOutput {
        self.evaluate_soft(x, labels, targets, &[], loss)
    }

    /// [`GradientOracle::evaluate_targeted`] with a probability vector per example
    /// (row-major `[batch, classes]`), the reference distribution of
    /// [`AttackLoss::Kl`] (may be empty otherwise).
    fn evaluate_soft(
        &self,
        x: &[f32],
        labels: &[usize],
        targets: &[usize],
        soft: &[f32],
        loss: AttackLoss,
    ) -> OracleOutput {
        let mut values = Vec::with_capacity(labels.len());
        let (logits, grad) = self.logits_vjp(x, &mut |z: &[f32]| {
            let c = z.len() / labels.len().max(1);
            let mut w = Vec::with_capacity(z.len());
            values.clear();
            for (row, (zr, &y)) in z.chunks(c.max(1)).zip(labels).enumerate() {
                let t = targets.get(row).copied().unwrap_or(usize::MAX);
                let (v, g) = match soft.get(row * c..(row + 1) * c) {
                    Some(p) if loss == AttackLoss::Kl => kl_and_logit_grad(zr, p),
                    _ => loss_and_logit_grad(loss, zr, y, t),
                };
                values.push(v);
                w.extend(g);
            }
            w
        });
        let c = logits.len() / labels.len().max(1);
        OracleOutput {
            loss: values,
            grad,
            pred: logits.chunks(c.max(1)).map(argmax).collect(),
            logits,
        }
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// The undefended classifier in dfdx (float weights).
pub struct ClassifierOracle {
    dev: Cpu,
    net: DeviceNet<f32, Cpu>,
    pub(crate) d: usize,
}

impl ClassifierOracle {
    /// An oracle for `classifier` with input length `d`.
    pub fn new(classifier: &FloatNet, d: usize) -> Self {
        let dev = Cpu::default();
        let net = DeviceNet::from_float(classifier, &dev);
        ClassifierOracle { dev, net, d }
    }

    /// Predicted labels of a batch.
    pub fn predict(&self, x: &[f32]) -> Vec<usize> {
        let logits = self.logits(x);
        let b = x.len() / self.d.max(1);
        let c = logits.len() / b.max(1);
        logits.chunks(c.max(1)).map(argmax).collect()
    }
}

/// Logits of `net` for a batch.
fn net_logits<D: NetDevice<f32>>(
    dev: &D,
    net: &DeviceNet<f32, D>,
    d: usize,
    x: &[f32],
) -> Vec<f32> {
    let b = x.len() / d.max(1);
    net.forward(dev.tensor_from_vec(x.to_vec(), (b, d)))
        .as_vec()
}

/// Logits of `net` and the input gradient of `Σ ⟨weights(z), z⟩`.
fn net_logits_vjp<D: NetDevice<f32>>(
    dev: &D,
    net: &DeviceNet<f32, D>,
    d: usize,
    x: &[f32],
    weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    logits_vjp_through(dev, d, x, |t| net.forward(t), weights)
}

/// Logits `forward(x)` of a batch and the input gradient of `Σ ⟨weights(z), z⟩`, by
/// reverse-mode autodiff through whatever `forward` computes.
fn logits_vjp_through<D: NetDevice<f32>>(
    dev: &D,
    d: usize,
    x: &[f32],
    forward: impl Fn(Batch<f32, D, OwnedTape<f32, D>>) -> Batch<f32, D, OwnedTape<f32, D>>,
    weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let b = x.len() / d.max(1);
    let x0: Batch<f32, D> = dev.tensor_from_vec(x.to_vec(), (b, d));
    let logits = forward(x0.leaky_trace());
    let z = logits.retaped::<NoneTape>().as_vec();
    let c = z.len() / b.max(1);
    let mut w = weights(&z);
    w.resize(b * c, 0.0);
    let w: Batch<f32, D> = dev.tensor_from_vec(w, (b, c));
    let grads = (logits * w).sum::<Rank0, _>().backward();
    (z, grads.get(&x0).as_vec())
}

impl GradientOracle for ClassifierOracle {
    fn input_len(&self) -> usize {
        self.d
    }

    fn logits(&self, x: &[f32]) -> Vec<f32> {
        net_logits(&self.dev, &self.net, self.d, x)
    }

    fn logits_vjp(
        &self,
        x: &[f32],
        weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        net_logits_vjp(&self.dev, &self.net, self.d, x, weights)
    }
}

/// A network being trained, on any dfdx device, as an oracle (borrowed: the
/// adversarial examples of a training step attack the current weights).
pub struct NetOracle<'a, D: NetDevice<f32>> {
    /// The device.
    pub dev: &'a D,
    /// The network.
    pub net: &'a DeviceNet<f32, D>,
    /// Input length.
    pub d: usize,
}

impl<D: NetDevice<f32>> GradientOracle for NetOracle<'_, D> {
    fn input_len(&self) -> usize {
        self.d
    }

    fn logits(&self, x: &[f32]) -> Vec<f32> {
        net_logits(self.dev, self.net, self.d, x)
    }

    fn logits_vjp(
        &self,
        x: &[f32],
        weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        net_logits_vjp(self.dev, self.net, self.d, x, weights)
    }
}

/// How a gradient is taken through the purifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurifierGradient {
    /// BPDA (backward pass differentiable approximation): the purifier is the
    /// identity in the backward pass, i.e. the classifier's input gradient at the
    /// purified point. Catches defences whose exact gradient is masked.
    Bpda,
    /// The exact gradient propagated back through every unrolled purification step
    /// and the projection ([`crate::reference::Reference::purify_vjp`]).
    Full,
}

/// The defended pipeline as a gradient oracle: purification with the float host
/// reference, then the classifier.
pub struct PurifiedOracle {
    reference: crate::reference::Reference<f32, Cpu>,
    classifier: ClassifierOracle,
    mode: PurifierGradient,
}

impl PurifiedOracle {
    /// `denoiser` purification with `cfg`, then `classifier`, differentiated by `mode`.
    pub fn new(
        denoiser: &FloatNet,
        classifier: &FloatNet,
        d: usize,
        cfg: pursamere_core::PurifierConfig,
        mode: PurifierGradient,
    ) -> Self {
        let dev = Cpu::default();
        PurifiedOracle {
            reference: crate::reference::Reference::new(&dev, denoiser, d, cfg),
            classifier: ClassifierOracle::new(classifier, d),
            mode,
        }
    }

    /// What the purifier makes of a batch (what the classifier then sees).
    pub fn purify(&self, x: &[f32]) -> Vec<f32> {
        self.reference.purify(x)
    }
}

impl GradientOracle for PurifiedOracle {
    fn input_len(&self) -> usize {
        self.classifier.d
    }

    fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.classifier.logits(&self.purify(x))
    }

    fn logits_vjp(
        &self,
        x: &[f32],
        weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        match self.mode {
            PurifierGradient::Bpda => self.classifier.logits_vjp(&self.purify(x), weights),
            PurifierGradient::Full => {
                let t = self.reference.purify_trajectory(x);
                let (z, g) = self.classifier.logits_vjp(t.output(), weights);
                (z, self.reference.purify_vjp(&t, &g))
            }
        }
    }
}

/// One-shot denoising, then the classifier: `C(D(x))`, differentiated by `mode`
/// (BPDA: the classifier's gradient at `D(x)`; full: through both networks, the
/// denoiser's residual skip included).
pub struct DenoisedOracle {
    dev: Cpu,
    denoiser: DeviceNet<f32, Cpu>,
    classifier: DeviceNet<f32, Cpu>,
    d: usize,
    mode: PurifierGradient,
}

impl DenoisedOracle {
    /// `denoiser` once, then `classifier`, differentiated by `mode`.
    pub fn new(
        denoiser: &FloatNet,
        classifier: &FloatNet,
        d: usize,
        mode: PurifierGradient,
    ) -> Self {
        let dev = Cpu::default();
        DenoisedOracle {
            denoiser: DeviceNet::from_float(denoiser, &dev),
            classifier: DeviceNet::from_float(classifier, &dev),
            dev,
            d,
            mode,
        }
    }
}

impl GradientOracle for DenoisedOracle {
    fn input_len(&self) -> usize {
        self.d
    }

    fn logits(&self, x: &[f32]) -> Vec<f32> {
        let b = x.len() / self.d.max(1);
        let x = self.dev.tensor_from_vec(x.to_vec(), (b, self.d));
        self.classifier.forward(self.denoiser.forward(x)).as_vec()
    }

    fn logits_vjp(
        &self,
        x: &[f32],
        weights: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        match self.mode {
            PurifierGradient::Bpda => {
                let denoised = net_logits(&self.dev, &self.denoiser, self.d, x);
                net_logits_vjp(&self.dev, &self.classifier, self.d, &denoised, weights)
            }
            PurifierGradient::Full => logits_vjp_through(
                &self.dev,
                self.d,
                x,
                |t| self.classifier.forward(self.denoiser.forward(t)),
                weights,
            ),
        }
    }
}

/// The oracle's output for rows `rows` of the batch `x` (row length `d`).
pub(crate) fn evaluate_rows<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    targets: &[usize],
    rows: &[usize],
    loss: AttackLoss,
) -> OracleOutput {
    evaluate_rows_soft(oracle, x, labels, targets, &[], rows, loss)
}

/// [`evaluate_rows`] with the soft targets of [`AttackLoss::Kl`] (`[batch, classes]`).
pub(crate) fn evaluate_rows_soft<O: GradientOracle + ?Sized>(
    oracle: &O,
    x: &[f32],
    labels: &[usize],
    targets: &[usize],
    soft: &[f32],
    rows: &[usize],
    loss: AttackLoss,
) -> OracleOutput {
    let d = oracle.input_len().max(1);
    let xa = super::gather_rows(x, d, rows);
    let la: Vec<usize> = rows.iter().map(|&k| labels[k]).collect();
    let ta: Vec<usize> = rows
        .iter()
        .map(|&k| targets.get(k).copied().unwrap_or(usize::MAX))
        .collect();
    let c = soft.len() / labels.len().max(1);
    let sa: Vec<f32> = if c > 0 {
        rows.iter()
            .flat_map(|&k| soft.get(k * c..(k + 1) * c).unwrap_or(&[]).iter().copied())
            .collect()
    } else {
        Vec::new()
    };
    oracle.evaluate_soft(&xa, &la, &ta, &sa, loss)
}
