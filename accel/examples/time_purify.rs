//! The benchmark workload of `cargo bench -p pursamere-core --bench purify` timed
//! exactly as `scripts/peer_purify_jax.py` times its peer (best and median of five
//! rounds of many calls), for a like-for-like comparison on a noisy machine:
//!
//! ```sh
//! cargo run --release -p pursamere-accel --example time_purify
//! ```

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::time::Instant;

use pursamere_accel::{Accel, AlignedF32, Level};
use pursamere_core::{DenseKernels, Model, Portable, PurifierConfig};

fn main() {
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
    let macs = (model.purify_macs(&cfg) + model.classifier_macs()) as f64;
    let mut aligned = AlignedF32::zeroed(model.scratch_len_fast());
    let scratch = aligned.as_mut_slice();
    let mut out = vec![0.0; x.len()];
    let mut logits = vec![0.0; model.num_classes()];
    let mut reference = vec![0.0; x.len()];
    model
        .purify(&x, &cfg, &mut reference, scratch)
        .expect("purify");
    let best = Accel::detect();
    let prepared = best.prepare(&model);
    // The noise depends on the settings, not the image: generated once, as the JAX
    // peer's noise is a constant of its compiled function.
    let mut noise_buf = vec![0.0; model.noise_table_len(&cfg)];
    let table = model
        .noise_table(&cfg, &mut noise_buf)
        .expect("noise table");
    // (name, kernels, noise generated once per configuration rather than per call)
    let mut variants: Vec<(String, &dyn DenseKernels, bool)> =
        vec![("core portable".into(), &Portable, false)];
    if best.level() != Level::Portable {
        let level = best.level().name();
        variants.push((format!("accel {level}"), &best, false));
        variants.push((format!("prepared {level}"), &prepared, false));
        variants.push((format!("prepared {level}, noise table"), &prepared, true));
    }
    println!("ours: {macs} MACs per image, batch 1, one thread");
    for (name, k, once) in variants {
        let purify = |out: &mut [f32], scratch: &mut [f32]| {
            if once {
                model.purify_with_noise(k, &x, &cfg, &table, out, scratch)
            } else {
                model.purify_with(k, &x, &cfg, out, scratch)
            }
            .expect("purify")
        };
        purify(&mut out, scratch);
        assert!(
            out.iter()
                .zip(&reference)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} changed the bits"
        );
        let mut run = || {
            purify(&mut out, scratch);
            model
                .classify_with(k, &out, &mut logits, scratch)
                .expect("classify");
        };
        run();
        let reps = 40;
        let mut rounds: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    run();
                }
                t.elapsed().as_secs_f64() / f64::from(reps)
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        println!(
            "{name}: best {:.3} ms, median {:.3} ms per image, {:.1} GMAC/s (best of 5 x {reps} calls)",
            1e3 * rounds[0],
            1e3 * rounds[2],
            macs / rounds[0] / 1e9
        );
    }
}
