//! Extracts the first 16 images and labels of the shipped sample for the firmware,
//! and puts memory.x where the linker finds it.

use std::io::Read;
use std::path::PathBuf;

const IMAGES: usize = 16;

fn gunzip(path: &str) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    out
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let sample = "../../fixtures/mnist-sample";
    let images = gunzip(&format!("{sample}/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&format!("{sample}/t10k-labels-idx1-ubyte.gz"));
    assert_eq!(&images[..4], &[0, 0, 8, 3], "bad image file");
    std::fs::write(out.join("images.bin"), &images[16..16 + IMAGES * 784]).unwrap();
    std::fs::write(out.join("labels.bin"), &labels[8..8 + IMAGES]).unwrap();
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=PURSAMERE_FW_ITERS");
    println!("cargo:rerun-if-env-changed=PURSAMERE_FW_NOISE_SAMPLES");
    println!("cargo:rerun-if-changed={sample}/t10k-images-idx3-ubyte.gz");
    println!("cargo:rerun-if-changed={sample}/t10k-labels-idx1-ubyte.gz");
    println!("cargo:rerun-if-changed=../../fixtures/mnist.psm");
}
