//! The event bus: every job's state and event counts, as one immutable snapshot on a `watch`
//! channel (the way the store publishes catalog data).
//!
//! An event is a counter: `consul-agent` became healthy for the third time when
//! `events["healthy"]` goes to 3. A waiter remembers the count it has seen and wakes when it
//! grows, so an event that happened before the waiter subscribed is not missed (a `once`
//! waiter starting late fires at once) and a burst is coalesced for an `each` job, which
//! cannot run twice at once anyway. Readers (`rewire status`, later telemetry) borrow the
//! latest snapshot and never call back.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::config::{Event, When};
use crate::status::{JobStatus, Jobs};

/// Publishes job state. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    tx: Arc<watch::Sender<Arc<Jobs>>>,
}

impl Bus {
    /// A bus knowing `names` (each starts as "waiting" or "starting").
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Bus {
        let jobs: Jobs = names
            .into_iter()
            .map(|n| {
                (
                    n.to_string(),
                    JobStatus {
                        state: "starting".into(),
                        ..JobStatus::default()
                    },
                )
            })
            .collect();
        Bus {
            tx: Arc::new(watch::channel(Arc::new(jobs)).0),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Jobs>> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Jobs> {
        self.tx.borrow().clone()
    }

    /// Changes one job's entry (a new snapshot is published).
    pub fn update(&self, job: &str, f: impl FnOnce(&mut JobStatus)) {
        self.tx.send_modify(|jobs| {
            let jobs = Arc::make_mut(jobs);
            f(jobs.entry(job.to_string()).or_default());
        });
    }

    /// Records that `event` happened to `job`.
    pub fn emit(&self, job: &str, event: Event) {
        info!(job, event = %event, "job event");
        self.update(job, |s| {
            *s.events.entry(event.as_str().to_string()).or_default() += 1;
        });
    }

    pub fn count(&self, job: &str, event: Event) -> u64 {
        self.tx
            .borrow()
            .get(job)
            .map(|s| s.count(event.as_str()))
            .unwrap_or(0)
    }
}

/// Waits until `when`'s event has happened more than `seen` times; returns the new count.
/// Pending forever when the bus is gone (the daemon is stopping: the caller's token decides).
///
/// A source that is done for good before the event came ([`dead`]: its `restart_limit`
/// reached, or its own `when` timed out) is said once, at warn: the wait goes on (only a
/// restart of rewire starts that job again), but nobody is left wondering why nothing
/// starts. [main] does not wait on: see [`occurred_unless_dead`].
pub async fn occurred(rx: &mut watch::Receiver<Arc<Jobs>>, when: &When, seen: u64) -> u64 {
    let event = when.is.as_str();
    let count = |jobs: &Jobs| jobs.get(&when.after).map(|s| s.count(event)).unwrap_or(0);
    let first = match occurred_unless_dead(rx, when, seen).await {
        Some(n) => return n,
        // The bus is gone: the daemon is stopping.
        None if rx.has_changed().is_err() => None,
        None => rx.borrow().get(&when.after).map(|s| s.state.clone()),
    };
    let now = match first {
        None => Err(()),
        Some(state) => {
            tracing::warn!(
                "waiting for {:?} to be {}, but {:?} is done for good ({state}): this waits until rewire restarts",
                when.after,
                when.is,
                when.after
            );
            rx.wait_for(|jobs| count(jobs) > seen)
                .await
                .map(|j| count(&j))
                .map_err(|_| ())
        }
    };
    match now {
        Ok(n) => n,
        Err(_) => std::future::pending().await,
    }
}

/// Like [`occurred`], but `None` as soon as the source is [`dead`] without the event having
/// happened (also when the bus is gone: the daemon is stopping).
pub async fn occurred_unless_dead(
    rx: &mut watch::Receiver<Arc<Jobs>>,
    when: &When,
    seen: u64,
) -> Option<u64> {
    let event = when.is.as_str();
    let count = |jobs: &Jobs| jobs.get(&when.after).map(|s| s.count(event)).unwrap_or(0);
    let is_dead = |jobs: &Jobs| jobs.get(&when.after).is_some_and(|s| dead(&s.state));
    let jobs = rx
        .wait_for(|jobs| count(jobs) > seen || is_dead(jobs))
        .await
        .ok()?;
    let n = count(&jobs);
    (n > seen).then_some(n)
}

/// The start of a job's state once it was given up on (its `restart_limit` reached).
pub const GAVE_UP: &str = "failed: gave up";

/// The start of a job's state when it never ran: its own `when` timed out.
pub const NEVER_STARTED: &str = "failed: never started";

/// Whether a job in `state` will never run again while rewire runs.
pub fn dead(state: &str) -> bool {
    state.starts_with(GAVE_UP) || state.starts_with(NEVER_STARTED)
}

/// Holds a `[[task]]` or `[[watch]]` until `when`'s event happened once. False when `stop`
/// fired first, or the wait timed out (logged, naming what it waited for: the task or handler
/// then never runs).
pub async fn gate(
    mut rx: watch::Receiver<Arc<Jobs>>,
    when: &When,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let wait = async {
        match when.timeout {
            Some(t) => tokio::time::timeout(t, occurred(&mut rx, when, 0))
                .await
                .is_ok(),
            None => {
                occurred(&mut rx, when, 0).await;
                true
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => false,
        fired = wait => {
            if !fired {
                tracing::error!("{}; it never runs", timed_out(when));
            }
            fired
        }
    }
}

/// What a timed-out `when` says: it names what it waited for.
pub fn timed_out(when: &When) -> String {
    format!(
        "timed out after {} waiting for {:?} to be {}",
        humantime::format_duration(when.timeout.unwrap_or_default()),
        when.after,
        when.is
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn when(after: &str, is: Event) -> When {
        When {
            after: after.into(),
            is,
            timeout: None,
        }
    }

    #[tokio::test]
    async fn a_waiter_that_subscribes_after_the_event_still_sees_it() {
        let bus = Bus::new(["agent", "app"]);
        bus.emit("agent", Event::Healthy);
        let mut rx = bus.subscribe();
        assert_eq!(
            occurred(&mut rx, &when("agent", Event::Healthy), 0).await,
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_each_waiter_wakes_only_for_a_new_occurrence() {
        let bus = Bus::new(["agent"]);
        bus.emit("agent", Event::Unhealthy);
        let mut rx = bus.subscribe();
        let w = when("agent", Event::Unhealthy);
        let seen = occurred(&mut rx, &w, 0).await;
        let again = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            occurred(&mut rx, &w, seen),
        )
        .await;
        assert!(again.is_err(), "woke without a new event");
        bus.emit("agent", Event::Healthy);
        bus.emit("agent", Event::Unhealthy);
        assert_eq!(occurred(&mut rx, &w, seen).await, 2);
    }

    #[test]
    fn a_timeout_names_what_was_awaited() {
        let mut w = when("consul-agent", Event::Healthy);
        w.timeout = Some(std::time::Duration::from_secs(60));
        assert_eq!(
            timed_out(&w),
            "timed out after 1m waiting for \"consul-agent\" to be healthy"
        );
    }
}
