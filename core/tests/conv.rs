//! Convolution and upsampling against a naive f64 reference (every kernel, stride
//! and padding combination, odd sizes, garbage-filled outputs), and against an
//! independent f32 implementation of the documented summation order, bit for bit.

mod common;

use common::{layer_forward_f64, layer_vjp_f64, OwnedConv, Rng};
use pursamere_core::{Conv2d, Layer, Upsample2x};

const GARBAGE: [f32; 4] = [f32::NAN, 1.0e30, -7.5, f32::INFINITY];

fn dirty(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| GARBAGE[(i + k) % 4]).collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Input position `o·s + k − p` when it lies in `0..n`.
fn pos(o: usize, k: usize, s: usize, p: usize, n: usize) -> Option<usize> {
    let v = (o * s + k) as isize - p as isize;
    (v >= 0 && (v as usize) < n).then_some(v as usize)
}

struct Dims {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

fn dims(c: &Conv2d<'_>) -> Dims {
    Dims {
        cin: c.in_channels.into(),
        cout: c.out_channels.into(),
        h: c.height.into(),
        w: c.width.into(),
        k: c.kernel.into(),
        s: c.stride.into(),
        p: c.padding.into(),
        oh: c.out_height(),
        ow: c.out_width(),
    }
}

/// The documented forward order, written as plainly as possible in f32: one
/// accumulator from +0, every `(ci, ky, kx)` in lexicographic order, padded
/// positions *included* as `w · 0` (the kernel skips them; the bits must agree).
fn forward_documented(c: &Conv2d<'_>, x: &[f32]) -> Vec<f32> {
    let d = dims(c);
    let mut y = vec![0.0f32; d.cout * d.oh * d.ow];
    for o in 0..d.cout {
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                let mut acc = 0.0f32;
                for ci in 0..d.cin {
                    for ky in 0..d.k {
                        for kx in 0..d.k {
                            let xv = match (pos(oy, ky, d.s, d.p, d.h), pos(ox, kx, d.s, d.p, d.w))
                            {
                                (Some(iy), Some(ix)) => x[(ci * d.h + iy) * d.w + ix],
                                _ => 0.0,
                            };
                            acc += f32::from(c.weight(o, ci, ky, kx)) * xv;
                        }
                    }
                }
                y[(o * d.oh + oy) * d.ow + ox] = acc * c.scale(o) + c.bias(o);
            }
        }
    }
    y
}

/// The documented VJP order in f32: per input element, one accumulator from +0,
/// terms `w · (scale · gy)` over existing output positions in increasing
/// `(o, ky, kx)`.
fn vjp_documented(c: &Conv2d<'_>, gy: &[f32]) -> Vec<f32> {
    let d = dims(c);
    let mut gx = vec![0.0f32; d.cin * d.h * d.w];
    for ci in 0..d.cin {
        for iy in 0..d.h {
            for ix in 0..d.w {
                let mut acc = 0.0f32;
                for o in 0..d.cout {
                    for ky in 0..d.k {
                        for kx in 0..d.k {
                            let (ny, nx) = (iy + d.p, ix + d.p);
                            if ny < ky || nx < kx {
                                continue;
                            }
                            if (ny - ky) % d.s != 0 || (nx - kx) % d.s != 0 {
                                continue;
                            }
                            let (oy, ox) = ((ny - ky) / d.s, (nx - kx) / d.s);
                            if oy >= d.oh || ox >= d.ow {
                                continue;
                            }
                            let coef = c.scale(o) * gy[(o * d.oh + oy) * d.ow + ox];
                            acc += f32::from(c.weight(o, ci, ky, kx)) * coef;
                        }
                    }
                }
                gx[(ci * d.h + iy) * d.w + ix] = acc;
            }
        }
    }
    gx
}

/// Per output: `Σ |w · scale · x| + |bias|`, the scale of the f32 rounding error.
fn forward_bound(c: &Conv2d<'_>, x: &[f64]) -> Vec<f64> {
    let d = dims(c);
    let mut out = vec![0.0; d.cout * d.oh * d.ow];
    for o in 0..d.cout {
        for oy in 0..d.oh {
            for ox in 0..d.ow {
                let mut acc = f64::from(c.bias(o)).abs();
                for ci in 0..d.cin {
                    for ky in 0..d.k {
                        for kx in 0..d.k {
                            if let (Some(iy), Some(ix)) =
                                (pos(oy, ky, d.s, d.p, d.h), pos(ox, kx, d.s, d.p, d.w))
                            {
                                acc += (f64::from(c.weight(o, ci, ky, kx))
                                    * f64::from(c.scale(o))
                                    * x[(ci * d.h + iy) * d.w + ix])
                                    .abs();
                            }
                        }
                    }
                }
                out[(o * d.oh + oy) * d.ow + ox] = acc;
            }
        }
    }
    out
}

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

/// Every kernel side up to the maximum, both strides, every legal padding, and
/// odd, even, tiny and non-square sizes.
fn cases() -> Vec<(usize, usize, usize, usize, usize)> {
    let sizes = [
        (1, 1),
        (2, 3),
        (5, 7),
        (7, 5),
        (8, 8),
        (9, 4),
        (3, 17),
        (13, 11),
    ];
    let mut out = Vec::new();
    for k in 1..=pursamere_core::MAX_KERNEL as usize {
        for s in [1, 2] {
            for p in 0..=k / 2 {
                for &(h, w) in &sizes {
                    if h + 2 * p >= k && w + 2 * p >= k {
                        out.push((h, w, k, s, p));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn conv_forward_and_vjp_match_f64_reference_and_documented_order() {
    let mut rng = Rng(0xC0_4701);
    let mut count = 0;
    for (case, (h, w, k, s, p)) in cases().into_iter().enumerate() {
        let (cin, cout) = (1 + rng.below(4), 1 + rng.below(5));
        let owned = OwnedConv::random(&mut rng, (cin, h, w), cout, k, s, p, 1.0);
        let conv = owned.conv();
        let layer = owned.layer();
        let what = format!("cin {cin} cout {cout} {h}x{w} k {k} s {s} p {p}");
        let (n, m) = (cin * h * w, layer.output_len(0));
        assert_eq!(m, cout * conv.out_height() * conv.out_width(), "{what}");
        assert_eq!(conv.out_height(), (h + 2 * p - k) / s + 1, "{what}");

        let x = rng.vec(n, 1.0);
        let x64 = to64(&x);
        let mut y = dirty(m, case);
        layer.forward(&x, &mut y);
        let want = layer_forward_f64(&layer, &x64);
        let fan = (cin * k * k) as f64;
        assert_close(
            &y,
            &want,
            &forward_bound(&conv, &x64),
            1e-6 * fan.sqrt().max(4.0),
            &format!("forward {what}"),
        );
        assert_eq!(
            bits(&y),
            bits(&forward_documented(&conv, &x)),
            "forward bits differ from the documented order: {what}"
        );

        let gy = rng.vec(m, 1.0);
        let gy64 = to64(&gy);
        let mut gx = dirty(n, case + 1);
        layer.vjp(&x, &gy, &mut gx);
        let want = layer_vjp_f64(&layer, &x64, &gy64);
        // Error scale: the reference applied to |w| and |gy| would be tighter; the
        // sum of |gy| times the largest dequantised weight is a safe bound.
        let wmax = (0..cout)
            .map(|o| 127.0 * f64::from(conv.scale(o)))
            .fold(0.0, f64::max);
        let bound = gy64.iter().map(|v| v.abs()).sum::<f64>() * wmax;
        assert_close(
            &gx,
            &want,
            &vec![bound; n],
            1e-6 * ((cout * k * k) as f64).sqrt().max(4.0),
            &format!("vjp {what}"),
        );
        assert_eq!(
            bits(&gx),
            bits(&vjp_documented(&conv, &gy)),
            "vjp bits differ from the documented order: {what}"
        );
        count += 1;
    }
    assert!(count > 150, "only {count} cases");
}

#[test]
fn conv_vjp_is_the_adjoint_of_the_linear_part() {
    // <J v, u> = <v, Jᵀ u> in f64, with J the forward pass minus its bias.
    let mut rng = Rng(0xC0_4702);
    for (h, w, k, s, p) in [(6, 5, 3, 2, 1), (7, 7, 1, 2, 0), (4, 9, 5, 1, 2)] {
        let owned = OwnedConv::random(&mut rng, (3, h, w), 2, k, s, p, 1.0);
        let layer = owned.layer();
        let n = 3 * h * w;
        let m = layer.output_len(n);
        let v = to64(&rng.vec(n, 1.0));
        let u = to64(&rng.vec(m, 1.0));
        let zero = layer_forward_f64(&layer, &vec![0.0; n]);
        let jv: Vec<f64> = layer_forward_f64(&layer, &v)
            .iter()
            .zip(&zero)
            .map(|(a, b)| a - b)
            .collect();
        let jtu = layer_vjp_f64(&layer, &v, &u);
        let lhs: f64 = jv.iter().zip(&u).map(|(a, b)| a * b).sum();
        let rhs: f64 = v.iter().zip(&jtu).map(|(a, b)| a * b).sum();
        assert!(
            (lhs - rhs).abs() < 1e-9 * (1.0 + lhs.abs()),
            "{lhs} vs {rhs}"
        );
    }
}

#[test]
fn conv_results_do_not_depend_on_buffer_contents() {
    let mut rng = Rng(0xC0_4703);
    let owned = OwnedConv::random(&mut rng, (2, 9, 7), 3, 3, 2, 1, 1.0);
    let layer = owned.layer();
    let n = 2 * 9 * 7;
    let m = layer.output_len(n);
    let x = rng.vec(n, 1.0);
    let gy = rng.vec(m, 1.0);
    let mut reference: Option<(Vec<u32>, Vec<u32>)> = None;
    for k in 0..5 {
        let mut y = if k == 4 { vec![0.0; m] } else { dirty(m, k) };
        let mut gx = if k == 4 { vec![0.0; n] } else { dirty(n, k) };
        layer.forward(&x, &mut y);
        layer.vjp(&x, &gy, &mut gx);
        let got = (bits(&y), bits(&gx));
        match &reference {
            None => reference = Some(got),
            Some(r) => assert_eq!(r, &got),
        }
    }
}

#[test]
fn conv_counts_macs_and_params() {
    let mut rng = Rng(1);
    let owned = OwnedConv::random(&mut rng, (3, 8, 6), 5, 3, 2, 1, 1.0);
    let layer = owned.layer();
    assert_eq!(owned.out_shape(), (5, 4, 3));
    assert_eq!(layer.output_len(0), 60);
    assert_eq!(layer.macs(), 5 * 3 * 9 * 4 * 3);
    assert_eq!(layer.params(), 5 * 3 * 9 + 2 * 5);
    let up = Layer::Upsample2x(Upsample2x {
        channels: 2,
        height: 3,
        width: 5,
    });
    assert_eq!(up.output_len(0), 120);
    assert_eq!((up.macs(), up.params()), (0, 0));
    assert_eq!(layer.kind_name(), "conv2d");
    assert_eq!(up.kind_name(), "upsample2x");
    assert_eq!(layer.min_format_version(), 2);
    assert_eq!(Layer::Relu.min_format_version(), 1);
}

#[test]
fn upsample_forward_and_vjp_match_reference_exactly() {
    let mut rng = Rng(0xC0_4704);
    for (k, (c, h, w)) in [(1, 1, 1), (2, 3, 5), (3, 4, 4), (1, 7, 2)]
        .into_iter()
        .enumerate()
    {
        let layer = Layer::Upsample2x(Upsample2x {
            channels: c,
            height: h,
            width: w,
        });
        let n = usize::from(c * h * w);
        let x = rng.vec(n, 1.0);
        let mut y = dirty(4 * n, k);
        layer.forward(&x, &mut y);
        let want = layer_forward_f64(&layer, &to64(&x));
        assert_eq!(to64(&y), want);
        let gy = rng.vec(4 * n, 1.0);
        let mut gx = dirty(n, k);
        layer.vjp(&x, &gy, &mut gx);
        // The documented order, in f32.
        let (h, w) = (usize::from(h), usize::from(w));
        for ch in 0..usize::from(c) {
            for i in 0..h {
                for j in 0..w {
                    let at = |a: usize, b: usize| gy[(ch * 2 * h + 2 * i + a) * 2 * w + 2 * j + b];
                    let want = ((at(0, 0) + at(0, 1)) + at(1, 0)) + at(1, 1);
                    assert_eq!(gx[(ch * h + i) * w + j].to_bits(), want.to_bits());
                }
            }
        }
        let want = layer_vjp_f64(&layer, &to64(&x), &to64(&gy));
        for (g, w) in gx.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-6 * (1.0 + w.abs()));
        }
    }
}

#[test]
fn mismatched_buffers_never_panic() {
    // The caller's contract is broken on purpose: short, long and empty buffers.
    let mut rng = Rng(5);
    let owned = OwnedConv::random(&mut rng, (2, 5, 5), 3, 3, 2, 1, 1.0);
    let up = Layer::Upsample2x(Upsample2x {
        channels: 2,
        height: 3,
        width: 3,
    });
    for layer in [owned.layer(), up] {
        for (nx, ny) in [(0, 0), (3, 100), (100, 3), (49, 27), (1000, 1000)] {
            let x = vec![0.5; nx];
            let mut y = vec![0.0; ny];
            layer.forward(&x, &mut y);
            let mut gx = vec![0.0; nx];
            layer.vjp(&x, &y, &mut gx);
        }
    }
}
