//! Shared helpers for the core's tests and benchmark: a fixed-seed RNG, random
//! quantised models written through the core's own writer, and a naive f64
//! reference of every computation.
#![allow(dead_code)]

use pursamere_core::{
    encode_f32_le, encoded_len, quantize::quantize_per_channel, write_model, Dense, InputShape,
    Layer, Metadata, ModelSpec, NetworkSpec, Norm, PurifierConfig, StepRule, CRC_LEN, MAGIC,
    PREFIX_LEN,
};

/// SplitMix64: tiny, fixed-seed, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-a, a).
    pub fn sym(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
}

/// Owned storage of one quantised dense layer.
pub struct OwnedDense {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<u8>,
    pub scales: Vec<u8>,
    pub bias: Vec<u8>,
}

impl OwnedDense {
    /// Random float weights (He-like scale) quantised with the core's rule.
    pub fn random(rng: &mut Rng, inputs: usize, outputs: usize, gain: f32) -> Self {
        let a = gain * (3.0 / inputs as f32).sqrt();
        let w = rng.vec(inputs * outputs, a);
        let b = rng.vec(outputs, 0.1);
        Self::from_float(&w, &b, inputs)
    }

    pub fn from_float(w: &[f32], b: &[f32], inputs: usize) -> Self {
        let outputs = b.len();
        let mut q = vec![0i8; w.len()];
        let mut s = vec![0f32; outputs];
        assert!(quantize_per_channel(w, inputs, &mut q, &mut s));
        let mut scales = vec![0u8; 4 * outputs];
        let mut bias = vec![0u8; 4 * outputs];
        encode_f32_le(&s, &mut scales).unwrap();
        encode_f32_le(b, &mut bias).unwrap();
        OwnedDense {
            inputs,
            outputs,
            weights: q.iter().map(|&v| v as u8).collect(),
            scales,
            bias,
        }
    }

    pub fn layer(&self) -> Layer<'_> {
        Layer::Dense(Dense {
            inputs: self.inputs as u32,
            outputs: self.outputs as u32,
            weights: &self.weights,
            scales: &self.scales,
            bias: &self.bias,
        })
    }
}

/// An MLP `dims[0] → dims[1] → … → dims[n]` with ReLU between dense layers.
pub struct OwnedNet {
    pub residual: bool,
    pub dense: Vec<OwnedDense>,
}

impl OwnedNet {
    pub fn random(rng: &mut Rng, dims: &[usize], residual: bool, gain: f32) -> Self {
        let dense = dims
            .windows(2)
            .map(|w| OwnedDense::random(rng, w[0], w[1], gain))
            .collect();
        OwnedNet { residual, dense }
    }

    pub fn spec(&self) -> NetworkSpec<'_> {
        let mut layers = heapless::Vec::new();
        for (i, d) in self.dense.iter().enumerate() {
            if i > 0 {
                layers.push(Layer::Relu).unwrap();
            }
            layers.push(d.layer()).unwrap();
        }
        NetworkSpec {
            residual: self.residual,
            layers,
        }
    }
}

pub fn default_config() -> PurifierConfig {
    PurifierConfig {
        sigma: 0.25,
        noise_samples: 4,
        iters: 5,
        eta: 0.05,
        rho: 0.05,
        radius: 0.3,
        norm: Norm::Linf,
        step: StepRule::Gradient,
        seed: 7,
    }
}

pub const CLASS_NAMES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// A random model: owns the tensors, hands out specs and file bytes.
pub struct OwnedModel {
    pub shape: InputShape,
    pub den: OwnedNet,
    pub cls: OwnedNet,
    pub classes: usize,
    pub cfg: PurifierConfig,
}

impl OwnedModel {
    /// `den_hidden`: hidden widths of the denoiser; `cls_hidden` likewise.
    pub fn random(
        seed: u64,
        (h, w): (u16, u16),
        den_hidden: &[usize],
        residual: bool,
        cls_hidden: &[usize],
        classes: usize,
    ) -> Self {
        let mut rng = Rng(seed);
        let d = usize::from(h) * usize::from(w);
        let mut dd = vec![d];
        dd.extend_from_slice(den_hidden);
        dd.push(d);
        let mut cd = vec![d];
        cd.extend_from_slice(cls_hidden);
        cd.push(classes);
        let gain = if residual { 0.5 } else { 1.0 };
        OwnedModel {
            shape: InputShape {
                channels: 1,
                height: h,
                width: w,
            },
            den: OwnedNet::random(&mut rng, &dd, residual, gain),
            cls: OwnedNet::random(&mut rng, &cd, false, 1.0),
            classes,
            cfg: default_config(),
        }
    }

    pub fn spec(&self) -> ModelSpec<'_> {
        ModelSpec {
            meta: Metadata {
                dataset: "synthetic",
                input_shape: self.shape,
                class_names: heapless::Vec::from_slice(&CLASS_NAMES[..self.classes.min(10)])
                    .unwrap(),
            },
            denoiser: self.den.spec(),
            classifier: self.cls.spec(),
            purifier: self.cfg,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let spec = self.spec();
        let mut out = vec![0u8; encoded_len(&spec).unwrap()];
        let n = write_model(&spec, &mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }
}

/// Frames a payload without validating it (to build invalid files on purpose).
pub fn frame_raw(payload: &[u8], version: u16, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Serialises a spec without validation and frames it.
pub fn frame_unchecked(spec: &ModelSpec<'_>) -> Vec<u8> {
    frame_raw(&postcard::to_allocvec(spec).unwrap(), 1, 0)
}

/// Recomputes the CRC of a file in place.
pub fn fix_crc(file: &mut [u8]) {
    let n = file.len();
    if n < PREFIX_LEN + CRC_LEN {
        return;
    }
    let crc = crc32(&file[..n - CRC_LEN]);
    file[n - CRC_LEN..].copy_from_slice(&crc.to_le_bytes());
}

/// Bitwise CRC-32 (ISO-HDLC), written independently of the core's `crc` use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

// ---------------------------------------------------------------------------
// Naive f64 reference.

/// Dequantised weights of a dense layer in f64: (w[o][i], bias[o]).
pub fn dense_f64(d: &Dense<'_>) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (n, m) = (d.inputs as usize, d.outputs as usize);
    let w = (0..m)
        .map(|o| {
            (0..n)
                .map(|i| f64::from(d.weight(o, i)) * f64::from(d.scale(o)))
                .collect()
        })
        .collect();
    let b = (0..m).map(|o| f64::from(d.bias(o))).collect();
    (w, b)
}

pub fn layer_forward_f64(l: &Layer<'_>, x: &[f64]) -> Vec<f64> {
    match l {
        Layer::Dense(d) => {
            let (w, b) = dense_f64(d);
            w.iter()
                .zip(&b)
                .map(|(row, bo)| row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() + bo)
                .collect()
        }
        Layer::Relu => x.iter().map(|&v| v.max(0.0)).collect(),
        _ => unreachable!(),
    }
}

pub fn layer_vjp_f64(l: &Layer<'_>, x: &[f64], gy: &[f64]) -> Vec<f64> {
    match l {
        Layer::Dense(d) => {
            let (w, _) = dense_f64(d);
            (0..d.inputs as usize)
                .map(|i| w.iter().zip(gy).map(|(row, g)| row[i] * g).sum())
                .collect()
        }
        Layer::Relu => x
            .iter()
            .zip(gy)
            .map(|(&xi, &g)| if xi > 0.0 { g } else { 0.0 })
            .collect(),
        _ => unreachable!(),
    }
}

/// `D(y)` in f64.
pub fn denoise_f64(net: &NetworkSpec<'_>, y: &[f64]) -> Vec<f64> {
    let mut a = y.to_vec();
    for l in &net.layers {
        a = layer_forward_f64(l, &a);
    }
    if net.residual {
        a.iter().zip(y).map(|(n, y)| n + y).collect()
    } else {
        a
    }
}

/// `F(x)` in f64 with the core's noise (σ ε computed as in the core, in f32).
pub fn ere_f64(spec: &ModelSpec<'_>, cfg: &PurifierConfig, x: &[f64]) -> f64 {
    let d = x.len();
    let mut total = 0.0;
    for m in 0..cfg.noise_samples {
        let y: Vec<f64> = (0..d)
            .map(|i| {
                let e = pursamere_core::noise::standard_normal(cfg.seed, m, i as u32) * cfg.sigma;
                x[i] + f64::from(e)
            })
            .collect();
        let dy = denoise_f64(&spec.denoiser, &y);
        total += dy
            .iter()
            .zip(x)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>();
    }
    total / f64::from(cfg.noise_samples)
}
