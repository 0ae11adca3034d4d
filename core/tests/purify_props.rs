//! Property tests of the purifier on a small random model.

mod common;

use std::sync::OnceLock;

use common::OwnedModel;
use proptest::prelude::*;
use pursamere_core::{Error, Model, PurifierConfig, StepRule};

fn model_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| OwnedModel::random(21, (3, 4), &[10, 9], true, &[6], 3).bytes())
}

fn model() -> Model<'static> {
    Model::parse(model_bytes()).unwrap()
}

const D: usize = 12;

fn config() -> impl Strategy<Value = PurifierConfig> {
    (
        0.05f32..1.0,
        1u32..6,
        0u32..6,
        0.001f32..0.5,
        prop_oneof![Just(0.0f32), 0.0f32..0.2],
        prop_oneof![Just(0.0f32), 0.0f32..0.5, Just(2.0f32)],
        prop_oneof![Just(StepRule::Gradient), Just(StepRule::Sign)],
        any::<u64>(),
    )
        .prop_map(
            |(sigma, m, k, eta, rho, radius, step, seed)| PurifierConfig {
                sigma,
                noise_samples: m,
                iters: k,
                eta,
                rho,
                radius,
                step,
                seed,
                ..common::default_config()
            },
        )
}

fn image() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0], D)
}

fn purify(m: &Model<'_>, x: &[f32], cfg: &PurifierConfig, garbage: f32) -> Vec<f32> {
    purify_batched(m, x, cfg, garbage, 1)
}

/// Purifies with scratch for `batch` noise samples at once.
fn purify_batched(
    m: &Model<'_>,
    x: &[f32],
    cfg: &PurifierConfig,
    garbage: f32,
    batch: usize,
) -> Vec<f32> {
    let mut out = vec![garbage; D];
    let mut scratch = vec![garbage; m.purify_scratch_len_batched(cfg, batch)];
    m.purify(x, cfg, &mut out, &mut scratch).unwrap();
    out
}

/// Projection written independently from the documented rule.
fn project(x0: f32, v: f32, delta: f32) -> f32 {
    let lo = (x0 - delta).max(0.0);
    let hi = (x0 + delta).min(1.0);
    if v.is_nan() || v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// The SAM loop written again from DESIGN.md on top of the public `∇F`.
fn reference_purify(m: &Model<'_>, x0: &[f32], cfg: &PurifierConfig) -> Vec<f32> {
    let mut x = x0.to_vec();
    let mut g = vec![0.0; D];
    let mut scratch = vec![0.0; m.ere_scratch_len(cfg)];
    for _ in 0..cfg.iters {
        let mut point = x.clone();
        if cfg.rho > 0.0 {
            m.ere_value_and_grad(&x, cfg, &mut g, &mut scratch).unwrap();
            // Same fixed-order norm as the core: sum of squares in 16 lanes, tree.
            let n = lane_norm(&g);
            if n > 0.0 && n.is_finite() {
                let s = cfg.rho / n;
                for i in 0..D {
                    point[i] = x[i] + g[i] * s;
                }
            }
        }
        m.ere_value_and_grad(&point, cfg, &mut g, &mut scratch)
            .unwrap();
        for i in 0..D {
            let step = match cfg.step {
                StepRule::Gradient => g[i],
                StepRule::Sign => {
                    if g[i] > 0.0 {
                        1.0
                    } else if g[i] < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }
            };
            x[i] = project(x0[i], x[i] - cfg.eta * step, cfg.radius);
        }
    }
    x
}

fn lane_norm(g: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (i, &v) in g.iter().enumerate() {
        acc[i % 16] += v * v;
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            acc[k] += acc[k + w];
        }
    }
    acc[0].sqrt()
}

proptest! {
    #[test]
    fn output_stays_in_ball_and_unit_box(x in image(), cfg in config()) {
        let m = model();
        let out = purify(&m, &x, &cfg, f32::NAN);
        for (i, (&o, &x0)) in out.iter().zip(&x).enumerate() {
            prop_assert!((0.0..=1.0).contains(&o), "pixel {i} = {o} outside [0, 1]");
            prop_assert!(
                (f64::from(o) - f64::from(x0)).abs() <= f64::from(cfg.radius) + 1e-6,
                "pixel {i}: |{o} - {x0}| > delta {}", cfg.radius
            );
        }
    }

    #[test]
    fn same_input_gives_same_bytes(x in image(), cfg in config()) {
        let m = model();
        let a = purify(&m, &x, &cfg, f32::NAN);
        let b = purify(&m, &x, &cfg, 1.0e30);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&a), bits(&b));
        // Every noise batch size (more scratch) gives the same bits.
        for batch in 2..=cfg.noise_samples as usize {
            let c = purify_batched(&m, &x, &cfg, -3.0, batch);
            prop_assert_eq!(bits(&a), bits(&c), "batch {}", batch);
        }
    }

    #[test]
    fn a_noise_table_gives_the_same_bytes(x in image(), cfg in config()) {
        let m = model();
        let a = purify(&m, &x, &cfg, f32::NAN);
        let mut buf = vec![f32::NAN; m.noise_table_len(&cfg) + 3];
        let table = m.noise_table(&cfg, &mut buf).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for batch in [1, cfg.noise_samples as usize] {
            let mut out = vec![-1.0; D];
            let mut scratch = vec![7.0e20; m.purify_scratch_len_batched(&cfg, batch)];
            m.purify_with_noise(&pursamere_core::Portable, &x, &cfg, &table, &mut out, &mut scratch)
                .unwrap();
            prop_assert_eq!(bits(&a), bits(&out), "batch {}", batch);
        }
    }

    #[test]
    fn zero_steps_or_zero_radius_return_the_input(x in image(), cfg in config()) {
        let m = model();
        let k0 = PurifierConfig { iters: 0, ..cfg };
        prop_assert_eq!(purify(&m, &x, &k0, f32::NAN), x.clone());
        // K = 0 needs no scratch at all.
        prop_assert_eq!(m.purify_scratch_len(&k0), 0);
        let mut out = vec![f32::NAN; x.len()];
        m.purify(&x, &k0, &mut out, &mut []).unwrap();
        prop_assert_eq!(&out, &x);
        let d0 = PurifierConfig { radius: 0.0, ..cfg };
        prop_assert_eq!(purify(&m, &x, &d0, f32::NAN), x);
    }

    #[test]
    fn rho_zero_is_projected_gradient_descent(x in image(), cfg in config()) {
        let m = model();
        let cfg = PurifierConfig { rho: 0.0, ..cfg };
        let mut want = x.clone();
        let mut g = vec![0.0; D];
        let mut scratch = vec![0.0; m.ere_scratch_len(&cfg)];
        for _ in 0..cfg.iters {
            m.ere_value_and_grad(&want, &cfg, &mut g, &mut scratch).unwrap();
            for i in 0..D {
                let step = match cfg.step {
                    StepRule::Gradient => g[i],
                    StepRule::Sign => if g[i] > 0.0 { 1.0 } else if g[i] < 0.0 { -1.0 } else { 0.0 },
                };
                want[i] = project(x[i], want[i] - cfg.eta * step, cfg.radius);
            }
        }
        prop_assert_eq!(purify(&m, &x, &cfg, f32::NAN), want);
    }

    #[test]
    fn sam_loop_matches_an_independent_implementation(x in image(), cfg in config()) {
        let m = model();
        prop_assert_eq!(purify(&m, &x, &cfg, 3.0), reference_purify(&m, &x, &cfg));
    }
}

#[test]
fn purification_lowers_the_ere_on_average() {
    // Not a guarantee for a random network, but small gradient steps must not
    // increase F at a generic point: a check that the step goes downhill.
    let m = model();
    let cfg = PurifierConfig {
        iters: 1,
        rho: 0.0,
        eta: 1e-3,
        radius: 1.0,
        ..m.purifier_config()
    };
    let x: Vec<f32> = (0..D).map(|i| 0.3 + 0.03 * i as f32).collect();
    let out = purify(&m, &x, &cfg, 0.0);
    let mut g = vec![0.0; D];
    let mut s = vec![0.0; m.ere_scratch_len(&cfg)];
    let f0 = m.ere_value_and_grad(&x, &cfg, &mut g, &mut s).unwrap();
    let f1 = m.ere_value_and_grad(&out, &cfg, &mut g, &mut s).unwrap();
    assert!(f1 < f0, "F went from {f0} to {f1}");
}

#[test]
fn bad_calls_are_errors_not_panics() {
    let m = model();
    let cfg = m.purifier_config();
    let need = m.purify_scratch_len(&cfg);
    let x = vec![0.5f32; D];
    let mut out = vec![0.0; D];
    let mut scratch = vec![0.0; need];
    assert_eq!(
        m.purify(&x[..D - 1], &cfg, &mut out, &mut scratch),
        Err(Error::InputLength {
            expected: D,
            found: D - 1
        })
    );
    let mut nan = x.clone();
    nan[3] = f32::NAN;
    assert_eq!(
        m.purify(&nan, &cfg, &mut out, &mut scratch),
        Err(Error::NonFiniteInput { index: 3 })
    );
    let mut big = x.clone();
    big[5] = 1.5;
    assert_eq!(
        m.purify(&big, &cfg, &mut out, &mut scratch),
        Err(Error::InputOutOfRange { index: 5 })
    );
    assert_eq!(
        m.purify(&x, &cfg, &mut out, &mut scratch[..need - 1]),
        Err(Error::BufferLength {
            buffer: "scratch",
            expected: need,
            found: need - 1
        })
    );
    assert_eq!(
        m.purify(&x, &cfg, &mut out[..2], &mut scratch),
        Err(Error::BufferLength {
            buffer: "output",
            expected: D,
            found: 2
        })
    );
    for bad in [
        PurifierConfig { sigma: 0.0, ..cfg },
        PurifierConfig {
            sigma: f32::NAN,
            ..cfg
        },
        PurifierConfig {
            noise_samples: 0,
            ..cfg
        },
        PurifierConfig {
            iters: pursamere_core::MAX_ITERS + 1,
            ..cfg
        },
        PurifierConfig { eta: -1.0, ..cfg },
        PurifierConfig {
            rho: f32::INFINITY,
            ..cfg
        },
        PurifierConfig {
            radius: -0.1,
            ..cfg
        },
    ] {
        let e = m.purify(&x, &bad, &mut out, &mut scratch).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{bad:?} gave {e:?}");
        assert!(!e.to_string().is_empty());
    }
    let mut logits = vec![0.0; 3];
    let mut inf = x.clone();
    inf[0] = f32::NEG_INFINITY;
    assert_eq!(
        m.classify(&inf, &mut logits, &mut scratch),
        Err(Error::NonFiniteInput { index: 0 })
    );
    assert_eq!(
        m.classify(&x, &mut logits[..2], &mut scratch),
        Err(Error::BufferLength {
            buffer: "logits",
            expected: 3,
            found: 2
        })
    );
    let label = m.classify(&x, &mut logits, &mut scratch).unwrap();
    let best = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(logits[label], best);
}

#[test]
fn a_noise_table_holds_sigma_times_the_generator_and_refuses_other_settings() {
    let m = model();
    let cfg = PurifierConfig {
        noise_samples: 3,
        iters: 2,
        ..m.purifier_config()
    };
    assert_eq!(m.noise_table_len(&cfg), 3 * D);
    let mut short = vec![0.0; 3 * D - 1];
    assert_eq!(
        m.noise_table(&cfg, &mut short).err(),
        Some(Error::BufferLength {
            buffer: "noise table",
            expected: 3 * D,
            found: 3 * D - 1
        })
    );
    let bad = PurifierConfig { sigma: -1.0, ..cfg };
    let mut buf = vec![0.0; 3 * D];
    assert!(matches!(
        m.noise_table(&bad, &mut buf),
        Err(Error::Config(_))
    ));
    let table = m.noise_table(&cfg, &mut buf).unwrap();
    for (k, &v) in table.values().iter().enumerate() {
        let (mm, i) = ((k / D) as u32, (k % D) as u32);
        let expected = cfg.sigma * cfg.noise.sample(cfg.seed, mm, i);
        assert_eq!(v.to_bits(), expected.to_bits(), "sample {mm}, index {i}");
    }
    let x = vec![0.25f32; D];
    let mut out = vec![0.0; D];
    let mut scratch = vec![0.0; m.purify_scratch_len(&cfg)];
    for other in [
        PurifierConfig {
            seed: cfg.seed ^ 1,
            ..cfg
        },
        PurifierConfig {
            sigma: cfg.sigma * 0.5,
            ..cfg
        },
        PurifierConfig {
            noise_samples: 2,
            ..cfg
        },
    ] {
        let mut scratch = vec![0.0; m.purify_scratch_len(&other)];
        assert_eq!(
            m.purify_with_noise(
                &pursamere_core::Portable,
                &x,
                &other,
                &table,
                &mut out,
                &mut scratch
            ),
            Err(Error::NoiseTableMismatch),
            "{other:?}"
        );
    }
    // Settings the noise does not depend on may differ.
    let steps = PurifierConfig {
        iters: 4,
        eta: cfg.eta * 2.0,
        ..cfg
    };
    let mut a = vec![0.0; D];
    m.purify(&x, &steps, &mut a, &mut scratch).unwrap();
    m.purify_with_noise(
        &pursamere_core::Portable,
        &x,
        &steps,
        &table,
        &mut out,
        &mut scratch,
    )
    .unwrap();
    assert_eq!(a, out);
    // Another model with another input length.
    let bytes = OwnedModel::random(22, (2, 3), &[5], true, &[4], 3).bytes();
    let small = Model::parse(&bytes).unwrap();
    let small_cfg = PurifierConfig {
        noise_samples: 3,
        ..small.purifier_config()
    };
    let (mut o, mut sc) = (
        vec![0.0; 6],
        vec![0.0; small.purify_scratch_len(&small_cfg)],
    );
    let shared = PurifierConfig {
        seed: small_cfg.seed,
        sigma: small_cfg.sigma,
        noise: small_cfg.noise,
        ..small_cfg
    };
    let mut buf2 = vec![0.0; m.noise_table_len(&shared)];
    let foreign = m.noise_table(&shared, &mut buf2).unwrap();
    assert_eq!(
        small.purify_with_noise(
            &pursamere_core::Portable,
            &[0.5; 6],
            &shared,
            &foreign,
            &mut o,
            &mut sc
        ),
        Err(Error::NoiseTableMismatch)
    );
}
