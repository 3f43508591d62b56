//! Telemetry: Prometheus metrics and HTTP probes (`[telemetry]`), and the user's metrics.
//!
//! Operators decide whether to trust a config daemon by watching it. [`metrics::Metrics`]
//! holds what happened (renders, checks, reloads, task runs; a typed method each), created
//! once by the daemon and passed down as an `Arc`; [`state`] turns what rewire already keeps
//! (the status board, the store's catalog contact) into metrics when Prometheus asks, so an
//! idle rewire does no work for telemetry. [`http`] serves `/metrics`, `/health`, `/ready`
//! and (only with `status = true`) `/status` on its own task; a busy render never delays it.
//!
//! The probes' rules are here, pure, so they are tested without a socket:
//! - `/health` (liveness) fails only when main has exited for good: never because the
//!   catalog is away, so a liveness probe does not restart every container during an outage.
//! - `/ready` (readiness) needs every template written at least once and the catalog
//!   reachable, or unreachable for less than `catalog_grace`.

pub mod http;
pub mod metrics;
pub mod state;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use tokio::sync::watch;

use self::metrics::Metrics;
use crate::config::{Config, DEFAULT_CATALOG_GRACE};
use crate::status::{Board, Report};
use crate::store::{Contact, Health, Store};

/// What the probes need from the config; replaced on SIGHUP.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Every template's name: all must have been written for `/ready`.
    pub templates: Vec<String>,
    pub catalog_grace: Duration,
    /// Serve `/status`.
    pub status: bool,
    /// `dir`, `consul` or `etcd` (the `backend` label).
    pub backend: &'static str,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            templates: config.templates.iter().map(|t| t.name.clone()).collect(),
            catalog_grace: config
                .telemetry
                .as_ref()
                .map_or(DEFAULT_CATALOG_GRACE, |t| t.catalog_grace),
            status: config.telemetry.as_ref().is_some_and(|t| t.status),
            backend: config.catalog.backend.name(),
        }
    }
}

/// Everything the listener reads. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    pub metrics: Arc<Metrics>,
    pub board: Arc<Board>,
    pub store: Arc<Store>,
    pub settings: watch::Receiver<Settings>,
    /// When the daemon started: the catalog's grace runs from here until it first answers.
    pub started: SystemTime,
}

impl Sources {
    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn metrics_text(&self) -> String {
        let report = self.board.report();
        let contact = self.store.contact();
        let health = self.store.snapshot().health.clone();
        let backend = self.settings.borrow().backend;
        let mut families = self.metrics.gather();
        families.extend(state::families(&state::View {
            report: &report,
            contact: &contact,
            health: &health,
            backend,
        }));
        // A labelled family with no sample yet (no job has exited, none has a health check)
        // makes the encoder stop with an error at that family, cutting off every one after it.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn health(&self) -> Probe {
        health(&self.board.report())
    }

    pub fn ready(&self) -> Probe {
        let settings = self.settings.borrow().clone();
        ready(
            &self.board.report(),
            &self.store.contact(),
            &self.store.snapshot().health,
            &settings,
            self.started,
            SystemTime::now(),
        )
    }
}

/// A probe's answer: 200 when `ok`, else 503; the body says what is wrong.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Probe {
    pub ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Liveness: rewire answers, and main (when there is one) has not ended for good.
pub fn health(report: &Report) -> Probe {
    let mut problems = Vec::new();
    if let Some(m) = &report.main
        && (m.state == "exited" || m.state.starts_with("pre_start "))
    {
        let how = m.last_exit.clone().unwrap_or_else(|| m.state.clone());
        problems.push(format!("main: {how}"));
    }
    Probe {
        ok: problems.is_empty(),
        problems,
    }
}

/// Readiness: not stopping, every template written at least once, and the catalog reachable
/// or away for less than `catalog_grace`.
pub fn ready(
    report: &Report,
    contact: &Contact,
    health: &Health,
    settings: &Settings,
    started: SystemTime,
    now: SystemTime,
) -> Probe {
    let mut problems = Vec::new();
    if report.stopping {
        problems.push("stopping: the services are deregistered and draining".to_string());
    }
    for name in &settings.templates {
        match report.templates.get(name) {
            Some(t) if t.ready => {}
            Some(t) if !t.detail.is_empty() => {
                problems.push(format!("template {name}: not written yet: {}", t.detail))
            }
            _ => problems.push(format!("template {name}: not written yet")),
        }
    }
    // Registration alone never reads the catalog: there is nothing to be ready for.
    let reads_catalog = !report.catalog_health.starts_with("not read");
    if *health != Health::Healthy && reads_catalog {
        let since = contact.health_since.unwrap_or(started);
        let away = now.duration_since(since).unwrap_or_default();
        if away >= settings.catalog_grace {
            let what = match health {
                Health::Unreachable(e) => format!("unreachable: {e}"),
                _ => "not reached yet".to_string(),
            };
            problems.push(format!(
                "catalog {what} (for {}s, catalog_grace {})",
                away.as_secs(),
                humantime::format_duration(settings.catalog_grace)
            ));
        }
    }
    Probe {
        ok: problems.is_empty(),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{MainStatus, TemplateState, TemplateStatus};

    fn settings(grace: u64) -> Settings {
        Settings {
            templates: vec!["nginx".into()],
            catalog_grace: Duration::from_secs(grace),
            status: false,
            backend: "consul",
        }
    }

    fn written(report: &mut Report) {
        report.templates.insert(
            "nginx".into(),
            TemplateStatus {
                destination: "/etc/nginx.conf".into(),
                state: TemplateState::Ok,
                detail: String::new(),
                last_render: None,
                last_written: None,
                renders: 1,
                writes: 1,
                ready: true,
                last_path: String::new(),
                leaving: Vec::new(),
            },
        );
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn ready_waits_for_every_template() {
        let mut report = Report::default();
        let contact = Contact::default();
        let p = ready(
            &report,
            &contact,
            &Health::Healthy,
            &settings(30),
            at(0),
            at(1),
        );
        assert!(!p.ok);
        assert_eq!(p.problems, ["template nginx: not written yet"]);
        written(&mut report);
        let p = ready(
            &report,
            &contact,
            &Health::Healthy,
            &settings(30),
            at(0),
            at(1),
        );
        assert!(p.ok, "{p:?}");
    }

    #[test]
    fn catalog_outage_shorter_than_grace_keeps_ready() {
        let mut report = Report::default();
        written(&mut report);
        let contact = Contact {
            health_since: Some(at(100)),
            ..Contact::default()
        };
        let down = Health::Unreachable("connection refused".into());
        assert!(ready(&report, &contact, &down, &settings(30), at(0), at(129)).ok);
        let p = ready(&report, &contact, &down, &settings(30), at(0), at(130));
        assert!(!p.ok);
        assert_eq!(
            p.problems,
            ["catalog unreachable: connection refused (for 30s, catalog_grace 30s)"]
        );
    }

    #[test]
    fn health_ignores_the_catalog_but_not_a_dead_main() {
        let mut report = Report {
            catalog_health: "unreachable: down".into(),
            ..Report::default()
        };
        assert!(health(&report).ok);
        report.main = Some(MainStatus {
            state: "running".into(),
            ..MainStatus::default()
        });
        assert!(health(&report).ok);
        report.main = Some(MainStatus {
            state: "exited".into(),
            last_exit: Some("exited with status 3".into()),
            ..MainStatus::default()
        });
        assert_eq!(health(&report).problems, ["main: exited with status 3"]);
    }
}
