//! `pursamere upgrade`: rewrite a version-1/2 model with the current noise generator.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pursamere_core::noise::NoiseGenerator;
use pursamere_core::{encoded_len, write_model, Model};

use super::read_file;

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The model to upgrade (.psm, format version 1 or 2).
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder (created if missing) for the upgraded model, written under the
    /// file name of --model; naming the folder --model is in upgrades it in place,
    /// which needs --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite the file of that name in --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: UpgradeArgs) -> Result<i32> {
    let bytes = read_file(&a.model)?;
    let model = Model::parse(&bytes)
        .with_context(|| format!("{} is not a valid model", a.model.display()))?;
    let old = model.purifier_config().noise;
    let new = NoiseGenerator::default();
    if old == new {
        bail!(
            "{} already uses the {} noise generator (format version {}); nothing to upgrade",
            a.model.display(),
            new.name(),
            new.format_version()
        );
    }
    let Some(name) = a.model.file_name().and_then(|n| n.to_str()) else {
        bail!("--model {}: not a file name", a.model.display());
    };
    let out_dir = super::OutDir::prepare(&a.out, "--out", &[name.to_owned()], a.force)?;
    let path = out_dir.join(name);
    let mut spec = model.spec().clone();
    spec.purifier.noise = new;
    let mut out = vec![0u8; encoded_len(&spec)?];
    let n = write_model(&spec, &mut out)?;
    out.truncate(n);
    // The rewritten file must read back as the same model with the new generator.
    let back = Model::parse(&out).context("the upgraded model does not read back")?;
    if *back.spec() != spec {
        bail!("the upgraded model does not read back as written");
    }
    out_dir.write(&path, &out)?;
    out_dir.keep()?;
    outln!(
        "wrote {}: the same weights and purifier settings, noise generator {} (format version {}) instead of {}; its purifications differ from the old file's (other noise draws, the same distribution)",
        path.display(),
        new.name(),
        new.format_version(),
        old.name()
    )?;
    Ok(0)
}
