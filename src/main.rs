use std::process::ExitCode;

use clap::Parser;
use rewire::app::cli::{Cli, Command};
use rewire::proc::init::{self, Fork};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // As PID 1 (or with `run --subreaper`), fork the reaper before any thread exists: the
    // runtime is built inside `rewire::main`, in the worker.
    if let Command::Run(args) = &cli.command
        && init::needed(args.subreaper)
    {
        match init::fork_worker(args.subreaper) {
            Ok(Fork::Parent(worker)) => return init::reap_and_forward(worker),
            Ok(Fork::Child) => {}
            Err(e) => {
                eprintln!("rewire: cannot start the reaper process: {e}");
                return ExitCode::from(2);
            }
        }
    }
    rewire::app::main(cli)
}
