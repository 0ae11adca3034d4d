//! `pursamere inspect`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pursamere_core::Layer;
use serde_json::json;

use super::images::{class_names, model_bytes, parse_model};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.psm); default: the shipped MNIST model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model file, as a positional argument (the same as --model).
    #[arg(value_name = "MODEL", conflicts_with = "model")]
    pub model_pos: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InspectArgs) -> Result<i32> {
    let path = a.model.or(a.model_pos);
    let bytes = model_bytes(&path)?;
    let model = parse_model(&bytes, &path)?;
    let file = path.as_ref().map_or_else(
        || "shipped MNIST model".to_owned(),
        |p| p.display().to_string(),
    );
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
                Layer::Dense(_) => "dense int8".to_owned(),
                Layer::Relu => "relu".to_owned(),
                Layer::Conv2d(c) => conv_kind(c),
                // Integer sums on int8 inputs (format version 4).
                Layer::Int8Dense(_) => "dense int8, int8 input".to_owned(),
                Layer::Int8Conv2d(q) => format!("{}, int8 input", conv_kind(&q.conv)),
                Layer::Upsample2x(u) => format!(
                    "upsample2x -> {}x{}x{}",
                    u.channels,
                    2 * u.height,
                    2 * u.width
                ),
                other => other.kind_name().to_owned(),
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
    // Bytes 4..6 of the prefix; parsing checked that they are there.
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    let report = json!({
        "file": file,
        "bytes": bytes.len(),
        "dataset": spec.meta.dataset,
        "input_shape": [spec.meta.input_shape.channels, spec.meta.input_shape.height, spec.meta.input_shape.width],
        "classes": class_names(&model),
        "denoiser_residual": spec.denoiser.residual,
        "layers": layers,
        "params": params,
        "purifier": cfg,
        "format_version": version,
        "noise_generator": cfg.noise.name(),
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
        file,
        bytes.len(),
        spec.meta.dataset,
        spec.meta.input_shape.channels,
        spec.meta.input_shape.height,
        spec.meta.input_shape.width,
        spec.meta.class_names.len()
    )?;
    outln!(
        "{:<11} {:>3} {:<24} {:>7} {:>7} {:>9} {:>9}",
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
            "{:<11} {:>3} {:<24} {:>7} {:>7} {:>9} {:>9}",
            l["network"].as_str().unwrap_or(""),
            num("index"),
            l["kind"].as_str().unwrap_or(""),
            num("inputs"),
            num("outputs"),
            num("params"),
            num("macs")
        )?;
    }
    outln!("classes: {}", class_names(&model).join(", "))?;
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
    outln!(
        "format version {}, noise generator {}{}",
        version,
        cfg.noise.name(),
        if cfg.noise == pursamere_core::noise::NoiseGenerator::default() {
            ""
        } else {
            " (an older, slower generator on a microcontroller: `pursamere upgrade` rewrites the model with the current one)"
        }
    )?;
    outln!("scratch RAM: {scratch_min} bytes minimum (microcontroller), {scratch_fast} bytes for the fastest host path")?;
    outln!(
        "cost: {} MACs per purification, {} per classification",
        model.purify_macs(&cfg),
        model.classifier_macs()
    )?;
    Ok(0)
}

/// Kernel, stride, padding and the output map of a convolution (the input is the
/// previous layer's).
fn conv_kind(c: &pursamere_core::Conv2d<'_>) -> String {
    format!(
        "conv{k}x{k}/s{}/p{} -> {}x{}x{}",
        c.stride,
        c.padding,
        c.out_channels,
        c.out_height(),
        c.out_width(),
        k = c.kernel
    )
}
