//! Shared helpers for the core's tests and benchmark: a fixed-seed RNG, random
//! quantised models written through the core's own writer, and a naive f64
//! reference of every computation.
#![allow(dead_code)]

use pursamere_core::noise::NoiseGenerator;
use pursamere_core::{
    encode_f32_le, encoded_len, quantize::quantize_per_channel, write_model, Conv2d, Dense,
    InputShape, Layer, Metadata, ModelSpec, NetworkSpec, Norm, PurifierConfig, StepRule,
    Upsample2x, CRC_LEN, MAGIC, PREFIX_LEN,
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
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
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

/// Owned storage of one quantised convolution.
pub struct OwnedConv {
    pub cin: u16,
    pub cout: u16,
    pub height: u16,
    pub width: u16,
    pub kernel: u16,
    pub stride: u16,
    pub padding: u16,
    pub weights: Vec<u8>,
    pub scales: Vec<u8>,
    pub bias: Vec<u8>,
}

impl OwnedConv {
    /// Random float weights (He-like scale over the receptive field) quantised with
    /// the core's rule (one row per output channel).
    #[allow(clippy::too_many_arguments)]
    pub fn random(
        rng: &mut Rng,
        (cin, height, width): (usize, usize, usize),
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        gain: f32,
    ) -> Self {
        let fan_in = cin * kernel * kernel;
        let a = gain * (3.0 / fan_in as f32).sqrt();
        let w = rng.vec(cout * fan_in, a);
        let b = rng.vec(cout, 0.1);
        let mut q = vec![0i8; w.len()];
        let mut sc = vec![0f32; cout];
        assert!(quantize_per_channel(&w, fan_in, &mut q, &mut sc));
        let mut scales = vec![0u8; 4 * cout];
        let mut bias = vec![0u8; 4 * cout];
        encode_f32_le(&sc, &mut scales).unwrap();
        encode_f32_le(&b, &mut bias).unwrap();
        OwnedConv {
            cin: cin as u16,
            cout: cout as u16,
            height: height as u16,
            width: width as u16,
            kernel: kernel as u16,
            stride: stride as u16,
            padding: padding as u16,
            weights: q.iter().map(|&v| v as u8).collect(),
            scales,
            bias,
        }
    }

    pub fn conv(&self) -> Conv2d<'_> {
        Conv2d {
            in_channels: self.cin,
            out_channels: self.cout,
            height: self.height,
            width: self.width,
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            weights: &self.weights,
            scales: &self.scales,
            bias: &self.bias,
        }
    }

    pub fn layer(&self) -> Layer<'_> {
        Layer::Conv2d(self.conv())
    }

    /// `(channels, height, width)` of the output.
    pub fn out_shape(&self) -> (usize, usize, usize) {
        let c = self.conv();
        (self.cout as usize, c.out_height(), c.out_width())
    }
}

/// One layer of a general test network.
pub enum OwnedLayer {
    Dense(OwnedDense),
    Conv(OwnedConv),
    Relu,
    Up(Upsample2x),
}

/// What [`OwnedSeq::build`] puts in a network.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Convolution: output channels, kernel, stride, padding.
    Conv(usize, usize, usize, usize),
    Relu,
    Up,
    /// Dense layer with this many outputs (flattens whatever reaches it).
    Dense(usize),
}

/// A network of any layer kinds.
pub struct OwnedSeq {
    pub residual: bool,
    pub layers: Vec<OwnedLayer>,
}

impl OwnedSeq {
    /// Builds `ops` on a `(c, h, w)` input, with shapes chained automatically.
    pub fn build(
        rng: &mut Rng,
        input: (usize, usize, usize),
        ops: &[Op],
        residual: bool,
        gain: f32,
    ) -> Self {
        let mut shape = Some(input);
        let mut len = input.0 * input.1 * input.2;
        let mut layers = Vec::new();
        for &op in ops {
            let layer = match op {
                Op::Conv(cout, k, s, p) => {
                    let c = OwnedConv::random(rng, shape.unwrap(), cout, k, s, p, gain);
                    let out = c.out_shape();
                    shape = Some(out);
                    len = out.0 * out.1 * out.2;
                    OwnedLayer::Conv(c)
                }
                Op::Relu => OwnedLayer::Relu,
                Op::Up => {
                    let (c, h, w) = shape.unwrap();
                    shape = Some((c, 2 * h, 2 * w));
                    len *= 4;
                    OwnedLayer::Up(Upsample2x {
                        channels: c as u16,
                        height: h as u16,
                        width: w as u16,
                    })
                }
                Op::Dense(out) => {
                    let d = OwnedDense::random(rng, len, out, gain);
                    shape = None;
                    len = out;
                    OwnedLayer::Dense(d)
                }
            };
            layers.push(layer);
        }
        OwnedSeq { residual, layers }
    }

    pub fn spec(&self) -> NetworkSpec<'_> {
        let mut layers = heapless::Vec::new();
        for l in &self.layers {
            let layer = match l {
                OwnedLayer::Dense(d) => d.layer(),
                OwnedLayer::Conv(c) => c.layer(),
                OwnedLayer::Relu => Layer::Relu,
                OwnedLayer::Up(u) => Layer::Upsample2x(*u),
            };
            layers.push(layer).unwrap();
        }
        NetworkSpec {
            residual: self.residual,
            layers,
        }
    }
}

/// A model with networks of any layer kinds.
pub struct OwnedAnyModel {
    pub shape: InputShape,
    pub den: OwnedSeq,
    pub cls: OwnedSeq,
    pub classes: usize,
    pub cfg: PurifierConfig,
}

impl OwnedAnyModel {
    pub fn build(
        seed: u64,
        (c, h, w): (usize, usize, usize),
        den_ops: &[Op],
        residual: bool,
        cls_ops: &[Op],
    ) -> Self {
        let mut rng = Rng(seed);
        let gain = if residual { 0.5 } else { 1.0 };
        let den = OwnedSeq::build(&mut rng, (c, h, w), den_ops, residual, gain);
        let cls = OwnedSeq::build(&mut rng, (c, h, w), cls_ops, false, 1.0);
        let classes = match cls_ops.last() {
            Some(Op::Dense(n)) => *n,
            _ => panic!("the classifier must end with a dense layer"),
        };
        OwnedAnyModel {
            shape: InputShape {
                channels: c as u16,
                height: h as u16,
                width: w as u16,
            },
            den,
            cls,
            classes,
            cfg: default_config(),
        }
    }

    /// The small conv denoiser (downsample + upsample, residual) and conv
    /// classifier on 1×8×8 inputs that several tests share.
    /// [`OwnedAnyModel::small_conv`] whose classifier ends in four dense layers:
    /// two with a ReLU between them, then two without (int8 dense pairs of both
    /// kinds once made int8).
    pub fn small_conv_dense_tail(seed: u64) -> Self {
        Self::build(
            seed,
            (1, 8, 8),
            &[Op::Conv(4, 3, 1, 1), Op::Relu, Op::Up, Op::Conv(1, 3, 2, 1)],
            true,
            &[
                Op::Conv(4, 3, 2, 1),
                Op::Relu,
                Op::Dense(12),
                Op::Relu,
                Op::Dense(9),
                Op::Dense(7),
                Op::Dense(10),
            ],
        )
    }

    pub fn small_conv(seed: u64) -> Self {
        Self::build(
            seed,
            (1, 8, 8),
            &[
                Op::Conv(4, 3, 1, 1),
                Op::Relu,
                Op::Conv(6, 3, 2, 1),
                Op::Relu,
                Op::Up,
                Op::Conv(1, 3, 1, 1),
            ],
            true,
            &[
                Op::Conv(4, 3, 1, 1),
                Op::Relu,
                Op::Conv(6, 3, 2, 1),
                Op::Relu,
                Op::Conv(8, 1, 1, 0),
                Op::Relu,
                Op::Dense(10),
            ],
        )
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

/// Serialises a spec without validation and frames it (with the version the
/// writer would stamp).
pub fn frame_unchecked(spec: &ModelSpec<'_>) -> Vec<u8> {
    frame_raw(
        &postcard::to_allocvec(spec).unwrap(),
        pursamere_core::required_version(spec),
        0,
    )
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
        Layer::Conv2d(c) => conv_forward_f64(c, x),
        Layer::Upsample2x(u) => {
            let (ch, h, w) = (u.channels as usize, u.height as usize, u.width as usize);
            let mut y = vec![0.0; 4 * ch * h * w];
            for c in 0..ch {
                for i in 0..2 * h {
                    for j in 0..2 * w {
                        y[(c * 2 * h + i) * 2 * w + j] = x[(c * h + i / 2) * w + j / 2];
                    }
                }
            }
            y
        }
        _ => unreachable!(),
    }
}

/// Input position `o·s + k − p` when it lies in `0..n`.
fn conv_pos(o: usize, k: usize, s: usize, p: usize, n: usize) -> Option<usize> {
    let v = (o * s + k) as isize - p as isize;
    (v >= 0 && (v as usize) < n).then_some(v as usize)
}

/// Naive convolution: `y[o][oy][ox] = Σ w·scale·x + bias` in f64.
pub fn conv_forward_f64(c: &Conv2d<'_>, x: &[f64]) -> Vec<f64> {
    let (cin, cout) = (c.in_channels as usize, c.out_channels as usize);
    let (h, w) = (c.height as usize, c.width as usize);
    let (k, s, p) = (c.kernel as usize, c.stride as usize, c.padding as usize);
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    assert_eq!((oh, ow), (c.out_height(), c.out_width()));
    let mut y = vec![0.0; cout * oh * ow];
    for o in 0..cout {
        let sc = f64::from(c.scale(o));
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0;
                for ci in 0..cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            if let (Some(iy), Some(ix)) =
                                (conv_pos(oy, ky, s, p, h), conv_pos(ox, kx, s, p, w))
                            {
                                acc += f64::from(c.weight(o, ci, ky, kx))
                                    * sc
                                    * x[(ci * h + iy) * w + ix];
                            }
                        }
                    }
                }
                y[(o * oh + oy) * ow + ox] = acc + f64::from(c.bias(o));
            }
        }
    }
    y
}

/// Naive conv VJP written as a gather over the outputs each input feeds.
pub fn conv_vjp_f64(c: &Conv2d<'_>, gy: &[f64]) -> Vec<f64> {
    let (cin, cout) = (c.in_channels as usize, c.out_channels as usize);
    let (h, w) = (c.height as usize, c.width as usize);
    let (k, s, p) = (c.kernel as usize, c.stride as usize, c.padding as usize);
    let (oh, ow) = (c.out_height(), c.out_width());
    let mut gx = vec![0.0; cin * h * w];
    for ci in 0..cin {
        for iy in 0..h {
            for ix in 0..w {
                let mut acc = 0.0;
                for o in 0..cout {
                    for ky in 0..k {
                        for kx in 0..k {
                            // iy = oy·s + ky − p  ⇔  oy = (iy + p − ky) / s.
                            let (ny, nx) = (iy + p, ix + p);
                            if ny < ky || nx < kx || (ny - ky) % s != 0 || (nx - kx) % s != 0 {
                                continue;
                            }
                            let (oy, ox) = ((ny - ky) / s, (nx - kx) / s);
                            if oy >= oh || ox >= ow {
                                continue;
                            }
                            acc += f64::from(c.weight(o, ci, ky, kx))
                                * f64::from(c.scale(o))
                                * gy[(o * oh + oy) * ow + ox];
                        }
                    }
                }
                gx[(ci * h + iy) * w + ix] = acc;
            }
        }
    }
    gx
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
        Layer::Conv2d(c) => conv_vjp_f64(c, gy),
        Layer::Upsample2x(u) => {
            let (ch, h, w) = (u.channels as usize, u.height as usize, u.width as usize);
            let mut gx = vec![0.0; ch * h * w];
            for c in 0..ch {
                for i in 0..2 * h {
                    for j in 0..2 * w {
                        gx[(c * h + i / 2) * w + j / 2] += gy[(c * 2 * h + i) * 2 * w + j];
                    }
                }
            }
            gx
        }
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
                let e = cfg.noise.sample(cfg.seed, m, i as u32) * cfg.sigma;
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

/// The settings the golden pins (`golden.rs`, `golden_conv.rs`) purify with: SAM
/// steps, then sign steps.
pub fn golden_sam(c: &mut PurifierConfig) {
    c.iters = 6;
    c.noise_samples = 5;
}

/// See [`golden_sam`].
pub fn golden_sign(c: &mut PurifierConfig) {
    c.iters = 4;
    c.step = StepRule::Sign;
    c.rho = 0.0;
    c.eta = 0.01;
}

/// The golden digest of a model file: the CRC of the purified bytes and logits of
/// four random 8 × 8 images (`Rng(seed)`) through the model in `bytes`, with its
/// stored purifier settings as `cfg_edit` leaves them (the batched scratch with
/// `batch_fast`), and the four labels.
pub fn purify_classify_digest(
    bytes: &[u8],
    seed: u64,
    cfg_edit: fn(&mut PurifierConfig),
    batch_fast: bool,
) -> (u32, Vec<usize>) {
    let model = pursamere_core::Model::parse(bytes).unwrap();
    let mut cfg = model.purifier_config();
    cfg_edit(&mut cfg);
    let mut rng = Rng(seed);
    let mut all = Vec::new();
    let mut labels = Vec::new();
    let len = if batch_fast {
        model.purify_scratch_len_batched(&cfg, cfg.noise_samples as usize)
    } else {
        model.purify_scratch_len(&cfg)
    };
    let mut scratch = vec![0.0; len.max(model.classify_scratch_len())];
    for _ in 0..4 {
        let x: Vec<f32> = (0..64).map(|_| rng.unit()).collect();
        let mut out = vec![0.0; 64];
        let mut logits = vec![0.0; 10];
        model.purify(&x, &cfg, &mut out, &mut scratch).unwrap();
        labels.push(model.classify(&out, &mut logits, &mut scratch).unwrap());
        all.extend(out.iter().chain(&logits).flat_map(|v| v.to_le_bytes()));
    }
    (crc32(&all), labels)
}

/// Checks one model's golden pins: for each `(generator, SAM pin, sign pin)`,
/// `digest(generator, edit, batched)` gives the pinned CRC, and the batched path the
/// unbatched one's bits.
pub fn assert_golden_pins(
    what: &str,
    digest: impl Fn(NoiseGenerator, fn(&mut PurifierConfig), bool) -> (u32, Vec<usize>),
    pins: [(NoiseGenerator, u32, u32); 2],
) {
    for (noise, pinned_sam, pinned_sign) in pins {
        let got = [
            digest(noise, golden_sam, false),
            digest(noise, golden_sam, true),
            digest(noise, golden_sign, true),
        ];
        for (crc, labels) in &got {
            println!("{what} {noise:?} {crc:#010x} {labels:?}");
        }
        assert_eq!(got[0], got[1], "{what}: batched and unbatched paths differ");
        assert_eq!(
            got[0].0, pinned_sam,
            "{what} {noise:?}: SAM purification bits changed"
        );
        assert_eq!(
            got[2].0, pinned_sign,
            "{what} {noise:?}: sign-step purification bits changed"
        );
    }
}
