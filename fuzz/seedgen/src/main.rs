//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/`.

#[allow(dead_code, clippy::all)]
#[path = "../../../core/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;

use common::{OwnedAnyModel, OwnedModel};
use pursamere_core::{Norm, StepRule};

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// The `idx` target's input layout: split point (u16 LE), classes, images, labels.
fn idx_input(images: &[u8], labels: &[u8], classes: u8) -> Vec<u8> {
    let mut out = (images.len() as u16).to_le_bytes().to_vec();
    out.push(classes);
    out.extend_from_slice(images);
    out.extend_from_slice(labels);
    out
}

fn png_bytes(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if color == png::ColorType::Indexed {
            enc.set_palette(vec![0, 0, 0, 255, 255, 255, 128, 64, 32, 1, 2, 3]);
        }
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(data).unwrap();
    }
    out
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");

    // parse_and_run: the shipped model plus small dense and conv models.
    let dir = root.join("parse_and_run");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mnist.psm");
    put(&dir, "mnist.psm", &std::fs::read(shipped).unwrap());
    put(
        &dir,
        "dense-4x4.psm",
        &OwnedModel::random(1, (4, 4), &[8], true, &[6], 3).bytes(),
    );
    let mut m = OwnedModel::random(2, (3, 5), &[], false, &[], 2);
    m.cfg.norm = Norm::L2;
    m.cfg.step = StepRule::Sign;
    m.cfg.rho = 0.0;
    m.cfg.noise_samples = 1;
    put(&dir, "dense-3x5-l2-sign.psm", &m.bytes());
    put(&dir, "conv-8x8.psm", &OwnedAnyModel::small_conv(3).bytes());

    // idx: MNIST-like pairs, raw and gzipped.
    let dir = root.join("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| (i * 11) as u8).collect();
    let images = idx(0x0803, &[2, 3, 4], &pixels);
    let labels = idx(0x0801, &[2], &[1, 7]);
    put(&dir, "raw-2x3x4", &idx_input(&images, &labels, 10));
    put(&dir, "gz-2x3x4", &idx_input(&gz(&images), &gz(&labels), 10));
    put(
        &dir,
        "raw-empty",
        &idx_input(&idx(0x0803, &[0, 2, 2], &[]), &idx(0x0801, &[0], &[]), 10),
    );
    put(
        &dir,
        "raw-1x1x1",
        &idx_input(&idx(0x0803, &[1, 1, 1], &[9]), &idx(0x0801, &[1], &[0]), 2),
    );

    // png: every colour type and a 16-bit image.
    let dir = root.join("png");
    use png::{BitDepth as B, ColorType as C};
    put(
        &dir,
        "gray8-3x2.png",
        &png_bytes(3, 2, C::Grayscale, B::Eight, &[0, 50, 100, 150, 200, 250]),
    );
    put(
        &dir,
        "gray16-2x2.png",
        &png_bytes(2, 2, C::Grayscale, B::Sixteen, &[0, 1, 2, 3, 4, 5, 6, 7]),
    );
    put(
        &dir,
        "gray1-8x1.png",
        &png_bytes(8, 1, C::Grayscale, B::One, &[0b1010_0110]),
    );
    put(
        &dir,
        "graya-2x1.png",
        &png_bytes(2, 1, C::GrayscaleAlpha, B::Eight, &[10, 255, 20, 128]),
    );
    put(
        &dir,
        "rgb-2x2.png",
        &png_bytes(
            2,
            2,
            C::Rgb,
            B::Eight,
            &[255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9],
        ),
    );
    put(
        &dir,
        "rgba-1x2.png",
        &png_bytes(1, 2, C::Rgba, B::Eight, &[1, 2, 3, 4, 5, 6, 7, 8]),
    );
    put(
        &dir,
        "indexed-4x1.png",
        &png_bytes(4, 1, C::Indexed, B::Two, &[0b0001_1011]),
    );
}
