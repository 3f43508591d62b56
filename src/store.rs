//! The latest catalog data per query, published as immutable snapshots.
//!
//! Watchers write here; the runner and the template functions only read. Every update is
//! normalized and compared with what the store already holds, so a catalog answer that changes
//! nothing (a Consul index that moved with identical data, a file rewritten with the same bytes)
//! never wakes a template. A snapshot is an `Arc`: readers clone it and let go of the lock at once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::lock::lock;
use crate::model::{Data, Query};

/// One query's answer and the store version at which it last changed.
#[derive(Debug)]
pub struct Entry {
    pub data: Data,
    pub version: u64,
    /// When this answer arrived in the store: where the change-to-write reaction time starts.
    pub arrived: std::time::Instant,
    /// A form of `data` derived at most once per entry by whoever reads it: the template engine
    /// keeps its converted values here. The store only carries the slot (and asks whether it
    /// is filled), so it knows nothing of what goes in.
    pub derived: Derived,
    /// The entry this one replaced, while its converted value may still be reused: when one
    /// of 1 000 instances changes, the other 999 keep their converted values. Taken (and so
    /// dropped) by the first conversion; never longer than one link.
    pub previous: Mutex<Option<Arc<Entry>>>,
}

impl Entry {
    /// Takes the previous entry for value reuse (see `previous`).
    pub fn take_previous(&self) -> Option<Arc<Entry>> {
        lock(&self.previous).take()
    }
}

/// A slot for a value derived from an entry's data (see [`Entry::derived`]).
pub type Derived = OnceLock<Box<dyn Any + Send + Sync>>;

/// Whether the catalog is reachable, as the watchers last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Unreachable(String),
}

/// An immutable view of the store.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped on every change of data.
    pub version: u64,
    pub entries: HashMap<Query, Arc<Entry>>,
    pub health: Health,
}

impl Snapshot {
    pub fn get(&self, q: &Query) -> Option<&Arc<Entry>> {
        self.entries.get(q)
    }
}

pub struct Store {
    current: Mutex<Arc<Snapshot>>,
    tx: watch::Sender<Arc<Snapshot>>,
    contact: Mutex<Contact>,
}

/// How the catalog has been answering, for telemetry: counted as answers and failures
/// arrive, read (never polled) when someone asks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contact {
    /// Answers the catalog gave (a changed or unchanged result, a watch event).
    pub answers: u64,
    /// Answers that changed some query's data.
    pub changes: u64,
    /// Requests or watches that failed (each is retried after a backoff).
    pub failures: u64,
    /// When the catalog last answered.
    pub last_answer: Option<SystemTime>,
    /// When [`Snapshot::health`] last changed (the start of an outage, or of its end).
    pub health_since: Option<SystemTime>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Store {
        let first = Arc::new(Snapshot::default());
        let (tx, _) = watch::channel(first.clone());
        Store {
            current: Mutex::new(first),
            tx,
            contact: Mutex::new(Contact::default()),
        }
    }

    /// How the catalog has been answering (see [`Contact`]).
    pub fn contact(&self) -> Contact {
        lock(&self.contact).clone()
    }

    /// A request or watch failed; the backend retries it after its backoff.
    pub fn failed(&self) {
        lock(&self.contact).failures += 1;
    }

    /// The catalog answered without data for the store (e.g. a long poll that ran out).
    pub fn answered(&self) {
        let mut c = lock(&self.contact);
        c.answers += 1;
        c.last_answer = Some(SystemTime::now());
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current().clone()
    }

    /// A receiver that sees every new snapshot (latest value semantics).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Records one answer. Returns whether anything changed.
    pub fn update(&self, query: Query, data: Data) -> bool {
        self.update_many(std::iter::once((query, data)))
    }

    /// Records several answers and publishes once. Returns whether anything changed.
    pub fn update_many(&self, items: impl IntoIterator<Item = (Query, Data)>) -> bool {
        let changed = self.publish(items);
        let mut c = lock(&self.contact);
        c.answers += 1;
        c.changes += u64::from(changed);
        c.last_answer = Some(SystemTime::now());
        changed
    }

    fn publish(&self, items: impl IntoIterator<Item = (Query, Data)>) -> bool {
        let mut current = self.current();
        let version = current.version + 1;
        let mut changed: Vec<(Query, Arc<Entry>)> = Vec::new();
        for (query, data) in items {
            let data = data.normalize();
            if current.entries.get(&query).is_some_and(|e| e.data == data) {
                continue;
            }
            if let Some(pos) = changed.iter().position(|(q, _)| *q == query) {
                changed.remove(pos);
            }
            let previous = current.entries.get(&query).and_then(|old| {
                if old.derived.get().is_some() {
                    Some(old.clone())
                } else {
                    old.take_previous()
                }
            });
            let entry = Arc::new(Entry {
                data,
                version,
                arrived: std::time::Instant::now(),
                derived: OnceLock::new(),
                previous: Mutex::new(previous),
            });
            changed.push((query, entry));
        }
        if changed.is_empty() {
            return false;
        }
        let mut entries = current.entries.clone();
        entries.extend(changed);
        let next = Arc::new(Snapshot {
            version,
            entries,
            health: current.health.clone(),
        });
        *current = next.clone();
        // Marked before the send: a runner may wake (and mark) before send_replace returns.
        crate::timing::mark(crate::timing::stage::STORE_UPDATED);
        self.tx.send_replace(next);
        true
    }

    /// Drops queries nobody uses any more.
    pub fn forget(&self, queries: &[Query]) {
        let mut current = self.current();
        if !queries.iter().any(|q| current.entries.contains_key(q)) {
            return;
        }
        let mut entries = current.entries.clone();
        for q in queries {
            entries.remove(q);
        }
        let next = Arc::new(Snapshot {
            version: current.version + 1,
            entries,
            health: current.health.clone(),
        });
        *current = next.clone();
        self.tx.send_replace(next);
    }

    /// Records whether the catalog is reachable. Returns whether that is news, so callers log
    /// once per change of state rather than once per retry.
    pub fn set_health(&self, health: Health) -> bool {
        let mut current = self.current();
        if current.health == health {
            return false;
        }
        // A new message for the same outage keeps the time the outage began.
        let same_kind = std::mem::discriminant(&current.health) == std::mem::discriminant(&health);
        if !same_kind {
            let mut c = lock(&self.contact);
            c.health_since = Some(SystemTime::now());
            if health == Health::Healthy {
                c.last_answer = c.last_answer.max(c.health_since);
            }
        }
        let next = Arc::new(Snapshot {
            version: current.version,
            entries: current.entries.clone(),
            health,
        });
        *current = next.clone();
        self.tx.send_replace(next);
        true
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Arc<Snapshot>> {
        // A panic while holding this lock leaves a valid Arc behind: keep going.
        lock(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_error_for_the_same_outage_keeps_its_start() {
        let store = Store::new();
        assert!(store.set_health(Health::Unreachable("connection closed".into())));
        let since = store.contact().health_since;
        assert!(store.set_health(Health::Unreachable("connection refused".into())));
        assert_eq!(
            store.snapshot().health,
            Health::Unreachable("connection refused".into())
        );
        assert_eq!(store.contact().health_since, since);
        assert!(store.set_health(Health::Healthy));
        assert_ne!(store.contact().health_since, since);
    }

    #[test]
    fn equal_data_is_not_a_change() {
        let store = Store::new();
        let q = Query::Key("a".into());
        assert!(store.update(q.clone(), Data::Key(Some("1".into()))));
        let v = store.snapshot().version;
        assert!(!store.update(q.clone(), Data::Key(Some("1".into()))));
        assert_eq!(store.snapshot().version, v);
        assert!(store.update(q.clone(), Data::Key(Some("2".into()))));
        assert_eq!(store.snapshot().get(&q).unwrap().version, v + 1);
    }

    #[test]
    fn health_is_reported_once_per_state() {
        let store = Store::new();
        assert!(store.set_health(Health::Unreachable("down".into())));
        assert!(!store.set_health(Health::Unreachable("down".into())));
        assert!(store.set_health(Health::Healthy));
    }

    #[test]
    fn forget_removes_entries() {
        let store = Store::new();
        let q = Query::Services;
        store.update(q.clone(), Data::Services(vec![]));
        store.forget(std::slice::from_ref(&q));
        assert!(store.snapshot().get(&q).is_none());
    }
}
