//! `[[service]]`: what this container registers in the catalog, and its health check.
//!
//! Names and addresses pass the same checks as catalog data (see `model`), since they end up
//! in the same catalog; a TTL must outlast the check interval.

use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker};
use super::{AddressSpec, ServiceConfig};
use crate::model::{Status, check_address, check_name};

impl Walker<'_> {
    pub(super) fn services(
        &mut self,
        root: &Tbl,
        default_deregister: Duration,
    ) -> Vec<ServiceConfig> {
        let mut out: Vec<ServiceConfig> = Vec::new();
        for t in self.tables(root, "service") {
            let name = self.required_string(&t, "name", "name = \"web\"");
            if let Some(n) = &name
                && let Err(e) = check_name(n.get_ref())
            {
                self.error(n.span(), format!("service name {e}"), "");
            }
            let port = match self.integer(&t, "port") {
                Some(p) => match u16::try_from(*p.get_ref()) {
                    Ok(v) if v > 0 => Some(v),
                    _ => {
                        self.error(
                            p.span(),
                            format!("port {} is outside 1-65535", p.get_ref()),
                            "",
                        );
                        None
                    }
                },
                None => {
                    if t.map.get("port").is_none() {
                        self.error(
                            t.span.clone(),
                            format!("{} needs `port`", t.section()),
                            "port = 8080",
                        );
                    }
                    None
                }
            };
            let id = self.string(&t, "id");
            if let Some(i) = &id
                && let Err(e) = check_name(i.get_ref())
            {
                self.error(i.span(), format!("service id {e}"), "");
            }
            let address = self.string(&t, "address");
            let interface = self.interfaces(&t, "interface");
            let address = match (address, interface) {
                (Some(a), None) => {
                    if let Err(e) = check_address(a.get_ref()) {
                        self.error(a.span(), e.to_string(), "give an IP address or a hostname; for an interface name write interface = \"eth0\"");
                    }
                    AddressSpec::Literal(a.into_inner())
                }
                (None, Some(i)) => AddressSpec::Interface(i),
                (None, None) => AddressSpec::Auto,
                (Some(a), Some(_)) => {
                    self.error(a.span(), "`address` and `interface` both given", "keep one");
                    AddressSpec::Auto
                }
            };
            let tags = self.strings(&t, "tags").unwrap_or_default();
            let meta = self.string_map(&t, "meta").unwrap_or_default();
            for (key, n, max) in [
                ("tags", tags.len(), crate::model::MAX_TAGS),
                ("meta", meta.len(), crate::model::MAX_META),
            ] {
                if n > max {
                    let span = t.key_span(key).unwrap_or(t.span.clone());
                    self.error(
                        span,
                        format!("`{key}` holds {n} entries; an instance may carry at most {max}"),
                        "other rewires refuse a record with more (and Consul refuses more than 64 meta entries)",
                    );
                }
            }
            let interval = self
                .positive_duration(&t, "interval")
                .unwrap_or(Duration::from_secs(10));
            let health = self.command(&t, "health", interval);
            if health.is_some() {
                self.warn_frantic(&t, "interval", Some(interval));
            }
            let job = self.service_job(&t);
            if job.is_some() && health.is_some() {
                let span = t.key_span("health").unwrap_or(t.span.clone());
                self.error(
                    span,
                    "a [[service]] with `job` reports that job's health: it cannot have its own `health`",
                    "remove `health` here (give the [[job]] its `health`), or remove `job`",
                );
            }
            let ttl = self.duration(&t, "ttl").unwrap_or(interval * 5 / 2);
            if ttl <= interval {
                let span = t.key_span("ttl").unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!(
                        "`ttl` ({}) must be longer than `interval` ({})",
                        humantime::format_duration(ttl),
                        humantime::format_duration(interval)
                    ),
                    "a pass must arrive before the TTL runs out: use ttl of about 2-3 x interval",
                );
            } else if let Some(h) = &health
                && h.timeout > ttl
                && let Some(span) = t.key_span("health")
            {
                self.warn(
                    span,
                    format!(
                        "the health command's timeout ({}) is longer than `ttl` ({}): the instance turns critical while a slow check still runs",
                        humantime::format_duration(h.timeout),
                        humantime::format_duration(ttl)
                    ),
                    "give health a timeout under the ttl, e.g. health = { exec = [...], timeout = \"5s\" }",
                );
            }
            let initial_status = match self.string(&t, "initial_status") {
                Some(s) => match s.get_ref().parse::<Status>() {
                    Ok(st) => Some(st),
                    Err(e) => {
                        self.error(s.span(), e.to_string(), "");
                        None
                    }
                },
                None => None,
            };
            let deregister_after = self
                .duration(&t, "deregister_after")
                .unwrap_or(default_deregister);
            self.finish(&t, SERVICE_KEYS);
            let (Some(name), Some(port)) = (name, port) else {
                continue;
            };
            out.push(ServiceConfig {
                name: name.into_inner(),
                id: id.map(Spanned::into_inner),
                port,
                address,
                tags,
                meta,
                health,
                interval,
                ttl,
                initial_status,
                deregister_after,
                job,
            });
        }
        out
    }
}

const SERVICE_KEYS: &[&str] = &[
    "name",
    "id",
    "port",
    "address",
    "interface",
    "tags",
    "meta",
    "health",
    "interval",
    "ttl",
    "initial_status",
    "deregister_after",
    "job",
];
