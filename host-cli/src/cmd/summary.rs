//! `pursamere summary`: the robustness matrix of a summary file as Markdown (engine:
//! `pursamere_trainer::eval::summary::matrix_markdown`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pursamere_trainer::eval::summary::matrix_markdown;

#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// Summary file written by `eval --summary`.
    #[arg(long, default_value = "docs/eval/summary.json")]
    pub file: PathBuf,
    /// Data set whose matrix to print (e.g. mnist, fashion-mnist).
    #[arg(long, default_value = "mnist")]
    pub dataset: String,
}

pub fn run(a: SummaryArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let md = matrix_markdown(&text, &a.dataset).with_context(|| format!("{}", a.file.display()))?;
    outln!("{md}")?;
    Ok(0)
}
