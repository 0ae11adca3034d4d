//! The float mirror of a `.psm` network refuses layer kinds it cannot represent
//! (instead of silently replacing them), naming the network, the layer and its kind.

use pursamere_core::{Layer, NetworkSpec, Upsample2x};
use pursamere_trainer::model::FloatNet;

#[test]
fn convolutional_layers_are_refused_not_guessed() {
    let mut layers = heapless::Vec::new();
    layers.push(Layer::Relu).unwrap();
    layers
        .push(Layer::Upsample2x(Upsample2x {
            channels: 1,
            height: 2,
            width: 2,
        }))
        .unwrap();
    let spec = NetworkSpec {
        residual: false,
        layers,
    };
    let e = FloatNet::from_spec(&spec, "denoiser").unwrap_err();
    assert_eq!((e.network, e.index, e.kind), ("denoiser", 1, "upsample2x"));
    let msg = e.to_string();
    assert!(
        msg.contains("denoiser layer 1 (upsample2x)") && msg.contains("dense and ReLU"),
        "{msg}"
    );
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
fn a_psm_file_with_a_convolution_has_no_float_mirror() {
    use pursamere_core::Model;
    use pursamere_trainer::model::FloatModel;
    for (in_denoiser, network) in [(true, "denoiser"), (false, "classifier")] {
        let (bytes, index) = with_conv(in_denoiser);
        // The core runs it …
        let model = Model::parse(&bytes).unwrap();
        // … the float side refuses it, naming the network, the layer and its kind.
        let e = FloatModel::from_spec(model.spec()).unwrap_err();
        assert_eq!((e.network, e.index, e.kind), (network, index, "conv2d"));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{network} layer {index} (conv2d): ")),
            "{msg}"
        );
    }
    // The same models without the convolution convert.
    let shipped = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.psm"
    ))
    .unwrap();
    assert!(FloatModel::from_spec(Model::parse(&shipped).unwrap().spec()).is_ok());
}
