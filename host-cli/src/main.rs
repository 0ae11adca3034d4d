//! `pursamere`: train, export, inspect and verify PurSAMERE models.
//!
//! Exit codes: 0 success, 1 failure (including a failed check), 2 usage error.

mod cmd;

use clap::{Parser, Subcommand};

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
    /// Run the shipped model on the shipped sample: attack, purify, report (no data needed).
    Demo(cmd::demo::DemoArgs),
    /// Compare a firmware log (QEMU or a real board) with the core on the host.
    FirmwareCheck(cmd::firmware::FirmwareCheckArgs),
    /// Regenerate fixtures/: shipped model, test-image sample, golden vectors.
    Fixtures(cmd::fixtures::FixturesArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Purify(a) => cmd::purify::run_purify(a),
        Command::Classify(a) => cmd::purify::run_classify(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Fixtures(a) => cmd::fixtures::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::FirmwareCheck(a) => cmd::firmware::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
