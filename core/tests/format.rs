//! The `.psm` reader: round trips, and every kind of damage is an error, never a panic.

mod common;

use common::{fix_crc, frame_raw, frame_unchecked, layer_forward_f64, OwnedModel, Rng};
use pursamere_core::{
    encoded_len, write_model, ConfigError, Dense, FormatError, Layer, Model, NetworkKind,
    TensorKind, PREFIX_LEN,
};

fn small() -> OwnedModel {
    OwnedModel::random(31, (4, 4), &[12], true, &[8], 5)
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
    let bytes = small().bytes();
    for len in 0..bytes.len() {
        let e = Model::parse(&bytes[..len]).unwrap_err();
        assert!(!e.to_string().is_empty());
    }
    // The same bytes with one extra byte are rejected too.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Model::parse(&longer).is_err());
}

#[test]
fn every_single_bit_flip_is_an_error() {
    let bytes = small().bytes();
    let mut copy = bytes.clone();
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
    let bytes = small().bytes();
    let mut accepted = 0;
    for byte in PREFIX_LEN..bytes.len() - 4 {
        for bit in 0..8 {
            let mut copy = bytes.clone();
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
        // Half of them get a valid prefix and CRC so that the decoder is reached.
        if k % 2 == 1 {
            v = frame_raw(&v, 1, 0);
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
    assert_eq!(
        Model::parse(&frame_raw(payload, 2, 0)).unwrap_err(),
        FormatError::UnsupportedVersion(2)
    );
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
