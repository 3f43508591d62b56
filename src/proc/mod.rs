//! The processes rewire runs for the container, and its duties as PID 1.
//!
//! - [`supervisor`]: the container's lifecycle (registrations, `pre_start`, main, the stop
//!   sequence), with [`registrar`] keeping each `[[service]]` registered while healthy.
//! - [`jobs`]: `[[job]]`s and main as a graph ordered by events (`when`), stopped in reverse.
//! - [`watches`] (`[[watch]]` handlers) and [`tasks`] (`[[task]]`s).
//! - [`election`]: `[[election]]`s (run for leader, renew, hooks, step down), gated by the
//!   services' [`health`].
//! - [`init`]: the PID 1 reaper, forked before the runtime exists.
//!
//! This side reads the store and the catalog, never the template engine: what happens to
//! files is the render side's business.

pub mod election;
pub mod health;
pub mod init;
pub mod jobs;
mod leftovers;
pub mod registrar;
pub mod supervisor;
pub mod tasks;
pub mod watches;

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs of `[[watch]]` handlers and `[[task]]`s. A run outlives the config generation that
/// started it (a SIGHUP does not kill a backup half-way), so runs are tracked here, for the
/// daemon's lifetime: when the daemon stops, `stop` fires, a run still going is dropped (its
/// command is killed, as it was when the process exited) and the daemon waits for the tracker.
#[derive(Clone)]
pub struct Runs {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Runs {
    pub fn new(tracker: TaskTracker, stop: CancellationToken) -> Runs {
        Runs { tracker, stop }
    }

    /// Starts a run; it ends early when the daemon stops.
    pub fn spawn(&self, run: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = run => {}
            }
        })
    }
}
