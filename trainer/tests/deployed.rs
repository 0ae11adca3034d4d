//! The evaluation's verdicts (`eval::deployed`) run the purifier with the host's SIMD
//! kernels: they must be the core's own bits, for every noise generator and ball.

use pursamere_core::noise::NoiseGenerator;
use pursamere_core::{InputShape, Model, Norm, PurifierConfig, StepRule};
use pursamere_trainer::eval::deployed;
use pursamere_trainer::export::QuantizedModel;
use pursamere_trainer::model::{FloatModel, FloatNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn psm(noise: NoiseGenerator, norm: Norm) -> Vec<u8> {
    let fm = FloatModel {
        dataset: "synthetic".into(),
        input_shape: InputShape {
            channels: 1,
            height: 8,
            width: 8,
        },
        class_names: (0..5).map(|i| format!("c{i}")).collect(),
        // Widths that leave SIMD tails (not multiples of 16).
        denoiser: FloatNet::mlp(&[64, 40, 24, 64], true, 0.5, 3),
        classifier: FloatNet::mlp(&[64, 20, 5], false, 1.0, 4),
        purifier: PurifierConfig {
            sigma: 0.4,
            noise_samples: 3,
            iters: 4,
            eta: 0.2,
            rho: 0.05,
            radius: 0.25,
            norm,
            step: StepRule::Gradient,
            seed: 11,
            noise,
        },
    };
    QuantizedModel::from_float(&fm).unwrap().to_psm().unwrap()
}

#[test]
fn simd_verdicts_are_the_cores_bits() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..64 * 9).map(|_| rng.gen::<f32>()).collect();
    for noise in [NoiseGenerator::BoxMullerF32, NoiseGenerator::BoxMullerF64] {
        for norm in [Norm::Linf, Norm::L2] {
            let bytes = psm(noise, norm);
            let model = Model::parse(&bytes).unwrap();
            let cfg = model.purifier_config();
            // The core alone, one image at a time with its minimum scratch.
            let mut scratch = vec![0.0; model.scratch_len()];
            let (mut want_px, mut want_logits, mut want_labels) = (vec![], vec![], vec![]);
            for img in x.chunks(64) {
                let mut p = vec![0.0; 64];
                let mut z = vec![0.0; 5];
                model.purify(img, &cfg, &mut p, &mut scratch).unwrap();
                want_labels.push(model.classify(&p, &mut z, &mut scratch).unwrap());
                want_px.extend(p);
                want_logits.extend(z);
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let (px, labels) = deployed::purify_classify(&model, &cfg, &x, &|| {}).unwrap();
            assert_eq!(bits(&px), bits(&want_px), "{noise:?} {norm:?}");
            assert_eq!(labels, want_labels);
            let logits = deployed::logits(&model, Some(&cfg), false, &x).unwrap();
            assert_eq!(bits(&logits), bits(&want_logits), "{noise:?} {norm:?}");
        }
    }
}
