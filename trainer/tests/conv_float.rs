//! The float mirror of the core's convolution and upsampling layers: the dfdx
//! forward pass against the core on the same dequantised weights, parameter and
//! input gradients against finite differences, export and safetensors round trips,
//! and the exact gradient of purification with a convolutional denoiser against
//! finite differences of the whole pipeline.

use dfdx::prelude::*;
use pursamere_core::{InputShape, Model, Norm, PurifierConfig, StepRule};
use pursamere_trainer::arch::{build_arch, parse_arch, ArchOutput};
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{Batch, DeviceNet, FloatLayer, FloatModel, FloatNet};
use pursamere_trainer::reference::Reference;
use pursamere_trainer::safetensors_io::{from_safetensors, to_safetensors};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Odd sizes on purpose: 7×9 maps, stride 2 rounds down.
const SHAPE: InputShape = InputShape {
    channels: 2,
    height: 7,
    width: 9,
};
const D: usize = 2 * 7 * 9;

fn cfg() -> PurifierConfig {
    PurifierConfig {
        sigma: 0.3,
        noise_samples: 2,
        iters: 3,
        eta: 0.05,
        rho: 0.05,
        radius: 0.3,
        norm: Norm::Linf,
        step: StepRule::Gradient,
        seed: 4,
        noise: pursamere_core::noise::NoiseGenerator::BoxMullerF32,
    }
}

/// Even sizes for a denoiser that downsamples and upsamples back.
const EVEN: InputShape = InputShape {
    channels: 2,
    height: 6,
    width: 8,
};
const DE: usize = 2 * 6 * 8;

fn net(description: &str, output: ArchOutput, residual: bool, seed: u64) -> FloatNet {
    net_for(SHAPE, description, output, residual, seed)
}

fn net_for(
    shape: InputShape,
    description: &str,
    output: ArchOutput,
    residual: bool,
    seed: u64,
) -> FloatNet {
    let hidden = parse_arch(description).unwrap();
    let mut n = build_arch(description, &hidden, shape, output, residual, 1.0, seed).unwrap();
    // Non-zero biases, so a misplaced bias shows.
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    for l in &mut n.layers {
        if let FloatLayer::Conv2d { bias, .. } | FloatLayer::Dense { bias, .. } = l {
            bias.iter_mut().for_each(|b| *b = rng.gen_range(-0.1..0.1));
        }
    }
    n
}

fn model() -> FloatModel {
    FloatModel {
        dataset: "synthetic".into(),
        input_shape: SHAPE,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        // k = 1, 3 and 5; stride 1 and 2 (7 → 4 rounds down); upsampling.
        denoiser: net("conv4x5,conv3x1", ArchOutput::Image, true, 1),
        classifier: net("conv4,conv5s2,up,dense6", ArchOutput::Classes(3), false, 2),
        purifier: cfg(),
    }
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(0.0..1.0)).collect()
}

/// The core and the dfdx forward pass agree on the dequantised weights (only
/// the order of float sums differs), for the classifier and the denoiser.
#[test]
fn float_forward_matches_the_core() {
    let fm = model();
    let bytes = QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap();
    let core = Model::parse(&bytes).unwrap();
    let deq = FloatModel::from_spec(core.spec()).unwrap();
    assert_eq!(deq.denoiser.layers.len(), fm.denoiser.layers.len());
    let dev = Cpu::default();
    let cls = DeviceNet::<f64, Cpu>::from_float(&deq.classifier, &dev);
    let den = DeviceNet::<f64, Cpu>::from_float(&deq.denoiser, &dev);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = random(&mut rng, 3 * D);
    let xt: Batch<f64, Cpu> =
        dev.tensor_from_vec(x.iter().map(|&v| f64::from(v)).collect(), (3, D));
    let logits = cls.forward(xt.clone()).as_vec();
    let denoised = den.forward(xt).as_vec();
    let mut scratch = vec![0.0; core.scratch_len()];
    for (b, row) in x.chunks(D).enumerate() {
        let mut z = [0f32; 3];
        core.classify(row, &mut z, &mut scratch).unwrap();
        for (k, &v) in z.iter().enumerate() {
            let r = logits[b * 3 + k];
            assert!(
                (f64::from(v) - r).abs() < 1e-4 * (1.0 + r.abs()),
                "logit {v} vs {r}"
            );
        }
        let mut out = vec![0f32; D];
        core.denoise(row, &mut out, &mut scratch).unwrap();
        for (i, &v) in out.iter().enumerate() {
            let r = denoised[b * D + i];
            assert!(
                (f64::from(v) - r).abs() < 1e-4 * (1.0 + r.abs()),
                "denoised[{i}] {v} vs {r}"
            );
        }
    }
}

/// Gradients of a scalar loss with respect to a conv weight and to the input,
/// against central differences (f64): the gather, mask and matmul are
/// differentiated correctly.
#[test]
fn conv_gradients_match_finite_differences() {
    let dev = Cpu::default();
    let fnet = net("conv3x3s2,up,conv2", ArchOutput::Classes(2), false, 9);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let x: Vec<f64> = (0..2 * D).map(|_| rng.gen_range(0.0..1.0)).collect();
    let loss = |n: &DeviceNet<f64, Cpu>, x: &[f64]| -> f64 {
        let xt: Batch<f64, Cpu> = dev.tensor_from_vec(x.to_vec(), (2, D));
        let y = n.forward(xt).as_vec();
        y.iter()
            .enumerate()
            .map(|(i, v)| v * (1.0 + i as f64))
            .sum()
    };
    let n = DeviceNet::<f64, Cpu>::from_float(&fnet, &dev);
    let xt: Batch<f64, Cpu> = dev.tensor_from_vec(x.clone(), (2, D));
    let y = n.forward(xt.leaky_trace());
    let wts: Tensor<(usize, usize), f64, Cpu> = dev.tensor_from_vec(
        (0..y.shape().0 * y.shape().1)
            .map(|i| 1.0 + i as f64)
            .collect(),
        *y.shape(),
    );
    let grads = (y * wts).sum::<Rank0, _>().backward();
    let gx = grads.get(&xt).as_vec();
    let params = n.layers[0].params().unwrap();
    let gw = grads.get(&params.w).as_vec();
    let h = 1e-6;
    for i in [0usize, 5, 17, D - 1, D + 30] {
        let (mut p, mut m) = (x.clone(), x.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (loss(&n, &p) - loss(&n, &m)) / (2.0 * h);
        assert!(
            (fd - gx[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "dx[{i}] {} vs {fd}",
            gx[i]
        );
    }
    for j in [0usize, 4, 13, 26] {
        let mut fp = fnet.clone();
        let mut fm = fnet.clone();
        if let (FloatLayer::Conv2d { weights: wp, .. }, FloatLayer::Conv2d { weights: wm, .. }) =
            (&mut fp.layers[0], &mut fm.layers[0])
        {
            wp[j] += 1e-3;
            wm[j] -= 1e-3;
        }
        // f32 storage of the weights: a larger step, a looser bound.
        let fd = (loss(&DeviceNet::from_float(&fp, &dev), &x)
            - loss(&DeviceNet::from_float(&fm, &dev), &x))
            / 2e-3;
        assert!(
            (fd - gw[j]).abs() < 1e-3 * (1.0 + fd.abs()),
            "dw[{j}] {} vs {fd}",
            gw[j]
        );
    }
}

/// Export keeps the architecture (PyTorch layout in safetensors, geometry in the
/// layer list) and the `.psm` re-reads to the same float network up to int8.
#[test]
fn conv_models_round_trip_through_both_formats() {
    let fm = model();
    let st = to_safetensors(&fm).unwrap();
    let back = from_safetensors(&st).unwrap();
    assert_eq!(back, fm);
    let q = QuantizedModel::from_float(&fm).unwrap();
    assert!(
        q.report().iter().all(|e| e.relative_rms < 0.01),
        "{:?}",
        q.report()
    );
    let bytes = q.to_psm().unwrap();
    let core = Model::parse(&bytes).unwrap();
    let deq = FloatModel::from_spec(core.spec()).unwrap();
    for (a, b) in deq.classifier.layers.iter().zip(&fm.classifier.layers) {
        assert_eq!(a.kind_name(), b.kind_name());
        assert_eq!(a.output_len(0), b.output_len(0));
    }
    // A corrupt geometry token is a clear error, not a panic.
    let (from, to) = (b"conv2d:s2:p1:7x9", b"conv2d:s2:p1:7y9");
    let mut bad = st.clone();
    let at = bad.windows(from.len()).position(|w| w == from).unwrap();
    bad[at..at + to.len()].copy_from_slice(to);
    let e = from_safetensors(&bad).unwrap_err().to_string();
    assert!(e.contains("malformed layer"), "{e}");
}

/// The exact gradient through the unrolled purifier with a convolutional
/// denoiser (autodiff transposes the conv), against finite differences of the
/// whole pipeline.
#[test]
fn full_gradient_with_a_conv_denoiser_matches_finite_differences() {
    for residual in [false, true] {
        let den = net_for(EVEN, "conv3,conv3s2,up", ArchOutput::Image, residual, 5);
        let r: Reference<f64, Cpu> = Reference::new(&Cpu::default(), &den, DE, cfg());
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let x0: Vec<f64> = (0..DE).map(|_| rng.gen_range(0.05..0.95)).collect();
        let w: Vec<f64> = (0..DE).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let loss = |x: &[f64]| -> f64 { r.purify(x).iter().zip(&w).map(|(a, b)| a * b).sum() };
        let t = r.purify_trajectory(&x0);
        let grad = r.purify_vjp(&t, &w);
        let gnorm = grad.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(gnorm > 0.0);
        let h = 1e-7;
        for _ in 0..4 {
            let dir: Vec<f64> = (0..DE).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let p: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a + h * b).collect();
            let m: Vec<f64> = x0.iter().zip(&dir).map(|(a, b)| a - h * b).collect();
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            let an: f64 = grad.iter().zip(&dir).map(|(a, b)| a * b).sum();
            assert!(
                (fd - an).abs() < 1e-5 * gnorm * 10.0,
                "residual {residual}: directional {an} vs FD {fd}"
            );
        }
        // ∇²F u by saved masks and autodiff against differences of ∇F.
        let u: Vec<f64> = (0..DE).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let hu = r.ere_hvp(&x0, &u);
        let (gp, gm) = (
            r.ere_value_and_grad(
                &x0.iter()
                    .zip(&u)
                    .map(|(a, b)| a + 1e-6 * b)
                    .collect::<Vec<_>>(),
            )
            .1,
            r.ere_value_and_grad(
                &x0.iter()
                    .zip(&u)
                    .map(|(a, b)| a - 1e-6 * b)
                    .collect::<Vec<_>>(),
            )
            .1,
        );
        let n = hu.iter().map(|v| v * v).sum::<f64>().sqrt();
        for i in 0..DE {
            let fd = (gp[i] - gm[i]) / 2e-6;
            assert!((fd - hu[i]).abs() < 1e-5 * n, "Hu[{i}] {} vs {fd}", hu[i]);
        }
    }
}

/// Descriptions that cannot work are refused with a message naming the item.
#[test]
fn bad_descriptions_are_named() {
    for (d, needle) in [
        ("conv0", "channel count"),
        ("conv8s3", "stride"),
        ("conv8x9", "kernel"),
        ("pool2", "unknown layer `pool2`"),
        ("dense8,conv4", "follows a dense layer"),
    ] {
        let e = parse_arch(d)
            .and_then(|h| build_arch(d, &h, SHAPE, ArchOutput::Classes(3), false, 1.0, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{d}: {e}");
    }
    let e = build_arch(
        "conv4s2",
        &parse_arch("conv4s2").unwrap(),
        SHAPE,
        ArchOutput::Image,
        true,
        1.0,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("add `up`"), "{e}");
}

/// A mistyped width is an error naming the layer, checked before anything is
/// allocated — not a capacity-overflow panic or an out-of-memory abort.
#[test]
fn oversized_networks_are_refused_before_allocation() {
    let mnist = InputShape {
        channels: 1,
        height: 28,
        width: 28,
    };
    for (description, names) in [
        ("dense18446744073709551615", "dense18446744073709551615"),
        ("dense4294967296", "dense4294967296"),
        ("dense20000,dense20000", "dense20000"),
        ("conv65536", "conv65536"),
        ("conv64,up,up,up,up,up", "`up`"),
    ] {
        let hidden = parse_arch(description).unwrap();
        let err = build_arch(
            description,
            &hidden,
            mnist,
            ArchOutput::Classes(10),
            false,
            1.0,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(names) && err.contains("at most"),
            "{description}: {err}"
        );
    }
    // The largest shipped kind of network is far inside the bounds.
    let hidden = parse_arch("conv32s2,conv64s2,dense1024").unwrap();
    build_arch("", &hidden, mnist, ArchOutput::Classes(10), false, 1.0, 0).unwrap();
}
