//! Elections in etcd: a raw lease and a create-if-absent transaction.
//!
//! ```text
//! PREFIX/elections/<name>   the holder's value ({"id", "address", "port"}), on its lease
//! ```
//!
//! A candidate grants a lease of the election's TTL and runs one transaction: create the key
//! on the lease if its `create_revision` is 0 (nobody holds it), else read it. The key's
//! `create_revision` is the fencing token: revisions only grow, so each term's token is higher
//! than the last. The holder sends a keepalive every ttl/3; when it stops (killed, cut off),
//! etcd deletes the key as the lease expires and the next candidate's transaction succeeds.
//! Resigning revokes the lease, which deletes the key at once.
//!
//! Followers read the key and watch it from the next revision. A watch of a quiet key says
//! nothing for a long time, so the key is read again every [`RESYNC`] to catch a half-open
//! stream. The election gateway API (`/v3/election/campaign`) is not used: it reported wins
//! that were not (issue 18).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::transport::{EtcdError, Transport};
use super::watcher::Failover;
use super::wire::{self, Created, EventKind, Kv, WatchMessage};
use crate::backoff::Backoff;
use crate::catalog::CatalogError;
use crate::catalog::election::{Ballot, BallotSpec, Sight, decode_value, encode_value, set_sight};
use crate::model::{Holder, LeaderValue};

/// How often a follower reads the key again while its watch is quiet.
const RESYNC: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    lease: Option<i64>,
    token: Option<u64>,
}

pub struct EtcdBallot {
    transport: Arc<Transport>,
    key: String,
    spec: BallotSpec,
    backoff: Backoff,
    state: tokio::sync::Mutex<State>,
}

impl EtcdBallot {
    pub(super) fn new(
        transport: Arc<Transport>,
        base: &str,
        backoff: Backoff,
        spec: &BallotSpec,
    ) -> EtcdBallot {
        EtcdBallot {
            transport,
            key: format!("{base}elections/{}", spec.name),
            spec: spec.clone(),
            backoff,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    async fn revoke(&self, lease: i64) -> Result<(), CatalogError> {
        match self
            .transport
            .call("/v3/lease/revoke", &wire::lease_request(lease))
            .await
        {
            Ok(_) => Ok(()),
            Err(EtcdError::Gateway(g)) if g.is_lease_not_found() => Ok(()),
            Err(e) => Err(e.to_catalog()),
        }
    }

    /// One keepalive: whether etcd still has the lease (now renewed for its whole TTL).
    async fn keep_alive(&self, lease: i64) -> Result<bool, CatalogError> {
        let bytes = self
            .transport
            .call("/v3/lease/keepalive", &wire::lease_request(lease))
            .await
            .map_err(|e| e.to_catalog())?;
        match wire::decode_keepalive(&bytes) {
            Ok(wire::KeepAlive::Alive(_)) => Ok(true),
            Ok(wire::KeepAlive::Gone) => Ok(false),
            Ok(wire::KeepAlive::Error(g)) if g.is_lease_not_found() => Ok(false),
            Ok(wire::KeepAlive::Error(g)) => Err(EtcdError::from_gateway(g).to_catalog()),
            Err(m) => Err(EtcdError::Malformed(m.0).to_catalog()),
        }
    }

    /// Reads the key: what it says, and the store's revision to watch from.
    async fn read(&self, idx: usize) -> Result<(Sight, i64), EtcdError> {
        let bytes = self
            .transport
            .call_at(
                idx,
                "/v3/kv/range",
                &wire::range_request(self.key.as_bytes(), None),
            )
            .await?;
        let range = wire::decode_range(&bytes).map_err(|m| EtcdError::Malformed(m.0))?;
        Ok((self.sight_of(range.kvs.first()), range.header.revision))
    }

    fn sight_of(&self, kv: Option<&Kv>) -> Sight {
        let Some(kv) = kv else {
            return Sight::Vacant;
        };
        match decode_value(&kv.value) {
            Ok(value) => Sight::Held(Holder {
                value,
                token: u64::try_from(kv.create_revision).unwrap_or(0),
            }),
            Err(e) => {
                warn!(election = %self.spec.name, error = %e, "the election key holds a value rewire cannot use");
                Sight::Unknown
            }
        }
    }

    /// Follows one watch stream until it fails or a resync finds it behind.
    async fn watch(
        &self,
        idx: usize,
        from: i64,
        sight: &watch::Sender<Sight>,
        stop: &CancellationToken,
    ) -> Result<(), EtcdError> {
        let body = wire::watch_key_request(self.key.as_bytes(), from);
        let mut stream = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            s = self.transport.watch(idx, &body) => s?,
        };
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = resync.tick() => {
                    let (seen, _) = self.read(idx).await?;
                    if *sight.borrow() != seen {
                        debug!(election = %self.spec.name, "the election watch fell behind; reading again");
                        return Ok(());
                    }
                }
                line = stream.next_line() => {
                    let Some(line) = line? else {
                        return Err(EtcdError::Unreachable(format!(
                            "{}: the election watch ended",
                            stream.endpoint()
                        )));
                    };
                    match wire::decode_watch_line(&line).map_err(|m| EtcdError::Malformed(m.0))? {
                        WatchMessage::Events { events, .. } => {
                            if let Some(last) = events.last() {
                                let seen = match last.kind {
                                    EventKind::Delete => Sight::Vacant,
                                    EventKind::Put => self.sight_of(Some(&last.kv)),
                                };
                                set_sight(sight, seen);
                            }
                        }
                        WatchMessage::Created { .. } | WatchMessage::Progress { .. } => {}
                        // Read the key again and watch from there.
                        WatchMessage::Compacted { .. } => return Ok(()),
                        WatchMessage::Canceled { reason } => {
                            return Err(EtcdError::Unreachable(reason));
                        }
                        WatchMessage::Error(g) => return Err(EtcdError::from_gateway(g)),
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Ballot for EtcdBallot {
    async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError> {
        let mut state = self.state.lock().await;
        if let Some(token) = state.token {
            return Ok(Some(token));
        }
        // A lease kept from an earlier attempt has been running down meanwhile: renew it
        // first, so it lasts a whole ttl from now (the holder's deadline counts from before
        // this call). A lease etcd already dropped is replaced.
        if let Some(l) = state.lease
            && !self.keep_alive(l).await?
        {
            state.lease = None;
        }
        let lease = match state.lease {
            Some(l) => l,
            None => {
                let ttl = super::ttl_secs(self.spec.ttl);
                let bytes = self
                    .transport
                    .call("/v3/lease/grant", &wire::grant_request(ttl))
                    .await
                    .map_err(|e| e.to_catalog())?;
                let grant = wire::decode_grant(&bytes)
                    .map_err(|m| EtcdError::Malformed(m.0).to_catalog())?;
                state.lease = Some(grant.id);
                grant.id
            }
        };
        let txn = wire::create_if_absent_request(self.key.as_bytes(), &encode_value(value), lease);
        let bytes = match self.transport.call("/v3/kv/txn", &txn).await {
            Ok(b) => b,
            Err(EtcdError::Gateway(g)) if g.is_lease_not_found() => {
                state.lease = None;
                return Err(EtcdError::Gateway(g).to_catalog());
            }
            Err(e) => return Err(e.to_catalog()),
        };
        match wire::decode_create_if_absent(&bytes)
            .map_err(|m| EtcdError::Malformed(m.0).to_catalog())?
        {
            Created::Yes(revision) => {
                let token = u64::try_from(revision).unwrap_or(0);
                state.token = Some(token);
                Ok(Some(token))
            }
            Created::No(Some(kv)) if kv.lease == lease => {
                // An earlier term of ours whose revoke failed: end it, run again later.
                state.lease = None;
                self.revoke(lease).await?;
                Ok(None)
            }
            Created::No(_) => Ok(None),
        }
    }

    async fn renew(&self) -> Result<bool, CatalogError> {
        let mut state = self.state.lock().await;
        let (Some(lease), Some(_)) = (state.lease, state.token) else {
            return Ok(false);
        };
        let alive = self.keep_alive(lease).await?;
        if !alive {
            *state = State::default();
        }
        Ok(alive)
    }

    async fn resign(&self) -> Result<(), CatalogError> {
        let mut state = self.state.lock().await;
        let Some(lease) = state.lease else {
            return Ok(());
        };
        // Revoking deletes the key: the next candidate's transaction succeeds at once.
        *state = State::default();
        self.revoke(lease).await
    }

    async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken) {
        let mut failover = Failover::new(self.transport.len(), self.backoff.clone());
        let mut failing = false;
        loop {
            let idx = self.transport.preferred();
            let attempt = async {
                let (seen, revision) = self.read(idx).await?;
                set_sight(&sight, seen);
                if failing {
                    info!(election = %self.spec.name, "election key readable again");
                }
                failing = false;
                failover.on_success();
                self.watch(idx, revision + 1, &sight, &stop).await
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = attempt => r,
            };
            if stop.is_cancelled() {
                return;
            }
            let Err(e) = result else { continue };
            self.transport.rotate(idx);
            let delay = failover.on_failure();
            if failover.all_failed() {
                if !failing {
                    warn!(election = %self.spec.name, error = %e, "cannot follow the election");
                    failing = true;
                }
                set_sight(&sight, Sight::Unknown);
            } else {
                debug!(election = %self.spec.name, error = %e, "election watch failed; trying the next member");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}
