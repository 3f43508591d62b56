//! `rewire`: parse the command line, settle PID 1 duties, run the command, print one report,
//! exit with the status `app` chose.

use std::process::ExitCode;

use rewire::app::cli::Command;
use rewire::app::{self, Failure, Outcome};
use rewire::proc::init::{self, Fork};

/// The system allocator, or a bump region in `render` and `diff` (see `rewire::alloc`).
#[global_allocator]
static ALLOC: rewire::alloc::Allocator = rewire::alloc::Allocator::new();

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

/// For a command that reads a whole catalog once and exits (`render`, `diff`): let glibc's
/// heaps grow in 16 MB steps rather than page by page. Most of such a command's memory comes
/// from the bump region (`rewire::alloc`); this is for what goes past it (a catalog of
/// 30 000 instances and more) and for the C library's own allocations.
///
/// Each thread but the main one allocates from its own arena, a 64 MB reservation that glibc
/// opens with `mprotect` only as far as it has handed out: every time the top runs out, one
/// `mprotect` of the few pages wanted, which takes the address space's lock for writing while
/// the other threads are faulting in fresh pages. A one-shot render of 10 000 dir instances
/// (reader and conversion threads allocating ~14 MB) made 3 538 such calls; `M_TOP_PAD` sizes a
/// new arena's first opening, and with 16 MB it made 30. The pad is address space, not memory:
/// pages count only once touched. It also keeps that much unreturned on trim, which is why the
/// daemon, which lives on after a burst, does not set it.
/// Other C libraries (musl) have no such parameter: nothing to do there.
fn grow_heaps_in_big_steps() {
    // SAFETY: mallopt only sets a parameter; called before any other thread exists.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
    }
}

fn main() -> ExitCode {
    // While this process has one thread: read (and hide from children) systemd's socket.
    app::systemd::take_from_env();
    let cli = rewire::app::cli::parse();
    if matches!(cli.command, Command::Render(_) | Command::Diff(_)) {
        ALLOC.use_region(rewire::alloc::ONE_SHOT_REGION);
        grow_heaps_in_big_steps();
    }
    let json_logs = matches!(cli.log_format, rewire::app::cli::LogFormat::Json);
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
        if json_logs && result.is_err() {
            // The error that ends the command, as one more log record: a log shipper reading
            // JSON lines would drop (or split) a plain multi-line text.
            let record = serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": "ERROR",
                "message": report,
            });
            eprintln!("{record}");
        } else {
            eprintln!("{report}");
        }
    }
    app::exit_status(&result)
}
