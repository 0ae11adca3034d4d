//! The shipped model on the shipped sample: the core's purified bytes and labels
//! must equal `fixtures/golden.json` exactly. A one-bit drift fails this test.

use std::path::Path;

use pursamere_core::{digest_f32, Model};
use pursamere_trainer::data::{load_mnist_dir, Split};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

#[test]
fn core_reproduces_the_golden_vectors() {
    let bytes = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let sample = load_mnist_dir(&fixtures().join("mnist-sample"), Split::Test).unwrap();
    let cfg = model.purifier_config();
    assert_eq!(
        serde_json::to_value(cfg).unwrap(),
        golden["purifier"],
        "golden.json was made with another purifier configuration"
    );
    let images = golden["images"].as_array().unwrap();
    assert_eq!(images.len(), sample.len());
    assert_eq!(images.len(), 256);
    let mut scratch = vec![0.0; model.scratch_len_fast()];
    let mut logits = vec![0.0; 10];
    let mut out = vec![0.0; 784];
    let mut drift = Vec::new();
    for (i, g) in images.iter().enumerate() {
        let x = sample.image_f32(i).unwrap();
        assert_eq!(g["label"], u64::from(sample.labels[i]));
        assert_eq!(
            g["clean_prediction"],
            model.classify(&x, &mut logits, &mut scratch).unwrap() as u64
        );
        model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
        let label = model.classify(&out, &mut logits, &mut scratch).unwrap();
        let digest = format!("{:08x}", digest_f32(&out));
        if g["purified_crc32"] != digest.as_str() || g["purified_prediction"] != label as u64 {
            drift.push((i, digest, label));
        }
    }
    assert!(
        drift.is_empty(),
        "core output drifted from fixtures/golden.json: {drift:?}"
    );
}

#[test]
fn simd_kernels_reproduce_the_golden_vectors() {
    // The host-side SIMD kernels (`pursamere-accel`) at every level this CPU has,
    // reading int8 and prepared f32 weights: the golden bits on all 256 images.
    let bytes = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let sample = load_mnist_dir(&fixtures().join("mnist-sample"), Split::Test).unwrap();
    let cfg = model.purifier_config();
    let mut scratch = vec![0.0; model.scratch_len_fast()];
    let mut out = vec![0.0; 784];
    for level in pursamere_accel::Level::ALL {
        let Some(accel) = pursamere_accel::Accel::with_level(level) else {
            println!("{}: not available on this CPU", level.name());
            continue;
        };
        let prepared = accel.prepare(&model);
        let kernels: [&dyn pursamere_core::DenseKernels; 2] = [&accel, &prepared];
        for k in kernels {
            for i in 0..sample.len() {
                model
                    .purify_with(
                        k,
                        &sample.image_f32(i).unwrap(),
                        &cfg,
                        &mut out,
                        &mut scratch,
                    )
                    .unwrap();
                assert_eq!(
                    golden["images"][i]["purified_crc32"],
                    format!("{:08x}", digest_f32(&out)).as_str(),
                    "{} kernels drifted on image {i}",
                    level.name()
                );
            }
        }
    }
}

#[test]
fn minimum_scratch_path_gives_the_same_bits() {
    // What a microcontroller runs (one noise sample at a time) on the first images.
    let bytes = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("golden.json")).unwrap()).unwrap();
    let sample = load_mnist_dir(&fixtures().join("mnist-sample"), Split::Test).unwrap();
    let cfg = model.purifier_config();
    let mut scratch = vec![0.0; model.scratch_len()];
    let mut out = vec![0.0; 784];
    for i in 0..16 {
        model
            .purify(&sample.image_f32(i).unwrap(), &cfg, &mut out, &mut scratch)
            .unwrap();
        assert_eq!(
            golden["images"][i]["purified_crc32"],
            format!("{:08x}", digest_f32(&out)).as_str()
        );
    }
}

#[test]
fn shipped_model_fits_the_microcontroller_budget() {
    // Flash: the model must leave room for the firmware within 1 MiB; RAM: the
    // minimum scratch must leave room for stack and buffers within 64 KiB.
    let bytes = std::fs::read(fixtures().join("mnist.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    assert!(bytes.len() <= 900 * 1024, "model is {} bytes", bytes.len());
    let scratch = model.scratch_len() * 4;
    assert!(scratch <= 48 * 1024, "minimum scratch is {scratch} bytes");
}
