//! What `render` and `diff` say while they wait for catalog data: without it, a missing catalog
//! directory or an unreachable Consul meant silence for the whole timeout.
//!
//! After a short grace (a reachable catalog answers within milliseconds, and a render that does
//! not wait should print nothing), one line says what is awaited and from where; then, on a
//! terminal, a spinner line with the elapsed time (cleared when done); elsewhere (preStart logs)
//! a plain line every few seconds. The final explanation at the timeout is the command's own.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::lock::lock;
use crate::model::Query;

/// Nothing is said for a wait shorter than this.
const GRACE: Duration = Duration::from_millis(500);
/// How often a plain (not a terminal) line repeats.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How often the spinner turns.
const SPIN_EVERY: Duration = Duration::from_millis(120);

#[derive(Default)]
struct State {
    waiting: Vec<String>,
    last_error: Option<String>,
}

/// The progress reporter of one wait; stops (and clears a spinner) when its guard drops.
pub(super) struct Progress {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    tty: bool,
}

impl Progress {
    pub(super) fn start(from: String, timeout: Duration) -> Progress {
        let state = Arc::new(Mutex::new(State::default()));
        let tty = std::io::stderr().is_terminal();
        let task = tokio::spawn(report(state.clone(), from, timeout, tty));
        Progress { state, task, tty }
    }

    /// Records what the next fetch asks for, and the last catalog error seen.
    pub(super) fn waiting_for(&self, queries: &[Query], last_error: Option<&str>) {
        let mut s = lock(&self.state);
        s.waiting = queries.iter().map(ToString::to_string).collect();
        s.last_error = last_error.map(str::to_string);
    }

    pub(super) fn guard(&self) -> Guard<'_> {
        Guard(self)
    }
}

/// Stops the reporter when the wait ends, however it ends.
pub(super) struct Guard<'p>(&'p Progress);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.task.abort();
        if self.0.tty {
            // The spinner's line, if it was drawn.
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

async fn report(state: Arc<Mutex<State>>, from: String, timeout: Duration, tty: bool) {
    let started = Instant::now();
    tokio::time::sleep(GRACE).await;
    let what = || {
        let s = lock(&state);
        let what = if s.waiting.is_empty() {
            "the catalog's first answer".to_string()
        } else {
            s.waiting.join(", ")
        };
        let error = s
            .last_error
            .as_ref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        (what, error)
    };
    let mut err = std::io::stderr();
    let (awaited, error) = what();
    let _ = writeln!(
        err,
        "rewire: waiting for {awaited} from {from} (up to {}){error}",
        humantime::format_duration(timeout)
    );
    let spinner = ['|', '/', '-', '\\'];
    let mut turn = 0;
    loop {
        tokio::time::sleep(if tty { SPIN_EVERY } else { PLAIN_EVERY }).await;
        let elapsed = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
        if tty {
            turn = (turn + 1) % spinner.len();
            let (awaited, _) = what();
            let _ = write!(
                err,
                "\r\x1b[2K{} waiting {elapsed} for {awaited} from {from}",
                spinner[turn]
            );
        } else {
            let (awaited, error) = what();
            let _ = writeln!(
                err,
                "rewire: still waiting after {elapsed} for {awaited} from {from}{error}"
            );
        }
        let _ = err.flush();
    }
}
