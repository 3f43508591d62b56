//! `[[task]]`s: commands run every so often.
//!
//! A `[[task]]` runs every `every`, the first time one `every` after start. A tick that finds
//! the previous run still going is skipped (and logged): a task never overlaps itself. Runs
//! that fail (non-zero, killed, timed out) are logged with their output and counted in
//! `rewire status`.
//!
//! SIGHUP replaces the task loops; [`Slots`] (created once by the daemon) keeps, per task,
//! whether a run is going and when the last one started, so the rhythm and the no-overlap rule
//! hold across a reload. Runs belong to [`Runs`], not to the generation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Runs;
use crate::command;
use crate::config::{Config, TaskConfig};
use crate::lock::lock;
use crate::status::{Board, Jobs, TaskStatus};
use crate::telemetry::metrics::Metrics;
use tokio::sync::watch;

/// What tasks keep across SIGHUP (see the module docs). Cheap to clone.
#[derive(Clone, Default)]
pub struct Slots {
    inner: Arc<Mutex<HashMap<String, Arc<TaskSlot>>>>,
}

#[derive(Default)]
struct TaskSlot {
    /// Held for the whole run of the task.
    running: Arc<tokio::sync::Mutex<()>>,
    last_start: Mutex<Option<Instant>>,
}

impl Slots {
    fn slot(&self, t: &TaskConfig) -> Arc<TaskSlot> {
        let key = format!("{}|{}", t.name, t.exec.program);
        lock(&self.inner).entry(key).or_default().clone()
    }
}

/// Starts one task per `[[task]]` of this config generation, on `tracker`.
#[allow(clippy::too_many_arguments)] // each is a distinct handle from the daemon
pub fn spawn_all(
    config: &Config,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    board: &Arc<Board>,
    metrics: &Arc<Metrics>,
    env: &BTreeMap<String, String>,
    (runs, slots, jobs): (&Runs, &Slots, &watch::Receiver<Arc<Jobs>>),
) {
    board.update(|r| {
        let names: BTreeSet<&str> = config.tasks.iter().map(|t| t.name.as_str()).collect();
        r.tasks.retain(|name, _| names.contains(name.as_str()));
        for t in &config.tasks {
            r.tasks.entry(t.name.clone()).or_default();
        }
    });
    for t in &config.tasks {
        let span = info_span!("task", task = %t.name);
        tracker.spawn(
            run_task(
                t.clone(),
                slots.slot(t),
                board.clone(),
                metrics.clone(),
                env.clone(),
                runs.clone(),
                jobs.clone(),
                stop.child_token(),
            )
            .instrument(span),
        );
    }
}

#[allow(clippy::too_many_arguments)] // each is a distinct handle from the daemon
async fn run_task(
    t: TaskConfig,
    slot: Arc<TaskSlot>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    env: BTreeMap<String, String>,
    runs: Runs,
    jobs: watch::Receiver<Arc<Jobs>>,
    stop: CancellationToken,
) {
    if let Some(when) = &t.when
        && !super::jobs::bus::gate(jobs, when, &stop).await
    {
        return;
    }
    // Keep the rhythm across a reload: the next run is `every` after the last one started.
    let last = *lock(&slot.last_start);
    let first = match last {
        Some(at) => (at + t.every).max(Instant::now()),
        None => Instant::now() + t.every,
    };
    let mut ticker = tokio::time::interval_at(first, t.every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(guard) = slot.running.clone().try_lock_owned() else {
            warn!(every = %humantime::format_duration(t.every), "still running from the last tick; skipping this one");
            continue;
        };
        *lock(&slot.last_start) = Some(Instant::now());
        let (t2, board2, metrics2, env2) = (t.clone(), board.clone(), metrics.clone(), env.clone());
        runs.spawn(
            async move {
                let _guard = guard;
                run_task_once(&t2, &board2, &metrics2, &env2).await;
            }
            .instrument(tracing::Span::current()),
        );
    }
}

async fn run_task_once(
    t: &TaskConfig,
    board: &Board,
    metrics: &Metrics,
    env: &BTreeMap<String, String>,
) {
    let name = t.exec.program.name();
    debug!(command = %name, "running");
    let started = Instant::now();
    let failure = match command::run(&t.exec, env, None).await {
        Ok(o) if o.success() => {
            // Output that feeds a metric is the metric's value, not news for the log (a task
            // run every second would write a line a second).
            if !o.output.is_empty() && t.metric.is_some() {
                debug!(command = %name, output = %o.output, "task output");
            } else if !o.output.is_empty() {
                info!(command = %name, output = %o.output, "task output");
            }
            match &t.metric {
                Some(metric) => set_metric(metrics, metric, &o.output).err(),
                None => None,
            }
        }
        Ok(o) => {
            let how = o.describe(t.exec.timeout);
            if o.output.is_empty() {
                warn!(command = %name, "task {how}");
                Some(how)
            } else {
                warn!(command = %name, output = %o.output, "task {how}");
                Some(format!("{how}: {}", o.output))
            }
        }
        Err(e) => {
            warn!(command = %name, "{e}");
            Some(e.to_string())
        }
    };
    metrics.task_run(&t.name, failure.is_none(), started.elapsed());
    board.update(|r| {
        let s = r
            .tasks
            .entry(t.name.clone())
            .or_insert_with(TaskStatus::default);
        s.runs += 1;
        if let Some(e) = failure {
            s.failures += 1;
            s.last_error = e;
        }
    });
}

/// Sets a task's `metric` from its output: the last line, a number.
fn set_metric(metrics: &Metrics, metric: &str, output: &str) -> Result<(), String> {
    let last = output.lines().next_back().unwrap_or("").trim();
    let value: f64 = last.parse().map_err(|_| {
        let e = format!("metric {metric}: the task's last output line {last:?} is not a number");
        warn!("{e}");
        e
    })?;
    metrics.set_user(metric, value).map_err(|e| {
        warn!(metric, "{e}");
        e.to_string()
    })
}
