//! Generator of `fixtures/tiny-conv.psm`: a small convolutional model with random
//! weights from a fixed seed, written by the core's own writer. It exists so that
//! the firmware check (tests/tests/firmware.rs) runs conv layers under QEMU and
//! compares them bit for bit with the host; it is **not** an accurate classifier.
//!
//! MNIST-shaped input (1 × 28 × 28):
//!
//! * denoiser, residual (`y = x + D(x)`):
//!   conv(1→4, 3×3, stride 2, pad 1) → ReLU → conv(4→1, 3×3, pad 1) → upsample ×2.
//!   Downsampling first keeps the stored activations, and so the scratch RAM, within
//!   the firmware's 64 KiB budget, and covers every conv layer kind of the core
//!   (stride 1 and 2, upsampling, the residual skip).
//! * classifier: conv(1→8, 3×3, s2, p1) → ReLU → conv(8→16, 3×3, s2, p1) → ReLU →
//!   dense(16·7·7 → 10).
//! * purifier: K = 5 SAM steps (ρ = 0.05) with sign steps, M = 2 noise vectors —
//!   cheap enough to run 16 images under QEMU in seconds.
//!
//! `tests/tests/tiny_conv_fixture.rs` fails when the committed file differs from
//! [`bytes`]; `PURSAMERE_UPDATE_FIXTURES=1 cargo test -p pursamere-tests --test
//! tiny_conv_fixture` rewrites it.

use pursamere_core::quantize::quantize_per_channel;
use pursamere_core::{
    encode_f32_le, encoded_len, write_model, Conv2d, Dense, InputShape, Layer, Metadata, ModelSpec,
    NetworkSpec, Norm, PurifierConfig, StepRule, Upsample2x, MAX_LAYERS,
};

/// Seed of the weights.
pub const SEED: u64 = 0x7153_C0A7;

/// Path of the fixture, relative to the repository root.
pub const PATH: &str = "fixtures/tiny-conv.psm";

/// The purifier configuration stored in the file.
pub const PURIFIER: PurifierConfig = PurifierConfig {
    sigma: 0.5,
    noise_samples: 2,
    iters: 5,
    eta: 0.05,
    rho: 0.05,
    radius: 0.3,
    norm: Norm::Linf,
    step: StepRule::Sign,
    seed: 12,
    noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
};

const CLASS_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// SplitMix64: a tiny, fully specified generator (the file must not depend on
/// any crate's idea of randomness).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-a, a)`, from the top 24 bits (exact in f32).
    fn uniform(&mut self, a: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * a
    }

    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }
}

/// Quantised tensors of one conv or dense layer.
struct Tensors {
    weights: Vec<u8>,
    scales: Vec<u8>,
    bias: Vec<u8>,
}

impl Tensors {
    /// `rows × cols` He-uniform weights scaled by `gain`, quantised with the core's
    /// per-row rule; biases uniform in ±0.05.
    fn random(rng: &mut Rng, rows: usize, cols: usize, gain: f32) -> Self {
        let w = rng.vec(rows * cols, gain * (6.0 / cols as f32).sqrt());
        let b = rng.vec(rows, 0.05);
        let mut q = vec![0i8; w.len()];
        let mut s = vec![0f32; rows];
        assert!(quantize_per_channel(&w, cols, &mut q, &mut s));
        let mut scales = vec![0u8; 4 * rows];
        let mut bias = vec![0u8; 4 * rows];
        encode_f32_le(&s, &mut scales).expect("scale bytes");
        encode_f32_le(&b, &mut bias).expect("bias bytes");
        Tensors {
            weights: q.iter().map(|&v| v as u8).collect(),
            scales,
            bias,
        }
    }
}

/// A conv layer's geometry: in, out, input side, kernel, stride, padding.
#[derive(Clone, Copy)]
struct ConvShape {
    cin: u16,
    cout: u16,
    side: u16,
    k: u16,
    s: u16,
    p: u16,
}

fn conv<'a>(c: ConvShape, t: &'a Tensors) -> Layer<'a> {
    Layer::Conv2d(Conv2d {
        in_channels: c.cin,
        out_channels: c.cout,
        height: c.side,
        width: c.side,
        kernel: c.k,
        stride: c.s,
        padding: c.p,
        weights: &t.weights,
        scales: &t.scales,
        bias: &t.bias,
    })
}

fn network<'a>(residual: bool, layers: &[Layer<'a>]) -> NetworkSpec<'a> {
    let mut v = heapless::Vec::<Layer<'a>, MAX_LAYERS>::new();
    for l in layers {
        v.push(*l).expect("at most MAX_LAYERS layers");
    }
    NetworkSpec {
        residual,
        layers: v,
    }
}

/// The fixture's bytes, as the core's writer produces them.
pub fn bytes() -> Vec<u8> {
    let mut rng = Rng(SEED);
    let d1 = ConvShape {
        cin: 1,
        cout: 4,
        side: 28,
        k: 3,
        s: 2,
        p: 1,
    };
    let d2 = ConvShape {
        cin: 4,
        cout: 1,
        side: 14,
        k: 3,
        s: 1,
        p: 1,
    };
    let c1 = ConvShape {
        cin: 1,
        cout: 8,
        side: 28,
        k: 3,
        s: 2,
        p: 1,
    };
    let c2 = ConvShape {
        cin: 8,
        cout: 16,
        side: 14,
        k: 3,
        s: 2,
        p: 1,
    };
    let fan = |c: ConvShape| usize::from(c.cin * c.k * c.k);
    // The residual branch starts small (gain 0.5), as a trained denoiser's would.
    let td1 = Tensors::random(&mut rng, 4, fan(d1), 0.5);
    let td2 = Tensors::random(&mut rng, 1, fan(d2), 0.5);
    let tc1 = Tensors::random(&mut rng, 8, fan(c1), 1.0);
    let tc2 = Tensors::random(&mut rng, 16, fan(c2), 1.0);
    let tc3 = Tensors::random(&mut rng, 10, 16 * 7 * 7, 1.0);
    let spec = ModelSpec {
        meta: Metadata {
            dataset: "mnist",
            input_shape: InputShape {
                channels: 1,
                height: 28,
                width: 28,
            },
            class_names: heapless::Vec::from_slice(&CLASS_NAMES).expect("10 classes"),
        },
        denoiser: network(
            true,
            &[
                conv(d1, &td1),
                Layer::Relu,
                conv(d2, &td2),
                Layer::Upsample2x(Upsample2x {
                    channels: 1,
                    height: 14,
                    width: 14,
                }),
            ],
        ),
        classifier: network(
            false,
            &[
                conv(c1, &tc1),
                Layer::Relu,
                conv(c2, &tc2),
                Layer::Relu,
                Layer::Dense(Dense {
                    inputs: 16 * 7 * 7,
                    outputs: 10,
                    weights: &tc3.weights,
                    scales: &tc3.scales,
                    bias: &tc3.bias,
                }),
            ],
        ),
        purifier: PURIFIER,
    };
    let mut out = vec![0u8; encoded_len(&spec).expect("a valid model")];
    let n = write_model(&spec, &mut out).expect("a valid model");
    out.truncate(n);
    out
}
