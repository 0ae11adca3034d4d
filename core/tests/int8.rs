//! The int8-activation layers (format version 4): kernels against a naive integer
//! reference of the documented definition (bit for bit, with dirty output buffers),
//! the straight-through VJP, and the format rules.

mod common;

use common::{frame_unchecked, OwnedAnyModel, OwnedConv, OwnedDense, Rng};
use pursamere_core::{
    quantize_activation, Conv2d, Dense, FormatError, Int8Conv2d, Int8Dense, Layer, Model,
    NetworkKind, MAX_FAN_IN,
};

fn dirty(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| (i * 7 + k) as f32 * -1.25e3).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn dense_of(d: &OwnedDense) -> Dense<'_> {
    match d.layer() {
        Layer::Dense(d) => d,
        _ => unreachable!(),
    }
}

/// The definition, written out naively: quantise, sum exactly (i64), dequantise.
fn int8_dense_naive(d: &Dense<'_>, m: f32, x: &[f32]) -> Vec<f32> {
    let q: Vec<i64> = x
        .iter()
        .map(|&v| i64::from(quantize_activation(v, m)))
        .collect();
    (0..d.outputs as usize)
        .map(|o| {
            let acc: i64 = q
                .iter()
                .enumerate()
                .map(|(i, &qi)| i64::from(d.weight(o, i)) * qi)
                .sum();
            let acc = i32::try_from(acc).unwrap();
            acc as f32 * d.scale(o) + d.bias(o)
        })
        .collect()
}

fn int8_conv_naive(c: &Conv2d<'_>, m: f32, x: &[f32]) -> Vec<f32> {
    let (cin, cout) = (c.in_channels as usize, c.out_channels as usize);
    let (h, w) = (c.height as usize, c.width as usize);
    let (k, s, p) = (c.kernel as isize, c.stride as usize, c.padding as isize);
    let (oh, ow) = (c.out_height(), c.out_width());
    let mut y = vec![0.0; cout * oh * ow];
    for o in 0..cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0i64;
                for ci in 0..cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s) as isize + ky - p;
                            let ix = (ox * s) as isize + kx - p;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = x[(ci * h + iy as usize) * w + ix as usize];
                            acc += i64::from(c.weight(o, ci, ky as usize, kx as usize))
                                * i64::from(quantize_activation(v, m));
                        }
                    }
                }
                let acc = i32::try_from(acc).unwrap();
                y[(o * oh + oy) * ow + ox] = acc as f32 * c.scale(o) + c.bias(o);
            }
        }
    }
    y
}

#[test]
fn int8_dense_matches_the_naive_definition_bit_for_bit() {
    let mut rng = Rng(11);
    for &(n, outs) in &[
        (1, 1),
        (3, 5),
        (31, 4),
        (32, 7),
        (33, 9),
        (69, 3),
        (255, 8),
        (257, 6),
        (784, 10),
    ] {
        let d = OwnedDense::random(&mut rng, n, outs, 1.0);
        let dense = dense_of(&d);
        // Inputs beyond the clamp, negative ones, exact halves, and a NaN.
        let mut x = rng.vec(n, 1.5);
        if n > 2 {
            x[1] = 0.5 / 100.0;
            x[2] = f32::NAN;
        }
        for m in [100.0f32, 127.0, 3.7] {
            let layer = Layer::Int8Dense(Int8Dense {
                input_multiplier: m,
                dense,
            });
            let mut y = dirty(outs, n);
            layer.forward(&x, &mut y);
            assert_eq!(
                bits(&y),
                bits(&int8_dense_naive(&dense, m, &x)),
                "{n} → {outs}, m {m}"
            );
        }
    }
}

#[test]
fn int8_conv_matches_the_naive_definition_bit_for_bit() {
    let mut rng = Rng(12);
    // (cin, h, w, cout, k, s, p): channel-block and column-chunk remainders, both
    // strides, with and without padding, 1×1 and 7×7 kernels.
    for &(cin, h, w, cout, k, s, p) in &[
        (1, 8, 8, 4, 3, 1, 1),
        (1, 28, 28, 16, 3, 2, 1),
        (3, 9, 7, 5, 3, 2, 1),
        (2, 6, 11, 7, 1, 1, 0),
        (4, 5, 5, 3, 5, 1, 2),
        (2, 9, 10, 6, 7, 2, 3),
        (16, 14, 14, 9, 3, 2, 1),
    ] {
        let c = OwnedConv::random(&mut rng, (cin, h, w), cout, k, s, p, 1.0);
        let conv = c.conv();
        let mut x = rng.vec(cin * h * w, 1.2);
        x[0] = f32::NAN;
        let m = 90.0;
        let layer = Layer::Int8Conv2d(Int8Conv2d {
            input_multiplier: m,
            conv,
        });
        let mut y = dirty(conv.output_len(), cin);
        layer.forward(&x, &mut y);
        assert_eq!(
            bits(&y),
            bits(&int8_conv_naive(&conv, m, &x)),
            "{cin}x{h}x{w} → {cout}, k {k} s {s} p {p}"
        );
    }
}

#[test]
fn int8_vjp_is_the_straight_through_float_vjp() {
    let mut rng = Rng(13);
    let d = OwnedDense::random(&mut rng, 20, 6, 1.0);
    let gy = rng.vec(6, 1.0);
    let m = 50.0;
    let mut want = dirty(20, 1);
    d.layer().vjp(&[], &gy, &mut want);
    let want: Vec<f32> = want.iter().map(|g| g * m).collect();
    let mut got = dirty(20, 2);
    Layer::Int8Dense(Int8Dense {
        input_multiplier: m,
        dense: dense_of(&d),
    })
    .vjp(&[], &gy, &mut got);
    assert_eq!(bits(&got), bits(&want));

    let c = OwnedConv::random(&mut rng, (2, 6, 6), 3, 3, 2, 1, 1.0);
    let gy = rng.vec(c.conv().output_len(), 1.0);
    let mut want = dirty(72, 3);
    c.layer().vjp(&[], &gy, &mut want);
    let want: Vec<f32> = want.iter().map(|g| g * m).collect();
    let mut got = dirty(72, 4);
    Layer::Int8Conv2d(Int8Conv2d {
        input_multiplier: m,
        conv: c.conv(),
    })
    .vjp(&[], &gy, &mut got);
    assert_eq!(bits(&got), bits(&want));
}

/// Per-row output scales divided by the input multiplier (what a converter folds).
fn folded_scales(scales: &[u8], m: f32) -> Vec<u8> {
    scales
        .chunks_exact(4)
        .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) / m).to_le_bytes())
        .collect()
}

/// Largest |input| of every classifier layer over `images` (calibration).
fn input_ranges(model: &Model<'_>, images: &[Vec<f32>]) -> Vec<f32> {
    let layers = &model.spec().classifier.layers;
    let mut max = vec![0.0f32; layers.len()];
    for x in images {
        let mut x = x.clone();
        for (l, mx) in layers.iter().zip(&mut max) {
            *mx = x.iter().fold(*mx, |a, v| a.max(v.abs()));
            let mut y = vec![0.0; l.output_len(x.len())];
            l.forward(&x, &mut y);
            x = y;
        }
    }
    max
}

/// The small conv model with its classifier's conv and dense layers made int8, the
/// multipliers calibrated on `images` (or all set to `fixed`), the scales folded.
fn int8_model_bytes(fixed: Option<f32>, in_denoiser: bool, images: &[Vec<f32>]) -> Vec<u8> {
    int8_model_bytes_of(&OwnedAnyModel::small_conv(5), fixed, in_denoiser, images)
}

/// [`int8_model_bytes`] of another model.
fn int8_model_bytes_of(
    owned: &OwnedAnyModel,
    fixed: Option<f32>,
    in_denoiser: bool,
    images: &[Vec<f32>],
) -> Vec<u8> {
    let float_bytes = owned.bytes();
    let float = Model::parse(&float_bytes).unwrap();
    let ranges = input_ranges(&float, images);
    let first = owned.spec();
    let layers = if in_denoiser {
        &first.denoiser.layers
    } else {
        &first.classifier.layers
    };
    let mut store: Vec<Vec<u8>> = Vec::new();
    let mut mults = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let m = fixed.unwrap_or(127.0 / ranges.get(i).copied().unwrap_or(1.0).max(1e-6));
        mults.push(m);
        match l {
            Layer::Dense(d) => store.push(folded_scales(d.scales, m)),
            Layer::Conv2d(c) => store.push(folded_scales(c.scales, m)),
            _ => store.push(Vec::new()),
        }
    }
    let mut spec = owned.spec();
    let net = if in_denoiser {
        &mut spec.denoiser
    } else {
        &mut spec.classifier
    };
    for ((l, sc), &m) in net.layers.iter_mut().zip(&store).zip(&mults) {
        *l = match *l {
            Layer::Dense(mut dense) => {
                dense.scales = sc;
                Layer::Int8Dense(Int8Dense {
                    input_multiplier: m,
                    dense,
                })
            }
            Layer::Conv2d(mut conv) => {
                conv.scales = sc;
                Layer::Int8Conv2d(Int8Conv2d {
                    input_multiplier: m,
                    conv,
                })
            }
            other => other,
        };
    }
    frame_unchecked(&spec)
}

fn images(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| rng.vec(64, 0.5).iter().map(|v| v + 0.5).collect())
        .collect()
}

#[test]
fn int8_classifier_parses_classifies_and_is_stamped_version_4() {
    let m = OwnedAnyModel::small_conv(5);
    let float_bytes = m.bytes();
    let float = Model::parse(&float_bytes).unwrap();
    let calibration = images(16, 6);
    let bytes = int8_model_bytes(None, false, &calibration);
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(pursamere_core::required_version(model.spec()), 4);
    let mut out = vec![0u8; pursamere_core::encoded_len(model.spec()).unwrap()];
    let n = pursamere_core::write_model(model.spec(), &mut out).unwrap();
    assert_eq!(u16::from_le_bytes([out[4], out[5]]), 4);
    assert_eq!(Model::parse(&out[..n]).unwrap().spec(), model.spec());

    // Classification runs through the int8 kernels and stays close to the float
    // classifier on the same weights (the inputs are quantised to 1/127).
    let mut scratch = dirty(model.scratch_len(), 0);
    let (mut lq, mut lf) = (vec![0.0; 10], vec![0.0; 10]);
    for x in images(8, 7) {
        model.classify(&x, &mut lq, &mut scratch).unwrap();
        float.classify(&x, &mut lf, &mut scratch).unwrap();
        assert_ne!(bits(&lq), bits(&lf));
        let span = lf.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (a, b) in lq.iter().zip(&lf) {
            assert!((a - b).abs() <= 0.05 * span, "{lq:?} vs {lf:?}");
        }
    }
}

#[test]
fn classification_fuses_each_relu_into_the_next_int8_layer_with_the_same_bits() {
    // `Model::classify` skips a ReLU that feeds an int8 layer (the layer quantises
    // relu(x) from x); the logits must equal running every layer, ReLUs included.
    let calibration = images(16, 6);
    // The second model's classifier ends in int8 dense layers that the walk hands
    // to the kernels as pairs (`DenseKernels::int8_dense_pair_forward`): one with a
    // ReLU between them, one without.
    let models = [
        OwnedAnyModel::small_conv(5),
        OwnedAnyModel::small_conv_dense_tail(5),
    ];
    for (owned, fixed) in models
        .iter()
        .flat_map(|m| [None, Some(127.0), Some(3.0e4)].map(|f| (m, f)))
    {
        let bytes = int8_model_bytes_of(owned, fixed, false, &calibration);
        let model = Model::parse(&bytes).unwrap();
        let layers = &model.spec().classifier.layers;
        assert!(layers.windows(2).any(|w| matches!(
            w,
            [Layer::Relu, Layer::Int8Conv2d(_)] | [Layer::Relu, Layer::Int8Dense(_)]
        )));
        let mut scratch = dirty(model.scratch_len(), 1);
        let mut logits = vec![0.0; 10];
        let mut rng = Rng(11);
        // Images, and inputs far outside [0, 1] (both clamps, negative pixels).
        let inputs = images(8, 8)
            .into_iter()
            .chain((0..8).map(|_| rng.vec(64, 50.0)));
        for x in inputs {
            model.classify(&x, &mut logits, &mut scratch).unwrap();
            let mut a = x.clone();
            for l in layers {
                let mut y = vec![0.0; l.output_len(a.len())];
                l.forward(&a, &mut y);
                a = y;
            }
            assert_eq!(bits(&logits), bits(&a), "multiplier {fixed:?}");
        }
    }
}

#[test]
fn int8_layers_are_refused_where_they_do_not_belong() {
    assert_eq!(
        Model::parse(&int8_model_bytes(Some(127.0), true, &[])).unwrap_err(),
        FormatError::Int8InDenoiser { layer: 0 }
    );
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert_eq!(
            Model::parse(&int8_model_bytes(Some(bad), false, &[])).unwrap_err(),
            FormatError::BadInputMultiplier {
                network: NetworkKind::Classifier,
                layer: 0
            }
        );
    }
    // A version-3 file cannot hold them.
    let mut bytes = int8_model_bytes(Some(127.0), false, &[]);
    bytes[4..6].copy_from_slice(&3u16.to_le_bytes());
    common::fix_crc(&mut bytes);
    assert!(matches!(
        Model::parse(&bytes).unwrap_err(),
        FormatError::LayerVersion {
            network: NetworkKind::Classifier,
            layer: 0,
            kind: "int8-conv2d",
            needed: 4,
            declared: 3
        }
    ));
}

#[test]
fn int8_fan_in_is_bounded_so_sums_cannot_overflow() {
    let n = MAX_FAN_IN as usize + 1;
    let d = OwnedDense {
        inputs: n,
        outputs: 1,
        weights: vec![0x81; n], // −127 everywhere: the worst case
        scales: 1.0f32.to_le_bytes().to_vec(),
        bias: 0.0f32.to_le_bytes().to_vec(),
    };
    let mut m = OwnedAnyModel::build(
        1,
        (1, 1, n),
        &[common::Op::Conv(1, 1, 1, 0)],
        false,
        &[common::Op::Dense(1)],
    );
    m.cls.layers[0] = common::OwnedLayer::Dense(d);
    let mut spec = m.spec();
    let Layer::Dense(dense) = spec.classifier.layers[0] else {
        unreachable!()
    };
    spec.classifier.layers[0] = Layer::Int8Dense(Int8Dense {
        input_multiplier: 127.0,
        dense,
    });
    assert_eq!(
        Model::parse(&frame_unchecked(&spec)).unwrap_err(),
        FormatError::FanInTooLarge {
            network: NetworkKind::Classifier,
            layer: 0,
            fan_in: n as u32
        }
    );
}
