//! The CIFAR-10 binary loader on generated files in the exact format (3,073-byte
//! records: label byte, then the 32×32 R, G and B planes), and every error it
//! reports; the real data in an opt-in test.

use std::io::Write;
use std::path::{Path, PathBuf};

use pursamere_trainer::data::{
    cifar10_from_bytes, load_cifar10_dir, read_cifar10_batch, write_idx_gz, DataError, Split,
    CIFAR10_CLASSES, CIFAR10_RECORD_LEN, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES,
};

/// The pixel byte of channel `c`, row `y`, column `x` of image `seed`: distinct
/// enough across channels and positions to catch a transposed layout.
fn px(seed: usize, c: usize, y: usize, x: usize) -> u8 {
    (seed * 7 + c * 101 + y * 13 + x * 3) as u8
}

/// `labels.len()` records; record `k` holds image `first + k`.
fn records(first: usize, labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * CIFAR10_RECORD_LEN);
    for (k, &l) in labels.iter().enumerate() {
        out.push(l);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out.push(px(first + k, c, y, x));
                }
            }
        }
    }
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A full directory: train batch `b` (0-based) holds 3 records (images `3b..3b+3`,
/// labels `(3b + k) % 10`), the test batch 4 records (images 100.., labels 9, 8, 7, 6).
fn cifar_dir(dir: &Path) {
    for (b, name) in CIFAR10_TRAIN_FILES.iter().enumerate() {
        let labels: Vec<u8> = (0..3).map(|k| ((3 * b + k) % 10) as u8).collect();
        write(dir, name, &records(3 * b, &labels));
    }
    write(dir, CIFAR10_TEST_FILE, &records(100, &[9, 8, 7, 6]));
}

#[test]
fn records_decode_channel_major_with_labels() {
    let bytes = records(5, &[3, 0, 9]);
    let ds = cifar10_from_bytes(Path::new("x.bin"), &bytes).unwrap();
    assert_eq!((ds.channels, ds.rows, ds.cols), (3, 32, 32));
    assert_eq!((ds.len(), ds.image_len()), (3, 3072));
    assert_eq!(ds.labels, [3, 0, 9]);
    for i in 0..3 {
        let img = ds.image(i).unwrap();
        // The file's own order: the R plane, then G, then B, each row-major.
        assert_eq!(img, &bytes[i * 3073 + 1..(i + 1) * 3073]);
        for (c, y, x) in [(0, 0, 0), (0, 31, 1), (1, 2, 30), (2, 31, 31)] {
            assert_eq!(img[c * 1024 + y * 32 + x], px(5 + i, c, y, x));
        }
        let f = ds.image_f32(i).unwrap();
        assert_eq!(f.len(), 3072);
        assert_eq!(f[1024], f32::from(px(5 + i, 1, 0, 0)) / 255.0);
    }
    assert_eq!(CIFAR10_CLASSES[0], "airplane");
    assert_eq!(CIFAR10_CLASSES[9], "truck");

    // Selection and the validation split keep the three channels.
    let (tr, val) = ds.split_validation(1, 0).unwrap();
    assert_eq!(
        (tr.channels, tr.len(), val.channels, val.len()),
        (3, 2, 3, 1)
    );
    assert_eq!(tr.pixels.len() + val.pixels.len(), ds.pixels.len());
}

#[test]
fn a_directory_loads_train_batches_in_order_and_the_test_batch() {
    let tmp = tempfile::tempdir().unwrap();
    cifar_dir(tmp.path());
    let train = load_cifar10_dir(tmp.path(), Split::Train).unwrap();
    assert_eq!((train.channels, train.rows, train.cols), (3, 32, 32));
    assert_eq!(train.len(), 15);
    let want: Vec<u8> = (0..15).map(|i| (i % 10) as u8).collect();
    assert_eq!(train.labels, want);
    for i in [0, 4, 14] {
        assert_eq!(train.image(i).unwrap()[2047], px(i, 1, 31, 31), "image {i}");
    }
    let test = load_cifar10_dir(tmp.path(), Split::Test).unwrap();
    assert_eq!(test.labels, [9, 8, 7, 6]);
    assert_eq!(test.image(3).unwrap(), &records(103, &[6])[1..]);

    // A batch the user gzipped reads the same.
    let plain = std::fs::read(tmp.path().join(CIFAR10_TEST_FILE)).unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&plain).unwrap();
    let gz = write(tmp.path(), "test_batch.bin.gz", &e.finish().unwrap());
    assert_eq!(read_cifar10_batch(&gz).unwrap(), test);

    // Three channels cannot be written as IDX (no channel axis there).
    let e = write_idx_gz(tmp.path(), "t10k", &test).unwrap_err();
    assert!(e.to_string().contains("3 channels"), "{e}");
    assert!(!tmp.path().join("t10k-images-idx3-ubyte.gz").exists());
}

#[test]
fn missing_files_are_all_named_with_the_expected_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // An empty directory: every file of the split, and what a CIFAR-10 directory is.
    let e = load_cifar10_dir(d, Split::Train).unwrap_err();
    match &e {
        DataError::CifarMissing { missing, .. } => assert_eq!(missing, &CIFAR10_TRAIN_FILES),
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("data_batch_1.bin, data_batch_2.bin, data_batch_3.bin")
            && msg.contains("test_batch.bin")
            && msg.contains("cifar-10-batches-bin")
            && msg.starts_with(&d.display().to_string()),
        "{msg}"
    );
    let e = load_cifar10_dir(d, Split::Test).unwrap_err();
    assert!(
        matches!(&e, DataError::CifarMissing { missing, .. } if missing == &["test_batch.bin"]),
        "{e:?}"
    );

    // One train batch missing: only that one is named; the test split still loads.
    cifar_dir(d);
    std::fs::remove_file(d.join("data_batch_4.bin")).unwrap();
    let msg = load_cifar10_dir(d, Split::Train).unwrap_err().to_string();
    assert!(
        msg.contains("no data_batch_4.bin here") && !msg.contains("data_batch_1.bin,"),
        "{msg}"
    );
    assert!(load_cifar10_dir(d, Split::Test).is_ok());

    // The unpacked tarball's parent directory: point at the subdirectory.
    let parent = tempfile::tempdir().unwrap();
    std::fs::create_dir(parent.path().join("cifar-10-batches-bin")).unwrap();
    let msg = load_cifar10_dir(parent.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("has a cifar-10-batches-bin subdirectory: point at that instead"),
        "{msg}"
    );

    // A single missing file read directly is an I/O error naming it.
    let e = read_cifar10_batch(&d.join("nope.bin")).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.bin"), "{e}");
}

#[test]
fn bad_sizes_and_labels_name_the_file_and_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // Empty.
    let p = write(d, "empty.bin", b"");
    let e = read_cifar10_batch(&p).unwrap_err();
    assert!(matches!(e, DataError::CifarSize { size: 0, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("empty.bin") && msg.contains("the file is empty") && msg.contains("3,073"),
        "{msg}"
    );

    // Truncated last record and one byte too many.
    let good = records(0, &[1, 2]);
    for (name, bytes, size, whole, rest) in [
        ("cut.bin", &good[..good.len() - 1], 6145u64, 1, 3072),
        ("long.bin", &[&good[..], &[0]].concat()[..], 6147, 2, 1),
        ("short.bin", &good[..3000], 3000, 0, 3000),
    ] {
        let p = write(d, name, bytes);
        let e = read_cifar10_batch(&p).unwrap_err();
        match &e {
            DataError::CifarSize { path, size: s } => assert_eq!((path, *s), (&p, size)),
            other => panic!("{name}: {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.starts_with(&p.display().to_string())
                && msg.contains(&format!(
                    "{size} bytes is not a whole number of records ({whole} × 3,073 + {rest})"
                )),
            "{msg}"
        );
    }

    // A label of 10 (or anything above 9) in the third record.
    for bad in [10u8, 255] {
        let p = write(d, "label.bin", &records(0, &[0, 9, bad, 1]));
        let e = read_cifar10_batch(&p).unwrap_err();
        match &e {
            DataError::CifarLabel {
                record,
                offset,
                label,
                ..
            } => assert_eq!((*record, *offset, *label), (2, 2 * 3073, bad)),
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("label.bin")
                && msg.contains(&format!("record 2 (byte offset 6146) has label {bad}"))
                && msg.contains("0..=9"),
            "{msg}"
        );
    }

    // In a directory, the bad file is the one named.
    let dir = tempfile::tempdir().unwrap();
    cifar_dir(dir.path());
    write(dir.path(), "data_batch_3.bin", &good[..100]);
    let msg = load_cifar10_dir(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("data_batch_3.bin: 100 bytes"), "{msg}");
}

/// Opt-in: the real CIFAR-10 binary directory named by `PURSAMERE_CIFAR10`.
#[test]
#[ignore = "needs the real data: PURSAMERE_CIFAR10=<cifar-10-batches-bin> (run with --ignored)"]
fn real_cifar10_loads_with_published_counts() {
    // CI runs every ignored test but has no CIFAR-10 (none can be fetched there):
    // without the variable this says so and passes.
    let Ok(dir) = std::env::var("PURSAMERE_CIFAR10") else {
        eprintln!("PURSAMERE_CIFAR10 is not set: the real CIFAR-10 check did not run");
        return;
    };
    let dir = PathBuf::from(dir);
    for (split, per_class) in [(Split::Train, 5000), (Split::Test, 1000)] {
        let ds = load_cifar10_dir(&dir, split).unwrap_or_else(|e| panic!("{e}"));
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(counts, [per_class; 10], "{split:?}");
    }
}
