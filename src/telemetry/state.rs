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
        "1 while the catalog answers, 0 while it is unreachable or not reached yet; absent while nothing reads it (registration only: see rewire_service_registered).",
        &["backend"],
    );
    // Registration alone never reads the catalog, so there is no answer to be connected by:
    // a 0 there made the documented disconnected alert fire for the life of every
    // registration-only rewire (found by an operator hunt).
    if !view.report.catalog_health.starts_with("not read") {
        connected
            .with_label_values(&[b])
            .set(flag(*view.health == Health::Healthy));
    }
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

    let rejected = gauges(
        "rewire_config_reload_rejected",
        "1 while the last SIGHUP's config was rejected (the running config stays), 0 once one is applied.",
        &[],
    );
    rejected
        .with_label_values(&[] as &[&str])
        .set(flag(view.report.rejected_reload.is_some()));
    out.extend(rejected.collect());

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

    // Jobs besides main (main has its own families above).
    let jobs: Vec<_> = r
        .jobs
        .iter()
        .filter(|(name, _)| name.as_str() != crate::config::MAIN_JOB)
        .collect();
    if !jobs.is_empty() {
        let up = gauges("rewire_job_up", "1 while the job's process runs.", &["job"]);
        let healthy = gauges(
            "rewire_job_healthy",
            "1 while the job's health command passes, 0 otherwise (jobs with a health command).",
            &["job"],
        );
        let restarts = counters(
            "rewire_job_restarts_total",
            "Times the job was restarted.",
            &["job"],
        );
        let exit = gauges(
            "rewire_job_last_exit_code",
            "The job's last exit status (128+N: killed by signal N).",
            &["job"],
        );
        let events = counters(
            "rewire_job_events_total",
            "Events of the job (started, healthy, unhealthy, exited, succeeded, failed, stopping, stopped).",
            &["job", "event"],
        );
        for (name, j) in jobs {
            up.with_label_values(&[name])
                .set(flag(j.state == "running"));
            if j.checked {
                healthy
                    .with_label_values(&[name])
                    .set(flag(j.healthy == Some(true)));
            }
            restarts
                .with_label_values(&[name])
                .inc_by(u64::from(j.restarts));
            if let Some(code) = j.last_exit_code {
                exit.with_label_values(&[name]).set(f64::from(code));
            }
            for (event, n) in &j.events {
                events.with_label_values(&[name, event]).inc_by(*n);
            }
        }
        out.extend(up.collect());
        out.extend(healthy.collect());
        out.extend(restarts.collect());
        out.extend(exit.collect());
        out.extend(events.collect());
    }

    if !r.elections.is_empty() {
        let leader = gauges(
            "rewire_election_leader",
            "1 while this process holds the election.",
            &["election"],
        );
        let has_holder = gauges(
            "rewire_election_has_holder",
            "1 while someone (this process or another) holds the election.",
            &["election"],
        );
        let terms = counters(
            "rewire_election_terms_total",
            "Terms this process has held since it started.",
            &["election"],
        );
        let token = gauges(
            "rewire_election_fencing_token",
            "The current holder's fencing token (absent while nobody holds the election).",
            &["election"],
        );
        for (name, e) in &r.elections {
            leader
                .with_label_values(&[name])
                .set(flag(e.role == "leader"));
            has_holder
                .with_label_values(&[name])
                .set(flag(!e.holder.is_empty()));
            terms.with_label_values(&[name]).inc_by(e.terms);
            if let Some(t) = e.token {
                // Tokens count terms in the catalog: far below f64's exact range.
                token.with_label_values(&[name]).set(t as f64);
            }
        }
        out.extend(leader.collect());
        out.extend(has_holder.collect());
        out.extend(terms.collect());
        out.extend(token.collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ElectionStatus, JobStatus};

    #[test]
    fn jobs_and_elections_are_read_from_the_report() {
        let mut report = Report::default();
        report.jobs.insert(
            "consul-agent".into(),
            JobStatus {
                state: "running".into(),
                pid: Some(7),
                restarts: 2,
                last_exit: Some("exited with status 3".into()),
                last_exit_code: Some(3),
                healthy: Some(true),
                health_note: String::new(),
                checked: true,
                waits_for: None,
                events: [("started".to_string(), 3), ("healthy".to_string(), 1)].into(),
            },
        );
        report.elections.insert(
            "primary".into(),
            ElectionStatus {
                role: "leader".into(),
                holder: "redis-a (10.0.0.5:6379)".into(),
                token: Some(7),
                since: None,
                detail: String::new(),
                terms: 1,
            },
        );
        let families = families(&View {
            report: &report,
            contact: &Contact::default(),
            health: &Health::Healthy,
            backend: "dir",
        });
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap();
        for line in [
            "rewire_job_up{job=\"consul-agent\"} 1",
            "rewire_job_healthy{job=\"consul-agent\"} 1",
            "rewire_job_restarts_total{job=\"consul-agent\"} 2",
            "rewire_job_last_exit_code{job=\"consul-agent\"} 3",
            "rewire_job_events_total{event=\"started\",job=\"consul-agent\"} 3",
            "rewire_election_leader{election=\"primary\"} 1",
            "rewire_election_has_holder{election=\"primary\"} 1",
            "rewire_election_terms_total{election=\"primary\"} 1",
            "rewire_election_fencing_token{election=\"primary\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn connected_is_absent_while_nothing_reads_the_catalog() {
        let text = |catalog_health: &str, health: Health| {
            let report = Report {
                catalog_health: catalog_health.into(),
                ..Report::default()
            };
            let mut families = families(&View {
                report: &report,
                contact: &Contact::default(),
                health: &health,
                backend: "consul",
            });
            // As /metrics does: a family without samples is left out.
            families.retain(|f| !f.get_metric().is_empty());
            prometheus::TextEncoder::new()
                .encode_to_string(&families)
                .unwrap()
        };
        assert!(
            !text("not read (no template or watch uses it)", Health::Unknown)
                .contains("rewire_catalog_connected")
        );
        assert!(
            text("unreachable", Health::Unknown)
                .contains("rewire_catalog_connected{backend=\"consul\"} 0")
        );
    }

    /// Found by an operator hunt: a rejected SIGHUP showed only in `rewire status`, so a bad
    /// config pushed to a fleet could not be alerted on.
    #[test]
    fn a_rejected_reload_is_a_gauge() {
        let text = |rejected: Option<&str>| {
            let report = Report {
                rejected_reload: rejected.map(str::to_string),
                ..Report::default()
            };
            let families = families(&View {
                report: &report,
                contact: &Contact::default(),
                health: &Health::Healthy,
                backend: "dir",
            });
            prometheus::TextEncoder::new()
                .encode_to_string(&families)
                .unwrap()
        };
        assert!(text(None).contains("\nrewire_config_reload_rejected 0\n"));
        assert!(
            text(Some("at ..., keeping the running config: x"))
                .contains("\nrewire_config_reload_rejected 1\n")
        );
    }
}
