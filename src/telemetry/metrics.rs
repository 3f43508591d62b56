//! The metrics registry, and the small typed methods the rest of rewire records through.
//!
//! One [`Metrics`] per daemon, created at start and passed down as an `Arc` (no process-wide
//! registry). Only events are recorded here (a render, a check, a reload, a task run): state
//! that already lives elsewhere (the status board, the store's catalog contact) is read when
//! Prometheus scrapes ([`super::state`]), so nothing ticks while rewire is idle.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::warn;

use crate::config::{MetricConfig, MetricKind};
use crate::lock::lock;

/// Render time: from tens of microseconds (a small template) to seconds (10 000 instances).
const RENDER_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Catalog change to file in place: the debounce (`wait.min`, 0.5 s by default) and the
/// check are in it; `wait.max` bounds it under constant change.
const REACTION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Commands (tasks, watch handlers): milliseconds to minutes.
const COMMAND_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    Ok,
    Rejected,
    /// The check could not be run at all.
    Error,
}

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Ok,
    /// The program was not running: nothing to reload, not a failure.
    NotRunning,
    Failed,
}

/// How a render ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderResult {
    Ok,
    /// Waiting for data.
    Pending,
    Error,
}

/// Why a user metric was not set; the text goes back to `rewire metric`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricError {
    #[error("metric {0:?} is rewire's own; declare your own [[metric]] with another name")]
    Reserved(String),
    #[error("metric {name:?} is not declared; add [[metric]] name = \"{name}\" to the config")]
    Undeclared { name: String },
    #[error("counter {name:?} only adds: {value} is negative")]
    Negative { name: String, value: f64 },
    #[error("{value} is not a number a metric can hold")]
    NotFinite { value: f64 },
}

enum UserMetric {
    Counter(Counter),
    Gauge(Gauge),
}

/// The daemon's metrics. Cheap to record into; `Arc` it and pass it down.
pub struct Metrics {
    registry: Registry,
    renders: IntCounterVec,
    render_seconds: HistogramVec,
    writes: IntCounterVec,
    checks: IntCounterVec,
    reloads: IntCounterVec,
    rollbacks: IntCounterVec,
    runtime_applies: IntCounterVec,
    reaction_seconds: HistogramVec,
    ttl_updates: IntCounterVec,
    task_runs: IntCounterVec,
    task_seconds: HistogramVec,
    watch_runs: IntCounterVec,
    watch_seconds: HistogramVec,
    user: Mutex<BTreeMap<String, (MetricConfig, UserMetric)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("a valid metric name");
    registry
        .register(Box::new(h.clone()))
        .expect("each metric is registered once");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = r.register(Box::new(process)) {
                warn!(error = %e, "process metrics unavailable");
            }
        }
        Metrics {
            renders: counter(
                &r,
                "rewire_template_renders_total",
                "Template renders by result (ok, pending: waiting for data, error).",
                &["template", "result"],
            ),
            render_seconds: histogram(
                &r,
                "rewire_template_render_duration_seconds",
                "Time to render a template from the current catalog data.",
                &["template"],
                RENDER_BUCKETS,
            ),
            writes: counter(
                &r,
                "rewire_template_writes_total",
                "New content put in place at a template's destination.",
                &["template"],
            ),
            checks: counter(
                &r,
                "rewire_template_checks_total",
                "Check command results (ok, rejected, error: could not run).",
                &["template", "result"],
            ),
            reloads: counter(
                &r,
                "rewire_template_reloads_total",
                "Reloads after a write (ok, not_running: nothing to reload, failed).",
                &["template", "result"],
            ),
            rollbacks: counter(
                &r,
                "rewire_template_rollbacks_total",
                "Destinations restored to their previous content after a failed reload.",
                &["template"],
            ),
            runtime_applies: counter(
                &r,
                "rewire_template_runtime_applies_total",
                "Changes applied through a program's runtime API instead of a reload (ok, failed).",
                &["template", "result"],
            ),
            reaction_seconds: histogram(
                &r,
                "rewire_template_reaction_seconds",
                "From a catalog change arriving to the new file in place (reloaded).",
                &["template"],
                REACTION_BUCKETS,
            ),
            ttl_updates: counter(
                &r,
                "rewire_service_ttl_updates_total",
                "TTL health updates sent to the catalog (ok, error).",
                &["service", "result"],
            ),
            task_runs: counter(
                &r,
                "rewire_task_runs_total",
                "[[task]] runs by result (ok, error).",
                &["task", "result"],
            ),
            task_seconds: histogram(
                &r,
                "rewire_task_duration_seconds",
                "How long a [[task]] run took.",
                &["task"],
                COMMAND_BUCKETS,
            ),
            watch_runs: counter(
                &r,
                "rewire_watch_runs_total",
                "[[watch]] on_change handler runs by result (ok, error).",
                &["service", "result"],
            ),
            watch_seconds: histogram(
                &r,
                "rewire_watch_duration_seconds",
                "How long a [[watch]] on_change handler took.",
                &["service"],
                COMMAND_BUCKETS,
            ),
            registry: r,
            user: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every family recorded here (process metrics and user metrics included).
    pub fn gather(&self) -> Vec<MetricFamily> {
        let mut families = self.registry.gather();
        for (_, metric) in lock(&self.user).values() {
            families.extend(match metric {
                UserMetric::Counter(c) => c.collect(),
                UserMetric::Gauge(g) => g.collect(),
            });
        }
        families
    }

    /// Creates each template's failure series at 0 (at start and after SIGHUP): a counter
    /// series born at its first failure with the value 1 shows no `increase()`, so an alert on
    /// it would miss a single failed reload.
    pub fn declare_templates(&self, templates: &[crate::config::TemplateConfig]) {
        for t in templates {
            let name = t.name.as_str();
            self.renders.with_label_values(&[name, "error"]);
            self.rollbacks.with_label_values(&[name]);
            if t.check.is_some() {
                self.checks.with_label_values(&[name, "rejected"]);
                self.checks.with_label_values(&[name, "error"]);
            }
            if t.reload.is_some() {
                self.reloads.with_label_values(&[name, "failed"]);
            }
        }
    }

    pub fn render(&self, template: &str, result: RenderResult, took: Duration) {
        let label = match result {
            RenderResult::Ok => "ok",
            RenderResult::Pending => "pending",
            RenderResult::Error => "error",
        };
        self.renders.with_label_values(&[template, label]).inc();
        if result != RenderResult::Pending {
            self.render_seconds
                .with_label_values(&[template])
                .observe(took.as_secs_f64());
        }
    }

    pub fn check(&self, template: &str, result: CheckResult) {
        let label = match result {
            CheckResult::Ok => "ok",
            CheckResult::Rejected => "rejected",
            CheckResult::Error => "error",
        };
        self.checks.with_label_values(&[template, label]).inc();
    }

    /// A new file is in place (and reloaded); `reaction` is the time since the newest catalog
    /// change it shows arrived.
    pub fn written(&self, template: &str, reaction: Option<Duration>) {
        self.writes.with_label_values(&[template]).inc();
        if let Some(r) = reaction {
            self.reaction_seconds
                .with_label_values(&[template])
                .observe(r.as_secs_f64());
        }
    }

    pub fn reload(&self, template: &str, result: ReloadResult) {
        let label = match result {
            ReloadResult::Ok => "ok",
            ReloadResult::NotRunning => "not_running",
            ReloadResult::Failed => "failed",
        };
        self.reloads.with_label_values(&[template, label]).inc();
    }

    pub fn rollback(&self, template: &str) {
        self.rollbacks.with_label_values(&[template]).inc();
    }

    /// A change applied through a runtime API (HAProxy's) rather than a reload.
    pub fn runtime_apply(&self, template: &str, ok: bool) {
        self.runtime_applies
            .with_label_values(&[template, if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn ttl_update(&self, service: &str, ok: bool) {
        self.ttl_updates
            .with_label_values(&[service, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn task_run(&self, task: &str, ok: bool, took: Duration) {
        self.task_runs
            .with_label_values(&[task, if ok { "ok" } else { "error" }])
            .inc();
        self.task_seconds
            .with_label_values(&[task])
            .observe(took.as_secs_f64());
    }

    pub fn watch_run(&self, service: &str, ok: bool, took: Duration) {
        self.watch_runs
            .with_label_values(&[service, if ok { "ok" } else { "error" }])
            .inc();
        self.watch_seconds
            .with_label_values(&[service])
            .observe(took.as_secs_f64());
    }

    /// Makes the declared user metrics exist (at start and after SIGHUP): new ones start at 0,
    /// ones still declared with the same type keep their value, undeclared ones go.
    pub fn declare(&self, declared: &[MetricConfig]) {
        let mut user = lock(&self.user);
        user.retain(|name, (cfg, _)| {
            declared
                .iter()
                .any(|d| d.name == *name && d.kind == cfg.kind)
        });
        for d in declared {
            if user.contains_key(&d.name) {
                continue;
            }
            let opts = Opts::new(d.name.clone(), d.help.clone());
            let metric = match d.kind {
                MetricKind::Counter => Counter::with_opts(opts).map(UserMetric::Counter),
                MetricKind::Gauge => Gauge::with_opts(opts).map(UserMetric::Gauge),
            };
            match metric {
                Ok(m) => {
                    user.insert(d.name.clone(), (d.clone(), m));
                }
                Err(e) => warn!(metric = %d.name, error = %e, "user metric not created"),
            }
        }
    }

    /// `rewire metric NAME VALUE` or a task's output: a counter adds, a gauge sets.
    pub fn set_user(&self, name: &str, value: f64) -> Result<(), MetricError> {
        if name.starts_with("rewire_") {
            return Err(MetricError::Reserved(name.to_string()));
        }
        if !value.is_finite() {
            return Err(MetricError::NotFinite { value });
        }
        let user = lock(&self.user);
        match user.get(name) {
            None => Err(MetricError::Undeclared {
                name: name.to_string(),
            }),
            Some((_, UserMetric::Gauge(g))) => {
                g.set(value);
                Ok(())
            }
            Some((_, UserMetric::Counter(_))) if value < 0.0 => Err(MetricError::Negative {
                name: name.to_string(),
                value,
            }),
            // A sum that overflows to infinity would stick there (and make rate() NaN).
            Some((_, UserMetric::Counter(c))) if !(c.get() + value).is_finite() => {
                Err(MetricError::NotFinite {
                    value: c.get() + value,
                })
            }
            Some((_, UserMetric::Counter(c))) => {
                c.inc_by(value);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_never_adds_up_to_infinity() {
        let m = Metrics::new();
        m.declare(&[declared("big_total", MetricKind::Counter)]);
        m.set_user("big_total", 1e308).unwrap();
        assert!(matches!(
            m.set_user("big_total", 1e308),
            Err(MetricError::NotFinite { .. })
        ));
    }

    fn declared(name: &str, kind: MetricKind) -> MetricConfig {
        MetricConfig {
            name: name.into(),
            help: "help".into(),
            kind,
        }
    }

    fn value(m: &Metrics, name: &str) -> Option<f64> {
        m.gather().into_iter().find(|f| f.name() == name).map(|f| {
            let s = &f.get_metric()[0];
            if s.get_counter().get_value() != 0.0 {
                s.get_counter().get_value()
            } else {
                s.get_gauge().get_value()
            }
        })
    }

    #[test]
    fn a_counter_adds_and_a_gauge_sets() {
        let m = Metrics::new();
        m.declare(&[
            declared("jobs_total", MetricKind::Counter),
            declared("depth", MetricKind::Gauge),
        ]);
        m.set_user("jobs_total", 2.0).unwrap();
        m.set_user("jobs_total", 3.0).unwrap();
        m.set_user("depth", 7.0).unwrap();
        m.set_user("depth", 4.0).unwrap();
        assert_eq!(value(&m, "jobs_total"), Some(5.0));
        assert_eq!(value(&m, "depth"), Some(4.0));
        assert!(matches!(
            m.set_user("jobs_total", -1.0),
            Err(MetricError::Negative { .. })
        ));
        assert!(matches!(
            m.set_user("depth", f64::NAN),
            Err(MetricError::NotFinite { .. })
        ));
        assert!(matches!(
            m.set_user("rewire_template_writes_total", 1.0),
            Err(MetricError::Reserved(_))
        ));
        assert!(matches!(
            m.set_user("other", 1.0),
            Err(MetricError::Undeclared { .. })
        ));
    }

    #[test]
    fn sighup_keeps_values_of_metrics_still_declared_and_drops_the_rest() {
        let m = Metrics::new();
        m.declare(&[
            declared("kept_total", MetricKind::Counter),
            declared("gone", MetricKind::Gauge),
            declared("retyped", MetricKind::Gauge),
        ]);
        m.set_user("kept_total", 4.0).unwrap();
        m.set_user("retyped", 9.0).unwrap();
        m.declare(&[
            declared("kept_total", MetricKind::Counter),
            declared("retyped", MetricKind::Counter),
        ]);
        assert_eq!(value(&m, "kept_total"), Some(4.0));
        assert_eq!(value(&m, "gone"), None);
        assert_eq!(value(&m, "retyped"), Some(0.0));
        assert!(matches!(
            m.set_user("gone", 1.0),
            Err(MetricError::Undeclared { .. })
        ));
    }
}
