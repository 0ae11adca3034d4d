use pursamere_trainer::data::{load_mnist_dir, Split};
use pursamere_trainer::model::FloatNet;
use pursamere_trainer::train::*;
use std::path::Path;
fn main() {
    let dir = Path::new("../shared/data/mnist");
    let full = load_mnist_dir(dir, Split::Train).unwrap();
    let (tr, val) = full.split_validation(5000, 0).unwrap();
    let which = std::env::args().nth(1).unwrap_or_default();
    let (obj, net) = if which == "den" {
        (Objective::Denoiser { sigmas: vec![0.5] }, FloatNet::mlp(&[784, 256, 256, 784], true, 0.5, 1))
    } else {
        (Objective::Classifier { classes: 10 }, FloatNet::mlp(&[784, 256, 256, 10], false, 1.0, 1))
    };
    let cfg = TrainConfig { epochs: 2, ..Default::default() };
    let ck = fresh_checkpoint(obj, cfg, net);
    let t = std::time::Instant::now();
    let ck = train(ck, &tr, &val, &RunOptions { progress: true, ..Default::default() }).unwrap();
    println!("{:?} in {:?}", ck.history, t.elapsed());
}
