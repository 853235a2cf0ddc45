//! The `flotctl` binary: parses the command line and runs it (see the library).

use clap::Parser;

/// flotctl: manage a Flotilla cluster's objects and masters.
#[derive(Parser)]
#[command(name = "flotctl", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: flotilla_ctl::CtlArgs,
}

fn main() -> std::process::ExitCode {
    flotilla_ctl::run(Cli::parse().args)
}
