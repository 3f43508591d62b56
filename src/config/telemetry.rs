//! `[telemetry]` and `[[metric]]`: the HTTP listener for Prometheus and probes, and the
//! user's own metrics.
//!
//! The listener is off unless `listen` is given: it opens a TCP port, and `/status` (only with
//! `status = true`) shows addresses and commands, so nothing is exposed by default.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker};
use super::{MetricConfig, MetricKind, TelemetryConfig};

/// How long the catalog may go unanswered before `/ready` says so.
pub const DEFAULT_CATALOG_GRACE: Duration = Duration::from_secs(30);

impl Walker<'_> {
    pub(super) fn telemetry(&mut self, root: &Tbl) -> Option<TelemetryConfig> {
        let t = self.table(root, "telemetry")?;
        let listen = self.required_string(&t, "listen", "listen = \"0.0.0.0:9090\"");
        let catalog_grace = self
            .duration(&t, "catalog_grace")
            .unwrap_or(DEFAULT_CATALOG_GRACE);
        let status = self.boolean(&t, "status").unwrap_or(false);
        self.finish(&t, &["listen", "catalog_grace", "status"]);
        let listen = listen?;
        match listen.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(TelemetryConfig {
                listen: addr,
                catalog_grace,
                status,
            }),
            Err(_) => {
                self.error(
                    listen.span(),
                    format!("`listen` {:?} is not an ADDRESS:PORT", listen.get_ref()),
                    "listen = \"0.0.0.0:9090\" (or \"127.0.0.1:9090\", \"[::]:9090\")",
                );
                None
            }
        }
    }

    pub(super) fn metrics(&mut self, root: &Tbl) -> Vec<MetricConfig> {
        let mut out: Vec<MetricConfig> = Vec::new();
        let mut seen = BTreeSet::new();
        for t in self.tables(root, "metric") {
            let name = self.required_string(&t, "name", "name = \"myapp_jobs_total\"");
            let help = self.string(&t, "help").map(Spanned::into_inner);
            let kind = self.choice(
                &t,
                "type",
                &[
                    ("counter", MetricKind::Counter),
                    ("gauge", MetricKind::Gauge),
                ],
                MetricKind::Gauge,
                "metric type",
                "type = \"counter\" (adds) or \"gauge\" (sets)",
            );
            if t.map.get("type").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `type`", t.section()),
                    "type = \"counter\" (adds) or \"gauge\" (sets)",
                );
            }
            self.finish(&t, &["name", "help", "type"]);
            let Some(name) = name else { continue };
            if let Err(why) = metric_name_ok(name.get_ref()) {
                self.error(name.span(), why, "name = \"myapp_queue_depth\"");
                continue;
            }
            if !seen.insert(name.get_ref().clone()) {
                self.error(
                    name.span(),
                    format!("metric {:?} is declared twice", name.get_ref()),
                    "give each [[metric]] its own name",
                );
                continue;
            }
            let name = name.into_inner();
            out.push(MetricConfig {
                // An empty help is what the exposition format cannot hold: the default then.
                help: help
                    .filter(|h| !h.trim().is_empty())
                    .unwrap_or_else(|| format!("{name} (set by the user)")),
                name,
                kind,
            });
        }
        out
    }
}

/// Whether `name` may be a user metric: Prometheus's name syntax, and not rewire's prefix.
pub fn metric_name_ok(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
    if !valid {
        return Err(format!(
            "metric name {name:?} is not a Prometheus name (letters, digits, `_` and `:`, not starting with a digit)"
        ));
    }
    if name.starts_with("rewire_") {
        return Err(format!(
            "metric name {name:?} starts with `rewire_`, which is reserved for rewire's own metrics"
        ));
    }
    if name.starts_with("process_") {
        return Err(format!(
            "metric name {name:?} starts with `process_`, which the process metrics use"
        ));
    }
    Ok(())
}
