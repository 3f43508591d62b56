//! `[catalog]`: which backend, where it is, how long a watch holds, how to retry, TLS.
//!
//! The keys accepted depend on the backend (`DIR_KEYS`, `CONSUL_KEYS`, `ETCD_KEYS`), so a
//! `path` under `backend = "consul"` is reported as unknown instead of silently ignored.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker};
use super::{
    Backend, CatalogConfig, ConsulSettings, DirSettings, EtcdSettings, Retry, Secret, TlsSettings,
};
use crate::backoff::Backoff;

impl Walker<'_> {
    pub(super) fn catalog(&mut self, root: &Tbl) -> CatalogConfig {
        let default = default_catalog(&self.dir);
        let Some(t) = self.table(root, "catalog") else {
            return default;
        };
        let backend_name = self.string(&t, "backend");
        let block_wait = self
            .duration(&t, "block_wait")
            .unwrap_or(default.block_wait);
        if block_wait > Duration::from_secs(600) || block_wait < Duration::from_secs(1) {
            let span = t.key_span("block_wait").unwrap_or(t.span.clone());
            self.error(
                span,
                "`block_wait` must be between 1s and 10m",
                "Consul caps blocking queries at 10 minutes; 60s is a good value",
            );
        }
        let retry = match self.table(&t, "retry") {
            Some(r) => {
                // A default never conflicts with what the user wrote: without a `base`, the
                // default (250ms) is lowered to a smaller `max`; without a `max`, the default
                // cap (30s) is raised to a larger `base`.
                let written_base = self.duration(&r, "base");
                let written_max = self.duration(&r, "max");
                let base = written_base.unwrap_or(match written_max {
                    Some(m) => default.retry.base.min(m),
                    None => default.retry.base,
                });
                let max = written_max.unwrap_or(default.retry.max.max(base));
                if let Err(e) = Backoff::new(base, max) {
                    self.error(
                        r.span.clone(),
                        format!("`retry`: {e}"),
                        "e.g. retry = { base = \"250ms\", max = \"30s\" }",
                    );
                }
                self.finish(&r, &["base", "max"]);
                Retry { base, max }
            }
            None => default.retry.clone(),
        };
        let deregister_after = self
            .duration(&t, "deregister_after")
            .unwrap_or(default.deregister_after);
        let max_file = self
            .size(&t, "max_file", 1 << 10..=1 << 30)
            .unwrap_or(default.max_file);
        // Only Consul and etcd answer with bodies: read in their arms below, so that under
        // the dir backend the key is reported as unknown.
        let mut max_response = default.max_response;
        let tls = match self.table(&t, "tls") {
            Some(tt) => {
                let tls = TlsSettings {
                    ca: self.path(&tt, "ca"),
                    cert: self.path(&tt, "cert"),
                    key: self.path(&tt, "key"),
                    server_name: self.string(&tt, "server_name").map(Spanned::into_inner),
                    verify: self.boolean(&tt, "verify"),
                };
                if tls.cert.is_some() != tls.key.is_some() {
                    self.error(tt.span.clone(), "[catalog.tls] needs both `cert` and `key` for a client certificate, or neither", "");
                }
                self.finish(&tt, &["ca", "cert", "key", "server_name", "verify"]);
                tls
            }
            None => TlsSettings::default(),
        };
        let name = backend_name
            .as_ref()
            .map(|s| s.get_ref().as_str())
            .unwrap_or("dir");
        let (backend, keys): (Backend, &[&str]) = match name {
            "dir" => {
                let path = self
                    .path(&t, "path")
                    .unwrap_or_else(|| self.dir.join("catalog"));
                (Backend::Dir(DirSettings { path }), DIR_KEYS)
            }
            "consul" => {
                max_response = self.max_response(&t).unwrap_or(max_response);
                if let (Some(_), Some(span)) = (t.get("token"), t.key_span("token_file")) {
                    self.warn(
                        span,
                        "both `token` and `token_file` are set: `token` is used",
                        "keep one of them",
                    );
                }
                if let Some(file) = self.path(&t, "token_file")
                    && !file.exists()
                    && let Some(span) = t.key_span("token_file")
                {
                    // It may come later (a secret mounted or written by a sidecar).
                    self.warn(
                        span,
                        format!("token_file {} does not exist (yet?)", file.display()),
                        "rewire reads it when it starts, and cannot start without it",
                    );
                }
                let settings = ConsulSettings {
                    address: self.string(&t, "address").map(Spanned::into_inner),
                    token: self
                        .string(&t, "token")
                        .map(|s| Secret::new(s.into_inner()))
                        .filter(|s| !s.expose().is_empty()),
                    token_file: self.path(&t, "token_file"),
                    datacenter: self.string(&t, "datacenter").map(Spanned::into_inner),
                    stale: self.boolean(&t, "stale").unwrap_or(false),
                    max_connections: self.max_connections(&t),
                    tls,
                };
                (Backend::Consul(settings), CONSUL_KEYS)
            }
            "etcd" => {
                max_response = self.max_response(&t).unwrap_or(max_response);
                let endpoints = self.strings(&t, "endpoints").unwrap_or_default();
                let prefix = self
                    .string(&t, "prefix")
                    .map(Spanned::into_inner)
                    .unwrap_or_else(|| "/rewire".into());
                let settings = EtcdSettings {
                    endpoints,
                    prefix: prefix.trim_end_matches('/').to_string(),
                    username: self.string(&t, "username").map(Spanned::into_inner),
                    password: self
                        .string(&t, "password")
                        .map(|s| Secret::new(s.into_inner())),
                    tls,
                };
                if settings.username.is_some() != settings.password.is_some() {
                    self.error(
                        t.span.clone(),
                        "[catalog] needs both `username` and `password`, or neither",
                        "",
                    );
                }
                (Backend::Etcd(settings), ETCD_KEYS)
            }
            other => {
                let span = backend_name
                    .as_ref()
                    .map(|s| s.span())
                    .unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!("unknown catalog backend {other:?}"),
                    "use backend = \"dir\", \"consul\" or \"etcd\"",
                );
                (default.backend.clone(), ALL_CATALOG_KEYS)
            }
        };
        if matches!(backend, Backend::Dir(_)) && t.map.get("tls").is_some() {
            let span = t.key_span("tls").unwrap_or(t.span.clone());
            self.error(
                span,
                "[catalog.tls] does not apply to the dir backend",
                "remove it, or set backend = \"consul\" or \"etcd\"",
            );
        }
        self.finish(&t, keys);
        CatalogConfig {
            backend,
            block_wait,
            retry,
            deregister_after,
            max_file,
            max_response,
        }
    }
}

impl Walker<'_> {
    fn max_response(&mut self, t: &Tbl) -> Option<u64> {
        self.size(t, "max_response", 64 << 10..=4 << 30)
    }

    /// `max_connections` (Consul): at least 1; above Consul's default limit only with a warning.
    fn max_connections(&mut self, t: &Tbl) -> Option<usize> {
        let n = self.integer(t, "max_connections")?;
        let span = t.key_span("max_connections").unwrap_or(t.span.clone());
        if !(1..=10_000).contains(n.get_ref()) {
            self.error(
                span,
                "`max_connections` must be between 1 and 10000",
                "the default, 90, keeps two rewire processes (one restarting) under Consul's 200 \
                 connections per client IP",
            );
            return None;
        }
        if *n.get_ref() > 100 {
            self.warn(
                span,
                format!(
                    "max_connections = {}: Consul refuses a client IP past 200 connections by \
                     default, and a restarted rewire's long polls stay counted until their wait ends",
                    n.get_ref()
                ),
                "raise the agent's limits.http_max_conns_per_client to more than twice this \
                 value, plus room for other clients on this address",
            );
        }
        Some(*n.get_ref() as usize)
    }
}

const DIR_KEYS: &[&str] = &[
    "backend",
    "path",
    "block_wait",
    "retry",
    "deregister_after",
    "max_file",
];
const CONSUL_KEYS: &[&str] = &[
    "backend",
    "address",
    "token",
    "token_file",
    "datacenter",
    "stale",
    "max_connections",
    "block_wait",
    "retry",
    "deregister_after",
    "max_file",
    "max_response",
    "tls",
];
const ETCD_KEYS: &[&str] = &[
    "backend",
    "endpoints",
    "prefix",
    "username",
    "password",
    "block_wait",
    "retry",
    "deregister_after",
    "max_file",
    "max_response",
    "tls",
];
const ALL_CATALOG_KEYS: &[&str] = &[
    "backend",
    "path",
    "address",
    "token",
    "token_file",
    "datacenter",
    "stale",
    "max_connections",
    "endpoints",
    "prefix",
    "username",
    "password",
    "block_wait",
    "retry",
    "deregister_after",
    "max_file",
    "max_response",
    "tls",
];

fn default_catalog(dir: &Path) -> CatalogConfig {
    CatalogConfig {
        backend: Backend::Dir(DirSettings {
            path: dir.join("catalog"),
        }),
        block_wait: Duration::from_secs(60),
        retry: Retry {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        },
        deregister_after: Duration::from_secs(600),
        max_file: super::DEFAULT_MAX_FILE,
        max_response: super::DEFAULT_MAX_RESPONSE,
    }
}
