//! Every SIMD level gives exactly the bits of the core's portable kernels: the
//! kernels one by one against a naive scalar reference of the numeric definition
//! (and against `Portable`) on fixed-seed random shapes with dirty output and
//! scratch buffers, property tests over shapes and values, and whole purifications
//! and ERE gradients (random MLPs, a convolutional model, the shipped model).

#[path = "../../core/tests/common/mod.rs"]
mod common;

use common::{OwnedDense, OwnedModel, Rng};
use proptest::prelude::*;
use pursamere_accel::{Accel, Level};
use pursamere_core::{Dense, DenseKernels, Layer, Model, Norm, Portable, PurifierConfig, StepRule};

/// The levels this CPU has, portable first.
fn levels() -> Vec<Accel> {
    Level::ALL
        .into_iter()
        .filter_map(Accel::with_level)
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn dense(o: &OwnedDense) -> Dense<'_> {
    match o.layer() {
        Layer::Dense(d) => d,
        _ => unreachable!("a dense layer"),
    }
}

/// The numeric definition, written out naively: sixteen interleaved partial sums
/// combined by the fixed tree, then `· scale + bias`.
fn naive_forward(d: &Dense<'_>, x: &[f32]) -> Vec<f32> {
    let n = d.inputs as usize;
    (0..d.outputs as usize)
        .map(|o| {
            let mut s = [0.0f32; 16];
            for (i, &xi) in x.iter().enumerate().take(n) {
                s[i % 16] += f32::from(d.weight(o, i)) * xi;
            }
            let s8: Vec<f32> = (0..8).map(|k| s[k] + s[k + 8]).collect();
            let s4: Vec<f32> = (0..4).map(|k| s8[k] + s8[k + 4]).collect();
            let dot = (s4[0] + s4[2]) + (s4[1] + s4[3]);
            dot * d.scale(o) + d.bias(o)
        })
        .collect()
}

/// `gx[i] = Σ_o w[o][i] · (scale[o] · gy[o])`, rows in increasing order, all rows.
fn naive_vjp(d: &Dense<'_>, gy: &[f32]) -> Vec<f32> {
    let n = d.inputs as usize;
    let mut gx = vec![0.0f32; n];
    for (o, &g) in gy.iter().enumerate().take(d.outputs as usize) {
        let c = d.scale(o) * g;
        for (i, v) in gx.iter_mut().enumerate() {
            *v += f32::from(d.weight(o, i)) * c;
        }
    }
    gx
}

/// Random inputs with the awkward values a purification produces: exact zeros of
/// both signs (ReLU, skipped rows), whole zero rows, large and tiny magnitudes.
fn awkward(rng: &mut Rng, len: usize, zero_frac: f32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let u = rng.unit();
            if u < zero_frac {
                if rng.unit() < 0.5 {
                    0.0
                } else {
                    -0.0
                }
            } else if u < zero_frac + 0.02 {
                rng.sym(1e-30)
            } else if u < zero_frac + 0.04 {
                rng.sym(1e20)
            } else {
                rng.sym(2.0)
            }
        })
        .collect()
}

/// One layer, one batch: every level against the naive reference and `Portable`,
/// outputs and scratch prefilled with garbage.
fn check_layer(rng: &mut Rng, n: usize, m: usize, batch: usize, zero_frac: f32) {
    let owned = OwnedDense::random(rng, n, m, 1.0);
    let d = dense(&owned);
    let xs = awkward(rng, batch * n, zero_frac);
    let mut gys = awkward(rng, batch * m, zero_frac);
    // A row that is zero for every sample, when there are several rows.
    if m > 2 {
        let o = rng.below(m);
        for b in 0..batch {
            gys[b * m + o] = 0.0;
        }
    }
    let want_y: Vec<f32> = xs.chunks(n).flat_map(|x| naive_forward(&d, x)).collect();
    let want_gx: Vec<f32> = gys.chunks(m).flat_map(|g| naive_vjp(&d, g)).collect();
    let mut kernels: Vec<(String, Box<dyn DenseKernels + '_>)> =
        vec![("Portable".into(), Box::new(Portable))];
    for a in levels() {
        kernels.push((a.level().name().into(), Box::new(a)));
        kernels.push((
            format!("prepared {}", a.level().name()),
            Box::new(a.prepare_weights(&[d.weights])),
        ));
    }
    for (name, k) in &kernels {
        for rowbuf_len in [0, 4 * n, 4 * n + 7] {
            let mut rowbuf = vec![f32::NAN; rowbuf_len];
            let mut ys = vec![f32::NAN; batch * m];
            let mut gxs = vec![-7.5f32; batch * n];
            k.dense_forward_batch(&d, &xs, &mut ys, batch, &mut rowbuf);
            k.dense_vjp_batch(&d, &gys, &mut gxs, batch, &mut rowbuf);
            assert_eq!(
                bits(&ys),
                bits(&want_y),
                "{name}: forward {n}→{m}, batch {batch}, rowbuf {rowbuf_len}"
            );
            assert_eq!(
                bits(&gxs),
                bits(&want_gx),
                "{name}: VJP {n}→{m}, batch {batch}, rowbuf {rowbuf_len}"
            );
        }
    }
}

#[test]
fn kernels_match_the_naive_reference_on_fixed_shapes() {
    let mut rng = Rng(11);
    for n in [1, 3, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 100, 256, 784] {
        for m in [1, 2, 3, 5, 8] {
            for batch in [1, 2, 3, 4, 7, 8, 9, 16, 17] {
                // Mostly non-zero and mostly zero output gradients: the prepared
                // kernels take a different VJP path for each.
                check_layer(&mut rng, n, m, batch, 0.05);
                check_layer(&mut rng, n, m, batch, 0.6);
            }
        }
    }
}

#[test]
fn kernels_match_on_the_benchmark_shapes() {
    let mut rng = Rng(12);
    for (n, m) in [(784, 256), (256, 256), (256, 784), (256, 10)] {
        for batch in [1, 8] {
            check_layer(&mut rng, n, m, batch, 0.0);
            check_layer(&mut rng, n, m, batch, 0.5);
        }
    }
}

#[test]
fn mismatched_lengths_fall_back_without_panicking() {
    let mut rng = Rng(13);
    let owned = OwnedDense::random(&mut rng, 20, 6, 1.0);
    let d = dense(&owned);
    for a in levels() {
        // Short outputs: the portable kernels' common-prefix behaviour.
        let xs = rng.vec(2 * 20, 1.0);
        let (mut y1, mut y2) = (vec![0.0; 7], vec![0.0; 7]);
        a.dense_forward_batch(&d, &xs, &mut y1, 2, &mut []);
        Portable.dense_forward_batch(&d, &xs, &mut y2, 2, &mut []);
        assert_eq!(bits(&y1), bits(&y2));
        let gys = rng.vec(2 * 6, 1.0);
        let (mut g1, mut g2) = (vec![0.0; 25], vec![0.0; 25]);
        a.dense_vjp_batch(&d, &gys, &mut g1, 2, &mut []);
        Portable.dense_vjp_batch(&d, &gys, &mut g2, 2, &mut []);
        assert_eq!(bits(&g1), bits(&g2));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn kernels_match_on_random_shapes(
        seed in any::<u64>(),
        n in 1usize..140,
        m in 1usize..12,
        batch in 1usize..20,
        zero_frac in 0.0f32..0.9,
    ) {
        check_layer(&mut Rng(seed), n, m, batch, zero_frac);
    }
}

/// Purification and ERE gradient with every level, minimum and fast scratch (dirty),
/// against the core's own `purify`.
fn check_model(bytes: &[u8], configs: &[PurifierConfig]) {
    let model = Model::parse(bytes).expect("valid model");
    let mut rng = Rng(21);
    let x: Vec<f32> = (0..model.input_len()).map(|_| rng.unit()).collect();
    for cfg in configs {
        let fast = model.purify_scratch_len_batched(cfg, cfg.noise_samples as usize);
        let mut want = vec![0.0; x.len()];
        let mut scratch = vec![f32::NAN; fast];
        model
            .purify(&x, cfg, &mut want, &mut scratch)
            .expect("purify");
        let mut want_g = vec![0.0; x.len()];
        let want_f = model
            .ere_value_and_grad(&x, cfg, &mut want_g, &mut scratch)
            .expect("ere");
        let mut kernels: Vec<(String, Box<dyn DenseKernels + '_>)> = Vec::new();
        for a in levels() {
            kernels.push((a.level().name().into(), Box::new(a)));
            kernels.push((
                format!("prepared {}", a.level().name()),
                Box::new(a.prepare(&model)),
            ));
        }
        for (name, a) in &kernels {
            for len in [model.purify_scratch_len(cfg), fast, fast + 5] {
                let mut scratch = vec![f32::NAN; len];
                let mut got = vec![0.0; x.len()];
                model
                    .purify_with(a.as_ref(), &x, cfg, &mut got, &mut scratch)
                    .expect("purify_with");
                assert_eq!(bits(&got), bits(&want), "{name}, scratch {len}");
                let mut g = vec![0.0; x.len()];
                let f = model
                    .ere_value_and_grad_with(a.as_ref(), &x, cfg, &mut g, &mut scratch)
                    .expect("ere_with");
                assert_eq!(f.to_bits(), want_f.to_bits());
                assert_eq!(bits(&g), bits(&want_g), "{name} gradient");
            }
        }
    }
}

fn configs() -> Vec<PurifierConfig> {
    let base = common::default_config();
    vec![
        base,
        PurifierConfig {
            noise_samples: 11,
            iters: 3,
            ..base
        },
        PurifierConfig {
            noise_samples: 1,
            rho: 0.0,
            norm: Norm::L2,
            radius: 1.5,
            step: StepRule::Sign,
            ..base
        },
        PurifierConfig {
            noise_samples: 8,
            iters: 2,
            sigma: 0.5,
            ..base
        },
    ]
}

#[test]
fn purification_is_bit_identical_on_random_mlps() {
    for (seed, residual) in [(1, true), (2, false)] {
        let owned = OwnedModel::random(seed, (9, 7), &[40, 19], residual, &[24], 10);
        check_model(&owned.bytes(), &configs());
    }
}

#[test]
fn purification_is_bit_identical_on_a_conv_model() {
    let owned = common::OwnedAnyModel::small_conv(3);
    check_model(&owned.bytes(), &configs());
}

#[test]
fn purification_is_bit_identical_on_the_shipped_model() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.psm"
    ))
    .expect("fixtures/mnist.psm");
    let model = Model::parse(&bytes).expect("valid model");
    let cfg = PurifierConfig {
        iters: 2,
        ..model.purifier_config()
    };
    check_model(&bytes, &[cfg]);
}

#[test]
fn detect_honours_the_cap() {
    // `detect` never picks a level the CPU lacks; `portable` is always available.
    assert!(Accel::detect().level().available());
    assert_eq!(Accel::portable().level(), Level::Portable);
    assert!(Accel::with_level(Level::Portable).is_some());
}
