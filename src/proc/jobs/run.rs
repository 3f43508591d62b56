//! One `[[job]]`: wait for its `when`, run its process with its health command beside it,
//! restart it by its policy, and, at its turn in the stop sequence, stop it (its own
//! `stop_signal`, SIGKILL to its group after its own `stop_timeout`).
//!
//! A job's process inherits rewire's stdout and stderr, as main does (a Consul agent logs
//! there), gets `/dev/null` as stdin and leads its own process group.

use crate::proc::{health, leftovers};
use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::bus::{self, Bus};
use super::restarts::{Next, Restarts};
use crate::command::{self, RunStatus};
use crate::config::{Event, JobConfig, JobHealth};

/// After SIGKILL, how long to wait for the process to be gone.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

pub(super) struct JobTask {
    pub cfg: JobConfig,
    pub bus: Bus,
    pub env: BTreeMap<String, String>,
    /// rewire is stopping: no new start (except for a job waiting for a stop event) and no
    /// restart from now on.
    pub halt: CancellationToken,
    /// This job's turn in the stop sequence: stop the process now.
    pub turn: CancellationToken,
    /// A second stop signal: kill without waiting for `stop_timeout`.
    pub hurry: CancellationToken,
    /// Where the health command's results also go (an `[[election]]` may gate on them).
    pub health: health::Registry,
    /// The pid of the last start (0 before the first): its process group's id, for what a
    /// run that exited left there.
    pub last_pid: std::sync::atomic::AtomicI32,
}

/// Why a job's loop ended early.
enum Stop {
    /// Its turn in the stop sequence came (or rewire is stopping and it may not start).
    Stopping,
}

impl JobTask {
    pub async fn run(self) {
        let left = self.runs().await;
        if left.is_empty() {
            return;
        }
        // What the runs that ended on their own left keeps running (a command may daemonize
        // on purpose) until the job's turn in the stop sequence.
        self.turn.cancelled().await;
        let deadline = Instant::now() + self.cfg.stop_timeout;
        let what = format!("job {}", self.cfg.name);
        join_all(
            left.iter().filter(|l| l.still_there()).map(|l| {
                leftovers::stop(l.pgid, self.cfg.stop_signal, &what, &self.hurry, deadline)
            }),
        )
        .await;
    }

    /// Waits for `when` and runs the process (again for `each`) until rewire stops. Returns
    /// the process groups that runs which ended on their own, and were not restarted, left
    /// processes in.
    async fn runs(&self) -> Vec<leftovers::Left> {
        let name = self.cfg.name.clone();
        let mut left = Vec::new();
        let mut rx = self.bus.subscribe();
        let hook = self
            .cfg
            .when
            .as_ref()
            .is_some_and(|w| w.is.is_stop() || w.on_main_exit());
        let mut seen = 0;
        let mut first = true;
        let mut restarts = Restarts::new(self.cfg.restart, self.cfg.restart_limit);
        loop {
            if let Some(when) = self.cfg.when.clone() {
                self.bus.update(&name, |s| {
                    s.state = "waiting".into();
                    s.waits_for = Some(when.to_string());
                });
                let gate = async {
                    match when.timeout.filter(|_| first) {
                        Some(t) => tokio::time::timeout(t, bus::occurred(&mut rx, &when, seen))
                            .await
                            .ok(),
                        None => Some(bus::occurred(&mut rx, &when, seen).await),
                    }
                };
                let not_now = async {
                    if hook {
                        self.turn.cancelled().await
                    } else {
                        tokio::select! {
                            _ = self.turn.cancelled() => {}
                            _ = self.halt.cancelled() => {}
                        }
                    }
                };
                let fired = tokio::select! {
                    _ = not_now => {
                        self.idle("not started (rewire is stopping)");
                        return left;
                    }
                    f = gate => f,
                };
                match fired {
                    Some(count) => {
                        seen = count;
                        info!(job = %name, after = %when.after, event = %when.is, "starting: the event it waits for happened");
                    }
                    None => {
                        let why = bus::timed_out(&when);
                        error!(job = %name, "{why}; the job is not started");
                        self.bus.update(&name, |s| {
                            s.state = format!("{}: {why}", bus::NEVER_STARTED);
                            s.waits_for = None;
                        });
                        self.bus.emit(&name, Event::Failed);
                        return left;
                    }
                }
                self.bus.update(&name, |s| s.waits_for = None);
            } else if self.halt.is_cancelled() {
                self.idle("not started (rewire is stopping)");
                return left;
            }
            first = false;
            if let Err(Stop::Stopping) = self.supervise(&mut restarts).await {
                return left;
            }
            left.extend(self.left_by_last_run());
            if !self.cfg.each || self.halt.is_cancelled() {
                return left;
            }
        }
    }

    /// The last run's process group, if the run (ended on its own) left processes there.
    fn left_by_last_run(&self) -> Option<leftovers::Left> {
        let pgid = self.last_pid.load(std::sync::atomic::Ordering::Acquire);
        let (left, pids) = leftovers::Left::snapshot(Pid::from_raw(pgid)).filter(|_| pgid > 0)?;
        info!(
            job = %self.cfg.name,
            pgid,
            pids = ?pids,
            "the job's run ended, and left processes in its group: they run until rewire stops"
        );
        Some(left)
    }

    fn idle(&self, state: &str) {
        self.bus.update(&self.cfg.name, |s| {
            s.state = state.into();
            s.waits_for = None;
        });
    }

    /// Runs the process until the restart policy lets it rest.
    async fn supervise(&self, restarts: &mut Restarts) -> Result<(), Stop> {
        let name = &self.cfg.name;
        loop {
            let started = Instant::now();
            let success = self.run_once().await?;
            let next = if self.halt.is_cancelled() {
                Next::Done
            } else {
                restarts.after_exit(success, started)
            };
            match next {
                Next::Done => return Ok(()),
                Next::GaveUp(n) => {
                    error!(job = %name, restarts = n, "restart limit reached; giving up on the job");
                    self.bus.update(name, |s| {
                        s.state = format!("{} after {n} restart(s) in a row", bus::GAVE_UP);
                    });
                    return Ok(());
                }
                Next::Restart(delay) => {
                    // What the run that ended left in its group goes first (a worker holding
                    // its port would fail every restart, and outlive rewire).
                    self.stop_leftovers_of_last_run(&self.halt).await;
                    let total = restarts.total;
                    info!(job = %name, delay = ?delay, restarts = total, "restarting");
                    self.bus.update(name, |s| {
                        s.state = "restarting".into();
                        s.restarts = total;
                    });
                    tokio::select! {
                        _ = self.turn.cancelled() => {
                            // Stopped while waiting to restart: the last run is gone, but
                            // not necessarily all it left.
                            self.stop_leftovers_of_last_run(&self.hurry).await;
                            return Err(Stop::Stopping);
                        }
                        _ = self.halt.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Starts the process once and waits for it to exit (or stops it at its turn). Returns
    /// whether it succeeded; `Err` when it was stopped by the stop sequence.
    async fn run_once(&self) -> Result<bool, Stop> {
        let name = &self.cfg.name;
        let mut cmd = command::build(&self.cfg.exec, &self.env);
        cmd.stdin(std::process::Stdio::null());
        let mut child = match command::spawn(cmd, self.cfg.stop_signal).await {
            Ok(c) => c,
            Err(e) => {
                error!(job = %name, program = %self.cfg.exec.name(), error = %e, "cannot start the job");
                self.bus.update(name, |s| {
                    s.state = "failed".into();
                    s.last_exit = Some(format!("cannot start: {e}"));
                });
                self.bus.emit(name, Event::Failed);
                return Ok(false);
            }
        };
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        if let Some(pid) = pid {
            self.last_pid
                .store(pid.as_raw(), std::sync::atomic::Ordering::Release);
        }
        info!(job = %name, pid = pid.map(Pid::as_raw).unwrap_or_default(), program = %self.cfg.exec.name(), "job started");
        self.bus.update(name, |s| {
            s.state = "running".into();
            s.pid = pid.map(Pid::as_raw);
        });
        self.bus.emit(name, Event::Started);
        let health = async {
            match &self.cfg.health {
                Some(h) => self.health(h).await,
                None => std::future::pending().await,
            }
        };
        let status = tokio::select! {
            st = child.wait() => st,
            _ = health => unreachable!("the health loop never ends"),
            _ = self.turn.cancelled() => {
                self.stop_process(&mut child, pid).await;
                self.exited(child.try_wait().ok().flatten().map(command::exit_status));
                return Err(Stop::Stopping);
            }
        };
        let status = status.ok().map(command::exit_status);
        Ok(self.exited(status))
    }

    /// Records an exit; returns whether it was a success.
    fn exited(&self, status: Option<RunStatus>) -> bool {
        let name = &self.cfg.name;
        let (success, how) = match status {
            Some(RunStatus::Exited(0)) => (true, "exited with status 0".to_string()),
            Some(RunStatus::Exited(c)) => (false, format!("exited with status {c}")),
            Some(RunStatus::Signalled(s)) => (
                false,
                format!(
                    "killed by signal {}",
                    Signal::try_from(s)
                        .map(|s| s.to_string())
                        .unwrap_or(s.to_string())
                ),
            ),
            Some(RunStatus::TimedOut) | None => (false, "gone (status unknown)".to_string()),
        };
        if success {
            info!(job = %name, "job {how}");
        } else {
            warn!(job = %name, "job {how}");
        }
        // As a shell says it: the status, or 128+N when signal N killed it.
        let code = match status {
            Some(RunStatus::Exited(c)) => Some(c),
            Some(RunStatus::Signalled(s)) => Some(128 + s),
            Some(RunStatus::TimedOut) | None => None,
        };
        self.bus.update(name, |s| {
            s.state = if success { "exited" } else { "failed" }.into();
            s.pid = None;
            s.last_exit = Some(how);
            s.last_exit_code = code;
            s.healthy = None;
        });
        self.health.clear(&health::job_key(name));
        self.bus.emit(name, Event::Exited);
        self.bus.emit(
            name,
            if success {
                Event::Succeeded
            } else {
                Event::Failed
            },
        );
        success
    }

    /// What the last run (exited) left in its process group: `stop_signal`, then SIGKILL at
    /// `stop_timeout` (at once when `cut` is cancelled).
    async fn stop_leftovers_of_last_run(&self, cut: &CancellationToken) {
        let what = format!("job {}", self.cfg.name);
        leftovers::stop_last_run(
            &self.last_pid,
            self.cfg.stop_signal,
            &what,
            cut,
            self.cfg.stop_timeout,
        )
        .await;
    }

    /// `stop_signal`, then SIGKILL to the group after `stop_timeout` (at once on `hurry`).
    async fn stop_process(&self, child: &mut Child, pid: Option<Pid>) {
        let name = &self.cfg.name;
        let Some(pid) = pid else { return };
        info!(job = %name, pid = pid.as_raw(), signal = %self.cfg.stop_signal, "stopping job");
        if let Err(e) = kill(pid, self.cfg.stop_signal) {
            warn!(job = %name, pid = pid.as_raw(), error = %e, "cannot signal the job");
        }
        let deadline = tokio::time::Instant::now() + self.cfg.stop_timeout;
        let stopped = tokio::select! {
            r = tokio::time::timeout_at(deadline, child.wait()) => r.is_ok(),
            _ = self.hurry.cancelled() => false,
        };
        if stopped {
            let what = format!("job {name}");
            leftovers::stop(pid, self.cfg.stop_signal, &what, &self.hurry, deadline).await;
            return;
        }
        warn!(
            job = %name,
            pid = pid.as_raw(),
            stop_timeout = %humantime::format_duration(self.cfg.stop_timeout),
            "job did not stop in time; killing its process group"
        );
        // The job leads its own process group (pgid 0 at spawn): its children go too.
        if let Err(e) = killpg(pid, Signal::SIGKILL) {
            debug!(error = %e, "killpg");
            let _ = kill(pid, Signal::SIGKILL);
        }
        if tokio::time::timeout(KILL_GRACE, child.wait())
            .await
            .is_err()
        {
            error!(job = %name, pid = pid.as_raw(), "job is still there after SIGKILL");
        }
    }

    /// Runs the health command every `interval` (the first at once) while the process runs;
    /// a change of result is an event (`healthy` or `unhealthy`; the first result counts as a
    /// change). Never returns.
    async fn health(&self, h: &JobHealth) {
        let name = &self.cfg.name;
        let mut ticker = tokio::time::interval(h.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last: Option<bool> = None;
        loop {
            ticker.tick().await;
            let (ok, note) = match command::run(&h.check, &self.env, None).await {
                Ok(o) if o.success() => (true, o.output.trim().to_string()),
                Ok(o) => {
                    let how = o.describe(h.check.timeout);
                    match o.output.trim() {
                        "" => (false, how),
                        out => (false, format!("{how}: {out}")),
                    }
                }
                Err(e) => (false, e.to_string()),
            };
            self.bus.update(name, |s| {
                s.healthy = Some(ok);
                s.health_note = note.clone();
            });
            self.health.report(&health::job_key(name), ok);
            if last != Some(ok) {
                last = Some(ok);
                if ok {
                    self.bus.emit(name, Event::Healthy);
                } else {
                    debug!(job = %name, output = %note, "health check failing");
                    self.bus.emit(name, Event::Unhealthy);
                }
            }
        }
    }
}
