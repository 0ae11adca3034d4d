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
