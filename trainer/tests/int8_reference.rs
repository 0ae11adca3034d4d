//! The float mirror of the core's int8-activation layers: the reference classifies
//! the int8 fixture as the core does, and its input quantisation passes gradients
//! straight through.

use dfdx::prelude::*;
use pursamere_core::Model;
use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::model::{Batch, DeviceNet, FloatLayer, FloatModel, FloatNet};

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

#[test]
fn int8_reference_classifies_like_the_core() {
    let bytes = std::fs::read(fixture("mnist-robust-int8.psm")).unwrap();
    let core = Model::parse(&bytes).unwrap();
    let fm = FloatModel::from_spec(core.spec()).unwrap();
    // Each int8 layer mirrors as its input quantisation and the float layer.
    let kinds: Vec<&str> = fm
        .classifier
        .layers
        .iter()
        .map(FloatLayer::kind_name)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "quantize-input").count(),
        4,
        "{kinds:?}"
    );
    let sample = load_mnist_dir(&fixture("mnist-sample"), Split::Test).unwrap();
    let n = 64;
    let d = core.input_len();
    let x: Vec<f32> = (0..n).flat_map(|i| sample.image_f32(i).unwrap()).collect();
    let dev = Cpu::default();
    let cls = DeviceNet::<f32, Cpu>::from_float(&fm.classifier, &dev);
    let logits = cls.forward(dev.tensor_from_vec(x.clone(), (n, d))).as_vec();
    let mut scratch = vec![0.0; core.classify_scratch_len()];
    let mut z = vec![0.0f32; 10];
    let (mut worst, mut span) = (0.0f32, 0.0f32);
    for (b, row) in x.chunks(d).enumerate() {
        let label = core.classify(row, &mut z, &mut scratch).unwrap();
        let r = &logits[b * 10..(b + 1) * 10];
        let rl = (0..10).fold(0, |m, k| if r[k] > r[m] { k } else { m });
        assert_eq!(label, rl, "image {b}: core {z:?}, reference {r:?}");
        for (a, c) in z.iter().zip(r) {
            worst = worst.max((a - c).abs());
            span = span.max(a.abs());
        }
    }
    // Float sums in another order may move a hidden value across a rounding step
    // now and then; the logits stay close.
    assert!(
        worst <= 1e-2 * span,
        "max |core − reference| {worst}, logit span {span}"
    );
}

#[test]
fn quantize_input_passes_gradients_straight_through() {
    let net = FloatNet {
        residual: false,
        layers: vec![
            FloatLayer::QuantizeInput { multiplier: 10.0 },
            FloatLayer::Dense {
                inputs: 3,
                outputs: 1,
                weights: vec![1.0, 2.0, -3.0],
                bias: vec![0.5],
            },
        ],
    };
    let dev = Cpu::default();
    let dn = DeviceNet::<f64, Cpu>::from_float(&net, &dev);
    let x: Batch<f64, Cpu> = dev.tensor_from_vec(vec![0.123, -0.456, 20.0], (1, 3));
    let y = dn.forward(x.leaky_trace());
    // Forward: the core's quantisation, q(x) / m = 0.1, −0.5 (−4.56 rounds half up
    // to −5), 12.7 (clamped).
    let v = y.as_vec()[0];
    let want = 0.1f32 as f64 * 1.0 + (-0.5f32) as f64 * 2.0 - 12.7f32 as f64 * 3.0 + 0.5;
    assert!((v - want).abs() < 1e-6, "{v} vs {want}");
    // Backward: the identity through the quantisation.
    let grads = y.sum::<Rank0, _>().backward();
    let g = grads.get(&x).as_vec();
    assert_eq!(g, vec![1.0, 2.0, -3.0]);
}

#[test]
fn the_float_twin_of_the_int8_fixture_is_the_float_fixture() {
    // `pursamere int8` kept the float model's weights and only added the input
    // quantisations: without them, the mirror is the float model's again.
    let int8 = std::fs::read(fixture("mnist-robust-int8.psm")).unwrap();
    let float = std::fs::read(fixture("mnist-robust.psm")).unwrap();
    let fm8 = FloatModel::from_spec(Model::parse(&int8).unwrap().spec()).unwrap();
    let fmf = FloatModel::from_spec(Model::parse(&float).unwrap().spec()).unwrap();
    let twin = fm8.float_twin();
    assert!(twin
        .classifier
        .layers
        .iter()
        .all(|l| !matches!(l, FloatLayer::QuantizeInput { .. })));
    assert_eq!(
        twin.classifier.layers.len() + 4,
        fm8.classifier.layers.len()
    );
    let sample = load_mnist_dir(&fixture("mnist-sample"), Split::Test).unwrap();
    let (n, d) = (16, 784);
    let x: Vec<f32> = (0..n).flat_map(|i| sample.image_f32(i).unwrap()).collect();
    let dev = Cpu::default();
    let logits = |net: &FloatNet| {
        DeviceNet::<f32, Cpu>::from_float(net, &dev)
            .forward(dev.tensor_from_vec(x.clone(), (n, d)))
            .as_vec()
    };
    let (t, f, q) = (
        logits(&twin.classifier),
        logits(&fmf.classifier),
        logits(&fm8.classifier),
    );
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (u, v)| m.max((u - v).abs()))
    };
    // The twin differs from the float model only by rounding in the folded scales;
    // the quantised mirror differs by the input rounding, far more.
    assert!(gap(&t, &f) < 1e-4, "twin vs float model {}", gap(&t, &f));
    assert!(
        gap(&q, &f) > 100.0 * gap(&t, &f).max(1e-6),
        "quantised {}",
        gap(&q, &f)
    );
}

#[test]
fn square_twin_runs_in_the_evaluation_of_an_int8_model() {
    use pursamere_trainer::eval::{self, EvalOptions, Protocol};
    let bytes = std::fs::read(fixture("mnist-robust-int8.psm")).unwrap();
    let model = Model::parse(&bytes).unwrap();
    let data = load_mnist_dir(&fixture("mnist-sample"), Split::Test).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Collects the engine's notes.
    struct Notes(std::sync::Mutex<Vec<String>>);
    impl eval::Observer for Notes {
        fn progress(&self, _: usize, _: usize, _: &str) {}
        fn note(&self, m: &str) {
            self.0.lock().unwrap().push(m.to_owned());
        }
    }
    let notes = Notes(Default::default());
    let run = |attacks: &str, dir: &str| {
        let p = Protocol::from_toml(&format!(
            "images = 8\nbatch = 8\nl2_eps = [3.0]\ndefences = [\"none\"]\nrestart_check = false\n\
             square_queries = 300\nattacks = [{attacks}]\n"
        ))
        .unwrap()
        .resolved(None, None)
        .unwrap();
        let opts = EvalOptions {
            out: tmp.path().join(dir),
            fresh: false,
            commit: "test".into(),
            data_name: "mnist".into(),
            purifier: model.purifier_config(),
            threads: None,
        };
        eval::run(&bytes, &data, &p, &opts, &notes).unwrap();
        std::fs::read_to_string(tmp.path().join(dir).join("results.jsonl")).unwrap()
    };
    let warned = |notes: &Notes| {
        notes
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("add `square-twin`"))
    };
    // Square alone on an int8 model: the user is told to add square-twin.
    run("\"square\"", "core");
    assert!(warned(&notes), "{:?}", notes.0.lock().unwrap());
    notes.0.lock().unwrap().clear();
    let text = run("\"square-twin\"", "twin");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 8);
    // Every correctly classified image met square-twin; at L2 3.0 with 300 queries it
    // breaks some of this robust classifier's images, and not all of them.
    let met: Vec<bool> = records
        .iter()
        .filter(|r| r["clean_correct"] == true)
        .map(|r| r["correct"]["square-twin"].as_bool().unwrap())
        .collect();
    assert!(!met.is_empty());
    assert!(
        met.iter().any(|&c| !c),
        "square-twin broke nothing: {met:?}"
    );
    assert!(!warned(&notes));
}

#[test]
fn the_standard_preset_adds_square_twin_for_an_int8_classifier_only() {
    use pursamere_trainer::eval::Protocol;
    let int8_bytes = std::fs::read(fixture("mnist-robust-int8.psm")).unwrap();
    let float_bytes = std::fs::read(fixture("mnist-robust.psm")).unwrap();
    let int8 = Model::parse(&int8_bytes).unwrap();
    let float = Model::parse(&float_bytes).unwrap();
    let protocol = |extra: &str| {
        Protocol::from_toml(&format!(
            "images = 8\nl2_eps = [2.0]\ndefences = [\"none\"]\n{extra}"
        ))
        .unwrap()
        .resolved(None, None)
        .unwrap()
    };
    // The preset: square-twin right after square for the int8 model, nothing added
    // for the float one.
    let preset = protocol("preset = \"standard\"\n");
    let for_int8 = preset.clone().for_model(&int8).attacks;
    let at = for_int8.iter().position(|a| a == "square").unwrap();
    assert_eq!(
        for_int8.get(at + 1).map(String::as_str),
        Some("square-twin")
    );
    assert_eq!(for_int8.len(), preset.attacks.len() + 1);
    assert_eq!(preset.clone().for_model(&float).attacks, preset.attacks);
    // Applying it twice adds nothing more.
    assert_eq!(
        preset.clone().for_model(&int8).for_model(&int8).attacks,
        for_int8
    );
    // A protocol that lists its attacks keeps them (the engine warns instead).
    let listed = protocol("attacks = [\"apgd-ce\", \"square\"]\n");
    assert_eq!(listed.clone().for_model(&int8).attacks, listed.attacks);
    let listed = protocol("preset = \"standard\"\nattacks = [\"apgd-ce\", \"square\"]\n");
    assert_eq!(listed.clone().for_model(&int8).attacks, listed.attacks);
}
