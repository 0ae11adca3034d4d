//! Network definitions on the host: plain float networks (what is exported and
//! checkpointed) and their dfdx counterparts (what is trained and run as the float
//! reference). Widths and depth are runtime values, so sizing a model for a
//! microcontroller needs no recompilation.

use dfdx::prelude::*;
use pursamere_core::{InputShape, Layer, ModelSpec, NetworkSpec, PurifierConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One float layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FloatLayer {
    /// Dense layer, weights row-major `[outputs][inputs]`.
    Dense {
        /// Input length.
        inputs: usize,
        /// Output length.
        outputs: usize,
        /// `outputs × inputs` weights.
        weights: Vec<f32>,
        /// `outputs` biases.
        bias: Vec<f32>,
    },
    /// `max(x, 0)`.
    Relu,
}

/// A layer of a `.psm` model that the float side (reference, training, attacks)
/// cannot mirror yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{network} layer {index} ({kind}): the float reference, training and attacks support \
     dense and ReLU layers only so far"
)]
pub struct UnsupportedLayer {
    /// `denoiser` or `classifier`.
    pub network: &'static str,
    /// Layer index.
    pub index: usize,
    /// Layer kind.
    pub kind: &'static str,
}

/// A float network (mirror of the core's `NetworkSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatNet {
    /// Global residual skip `y + net(y)`.
    pub residual: bool,
    /// Layers in order.
    pub layers: Vec<FloatLayer>,
}

/// Both networks plus metadata and the default purifier configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloatModel {
    /// Data set name.
    pub dataset: String,
    /// Input shape.
    pub input_shape: InputShape,
    /// Class names.
    pub class_names: Vec<String>,
    /// Score model.
    pub denoiser: FloatNet,
    /// Classifier.
    pub classifier: FloatNet,
    /// Default purifier configuration.
    pub purifier: PurifierConfig,
}

impl FloatNet {
    /// A fresh MLP `dims[0] → … → dims[n]` with ReLU between dense layers; weights
    /// uniform in `±sqrt(6 / fan_in)·gain/√2` (He-uniform), biases zero.
    pub fn mlp(dims: &[usize], residual: bool, gain: f32, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut layers = Vec::new();
        for (k, w) in dims.windows(2).enumerate() {
            if k > 0 {
                layers.push(FloatLayer::Relu);
            }
            let a = gain * (3.0 / w[0] as f32).sqrt();
            layers.push(FloatLayer::Dense {
                inputs: w[0],
                outputs: w[1],
                weights: (0..w[0] * w[1]).map(|_| rng.gen_range(-a..a)).collect(),
                bias: vec![0.0; w[1]],
            });
        }
        FloatNet { residual, layers }
    }

    /// Dequantised copy of a network from a `.psm` file; `network` names it in the
    /// error. Convolution and upsampling layers are refused: the float mirror of
    /// those layers does not exist yet, and guessing would make every reference,
    /// attack and verification of the model silently wrong.
    pub fn from_spec(
        spec: &NetworkSpec<'_>,
        network: &'static str,
    ) -> Result<Self, UnsupportedLayer> {
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(index, l)| match l {
                Layer::Dense(d) => {
                    let (n, m) = (d.inputs as usize, d.outputs as usize);
                    Ok(FloatLayer::Dense {
                        inputs: n,
                        outputs: m,
                        weights: (0..m)
                            .flat_map(|o| {
                                (0..n).map(move |i| f32::from(d.weight(o, i)) * d.scale(o))
                            })
                            .collect(),
                        bias: (0..m).map(|o| d.bias(o)).collect(),
                    })
                }
                Layer::Relu => Ok(FloatLayer::Relu),
                other => Err(UnsupportedLayer {
                    network,
                    index,
                    kind: other.kind_name(),
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FloatNet {
            residual: spec.residual,
            layers,
        })
    }

    /// The same architecture with every weight and bias zero (Adam's initial moments).
    pub fn zeros_like(&self) -> FloatNet {
        FloatNet {
            residual: self.residual,
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    FloatLayer::Dense {
                        inputs,
                        outputs,
                        weights,
                        bias,
                    } => FloatLayer::Dense {
                        inputs: *inputs,
                        outputs: *outputs,
                        weights: vec![0.0; weights.len()],
                        bias: vec![0.0; bias.len()],
                    },
                    FloatLayer::Relu => FloatLayer::Relu,
                })
                .collect(),
        }
    }

    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                FloatLayer::Dense { weights, bias, .. } => weights.len() + bias.len(),
                FloatLayer::Relu => 0,
            })
            .sum()
    }
}

impl FloatModel {
    /// Dequantised copy of a parsed `.psm` model; an error for layer kinds the
    /// float side does not support yet (convolutions).
    pub fn from_spec(spec: &ModelSpec<'_>) -> Result<Self, UnsupportedLayer> {
        Ok(FloatModel {
            dataset: spec.meta.dataset.to_owned(),
            input_shape: spec.meta.input_shape,
            class_names: spec
                .meta
                .class_names
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            denoiser: FloatNet::from_spec(&spec.denoiser, "denoiser")?,
            classifier: FloatNet::from_spec(&spec.classifier, "classifier")?,
            purifier: spec.purifier,
        })
    }
}

/// A dense layer's parameters on a dfdx device: `w` is `[out, in]` like the file.
#[derive(Debug, Clone)]
pub struct DeviceDense<E: Dtype, D: Device<E>> {
    /// Weights `[outputs, inputs]`.
    pub w: Tensor<(usize, usize), E, D>,
    /// Biases `[outputs]`.
    pub b: Tensor<(usize,), E, D>,
}

/// A network on a dfdx device (dense layers with ReLU between them).
#[derive(Debug, Clone)]
pub struct DeviceNet<E: Dtype, D: Device<E>> {
    /// Global residual skip.
    pub residual: bool,
    /// `Some` for dense layers, `None` for ReLU.
    pub layers: Vec<Option<DeviceDense<E, D>>>,
}

/// A dfdx batch: `[batch, features]`.
pub type Batch<E, D, T = NoneTape> = Tensor<(usize, usize), E, D, T>;

impl<E: Dtype + num_traits::Float, D: Device<E>> DeviceNet<E, D> {
    /// Uploads a float network.
    pub fn from_float(net: &FloatNet, dev: &D) -> Self {
        let conv = |v: &[f32]| {
            v.iter()
                .map(|&x| E::from(x).unwrap_or(E::zero()))
                .collect::<Vec<E>>()
        };
        let layers = net
            .layers
            .iter()
            .map(|l| match l {
                FloatLayer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => Some(DeviceDense {
                    w: dev.tensor_from_vec(conv(weights), (*outputs, *inputs)),
                    b: dev.tensor_from_vec(conv(bias), (*outputs,)),
                }),
                FloatLayer::Relu => None,
            })
            .collect();
        DeviceNet {
            residual: net.residual,
            layers,
        }
    }

    /// Downloads the parameters as a float network.
    pub fn to_float(&self) -> FloatNet {
        let conv = |v: Vec<E>| {
            v.into_iter()
                .map(|x| x.to_f32().unwrap_or(0.0))
                .collect::<Vec<f32>>()
        };
        FloatNet {
            residual: self.residual,
            layers: self
                .layers
                .iter()
                .map(|l| match l {
                    Some(d) => FloatLayer::Dense {
                        inputs: d.w.shape().1,
                        outputs: d.w.shape().0,
                        weights: conv(d.w.as_vec()),
                        bias: conv(d.b.as_vec()),
                    },
                    None => FloatLayer::Relu,
                })
                .collect(),
        }
    }

    /// Forward pass of a batch; the tape (if any) rides on the input.
    pub fn forward<T>(&self, x: Batch<E, D, T>) -> Batch<E, D, T>
    where
        T: Tape<E, D> + Merge<NoneTape> + Merge<T>,
    {
        let skip = if self.residual {
            Some(x.with_empty_tape())
        } else {
            None
        };
        let mut a = x;
        for l in &self.layers {
            a = match l {
                Some(d) => {
                    let (batch, out) = (a.shape().0, d.w.shape().0);
                    a.matmul(d.w.clone().permute::<_, Axes2<1, 0>>())
                        + d.b.clone().broadcast_like::<_, Axis<0>>(&(batch, out))
                }
                None => a.relu(),
            };
        }
        match skip {
            Some(s) => a + s,
            None => a,
        }
    }
}
