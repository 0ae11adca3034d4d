//! What one PGD step costs through the purifier, against one purification, on the
//! shipped model (fixtures/mnist.psm, dequantised; K = 10, M = 4) with a batch of 32
//! images on the float host reference:
//!
//! - `purify`: the purification alone (the forward pass of every attack step);
//! - `bpda_step`: purification + classifier loss and gradient at the purified point;
//! - `full_step`: purification recorded for the backward pass + the exact gradient
//!   through every unrolled step (`PurifierGradient::Full`).
//!
//! - `purify_vjp_fast` / `purify_vjp_autodiff`: the trajectory and the exact
//!   gradient back through it, on the fast path (first layer once per example, masks
//!   kept) and on the straightforward autodiff path, side by side.
//!
//! The ratio full_step / purify is the "small multiple of one purification" the
//! evaluation promises. See BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dfdx::prelude::Cpu;
use pursamere_core::Model;
use pursamere_trainer::attack::{AttackLoss, GradientOracle, PurifiedOracle, PurifierGradient};
use pursamere_trainer::model::FloatModel;
use pursamere_trainer::reference::Reference;

const BATCH: usize = 32;

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.psm"
    ))
    .expect("fixtures/mnist.psm");
    let model = Model::parse(&bytes).expect("valid model");
    let fm = FloatModel::from_spec(model.spec()).expect("a dense model");
    let cfg = model.purifier_config();
    let d = model.input_len();
    // Deterministic images in [0, 1] (the cost does not depend on the content).
    let x: Vec<f32> = (0..BATCH * d)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let y: Vec<usize> = (0..BATCH).map(|i| i % 10).collect();
    let reference = Reference::<f32, Cpu>::new(&Cpu::default(), &fm.denoiser, d, cfg);
    let bpda = PurifiedOracle::new(&fm.denoiser, &fm.classifier, d, cfg, PurifierGradient::Bpda);
    let full = PurifiedOracle::new(&fm.denoiser, &fm.classifier, d, cfg, PurifierGradient::Full);
    let mut group = c.benchmark_group("attack_cost_k10_m4_batch32");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.bench_function("purify", |b| b.iter(|| reference.purify(&x)));
    group.bench_function("bpda_step", |b| {
        b.iter(|| bpda.evaluate(&x, &y, AttackLoss::CrossEntropy))
    });
    group.bench_function("full_step", |b| {
        b.iter(|| full.evaluate(&x, &y, AttackLoss::CrossEntropy))
    });
    // The exact gradient through the purifier alone (the part of `full_step` that is
    // not the classifier), on the fast path and on the straightforward autodiff path
    // (masks recomputed, every noisy row through the first layer): same result.
    let slow =
        Reference::<f32, Cpu>::new(&Cpu::default(), &fm.denoiser, d, cfg).without_fast_path();
    let v: Vec<f32> = (0..BATCH * d)
        .map(|i| ((i * 31) % 7) as f32 - 3.0)
        .collect();
    group.bench_function("purify_vjp_fast", |b| {
        b.iter(|| {
            let t = reference.purify_trajectory(&x);
            reference.purify_vjp(&t, &v)
        })
    });
    group.bench_function("purify_vjp_autodiff", |b| {
        b.iter(|| {
            let t = slow.purify_trajectory(&x);
            slow.purify_vjp(&t, &v)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
