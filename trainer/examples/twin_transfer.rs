//! Transfer check for a converted (int8) model: Square run against its float twin,
//! the adversarial images judged by the converted model's core. A model that looks
//! more robust than its float twin only because the attacks struggle with its
//! rounding loses that margin here.
//!
//! cargo run --release -p pursamere-trainer --example twin_transfer -- \
//!     FLOAT.psm CONVERTED.psm MNIST_DIR NORM EPS QUERIES INDEX...
//!
//! NORM is `linf` or `l2`; the images are TEST images by index. Prints, per image,
//! whether the float twin and the converted model classify the twin's adversarial
//! correctly, then the counts.

use pursamere_core::Model;
use pursamere_trainer::attack::{
    square, AttackNorm, ClassifierOracle, GradientOracle, SquareConfig,
};
use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::model::FloatModel;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 7 {
        return Err("usage: FLOAT.psm CONVERTED.psm MNIST_DIR NORM EPS QUERIES INDEX...".into());
    }
    let float_bytes = std::fs::read(&a[0])?;
    let conv_bytes = std::fs::read(&a[1])?;
    let float = Model::parse(&float_bytes)?;
    let conv = Model::parse(&conv_bytes)?;
    let test = load_mnist_dir(std::path::Path::new(&a[2]), Split::Test)?;
    let norm = match a[3].as_str() {
        "linf" => AttackNorm::Linf,
        "l2" => AttackNorm::L2,
        other => return Err(format!("norm {other}: linf or l2").into()),
    };
    let eps: f32 = a[4].parse()?;
    let queries: usize = a[5].parse()?;
    let idx: Vec<usize> = a[6..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let fm = FloatModel::from_spec(float.spec())?;
    let d = float.input_len();
    let oracle = ClassifierOracle::new(&fm.classifier, d);
    let s = float.spec().meta.input_shape;
    let mut scratch = vec![
        0.0f32;
        conv.classify_scratch_len()
            .max(float.classify_scratch_len())
    ];
    let mut logits = vec![0.0f32; conv.num_classes()];
    let (mut twin_ok, mut conv_ok) = (0, 0);
    for &i in &idx {
        let x = test.image_f32(i).ok_or("image index out of range")?;
        let label = usize::from(*test.labels.get(i).ok_or("no label")?);
        let cfg = SquareConfig {
            norm,
            eps,
            queries,
            p_init: 0.8,
            seed: i as u64,
            channels: usize::from(s.channels),
            height: usize::from(s.height),
            width: usize::from(s.width),
        };
        let r = square(|b| oracle.logits(b), &x, &[label], &cfg);
        let adv = &r.adv;
        let t = float.classify(adv, &mut logits, &mut scratch)? == label;
        let c = conv.classify(adv, &mut logits, &mut scratch)? == label;
        twin_ok += usize::from(t);
        conv_ok += usize::from(c);
        println!(
            "image {i}: float twin {}, converted {}",
            if t { "correct" } else { "fooled" },
            if c { "correct" } else { "fooled" }
        );
    }
    println!("{} images: the twin's adversarials leave the float twin {twin_ok} correct, the converted model {conv_ok}", idx.len());
    Ok(())
}
