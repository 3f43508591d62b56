//! Blocking queries: one long poll per distinct query, paced so that nothing hot-loops.
//!
//! Consul's change feed is the blocking query: ask with the last `X-Consul-Index` and a
//! `wait`, and the agent holds the request until something changes or the wait runs out.
//! The rules that make this robust are Consul's own (its "blocking queries" documentation)
//! plus what 1.8.7 showed us:
//!
//! - A reply does not prove a change. An unchanged index is not a change (a timeout, or an
//!   agent shutting down, answers 200 with the old body); a moved index with equal data is
//!   not one either, and [`Store::update`] drops it.
//! - An index that goes backwards (agent restart, snapshot restore) resets to 0: read once
//!   without blocking, then block on the new index.
//! - After a failed request the next read does not block either. A restarted agent forgot
//!   everything and counts from a low index again; blocking on the old, higher index would
//!   hold the first request after the outage for a whole `wait` before revealing that.
//! - Same index returned early, or repeated resets, are anomalies: the pause before the
//!   next request starts at 100 ms (consul-template's floor) and doubles up to the retry
//!   maximum, so a misbehaving agent sees a trickle, not a storm. A real change is fetched
//!   again at once, so a change right after another is not delayed.
//! - Failures back off with jitter (`[catalog] retry`) forever; the store keeps its last data.
//!
//! The loop is generic over [`Source`], so these rules run under tokio's paused clock
//! against a scripted fake in the tests below; the HTTP client implements it for real.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::decode::Reply;
use crate::backoff::Backoff;
use crate::catalog::CatalogError;
use crate::config::Retry;
use crate::lock::lock;
use crate::model::Query;
use crate::store::{Health, Store};

/// The shortest pause after an anomalous reply (same index early, index reset).
pub const MIN_SPACING: Duration = Duration::from_millis(100);

/// A reply with an unchanged index that took less than this (or less than half the wait)
/// came back early. Anything slower is no hot loop, and must not be paced: an agent whose
/// `max_query_time` is below our wait answers every blocking query early, and pausing after
/// each would delay the changes that come in between.
pub const EARLY: Duration = Duration::from_secs(1);

/// How often a query Consul cannot block on (the datacenter list) is read again;
/// consul-template's interval for the same endpoint.
pub const NON_BLOCKING_INTERVAL: Duration = Duration::from_secs(15);

/// Something that answers one query, blocking when given an index above 0.
pub trait Source: Send + Sync + 'static {
    /// Reads `query`; `index` 0 means "answer at once", anything else is a blocking query.
    fn read(
        &self,
        query: &Query,
        index: u64,
    ) -> impl Future<Output = Result<Reply, CatalogError>> + Send;

    /// How many reads may be in flight at once; more queries than this take turns (and are
    /// warned about: each holds one HTTP connection during its long poll).
    fn connections(&self) -> usize {
        usize::MAX
    }
}

/// Timing settings of the watch loop.
#[derive(Clone, Debug)]
pub struct Pace {
    /// The `wait` sent with blocking queries.
    pub wait: Duration,
    pub retry: Retry,
}

/// What one reply means for the blocking loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// New data (or the first read): record it, block on the new index.
    Apply,
    /// Same index: nothing changed.
    Same,
    /// The index went backwards: drop the reply, read again from 0.
    Reset,
}

/// The index to send with the next request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    index: u64,
}

impl Cursor {
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes in the `X-Consul-Index` of a reply (already at least 1).
    pub fn observe(&mut self, got: u64) -> Step {
        let got = got.max(1);
        if self.index == 0 {
            self.index = got;
            Step::Apply
        } else if got < self.index {
            self.index = 0;
            Step::Reset
        } else if got == self.index {
            Step::Same
        } else {
            self.index = got;
            Step::Apply
        }
    }

    /// After a failure: the agent may have restarted, so read without blocking next.
    pub fn reset(&mut self) {
        self.index = 0;
    }
}

/// Decides how long to pause before the next request.
#[derive(Debug)]
pub struct Pacer {
    wait: Duration,
    errors: Backoff,
    anomalies: Backoff,
}

impl Pacer {
    pub fn new(pace: &Pace) -> Pacer {
        let errors = Backoff::new(pace.retry.base, pace.retry.max).unwrap_or_else(|_| {
            // The config rejects such bounds; fall back rather than fail a running watch.
            Backoff::new(Duration::from_millis(250), Duration::from_secs(30))
                .expect("constant bounds are valid")
        });
        let anomalies = Backoff::new(MIN_SPACING, pace.retry.max.max(MIN_SPACING))
            .expect("max is at least MIN_SPACING");
        Pacer {
            wait: pace.wait,
            errors,
            anomalies,
        }
    }

    /// After a reply to a request sent with index `asked` that took `elapsed`.
    pub fn after_reply(&mut self, asked: u64, step: Step, elapsed: Duration) -> Duration {
        self.errors.reset();
        match step {
            // A real change on a blocking read: ask again at once, or the next change waits.
            Step::Apply if asked > 0 => {
                self.anomalies.reset();
                Duration::ZERO
            }
            // The answer to a non-blocking read: block next; no pause needed.
            Step::Apply => Duration::ZERO,
            // The wait ran out with nothing new: the normal idle cycle (or a server with a
            // shorter `max_query_time`).
            Step::Same if elapsed >= EARLY.min(self.wait / 2) => {
                self.anomalies.reset();
                Duration::ZERO
            }
            // Returned early with nothing new, or the index went backwards: never hot-loop.
            Step::Same | Step::Reset => self
                .anomalies
                .next_delay()
                .max(MIN_SPACING.saturating_sub(elapsed)),
        }
    }

    /// After a reply to a query Consul cannot block on: the next read is a poll.
    pub fn after_poll(&mut self) -> Duration {
        self.errors.reset();
        NON_BLOCKING_INTERVAL
    }

    /// After a failed request.
    pub fn after_error(&mut self) -> Duration {
        self.errors.next_delay()
    }
}

/// Which queries are failing, so the store's health changes (and is logged) once per
/// change of state of the whole backend, not once per query or per retry.
pub struct Outage {
    catalog: String,
    failing: Mutex<BTreeSet<Query>>,
    /// Fired when a failing query gets a reply: the agent is back, so the other failing
    /// watches try again at once instead of sleeping out their backoff (each has its own, up
    /// to 30 s, and the status would say "unreachable" meanwhile).
    back: tokio::sync::Notify,
}

impl Outage {
    pub fn new(catalog: String) -> Outage {
        Outage {
            catalog,
            failing: Mutex::new(BTreeSet::new()),
            back: tokio::sync::Notify::new(),
        }
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, BTreeSet<Query>> {
        lock(&self.failing)
    }

    /// A reply arrived for `query`.
    pub fn ok(&self, store: &Store, query: &Query) {
        let mut failing = self.failing();
        let recovered = failing.remove(query);
        if recovered {
            debug!(%query, "consul watch recovered");
            if !failing.is_empty() {
                self.back.notify_waiters();
            }
        }
        // Lock order: this set, then the store's lock (the store never calls back).
        if failing.is_empty() && store.set_health(Health::Healthy) && recovered {
            info!(catalog = %self.catalog, "consul is reachable again");
        }
    }

    /// A request for `query` failed.
    pub fn failed(&self, store: &Store, query: &Query, err: &CatalogError) {
        let mut failing = self.failing();
        if !failing.insert(query.clone()) {
            debug!(%query, error = %err, "consul watch still failing");
            // `rewire status` shows the latest error (the outage's start time stays).
            store.set_health(Health::Unreachable(err.to_string()));
            return;
        }
        if matches!(err, CatalogError::Unreachable { .. }) {
            debug!(%query, error = %err, "consul watch failing");
        } else {
            // Not an outage but something about this query (or the token): say so per query.
            warn!(%query, error = %err, "consul watch failing; keeping its last data and retrying");
        }
        // A refused token or request was said above; "unavailable" is for an outage only.
        if failing.len() == 1
            && store.set_health(Health::Unreachable(err.to_string()))
            && matches!(err, CatalogError::Unreachable { .. })
        {
            if store.snapshot().get(query).is_some() {
                warn!(catalog = %self.catalog, error = %err, "consul unavailable; keeping the last data and retrying");
            } else {
                warn!(catalog = %self.catalog, error = %err, "consul unavailable; nothing read yet: templates wait for it, retrying");
            }
        }
    }

    /// `query` is no longer watched.
    pub fn forget(&self, store: &Store, query: &Query) {
        let mut failing = self.failing();
        if failing.remove(query) && failing.is_empty() && store.set_health(Health::Healthy) {
            debug!(catalog = %self.catalog, "no failing consul watches left");
        }
    }
}

/// Keeps `query` current in `store` until `stop` fires.
pub async fn watch_one<S: Source>(
    source: Arc<S>,
    query: Query,
    store: Arc<Store>,
    outage: Arc<Outage>,
    pace: Pace,
    stop: CancellationToken,
) {
    let mut cursor = Cursor::default();
    let mut pacer = Pacer::new(&pace);
    loop {
        let asked = cursor.index();
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = source.read(&query, asked) => r,
        };
        let failed = result.is_err();
        let pause = match result {
            // Nothing to block on (the datacenter list): read it again after a while.
            Ok(reply) if !query.blocks() => {
                outage.ok(&store, &query);
                if store.update(query.clone(), reply.data) {
                    debug!(%query, "consul data changed");
                }
                pacer.after_poll()
            }
            Ok(reply) => {
                outage.ok(&store, &query);
                let step = cursor.observe(reply.index);
                match step {
                    Step::Apply => {
                        if store.update(query.clone(), reply.data) {
                            debug!(%query, index = reply.index, "consul data changed");
                            // Let the woken runners go first: asking again can wait, the file
                            // is what somebody is waiting for.
                            tokio::task::yield_now().await;
                        }
                    }
                    Step::Reset => {
                        store.answered();
                        info!(%query, was = asked, now = reply.index, "consul index went backwards; reading afresh");
                    }
                    Step::Same => store.answered(),
                }
                pacer.after_reply(asked, step, started.elapsed())
            }
            Err(err) => {
                store.failed();
                outage.failed(&store, &query, &err);
                cursor.reset();
                pacer.after_error()
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
                () = outage.back.notified(), if failed => {}
            }
        }
    }
    outage.forget(&store, &query);
}

/// Runs one [`watch_one`] per query in `wanted`, starting and stopping them as it changes,
/// until `stop` fires. Data of a query nobody wants any more is dropped from the store: it
/// is no longer kept current, so it must not look current.
pub async fn reconcile<S: Source>(
    source: Arc<S>,
    mut wanted: watch::Receiver<BTreeSet<Query>>,
    store: Arc<Store>,
    stop: CancellationToken,
    pace: Pace,
    catalog: String,
) {
    let outage = Arc::new(Outage::new(catalog));
    let mut running: HashMap<Query, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    let mut warned = false;
    loop {
        let set = wanted.borrow_and_update().clone();

        let gone: Vec<Query> = running
            .keys()
            .filter(|q| !set.contains(*q))
            .cloned()
            .collect();
        for q in &gone {
            if let Some((token, task)) = running.remove(q) {
                token.cancel();
                // Wait for the task, so that it cannot write the store after `forget`.
                join(q, task).await;
                debug!(query = %q, "stopped watching");
            }
        }
        if !gone.is_empty() {
            store.forget(&gone);
        }
        for q in set {
            if running.contains_key(&q) {
                continue;
            }
            debug!(query = %q, "watching");
            let token = stop.child_token();
            // Tracked by its handle: awaited when the query goes (so it cannot write the store
            // after `forget`) and when the watch stops.
            let task = tokio::spawn(watch_one(
                source.clone(),
                q.clone(),
                store.clone(),
                outage.clone(),
                pace.clone(),
                token.clone(),
            ));
            running.insert(q, (token, task));
        }

        let connections = source.connections();
        if running.len() > connections && !warned {
            // Each slot turns over every SHARED_WAIT at most: a query's turn comes back after
            // about queries / connections of those.
            let late =
                super::agent::SHARED_WAIT.as_secs() as usize * running.len().div_ceil(connections);
            warn!(
                queries = running.len(),
                "more than {connections} distinct consul queries: they take turns on \
                 {connections} connections ([catalog] max_connections; Consul accepts 200 per \
                 client IP by default, limits.http_max_conns_per_client), so a change is seen \
                 up to ~{late}s late: backends must drain for longer than that before they \
                 stop, or raise both limits"
            );
            warned = true;
        } else if running.len() <= connections {
            warned = false;
        }

        tokio::select! {
            () = stop.cancelled() => break,
            changed = wanted.changed() => {
                if changed.is_err() {
                    // Nobody will change the set again: keep what runs until the stop.
                    stop.cancelled().await;
                    break;
                }
            }
        }
    }
    for (q, (token, task)) in running {
        token.cancel();
        join(&q, task).await;
    }
}

async fn join(query: &Query, task: JoinHandle<()>) {
    if let Err(e) = task.await
        && e.is_panic()
    {
        error!(%query, "consul watch task panicked; please report this as a rewire bug");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::model::Data;

    fn pace() -> Pace {
        Pace {
            wait: Duration::from_secs(60),
            retry: Retry {
                base: Duration::from_millis(250),
                max: Duration::from_secs(30),
            },
        }
    }

    fn unreachable() -> CatalogError {
        CatalogError::Unreachable {
            backend: "consul".into(),
            detail: "connection refused".into(),
        }
    }

    fn key(v: &str) -> Data {
        Data::Key(Some(v.to_string()))
    }

    /// One scripted reply: how long the "agent" holds the request, then what it answers.
    type Scripted = (Duration, Result<Reply, CatalogError>);

    /// A fake agent: answers from a script, then (script exhausted) holds every request for
    /// the full wait and returns the last index, as an idle Consul does.
    struct Fake {
        script: Mutex<VecDeque<Scripted>>,
        /// (virtual time, index asked) of every request.
        calls: Mutex<Vec<(Instant, u64)>>,
        idle: Mutex<Reply>,
        idle_hold: Duration,
    }

    impl Fake {
        fn new(script: Vec<Scripted>, idle: Reply) -> Arc<Fake> {
            Arc::new(Fake {
                script: Mutex::new(script.into()),
                calls: Mutex::new(Vec::new()),
                idle: Mutex::new(idle),
                idle_hold: Duration::from_secs(60),
            })
        }

        fn asked(&self) -> Vec<u64> {
            self.calls.lock().unwrap().iter().map(|c| c.1).collect()
        }

        fn calls(&self) -> usize {
            self.calls.lock().unwrap().len()
        }
    }

    impl Source for Fake {
        fn read(
            &self,
            _query: &Query,
            index: u64,
        ) -> impl Future<Output = Result<Reply, CatalogError>> + Send {
            self.calls.lock().unwrap().push((Instant::now(), index));
            let next = self.script.lock().unwrap().pop_front();
            let (hold, result) = match next {
                Some(s) => s,
                None => {
                    let idle = self.idle.lock().unwrap().clone();
                    let hold = if index == 0 {
                        Duration::ZERO
                    } else {
                        self.idle_hold
                    };
                    (hold, Ok(idle))
                }
            };
            if let Ok(r) = &result {
                *self.idle.lock().unwrap() = r.clone();
            }
            async move {
                tokio::time::sleep(hold).await;
                result
            }
        }
    }

    fn reply(index: u64, data: Data) -> Result<Reply, CatalogError> {
        Ok(Reply { index, data })
    }

    async fn run_for(fake: &Arc<Fake>, store: &Arc<Store>, q: &Query, d: Duration) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_one(
            fake.clone(),
            q.clone(),
            store.clone(),
            Arc::new(Outage::new("consul test".into())),
            pace(),
            stop.clone(),
        ));
        tokio::time::sleep(d).await;
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn cursor_follows_consul_index_rules() {
        let mut c = Cursor::default();
        assert_eq!(c.observe(10), Step::Apply);
        assert_eq!(c.index(), 10);
        assert_eq!(c.observe(10), Step::Same);
        assert_eq!(c.observe(12), Step::Apply);
        assert_eq!(c.observe(3), Step::Reset, "backwards");
        assert_eq!(c.index(), 0);
        assert_eq!(c.observe(3), Step::Apply);
        c.reset();
        assert_eq!(c.index(), 0);
        assert_eq!(c.observe(0), Step::Apply, "0 counts as 1");
        assert_eq!(c.index(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn same_index_returned_at_once_does_not_hot_loop() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        // A broken agent: answers every request at once with the same index.
        let mut fake = Fake::new(
            vec![],
            Reply {
                index: 7,
                data: key("v"),
            },
        );
        Arc::get_mut(&mut fake).unwrap().idle_hold = Duration::ZERO;
        run_for(&fake, &store, &q, Duration::from_secs(120)).await;
        let calls = fake.calls();
        // 100 ms doubling to 30 s (with jitter down to half): about a dozen requests in 2
        // minutes; a hot loop would make millions.
        assert!((5..=25).contains(&calls), "{calls} requests in 120 s");
        let times: Vec<Instant> = fake.calls.lock().unwrap().iter().map(|c| c.0).collect();
        for pair in times.windows(2).skip(1) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(50), "{pair:?}");
        }
        assert_eq!(store.snapshot().get(&q).unwrap().data, key("v"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_datacenter_list_is_read_again_every_interval_and_each_answer_counts() {
        let q = Query::Datacenters;
        let store = Arc::new(Store::new());
        let dcs = |l: &[&str]| Data::Datacenters(l.iter().map(|d| d.to_string()).collect());
        // Consul sends no index with this list: every answer has index 0.
        let mut fake = Fake::new(
            vec![
                (Duration::ZERO, reply(0, dcs(&["dc1"]))),
                (Duration::ZERO, reply(0, dcs(&["dc1"]))),
                (Duration::ZERO, reply(0, dcs(&["dc1", "dc2"]))),
            ],
            Reply {
                index: 0,
                data: dcs(&["dc1", "dc2"]),
            },
        );
        Arc::get_mut(&mut fake).unwrap().idle_hold = Duration::ZERO;
        run_for(
            &fake,
            &store,
            &q,
            NON_BLOCKING_INTERVAL * 3 + Duration::from_secs(1),
        )
        .await;
        // Reads at 0, 15, 30 and 45 s, never blocking (index 0), and no faster.
        assert_eq!(fake.asked(), [0, 0, 0, 0]);
        assert_eq!(store.snapshot().get(&q).unwrap().data, dcs(&["dc1", "dc2"]));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_fetched_at_once_and_idle_polls_cost_one_request_per_wait() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        let fake = Fake::new(
            vec![
                (Duration::ZERO, reply(5, key("a"))),
                (Duration::from_millis(10), reply(6, key("b"))),
                (Duration::from_millis(10), reply(7, key("c"))),
            ],
            Reply {
                index: 0,
                data: key(""),
            },
        );
        run_for(&fake, &store, &q, Duration::from_secs(175)).await;
        // 3 scripted, then one every 60 s (each the full wait).
        assert_eq!(fake.asked(), [0, 5, 6, 7, 7, 7]);
        let times: Vec<Instant> = fake.calls.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(
            times[3] - times[1],
            Duration::from_millis(20),
            "no pause after a change"
        );
        assert_eq!(store.snapshot().get(&q).unwrap().data, key("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_capping_the_wait_is_not_paced() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        // `max_query_time = "5s"` on the server: every blocking read returns after 5 s.
        let mut fake = Fake::new(
            vec![],
            Reply {
                index: 7,
                data: key("v"),
            },
        );
        Arc::get_mut(&mut fake).unwrap().idle_hold = Duration::from_secs(5);
        run_for(&fake, &store, &q, Duration::from_millis(30_500)).await;
        let times: Vec<Instant> = fake.calls.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(times.len(), 8, "one read at once, then one per 5 s");
        for pair in times[1..].windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_secs(5));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_index_is_not_a_change() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        // Same index with a different body (agent shutting down): ignored.
        let fake = Fake::new(
            vec![
                (Duration::ZERO, reply(5, key("a"))),
                (Duration::from_secs(60), reply(5, key("stale"))),
            ],
            Reply {
                index: 5,
                data: key("a"),
            },
        );
        run_for(&fake, &store, &q, Duration::from_secs(90)).await;
        assert_eq!(store.snapshot().get(&q).unwrap().data, key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn index_going_backwards_resets_to_zero() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        let fake = Fake::new(
            vec![
                (Duration::ZERO, reply(10, key("a"))),
                (Duration::from_millis(5), reply(12, key("b"))),
                (Duration::from_millis(5), reply(3, key("dropped"))),
                (Duration::ZERO, reply(3, key("c"))),
            ],
            Reply {
                index: 3,
                data: key("c"),
            },
        );
        run_for(&fake, &store, &q, Duration::from_secs(30)).await;
        assert_eq!(fake.asked(), [0, 10, 12, 0, 3]);
        assert_eq!(store.snapshot().get(&q).unwrap().data, key("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn outage_keeps_data_backs_off_and_recovers_with_a_fresh_read() {
        let q = Query::Key("k".into());
        let store = Arc::new(Store::new());
        let mut script = vec![(Duration::ZERO, reply(40, key("a")))];
        for _ in 0..8 {
            script.push((Duration::ZERO, Err(unreachable())));
        }
        // The restarted agent counts from a low index again.
        script.push((Duration::ZERO, reply(4, key("b"))));
        let fake = Fake::new(
            script,
            Reply {
                index: 4,
                data: key("b"),
            },
        );

        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_one(
            fake.clone(),
            q.clone(),
            store.clone(),
            Arc::new(Outage::new("consul test".into())),
            pace(),
            stop.clone(),
        ));
        // During the outage: last data kept, health reported.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let snap = store.snapshot();
        assert_eq!(snap.get(&q).unwrap().data, key("a"));
        assert!(
            matches!(snap.health, Health::Unreachable(_)),
            "{:?}",
            snap.health
        );

        tokio::time::sleep(Duration::from_secs(120)).await;
        let snap = store.snapshot();
        assert_eq!(snap.get(&q).unwrap().data, key("b"));
        assert_eq!(snap.health, Health::Healthy);
        stop.cancel();
        task.await.unwrap();

        let asked = fake.asked();
        // Every retry and the recovery read go without an index: no full-wait block on a
        // restarted agent.
        assert_eq!(&asked[..10], &[0, 40, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Backoff: 8 failures spread over seconds (250 ms doubling, jittered), not a storm.
        let times: Vec<Instant> = fake.calls.lock().unwrap().iter().map(|c| c.0).collect();
        let outage = times[9] - times[1];
        assert!(outage >= Duration::from_secs(15), "{outage:?}");
        for pair in times[1..10].windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(125), "{pair:?}");
        }
    }

    #[test]
    fn health_changes_once_per_state_for_many_queries() {
        let store = Arc::new(Store::new());
        let outage = Outage::new("c".into());
        let a = Query::Key("a".into());
        let b = Query::Key("b".into());
        outage.ok(&store, &a);
        assert_eq!(store.snapshot().health, Health::Healthy);
        outage.failed(&store, &a, &unreachable());
        outage.failed(&store, &b, &unreachable());
        assert!(matches!(store.snapshot().health, Health::Unreachable(_)));
        outage.ok(&store, &a);
        assert!(
            matches!(store.snapshot().health, Health::Unreachable(_)),
            "b still fails"
        );
        outage.forget(&store, &b);
        assert_eq!(store.snapshot().health, Health::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_starts_new_queries_and_stops_gone_ones() {
        struct PerQuery {
            calls: Mutex<Vec<(Query, u64)>>,
        }
        impl Source for PerQuery {
            fn read(
                &self,
                query: &Query,
                index: u64,
            ) -> impl Future<Output = Result<Reply, CatalogError>> + Send {
                self.calls.lock().unwrap().push((query.clone(), index));
                let data = Data::Key(Some(query.to_string()));
                async move {
                    if index > 0 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Ok(Reply { index: 1, data })
                }
            }
        }
        let source = Arc::new(PerQuery {
            calls: Mutex::new(Vec::new()),
        });
        let store = Arc::new(Store::new());
        let a = Query::Key("a".into());
        let b = Query::Key("b".into());
        let (tx, rx) = watch::channel(BTreeSet::from([a.clone()]));
        let stop = CancellationToken::new();
        let task = tokio::spawn(reconcile(
            source.clone(),
            rx,
            store.clone(),
            stop.clone(),
            pace(),
            "c".into(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(store.snapshot().get(&a).is_some());

        tx.send_replace(BTreeSet::from([a.clone(), b.clone()]));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(store.snapshot().get(&b).is_some());

        tx.send_replace(BTreeSet::from([b.clone()]));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(store.snapshot().get(&a).is_none(), "gone query forgotten");
        assert!(store.snapshot().get(&b).is_some());

        stop.cancel();
        task.await.unwrap();
        let calls = source.calls.lock().unwrap().clone();
        // One watch per query: `a` was read once and blocked once, never restarted when `b`
        // came along.
        let a_calls: Vec<u64> = calls.iter().filter(|c| c.0 == a).map(|c| c.1).collect();
        assert_eq!(a_calls, [0, 1]);
    }
}
