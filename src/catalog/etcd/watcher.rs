//! One prefix watch feeding every wanted query.
//!
//! ```text
//! range PREFIX at revision R ──> Mirror ──> store (every wanted query)
//! watch PREFIX from R+1 ──line──> events ──> Mirror ──> store (only the queries they touch)
//! ```
//!
//! After a broken stream the watch resumes at the last revision seen + 1 on the next member,
//! so nothing is lost and nothing is read twice. Progress notifications move that point forward
//! while the prefix is quiet. If etcd compacted it away meanwhile (`compact_revision`), the
//! prefix is read again and the mirror replaced; the store drops answers equal to what it has.
//!
//! A stream that stays silent past the progress timeout may be half-open (a partition eats
//! the FIN): it is dropped and the watch resumes on a fresh connection, which is cheap and
//! loses nothing. Failures move to the next member at once; once every member has failed,
//! retries back off with jitter, forever, keeping the last good data in the store.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use super::mirror::{Changes, Mirror};
use super::transport::{EtcdError, Transport};
use super::wire::{self, Event, WatchMessage};
use crate::backoff::Backoff;
use crate::model::Query;
use crate::store::{Health, Store};
use crate::timing::{self, stage};

/// When to try again: at once, on the next member, until every member failed once more (a
/// stream that broke is retried at once, so one dropped connection is not an outage); then wait
/// with backoff and jitter.
#[derive(Debug)]
pub struct Failover {
    members: u32,
    backoff: Backoff,
    failures: u32,
}

impl Failover {
    pub fn new(members: usize, backoff: Backoff) -> Failover {
        Failover {
            members: u32::try_from(members.max(1)).unwrap_or(u32::MAX),
            backoff,
            failures: 0,
        }
    }

    /// Records a failure; returns how long to wait before the next attempt.
    pub fn on_failure(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if self.failures <= self.members {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        }
    }

    /// Whether the attempts since the last success went round every member and more.
    pub fn all_failed(&self) -> bool {
        self.failures > self.members
    }

    pub fn on_success(&mut self) {
        self.failures = 0;
        self.backoff.reset();
    }
}

/// A watch must have lived this long for its end to count as a fresh failure rather than one
/// more in a row (a member that accepts watches and drops them at once must not be hot-looped).
const ESTABLISHED: Duration = Duration::from_secs(1);

/// Why a watch stream ended.
#[derive(Debug)]
enum End {
    Stopped,
    /// Nothing arrived within the progress timeout.
    Silent,
    /// The resume revision was compacted: read the prefix again.
    Compacted(i64),
    Failed(EtcdError),
}

pub struct Watcher<'a> {
    transport: &'a Transport,
    base: &'a str,
    /// `[catalog] max_file`, for the mirror.
    max_value: u64,
    progress_timeout: Duration,
    failover: Failover,
    store: Arc<Store>,
    stop: CancellationToken,
    wanted: watch::Receiver<BTreeSet<Query>>,
    wanted_open: bool,
    current: BTreeSet<Query>,
    mirror: Option<Mirror>,
    /// Every event up to this revision is in `mirror`.
    revision: i64,
    /// `None` until the first success or failure.
    down: Option<bool>,
    /// When the current watch was created.
    created_at: Option<Instant>,
}

impl<'a> Watcher<'a> {
    pub fn new(
        transport: &'a Transport,
        base: &'a str,
        progress_timeout: Duration,
        backoff: Backoff,
        wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) -> Watcher<'a> {
        Watcher {
            failover: Failover::new(transport.len(), backoff),
            transport,
            base,
            max_value: u64::MAX,
            progress_timeout,
            store,
            stop,
            wanted,
            wanted_open: true,
            current: BTreeSet::new(),
            mirror: None,
            revision: 0,
            down: None,
            created_at: None,
        }
    }

    /// Sets the largest value the mirror accepts (`[catalog] max_file`).
    pub fn max_value(mut self, max: u64) -> Watcher<'a> {
        self.max_value = max;
        self
    }

    pub async fn run(mut self) {
        self.current = self.wanted.borrow_and_update().clone();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            if self.mirror.is_none() {
                let idx = self.transport.preferred();
                let stop = self.stop.clone();
                let read = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = self.read_prefix(idx) => r,
                };
                if let Err(e) = read {
                    if self.failed(idx, e).await {
                        return;
                    }
                    continue;
                }
            }
            let idx = self.transport.preferred();
            match self.follow(idx).await {
                End::Stopped => return,
                End::Silent => {
                    debug!(
                        endpoint = %self.transport.shown_at(idx),
                        timeout = ?self.progress_timeout,
                        "etcd watch silent past the progress timeout; resuming on a new connection"
                    );
                }
                End::Compacted(compacted) => {
                    info!(
                        resume = self.revision + 1,
                        compacted,
                        "etcd compacted past the watch's resume point; reading the prefix again"
                    );
                    self.mirror = None;
                }
                End::Failed(e) => {
                    if self.created_at.is_some_and(|t| t.elapsed() >= ESTABLISHED) {
                        self.failover.on_success();
                    }
                    if self.failed(idx, e).await {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the whole prefix, replaces the mirror and publishes every wanted answer.
    async fn read_prefix(&mut self, idx: usize) -> Result<(), EtcdError> {
        let (kvs, revision) = self
            .transport
            .range_all(
                Some(idx),
                self.base.as_bytes(),
                &wire::prefix_end(self.base.as_bytes()),
            )
            .await?;
        let mirror = Mirror::from_kvs(self.base, self.max_value, kvs);
        debug!(
            revision,
            instances = mirror.instance_count(),
            keys = mirror.key_count(),
            "read the etcd prefix"
        );
        self.revision = revision;
        self.mirror = Some(mirror);
        self.current = self.wanted.borrow_and_update().clone();
        self.publish(&Changes::everything());
        self.failover.on_success();
        self.up();
        Ok(())
    }

    /// Follows one watch stream until it ends.
    async fn follow(&mut self, idx: usize) -> End {
        self.created_at = None;
        let end = wire::prefix_end(self.base.as_bytes());
        let body = wire::watch_request(self.base.as_bytes(), &end, self.revision + 1);
        let opened = tokio::select! {
            _ = self.stop.cancelled() => return End::Stopped,
            r = self.transport.watch(idx, &body) => r,
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => return End::Failed(e),
        };
        let silence = tokio::time::sleep(self.progress_timeout);
        tokio::pin!(silence);
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return End::Stopped,
                changed = self.wanted.changed(), if self.wanted_open => match changed {
                    Ok(()) => self.wanted_changed(),
                    // Nobody can change the set any more: keep serving the last one.
                    Err(_) => self.wanted_open = false,
                },
                line = stream.next_line() => {
                    silence.as_mut().reset(Instant::now() + self.progress_timeout);
                    let line = match line {
                        Ok(Some(line)) => line,
                        Ok(None) => {
                            return End::Failed(EtcdError::Unreachable(format!(
                                "{}: the watch stream ended",
                                stream.endpoint()
                            )));
                        }
                        Err(e) => return End::Failed(e),
                    };
                    timing::mark(stage::RECEIVED);
                    match wire::decode_watch_line(&line) {
                        Err(m) => return End::Failed(EtcdError::Malformed(m.0)),
                        Ok(WatchMessage::Created { .. }) => {
                            self.created_at = Some(Instant::now());
                            self.up();
                        }
                        Ok(WatchMessage::Events { events, .. }) => {
                            timing::mark(stage::DECODED);
                            self.apply(events);
                        }
                        Ok(WatchMessage::Progress { revision }) => {
                            self.revision = self.revision.max(revision);
                        }
                        Ok(WatchMessage::Compacted { compact_revision }) => {
                            return End::Compacted(compact_revision);
                        }
                        Ok(WatchMessage::Canceled { reason }) => {
                            return End::Failed(canceled(&reason));
                        }
                        Ok(WatchMessage::Error(g)) => return End::Failed(EtcdError::from_gateway(g)),
                    }
                }
                _ = &mut silence => return End::Silent,
            }
        }
    }

    /// Applies one message's events and publishes the answers they change.
    fn apply(&mut self, events: Vec<Event>) {
        let Some(mirror) = self.mirror.as_mut() else {
            return;
        };
        let started = std::time::Instant::now();
        let count = events.len();
        let mut changes = Changes::default();
        let mut last = self.revision;
        for e in events {
            // Already in the mirror (the range read, or a message before a reconnect).
            if e.kv.mod_revision != 0 && e.kv.mod_revision <= self.revision {
                continue;
            }
            last = last.max(e.kv.mod_revision);
            mirror.apply(e, &mut changes);
        }
        self.revision = last;
        if !changes.is_empty() {
            self.publish(&changes);
        }
        trace!(events = count, revision = last, took = ?started.elapsed(), "applied watch events");
    }

    /// Publishes the wanted answers `changes` may have changed, in one store update.
    fn publish(&self, changes: &Changes) {
        let Some(mirror) = &self.mirror else {
            return;
        };
        self.store.update_many(
            self.current
                .iter()
                .filter(|q| changes.affects(q))
                // A refused key stays unanswered: templates wait for a usable value.
                .filter_map(|q| Some((q.clone(), mirror.answer(q).ok()?))),
        );
    }

    /// New queries are answered from the mirror at once; gone ones are simply not published.
    fn wanted_changed(&mut self) {
        let next = self.wanted.borrow_and_update().clone();
        if let Some(mirror) = &self.mirror {
            self.store.update_many(
                next.difference(&self.current)
                    .filter_map(|q| Some((q.clone(), mirror.answer(q).ok()?))),
            );
        }
        self.current = next;
    }

    fn up(&mut self) {
        if self.down == Some(false) {
            return;
        }
        self.store.set_health(Health::Healthy);
        if self.down == Some(true) {
            info!(endpoint = %self.transport.shown_at(self.transport.preferred()), "etcd reachable again");
        } else {
            info!(endpoint = %self.transport.shown_at(self.transport.preferred()), prefix = %self.base, "watching etcd");
        }
        self.down = Some(false);
    }

    /// Handles a failed attempt on member `idx`: moves to the next member, reports the outage
    /// once every member failed, waits. Returns true when stopped meanwhile.
    async fn failed(&mut self, idx: usize, e: EtcdError) -> bool {
        if e.is_invalid_token() {
            // The watch was refused for a stale token: the next attempt authenticates again.
            self.transport.forget_token();
        }
        self.transport.rotate(idx);
        self.store.failed();
        let delay = self.failover.on_failure();
        if self.failover.all_failed() && self.down != Some(true) {
            self.down = Some(true);
            self.store
                .set_health(Health::Unreachable(format!("etcd: {e}")));
            match e {
                EtcdError::Denied(_) => warn!(
                    error = %e,
                    "etcd refuses rewire; keeping the last data and retrying (fix the credentials or role)"
                ),
                _ => warn!(error = %e, "etcd unreachable; keeping the last data and retrying"),
            }
        } else {
            debug!(endpoint = %self.transport.shown_at(idx), error = %e, retry_in = ?delay, "etcd attempt failed");
        }
        self.pause(delay).await
    }

    /// Waits `delay`, still answering new queries from the mirror. True when stopped.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return true,
                _ = tokio::time::sleep_until(until) => return false,
                changed = self.wanted.changed(), if self.wanted_open => match changed {
                    Ok(()) => self.wanted_changed(),
                    Err(_) => self.wanted_open = false,
                },
            }
        }
    }
}

/// Sorts a watch cancellation by its reason.
fn canceled(reason: &str) -> EtcdError {
    EtcdError::from_gateway(wire::GatewayError {
        code: if reason.contains("Unauthenticated") {
            16
        } else {
            2
        },
        message: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).unwrap()
    }

    #[test]
    fn failover_tries_every_member_before_waiting() {
        let mut f = Failover::new(3, backoff());
        for _ in 0..3 {
            assert_eq!(f.on_failure(), Duration::ZERO);
            assert!(!f.all_failed());
        }
        let d = f.on_failure();
        assert!(f.all_failed());
        assert!(
            d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
            "{d:?}"
        );
        let d = f.on_failure();
        assert!(
            d >= Duration::from_millis(100) && d <= Duration::from_millis(200),
            "{d:?}"
        );
        f.on_success();
        assert!(!f.all_failed());
        assert_eq!(f.on_failure(), Duration::ZERO);
    }

    #[test]
    fn a_single_member_is_retried_once_at_once_then_backs_off() {
        let mut f = Failover::new(1, backoff());
        assert_eq!(f.on_failure(), Duration::ZERO);
        assert!(!f.all_failed());
        for _ in 0..50 {
            let d = f.on_failure();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn cancel_reasons_are_sorted() {
        assert!(
            canceled("rpc error: code = Unauthenticated desc = etcdserver: invalid auth token")
                .is_invalid_token()
        );
        assert!(matches!(
            canceled("rpc error: code = PermissionDenied desc = etcdserver: permission denied"),
            EtcdError::Denied(_)
        ));
        assert!(matches!(
            canceled("rpc error: code = InvalidArgument desc = etcdserver: user name is empty"),
            EtcdError::Denied(_)
        ));
        assert!(matches!(
            canceled("etcdserver: no leader"),
            EtcdError::Unreachable(_)
        ));
    }
}
