//! `rewire`: parse the command line, settle PID 1 duties, run the command, print one report,
//! exit with the status `app` chose.

use std::process::ExitCode;

use rewire::app::cli::Command;
use rewire::app::{self, Failure, Outcome};
use rewire::proc::init::{self, Fork};

fn main() -> ExitCode {
    // While this process has one thread: read (and hide from children) systemd's socket.
    app::systemd::take_from_env();
    let cli = rewire::app::cli::parse();
    let result = match &cli.command {
        // As PID 1 (or with `run --subreaper`), fork the reaper before any thread exists: the
        // runtime is built inside `app::run`, in the worker.
        Command::Run(args) if init::needed(args.subreaper) => {
            match init::fork_worker(args.subreaper) {
                Ok(Fork::Parent(worker)) => Ok(Outcome::Relayed(init::reap_and_forward(worker))),
                Ok(Fork::Child) => app::run(cli),
                Err(e) => Err(Failure::Reaper(e)),
            }
        }
        _ => app::run(cli),
    };
    if let Some(report) = app::report(&result) {
        eprintln!("{report}");
    }
    app::exit_status(&result)
}
