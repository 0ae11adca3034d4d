//! Float model → quantised `.psm` → core: the core's output follows the float network.

use pursamere_core::{InputShape, Model, NetworkKind, Norm, PurifierConfig, StepRule};
use pursamere_trainer::export::{ExportError, QuantizedModel};
use pursamere_trainer::model::{FloatLayer, FloatModel, FloatNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mlp(rng: &mut ChaCha8Rng, dims: &[usize], residual: bool) -> FloatNet {
    let mut layers = Vec::new();
    for (k, w) in dims.windows(2).enumerate() {
        if k > 0 {
            layers.push(FloatLayer::Relu);
        }
        let a = (3.0 / w[0] as f32).sqrt();
        layers.push(FloatLayer::Dense {
            inputs: w[0],
            outputs: w[1],
            weights: (0..w[0] * w[1]).map(|_| rng.gen_range(-a..a)).collect(),
            bias: (0..w[1]).map(|_| rng.gen_range(-0.1..0.1)).collect(),
        });
    }
    FloatNet { residual, layers }
}

fn float_forward(net: &FloatNet, x: &[f32]) -> Vec<f32> {
    let mut a = x.to_vec();
    for l in &net.layers {
        a = match l {
            FloatLayer::Relu => a.iter().map(|v| v.max(0.0)).collect(),
            FloatLayer::Dense {
                inputs,
                weights,
                bias,
                ..
            } => weights
                .chunks(*inputs)
                .zip(bias)
                .map(|(row, b)| row.iter().zip(&a).map(|(w, v)| w * v).sum::<f32>() + b)
                .collect(),
            other => panic!("dense test networks only, got {}", other.kind_name()),
        };
    }
    a
}

fn model() -> FloatModel {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    FloatModel {
        dataset: "synthetic".into(),
        input_shape: InputShape {
            channels: 1,
            height: 6,
            width: 6,
        },
        class_names: (0..4).map(|i| format!("class {i}")).collect(),
        denoiser: mlp(&mut rng, &[36, 48, 36], true),
        classifier: mlp(&mut rng, &[36, 32, 4], false),
        purifier: PurifierConfig {
            sigma: 0.3,
            noise_samples: 2,
            iters: 3,
            eta: 0.05,
            rho: 0.02,
            radius: 0.2,
            norm: Norm::Linf,
            step: StepRule::Gradient,
            seed: 9,
            noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
        },
    }
}

#[test]
fn exported_model_tracks_the_float_network() {
    let fm = model();
    let q = QuantizedModel::from_float(&fm).unwrap();
    // Per-row int8 with 127 levels: relative RMS error well below 1 %.
    assert_eq!(q.report().len(), 4);
    for r in q.report() {
        assert!(r.relative_rms > 0.0 && r.relative_rms < 0.01, "{r:?}");
    }
    let bytes = q.to_psm().unwrap();
    let core = Model::parse(&bytes).unwrap();
    assert_eq!(core.spec().meta.class_names[2], "class 2");
    assert_eq!(core.purifier_config(), fm.purifier);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut agree = 0;
    for _ in 0..50 {
        let x: Vec<f32> = (0..36).map(|_| rng.gen_range(0.0..1.0)).collect();
        let mut logits = vec![0.0; 4];
        let mut scratch = vec![0.0; core.scratch_len()];
        let label = core.classify(&x, &mut logits, &mut scratch).unwrap();
        let want = float_forward(&fm.classifier, &x);
        for (g, w) in logits.iter().zip(&want) {
            assert!((g - w).abs() < 0.05 * (1.0 + w.abs()), "{g} vs {w}");
        }
        let best = (0..4).fold(0, |b, i| if want[i] > want[b] { i } else { b });
        agree += usize::from(best == label);
    }
    assert!(agree >= 45, "labels agree on {agree}/50");
}

#[test]
fn export_errors_name_the_problem() {
    let mut fm = model();
    if let FloatLayer::Dense { bias, .. } = &mut fm.classifier.layers[2] {
        bias.pop();
    }
    let e = QuantizedModel::from_float(&fm).err().unwrap();
    assert!(
        matches!(
            e,
            ExportError::Shape {
                network: NetworkKind::Classifier,
                layer: 2,
                ..
            }
        ),
        "{e}"
    );

    let mut fm = model();
    fm.class_names.pop();
    let e = QuantizedModel::from_float(&fm).err().unwrap();
    assert!(
        e.to_string()
            .contains("classifier produces 4 outputs but 3"),
        "{e}"
    );

    let mut fm = model();
    fm.purifier.sigma = 0.0;
    let e = QuantizedModel::from_float(&fm).err().unwrap();
    assert!(e.to_string().contains("sigma"), "{e}");

    let mut fm = model();
    fm.class_names = (0..100).map(|i| i.to_string()).collect();
    assert!(matches!(
        QuantizedModel::from_float(&fm),
        Err(ExportError::Capacity(_))
    ));
}

#[test]
fn safetensors_round_trips_the_float_model() {
    use pursamere_trainer::safetensors_io::{from_safetensors, to_safetensors};
    let fm = model();
    let bytes = to_safetensors(&fm).unwrap();
    assert_eq!(from_safetensors(&bytes).unwrap(), fm);
    // Damaged files are errors, not panics.
    for cut in [0, 7, 8, 100, bytes.len() - 1] {
        assert!(from_safetensors(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let text = String::from_utf8_lossy(&bytes).to_string();
    assert!(text.contains("pursamere-float-v1"));
}

#[test]
fn safetensors_keeps_the_noise_generator_and_older_files_read_as_f64() {
    use pursamere_core::noise::NoiseGenerator;
    use pursamere_trainer::safetensors_io::{from_safetensors, to_safetensors};
    for g in [NoiseGenerator::BoxMullerF64, NoiseGenerator::BoxMullerF32] {
        let mut fm = model();
        fm.purifier.noise = g;
        let back = from_safetensors(&to_safetensors(&fm).unwrap()).unwrap();
        assert_eq!(back.purifier.noise, g);
        // And the .psm it exports is stamped with the generator's version.
        let psm = QuantizedModel::from_float(&back).unwrap().to_psm().unwrap();
        assert_eq!(Model::parse(&psm).unwrap().purifier_config().noise, g);
    }
    // The shipped float file was written before the key existed, with the f64 noise
    // of the shipped .psm.
    let old = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.safetensors"
    ))
    .unwrap();
    assert!(!String::from_utf8_lossy(&old).contains("noise_generator"));
    assert_eq!(
        from_safetensors(&old).unwrap().purifier.noise,
        NoiseGenerator::BoxMullerF64
    );
    // An unknown generator is named in the error.
    let mut fm = model();
    fm.purifier.noise = NoiseGenerator::BoxMullerF32;
    let bytes = to_safetensors(&fm).unwrap();
    let mut bad = bytes.clone();
    let at = bad
        .windows(14)
        .position(|w| w == b"box-muller-f32")
        .unwrap();
    bad[at + 12..at + 14].copy_from_slice(b"99");
    let e = from_safetensors(&bad).unwrap_err().to_string();
    assert!(e.contains("box-muller-f99"), "{e}");
}

#[test]
fn safetensors_export_is_byte_reproducible() {
    use pursamere_trainer::safetensors_io::to_safetensors;
    let fm = model();
    let first = to_safetensors(&fm).unwrap();
    // The metadata map is hashed with a new random state each time: without a
    // canonical order, a handful of exports differ.
    for _ in 0..8 {
        assert_eq!(to_safetensors(&fm).unwrap(), first);
    }
    // Keys appear sorted in the header.
    let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
    let pos = |k: &str| header.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("class_names") < pos("dataset") && pos("dataset") < pos("format"));
    assert_eq!((8 + n) % 8, 0, "data stays 8-byte aligned");
}

#[test]
fn safetensors_reader_says_what_the_file_is() {
    use pursamere_trainer::safetensors_io::from_safetensors;
    let psm = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/mnist.psm"
    ))
    .unwrap();
    let e = from_safetensors(&psm).unwrap_err().to_string();
    assert!(e.contains(".psm model file"), "{e}");
    assert!(!e.contains("HeaderTooLarge"), "{e}");
    let e = from_safetensors(b"hello world, this is text")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a .safetensors file"), "{e}");
    let e = from_safetensors(&[]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
}
