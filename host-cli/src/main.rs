//! The `pursamere` command line (subcommands land with the CLI work).

fn main() {
    eprintln!(
        "pursamere {}: no subcommands yet (model format version {})",
        env!("CARGO_PKG_VERSION"),
        pursamere_core::FORMAT_VERSION
    );
    std::process::exit(2);
}
