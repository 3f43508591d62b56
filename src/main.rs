//! `rewire`: parse the command line, settle PID 1 duties, run the command, print one report,
//! exit with the status `app` chose.

use std::process::ExitCode;

use rewire::app::cli::Command;
use rewire::app::{self, Failure, Outcome};
use rewire::proc::init::{self, Fork};

/// `pow`, defined here so that the linker finds it before libm.
///
/// The one libm function rewire calls is `pow` (tokio's scheduler keeps a moving average of
/// task poll times with `f64::powf`). Linking libm.so for it cost ~0.6 MB of an idle daemon's
/// ~8 MB: the loader runs libm's 21 internal IFUNC resolvers at start, and each fault maps
/// 64 KB of its text and tables around the page it needs. With `pow` defined in the executable,
/// the linker (`--as-needed`) leaves libm out. `libm` is the Rust port of musl's libm.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

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
