//! The `.psm` reader: round trips, and every kind of damage is an error, never a panic.

mod common;

use common::{
    fix_crc, frame_raw, frame_unchecked, layer_forward_f64, Op, OwnedAnyModel, OwnedModel,
    OwnedSeq, Rng,
};
use pursamere_core::noise::NoiseGenerator;
use pursamere_core::{
    encoded_len, required_version, write_model, ConfigError, Conv2d, Dense, FormatError, Layer,
    Model, NetworkKind, TensorKind, PREFIX_LEN,
};

fn small() -> OwnedModel {
    OwnedModel::random(31, (4, 4), &[12], true, &[8], 5)
}

/// A small model with every version-2 layer kind: the denoiser downsamples with a
/// stride-2 conv and upsamples back; the classifier flattens into a dense layer.
fn conv_small() -> OwnedAnyModel {
    OwnedAnyModel::build(
        32,
        (1, 6, 6),
        &[Op::Conv(2, 3, 2, 1), Op::Relu, Op::Up, Op::Conv(1, 3, 1, 1)],
        true,
        &[Op::Conv(2, 3, 2, 1), Op::Relu, Op::Dense(3)],
    )
}

/// Files of both versions, for the damage tests.
fn both_files() -> [Vec<u8>; 2] {
    [small().bytes(), conv_small().bytes()]
}

/// After a successful parse, exercising the model must not panic either.
fn exercise(model: &Model<'_>) {
    let cfg = pursamere_core::PurifierConfig {
        iters: model.purifier_config().iters.min(2),
        noise_samples: model.purifier_config().noise_samples.min(2),
        ..model.purifier_config()
    };
    if model.input_len() > 4096 {
        return;
    }
    let x = vec![0.5; model.input_len()];
    let mut out = vec![0.0; model.input_len()];
    let mut scratch = vec![
        0.0;
        model
            .purify_scratch_len(&cfg)
            .max(model.classify_scratch_len())
    ];
    let mut logits = vec![0.0; model.num_classes()];
    model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
    model.classify(&out, &mut logits, &mut scratch).unwrap();
}

#[test]
fn write_then_parse_round_trips_every_field() {
    let owned = small();
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(*model.spec(), owned.spec());
    // Tensors are borrowed from the file, not copied.
    let Layer::Dense(d) = model.spec().denoiser.layers[0] else {
        panic!()
    };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&d.weights.as_ptr()));
    assert_eq!(d.weights, &owned.den.dense[0].weights[..]);
    assert_eq!(model.input_len(), 16);
    assert_eq!(model.num_classes(), 5);
    assert_eq!(encoded_len(model.spec()).unwrap(), bytes.len());
    // Writing the parsed spec reproduces the file byte for byte.
    let mut again = vec![0u8; bytes.len()];
    assert_eq!(write_model(model.spec(), &mut again).unwrap(), bytes.len());
    assert_eq!(again, bytes);
    exercise(&model);
}

#[test]
fn classify_matches_f64_reference() {
    let owned = small();
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    let mut rng = Rng(5);
    for _ in 0..20 {
        let x: Vec<f32> = (0..16).map(|_| rng.unit()).collect();
        let mut logits = vec![f32::NAN; 5];
        let mut scratch = vec![f32::NAN; model.classify_scratch_len()];
        let label = model.classify(&x, &mut logits, &mut scratch).unwrap();
        let mut a: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for l in &model.spec().classifier.layers {
            a = layer_forward_f64(l, &a);
        }
        for (g, w) in logits.iter().zip(&a) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-5 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
        let best = (0..5).fold(0, |b, i| if a[i] > a[b] { i } else { b });
        assert_eq!(label, best);
    }
}

#[test]
fn writer_rejects_small_buffers() {
    let owned = small();
    let spec = owned.spec();
    let n = encoded_len(&spec).unwrap();
    let mut buf = vec![0u8; n - 1];
    assert_eq!(
        write_model(&spec, &mut buf),
        Err(FormatError::BufferTooSmall {
            needed: n,
            available: n - 1
        })
    );
}

#[test]
fn every_truncation_is_an_error() {
    for bytes in both_files() {
        every_truncation_of(&bytes);
    }
}

fn every_truncation_of(bytes: &[u8]) {
    for len in 0..bytes.len() {
        let e = Model::parse(&bytes[..len]).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    // The same bytes with one extra byte are rejected too.
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Model::parse(&longer).is_err());
}

#[test]
fn every_single_bit_flip_is_an_error() {
    for bytes in both_files() {
        every_single_bit_flip_of(&bytes);
    }
}

fn every_single_bit_flip_of(bytes: &[u8]) {
    let mut copy = bytes.to_vec();
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            copy[byte] ^= 1 << bit;
            assert!(
                Model::parse(&copy).is_err(),
                "flip of bit {bit} in byte {byte} was accepted"
            );
            copy[byte] ^= 1 << bit;
        }
    }
}

#[test]
fn bit_flips_with_a_repaired_crc_never_panic() {
    // Gets past the CRC, so the payload decoder and the validator see the damage.
    for bytes in both_files() {
        bit_flips_with_a_repaired_crc_of(&bytes);
    }
}

fn bit_flips_with_a_repaired_crc_of(bytes: &[u8]) {
    let mut accepted = 0;
    // Every payload byte, and the version field.
    for byte in (4..6).chain(PREFIX_LEN..bytes.len() - 4) {
        for bit in 0..8 {
            let mut copy = bytes.to_vec();
            copy[byte] ^= 1 << bit;
            fix_crc(&mut copy);
            let parsed = Model::parse(&copy);
            if let Ok(model) = parsed {
                accepted += 1; // e.g. a changed weight: still a valid model
                exercise(&model);
            }
        }
    }
    assert!(accepted > 0 && accepted < (bytes.len() - PREFIX_LEN - 4) * 8);
}

#[test]
fn random_bytes_are_errors() {
    let mut rng = Rng(99);
    for k in 0..10_000 {
        let len = rng.below(600);
        let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        // Most of them get a valid prefix (version 1 or 2) and CRC so that the
        // decoder is reached.
        if k % 3 != 0 {
            v = frame_raw(&v, (k % 3) as u16, 0);
        }
        let parsed = Model::parse(&v);
        if let Ok(model) = parsed {
            exercise(&model);
        }
    }
}

#[test]
fn framing_errors_are_distinct() {
    let bytes = small().bytes();
    assert_eq!(
        Model::parse(&[]).unwrap_err(),
        FormatError::TooShort { len: 0 }
    );
    let mut m = bytes.clone();
    m[0] = b'X';
    assert_eq!(
        Model::parse(&m).unwrap_err(),
        FormatError::BadMagic(*b"XSMR")
    );
    let payload = &bytes[PREFIX_LEN..bytes.len() - 4];
    for v in [0, pursamere_core::FORMAT_VERSION + 1, 0x0101, u16::MAX] {
        let e = Model::parse(&frame_raw(payload, v, 0)).unwrap_err();
        assert_eq!(e, FormatError::UnsupportedVersion(v));
        assert!(e.to_string().contains("re-export"), "{e}");
    }
    assert_eq!(
        Model::parse(&frame_raw(payload, 1, 4)).unwrap_err(),
        FormatError::UnknownFlags(4)
    );
    let mut l = bytes.clone();
    l[8] ^= 1;
    assert!(matches!(
        Model::parse(&l).unwrap_err(),
        FormatError::PayloadLength { .. }
    ));
    let mut c = bytes.clone();
    let n = c.len();
    c[n - 1] ^= 0x80;
    assert!(matches!(
        Model::parse(&c).unwrap_err(),
        FormatError::CrcMismatch { .. }
    ));
    let mut extra = payload.to_vec();
    extra.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        Model::parse(&frame_raw(&extra, 1, 0)).unwrap_err(),
        FormatError::TrailingPayload { extra: 3 }
    );
    assert_eq!(
        Model::parse(&frame_raw(&payload[..payload.len() / 2], 1, 0)).unwrap_err(),
        FormatError::MalformedPayload
    );
}

fn with_first_dense<'a>(spec: &mut pursamere_core::ModelSpec<'a>, f: impl FnOnce(&mut Dense<'a>)) {
    let Layer::Dense(d) = &mut spec.denoiser.layers[0] else {
        panic!()
    };
    f(d);
}

#[test]
fn validation_errors_are_distinct_and_named() {
    let owned = small();
    let check = |spec: pursamere_core::ModelSpec<'_>, want: FormatError| {
        // Both the writer and the reader refuse.
        let mut buf = vec![0u8; 1 << 16];
        assert_eq!(write_model(&spec, &mut buf).unwrap_err(), want);
        let file = frame_unchecked(&spec);
        let got = Model::parse(&file).unwrap_err();
        assert_eq!(got, want);
        got.to_string()
    };

    let mut s = owned.spec();
    s.meta.input_shape.height = 5;
    let msg = check(
        s,
        FormatError::LayerShape {
            network: NetworkKind::Denoiser,
            layer: 0,
            expected: 20,
            found: 16,
        },
    );
    assert!(msg.contains("denoiser layer 0"), "{msg}");

    let mut s = owned.spec();
    s.meta.input_shape.width = 0;
    check(
        s,
        FormatError::InputShape {
            channels: 1,
            height: 4,
            width: 0,
        },
    );

    let mut s = owned.spec();
    s.meta.class_names.pop();
    check(
        s,
        FormatError::OutputLength {
            network: NetworkKind::Classifier,
            expected: 4,
            found: 5,
        },
    );

    let mut s = owned.spec();
    s.meta.class_names.clear();
    check(s, FormatError::NoClasses);

    let mut s = owned.spec();
    s.classifier.layers.clear();
    check(s, FormatError::EmptyNetwork(NetworkKind::Classifier));

    let mut s = owned.spec();
    s.denoiser.layers.truncate(1);
    check(
        s,
        FormatError::OutputLength {
            network: NetworkKind::Denoiser,
            expected: 16,
            found: 12,
        },
    );

    let mut s = owned.spec();
    with_first_dense(&mut s, |d| d.weights = &d.weights[1..]);
    check(
        s,
        FormatError::TensorLength {
            network: NetworkKind::Denoiser,
            layer: 0,
            tensor: TensorKind::Weights,
            expected: 192,
            found: 191,
        },
    );

    let mut s = owned.spec();
    with_first_dense(&mut s, |d| d.bias = &d.bias[4..]);
    check(
        s,
        FormatError::TensorLength {
            network: NetworkKind::Denoiser,
            layer: 0,
            tensor: TensorKind::Bias,
            expected: 48,
            found: 44,
        },
    );

    let mut s = owned.spec();
    with_first_dense(&mut s, |d| d.outputs = 0);
    check(
        s,
        FormatError::LayerDimension {
            network: NetworkKind::Denoiser,
            layer: 0,
            dim: 0,
        },
    );

    for bad in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let mut scales = owned.den.dense[0].scales.clone();
        scales[8..12].copy_from_slice(&bad.to_le_bytes());
        let mut s = owned.spec();
        with_first_dense(&mut s, |d| d.scales = &scales);
        check(
            s,
            FormatError::BadScale {
                network: NetworkKind::Denoiser,
                layer: 0,
                row: 2,
            },
        );
    }
    let mut bias = owned.den.dense[0].bias.clone();
    bias[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut s = owned.spec();
    with_first_dense(&mut s, |d| d.bias = &bias);
    check(
        s,
        FormatError::BadBias {
            network: NetworkKind::Denoiser,
            layer: 0,
            row: 0,
        },
    );

    let mut s = owned.spec();
    s.purifier.sigma = -1.0;
    let msg = check(s, FormatError::Config(ConfigError::Sigma(-1.0)));
    assert!(msg.contains("sigma"), "{msg}");
    let mut s = owned.spec();
    s.purifier.noise_samples = 0;
    check(s, FormatError::Config(ConfigError::NoiseSamples(0)));
}

// ---------------------------------------------------------------------------
// Version 2: convolutions and upsampling.

#[test]
fn conv_model_round_trips_and_is_stamped_by_its_noise_generator() {
    // With the f64 generator a conv model needs version 2; with the f32 one, 3.
    let mut legacy = conv_small();
    legacy.cfg.noise = NoiseGenerator::BoxMullerF64;
    let old = legacy.bytes();
    assert_eq!(u16::from_le_bytes([old[4], old[5]]), 2);
    assert_eq!(required_version(&legacy.spec()), 2);
    let back = Model::parse(&old).unwrap();
    assert_eq!(back.purifier_config().noise, NoiseGenerator::BoxMullerF64);
    assert_eq!(*back.spec(), legacy.spec());

    let owned = conv_small();
    let bytes = owned.bytes();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 3);
    assert_eq!(required_version(&owned.spec()), 3);
    // Version 3 changes no byte of the payload, only the meaning.
    assert_eq!(
        old[PREFIX_LEN..old.len() - 4],
        bytes[PREFIX_LEN..bytes.len() - 4]
    );
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(*model.spec(), owned.spec());
    let Layer::Conv2d(c) = model.spec().denoiser.layers[0] else {
        panic!()
    };
    assert!(bytes.as_ptr_range().contains(&c.weights.as_ptr()));
    let mut again = vec![0u8; bytes.len()];
    assert_eq!(write_model(model.spec(), &mut again).unwrap(), bytes.len());
    assert_eq!(again, bytes);
    // Sizes: activations are the input plus every layer output.
    assert_eq!(model.denoise_scratch_len(), 36 + 18 + 18 + 72 + 36);
    // Classification keeps no activations: two buffers as wide as the widest layer.
    assert_eq!(model.classify_scratch_len(), 2 * 36);
    assert_eq!(model.denoiser_macs(), 2 * 9 * 9 + 2 * 9 * 36);
    exercise(&model);
}

#[test]
fn dense_models_keep_version_1_with_the_f64_noise_and_the_version_names_the_generator() {
    let mut legacy = small();
    legacy.cfg.noise = NoiseGenerator::BoxMullerF64;
    let bytes = legacy.bytes();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 1);
    let payload = &bytes[PREFIX_LEN..bytes.len() - 4];
    let v1 = Model::parse(&bytes).unwrap();
    let v2_file = frame_raw(payload, 2, 0);
    let v2 = Model::parse(&v2_file).unwrap();
    assert_eq!(v2.spec(), v1.spec());
    assert_eq!(v1.purifier_config().noise, NoiseGenerator::BoxMullerF64);
    // The same payload stamped 3 is the same model with the f32 generator.
    let v3_file = frame_raw(payload, 3, 0);
    let v3 = Model::parse(&v3_file).unwrap();
    assert_eq!(v3.purifier_config().noise, NoiseGenerator::BoxMullerF32);
    assert_eq!(*v3.spec(), small().spec());
    let new = small().bytes();
    assert_eq!(u16::from_le_bytes([new[4], new[5]]), 3);
    assert_eq!(new, v3_file);
    // And the generator is what purification uses: the two files purify differently.
    let x: Vec<f32> = (0..v1.input_len()).map(|i| (i % 7) as f32 / 7.0).collect();
    let purify = |m: &Model<'_>| {
        let mut out = vec![0f32; x.len()];
        let mut scratch = vec![0f32; m.scratch_len()];
        m.purify(&x, &m.purifier_config(), &mut out, &mut scratch)
            .unwrap();
        out
    };
    assert_ne!(purify(&v1), purify(&v3));
    assert_eq!(purify(&v1), purify(&v2));
}

#[test]
fn version_1_files_cannot_hold_conv_layers() {
    let owned = conv_small();
    let bytes = owned.bytes();
    let payload = &bytes[PREFIX_LEN..bytes.len() - 4];
    let e = Model::parse(&frame_raw(payload, 1, 0)).unwrap_err();
    assert_eq!(
        e,
        FormatError::LayerVersion {
            network: NetworkKind::Denoiser,
            layer: 0,
            kind: "conv2d",
            needed: 2,
            declared: 1,
        }
    );
    assert!(e.to_string().contains("conv2d"), "{e}");
    // Only the classifier uses a version-2 layer: the error names it.
    let mut s = owned.spec();
    s.denoiser = small_dense_denoiser_spec();
    let file = frame_raw(&postcard::to_allocvec(&s).unwrap(), 1, 0);
    assert!(matches!(
        Model::parse(&file).unwrap_err(),
        FormatError::LayerVersion {
            network: NetworkKind::Classifier,
            layer: 0,
            ..
        }
    ));
}

/// A 36 → 36 dense denoiser (leaks its storage: test only).
fn small_dense_denoiser_spec() -> pursamere_core::NetworkSpec<'static> {
    let seq = Box::leak(Box::new(OwnedSeq::build(
        &mut Rng(3),
        (1, 6, 6),
        &[Op::Dense(36)],
        true,
        0.5,
    )));
    seq.spec()
}

fn with_layer<'a>(
    spec: &mut pursamere_core::ModelSpec<'a>,
    network: NetworkKind,
    index: usize,
    f: impl FnOnce(&mut Layer<'a>),
) {
    let net = match network {
        NetworkKind::Denoiser => &mut spec.denoiser,
        NetworkKind::Classifier => &mut spec.classifier,
    };
    f(&mut net.layers[index]);
}

fn with_conv<'a>(
    spec: &mut pursamere_core::ModelSpec<'a>,
    index: usize,
    f: impl FnOnce(&mut Conv2d<'a>),
) {
    with_layer(spec, NetworkKind::Denoiser, index, |l| {
        let Layer::Conv2d(c) = l else { panic!() };
        f(c);
    });
}

#[test]
fn conv_validation_errors_are_distinct_and_named() {
    let owned = conv_small();
    let check = |spec: pursamere_core::ModelSpec<'_>, want: FormatError, needle: &str| {
        let mut buf = vec![0u8; 1 << 16];
        assert_eq!(write_model(&spec, &mut buf).unwrap_err(), want);
        let got = Model::parse(&frame_unchecked(&spec)).unwrap_err();
        assert_eq!(got, want);
        let msg = got.to_string();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    };
    let den = NetworkKind::Denoiser;

    // Denoiser layers: 0 conv 1→2 (6×6, k3 s2 p1 → 3×3), 1 relu, 2 up 2×3×3,
    // 3 conv 2→1 (6×6, k3 s1 p1).
    let mut s = owned.spec();
    with_conv(&mut s, 3, |c| c.in_channels = 3);
    check(
        s,
        FormatError::ChannelMismatch {
            network: den,
            layer: 3,
            expected: 2,
            found: 3,
        },
        "takes 3 input channels but the previous layer produces 2",
    );

    let mut s = owned.spec();
    with_layer(&mut s, den, 2, |l| {
        let Layer::Upsample2x(u) = l else { panic!() };
        u.height = 4;
    });
    check(
        s,
        FormatError::SpatialMismatch {
            network: den,
            layer: 2,
            expected: [3, 3],
            found: [4, 3],
        },
        "takes 4x3",
    );

    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| c.width = 5);
    check(
        s,
        FormatError::SpatialMismatch {
            network: den,
            layer: 0,
            expected: [6, 6],
            found: [6, 5],
        },
        "denoiser layer 0",
    );

    for k in [0, 8, 100] {
        let mut s = owned.spec();
        with_conv(&mut s, 0, |c| c.kernel = k);
        check(
            s,
            FormatError::KernelSize {
                network: den,
                layer: 0,
                kernel: k,
            },
            "kernel size",
        );
    }

    for st in [0, 3, 4] {
        let mut s = owned.spec();
        with_conv(&mut s, 0, |c| c.stride = st);
        check(
            s,
            FormatError::Stride {
                network: den,
                layer: 0,
                stride: st,
            },
            "stride",
        );
    }

    let mut s = owned.spec();
    with_conv(&mut s, 3, |c| c.padding = 2);
    check(
        s,
        FormatError::Padding {
            network: den,
            layer: 3,
            padding: 2,
            kernel: 3,
        },
        "padding 2",
    );

    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| {
        c.kernel = 7;
        c.padding = 0;
    });
    check(
        s,
        FormatError::KernelExceedsInput {
            network: den,
            layer: 0,
            kernel: 7,
            padding: 0,
            input: [6, 6],
        },
        "does not fit",
    );

    for (field, f) in [
        (
            "in",
            (|c: &mut Conv2d<'_>| c.in_channels = 0) as fn(&mut Conv2d<'_>),
        ),
        ("out", |c: &mut Conv2d<'_>| c.out_channels = 0),
        ("height", |c: &mut Conv2d<'_>| c.height = 0),
    ] {
        let mut s = owned.spec();
        with_conv(&mut s, 0, f);
        let mut buf = vec![0u8; 1 << 16];
        assert_eq!(
            write_model(&s, &mut buf).unwrap_err(),
            FormatError::LayerDimension {
                network: den,
                layer: 0,
                dim: 0
            },
            "{field}"
        );
    }

    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| {
        c.in_channels = u16::MAX;
        c.height = u16::MAX;
    });
    let mut buf = vec![0u8; 1 << 16];
    assert!(matches!(
        write_model(&s, &mut buf).unwrap_err(),
        FormatError::LayerDimension { layer: 0, .. }
    ));

    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| c.weights = &c.weights[1..]);
    check(
        s,
        FormatError::TensorLength {
            network: den,
            layer: 0,
            tensor: TensorKind::Weights,
            expected: 18,
            found: 17,
        },
        "weights tensor",
    );
    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| c.scales = &c.scales[4..]);
    check(
        s,
        FormatError::TensorLength {
            network: den,
            layer: 0,
            tensor: TensorKind::Scales,
            expected: 8,
            found: 4,
        },
        "scales tensor",
    );

    let Layer::Conv2d(c0) = owned.spec().denoiser.layers[0] else {
        panic!()
    };
    let mut scales = c0.scales.to_vec();
    scales[4..8].copy_from_slice(&0.0f32.to_le_bytes());
    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| c.scales = &scales);
    check(
        s,
        FormatError::BadScale {
            network: den,
            layer: 0,
            row: 1,
        },
        "scale of row (output channel) 1",
    );
    let mut bias = c0.bias.to_vec();
    bias[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let mut s = owned.spec();
    with_conv(&mut s, 0, |c| c.bias = &bias);
    check(
        s,
        FormatError::BadBias {
            network: den,
            layer: 0,
            row: 0,
        },
        "bias of row (output channel) 0",
    );
}

#[test]
fn feature_map_shape_rules() {
    let mut rng = Rng(77);
    let build = |rng: &mut Rng, ops: &[Op]| OwnedSeq::build(rng, (1, 6, 6), ops, true, 0.5);
    let base = conv_small();

    // A denoiser ending in a 4×3×3 map has the input's length (36) but not its shape.
    let den = build(&mut rng, &[Op::Conv(4, 3, 2, 1)]);
    let mut s = base.spec();
    s.denoiser = den.spec();
    let mut buf = vec![0u8; 1 << 16];
    let e = write_model(&s, &mut buf).unwrap_err();
    assert_eq!(
        e,
        FormatError::OutputShape {
            network: NetworkKind::Denoiser,
            expected: [1, 6, 6],
            found: [4, 3, 3],
        }
    );
    assert!(e.to_string().contains("4x3x3"), "{e}");

    // Unflatten is a shape rule too: a conv after a dense layer of the same length.
    let den = build(&mut rng, &[Op::Dense(36), Op::Relu]);
    let conv = common::OwnedConv::random(&mut rng, (1, 6, 6), 1, 3, 1, 1, 0.5);
    let unflatten = || {
        let mut spec = den.spec();
        spec.layers.push(conv.layer()).unwrap();
        spec
    };
    let mut s = base.spec();
    s.denoiser = unflatten();
    let file = frame_unchecked(&s);
    let model = Model::parse(&file).unwrap();
    exercise(&model);

    // ... but the lengths must agree.
    let mut s = base.spec();
    s.denoiser = unflatten();
    let Layer::Dense(d) = &mut s.denoiser.layers[0] else {
        panic!()
    };
    d.outputs = 35;
    d.weights = &d.weights[..35 * 36];
    d.scales = &d.scales[..35 * 4];
    d.bias = &d.bias[..35 * 4];
    let mut buf = vec![0u8; 1 << 16];
    assert_eq!(
        write_model(&s, &mut buf).unwrap_err(),
        FormatError::LayerShape {
            network: NetworkKind::Denoiser,
            layer: 2,
            expected: 35,
            found: 36,
        }
    );

    // Flatten: a dense layer reads a map of any shape with the right length.
    let owned = OwnedAnyModel::build(
        5,
        (2, 5, 3),
        &[Op::Conv(3, 3, 1, 1), Op::Relu, Op::Conv(2, 1, 1, 0)],
        false,
        &[Op::Conv(3, 3, 2, 0), Op::Relu, Op::Dense(4)],
    );
    let bytes = owned.bytes();
    let model = Model::parse(&bytes).unwrap();
    assert_eq!(model.input_len(), 30);
    exercise(&model);
}

#[test]
fn shipped_version_1_model_is_rewritten_byte_for_byte() {
    // The shipped fixture was written before version 2 existed: it must parse and
    // this build's writer must reproduce it exactly (still version 1).
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/mnist.psm");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!("{} not found; skipped", path.display());
        return;
    };
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 1);
    let model = Model::parse(&bytes).unwrap();
    let mut again = vec![0u8; bytes.len()];
    assert_eq!(write_model(model.spec(), &mut again).unwrap(), bytes.len());
    assert!(again == bytes, "re-written fixture differs");
}
