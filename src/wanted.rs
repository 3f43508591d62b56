//! The set of queries the catalog must keep current, and who wants each one.
//!
//! Every template group and every `[[watch]]` holds an [`Owner`] handle and says, after each
//! render, which queries it used. [`Wanted`] folds them into one set, published on a `watch`
//! channel that the catalog's watch task follows (start the new, stop the gone). A query that
//! no owner uses any more lingers for a few seconds before its watch stops, so a SIGHUP that
//! swaps every runner does not drop and re-open the watches the new runners need; then the
//! store forgets its data (it is no longer kept current, so it must not look current).
//!
//! Owner ids come from the `Wanted` they belong to, and a dropped `Owner` withdraws its
//! queries, so no caller has to invent ids or remember to clean up.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::model::Query;
use crate::store::Store;

/// How long a query nobody uses keeps its watch.
pub const LINGER: Duration = Duration::from_secs(5);

type Message = (u64, BTreeSet<Query>);

/// Hands out [`Owner`]s. Cheap to clone.
#[derive(Clone)]
pub struct Wanted {
    tx: mpsc::UnboundedSender<Message>,
    next: Arc<AtomicU64>,
}

/// One owner's say in the wanted set. Dropping it withdraws its queries.
pub struct Owner {
    id: u64,
    tx: mpsc::UnboundedSender<Message>,
}

/// The task that folds every owner's queries into the published set (see [`Collector::run`]).
pub struct Collector {
    rx: mpsc::UnboundedReceiver<Message>,
    wanted: watch::Sender<BTreeSet<Query>>,
    store: Arc<Store>,
}

impl Wanted {
    /// `wanted` receives the union of every owner's queries; queries dropped from it are also
    /// forgotten by `store`. The returned [`Collector`] must run for anything to happen.
    pub fn new(wanted: watch::Sender<BTreeSet<Query>>, store: Arc<Store>) -> (Wanted, Collector) {
        let (tx, rx) = mpsc::unbounded_channel();
        let collector = Collector { rx, wanted, store };
        let wanted = Wanted {
            tx,
            next: Arc::new(AtomicU64::new(1)),
        };
        (wanted, collector)
    }

    /// A new owner, with nothing wanted yet.
    pub fn owner(&self) -> Owner {
        Owner {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            tx: self.tx.clone(),
        }
    }
}

impl Owner {
    /// Replaces what this owner wants.
    pub fn set(&self, queries: BTreeSet<Query>) {
        // The collector is gone only when the daemon stops: nothing left to tell.
        let _ = self.tx.send((self.id, queries));
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.tx.send((self.id, BTreeSet::new()));
    }
}

impl Collector {
    /// Runs until `stop` fires or every [`Wanted`] and [`Owner`] is gone.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut by_owner: HashMap<u64, BTreeSet<Query>> = HashMap::new();
        let mut lingering: HashMap<Query, Instant> = HashMap::new();
        loop {
            let next_expiry = lingering.values().min().map(|at| *at + LINGER);
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = self.rx.recv() => {
                    let Some(first) = msg else { return };
                    // Apply everything queued, so a burst of renders publishes once.
                    let mut batch = vec![first];
                    while let Ok(more) = self.rx.try_recv() {
                        batch.push(more);
                    }
                    for (owner, queries) in batch {
                        if queries.is_empty() {
                            by_owner.remove(&owner);
                        } else {
                            by_owner.insert(owner, queries);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(next_expiry.expect("guarded")).await }, if next_expiry.is_some() => {}
            }
            // Elections are published by this process's candidates, not watched in the catalog.
            let used: BTreeSet<Query> = by_owner
                .values()
                .flatten()
                .filter(|q| q.is_catalog())
                .cloned()
                .collect();
            let now = Instant::now();
            for q in self.wanted.borrow().iter() {
                if !used.contains(q) {
                    lingering.entry(q.clone()).or_insert(now);
                }
            }
            lingering.retain(|q, _| !used.contains(q));
            let expired: Vec<Query> = lingering
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= LINGER)
                .map(|(q, _)| q.clone())
                .collect();
            for q in &expired {
                lingering.remove(q);
            }
            let mut next: BTreeSet<Query> = used;
            next.extend(lingering.keys().cloned());
            if *self.wanted.borrow() != next {
                debug!(queries = next.len(), "watch set changed");
                self.wanted.send_replace(next);
            }
            if !expired.is_empty() {
                debug!(
                    count = expired.len(),
                    "stopped watching queries no template uses"
                );
                self.store.forget(&expired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unused_queries_linger_then_leave_the_watch_set() {
        let store = Arc::new(Store::new());
        let (wtx, mut wrx) = watch::channel(BTreeSet::new());
        let stop = CancellationToken::new();
        let (wanted, collector) = Wanted::new(wtx, store);
        let _task = tokio::spawn(collector.run(stop.clone()));
        let web = Query::Service("web".into());
        let db = Query::Service("db".into());
        let first = wanted.owner();
        let second = wanted.owner();
        first.set(BTreeSet::from([web.clone()]));
        second.set(BTreeSet::from([web.clone(), db.clone()]));
        wrx.changed().await.unwrap();
        assert_eq!(
            *wrx.borrow_and_update(),
            BTreeSet::from([web.clone(), db.clone()])
        );
        drop(second);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(wrx.borrow().contains(&db), "db lingers");
        tokio::time::sleep(LINGER).await;
        assert_eq!(*wrx.borrow(), BTreeSet::from([web.clone()]));
        stop.cancel();
    }

    #[test]
    fn owners_of_one_wanted_set_get_distinct_ids() {
        let (wtx, _wrx) = watch::channel(BTreeSet::new());
        let (wanted, _collector) = Wanted::new(wtx, Arc::new(Store::new()));
        let (a, b) = (wanted.owner(), wanted.clone().owner());
        assert_ne!(a.id, b.id);
    }
}
