//! `pursamere`: train, export, inspect and verify PurSAMERE models.
//!
//! Exit codes: 0 success, 1 failure (including a failed check), 2 usage error.

/// `println!` that returns the write error instead of panicking on a closed pipe
/// or a full disk: `outln!(...)?` in every command that reports on stdout.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::StdoutError)
    }};
}

mod cmd;

use clap::{Parser, Subcommand};

/// Writing a report to standard output failed (closed pipe, full disk, …).
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// The message of an error and its causes, `a: b: c`, leaving out a cause whose
/// text the message already holds (errors that print their source themselves).
fn error_message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.is_empty() {
            msg = text;
        } else if !text.is_empty() && !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
    }
    msg
}

/// Whether `e` is a write to a standard output whose reader has gone away
/// (`pursamere inspect | head -1`): not an error, just a reason to stop.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .map(|s| &s.0)
            .or_else(|| c.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Parser)]
#[command(
    name = "pursamere",
    version,
    about = "Adversarial purification (PurSAMERE) for microcontrollers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the score model (denoiser) and/or the classifier on IDX data.
    #[command(args_override_self = true)]
    Train(cmd::train::TrainArgs),
    /// Quantise a training run into a .psm model file (and float .safetensors).
    Export(cmd::export::ExportArgs),
    /// Purify images (PNG files or an IDX range) and write the results.
    Purify(cmd::purify::PurifyArgs),
    /// Classify images, optionally after purification.
    Classify(cmd::purify::ClassifyArgs),
    /// Describe a .psm model: layers, sizes, purifier settings, memory, cost.
    Inspect(cmd::inspect::InspectArgs),
    /// Cross-check the core against the float host reference on test images.
    Verify(cmd::verify::VerifyArgs),
    /// Run the shipped default model on the shipped sample: attack, purify, report (no data needed).
    Demo(cmd::demo::DemoArgs),
    /// White-box robustness evaluation from a TOML protocol (resumable).
    Eval(cmd::eval::EvalArgs),
    /// Print the robustness matrix of a summary file (docs/eval/summary.json) as Markdown.
    Summary(cmd::summary::SummaryArgs),
    /// Compare a firmware log (QEMU or a real board) with the core on the host.
    FirmwareCheck(cmd::firmware::FirmwareCheckArgs),
    /// Regenerate fixtures/: the dense purifier model, test-image sample, golden vectors.
    Fixtures(cmd::fixtures::FixturesArgs),
    /// Rewrite a format version 1/2 model with the f32 noise generator of version 3
    /// (about 30× cheaper on a Cortex-M4F; the purifications change slightly).
    Upgrade(cmd::upgrade::UpgradeArgs),
    /// Convert a model's classifier to int8 activations (format version 4: integer
    /// sums, the fast path on a Cortex-M4), calibrated on TRAIN images.
    Int8(cmd::int8::Int8Args),
}

/// Expands `train --config FILE`: the TOML file's keys become flags placed before
/// the command-line flags, so flags given on the command line win.
fn expand_run_file(args: Vec<String>) -> Result<Vec<String>, String> {
    let Some(pos) = args.iter().position(|a| a == "train") else {
        return Ok(args);
    };
    let path = args.iter().enumerate().skip(pos).find_map(|(i, a)| {
        if a == "--config" {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(path) = path else {
        return Ok(args);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read run file {path}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e| format!("run file {path}: {e}"))?;
    // The keys a run file may hold: the long names of `train`'s flags.
    let known: Vec<String> = {
        use clap::CommandFactory;
        Cli::command()
            .find_subcommand("train")
            .map(|c| {
                c.get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|l| *l != "config" && *l != "help")
                    .map(|l| l.replace('-', "_"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut flags = Vec::new();
    for (key, value) in table {
        if !known.iter().any(|k| *k == key.replace('-', "_")) {
            return Err(format!(
                "run file {path}: unknown key `{key}` (keys are train's flags: {})",
                known.join(", ")
            ));
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(format!(
                "run file {path}: `{key}` has an unsupported value {other}"
            )),
        };
        match &value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>, String> = items.iter().map(scalar).collect();
                flags.push(format!("{flag}={}", parts?.join(",")));
            }
            v => flags.push(format!("{flag}={}", scalar(v)?)),
        }
    }
    let mut out = args[..=pos].to_vec();
    out.extend(flags);
    out.extend_from_slice(&args[pos + 1..]);
    Ok(out)
}

/// Prints `--help`/`--version` on standard output, reporting a failed write (clap
/// itself ignores it: `pursamere --help > /dev/full` would succeed silently);
/// usage errors go to standard error with exit code 2, as clap does.
fn print_clap_message(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    use std::io::{IsTerminal, Write};
    if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let mut out = std::io::stdout().lock();
    let text = if out.is_terminal() {
        e.render().ansi().to_string()
    } else {
        e.render().to_string()
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => std::process::exit(0),
        Err(io) if io.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(io) => {
            eprintln!("error: {}", StdoutError(io));
            std::process::exit(1);
        }
    }
}

fn main() {
    let args = match expand_run_file(std::env::args().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => print_clap_message(e),
    };
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Purify(a) => cmd::purify::run_purify(a),
        Command::Classify(a) => cmd::purify::run_classify(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Fixtures(a) => cmd::fixtures::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Summary(a) => cmd::summary::run(a),
        Command::FirmwareCheck(a) => cmd::firmware::run(a),
        Command::Upgrade(a) => cmd::upgrade::run(a),
        Command::Int8(a) => cmd::int8::run(a),
    };
    // Flush here so that a failed final write is reported, not lost at exit.
    let result = result.and_then(|code| {
        use std::io::Write as _;
        std::io::stdout().flush().map_err(StdoutError)?;
        Ok(code)
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) if is_broken_pipe(&e) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context;
    use clap::CommandFactory;

    #[test]
    fn error_message_leaves_out_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        #[derive(Debug)]
        struct Wrap(std::io::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "x.idx: cannot read: {}", self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Err::<(), _>(Wrap(io)).context("loading").unwrap_err();
        assert_eq!(
            super::error_message(&e),
            "loading: x.idx: cannot read: gone"
        );
    }

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
