//! Every layer's forward pass and VJP against a naive f64 reference on fixed-seed
//! random shapes, with output buffers pre-filled with garbage.

mod common;

use common::{layer_forward_f64, layer_vjp_f64, OwnedDense, Rng};
use pursamere_core::Layer;

const GARBAGE: [f32; 4] = [f32::NAN, 1.0e30, -7.5, f32::INFINITY];

fn dirty(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| GARBAGE[(i + k) % 4]).collect()
}

/// `|got - want| <= tol * scale` for every element.
fn assert_close(got: &[f32], want: &[f64], scale: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= tol * s + 1e-30,
            "{what}[{i}]: got {g}, want {w}, error {err:e} > {:e}",
            tol * s
        );
    }
}

#[test]
fn dense_forward_and_vjp_match_f64_reference() {
    let mut rng = Rng(0x5EED_0001);
    // Shapes around the lane count (16) and block size (4), plus odd ones.
    let mut shapes = vec![
        (1, 1),
        (15, 3),
        (16, 4),
        (17, 5),
        (33, 7),
        (64, 9),
        (100, 13),
    ];
    for _ in 0..40 {
        shapes.push((1 + rng.below(200), 1 + rng.below(40)));
    }
    for (k, &(n, m)) in shapes.iter().enumerate() {
        let d = OwnedDense::random(&mut rng, n, m, 1.0);
        let layer = d.layer();
        let x = rng.vec(n, 1.0);
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();

        let mut y = dirty(m, k);
        layer.forward(&x, &mut y);
        let want = layer_forward_f64(&layer, &x64);
        // f32 accumulation error bound: a few ulps times the sum of |terms|.
        let Layer::Dense(dv) = layer else {
            unreachable!()
        };
        let scale: Vec<f64> = (0..m)
            .map(|o| {
                let s = f64::from(dv.scale(o));
                (0..n)
                    .map(|i| (f64::from(dv.weight(o, i)) * s * x64[i]).abs())
                    .sum::<f64>()
                    + f64::from(dv.bias(o)).abs()
            })
            .collect();
        assert_close(
            &y,
            &want,
            &scale,
            1e-6 * (n as f64).sqrt().max(4.0),
            "forward",
        );

        let gy = rng.vec(m, 1.0);
        let gy64: Vec<f64> = gy.iter().map(|&v| f64::from(v)).collect();
        let mut gx = dirty(n, k + 1);
        layer.vjp(&x, &gy, &mut gx);
        let want = layer_vjp_f64(&layer, &x64, &gy64);
        let scale: Vec<f64> = (0..n)
            .map(|i| {
                (0..m)
                    .map(|o| (f64::from(dv.weight(o, i)) * f64::from(dv.scale(o)) * gy64[o]).abs())
                    .sum::<f64>()
            })
            .collect();
        assert_close(&gx, &want, &scale, 1e-6 * (m as f64).sqrt().max(4.0), "vjp");
    }
}

#[test]
fn dense_vjp_with_sparse_coefficients_matches_reference() {
    // Zero coefficients are skipped by the kernel; make sure the skipping keeps
    // rows and coefficients paired.
    let mut rng = Rng(0x5EED_0002);
    for k in 0..20 {
        let (n, m) = (1 + rng.below(70), 1 + rng.below(30));
        let d = OwnedDense::random(&mut rng, n, m, 1.0);
        let layer = d.layer();
        let gy: Vec<f32> = (0..m)
            .map(|_| if rng.below(3) == 0 { rng.sym(1.0) } else { 0.0 })
            .collect();
        let gy64: Vec<f64> = gy.iter().map(|&v| f64::from(v)).collect();
        let mut gx = dirty(n, k);
        layer.vjp(&vec![0.0; n], &gy, &mut gx);
        let want = layer_vjp_f64(&layer, &vec![0.0; n], &gy64);
        let scale = vec![want.iter().map(|v| v.abs()).sum::<f64>().max(1.0); n];
        assert_close(&gx, &want, &scale, 1e-5, "sparse vjp");
    }
}

#[test]
fn relu_forward_and_vjp_match_reference() {
    let mut rng = Rng(0x5EED_0003);
    for k in 0..10 {
        let n = 1 + rng.below(50);
        let mut x = rng.vec(n, 1.0);
        x[0] = 0.0; // the kink: derivative defined as 0
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let mut y = dirty(n, k);
        Layer::Relu.forward(&x, &mut y);
        let want = layer_forward_f64(&Layer::Relu, &x64);
        assert_close(&y, &want, &vec![0.0; n], 0.0, "relu forward");
        let gy = rng.vec(n, 1.0);
        let gy64: Vec<f64> = gy.iter().map(|&v| f64::from(v)).collect();
        let mut gx = dirty(n, k);
        Layer::Relu.vjp(&x, &gy, &mut gx);
        let want = layer_vjp_f64(&Layer::Relu, &x64, &gy64);
        assert_close(&gx, &want, &vec![0.0; n], 0.0, "relu vjp");
        assert_eq!(gx[0], 0.0);
    }
}

#[test]
fn quantisation_rule_is_symmetric_per_row() {
    use pursamere_core::quantize::{quantize_per_channel, quantize_value, row_scale};
    let w = [0.5f32, -1.27, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let mut q = [0i8; 8];
    let mut s = [0f32; 2];
    assert!(quantize_per_channel(&w, 4, &mut q, &mut s));
    assert_eq!(s[0], 1.27 / 127.0);
    assert_eq!(q[..4], [50, -127, 0, 100]);
    // An all-zero row keeps a finite positive scale.
    assert_eq!(s[1], 1.0);
    assert_eq!(q[4..], [0, 0, 0, 0]);
    assert_eq!(row_scale(&[-2.54]), 0.02);
    assert_eq!(quantize_value(1e9, 1.0), 127);
    assert_eq!(quantize_value(-1e9, 1.0), -127);
    assert_eq!(quantize_value(0.5, 1.0), 1); // half away from zero
    assert!(!quantize_per_channel(&w, 3, &mut q, &mut s));
}

#[test]
fn batched_model_gradient_is_bit_identical_to_unbatched() {
    // A model wide enough that the batched kernels see full 4-row blocks, partial
    // blocks, and sparse ReLU masks.
    let owned = common::OwnedModel::random(41, (5, 7), &[37, 22], true, &[9], 4);
    let bytes = owned.bytes();
    let model = pursamere_core::Model::parse(&bytes).unwrap();
    let mut rng = Rng(8);
    for m in [1u32, 2, 3, 7] {
        let cfg = pursamere_core::PurifierConfig {
            noise_samples: m,
            ..model.purifier_config()
        };
        let x: Vec<f32> = (0..35).map(|_| rng.unit()).collect();
        let mut reference = None;
        for batch in 1..=m as usize {
            let mut g = vec![f32::NAN; 35];
            let mut scratch = dirty(model.ere_scratch_len_batched(&cfg, batch), batch);
            let f = model
                .ere_value_and_grad(&x, &cfg, &mut g, &mut scratch)
                .unwrap();
            let bits: Vec<u32> = std::iter::once(f).chain(g).map(f32::to_bits).collect();
            match &reference {
                None => reference = Some(bits),
                Some(r) => assert_eq!(r, &bits, "M = {m}, batch = {batch}"),
            }
        }
    }
}
