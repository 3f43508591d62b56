//! The catalog: where services and key/value data live, and how rewire talks to it.
//!
//! Three backends speak the same [`Catalog`] trait: the directory catalog (the embedded default),
//! Consul and etcd. A backend never hands data to templates directly: it writes into the
//! [`Store`](crate::store::Store), which publishes snapshots the runner renders from.
//!
//! Queries are coarse on purpose. `service("web", tag="v2", status="any")` and `service("web")`
//! both watch [`Query::Service`]`("web")` (every instance, whatever its health); templates filter
//! by tag and status on the snapshot. That is how two templates, or one template calling the
//! same service twice, share one watch (consul-template opens one long poll per variant).
//!
//! [`Catalog::watch`] takes the whole set of wanted queries rather than one query at a time so
//! that each backend can pick its natural shape: one long poll per query (Consul), one prefix
//! watch for everything (etcd), one inotify tree (dir).

pub mod consul;
pub mod dir;
pub mod etcd;
pub mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// One thing a template (or a `[[watch]]`) asks the catalog for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Query {
    /// Every instance of one service, whatever its health.
    Service(String),
    /// Every service name with its tags.
    Services,
    /// One key's value (missing is a valid answer).
    Key(String),
    /// Every key under a prefix.
    Keys(String),
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Service(name) => write!(f, "service({name})"),
            Query::Services => write!(f, "services()"),
            Query::Key(path) => write!(f, "key({path})"),
            Query::Keys(prefix) => write!(f, "keys({prefix})"),
        }
    }
}

/// Health of one instance, as the catalog reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// The worse of two statuses (an instance with one critical check is critical).
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passing" => Ok(Status::Passing),
            "warning" => Ok(Status::Warning),
            "critical" => Ok(Status::Critical),
            other => Err(format!(
                "unknown status {other:?}: use passing, warning or critical"
            )),
        }
    }
}

/// One running copy of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// The node (host) the instance runs on; the hostname for the dir catalog.
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub status: Status,
}

impl Instance {
    /// The order templates see: by address, then port, then id, so output is deterministic.
    pub fn sort_key(&self) -> (&str, u16, &str) {
        (&self.address, self.port, &self.id)
    }
}

/// A service name and the union of its instances' tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
}

/// A key/value pair under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The full path of the key.
    pub path: String,
    pub value: String,
}

/// The answer to one [`Query`].
///
/// Instances are shared (`Arc`): a backend that keeps a copy of the catalog (etcd's mirror)
/// hands the store the same instances it holds, so one change among 1 000 instances copies
/// 1 000 pointers, not 1 000 records, and the template side can tell an unchanged instance by
/// its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Instances(Vec<Arc<Instance>>),
    Services(Vec<ServiceSummary>),
    Key(Option<String>),
    Keys(Vec<KeyValue>),
}

impl Data {
    /// Puts the data in its canonical order, so that equal data compares equal and renders
    /// byte-identical output whatever order the backend produced it in.
    pub fn normalize(mut self) -> Data {
        match &mut self {
            Data::Instances(list) => {
                if !list.is_sorted_by(|a, b| a.sort_key() <= b.sort_key()) {
                    list.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
                }
                for i in list.iter_mut() {
                    if !i.tags.is_sorted_by(|a, b| a < b) {
                        let tags = &mut Arc::make_mut(i).tags;
                        tags.sort();
                        tags.dedup();
                    }
                }
            }
            Data::Services(list) => {
                list.sort_by(|a, b| a.name.cmp(&b.name));
                for s in list.iter_mut() {
                    s.tags.sort();
                    s.tags.dedup();
                }
            }
            Data::Keys(list) => list.sort_by(|a, b| a.path.cmp(&b.path)),
            Data::Key(_) => {}
        }
        self
    }

    /// The empty answer for a query: no instances, no services, no key.
    pub fn empty_for(query: &Query) -> Data {
        match query {
            Query::Service(_) => Data::Instances(Vec::new()),
            Query::Services => Data::Services(Vec::new()),
            Query::Key(_) => Data::Key(None),
            Query::Keys(_) => Data::Keys(Vec::new()),
        }
    }

    /// Builds the `services()` answer from a full list of instances.
    pub fn services_from<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Data {
        let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for i in instances {
            let tags = by_name.entry(&i.name).or_default();
            tags.extend(i.tags.iter().map(String::as_str));
        }
        Data::Services(
            by_name
                .into_iter()
                .map(|(name, tags)| ServiceSummary {
                    name: name.to_string(),
                    tags: tags.into_iter().map(str::to_string).collect(),
                })
                .collect(),
        )
    }
}

/// What a rewire process registers for itself (a `[[service]]` block, resolved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// How long a pass counts for; missing the next one by more turns the instance critical.
    #[serde(skip)]
    pub ttl: Duration,
    /// How long a critical registration may linger before the catalog removes it.
    #[serde(skip)]
    pub deregister_after: Duration,
    /// Status to register with.
    pub status: Status,
}

/// Errors from a catalog, sorted by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Network trouble, a catalog that is starting or has no leader: retry with backoff.
    #[error("cannot reach {backend}: {detail}")]
    Unreachable { backend: String, detail: String },
    /// The catalog answered but refused (bad token, permission): retrying will not help.
    #[error("{backend} refused the request: {detail}\n  hint: {hint}")]
    Denied {
        backend: String,
        detail: String,
        hint: String,
    },
    /// The catalog sent something rewire cannot read.
    #[error("{backend} sent a response rewire cannot read: {detail}")]
    Malformed { backend: String, detail: String },
    /// The catalog no longer knows a registration (agent restart, lease lost): register again.
    #[error("{backend} no longer knows registration {id}: {detail}")]
    NotRegistered {
        backend: String,
        id: String,
        detail: String,
    },
    /// A local I/O problem (the dir catalog).
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// This backend is not available in this build.
    #[error("{0}")]
    Unsupported(String),
}

impl CatalogError {
    /// Whether retrying later can help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CatalogError::Unreachable { .. }
                | CatalogError::Io { .. }
                | CatalogError::NotRegistered { .. }
                | CatalogError::Malformed { .. }
        )
    }
}

/// A service catalog backend.
///
/// Implementations must be cheap to share (`Arc<dyn Catalog>`) and must never give up:
/// `watch` runs until `stop` fires, retrying with backoff through any outage and keeping the
/// store's last good data meanwhile.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// A short description for logs and `rewire status` (never contains a token).
    fn describe(&self) -> String;

    /// Checks at start that the catalog can be used at all (e.g. Consul's token is valid).
    /// A `Denied` error here stops `rewire run` before anything is written.
    async fn preflight(&self) -> Result<(), CatalogError> {
        Ok(())
    }

    /// Reads the current answer to one query once.
    async fn fetch(&self, query: &Query) -> Result<Data, CatalogError>;

    /// Reads several queries once. Backends that can answer many queries from one read
    /// (one directory scan, one etcd range) override this.
    async fn fetch_many(&self, queries: &[Query]) -> Vec<(Query, Result<Data, CatalogError>)> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push((q.clone(), self.fetch(q).await));
        }
        out
    }

    /// Keeps `store` current for every query in `wanted` until `stop` fires.
    ///
    /// `wanted` changes as templates discover new queries or stop using old ones: start
    /// watching the new, stop the gone, leave the rest alone. Every answer goes through
    /// [`Store::update`], which ignores data equal to what it has. Outages are reported with
    /// [`Store::set_health`] once per change of state.
    async fn watch(
        &self,
        wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    );

    /// Registers (or re-registers) one of this process's own services.
    async fn register(&self, reg: &Registration) -> Result<(), CatalogError>;

    /// Removes a registration. Removing one the catalog no longer has is not an error.
    async fn deregister(&self, reg: &Registration) -> Result<(), CatalogError>;

    /// Reports the result of a health check: keeps the registration alive for another TTL
    /// (`Passing`) or marks it as failing at once. `note` is the health command's output.
    /// Returns `NotRegistered` when the catalog forgot the registration; the caller registers
    /// again.
    async fn update_ttl(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError>;
}

/// Where the catalog lives, as given by `--catalog` or `[catalog]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogUrl {
    Dir(std::path::PathBuf),
    Consul(String),
    Etcd(Vec<String>),
}

impl CatalogUrl {
    /// Parses `dir:PATH`, `consul://HOST:PORT` (or `consuls://` for https) and
    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(s: &str) -> Result<CatalogUrl, String> {
        if let Some(path) = s.strip_prefix("dir:") {
            if path.is_empty() {
                return Err("dir: needs a path, e.g. dir:./catalog".into());
            }
            return Ok(CatalogUrl::Dir(path.into()));
        }
        if let Some(rest) = s.strip_prefix("consul://") {
            return Ok(CatalogUrl::Consul(format!("http://{rest}")));
        }
        if let Some(rest) = s.strip_prefix("consuls://") {
            return Ok(CatalogUrl::Consul(format!("https://{rest}")));
        }
        if let Some(rest) = s.strip_prefix("etcd://") {
            let eps: Vec<String> = rest
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| format!("http://{e}"))
                .collect();
            if eps.is_empty() {
                return Err("etcd:// needs at least one HOST:PORT".into());
            }
            return Ok(CatalogUrl::Etcd(eps));
        }
        if let Some(rest) = s.strip_prefix("etcds://") {
            let eps: Vec<String> = rest
                .split(',')
                .filter(|e| !e.is_empty())
                .map(|e| format!("https://{e}"))
                .collect();
            if eps.is_empty() {
                return Err("etcds:// needs at least one HOST:PORT".into());
            }
            return Ok(CatalogUrl::Etcd(eps));
        }
        Err(format!(
            "unknown catalog {s:?}: use dir:PATH, consul://HOST:PORT or etcd://HOST:PORT[,HOST:PORT...]"
        ))
    }
}

/// Opens the configured catalog.
pub fn open(cfg: &crate::config::CatalogConfig) -> Result<Arc<dyn Catalog>, CatalogError> {
    use crate::config::Backend;
    match &cfg.backend {
        Backend::Dir(s) => Ok(Arc::new(
            dir::DirCatalog::new(&s.path).with_deregister_after(cfg.deregister_after),
        )),
        Backend::Consul(s) => Ok(Arc::new(consul::ConsulCatalog::new(s, cfg)?)),
        Backend::Etcd(s) => Ok(Arc::new(etcd::EtcdCatalog::new(s, cfg)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_urls_parse() {
        assert_eq!(
            CatalogUrl::parse("dir:./cat").unwrap(),
            CatalogUrl::Dir("./cat".into())
        );
        assert_eq!(
            CatalogUrl::parse("consul://127.0.0.1:8500").unwrap(),
            CatalogUrl::Consul("http://127.0.0.1:8500".into())
        );
        assert_eq!(
            CatalogUrl::parse("etcd://a:1,b:2").unwrap(),
            CatalogUrl::Etcd(vec!["http://a:1".into(), "http://b:2".into()])
        );
        assert!(CatalogUrl::parse("zk://x").is_err());
        assert!(CatalogUrl::parse("dir:").is_err());
    }

    #[test]
    fn normalize_sorts_instances_by_address_port_id() {
        let mk = |id: &str, addr: &str, port| Instance {
            id: id.into(),
            name: "web".into(),
            node: "n".into(),
            address: addr.into(),
            port,
            tags: vec!["b".into(), "a".into(), "a".into()],
            meta: BTreeMap::new(),
            status: Status::Passing,
        };
        let d = Data::Instances(
            vec![
                mk("z", "10.0.0.2", 80),
                mk("y", "10.0.0.1", 81),
                mk("x", "10.0.0.1", 80),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        )
        .normalize();
        let Data::Instances(list) = d else { panic!() };
        let ids: Vec<_> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "z"]);
        assert_eq!(list[0].tags, ["a", "b"]);
    }
}
