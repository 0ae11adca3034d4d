//! `pursamere eval`: the white-box robustness evaluation (engine:
//! `pursamere_trainer::eval`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use pursamere_trainer::eval::{self, EvalOptions, Observer, Protocol};

use super::images::{model_bytes, parse_model};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Protocol file (TOML); its keys are documented in docs/EVALUATION.md.
    #[arg(long)]
    pub protocol: PathBuf,
    /// Data set directory (MNIST layout: the IDX files, gzipped or not).
    #[arg(long)]
    pub data: PathBuf,
    /// Model file (.psm); default: the shipped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output directory: settings.json, results.jsonl, checks.jsonl, report.{md,json,png}.
    /// Resuming needs the same settings; anything else is refused.
    #[arg(long)]
    pub out: PathBuf,
    /// First image (overrides the protocol's `start`).
    #[arg(long)]
    pub start: Option<usize>,
    /// Number of images, from --start (overrides the protocol's `images`).
    #[arg(long)]
    pub count: Option<usize>,
    /// Removed: the number of images is --count, as in every command.
    #[arg(long, hide = true, value_parser = super::removed_flag(
        "--images was renamed --count, as in every command (--start FIRST --count N)"
    ))]
    pub images: Option<String>,
    /// Discard the results an earlier evaluation left in --out before starting.
    #[arg(long)]
    pub fresh: bool,
    /// Worker threads (default: one per CPU this process may use, e.g. under
    /// `taskset`). The results are the same for any number: each block of images
    /// is attacked with its own seeds.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Print report.json to standard output instead of the Markdown report.
    #[arg(long)]
    pub json: bool,
    /// Also add this run's rows to a summary file (e.g. docs/eval/summary.json).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Name the summary rows are filed under (e.g. "standard",
    /// "cnn106k-pgd-max"); needed with --summary. One name belongs to one model
    /// file: rows of another model under the same name are refused.
    #[arg(long, requires = "summary")]
    pub classifier: Option<String>,
    /// With --summary: replace every row filed under --classifier that was
    /// measured on another model file (the name then belongs to this model), and
    /// rows measured on more images than this run.
    #[arg(long, requires = "summary")]
    pub replace_rows: bool,
    /// Data set name for the settings, reports and summary (default: the --data
    /// directory's name).
    #[arg(long)]
    pub data_name: Option<String>,
    /// Overrides of the model's purifier settings (the defended system evaluated).
    #[command(flatten)]
    pub purifier: super::export::PurifierArgs,
}

/// Progress on a terminal: a bar; elsewhere: one line every few seconds.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: Mutex<Instant>,
    start: Instant,
    /// The records done when this run began (a resumed run's): the remaining time
    /// is estimated from the work done since, never from records that took no time.
    resumed_from: OnceLock<usize>,
}

/// Seconds left at the pace of this run: `elapsed` for `done − resumed_from`
/// records, `total − done` to go; `None` before the first record of this run.
fn eta_seconds(elapsed: f64, resumed_from: usize, done: usize, total: usize) -> Option<f64> {
    let now = done.checked_sub(resumed_from).filter(|&d| d > 0)?;
    Some(elapsed * total.saturating_sub(done) as f64 / now as f64)
}

impl Observer for Progress {
    fn progress(&self, done: usize, total: usize, message: &str) {
        // The first call of a run reports where it starts.
        let first = self.resumed_from.set(done).is_ok();
        let from = self.resumed_from.get().copied().unwrap_or(done);
        if let Some(b) = &self.bar {
            b.set_length(total as u64);
            b.set_position(done as u64);
            if first {
                // The jump to the resumed position took no time.
                b.reset_eta();
            }
            b.set_message(message.to_string());
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() >= Duration::from_secs(5) || done == total {
            *last = Instant::now();
            let el = self.start.elapsed().as_secs_f64();
            let eta = eta_seconds(el, from, done, total)
                .map_or_else(|| "?".into(), |s| format!("{s:.0} s"));
            eprintln!("eval {done}/{total} {message} ({el:.0} s elapsed, ETA {eta})");
        }
    }

    fn note(&self, message: &str) {
        match &self.bar {
            Some(b) => b.println(message),
            None => eprintln!("{message}"),
        }
    }
}

pub fn run(a: EvalArgs) -> Result<i32> {
    let text = std::fs::read_to_string(&a.protocol)
        .with_context(|| format!("cannot read protocol {}", a.protocol.display()))?;
    let p = Protocol::from_toml(&text)
        .and_then(|p| p.resolved(a.count, a.start))
        .with_context(|| format!("{} is not a valid protocol", a.protocol.display()))?;
    let bytes = model_bytes(&a.model)?;
    let model = parse_model(&bytes, &a.model)?;
    let purifier = a.purifier.apply(model.purifier_config())?;
    // The summary is written after the work: its folder must exist now.
    if let Some(path) = &a.summary {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() || path.is_dir() {
            anyhow::bail!(
                "--summary {}: cannot write it ({} is not a folder)",
                path.display(),
                if path.is_dir() { path } else { dir }.display()
            );
        }
    }
    let data = eval::load_split(&a.data, &p).with_context(|| {
        format!(
            "cannot load the {} images from {}",
            p.split,
            a.data.display()
        )
    })?;
    let data_name = a.data_name.clone().unwrap_or_else(|| {
        a.data.file_name().map_or_else(
            || a.data.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    // Before the work, not after it: the summary would refuse these rows.
    let classifier = match (&a.summary, &a.classifier) {
        (Some(_), None) => anyhow::bail!(
            "--summary needs --classifier NAME: the name its rows are filed under \
             (e.g. standard, cnn106k-pgd-max)"
        ),
        (Some(_), Some(c)) if c.trim().is_empty() => {
            anyhow::bail!("--classifier is empty: name the classifier the rows are filed under")
        }
        (Some(_), _) if p.split != "test" => anyhow::bail!(
            "--summary holds TEST-set figures, and this protocol evaluates the `{}` split: \
             leave out --summary for runs that choose settings",
            p.split
        ),
        (_, c) => c.clone().unwrap_or_default(),
    };
    if let (Some(path), false) = (&a.summary, a.replace_rows) {
        eval::summary::check_same_model(
            path,
            &data_name,
            &classifier,
            &eval::results::sha256_hex(&bytes),
        )?;
    }
    let opts = EvalOptions {
        out: a.out.clone(),
        fresh: a.fresh,
        commit: env!("PURSAMERE_COMMIT").to_string(),
        data_name: data_name.clone(),
        purifier,
        threads: a.threads.map(usize::from),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        if let Ok(st) = indicatif::ProgressStyle::with_template(
            "eval [{bar:30}] {pos}/{len} {msg} ({elapsed} elapsed, ETA {eta})",
        ) {
            b.set_style(st.progress_chars("=> "));
        }
        b
    });
    let progress = Progress {
        bar,
        last: Mutex::new(Instant::now()),
        start: Instant::now(),
        resumed_from: OnceLock::new(),
    };
    // Resuming is the point of eval's folder: existing results are read, not
    // refused (other settings are refused by the engine; --fresh discards).
    let out = super::OutDir::prepare(
        &a.out,
        "--out",
        &pursamere_trainer::eval::results::OWNED_FILES
            .iter()
            .filter(|f| !f.ends_with(".tmp"))
            .map(|f| f.to_string())
            .collect::<Vec<_>>(),
        true,
    )?;
    let report = eval::run(&bytes, &data, &p, &opts, &progress)?;
    out.keep()?;
    if let Some(b) = &progress.bar {
        b.finish_and_clear();
    }
    if let Some(path) = &a.summary {
        let proto_name = a.protocol.display().to_string();
        let (n, removed) = eval::summary::upsert(
            path,
            &report.json,
            &data_name,
            &classifier,
            &proto_name,
            a.replace_rows,
        )
        .with_context(|| {
            format!(
                "cannot update the --summary file (the results are kept in {}: the same \
                 command with other --summary flags files them without evaluating again)",
                a.out.display()
            )
        })?;
        eprintln!("{}: {n} rows updated", path.display());
        if removed > 0 {
            eprintln!(
                "{}: removed {removed} rows of \"{classifier}\" measured on another model file (--replace-rows)",
                path.display()
            );
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report.json)?)?;
    } else {
        outln!("{}", report.markdown)?;
        outln!(
            "wrote {}/report.md, report.json, report.png, results.jsonl",
            a.out.display()
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::eta_seconds;

    /// A run resumed at 2,144 of 4,000 records that did 256 in 1,137 s has about
    /// 7,100 s to go, not the 758 s that counting the resumed records gave.
    #[test]
    fn the_eta_counts_only_this_runs_work() {
        let eta = eta_seconds(1137.0, 2144, 2400, 4000).unwrap();
        assert!((eta - 1137.0 * 1600.0 / 256.0).abs() < 1e-6, "{eta}");
        assert_eq!(eta_seconds(5.0, 2144, 2144, 4000), None);
        assert_eq!(eta_seconds(5.0, 0, 0, 10), None);
        assert_eq!(eta_seconds(10.0, 0, 10, 10), Some(0.0));
    }
}
