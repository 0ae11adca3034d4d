//! The convolution kernels on one thread: forward pass and VJP of the layer shapes
//! a small MNIST CNN uses (28×28 and 14×14 maps, 3×3 kernels, stride 1 and 2, a
//! 1×1 conv, a denoiser's one-channel output layer), the ×2 upsampling, and one purification with a small conv denoiser.
//! Throughput is in MACs ("elem/s" in criterion's output = MAC/s). See
//! docs/CONV.md.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pursamere_core::{Layer, Model, PurifierConfig, Upsample2x};

fn kernels(c: &mut Criterion) {
    let mut rng = common::Rng(11);
    // (name, (cin, h, w), cout, kernel, stride, padding)
    let shapes = [
        ("c1_28x28_to16_k3s1p1", (1, 28, 28), 16, 3, 1, 1),
        ("c16_28x28_to16_k3s1p1", (16, 28, 28), 16, 3, 1, 1),
        ("c16_28x28_to32_k3s2p1", (16, 28, 28), 32, 3, 2, 1),
        ("c32_14x14_to32_k3s1p1", (32, 14, 14), 32, 3, 1, 1),
        ("c32_14x14_to8_k1s1p0", (32, 14, 14), 8, 1, 1, 0),
        // A denoiser's last layer: as many output channels as the image has.
        ("c16_28x28_to1_k3s1p1", (16, 28, 28), 1, 3, 1, 1),
    ];
    let mut group = c.benchmark_group("conv");
    for (name, input, cout, k, s, p) in shapes {
        let owned = common::OwnedConv::random(&mut rng, input, cout, k, s, p, 1.0);
        let layer = owned.layer();
        let n = input.0 * input.1 * input.2;
        let m = layer.output_len(n);
        let x = rng.vec(n, 1.0);
        let gy = rng.vec(m, 1.0);
        let mut y = vec![0.0; m];
        let mut gx = vec![0.0; n];
        group.throughput(Throughput::Elements(layer.macs()));
        group.bench_function(format!("forward_{name}"), |b| {
            b.iter(|| layer.forward(&x, &mut y))
        });
        group.bench_function(format!("vjp_{name}"), |b| {
            b.iter(|| layer.vjp(&x, &gy, &mut gx))
        });
    }
    let up = Layer::Upsample2x(Upsample2x {
        channels: 32,
        height: 14,
        width: 14,
    });
    let n = 32 * 14 * 14;
    let x = rng.vec(n, 1.0);
    let gy = rng.vec(4 * n, 1.0);
    let (mut y, mut gx) = (vec![0.0; 4 * n], vec![0.0; n]);
    group.throughput(Throughput::Elements(4 * n as u64));
    group.bench_function("forward_upsample2x_c32_14x14", |b| {
        b.iter(|| up.forward(&x, &mut y))
    });
    group.bench_function("vjp_upsample2x_c32_14x14", |b| {
        b.iter(|| up.vjp(&x, &gy, &mut gx))
    });
    group.finish();
}

/// One purification + classification with a residual conv denoiser on 28×28
/// (1 → 16 → 16 stride 2 → upsample → 1 channels) and a conv classifier, K = 20,
/// M = 8.
fn purify(c: &mut Criterion) {
    use common::Op;
    let mut owned = common::OwnedAnyModel::build(
        2,
        (1, 28, 28),
        &[
            Op::Conv(16, 3, 1, 1),
            Op::Relu,
            Op::Conv(16, 3, 2, 1),
            Op::Relu,
            Op::Up,
            Op::Conv(1, 3, 1, 1),
        ],
        true,
        &[
            Op::Conv(16, 3, 2, 1),
            Op::Relu,
            Op::Conv(32, 3, 2, 1),
            Op::Relu,
            Op::Dense(10),
        ],
    );
    owned.cfg = PurifierConfig {
        iters: 20,
        noise_samples: 8,
        ..common::default_config()
    };
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).expect("valid model");
    let cfg = model.purifier_config();
    let mut rng = common::Rng(3);
    let x: Vec<f32> = (0..model.input_len()).map(|_| rng.unit()).collect();
    let mut out = vec![0.0; model.input_len()];
    let mut logits = vec![0.0; model.num_classes()];
    let macs = model.purify_macs(&cfg) + model.classifier_macs();
    eprintln!(
        "conv model: MACs per purification + classification {macs} (denoiser forward {}, classifier {}); scratch {} floats (fast {})",
        model.denoiser_macs(),
        model.classifier_macs(),
        model.scratch_len(),
        model.scratch_len_fast()
    );
    let mut group = c.benchmark_group("purify_classify_conv_28x28");
    group.throughput(Throughput::Elements(macs));
    group.sample_size(10);
    let mut scratch = vec![0.0; model.scratch_len()];
    group.bench_function("k20_m8_min_scratch", |b| {
        b.iter(|| {
            model
                .purify(&x, &cfg, &mut out, &mut scratch)
                .expect("purify");
            model
                .classify(&out, &mut logits, &mut scratch)
                .expect("classify")
        })
    });
    group.finish();
}

criterion_group!(benches, kernels, purify);
criterion_main!(benches);
