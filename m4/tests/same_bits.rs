//! The device kernels give the core's bits (on the host, with the DSP instructions
//! emulated and the float kernel's portable twin): random int8 and float layers of
//! many shapes, dirty output buffers. (The `asm!` themselves run under QEMU: the
//! firmware test compares every image's digest with the host.)

use pursamere_core::{Conv2d, Dense, DenseKernels, Int8Conv2d, Int8Dense, Layer, Portable};
use pursamere_m4::{M4Kernels, MAX_INPUT};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| lo + (hi - lo) * (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .collect()
    }
    fn le(&mut self, n: usize, lo: f32, hi: f32) -> Vec<u8> {
        self.f32s(n, lo, hi)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// [`bits`] with every NaN as the canonical quiet NaN: a NaN's sign and payload are
/// not reproducible (x86 makes a negative NaN of `∞ · 0`, and the compiler may swap
/// the operands of an addition, which decides whose NaN comes out); every other
/// value is compared bit for bit.
fn bits_nan(v: &[f32]) -> Vec<u32> {
    v.iter()
        .map(|x| {
            if x.is_nan() {
                f32::NAN.to_bits()
            } else {
                x.to_bits()
            }
        })
        .collect()
}

/// The core's ReLU.
fn relu(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    Layer::Relu.forward(x, &mut y);
    y
}

#[test]
fn int8_dense_is_bit_identical_to_the_core() {
    let mut rng = Rng(1);
    for &(n, m) in &[
        (1, 1),
        (3, 2),
        (4, 4),
        (5, 7),
        (8, 3),
        (31, 9),
        (64, 10),
        (256, 3),
        (257, 5),
        (1568, 64),
        (MAX_INPUT, 3),
        (MAX_INPUT + 3, 2), // too large: the core's kernel
    ] {
        let (w, sc, b) = (
            rng.bytes(n * m),
            rng.le(m, 1e-4, 1e-2),
            rng.le(m, -1.0, 1.0),
        );
        // Inputs past the clamp on both sides, and a NaN.
        let mut x = rng.f32s(n, -2.0, 3.0);
        x[n / 2] = f32::NAN;
        let layer = Int8Dense {
            input_multiplier: 60.0,
            dense: Dense {
                inputs: n as u32,
                outputs: m as u32,
                weights: &w,
                scales: &sc,
                bias: &b,
            },
        };
        for relu_input in [false, true] {
            // With `relu_input`, the layer of relu(x) (the ReLU fused into the
            // quantisation): the core's fused kernel, and the core's layer on relu(x).
            let mut want = vec![-7.5f32; m];
            let mut unfused = vec![-7.5f32; m];
            if relu_input {
                layer.forward_with(&x, &mut want, true);
                Layer::Int8Dense(layer).forward(&relu(&x), &mut unfused);
            } else {
                Layer::Int8Dense(layer).forward(&x, &mut want);
                Layer::Int8Dense(layer).forward(&x, &mut unfused);
            }
            assert_eq!(bits(&want), bits(&unfused));
            let mut got = vec![1e30f32; m];
            M4Kernels.int8_dense_forward(&layer, &x, &mut got, relu_input);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{n} → {m}, ReLU input {relu_input}"
            );
        }
    }
}

#[test]
fn int8_conv_is_bit_identical_to_the_core() {
    let mut rng = Rng(2);
    // (cin, h, w, cout, k, s, p)
    for &(cin, h, w, cout, k, s, p) in &[
        (1, 28, 28, 16, 3, 2, 1),
        (16, 14, 14, 32, 3, 2, 1),
        (1, 8, 8, 4, 3, 1, 1),
        // Single-channel 3×3 (its own kernel): odd position counts, no padding,
        // stride 3, more positions than one patch run, 64 channels, and too large
        // for its halfword plane (then the general kernel).
        (1, 7, 5, 3, 3, 1, 0),
        (1, 9, 13, 5, 3, 3, 1),
        (1, 20, 17, 2, 3, 1, 1),
        (1, 6, 6, 64, 3, 1, 1),
        (1, 6, 6, 65, 3, 2, 1),
        (1, 3, 3, 1, 3, 1, 0),
        (1, 32, 32, 4, 3, 1, 1),
        (1, 3, 140, 2, 3, 2, 1), // a row wider than one patch run: the general kernel
        (1, 50, 50, 3, 3, 2, 1),
        // Stride 2 with an even output width ≥ 4 (the stride-2 stream kernel): widths
        // 4 and 8 (whole groups of four), 6 and 10 (a last pair), an odd padded width,
        // no padding.
        (1, 8, 8, 2, 3, 2, 1),
        (1, 16, 16, 5, 3, 2, 1),
        (1, 12, 12, 3, 3, 2, 1),
        (1, 11, 11, 3, 3, 2, 1),
        (1, 9, 9, 2, 3, 2, 0),
        (1, 40, 20, 2, 3, 2, 1),
        (1, 31, 36, 3, 3, 2, 1), // 16 rows of 56 words: two stream runs
        (1, 8, 8, 70, 3, 2, 1),  // more channels than the general kernels cache
        (1, 10, 30, 3, 3, 2, 1), // an odd output width: the single-channel kernel
        (1, 4, 4, 2, 3, 2, 1),   // width 2: the single-channel kernel
        (3, 9, 7, 5, 3, 2, 1),
        (2, 6, 11, 7, 1, 1, 0),
        (4, 5, 5, 3, 5, 1, 2),
        (2, 9, 10, 6, 7, 2, 3),
        (5, 4, 4, 9, 2, 2, 0),
        (8, 6, 6, 3, 7, 1, 3), // fan-in 392 > PAIR_FAN: one position at a time
        (16, 6, 6, 34, 3, 1, 1), // 34 rows of 144 > MAX_INTERLEAVED: one position at a time
        (16, 7, 7, 33, 3, 1, 1), // 32 rows fit, the 33rd by itself; 49 positions
        (2, 5, 5, 70, 3, 1, 1), // 35 pairs of rows: two calls of the loop
        (16, 14, 14, 4, 3, 1, 1), // the last window's word would end past MAX_INPUT: byte moves
        (21, 14, 14, 2, 7, 1, 3), // fan-in 1,029 > MAX_PATCH: the core's kernel
        (30, 12, 12, 2, 3, 1, 1), // input 4,320 > MAX_INPUT: the core's kernel
    ] {
        let fan = cin * k * k;
        let (wts, sc, b) = (
            rng.bytes(cout * fan),
            rng.le(cout, 1e-4, 1e-2),
            rng.le(cout, -1.0, 1.0),
        );
        let mut x = rng.f32s(cin * h * w, -0.5, 1.5);
        x[0] = f32::INFINITY;
        let layer = Int8Conv2d {
            input_multiplier: 127.0,
            conv: Conv2d {
                in_channels: cin as u16,
                out_channels: cout as u16,
                height: h as u16,
                width: w as u16,
                kernel: k as u16,
                stride: s as u16,
                padding: p as u16,
                weights: &wts,
                scales: &sc,
                bias: &b,
            },
        };
        let len = layer.conv.output_len();
        for relu_input in [false, true] {
            let mut want = vec![-7.5f32; len];
            let mut unfused = vec![-7.5f32; len];
            if relu_input {
                layer.forward_with(&x, &mut want, true);
                Layer::Int8Conv2d(layer).forward(&relu(&x), &mut unfused);
            } else {
                Layer::Int8Conv2d(layer).forward(&x, &mut want);
                Layer::Int8Conv2d(layer).forward(&x, &mut unfused);
            }
            assert_eq!(bits(&want), bits(&unfused));
            let mut got = vec![1e30f32; len];
            M4Kernels.int8_conv_forward(&layer, &x, &mut got, relu_input);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{cin}x{h}x{w} → {cout}, k {k} s {s} p {p}, ReLU input {relu_input}"
            );
        }
    }
}

#[test]
fn float_dense_is_bit_identical_to_the_core() {
    let mut rng = Rng(3);
    for &(n, m) in &[
        (1, 1),
        (7, 3),
        (8, 2),
        (15, 2),
        (16, 4),
        (17, 5),
        (24, 3),
        (31, 3),
        (33, 6),
        (256, 9),
        (784, 17),
    ] {
        let (w, sc, b) = (
            rng.bytes(n * m),
            rng.le(m, 1e-4, 1e-2),
            rng.le(m, -1.0, 1.0),
        );
        let layer = Dense {
            inputs: n as u32,
            outputs: m as u32,
            weights: &w,
            scales: &sc,
            bias: &b,
        };
        for batch in [1usize, 3] {
            let mut xs = rng.f32s(n * batch, -3.0, 3.0);
            // Values that must keep their bits through the kernel.
            for (i, v) in [f32::NAN, -0.0, f32::INFINITY, 1e-40, -1e38]
                .into_iter()
                .enumerate()
            {
                if let Some(x) = xs.get_mut(i * 7) {
                    *x = v;
                }
            }
            let mut want = vec![-7.5f32; m * batch];
            for (x, y) in xs.chunks_exact(n).zip(want.chunks_exact_mut(m)) {
                Layer::Dense(layer).forward(x, y);
            }
            let mut got = vec![1e30f32; m * batch];
            M4Kernels.dense_forward_batch(&layer, &xs, &mut got, batch, &mut []);
            assert_eq!(bits_nan(&got), bits_nan(&want), "{n} → {m}, batch {batch}");
            // And the core's row-buffered batch path agrees with both.
            let mut portable = vec![0.5f32; m * batch];
            let mut rowbuf = vec![9.0f32; 4 * n];
            Portable.dense_forward_batch(&layer, &xs, &mut portable, batch, &mut rowbuf);
            assert_eq!(
                bits_nan(&portable),
                bits_nan(&want),
                "{n} → {m}, batch {batch}"
            );
            // The VJP: output gradients with exact zeros (rows the core skips) and
            // dirty input-gradient buffers.
            let mut gys = rng.f32s(m * batch, -2.0, 2.0);
            for (i, g) in gys.iter_mut().enumerate() {
                if i % 3 == 1 {
                    *g = 0.0;
                }
            }
            let mut want = vec![-7.5f32; n * batch];
            Portable.dense_vjp_batch(&layer, &gys, &mut want, batch, &mut []);
            let mut got = vec![1e30f32; n * batch];
            M4Kernels.dense_vjp_batch(&layer, &gys, &mut got, batch, &mut []);
            assert_eq!(
                bits_nan(&got),
                bits_nan(&want),
                "VJP {n} → {m}, batch {batch}"
            );
            let mut batched = vec![0.5f32; n * batch];
            Portable.dense_vjp_batch(&layer, &gys, &mut batched, batch, &mut rowbuf);
            assert_eq!(
                bits_nan(&batched),
                bits_nan(&want),
                "VJP {n} → {m}, batch {batch}"
            );
        }
    }
}

#[test]
fn float_dense_mismatched_buffers_match_the_core_and_never_panic() {
    let w: Vec<u8> = (0..60u8).collect();
    let f = 0.25f32.to_le_bytes().repeat(3);
    let layer = Dense {
        inputs: 20,
        outputs: 3,
        weights: &w,
        scales: &f,
        bias: &f,
    };
    for (xn, yn, batch) in [(0, 0, 1), (19, 3, 1), (20, 2, 1), (45, 9, 3), (60, 6, 5)] {
        let x: Vec<f32> = (0..xn).map(|i| i as f32 * 0.1).collect();
        let mut got = vec![3.0f32; yn];
        let mut want = vec![3.0f32; yn];
        M4Kernels.dense_forward_batch(&layer, &x, &mut got, batch, &mut []);
        Portable.dense_forward_batch(&layer, &x, &mut want, batch, &mut []);
        assert_eq!(bits(&got), bits(&want), "x {xn}, y {yn}, batch {batch}");
        let mut got = vec![3.0f32; xn];
        let mut want = vec![3.0f32; xn];
        let gy: Vec<f32> = (0..yn).map(|i| 1.0 - i as f32 * 0.3).collect();
        M4Kernels.dense_vjp_batch(&layer, &gy, &mut got, batch, &mut []);
        Portable.dense_vjp_batch(&layer, &gy, &mut want, batch, &mut []);
        assert_eq!(bits(&got), bits(&want), "VJP x {xn}, y {yn}, batch {batch}");
    }
}

#[test]
fn mismatched_buffers_never_panic() {
    let w = [1u8; 12];
    let f = 1.0f32.to_le_bytes().repeat(3);
    let layer = Int8Dense {
        input_multiplier: 1.0,
        dense: Dense {
            inputs: 4,
            outputs: 3,
            weights: &w,
            scales: &f,
            bias: &f,
        },
    };
    for (xn, yn) in [(0, 0), (2, 3), (4, 1), (9, 9)] {
        let x = vec![0.5f32; xn];
        let mut y = vec![0.0f32; yn];
        M4Kernels.int8_dense_forward(&layer, &x, &mut y, false);
        M4Kernels.int8_dense_forward(&layer, &x, &mut y, true);
    }
}

/// A random int8 dense layer's bytes: weights, scales and biases.
fn int8_dense_bytes(rng: &mut Rng, n: usize, m: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        rng.bytes(n * m),
        rng.le(m, 1e-4, 1e-2),
        rng.le(m, -1.0, 1.0),
    )
}

#[test]
fn int8_dense_pair_is_bit_identical_to_the_two_layers_in_turn() {
    let mut rng = Rng(7);
    // (inputs, first's outputs, second's outputs, second's inputs): the shipped
    // classifier's tail, odd widths, both widths of the byte buffer and past them
    // (the float path), and a second layer whose input does not match (refused by
    // the DSP path, computed as the core does).
    for &(n, h, m, h_in) in &[
        (1568, 64, 10, 64),
        (64, 10, 3, 10),
        (5, 3, 2, 3),
        (9, 1, 1, 1),
        (300, 65, 7, 65),
        (33, 256, 5, 256),
        (40, 257, 4, 257),
        (16, 8, 4, 12),
    ] {
        let (w1, s1, b1) = int8_dense_bytes(&mut rng, n, h);
        let (w2, s2, b2) = int8_dense_bytes(&mut rng, h_in, m);
        let first = Int8Dense {
            input_multiplier: 60.0,
            dense: Dense {
                inputs: n as u32,
                outputs: h as u32,
                weights: &w1,
                scales: &s1,
                bias: &b1,
            },
        };
        // A multiplier that clamps many of the first layer's outputs at both ends.
        let second = Int8Dense {
            input_multiplier: 90.0,
            dense: Dense {
                inputs: h_in as u32,
                outputs: m as u32,
                weights: &w2,
                scales: &s2,
                bias: &b2,
            },
        };
        let mut x = rng.f32s(n, -2.0, 3.0);
        x[n / 2] = f32::NAN;
        let width = n.max(h).max(m) + 3;
        for relu_input in [false, true] {
            for relu_between in [false, true] {
                let mut want = vec![-7.5f32; width];
                want[..n].copy_from_slice(&x);
                let mut got = want.clone();
                let mut mid = vec![1e30f32; width];
                pursamere_core::int8_dense_pair_in_turn(
                    &Portable,
                    &first,
                    &second,
                    relu_input,
                    relu_between,
                    &mut want,
                    &mut mid,
                );
                let mut mid = vec![1e30f32; width];
                M4Kernels.int8_dense_pair_forward(
                    &first,
                    &second,
                    relu_input,
                    relu_between,
                    &mut got,
                    &mut mid,
                );
                assert_eq!(
                    bits_nan(&got),
                    bits_nan(&want),
                    "{n} → {h} → {m}, ReLU input {relu_input}, between {relu_between}"
                );
            }
        }
        // The two halves on their own: the bytes are the core's quantisation of the
        // first layer's outputs, and the second layer on them gives its outputs.
        if h == h_in {
            let mut y1 = vec![0.0f32; h];
            Portable.int8_dense_forward(&first, &x, &mut y1, false);
            let mut q = vec![0x5au8; h];
            assert!(
                pursamere_m4::int8_dense_requantized(&first, &x, false, 90.0, true, &mut q)
                    || n > MAX_INPUT
            );
            let want_q: Vec<u8> = y1
                .iter()
                .map(|&v| pursamere_core::quantize_relu_activation(v, 90.0) as u8)
                .collect();
            assert_eq!(q, want_q, "{n} → {h}");
            let mut y2 = vec![-1.0f32; m];
            assert!(pursamere_m4::int8_dense_quantized(&second, &q, &mut y2));
            let mut want2 = vec![-1.0f32; m];
            let relu_y1: Vec<f32> = relu(&y1);
            Portable.int8_dense_forward(&second, &relu_y1, &mut want2, false);
            assert_eq!(bits(&y2), bits(&want2), "{h} → {m}");
        }
    }
    // Wrong lengths are refused, never a panic.
    let (w, s, b) = int8_dense_bytes(&mut rng, 4, 3);
    let layer = Int8Dense {
        input_multiplier: 1.0,
        dense: Dense {
            inputs: 4,
            outputs: 3,
            weights: &w,
            scales: &s,
            bias: &b,
        },
    };
    let mut q = [0u8; 3];
    assert!(!pursamere_m4::int8_dense_requantized(
        &layer, &[0.5; 3], false, 1.0, false, &mut q
    ));
    assert!(!pursamere_m4::int8_dense_requantized(
        &layer,
        &[0.5; 4],
        false,
        1.0,
        false,
        &mut q[..2]
    ));
    assert!(!pursamere_m4::int8_dense_quantized(
        &layer,
        &[1; 3],
        &mut [0.0; 3]
    ));
    assert!(!pursamere_m4::int8_dense_quantized(
        &layer,
        &[1; 4],
        &mut [0.0; 2]
    ));
}
