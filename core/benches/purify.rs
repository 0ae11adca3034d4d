//! One purification + classification at batch 1 on one thread: a 784-256-256-784
//! residual denoiser and a 784-256-256-10 classifier (random int8 weights),
//! K = 20 SAM steps, M = 8 noise vectors. Throughput is reported in MACs
//! ("elem/s" in criterion's output = MAC/s). See BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pursamere_core::{Model, PurifierConfig};

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
    let mut out = vec![0.0; model.input_len()];
    let mut logits = vec![0.0; model.num_classes()];
    let macs = model.purify_macs(&cfg) + model.classifier_macs();
    eprintln!(
        "MACs per purification + classification: {macs} (denoiser forward {}, classifier {})",
        model.denoiser_macs(),
        model.classifier_macs()
    );
    let mut group = c.benchmark_group("purify_classify_784_256_256");
    group.throughput(Throughput::Elements(macs));
    group.sample_size(20);
    // `fast`: scratch for all M noise samples at once (host default);
    // `min_scratch`: the minimum, one noise sample at a time (what a microcontroller
    // uses). Both give the same bits.
    for (name, len) in [
        ("k20_m8_batch1_fast", model.scratch_len_fast()),
        ("k20_m8_batch1_min_scratch", model.scratch_len()),
    ] {
        let mut scratch = vec![0.0; len];
        group.bench_function(name, |b| {
            b.iter(|| {
                model
                    .purify(&x, &cfg, &mut out, &mut scratch)
                    .expect("purify");
                model
                    .classify(&out, &mut logits, &mut scratch)
                    .expect("classify")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
