//! # pursamere-core
//!
//! The `no_std`, allocation-free runtime of PurSAMERE: it reads a quantised `.psm`
//! model file without copying it, purifies an input with a fixed number of
//! sharpness-aware steps on the expected reconstruction error (ERE) of a score model,
//! and classifies the result. Results are bit-identical on every target.
//!
//! Callers own all memory: each entry point says how many scratch floats it needs
//! ([`Model::scratch_len`] covers all of them for the file's default settings).
//!
//! A complete program (the same as README.md's; it runs as a doc test):
//!
//! ```
//! use pursamere_core::Model;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // A `.psm` file, here the shipped model (from the repository root or a crate
//!     // directory); on a microcontroller, `include_bytes!` it into flash instead.
//!     let bytes = std::fs::read("fixtures/mnist.psm")
//!         .or_else(|_| std::fs::read("../fixtures/mnist.psm"))?;
//!     let model = Model::parse(&bytes)?; // validates, borrows the tensors, copies nothing
//!
//!     // Input: row-major pixels scaled to [0, 1] (8-bit value / 255), channel-major
//!     // for colour, `model.input_len()` values (784 for 28 × 28 MNIST).
//!     let image = vec![0.0f32; model.input_len()];
//!
//!     // The file's purifier settings (σ, M, K, η, ρ, δ, ball, step rule), which a call
//!     // may override; the scratch length depends on them.
//!     let mut cfg = model.purifier_config();
//!     cfg.iters = 5;
//!     let mut scratch = vec![0.0f32; model.purify_scratch_len(&cfg).max(model.classify_scratch_len())];
//!     let mut purified = vec![0.0f32; model.input_len()];
//!     let mut logits = vec![0.0f32; model.num_classes()];
//!     model.purify(&image, &cfg, &mut purified, &mut scratch)?;
//!     let label = model.classify(&purified, &mut logits, &mut scratch)?;
//!     println!("class {label} ({})", model.spec().meta.class_names[label]);
//!     Ok(())
//! }
//! ```
//!
//! Where each concept lives: the file format in `format`, layers and their kernels
//! in `layers`/`kernels` (dense) and `conv` (convolution and upsampling, see
//! `docs/CONV.md`), the noise generator in [`noise`], `F` and `∇F` in `ere`,
//! the SAM loop in `purify`, sizes and classification in `model`,
//! quantisation rules in [`quantize`], and the seam through which a host-side crate
//! (`pursamere-accel`) substitutes SIMD dense kernels with the same bits in
//! [`DenseKernels`]. A host that purifies many images with one configuration can
//! generate the noise once ([`Model::noise_table`], [`NoiseTable`],
//! [`Model::purify_with_noise`]: the same bits); a device keeps generating it inside
//! each call, which needs no extra RAM.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// README.md compiled as doc tests, so that its library example (the same code as
/// the crate docs above) cannot rot. Every code block there tagged `rust` or not
/// tagged at all is compiled and run: tag shell and other blocks (`sh`, `text`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExample;

mod backend;
mod conv;
mod ere;
mod error;
mod format;
mod int8;
mod kernels;
mod layers;
mod model;
mod network;
pub mod noise;
mod purify;
pub mod quantize;

pub use error::{ConfigError, Error, FormatError, NetworkKind, TensorKind};
/// CRC-32 (ISO-HDLC) of the little-endian bytes of `values`: the digest the golden
/// files, the CLI and the firmware use to compare purified images bit for bit.
pub fn digest_f32(values: &[f32]) -> u32 {
    const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = CRC32.digest();
    for v in values {
        d.update(&v.to_le_bytes());
    }
    d.finalize()
}

pub use backend::{int8_dense_pair_in_turn, DenseKernels, Portable};
pub use conv::MAX_KERNEL;
pub use ere::NoiseTable;
pub use format::{
    encode_f32_le, encoded_len, required_version, write_model, InputShape, Metadata, ModelSpec,
    NetworkSpec, CRC_LEN, FORMAT_VERSION, MAGIC, MAX_CLASSES, MAX_DIM, MAX_LAYERS,
    MIN_FORMAT_VERSION, PREFIX_LEN,
};
pub use int8::{quantize_activation, quantize_relu_activation, MAX_FAN_IN};
pub use layers::{Conv2d, Dense, Int8Conv2d, Int8Dense, Layer, Upsample2x};
pub use model::Model;
pub use purify::{Norm, PurifierConfig, StepRule, MAX_ITERS, MAX_NOISE_SAMPLES};
