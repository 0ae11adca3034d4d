//! The float mirror of a `.psm` network represents every layer kind of the core,
//! with its shape, and computes what the core computes.

use pursamere_core::{Layer, NetworkSpec, Upsample2x};
use pursamere_trainer::model::{FloatLayer, FloatNet};

#[test]
fn upsampling_is_mirrored_with_its_shape() {
    let mut layers = heapless::Vec::new();
    layers.push(Layer::Relu).unwrap();
    layers
        .push(Layer::Upsample2x(Upsample2x {
            channels: 3,
            height: 2,
            width: 5,
        }))
        .unwrap();
    let spec = NetworkSpec {
        residual: false,
        layers,
    };
    let net = FloatNet::from_spec(&spec, "denoiser").unwrap();
    assert_eq!(
        net.layers[1],
        FloatLayer::Upsample2x {
            channels: 3,
            height: 2,
            width: 5
        }
    );
    assert_eq!(net.layers[1].output_len(30), 120);
}

/// The shipped MNIST model with a 3×3 convolution (1 → 1 channel, padding 1, so
/// the shapes still chain) appended to the denoiser after a ReLU, or prepended to
/// the classifier, written and re-read through the core's own writer and parser.
fn with_conv(in_denoiser: bool) -> (Vec<u8>, usize) {
    use pursamere_core::{encoded_len, write_model, Conv2d, Model};
    let (weights, scales, bias) = ([1u8; 9], 0.01f32.to_le_bytes(), [0u8; 4]);
    let shipped = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.psm"
    ))
    .expect("fixtures/mnist.psm");
    let model = Model::parse(&shipped).unwrap();
    let mut spec = model.spec().clone();
    let conv = Layer::Conv2d(Conv2d {
        in_channels: 1,
        out_channels: 1,
        height: 28,
        width: 28,
        kernel: 3,
        stride: 1,
        padding: 1,
        weights: &weights,
        scales: &scales,
        bias: &bias,
    });
    let index = if in_denoiser {
        spec.denoiser.layers.push(Layer::Relu).unwrap();
        spec.denoiser.layers.push(conv).unwrap();
        spec.denoiser.layers.len() - 1
    } else {
        spec.classifier.layers.insert(0, conv).unwrap();
        0
    };
    let mut out = vec![0u8; encoded_len(&spec).unwrap()];
    let n = write_model(&spec, &mut out).unwrap();
    out.truncate(n);
    (out, index)
}

#[test]
fn a_psm_file_with_a_convolution_has_a_float_mirror_that_agrees_with_the_core() {
    use dfdx::prelude::*;
    use pursamere_core::Model;
    use pursamere_trainer::model::{Batch, DeviceNet, FloatModel};
    for in_denoiser in [true, false] {
        let (bytes, index) = with_conv(in_denoiser);
        let model = Model::parse(&bytes).unwrap();
        let fm = FloatModel::from_spec(model.spec()).unwrap();
        let net = if in_denoiser {
            &fm.denoiser
        } else {
            &fm.classifier
        };
        assert_eq!(net.layers[index].kind_name(), "conv2d");
        // The float network computes what the core computes, up to float sums.
        let dev = Cpu::default();
        let x: Vec<f32> = (0..784).map(|i| (i % 29) as f32 / 29.0).collect();
        let xt: Batch<f32, Cpu> = dev.tensor_from_vec(x.clone(), (1, 784));
        let y = DeviceNet::<f32, Cpu>::from_float(net, &dev)
            .forward(xt)
            .as_vec();
        let mut scratch = vec![0.0; model.scratch_len()];
        let core: Vec<f32> = if in_denoiser {
            let mut out = vec![0.0; 784];
            model.denoise(&x, &mut out, &mut scratch).unwrap();
            out
        } else {
            let mut z = vec![0.0; 10];
            model.classify(&x, &mut z, &mut scratch).unwrap();
            z
        };
        for (a, b) in core.iter().zip(&y) {
            assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}
