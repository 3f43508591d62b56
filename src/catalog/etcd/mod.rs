//! The etcd v3 catalog, spoken through etcd's JSON gateway (`/v3/...`) so that no protoc or
//! gRPC toolchain is needed.
//!
//! Layout under the prefix (default `/rewire`):
//!
//! ```text
//! PREFIX/services/<service>/<id>   an instance record (JSON, as the dir catalog's files),
//!                                  attached to a lease whose TTL is the health TTL
//! PREFIX/kv/<path>                 raw values for key() and keys()
//! ```
//!
//! One prefix watch serves every query ([`watcher`]): the prefix is read once into an
//! in-memory [`mirror`], then each watch event updates the mirror and republishes only the
//! answers it touches. [`transport`] moves between members, carries the auth token and TLS;
//! [`wire`] is the gateway's JSON.
//!
//! Registration: an instance is put under a lease of the health TTL. A passing check sends a
//! keepalive; a failing one rewrites the record as `critical` under the same lease at once (so
//! templates stop routing to it) and sends no keepalive, so etcd deletes it when the TTL
//! lapses. Unlike Consul and the dir catalog, an expired instance is gone, not critical.
//! When a keepalive finds the lease gone (etcd answers 200 without a TTL) `update_ttl` grants a
//! new lease and puts the record again by itself.
//!
//! Records written by hand without a `node` get an empty node: an etcd catalog spans machines.
//!
//! Elections ([`election`]) live under `PREFIX/elections/<name>`: a lease and a
//! create-if-absent transaction.

mod election;
pub(crate) mod mirror;
mod transport;
mod watcher;
pub(crate) mod wire;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::mirror::Mirror;
use self::transport::{EtcdError, Transport};
use crate::backoff::Backoff;
use crate::catalog::http::Tls;
use crate::catalog::record::{Record, truncate_note};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{CatalogConfig, EtcdSettings, Secret};
use crate::lock::lock;
use crate::model::{Data, Query, Registration, Status, check_name};
use crate::store::Store;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
pub const DEFAULT_PREFIX: &str = "/rewire";
/// Health notes kept in a record (the health command's output, for humans).
const MAX_NOTE: usize = 1024;

/// The etcd backend. Cheap to share; `watch` runs one prefix watch whatever the wanted set.
pub struct EtcdCatalog {
    transport: Arc<Transport>,
    /// `PREFIX/`, e.g. `/rewire/`.
    base: String,
    /// Reconnect backoff of the watch (cloned per watch).
    backoff: Backoff,
    progress_timeout: Duration,
    /// This machine, written into registered records.
    node: String,
    /// Lease and last written status per registration id.
    leases: Mutex<HashMap<String, Held>>,
    /// `[catalog] max_file`: the largest value (record or KV) accepted.
    max_value: u64,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    lease: i64,
    status: Status,
}

/// Settings after the config, the environment and the defaults were merged.
#[derive(Debug, PartialEq)]
struct Resolved {
    endpoints: Vec<String>,
    base: String,
    user: Option<(String, Secret)>,
    tls: Tls,
}

impl EtcdCatalog {
    /// Builds the backend; nothing is sent until the first call. Endpoints come from the config,
    /// else `ETCDCTL_ENDPOINTS` (comma-separated), else `http://127.0.0.1:2379`. TLS and
    /// credentials fall back to `ETCDCTL_CACERT`, `ETCDCTL_CERT`, `ETCDCTL_KEY`,
    /// `ETCDCTL_INSECURE_SKIP_TLS_VERIFY`, `ETCDCTL_USER` (`name` or `name:password`) and
    /// `ETCDCTL_PASSWORD`; the config wins.
    pub fn new(
        settings: &EtcdSettings,
        catalog: &CatalogConfig,
    ) -> Result<EtcdCatalog, CatalogError> {
        let r = resolve(settings, &|name| std::env::var(name).ok())
            .map_err(|e| CatalogError::Unsupported(format!("etcd: {e}")))?;
        let backoff = Backoff::new(catalog.retry.base, catalog.retry.max)
            .map_err(|e| CatalogError::Unsupported(format!("etcd: {e}")))?;
        Ok(EtcdCatalog {
            transport: Arc::new(Transport::new(
                &r.endpoints,
                &r.tls,
                r.user,
                catalog.max_response,
            )?),
            base: r.base,
            backoff,
            // etcd sends progress notifications every 10 min by default, so on a quiet prefix
            // this mostly means "reconnect every block_wait": one cheap request, nothing lost.
            progress_timeout: catalog.block_wait.max(Duration::from_secs(1)),
            node: crate::host::hostname(),
            leases: Mutex::new(HashMap::new()),
            max_value: catalog.max_file,
        })
    }

    /// The key prefix with its trailing slash, e.g. `/rewire/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn instance_key(&self, reg: &Registration) -> Result<String, CatalogError> {
        for (what, name) in [("service name", &reg.name), ("service id", &reg.id)] {
            check_name(name).map_err(|e| CatalogError::Denied {
                backend: "etcd".into(),
                detail: format!("{what}: {e}"),
                hint: "rename the [[service]]".into(),
            })?;
        }
        Ok(format!("{}services/{}/{}", self.base, reg.name, reg.id))
    }

    fn held(&self, id: &str) -> Option<Held> {
        lock(&self.leases).get(id).copied()
    }

    async fn call(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, EtcdError> {
        self.transport.call(path, body).await
    }

    /// Reads `[key, end)` (or one key) and builds a mirror of it.
    async fn read(&self, key: &str, end: Option<&[u8]>) -> Result<Mirror, EtcdError> {
        let kvs = match end {
            Some(end) => self.transport.range_all(None, key.as_bytes(), end).await?.0,
            None => {
                let bytes = self
                    .call("/v3/kv/range", &wire::range_request(key.as_bytes(), None))
                    .await?;
                wire::decode_range(&bytes)
                    .map_err(|m| EtcdError::Malformed(m.0))?
                    .kvs
            }
        };
        Ok(Mirror::from_kvs(&self.base, self.max_value, kvs))
    }

    /// Grants a lease, puts the record under it and remembers it (revoking an older lease of
    /// the same registration).
    async fn put_new_lease(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        let key = self.instance_key(reg)?;
        let ttl = ttl_secs(reg.ttl);
        let bytes = self
            .call("/v3/lease/grant", &wire::grant_request(ttl))
            .await
            .map_err(|e| e.to_catalog())?;
        let grant =
            wire::decode_grant(&bytes).map_err(|m| EtcdError::Malformed(m.0).to_catalog())?;
        if grant.ttl != ttl {
            // etcd raises a TTL below its minimum (1.5 election timeouts, 2 s by default).
            debug!(service = %reg.id, asked = ttl, granted = grant.ttl, "etcd adjusted the lease TTL");
        }
        self.put_record(&key, reg, status, note, grant.id).await?;
        let old = lock(&self.leases).insert(
            reg.id.clone(),
            Held {
                lease: grant.id,
                status,
            },
        );
        if let Some(old) = old.filter(|o| o.lease != grant.id) {
            // The key now hangs on the new lease: revoking the old one deletes nothing.
            self.revoke(old.lease).await;
        }
        Ok(())
    }

    async fn put_record(
        &self,
        key: &str,
        reg: &Registration,
        status: Status,
        note: &str,
        lease: i64,
    ) -> Result<(), CatalogError> {
        let mut record = Record::from_registration(reg, status, &self.node);
        if !note.trim().is_empty() {
            record.notes = Some(truncate_note(note.trim(), MAX_NOTE));
        }
        let value = serde_json::to_vec(&record).map_err(|e| CatalogError::Malformed {
            backend: "etcd".into(),
            detail: format!("cannot encode the record: {e}"),
        })?;
        match self
            .call(
                "/v3/kv/put",
                &wire::put_request(key.as_bytes(), &value, lease),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Gateway(g)) if g.is_lease_not_found() => {
                lock(&self.leases).remove(&reg.id);
                Err(CatalogError::NotRegistered {
                    backend: "etcd".into(),
                    id: reg.id.clone(),
                    detail: "its lease expired".into(),
                })
            }
            Err(e) => Err(e.to_catalog()),
        }
    }

    /// Revokes a lease; a lease etcd no longer has is fine, and failures only cost a lease that
    /// expires by itself.
    async fn revoke(&self, lease: i64) {
        match self
            .call("/v3/lease/revoke", &wire::lease_request(lease))
            .await
        {
            Ok(_) => {}
            Err(EtcdError::Gateway(g)) if g.is_lease_not_found() => {}
            Err(e) => debug!(lease, error = %e, "could not revoke an etcd lease; it will expire"),
        }
    }
}

#[async_trait]
impl Catalog for EtcdCatalog {
    fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {})",
            self.transport.shown().join(","),
            self.base.trim_end_matches('/')
        )
    }

    /// Authenticates (when a username is set) and reads one key under the prefix, so a wrong
    /// password or a role without access stops `rewire run` before anything is written.
    async fn preflight(&self) -> Result<(), CatalogError> {
        self.transport.login().await.map_err(|e| e.to_catalog())?;
        let probe = format!("{}kv/", self.base);
        self.read(&probe, None)
            .await
            .map(drop)
            .map_err(|e| e.to_catalog())
    }

    async fn fetch(&self, query: &Query) -> Result<Data, CatalogError> {
        // The narrowest range that answers this query.
        let (key, end) = match query {
            Query::Service(name) => {
                let k = format!("{}services/{name}/", self.base);
                let e = wire::prefix_end(k.as_bytes());
                (k, Some(e))
            }
            Query::Services => {
                let k = format!("{}services/", self.base);
                let e = wire::prefix_end(k.as_bytes());
                (k, Some(e))
            }
            Query::Key(path) => (format!("{}kv/{}", self.base, path.trim_matches('/')), None),
            Query::Keys(prefix) => {
                let k = format!("{}kv/{}", self.base, prefix.trim_start_matches('/'));
                let e = wire::prefix_end(k.as_bytes());
                (k, Some(e))
            }
            Query::Election(_) => {
                return Err(CatalogError::Unsupported(
                    "an election is not a catalog query".into(),
                ));
            }
            Query::Nodes | Query::Datacenters | Query::InDatacenter(..) => {
                return Err(super::consul_only(query, "etcd"));
            }
        };
        let mirror = self
            .read(&key, end.as_deref())
            .await
            .map_err(|e| e.to_catalog())?;
        mirror.answer(query).map_err(refused)
    }

    /// One range read of the whole prefix answers every query.
    async fn fetch_many(&self, queries: &[Query]) -> Vec<(Query, Result<Data, CatalogError>)> {
        if let [one] = queries {
            return vec![(one.clone(), self.fetch(one).await)];
        }
        let end = wire::prefix_end(self.base.as_bytes());
        match self.read(&self.base, Some(&end)).await {
            Ok(mirror) => queries
                .iter()
                .map(|q| (q.clone(), mirror.answer(q).map_err(refused)))
                .collect(),
            Err(e) => queries
                .iter()
                .map(|q| (q.clone(), Err(e.to_catalog())))
                .collect(),
        }
    }

    async fn watch(
        &self,
        wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) {
        watcher::Watcher::new(
            &self.transport,
            &self.base,
            self.progress_timeout,
            self.backoff.clone(),
            wanted,
            store,
            stop,
        )
        .max_value(self.max_value)
        .run()
        .await;
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.put_new_lease(reg, reg.status, "").await?;
        info!(service = %reg.name, id = %reg.id, ttl = ?reg.ttl, "registered in etcd");
        Ok(())
    }

    async fn deregister(&self, reg: &Registration) -> Result<(), CatalogError> {
        let key = self.instance_key(reg)?;
        self.call("/v3/kv/deleterange", &wire::delete_request(key.as_bytes()))
            .await
            .map_err(|e| e.to_catalog())?;
        let held = lock(&self.leases).remove(&reg.id);
        if let Some(held) = held {
            self.revoke(held.lease).await;
        }
        Ok(())
    }

    /// Passing: keepalive, and rewrite the record if it was not passing. Warning or critical:
    /// rewrite the record with that status under the same lease, no keepalive. A lease etcd
    /// dropped is granted again and the record put again here; `NotRegistered` only comes back
    /// when a failing status cannot be written because the lease is gone (the instance has
    /// already left the catalog; register again when the check passes).
    async fn update_ttl(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        let key = self.instance_key(reg)?;
        let Some(held) = self.held(&reg.id) else {
            return Err(CatalogError::NotRegistered {
                backend: "etcd".into(),
                id: reg.id.clone(),
                detail: "this process has not registered it".into(),
            });
        };
        if status != Status::Passing {
            if held.status != status {
                self.put_record(&key, reg, status, note, held.lease).await?;
                set_status(&self.leases, &reg.id, held.lease, status);
            }
            return Ok(());
        }
        let bytes = self
            .call("/v3/lease/keepalive", &wire::lease_request(held.lease))
            .await
            .map_err(|e| e.to_catalog())?;
        let alive = match wire::decode_keepalive(&bytes) {
            Ok(wire::KeepAlive::Alive(_)) => true,
            Ok(wire::KeepAlive::Gone) => false,
            Ok(wire::KeepAlive::Error(g)) if g.is_lease_not_found() => false,
            Ok(wire::KeepAlive::Error(g)) => return Err(EtcdError::from_gateway(g).to_catalog()),
            Err(m) => return Err(EtcdError::Malformed(m.0).to_catalog()),
        };
        if !alive {
            info!(service = %reg.name, id = %reg.id, "etcd lease expired; registering again");
            return self.put_new_lease(reg, Status::Passing, note).await;
        }
        if held.status != Status::Passing {
            match self
                .put_record(&key, reg, Status::Passing, note, held.lease)
                .await
            {
                Ok(()) => set_status(&self.leases, &reg.id, held.lease, Status::Passing),
                // Expired between the keepalive and the put.
                Err(CatalogError::NotRegistered { .. }) => {
                    return self.put_new_lease(reg, Status::Passing, note).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn ballot(
        &self,
        spec: &crate::catalog::election::BallotSpec,
    ) -> Result<Arc<dyn crate::catalog::election::Ballot>, CatalogError> {
        Ok(Arc::new(election::EtcdBallot::new(
            self.transport.clone(),
            &self.base,
            self.backoff.clone(),
            spec,
        )))
    }
}

fn set_status(leases: &Mutex<HashMap<String, Held>>, id: &str, lease: i64, status: Status) {
    if let Some(h) = lock(leases).get_mut(id).filter(|h| h.lease == lease) {
        h.status = status;
    }
}

/// The lease TTL for a health TTL: whole seconds, rounded up, at least 1. (etcd raises it to its
/// own minimum, 1.5 election timeouts.)
fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// Merges the config, the environment (`env`) and the defaults.
fn resolve(
    settings: &EtcdSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, String> {
    let env = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };

    let mut tls = Tls {
        ca: settings
            .tls
            .ca
            .clone()
            .or_else(|| env("ETCDCTL_CACERT").map(Into::into)),
        cert: settings
            .tls
            .cert
            .clone()
            .or_else(|| env("ETCDCTL_CERT").map(Into::into)),
        key: settings
            .tls
            .key
            .clone()
            .or_else(|| env("ETCDCTL_KEY").map(Into::into)),
        server_name: settings.tls.server_name.clone(),
        verify: true,
    };
    tls.verify = match settings.tls.verify {
        Some(v) => v,
        None => !matches!(
            env("ETCDCTL_INSECURE_SKIP_TLS_VERIFY").as_deref(),
            Some("true" | "1")
        ),
    };
    if tls.cert.is_some() != tls.key.is_some() {
        return Err("TLS needs both cert and key for a client certificate".into());
    }
    let default_scheme = if tls.ca.is_some() || tls.cert.is_some() {
        "https"
    } else {
        "http"
    };

    let raw: Vec<String> = if !settings.endpoints.is_empty() {
        settings.endpoints.clone()
    } else if let Some(list) = env("ETCDCTL_ENDPOINTS") {
        list.split(',').map(str::to_string).collect()
    } else {
        vec![DEFAULT_ENDPOINT.to_string()]
    };
    let mut endpoints = Vec::new();
    for e in raw.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let e = e.trim_end_matches('/');
        let url = if e.contains("://") {
            e.to_string()
        } else {
            format!("{default_scheme}://{e}")
        };
        // A password in an endpoint would be shown wherever the catalog is named (log, status),
        // and etcd does not take it there anyway: refused, without echoing it.
        let host_part = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        if host_part.split('/').next().is_some_and(|h| h.contains('@')) {
            return Err(
                "credentials in an endpoint are not supported (they would be logged); use \
                 [catalog] username and password (or ETCDCTL_USER)"
                    .into(),
            );
        }
        let parsed = reqwest::Url::parse(&url)
            .map_err(|err| format!("endpoint {e:?} is not a URL: {err}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "endpoint {e:?}: use http://HOST:PORT or https://HOST:PORT"
            ));
        }
        if !endpoints.contains(&url) {
            endpoints.push(url);
        }
    }
    if endpoints.is_empty() {
        return Err("no endpoints given".into());
    }

    let prefix = settings.prefix.trim();
    let prefix = if prefix.is_empty() {
        DEFAULT_PREFIX
    } else {
        prefix
    };
    let base = format!("{}/", prefix.trim_end_matches('/'));

    let env_user = env("ETCDCTL_USER");
    let (user, inline_password) = match (&settings.username, &env_user) {
        (Some(u), _) => (Some(u.clone()), None),
        (None, Some(u)) => match u.split_once(':') {
            Some((name, pw)) => (Some(name.to_string()), Some(Secret::new(pw))),
            None => (Some(u.clone()), None),
        },
        (None, None) => (None, None),
    };
    let user = match user {
        None => None,
        Some(u) => {
            let password = settings
                .password
                .clone()
                .or(inline_password)
                .or_else(|| env("ETCDCTL_PASSWORD").map(Secret::new))
                .ok_or_else(|| format!("username {u:?} is set but no password"))?;
            Some((u, password))
        }
    };
    Ok(Resolved {
        endpoints,
        base,
        user,
        tls,
    })
}

/// A key whose only value rewire refused: no answer yet (the template waits), said by name.
fn refused(detail: String) -> CatalogError {
    CatalogError::Malformed {
        backend: "etcd".into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsSettings;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_apply_without_config_or_environment() {
        let r = resolve(&EtcdSettings::default(), &env_of(&[])).unwrap();
        assert_eq!(r.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(r.base, "/rewire/");
        assert_eq!(r.user, None);
        assert!(r.tls.verify);
    }

    #[test]
    fn environment_fills_what_the_config_leaves_out() {
        let env = env_of(&[
            (
                "ETCDCTL_ENDPOINTS",
                "10.0.0.1:2379, http://10.0.0.2:2379/ ,",
            ),
            ("ETCDCTL_USER", "alice:s3cret"),
        ]);
        let r = resolve(&EtcdSettings::default(), &env).unwrap();
        assert_eq!(
            r.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        let (user, pw) = r.user.unwrap();
        assert_eq!((user.as_str(), pw.expose()), ("alice", "s3cret"));

        let settings = EtcdSettings {
            endpoints: vec!["https://etcd:2379".into()],
            prefix: "/apps/".into(),
            username: Some("bob".into()),
            password: Some(Secret::new("pw")),
            tls: TlsSettings::default(),
        };
        let r = resolve(&settings, &env).unwrap();
        assert_eq!(r.endpoints, ["https://etcd:2379"]);
        assert_eq!(r.base, "/apps/");
        let (user, pw) = r.user.unwrap();
        assert_eq!((user.as_str(), pw.expose()), ("bob", "pw"));
    }

    #[test]
    fn tls_material_makes_bare_endpoints_https() {
        let env = env_of(&[
            ("ETCDCTL_CACERT", "/ca.pem"),
            ("ETCDCTL_ENDPOINTS", "127.0.0.1:2379"),
        ]);
        let r = resolve(&EtcdSettings::default(), &env).unwrap();
        assert_eq!(r.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(r.tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
    }

    #[test]
    fn incomplete_settings_are_refused() {
        let settings = EtcdSettings {
            username: Some("bob".into()),
            ..EtcdSettings::default()
        };
        assert!(
            resolve(&settings, &env_of(&[]))
                .unwrap_err()
                .contains("no password")
        );
        let settings = EtcdSettings {
            endpoints: vec!["ftp://x:1".into()],
            ..EtcdSettings::default()
        };
        assert!(resolve(&settings, &env_of(&[])).is_err());
        // Found by an operator hunt: a password in an endpoint was shown in the log and status.
        for e in ["http://u:s3cret@127.0.0.1:2379", "u:s3cret@127.0.0.1:2379"] {
            let settings = EtcdSettings {
                endpoints: vec![e.into()],
                ..EtcdSettings::default()
            };
            let err = resolve(&settings, &env_of(&[])).unwrap_err();
            assert!(err.contains("credentials in an endpoint"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let env = env_of(&[("ETCDCTL_CERT", "/c.pem")]);
        assert!(resolve(&EtcdSettings::default(), &env).is_err());
    }

    #[test]
    fn lease_ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(0)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(300)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(25)), 25);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let settings = EtcdSettings {
            username: Some("bob".into()),
            password: Some(Secret::new("hunter2")),
            ..EtcdSettings::default()
        };
        let r = resolve(&settings, &env_of(&[])).unwrap();
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
