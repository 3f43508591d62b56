//! `[[watch]]` handlers: run a command when a service's healthy instances change.
//!
//! A `[[watch]]` follows one service's *healthy* instances (passing, and carrying `tag` when
//! one is given) through the same store the templates read: it adds `Query::Service(name)` to
//! the catalog's watch set, so a service used by a template and a watch is watched once.
//!
//! `on_change` runs:
//! - once when the first answer arrives with instances, so the handler starts from the
//!   catalog's state; an empty first answer is no change (ContainerPilot compares with an
//!   empty list too: a handler such as `pkill -HUP app` would otherwise signal an app not
//!   started yet);
//! - then whenever the set of healthy instances changes, compared on address, port, tags and
//!   meta (a refreshed TTL, a new health note or a critical instance coming and going change
//!   nothing). Changes are coalesced with the watch's `wait` (the template quiescence rules:
//!   settle for `min`, never delay past `max`);
//! - never twice at once: a change during a run is handled after it, with the latest data.
//!
//! The handler gets the instance list as a JSON array on stdin, sorted by (address, port, id),
//! each `{"id", "name", "node", "address", "port", "tags", "meta", "status"}`, and the
//! environment `REWIRE_SERVICE=<name>` (plus `REWIRE_CONFIG`, `REWIRE_PID`,
//! `REWIRE_<SERVICE>_IP`). Its output goes to rewire's log under its name. Catalog data never
//! becomes an argument: it arrives on stdin only.
//!
//! SIGHUP replaces the watch tasks, but what must survive it lives in [`Slots`], created once
//! by the daemon: what each handler was last given (so an unchanged watch does not fire again
//! after a reload) and whether it is running (so a run that began before the reload still
//! blocks an overlapping one). Runs themselves belong to [`Runs`], not to the generation.
//!
//! Handlers keep running in maintenance mode, which only takes this container out of the
//! catalog.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Runs;
use crate::command;
use crate::config::{Config, WatchConfig};
use crate::debounce::{self, Debounce};
use crate::lock::lock;
use crate::model::{Data, Instance, Query, Status};
use crate::status::Board;
use crate::store::Store;
use crate::wanted::Wanted;

/// What handlers keep across SIGHUP (see the module docs). Cheap to clone.
#[derive(Clone, Default)]
pub struct Slots {
    inner: Arc<Mutex<HashMap<String, Arc<WatchSlot>>>>,
}

#[derive(Default)]
struct WatchSlot {
    /// Held for the whole run of the handler.
    running: Arc<tokio::sync::Mutex<()>>,
    /// The instances the handler was last given.
    fired: Mutex<Option<Vec<Instance>>>,
    runs: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

impl Slots {
    fn slot(&self, w: &WatchConfig) -> Arc<WatchSlot> {
        let key = format!("{}|{:?}|{}", w.service, w.tag, w.on_change.program);
        lock(&self.inner).entry(key).or_default().clone()
    }
}

/// What handlers need from the daemon.
#[derive(Clone)]
pub struct Context {
    pub store: Arc<Store>,
    pub wanted: Wanted,
    pub board: Arc<Board>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    pub env: BTreeMap<String, String>,
    pub runs: Runs,
    /// The jobs' published state (a `[[watch]]` with `when` waits on it).
    pub jobs: tokio::sync::watch::Receiver<Arc<crate::status::Jobs>>,
}

/// Starts one task per `[[watch]]` of this config generation, on `tracker`.
pub fn spawn_all(
    config: &Config,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    shared: &Context,
    slots: &Slots,
) {
    shared.board.update(|r| {
        r.watches = config.watches.iter().map(describe_new).collect();
    });
    for (index, w) in config.watches.iter().enumerate() {
        let span = info_span!("watch", service = %w.service);
        tracker.spawn(
            run_watch(
                index,
                w.clone(),
                slots.slot(w),
                shared.clone(),
                stop.child_token(),
            )
            .instrument(span),
        );
    }
}

/// The healthy instances of the watched service in a snapshot; `None` before the first answer.
fn healthy(shared: &Context, query: &Query, tag: Option<&str>) -> Option<Vec<Instance>> {
    let snap = shared.store.snapshot();
    let entry = snap.get(query)?;
    let Data::Instances(list) = &entry.data else {
        return None;
    };
    Some(
        list.iter()
            .filter(|i| i.status == Status::Passing)
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x == t)))
            .map(|i| Instance::clone(i))
            .collect(),
    )
}

/// What counts as a change for a handler: address, port, tags and meta of each instance.
fn same_set(a: &[Instance], b: &[Instance]) -> bool {
    change_key(a) == change_key(b)
}

type ChangeKey<'a> = (&'a str, u16, &'a [String], &'a BTreeMap<String, String>);

fn change_key(list: &[Instance]) -> Vec<ChangeKey<'_>> {
    let mut k: Vec<ChangeKey<'_>> = list
        .iter()
        .map(|i| (i.address.as_str(), i.port, i.tags.as_slice(), &i.meta))
        .collect();
    k.sort();
    k
}

async fn run_watch(
    index: usize,
    w: WatchConfig,
    slot: Arc<WatchSlot>,
    shared: Context,
    stop: CancellationToken,
) {
    if let Some(when) = &w.when
        && !super::jobs::bus::gate(shared.jobs.clone(), when, &stop).await
    {
        return;
    }
    let query = Query::Service(w.service.clone());
    // Withdrawn when this task ends (the owner is dropped).
    let owner = shared.wanted.owner();
    owner.set(BTreeSet::from([query.clone()]));
    let mut snaps = shared.store.subscribe();
    let mut debounce = Debounce::new(w.wait);
    let mut latest = healthy(&shared, &query, w.tag.as_deref());
    let mut running: Option<JoinHandle<()>> = None;
    update_board(&shared.board, index, &w, &slot, latest.as_deref());
    loop {
        if latest.as_ref().is_some_and(Vec::is_empty) {
            // Nothing to start from is no change: later ones compare with it.
            lock(&slot.fired).get_or_insert_with(Vec::new);
        }
        let fired = lock(&slot.fired).clone();
        let dirty = match (&latest, &fired) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(l), Some(f)) => !same_set(l, f),
        };
        if dirty && running.is_none() {
            // First sight fires at once; a change waits for the data to settle.
            if fired.is_none() || debounce.is_due() {
                debounce.take();
                let list = latest.clone().expect("dirty implies data");
                *lock(&slot.fired) = Some(list.clone());
                running = Some(
                    shared.runs.spawn(
                        fire(
                            w.clone(),
                            list,
                            slot.clone(),
                            shared.env.clone(),
                            shared.metrics.clone(),
                        )
                        .instrument(tracing::Span::current()),
                    ),
                );
                continue;
            }
            if debounce.deadline().is_none() {
                debounce.poke();
            }
        } else if !dirty {
            // Changed and changed back before the handler ran: nothing to say.
            debounce.take();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = snaps.changed() => {
                if changed.is_err() {
                    break;
                }
                snaps.borrow_and_update();
                let now = healthy(&shared, &query, w.tag.as_deref());
                let moved = match (&now, &latest) {
                    (Some(a), Some(b)) => !same_set(a, b),
                    (a, b) => a.is_some() != b.is_some(),
                };
                if moved {
                    debug!(instances = now.as_ref().map_or(0, Vec::len), "healthy set changed");
                    latest = now;
                    debounce.poke();
                    update_board(&shared.board, index, &w, &slot, latest.as_deref());
                }
            }
            _ = debounce::due(&debounce), if dirty && running.is_none() => {}
            _ = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                update_board(&shared.board, index, &w, &slot, latest.as_deref());
            }
        }
    }
    // A run in flight finishes on its own, tracked by `Runs` (it holds the slot's lock, so
    // the next generation's handler waits for it).
}

/// Runs the handler once with `list`, after any run of the same handler still going.
async fn fire(
    w: WatchConfig,
    list: Vec<Instance>,
    slot: Arc<WatchSlot>,
    env: BTreeMap<String, String>,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
) {
    let _running = slot.running.lock().await;
    let started = tokio::time::Instant::now();
    let mut env = env;
    env.insert("REWIRE_SERVICE".into(), w.service.clone());
    let stdin = serde_json::to_vec(&list).expect("instances always serialize");
    let name = w.on_change.program.name();
    info!(command = %name, instances = list.len(), "running on_change");
    slot.runs.fetch_add(1, Ordering::Relaxed);
    let result = command::run(&w.on_change, &env, Some(&stdin)).await;
    let ok = result.as_ref().is_ok_and(|o| o.success());
    metrics.watch_run(&w.service, ok, started.elapsed());
    match result {
        Ok(o) => {
            if o.success() {
                if !o.output.is_empty() {
                    info!(command = %name, output = %o.output, "on_change output");
                }
                lock(&slot.last_error).clear();
            } else {
                slot.failures.fetch_add(1, Ordering::Relaxed);
                let how = o.describe(w.on_change.timeout);
                warn!(command = %name, output = %o.output, "on_change {how}");
                *lock(&slot.last_error) = how;
            }
        }
        Err(e) => {
            slot.failures.fetch_add(1, Ordering::Relaxed);
            warn!(command = %name, "{e}");
            *lock(&slot.last_error) = e.to_string();
        }
    }
}

fn label(w: &WatchConfig) -> String {
    match &w.tag {
        Some(t) => format!("{} (tag {t})", w.service),
        None => w.service.clone(),
    }
}

fn describe_new(w: &WatchConfig) -> String {
    format!("{}: waiting for the first answer", label(w))
}

fn update_board(
    board: &Board,
    index: usize,
    w: &WatchConfig,
    slot: &WatchSlot,
    latest: Option<&[Instance]>,
) {
    let runs = slot.runs.load(Ordering::Relaxed);
    let failures = slot.failures.load(Ordering::Relaxed);
    let last_error = lock(&slot.last_error).clone();
    let mut line = match latest {
        None => describe_new(w),
        Some(l) => format!(
            "{}: {} healthy; on_change ran {runs} time(s), {failures} failed",
            label(w),
            l.len()
        ),
    };
    if !last_error.is_empty() {
        line.push_str(&format!("; last error: {last_error}"));
    }
    board.update(|r| {
        if let Some(slot) = r.watches.get_mut(index) {
            *slot = line;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, addr: &str, port: u16, status: Status) -> Instance {
        Instance {
            id: id.into(),
            name: "sales".into(),
            node: "n".into(),
            address: addr.into(),
            port,
            tags: vec![],
            meta: BTreeMap::new(),
            status,
        }
    }

    #[test]
    fn only_address_port_tags_and_meta_count_as_change() {
        let a = vec![inst("a", "10.0.0.1", 80, Status::Passing)];
        let mut b = a.clone();
        b[0].id = "other-id".into();
        b[0].node = "other-node".into();
        assert!(same_set(&a, &b));
        b[0].port = 81;
        assert!(!same_set(&a, &b));
        let mut c = a.clone();
        c[0].meta.insert("v".into(), "2".into());
        assert!(!same_set(&a, &c));
        let mut d = a.clone();
        d[0].tags.push("x".into());
        assert!(!same_set(&a, &d));
        let two = vec![
            inst("a", "10.0.0.1", 80, Status::Passing),
            inst("b", "10.0.0.2", 80, Status::Passing),
        ];
        let rev: Vec<Instance> = two.iter().rev().cloned().collect();
        assert!(same_set(&two, &rev));
    }
}
