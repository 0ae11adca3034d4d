//! `pursamere inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_core::{Layer, Model};
use serde_json::json;

use super::read_file;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.psm).
    pub model: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<i32> {
    let bytes = read_file(&a.model)?;
    let model = Model::parse(&bytes)
        .with_context(|| format!("{} is not a valid model", a.model.display()))?;
    let spec = model.spec();
    let cfg = model.purifier_config();
    let mut layers = Vec::new();
    for (net_name, net) in [
        ("denoiser", &spec.denoiser),
        ("classifier", &spec.classifier),
    ] {
        let mut len = model.input_len();
        for (i, l) in net.layers.iter().enumerate() {
            let out = l.output_len(len);
            let kind = match l {
                Layer::Dense(_) => "dense int8",
                Layer::Relu => "relu",
                _ => "other",
            };
            layers.push(json!({
                "network": net_name, "index": i, "kind": kind, "inputs": len, "outputs": out,
                "params": l.params(), "macs": l.macs(),
            }));
            len = out;
        }
    }
    let params: u64 = layers.iter().filter_map(|l| l["params"].as_u64()).sum();
    let scratch_min = model.scratch_len() * 4;
    let scratch_fast = model.scratch_len_fast() * 4;
    let report = json!({
        "file": a.model.display().to_string(),
        "bytes": bytes.len(),
        "dataset": spec.meta.dataset,
        "input_shape": [spec.meta.input_shape.channels, spec.meta.input_shape.height, spec.meta.input_shape.width],
        "classes": spec.meta.class_names.iter().collect::<Vec<_>>(),
        "denoiser_residual": spec.denoiser.residual,
        "layers": layers,
        "params": params,
        "purifier": cfg,
        "scratch_bytes_min": scratch_min,
        "scratch_bytes_fast": scratch_fast,
        "macs_per_purification": model.purify_macs(&cfg),
        "macs_per_classification": model.classifier_macs(),
    });
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }
    outln!(
        "{}: {} bytes, data set {:?}, input {}x{}x{}, {} classes",
        a.model.display(),
        bytes.len(),
        spec.meta.dataset,
        spec.meta.input_shape.channels,
        spec.meta.input_shape.height,
        spec.meta.input_shape.width,
        spec.meta.class_names.len()
    )?;
    outln!(
        "{:<11} {:>3} {:<11} {:>7} {:>7} {:>9} {:>9}",
        "network",
        "#",
        "layer",
        "in",
        "out",
        "params",
        "MACs"
    )?;
    for l in &layers {
        let num = |k: &str| l[k].as_u64().unwrap_or(0);
        outln!(
            "{:<11} {:>3} {:<11} {:>7} {:>7} {:>9} {:>9}",
            l["network"].as_str().unwrap_or(""),
            num("index"),
            l["kind"].as_str().unwrap_or(""),
            num("inputs"),
            num("outputs"),
            num("params"),
            num("macs")
        )?;
    }
    outln!("parameters: {params}")?;
    outln!("denoiser residual skip: {}", spec.denoiser.residual)?;
    outln!(
        "purifier: sigma {} M {} K {} eta {} rho {} delta {} norm {:?} step {:?} seed {}",
        cfg.sigma,
        cfg.noise_samples,
        cfg.iters,
        cfg.eta,
        cfg.rho,
        cfg.radius,
        cfg.norm,
        cfg.step,
        cfg.seed
    )?;
    outln!("scratch RAM: {scratch_min} bytes minimum (microcontroller), {scratch_fast} bytes for the fastest host path")?;
    outln!(
        "cost: {} MACs per purification, {} per classification",
        model.purify_macs(&cfg),
        model.classifier_macs()
    )?;
    Ok(0)
}
