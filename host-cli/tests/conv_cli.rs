//! Convolutional networks through the binary: `train --den-arch/--cls-arch` on
//! generated CIFAR-10 files in the real binary format, `export` (channels from the
//! network), and the core running the exported model; `--resume` naming a changed
//! architecture.

use std::path::Path;

use pursamere_core::Model;

mod common;
use common::{run, text};

/// CIFAR-10 binary batches (1 label byte + 3,072 pixel bytes per record, planes
/// R, G, B): class `c` is bright in colour plane `c % 3` and dark elsewhere, so a
/// tiny network learns something.
fn cifar_dir(dir: &Path, per_file: usize) {
    let mut seed = 1u32;
    let mut next = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 24) as u8
    };
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for name in names {
        let mut bytes = Vec::with_capacity(per_file * 3073);
        for r in 0..per_file {
            let label = (r % 3) as u8;
            bytes.push(label);
            for plane in 0..3u8 {
                for _ in 0..1024 {
                    let noise = next() / 4;
                    bytes.push(if plane == label { 160 + noise } else { noise });
                }
            }
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn a_conv_model_trains_on_cifar_files_exports_and_runs_in_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&data).unwrap();
    cifar_dir(&data, 24);
    let run_dir = dir.path().join("run");
    let (data_s, run_s) = (data.to_str().unwrap(), run_dir.to_str().unwrap());
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            data_s,
            "--out",
            run_s,
            "--den-arch",
            "conv4s2,up",
            "--cls-arch",
            "conv4s2,conv8s2,dense16",
            "--den-epochs",
            "1",
            "--cls-epochs",
            "2",
            "--batch-size",
            "16",
            "--validation",
            "20",
            "--lr",
            "0.01",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}", text(&o));

    // A different architecture on --resume is named, not silently replaced.
    let o = train(&["--resume", "--cls-arch", "conv4s2,dense16"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("--cls-arch conv4s2,dense16 (the checkpoint has conv4s2,conv8s2,dense16)"),
        "{t}"
    );

    let exported = dir.path().join("exported");
    let o = run(&[
        "export",
        "--run",
        run_s,
        "--out",
        exported.to_str().unwrap(),
        "--dataset",
        "cifar10",
        "--side",
        "32",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(exported.join("model.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let shape = model.spec().meta.input_shape;
    assert_eq!((shape.channels, shape.height, shape.width), (3, 32, 32));
    assert_eq!(model.spec().meta.class_names[3], "cat");
    let kinds: Vec<&str> = model
        .spec()
        .classifier
        .layers
        .iter()
        .map(|l| l.kind_name())
        .collect();
    assert_eq!(
        kinds,
        ["conv2d", "relu", "conv2d", "relu", "dense", "relu", "dense"]
    );
    // The core purifies and classifies a record of the test file (channel-major,
    // bytes / 255), and the learnt colour rule holds for most records.
    let test = std::fs::read(data.join("test_batch.bin")).unwrap();
    let cfg = model.purifier_config();
    let mut scratch = vec![0.0; model.scratch_len().max(model.purify_scratch_len(&cfg))];
    let mut right = 0;
    for rec in test.chunks(3073).take(12) {
        let x: Vec<f32> = rec[1..].iter().map(|&b| f32::from(b) / 255.0).collect();
        let mut purified = vec![0.0; 3072];
        model.purify(&x, &cfg, &mut purified, &mut scratch).unwrap();
        assert!(purified.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut logits = vec![0.0; model.num_classes()];
        let class = model.classify(&x, &mut logits, &mut scratch).unwrap();
        right += usize::from(class == usize::from(rec[0]));
    }
    assert!(right >= 9, "{right} of 12 right");

    // The purification ball in L2 (`--ball l2`) is stored and used.
    let l2 = dir.path().join("l2");
    let o = run(&[
        "export",
        "--run",
        run_s,
        "--out",
        l2.to_str().unwrap(),
        "--dataset",
        "cifar10",
        "--side",
        "32",
        "--ball",
        "l2",
        "--radius",
        "1.5",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(l2.join("model.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let cfg = model.purifier_config();
    assert_eq!((cfg.norm, cfg.radius), (pursamere_core::Norm::L2, 1.5));
    let x: Vec<f32> = test[1..3073]
        .iter()
        .map(|&b| f32::from(b) / 255.0)
        .collect();
    let mut purified = vec![0.0; 3072];
    model.purify(&x, &cfg, &mut purified, &mut scratch).unwrap();
    let moved: f32 = x
        .iter()
        .zip(&purified)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt();
    assert!(moved <= 1.5 * 1.0001, "moved {moved}");
}
