use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    rewire::main(rewire::cli::Cli::parse())
}
