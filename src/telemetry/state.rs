//! Metrics read from state rewire keeps anyway, built when Prometheus scrapes.
//!
//! The status board (templates, registrations, main) and the store's catalog contact already
//! hold the answers; turning them into metric families on each scrape costs microseconds and
//! keeps rewire free of timers and of a second copy of that state. Pure: a view in, families out.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, Opts};

use crate::status::{Report, TemplateState};
use crate::store::{Contact, Health};

/// What one scrape reads.
pub struct View<'a> {
    pub report: &'a Report,
    pub contact: &'a Contact,
    pub health: &'a Health,
    /// `dir`, `consul` or `etcd`.
    pub backend: &'a str,
}

fn gauges(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name")
}

fn gauge(name: &str, help: &str) -> Gauge {
    Gauge::with_opts(Opts::new(name, help)).expect("a valid metric name")
}

fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name")
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The families built from `view`. Families without any sample are left out.
pub fn families(view: &View) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let b = view.backend;

    let connected = gauges(
        "rewire_catalog_connected",
        "1 while the catalog answers, 0 while it is unreachable or not reached yet.",
        &["backend"],
    );
    connected
        .with_label_values(&[b])
        .set(flag(*view.health == Health::Healthy));
    out.extend(connected.collect());

    let requests = counters(
        "rewire_catalog_requests_total",
        "Catalog answers (ok) and failed requests or watches (error).",
        &["backend", "result"],
    );
    requests
        .with_label_values(&[b, "ok"])
        .inc_by(view.contact.answers);
    requests
        .with_label_values(&[b, "error"])
        .inc_by(view.contact.failures);
    out.extend(requests.collect());

    let events = counters(
        "rewire_catalog_watch_events_total",
        "Catalog answers that changed data some template or watch uses.",
        &["backend"],
    );
    events.with_label_values(&[b]).inc_by(view.contact.changes);
    out.extend(events.collect());

    let retries = counters(
        "rewire_catalog_retries_total",
        "Catalog requests or watches retried after a failure (with backoff).",
        &["backend"],
    );
    retries
        .with_label_values(&[b])
        .inc_by(view.contact.failures);
    out.extend(retries.collect());

    if let Some(at) = view.contact.last_answer {
        let last = gauges(
            "rewire_catalog_last_contact_timestamp_seconds",
            "When the catalog last answered (Unix time).",
            &["backend"],
        );
        last.with_label_values(&[b]).set(seconds(at));
        out.extend(last.collect());
    }

    let r = view.report;
    if !r.templates.is_empty() {
        let ready = gauges(
            "rewire_template_ready",
            "1 once the destination has held a complete render since start.",
            &["template"],
        );
        let failing = gauges(
            "rewire_template_failing",
            "1 while the template's last render, check, write or reload failed.",
            &["template"],
        );
        let last_write = gauges(
            "rewire_template_last_write_timestamp_seconds",
            "When new content was last put in place (Unix time).",
            &["template"],
        );
        for (name, t) in &r.templates {
            ready.with_label_values(&[name]).set(flag(t.ready));
            failing
                .with_label_values(&[name])
                .set(flag(t.state == TemplateState::Error));
            if let Some(at) = t.last_written {
                last_write.with_label_values(&[name]).set(seconds(at));
            }
        }
        out.extend(ready.collect());
        out.extend(failing.collect());
        out.extend(
            last_write
                .collect()
                .into_iter()
                .filter(|f| !f.get_metric().is_empty()),
        );
    }

    if !r.services.is_empty() {
        let status = gauges(
            "rewire_service_status",
            "1 for the service's current health status (passing, warning, critical), 0 for the others.",
            &["service", "id", "status"],
        );
        let registered = gauges(
            "rewire_service_registered",
            "1 while the service is registered in the catalog.",
            &["service", "id"],
        );
        let maintenance = gauges(
            "rewire_service_maintenance",
            "1 while maintenance mode keeps the service out of the catalog.",
            &["service", "id"],
        );
        for s in r.services.values() {
            for st in ["passing", "warning", "critical"] {
                status
                    .with_label_values(&[&s.name, &s.id, st])
                    .set(flag(s.status == st));
            }
            registered
                .with_label_values(&[&s.name, &s.id])
                .set(flag(s.registered));
            maintenance
                .with_label_values(&[&s.name, &s.id])
                .set(flag(r.maintenance));
        }
        out.extend(status.collect());
        out.extend(registered.collect());
        out.extend(maintenance.collect());
    }

    if let Some(m) = &r.main {
        let up = gauge("rewire_main_up", "1 while the main process runs.");
        up.set(flag(m.state == "running"));
        out.extend(up.collect());
        let restarts = IntCounter::with_opts(Opts::new(
            "rewire_main_restarts_total",
            "Times the main process was restarted.",
        ))
        .expect("a valid metric name");
        restarts.inc_by(u64::from(m.restarts));
        out.extend(restarts.collect());
        if let Some(code) = m.last_exit_code {
            let exit = gauge(
                "rewire_main_last_exit_code",
                "The main process's last exit status (128+N: killed by signal N).",
            );
            exit.set(f64::from(code));
            out.extend(exit.collect());
        }
    }
    out
}
