//! The core's benchmark workload (`cargo bench -p pursamere-core --bench purify`:
//! 784-256-256-784 residual denoiser, 784-256-256-10 classifier, random int8
//! weights, K = 20 SAM steps, M = 8 noise vectors, batch 1, one thread) with the
//! dense kernels of every SIMD level this CPU has, all noise samples batched. Every
//! level gives the same bits (checked here once before timing). See BENCHMARKS.md.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pursamere_accel::{Accel, AlignedF32, Level};
use pursamere_core::{DenseKernels, Model, PurifierConfig};

fn bench(c: &mut Criterion) {
    let mut owned = common::OwnedModel::random(1, (28, 28), &[256, 256], true, &[256, 256], 10);
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
    let mut logits = vec![0.0; model.num_classes()];
    let macs = model.purify_macs(&cfg) + model.classifier_macs();
    let mut aligned = AlignedF32::zeroed(model.scratch_len_fast());
    let scratch = aligned.as_mut_slice();
    let mut reference = vec![0.0; model.input_len()];
    model
        .purify(&x, &cfg, &mut reference, scratch)
        .expect("purify");
    let mut group = c.benchmark_group("purify_classify_784_256_256");
    group.throughput(Throughput::Elements(macs));
    group.sample_size(20);
    for level in Level::ALL {
        let Some(accel) = Accel::with_level(level) else {
            eprintln!("{}: not available on this CPU", level.name());
            continue;
        };
        let prepared = accel.prepare(&model);
        let variants: [(&str, &dyn DenseKernels); 2] = [("accel", &accel), ("prepared", &prepared)];
        for (what, kernels) in variants {
            if what == "prepared" && level == Level::Portable {
                continue; // nothing to widen: the same as `accel_portable`
            }
            let mut out = vec![0.0; model.input_len()];
            model
                .purify_with(kernels, &x, &cfg, &mut out, scratch)
                .expect("purify");
            assert!(
                out.iter()
                    .zip(&reference)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} {} changed the bits",
                level.name()
            );
            group.bench_function(format!("k20_m8_batch1_{what}_{}", level.name()), |b| {
                b.iter(|| {
                    model
                        .purify_with(kernels, &x, &cfg, &mut out, scratch)
                        .expect("purify");
                    model
                        .classify_with(kernels, &out, &mut logits, scratch)
                        .expect("classify")
                })
            });
        }
    }
    group.finish();
}

/// The dense kernels alone, per layer shape of the workload, 8 samples at once.
fn kernels(c: &mut Criterion) {
    let mut rng = common::Rng(5);
    let mut group = c.benchmark_group("dense_batch8");
    group.sample_size(20);
    for (n, m) in [(784, 256), (256, 256), (256, 784)] {
        let owned = common::OwnedDense::random(&mut rng, n, m, 1.0);
        let pursamere_core::Layer::Dense(layer) = owned.layer() else {
            unreachable!("a dense layer")
        };
        let xs: Vec<f32> = (0..8 * n).map(|_| rng.unit() - 0.5).collect();
        // About half the coefficients zero, as after a ReLU.
        let gys: Vec<f32> = (0..8 * m).map(|_| (rng.unit() - 0.5).max(0.0)).collect();
        let mut ys = vec![0.0; 8 * m];
        let mut gxs = vec![0.0; 8 * n];
        let mut rowbuf = vec![0.0; 4 * n.max(m)];
        group.throughput(Throughput::Elements(8 * (n * m) as u64));
        for level in Level::ALL {
            let Some(accel) = Accel::with_level(level) else {
                continue;
            };
            group.bench_function(format!("forward_{n}x{m}_{}", level.name()), |b| {
                b.iter(|| accel.dense_forward_batch(&layer, &xs, &mut ys, 8, &mut rowbuf))
            });
            group.bench_function(format!("vjp_{n}x{m}_{}", level.name()), |b| {
                b.iter(|| accel.dense_vjp_batch(&layer, &gys, &mut gxs, 8, &mut rowbuf))
            });
            if level != Level::Portable {
                let prepared = accel.prepare_weights(&[layer.weights]);
                group.bench_function(format!("forward_{n}x{m}_prepared_{}", level.name()), |b| {
                    b.iter(|| prepared.dense_forward_batch(&layer, &xs, &mut ys, 8, &mut rowbuf))
                });
                group.bench_function(format!("vjp_{n}x{m}_prepared_{}", level.name()), |b| {
                    b.iter(|| prepared.dense_vjp_batch(&layer, &gys, &mut gxs, 8, &mut rowbuf))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench, kernels);
criterion_main!(benches);
