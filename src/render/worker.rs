//! Where a render runs: briefly on the async worker, or on a thread of its own, never for
//! longer than its template's `render_timeout`.
//!
//! Tera renders synchronously. A render that blocks an async worker stalls the catalog watches
//! and every other group; one on tokio's blocking pool keeps the runtime from shutting down
//! (dropping a runtime waits for its blocking tasks), which is how a runaway template used to
//! hold `rewire run` after SIGTERM. So:
//!
//! - a template whose last render was quick (under [`INLINE_RENDER`]) renders inline, with a
//!   deadline of [`INLINE_SLICE`]; one that turns slow is stopped there and rendered again on
//!   a thread (the path from a catalog change to the file stays short for the common case);
//! - otherwise the render runs on a new thread named `render`, detached: nothing ever joins
//!   it. The caller awaits its answer, and can stop awaiting (SIGHUP, SIGTERM) at any moment.
//!   The engine stops the render itself at its deadline (`vendor/tera` interrupts the VM),
//!   so the thread ends shortly after; should it not (a render stuck where the VM cannot
//!   interrupt it), the caller gives up [`STUCK_GRACE`] after the deadline and the template
//!   is not rendered again while that thread lives: at most one render thread per template.
//! - a panic inside Tera fails that render, not the daemon.
//!
//! A render thread holds an `Arc` of the engine and of the snapshot, and no lock anyone else
//! takes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::template::{Budget, Engine, Limit, Rendered};
use crate::config::RenderLimits;
use crate::store::Snapshot;

/// A render that took less than this last time runs on the async worker itself: it sits on the
/// path from a catalog change to the file in place, and handing it to a new thread and back
/// costs 0.1-0.15 ms (measured with 1 000 instances, whose render takes ~0.7 ms in the
/// daemon). The other worker keeps the watches and the control socket going meanwhile.
pub const INLINE_RENDER: Duration = Duration::from_millis(1);

/// The longest an inline render may hold the async worker before it is stopped and run again
/// on a thread of its own.
pub const INLINE_SLICE: Duration = Duration::from_millis(5);

/// How long after its deadline a render thread may take to answer before it counts as stuck.
pub const STUCK_GRACE: Duration = Duration::from_secs(2);

/// One template's renders: how long the last took, and whether a thread of it still runs.
#[derive(Debug, Default)]
pub struct Slot {
    last_cost: Option<Duration>,
    /// True while a render thread runs (cleared by the thread itself when it ends).
    running: Arc<AtomicBool>,
}

impl Slot {
    /// Renders `name` within `limits`, inline or on a thread (see the module docs).
    pub async fn render(
        &mut self,
        engine: &Arc<Engine>,
        name: &str,
        limits: RenderLimits,
        snap: &Arc<Snapshot>,
    ) -> Rendered {
        if self.running.load(Ordering::Acquire) {
            return failed(
                format!(
                    "an earlier render is still running, past its render_timeout of {}; it is not started again until that one ends",
                    humantime::format_duration(limits.timeout)
                ),
                Some(Limit::Time),
            );
        }
        if self.last_cost.is_some_and(|c| c < INLINE_RENDER) && limits.timeout > INLINE_SLICE {
            let (r, took) = timed(engine, name, snap, Budget::slice(limits, INLINE_SLICE));
            let cut_short = matches!(
                r,
                Rendered::Failed {
                    limit: Some(Limit::Time),
                    ..
                }
            );
            if !cut_short {
                self.last_cost = Some(took);
                return r;
            }
        }
        let (r, took) = self.on_thread(engine, name, limits, snap).await;
        self.last_cost = Some(took);
        r
    }

    /// Renders on a thread of its own; returns the render and how long it took there.
    async fn on_thread(
        &self,
        engine: &Arc<Engine>,
        name: &str,
        limits: RenderLimits,
        snap: &Arc<Snapshot>,
    ) -> (Rendered, Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let running = self.running.clone();
        running.store(true, Ordering::Release);
        let (engine, snap, tname) = (engine.clone(), snap.clone(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name("render".into())
            .spawn(move || {
                let done = timed(&engine, &tname, &snap, Budget::starting_now(limits));
                running.store(false, Ordering::Release);
                // The caller may have stopped waiting (SIGHUP, stop): nobody to tell then.
                let _ = tx.send(done);
            });
        if let Err(e) = spawned {
            self.running.store(false, Ordering::Release);
            let r = failed(format!("cannot start a render thread: {e}"), None);
            return (r, Duration::ZERO);
        }
        match tokio::time::timeout(limits.timeout + STUCK_GRACE, rx).await {
            Ok(Ok(done)) => done,
            Ok(Err(_)) => (
                failed("the render thread ended without an answer".into(), None),
                limits.timeout,
            ),
            Err(_) => (
                failed(
                    format!(
                        "render did not stop at its render_timeout of {}; its thread is left to end on its own",
                        humantime::format_duration(limits.timeout)
                    ),
                    Some(Limit::Time),
                ),
                limits.timeout,
            ),
        }
    }
}

/// Renders within `budget`, turning a panic inside Tera (or a function) into a failed render;
/// returns how long it took.
fn timed(
    engine: &Engine,
    name: &str,
    snap: &Arc<Snapshot>,
    budget: Budget,
) -> (Rendered, Duration) {
    let started = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.render_within(name, snap, budget)
    }))
    .unwrap_or_else(|panic| {
        let text = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        failed(format!("render panicked: {text}"), None)
    });
    (r, started.elapsed())
}

fn failed(error: String, limit: Option<Limit>) -> Rendered {
    Rendered::Failed {
        deps: Default::default(),
        error,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::template::tests::engine_for;
    use crate::store::Store;

    fn limits(timeout_ms: u64, max_output: u64) -> RenderLimits {
        RenderLimits {
            timeout: Duration::from_millis(timeout_ms),
            max_output,
        }
    }

    const SILENT_LOOP: &str = "{% for a in range(end=100000) %}{% for b in range(end=100000) %}{% for c in range(end=100000) %}{% endfor %}{% endfor %}{% endfor %}";

    #[tokio::test]
    async fn a_loop_that_prints_nothing_stops_at_its_timeout_and_its_thread_ends() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(engine_for(dir.path(), &[("t", SILENT_LOOP)]).unwrap());
        let snap = Store::new().snapshot();
        let mut slot = Slot::default();
        let started = Instant::now();
        let r = slot.render(&engine, "t", limits(300, 1 << 20), &snap).await;
        let took = started.elapsed();
        let Rendered::Failed { error, limit, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(limit, Some(Limit::Time));
        assert!(error.contains("render_timeout"), "{error}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // The thread is gone (it clears the flag as it ends), so the next render starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while slot.running.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "render thread still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn output_past_max_output_stops_the_render_even_inside_a_capture() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(
            engine_for(
                dir.path(),
                &[
                    ("printing", "{% for a in range(end=100000) %}{% for b in range(end=100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}"),
                    ("captured", "{% set big %}{% for a in range(end=100000) %}{% for b in range(end=100000) %}xxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}{% endset %}{{ big | length }}"),
                ],
            )
            .unwrap(),
        );
        let snap = Store::new().snapshot();
        for name in ["printing", "captured"] {
            let mut slot = Slot::default();
            let r = slot
                .render(&engine, name, limits(60_000, 64 << 10), &snap)
                .await;
            let Rendered::Failed { error, limit, .. } = r else {
                panic!("{name}: {r:?}")
            };
            assert_eq!(limit, Some(Limit::Output), "{name}: {error}");
            assert!(error.contains("max_output"), "{error}");
        }
    }

    #[tokio::test]
    async fn a_quick_template_turning_slow_moves_from_inline_to_a_thread() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(
            engine_for(
                dir.path(),
                &[(
                    "t",
                    "{% set n = key(path=\"n\", default=\"1\") | int %}{% for a in range(end=n) %}{% for b in range(end=n) %}{% endfor %}{% endfor %}done",
                )],
            )
            .unwrap(),
        );
        let store = Store::new();
        store.update(
            crate::model::Query::Key("n".into()),
            crate::model::Data::Key(None),
        );
        let mut slot = Slot::default();
        let lim = limits(30_000, 1 << 20);
        let r = slot.render(&engine, "t", lim, &store.snapshot()).await;
        assert!(matches!(r, Rendered::Done { .. }), "{r:?}");
        // As if the last render had been quick (timings on a busy test machine vary).
        slot.last_cost = Some(Duration::ZERO);
        // 1 000 x 1 000 iterations: far more than the inline slice, well within the timeout.
        store.update(
            crate::model::Query::Key("n".into()),
            crate::model::Data::Key(Some("1000".into())),
        );
        let r = slot.render(&engine, "t", lim, &store.snapshot()).await;
        let Rendered::Done { text, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(text, "done");
        assert!(slot.last_cost.unwrap() > INLINE_SLICE);
    }
}
