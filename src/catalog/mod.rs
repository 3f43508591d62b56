//! The catalog: where services and key/value data live, and how rewire talks to it.
//!
//! Three backends speak the same [`Catalog`] trait: the directory catalog (the embedded default),
//! Consul and etcd. A backend never hands data to templates directly: it writes into the
//! [`Store`](crate::store::Store), which publishes snapshots the runner renders from.
//!
//! What a query and its answer are lives in [`model`](crate::model), which every side shares.
//!
//! [`Catalog::watch`] takes the whole set of wanted queries rather than one query at a time so
//! that each backend can pick its natural shape: one long poll per query (Consul), one prefix
//! watch for everything (etcd), one inotify tree (dir).
//!
//! Elections live beside each backend (`dir/election.rs`, `consul/election.rs`,
//! `etcd/election.rs`), behind the [`election::Ballot`] trait.

pub mod consul;
pub mod dir;
pub mod election;
pub mod etcd;
pub mod http;
pub mod record;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::{Data, Query, Registration, Status};
use crate::store::Store;

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

/// The refusal of a query only Consul answers (`nodes()`, `datacenters()`, `dc=`) by
/// another catalog.
pub fn consul_only(query: &Query, backend: &str) -> CatalogError {
    CatalogError::Unsupported(format!(
        "{query} needs the Consul catalog: the {backend} catalog has no datacenters or nodes \
         (set [catalog] backend = \"consul\", or drop dc=, nodes() and datacenters() from the \
         templates)"
    ))
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

    /// Starts reading, in the background, what a one-shot command is about to fetch, when the
    /// backend can tell without the queries (the dir catalog reads its whole tree for any
    /// query). `rewire render` and `rewire diff` call it once their templates load, before
    /// the first render, which only finds out what to fetch.
    fn warm_up(&self) {}

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

    /// Opens one `[[election]]` with this catalog's locking primitive (see [`election`]).
    fn ballot(
        &self,
        spec: &election::BallotSpec,
    ) -> Result<Arc<dyn election::Ballot>, CatalogError>;
}

/// Opens the configured catalog.
pub fn open(cfg: &crate::config::CatalogConfig) -> Result<Arc<dyn Catalog>, CatalogError> {
    use crate::config::Backend;
    match &cfg.backend {
        Backend::Dir(s) => Ok(Arc::new(
            dir::DirCatalog::new(&s.path)
                .with_deregister_after(cfg.deregister_after)
                .with_max_file(cfg.max_file),
        )),
        Backend::Consul(s) => Ok(Arc::new(consul::ConsulCatalog::new(s, cfg)?)),
        Backend::Etcd(s) => Ok(Arc::new(etcd::EtcdCatalog::new(s, cfg)?)),
    }
}
