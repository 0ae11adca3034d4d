//! Convolutions against their dense peers, measured in the same run (so the ratio
//! holds even on a loaded machine):
//!
//! * one purification (K = 10, M = 4, ρ = 0: the export default) with a conv
//!   denoiser from a real `.psm` file — `fixtures/tiny-conv.psm`, and any files named
//!   in `PURSAMERE_BENCH_MODELS` (comma-separated paths, e.g. a trained
//!   `runs/…/model.psm`) — against a random residual dense denoiser
//!   `784 → h → 784` with the same forward MAC count (`h = MACs / 1568`), on both
//!   scratch sizes (`min`: one noise sample at a time, as on a microcontroller;
//!   `fast`: all M samples batched, the host default);
//! * one conv layer (16 → 16 channels, 3×3, 28×28, 1,806,336 MACs) against a dense
//!   layer 784 → 2304 with exactly the same MAC count, forward and VJP.
//!
//! Throughput is in MACs ("elem/s" in criterion's output = MAC/s). See
//! BENCHMARKS.md ("Convolutions").

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pursamere_core::{Model, PurifierConfig};

const TINY_CONV: &[u8] = include_bytes!("../../fixtures/tiny-conv.psm");

fn bench_cfg(base: PurifierConfig) -> PurifierConfig {
    PurifierConfig {
        sigma: 0.5,
        noise_samples: 4,
        iters: 10,
        eta: 0.5,
        rho: 0.0,
        ..base
    }
}

fn purify_pair(c: &mut Criterion, name: &str, bytes: &[u8]) {
    let conv = Model::parse(bytes).expect("valid conv model");
    let cfg = bench_cfg(conv.purifier_config());
    let den_macs = conv.denoiser_macs();
    let d = conv.input_len();
    assert_eq!(d, 784, "the dense peer is built for 1×28×28 inputs");
    let h = ((den_macs as f64 / (2.0 * d as f64)).round() as usize).max(1);
    let mut owned = common::OwnedModel::random(5, (28, 28), &[h], true, &[], 10);
    owned.cfg = cfg;
    let dense_bytes = owned.bytes();
    let dense = Model::parse(&dense_bytes).expect("valid dense model");
    eprintln!(
        "{name}: conv denoiser forward {den_macs} MACs, {} MACs per purification; \
         dense peer 784-{h}-784 forward {} MACs, {} per purification",
        conv.purify_macs(&cfg),
        dense.denoiser_macs(),
        dense.purify_macs(&cfg)
    );
    let mut rng = common::Rng(3);
    let x: Vec<f32> = (0..d).map(|_| rng.unit()).collect();
    let mut out = vec![0.0; d];
    let mut group = c.benchmark_group(format!("purify_k10_m4_{name}"));
    group.sample_size(10);
    let dense_label = format!("dense_784_{h}_784");
    for (label, model) in [("conv", &conv), (dense_label.as_str(), &dense)] {
        group.throughput(Throughput::Elements(model.purify_macs(&cfg)));
        for (scratch_name, len) in [
            ("min", model.purify_scratch_len(&cfg)),
            (
                "fast",
                model.purify_scratch_len_batched(&cfg, cfg.noise_samples as usize),
            ),
        ] {
            let mut scratch = vec![0.0; len];
            group.bench_function(format!("{label}_{scratch_name}"), |b| {
                b.iter(|| {
                    model
                        .purify(&x, &cfg, &mut out, &mut scratch)
                        .expect("purify")
                })
            });
        }
    }
    group.finish();
}

fn purify(c: &mut Criterion) {
    purify_pair(c, "tiny_conv", TINY_CONV);
    if let Ok(list) = std::env::var("PURSAMERE_BENCH_MODELS") {
        for path in list.split(',').filter(|p| !p.is_empty()) {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let stem = std::path::Path::new(path)
                .parent()
                .and_then(|p| p.file_name())
                .and_then(|s| s.to_str())
                .unwrap_or("model")
                .replace(|ch: char| !ch.is_ascii_alphanumeric(), "_");
            purify_pair(c, &stem, &bytes);
        }
    }
}

fn layer(c: &mut Criterion) {
    let mut rng = common::Rng(17);
    let conv = common::OwnedConv::random(&mut rng, (16, 28, 28), 16, 3, 1, 1, 1.0);
    let dense = common::OwnedDense::random(&mut rng, 784, 2304, 1.0);
    let mut group = c.benchmark_group("layer_1806336_macs");
    for (label, owned_layer, n) in [
        ("conv_c16_28x28_to16_k3", conv.layer(), 16 * 28 * 28),
        ("dense_784_to_2304", dense.layer(), 784),
    ] {
        let m = owned_layer.output_len(n);
        assert_eq!(owned_layer.macs(), 1_806_336);
        let x = rng.vec(n, 1.0);
        let gy = rng.vec(m, 1.0);
        let (mut y, mut gx) = (vec![0.0; m], vec![0.0; n]);
        group.throughput(Throughput::Elements(owned_layer.macs()));
        group.bench_function(format!("forward_{label}"), |b| {
            b.iter(|| owned_layer.forward(&x, &mut y))
        });
        group.bench_function(format!("vjp_{label}"), |b| {
            b.iter(|| owned_layer.vjp(&x, &gy, &mut gx))
        });
    }
    group.finish();
}

criterion_group!(benches, layer, purify);
criterion_main!(benches);
