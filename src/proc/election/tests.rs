//! The candidate under tokio's paused clock, against an in-memory ballot.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::candidate::Candidate;
use super::{Context, RETRY, ValueSource, margin};
use crate::catalog::CatalogError;
use crate::catalog::election::{Ballot, Sight};
use crate::config::LeaderValueSpec;
use crate::config::{ElectionConfig, Gate};
use crate::model::{Data, ElectionView, Holder, LeaderValue, Query};
use crate::proc::health;
use crate::status::{Board, ElectionStatus};
use crate::store::Store;

/// An in-memory catalog for one election: a lock, a token counter and a view of it.
#[derive(Default)]
struct Fake {
    holder: Mutex<Option<Holder>>,
    tokens: Mutex<u64>,
    seen: Mutex<Option<watch::Sender<Sight>>>,
    /// Renewals never answer (a partition).
    cut: AtomicBool,
    /// Campaigns fail (a file in the catalog rewire refuses to use).
    refuse: AtomicBool,
    resigned: AtomicU32,
}

impl Fake {
    fn tell(&self) {
        let sight = match &*self.holder.lock().unwrap() {
            Some(h) => Sight::Held(h.clone()),
            None => Sight::Vacant,
        };
        if let Some(tx) = &*self.seen.lock().unwrap() {
            tx.send_replace(sight);
        }
    }
}

#[async_trait]
impl Ballot for Fake {
    async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(CatalogError::Io {
                path: "elections/primary/token".into(),
                source: std::io::Error::other("a symlink leads out of the catalog"),
            });
        }
        let won = {
            let mut h = self.holder.lock().unwrap();
            if h.is_some() {
                None
            } else {
                let mut t = self.tokens.lock().unwrap();
                *t += 1;
                *h = Some(Holder {
                    value: value.clone(),
                    token: *t,
                });
                Some(*t)
            }
        };
        self.tell();
        Ok(won)
    }
    async fn renew(&self) -> Result<bool, CatalogError> {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        Ok(self.holder.lock().unwrap().is_some())
    }
    async fn resign(&self) -> Result<(), CatalogError> {
        self.resigned.fetch_add(1, Ordering::SeqCst);
        if !self.cut.load(Ordering::SeqCst) {
            *self.holder.lock().unwrap() = None;
            self.tell();
        }
        Ok(())
    }
    async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken) {
        *self.seen.lock().unwrap() = Some(sight);
        self.tell();
        stop.cancelled().await;
    }
}

fn election(gate: Option<Gate>) -> ElectionConfig {
    ElectionConfig {
        name: "primary".into(),
        ttl: Duration::from_secs(3),
        lock_delay: Duration::ZERO,
        value: LeaderValueSpec {
            id: Some("me".into()),
            address: Some(crate::config::AddressSpec::Literal("10.0.0.1".into())),
            port: Some(6379),
        },
        gate,
        on_elected: None,
        on_demoted: None,
        on_change: None,
    }
}

struct Harness {
    fake: Arc<Fake>,
    board: Arc<Board>,
    store: Arc<Store>,
    health: health::Registry,
    stop: CancellationToken,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start(cfg: ElectionConfig) -> Harness {
    start_with(Fake::default(), cfg)
}

fn start_with(fake: Fake, cfg: ElectionConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(fake);
    let store = Arc::new(Store::new());
    let health = health::Registry::default();
    let board = Arc::new(Board::new(1, "c".into(), "dir".into()));
    let ctx = Context {
        catalog: Arc::new(crate::catalog::dir::DirCatalog::new(dir.path())),
        store: store.clone(),
        board: board.clone(),
        env: BTreeMap::new(),
        health: health.clone(),
    };
    let candidate = Candidate {
        source: ValueSource::new(&cfg, &[]),
        cfg,
        ballot: fake.clone(),
        ctx,
        status: ElectionStatus::default(),
        published: None,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(candidate.run(stop.clone()));
    Harness {
        fake,
        board,
        store,
        health,
        stop,
        task,
        _dir: dir,
    }
}

fn view(store: &Store) -> Option<ElectionView> {
    match &store
        .snapshot()
        .get(&Query::Election("primary".into()))?
        .data
    {
        Data::Election(v) => Some(v.clone()),
        _ => None,
    }
}

fn is_leader(store: &Store) -> bool {
    view(store).is_some_and(|v| v.is_leader)
}

#[tokio::test(start_paused = true)]
async fn a_holder_cut_off_from_the_catalog_demotes_itself_before_its_ttl_ends() {
    let h = start(election(None));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(is_leader(&h.store), "{:?}", view(&h.store));
    assert_eq!(view(&h.store).unwrap().holder.unwrap().token, 1);
    // Renewals work for a while: the term goes on past one ttl.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(is_leader(&h.store));
    // Then the catalog stops answering. The last renewal was sent within ttl/3 before
    // the cut, so the deadline (ttl - margin after it) comes within ttl - margin.
    h.fake.cut.store(true, Ordering::SeqCst);
    // The follower cannot read either.
    if let Some(tx) = &*h.fake.seen.lock().unwrap() {
        tx.send_replace(Sight::Unknown);
    }
    let cut = Instant::now();
    while is_leader(&h.store) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = cut.elapsed();
    let ttl = Duration::from_secs(3);
    assert!(
        took <= ttl - margin(ttl) + Duration::from_millis(20),
        "{took:?}"
    );
    assert!(took >= ttl - margin(ttl) - ttl / 3, "{took:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        h.fake.resigned.load(Ordering::SeqCst) >= 1,
        "it tries to release"
    );
    h.stop.cancel();
    h.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn only_a_healthy_candidate_runs_and_a_failing_holder_steps_down() {
    gated_by(Gate::Service("redis".into()), health::service_key("redis")).await;
}

#[tokio::test(start_paused = true)]
async fn a_jobs_health_gates_like_a_services() {
    gated_by(Gate::Job("db".into()), health::job_key("db")).await;
}

async fn gated_by(gate: Gate, key: String) {
    let h = start(election(Some(gate)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        view(&h.store),
        Some(ElectionView::default()),
        "vacant, and not run for before the first check"
    );
    h.health.report(&key, true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(is_leader(&h.store));
    // One failure is not enough; two in a row are.
    h.health.report(&key, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(is_leader(&h.store));
    h.health.report(&key, false);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!is_leader(&h.store));
    assert_eq!(view(&h.store).unwrap().holder, None, "released");
    // Healthy again: it waits a ttl before running, then wins a new, higher token.
    h.health.report(&key, true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!is_leader(&h.store));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = view(&h.store).unwrap();
    assert!(v.is_leader);
    assert_eq!(v.holder.unwrap().token, 2);
    h.stop.cancel();
    h.task.await.unwrap();
    assert!(
        h.fake.holder.lock().unwrap().is_none(),
        "stopping releases the election"
    );
}

#[tokio::test(start_paused = true)]
async fn a_newer_term_seen_in_the_catalog_demotes_at_once() {
    let h = start(election(None));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(is_leader(&h.store));
    // Someone else holds a newer term (the old one expired while this process slept).
    *h.fake.holder.lock().unwrap() = Some(Holder {
        value: LeaderValue {
            id: "other".into(),
            address: "10.0.0.2".into(),
            port: None,
        },
        token: 9,
    });
    h.fake.cut.store(true, Ordering::SeqCst);
    h.fake.tell();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let v = view(&h.store).unwrap();
    assert!(!v.is_leader);
    assert_eq!(v.holder.unwrap().value.id, "other");
    h.stop.cancel();
    h.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_campaign_that_keeps_failing_is_shown_until_it_passes() {
    let fake = Fake::default();
    fake.refuse.store(true, Ordering::SeqCst);
    let h = start_with(fake, election(None));
    let detail = |h: &Harness| {
        h.board
            .report()
            .elections
            .get("primary")
            .map(|e| e.detail.clone())
            .unwrap_or_default()
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!is_leader(&h.store));
    assert!(
        detail(&h).starts_with("cannot run for leader: ") && detail(&h).contains("symlink"),
        "{}",
        detail(&h)
    );
    h.fake.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(RETRY * 2).await;
    assert!(is_leader(&h.store), "{:?}", view(&h.store));
    assert!(
        !detail(&h).starts_with("cannot run for leader"),
        "{}",
        detail(&h)
    );
    h.stop.cancel();
    h.task.await.unwrap();
}
