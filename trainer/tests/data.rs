//! The IDX loader on generated files: good files (raw and gzipped) and every kind of
//! bad file; the full data sets in an opt-in test.

use std::io::Write;
use std::path::{Path, PathBuf};

use pursamere_trainer::data::{
    load_idx_pair, load_mnist_dir, read_idx_images, read_idx_labels, DataError, Split,
    IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC,
};

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Three 2×3 images with labels 0, 9, 4.
fn good(dir: &Path, gzip: bool) -> (PathBuf, PathBuf) {
    let pixels: Vec<u8> = (0..18).collect();
    let images = idx(IDX_IMAGES_MAGIC, &[3, 2, 3], &pixels);
    let labels = idx(IDX_LABELS_MAGIC, &[3], &[0, 9, 4]);
    if gzip {
        (
            write(dir, "i.gz", &gz(&images)),
            write(dir, "l.gz", &gz(&labels)),
        )
    } else {
        (write(dir, "i", &images), write(dir, "l", &labels))
    }
}

#[test]
fn reads_raw_and_gzipped_files_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (i, l) = good(dir.path(), false);
    let raw = load_idx_pair(&i, &l, 10).unwrap();
    let (i, l) = good(dir.path(), true);
    let zipped = load_idx_pair(&i, &l, 10).unwrap();
    assert_eq!(raw, zipped);
    assert_eq!((raw.len(), raw.rows, raw.cols), (3, 2, 3));
    assert_eq!(raw.labels, [0, 9, 4]);
    assert_eq!(raw.image(1).unwrap(), &[6, 7, 8, 9, 10, 11]);
    assert_eq!(raw.image(3), None);
    assert_eq!(raw.image_f32(2).unwrap()[5], 17.0 / 255.0);
}

#[test]
fn bad_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (gi, gl) = good(d, false);
    let msg = |e: DataError| e.to_string();

    // Missing file.
    let e = load_idx_pair(&d.join("nope"), &gl, 10).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }) && msg(e).contains("nope"));

    // Labels given where images are expected (bad magic).
    let e = load_idx_pair(&gl, &gl, 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::BadMagic {
                found: IDX_LABELS_MAGIC,
                ..
            }
        ),
        "{e}"
    );
    assert!(msg(e).contains("0x00000803"));

    // Truncated data.
    let short = write(d, "short", &idx(IDX_IMAGES_MAGIC, &[3, 2, 3], &[0; 17]));
    let e = load_idx_pair(&short, &gl, 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Length {
                expected: 18,
                found: 17,
                ..
            }
        ),
        "{e}"
    );

    // Truncated header.
    let head = write(d, "head", &IDX_IMAGES_MAGIC.to_be_bytes()[..]);
    let e = read_idx_images(&head).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                found: 4,
                needed: 16,
                ..
            }
        ),
        "{e}"
    );
    assert!(msg(e).contains("truncated (4 bytes)"));

    // Empty file: said so, not "magic 0x00000000".
    let empty = write(d, "empty", &[]);
    let e = read_idx_images(&empty).unwrap_err();
    assert!(matches!(e, DataError::Truncated { found: 0, .. }), "{e}");
    let m = msg(e);
    assert!(m.contains("empty") && !m.contains("magic"), "{m}");
    let two = write(d, "two-bytes", &[0, 0]);
    let e = read_idx_labels(&two).unwrap_err();
    assert!(msg(e).contains("truncated (2 bytes)"));

    // Zero-sized images.
    let zero = write(d, "zero", &idx(IDX_IMAGES_MAGIC, &[3, 0, 3], &[]));
    assert!(matches!(
        read_idx_images(&zero).unwrap_err(),
        DataError::BadDims { .. }
    ));

    // Count mismatch.
    let two = write(d, "two", &idx(IDX_LABELS_MAGIC, &[2], &[1, 2]));
    let e = load_idx_pair(&gi, &two, 10).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                image_count: 3,
                label_count: 2,
                ..
            }
        ),
        "{e}"
    );

    // Label out of range.
    let e = load_idx_pair(&gi, &gl, 5).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelRange {
                index: 1,
                label: 9,
                classes: 5,
                ..
            }
        ),
        "{e}"
    );

    // Corrupt gzip stream.
    let mut z = gz(&idx(IDX_LABELS_MAGIC, &[3], &[0, 1, 2]));
    let n = z.len();
    z.truncate(n - 6);
    let bad = write(d, "bad.gz", &z);
    assert!(matches!(
        load_idx_pair(&gi, &bad, 10).unwrap_err(),
        DataError::Io { .. }
    ));
}

#[test]
fn validation_split_is_seeded_and_disjoint() {
    let dir = tempfile::tempdir().unwrap();
    let n = 50u32;
    let pixels: Vec<u8> = (0..n).flat_map(|i| [i as u8; 4]).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let i = write(dir.path(), "i", &idx(IDX_IMAGES_MAGIC, &[n, 2, 2], &pixels));
    let l = write(dir.path(), "l", &idx(IDX_LABELS_MAGIC, &[n], &labels));
    let ds = load_idx_pair(&i, &l, 10).unwrap();
    let (train, val) = ds.split_validation(10, 3).unwrap();
    assert_eq!((train.len(), val.len()), (40, 10));
    let (train2, val2) = ds.split_validation(10, 3).unwrap();
    assert_eq!((&train, &val), (&train2, &val2), "same seed, same split");
    let (_, val3) = ds.split_validation(10, 4).unwrap();
    assert_ne!(val, val3, "another seed, another split");
    // Every example lands in exactly one part, with its own label.
    let mut ids: Vec<u8> = train
        .pixels
        .chunks(4)
        .chain(val.pixels.chunks(4))
        .map(|c| c[0])
        .collect();
    for (k, c) in train
        .pixels
        .chunks(4)
        .chain(val.pixels.chunks(4))
        .enumerate()
    {
        let lab = train.labels.iter().chain(&val.labels).nth(k).unwrap();
        assert_eq!(c[0] % 10, *lab);
    }
    ids.sort();
    assert_eq!(ids, (0..n as u8).collect::<Vec<_>>());
    assert!(matches!(
        ds.split_validation(50, 0),
        Err(DataError::Split { .. })
    ));
}

/// Opt-in: the real data sets beside the repository (`../shared/data`).
#[test]
#[ignore = "needs ../shared/data (run with --ignored)"]
fn full_mnist_and_fashion_mnist_load_with_published_counts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let mnist_train = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
    let mnist_test = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];
    for (name, split, want) in [
        ("mnist", Split::Train, mnist_train),
        ("mnist", Split::Test, mnist_test),
        ("fashion-mnist", Split::Train, [6000; 10]),
        ("fashion-mnist", Split::Test, [1000; 10]),
    ] {
        let ds = load_mnist_dir(&root.join(name), split).unwrap();
        assert_eq!((ds.rows, ds.cols), (28, 28));
        let mut counts = [0usize; 10];
        for &l in &ds.labels {
            counts[l as usize] += 1;
        }
        assert_eq!(counts, want, "{name} {split:?}");
    }
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn png_directory_with_labels_file() {
    use pursamere_trainer::data::load_png_dir;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_png(
        &d.join("a.png"),
        2,
        2,
        png::ColorType::Grayscale,
        &[0, 50, 100, 255],
    );
    // RGB grey pixels convert exactly; a pure red pixel becomes its luma.
    write_png(
        &d.join("b.png"),
        2,
        2,
        png::ColorType::Rgb,
        &[7, 7, 7, 255, 0, 0, 0, 0, 0, 9, 9, 9],
    );
    let labels = write(d, "labels.txt", b"# file label\na.png 3\n\nb.png 1\n");
    let ds = load_png_dir(d, &labels, 10).unwrap();
    assert_eq!((ds.len(), ds.rows, ds.cols), (2, 2, 2));
    assert_eq!(ds.labels, [3, 1]);
    assert_eq!(ds.image(0).unwrap(), &[0, 50, 100, 255]);
    assert_eq!(ds.image(1).unwrap(), &[7, 76, 0, 9]);

    // Wrong size, bad label, missing file, not a PNG, empty list.
    write_png(&d.join("c.png"), 3, 2, png::ColorType::Grayscale, &[0; 6]);
    let l = write(d, "l1.txt", b"a.png 1\nc.png 2\n");
    let e = load_png_dir(d, &l, 10).unwrap_err().to_string();
    assert!(
        e.contains("c.png") && e.contains("3x2") && e.contains("2x2"),
        "{e}"
    );
    let l = write(d, "l2.txt", b"a.png 12\n");
    let e = load_png_dir(d, &l, 10).unwrap_err().to_string();
    assert!(e.contains("l2.txt:1") && e.contains("below 10"), "{e}");
    let l = write(d, "l3.txt", b"nope.png 1\n");
    assert!(load_png_dir(d, &l, 10)
        .unwrap_err()
        .to_string()
        .contains("nope.png"));
    write(d, "fake.png", b"not a png");
    let l = write(d, "l4.txt", b"fake.png 1\n");
    let e = load_png_dir(d, &l, 10).unwrap_err().to_string();
    assert!(e.contains("fake.png") && e.contains("PNG"), "{e}");
    let l = write(d, "l5.txt", b"# nothing\n");
    assert!(load_png_dir(d, &l, 10)
        .unwrap_err()
        .to_string()
        .contains("no images"));
    let l = write(d, "l6.txt", b"a.png\n");
    assert!(load_png_dir(d, &l, 10)
        .unwrap_err()
        .to_string()
        .contains("expected"));
}

#[test]
fn a_directory_one_level_off_says_where_the_files_are() {
    use pursamere_trainer::data::{load_mnist_dir, Split};
    let tmp = tempfile::tempdir().unwrap();
    let inner = tmp.path().join("mnist");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("t10k-images-idx3-ubyte.gz"), b"x").unwrap();
    // The parent: the files are one level down.
    let e = load_mnist_dir(tmp.path(), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not an MNIST-layout directory")
            && e.contains("t10k-labels-idx1-ubyte[.gz]")
            && e.contains(&format!("they are in {}", inner.display())),
        "{e}"
    );
    // A file inside the data set: the files are beside it.
    let e = load_mnist_dir(&inner.join("t10k-images-idx3-ubyte.gz"), Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("they are in {}", inner.display())),
        "{e}"
    );
    // Nowhere near: no hint, still the layout.
    let e = load_mnist_dir(&tmp.path().join("none"), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte[.gz]") && !e.contains("they are in"),
        "{e}"
    );
}

/// A colour image (channel-major, as the models hold it) is written as RGB, each
/// pixel's channels interleaved; grey as grey; other channel counts are refused.
#[test]
fn png_encoding_interleaves_colour_channels() {
    use pursamere_trainer::data::{encode_png, read_png_8bit};
    let dir = tempfile::tempdir().unwrap();
    // 3 × 1 × 2: red plane [10, 11], green [20, 21], blue [30, 31].
    let planar = [10, 11, 20, 21, 30, 31];
    let path = dir.path().join("rgb.png");
    std::fs::write(&path, encode_png(3, 2, 1, &planar).unwrap()).unwrap();
    assert_eq!(
        read_png_8bit(&path).unwrap(),
        (2, 1, 3, vec![10, 20, 30, 11, 21, 31])
    );
    let path = dir.path().join("grey.png");
    std::fs::write(&path, encode_png(1, 3, 2, &planar).unwrap()).unwrap();
    assert_eq!(read_png_8bit(&path).unwrap(), (3, 2, 1, planar.to_vec()));
    let err = encode_png(2, 3, 1, &planar).unwrap_err().to_string();
    assert!(err.contains("not 2"), "{err}");
    let err = encode_png(3, 2, 2, &planar).unwrap_err().to_string();
    assert!(
        err.contains("6 pixel values for a 3 × 2 × 2 image"),
        "{err}"
    );
}
