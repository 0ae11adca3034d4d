//! White-box robustness evaluation of a `.psm` model: the engine behind
//! `pursamere eval`.
//!
//! Threat model (docs/EVALUATION.md): the attacker knows both networks, every
//! setting and every noise vector. Gradient attacks run on the float host reference
//! with the model's *dequantised* weights; the verdict for every adversarial example
//! comes from the deployed system itself, the int8 core ([`deployed`]).
//!
//! Attacks run as a cascade in a fixed order ([`protocol::ATTACKS`]): each attack
//! sees only the examples every earlier attack failed to break, as AutoAttack does;
//! the worst case per example is "correct under every attack". Results are bound to
//! the settings that produced them ([`results`]): resuming with other settings is
//! an error naming the differing fields.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pursamere_trainer::eval::{self, EvalOptions, Protocol};
//! let bytes = std::fs::read("fixtures/mnist.psm")?;
//! let model = pursamere_trainer::core::Model::parse(&bytes)?;
//! let protocol = Protocol::from_toml("preset = \"standard\"\nimages = 10\n\
//!     linf_eps = [0.3]\ndefences = [\"ere\"]")?.resolved(None, None)?;
//! let data = eval::load_split(std::path::Path::new("data/mnist"), &protocol)?;
//! let opts = EvalOptions { out: "runs/eval".into(), fresh: false, commit: "unknown".into(),
//!     data_name: "mnist".into(), purifier: model.purifier_config(), threads: None };
//! let report = eval::run(&bytes, &data, &protocol, &opts, &eval::SilentObserver)?;
//! println!("{}", report.markdown);
//! # Ok(()) }
//! ```

pub mod deployed;
mod engine;
pub mod plot;
pub mod protocol;
mod report;
pub mod results;
pub mod summary;
pub mod workers;

use std::path::{Path, PathBuf};

pub use engine::run;
pub use protocol::Protocol;
pub use report::{wilson, Report};

use crate::data::{load_dataset_dir, DataError, Dataset, Split};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The protocol is invalid.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The output directory holds results of other settings.
    #[error(
        "{dir} holds results of other settings:\n  {}\nuse --fresh to discard them, or another --out directory",
        differences.join("\n  ")
    )]
    Stale {
        /// The directory.
        dir: PathBuf,
        /// What differs.
        differences: Vec<String>,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data set.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model file.
    #[error("model: {0}")]
    Model(#[from] pursamere_core::FormatError),
    /// The core refused an input.
    #[error("core: {0}")]
    Core(#[from] pursamere_core::Error),
    /// The model does not support what the protocol asks.
    #[error("{0}")]
    Unsupported(String),
    /// The summary file files rows under this classifier name that were measured
    /// on another model file.
    #[error("{0}")]
    SummaryModel(Box<summary::SummaryConflict>),
    /// Drawing the plot failed.
    #[error("plot: {0}")]
    Plot(String),
    /// Another evaluation (or `scripts/eval-checkpoint.sh merge`) is writing to the
    /// output directory.
    #[error(
        "{} is in use: another evaluation is writing to it (it holds {}); wait for it \
         to finish, or use another --out directory",
        dir.display(),
        dir.join(results::LOCK_FILE).display()
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
}

/// Everything besides the protocol and the data that decides a run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Output directory (results, checks, settings, reports).
    pub out: PathBuf,
    /// Discard the directory's earlier results first.
    pub fresh: bool,
    /// The commit of the code (written into the reports).
    pub commit: String,
    /// Name of the data set (written into the settings and reports).
    pub data_name: String,
    /// The purifier settings of the defended system (the model's own, or overrides).
    pub purifier: pursamere_core::PurifierConfig,
    /// Worker threads (`None`: one per CPU the process may use). The records do
    /// not depend on it: every job's images and seeds are fixed by its image block.
    pub threads: Option<usize>,
}

impl EvalOptions {
    /// The number of worker threads to use (at least one).
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(workers::cpu_threads).max(1)
    }
}

/// Where the engine reports progress.
pub trait Observer: Sync {
    /// `done` of `total` (example, defence, threat) triples finished; `message`
    /// says how the current row stands. The first call comes before any work, with
    /// the records a resumed run already holds.
    fn progress(&self, done: usize, total: usize, message: &str);
    /// A line worth telling the user (resuming, checks, notes).
    fn note(&self, message: &str);
}

/// An observer that says nothing.
pub struct SilentObserver;

impl Observer for SilentObserver {
    fn progress(&self, _: usize, _: usize, _: &str) {}
    fn note(&self, _: &str) {}
}

/// The images of a protocol's split: "test" (the TEST set) or "validation" (the
/// TRAIN hold-out of `pursamere train`: 5,000 images drawn with `validation_seed`,
/// [`crate::data::HOLDOUT_SEED`] unless the protocol names the `--seed` of a run
/// from before the hold-out was fixed).
pub fn load_split(dir: &Path, p: &Protocol) -> Result<Dataset, EvalError> {
    match p.split.as_str() {
        "test" => Ok(load_dataset_dir(dir, Split::Test)?),
        "validation" => Ok(load_dataset_dir(dir, Split::Train)?
            .split_validation(5000, p.validation_seed.unwrap_or(crate::data::HOLDOUT_SEED))?
            .1),
        o => Err(EvalError::Protocol(format!(
            "unknown split `{o}` (test, validation)"
        ))),
    }
}
