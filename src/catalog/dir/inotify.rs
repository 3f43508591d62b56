//! Following the catalog directory with inotify (`notify`), and publishing what changed.
//!
//! The tree and its parent are watched (so a deleted and recreated catalog directory is
//! noticed); each batch of events re-reads what it touched and republishes only the queries
//! it affects. A timer fires exactly when an instance expires or becomes due for removal. A
//! directory that vanishes, or a watch that fails (inotify limits), is retried every second
//! while the store keeps the last good data.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::DirCatalog;
use super::tree::{Touched, Tree, answer, next_deadline};
use crate::catalog::{Catalog, CatalogError};
use crate::model::{Data, Query};
use crate::store::{Health, Store};

impl DirCatalog {
    /// Keeps `store` current for `wanted` until `stop` fires (see [`Catalog::watch`]).
    pub(super) async fn watch_tree(
        &self,
        mut wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) {
        let deregister_after = self.deregister_after;
        let (tx, mut events) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
        let mut watcher: Option<notify::RecommendedWatcher> = None;
        let mut tree = Tree::default();
        let mut loaded = false;
        let mut published: BTreeSet<Query> = BTreeSet::new();
        // Directories to read again, and when (see `Touched::new_dirs`).
        let mut reread: Vec<(tokio::time::Instant, PathBuf)> = Vec::new();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if watcher.is_none() || !loaded {
                // (Re)start: watch the tree (and its parent, to see it come back), then load.
                match self.start_watcher(tx.clone()) {
                    Ok(w) => {
                        watcher = Some(w);
                        match self.load() {
                            Ok(t) => {
                                tree = t;
                                loaded = true;
                                published.clear();
                                if store.set_health(Health::Healthy) {
                                    info!(catalog = %self.describe(), "catalog directory is readable");
                                }
                            }
                            Err(e) => {
                                loaded = false;
                                store.failed();
                                if store.set_health(Health::Unreachable(e.to_string())) {
                                    warn!(error = %e, "catalog unavailable; keeping the last good data");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        watcher = None;
                        loaded = false;
                        store.failed();
                        if store.set_health(Health::Unreachable(e.to_string())) {
                            warn!(error = %e, "cannot watch the catalog directory; keeping the last good data");
                        }
                    }
                }
            }

            let now = (self.clock)();
            if loaded {
                // Publish queries that are new since the last round.
                let want = wanted.borrow_and_update().clone();
                let fresh: Vec<(Query, Data)> = want
                    .iter()
                    .filter(|q| !published.contains(*q))
                    .map(|q| (q.clone(), answer(&tree, q, now)))
                    .collect();
                if !fresh.is_empty() {
                    store.update_many(fresh);
                }
                published = want;
                self.reap(&tree, now, deregister_after);
            }
            let deadline = if loaded {
                next_deadline(&tree, now, deregister_after)
            } else {
                None
            };
            let sleep_for = deadline
                .and_then(|d| d.duration_since(now).ok())
                .map(|d| d + Duration::from_millis(1))
                .unwrap_or(Duration::from_secs(3600));

            let next_reread = reread.iter().map(|(at, _)| *at).min();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { tokio::time::sleep_until(next_reread.expect("guarded")).await }, if next_reread.is_some() && loaded => {
                    let now_i = tokio::time::Instant::now();
                    let due: Vec<PathBuf> = reread.iter().filter(|(at, _)| *at <= now_i).map(|(_, p)| p.clone()).collect();
                    reread.retain(|(at, _)| *at > now_i);
                    let mut touched = Touched::default();
                    for p in due {
                        let mut t = self.apply_path(&mut tree, &p);
                        t.new_dirs.clear();
                        touched.merge(t);
                    }
                    let now = (self.clock)();
                    let updates: Vec<(Query, Data)> = published
                        .iter()
                        .filter(|q| touched.affects(q))
                        .map(|q| (q.clone(), answer(&tree, q, now)))
                        .collect();
                    store.update_many(updates);
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(sleep_for), if loaded => {
                    // An expiry passed: re-answer every service (statuses depend on the clock).
                    let now = (self.clock)();
                    let updates: Vec<(Query, Data)> = published
                        .iter()
                        .filter(|q| matches!(q, Query::Service(_)))
                        .map(|q| (q.clone(), answer(&tree, q, now)))
                        .collect();
                    store.update_many(updates);
                }
                _ = retry.tick(), if !loaded => {}
                Some(ev) = events.recv() => {
                    let mut touched = Touched::default();
                    let mut batch = vec![ev];
                    while let Ok(more) = events.try_recv() {
                        batch.push(more);
                    }
                    for ev in batch {
                        match ev {
                            Ok(ev) => {
                                if !worth_reading(&ev) {
                                    continue;
                                }
                                if ev.need_rescan() {
                                    touched.everything = true;
                                }
                                for p in &ev.paths {
                                    if p == &self.root || !p.starts_with(&self.root) {
                                        if p == &self.root || self.root.starts_with(p) {
                                            touched.everything = true;
                                        }
                                        continue;
                                    }
                                    if loaded {
                                        touched.merge(self.apply_path(&mut tree, p));
                                    }
                                }
                            }
                            Err(e) => {
                                warn!(error = %e, "file watch error; re-reading the catalog directory");
                                touched.everything = true;
                            }
                        }
                    }
                    let base = tokio::time::Instant::now();
                    for d in touched.new_dirs.drain(..) {
                        for ms in [50u64, 500] {
                            reread.push((base + Duration::from_millis(ms), d.clone()));
                        }
                    }
                    if touched.everything {
                        debug!("re-reading the whole catalog directory");
                        loaded = false;
                        if !self.root.is_dir() {
                            watcher = None;
                        }
                        continue;
                    }
                    let now = (self.clock)();
                    let updates: Vec<(Query, Data)> = published
                        .iter()
                        .filter(|q| touched.affects(q))
                        .map(|q| (q.clone(), answer(&tree, q, now)))
                        .collect();
                    store.update_many(updates);
                }
            }
        }
    }

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    ) -> Result<notify::RecommendedWatcher, CatalogError> {
        let io = |e: notify::Error| CatalogError::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::other(inotify_hint(e)),
        };
        let mut w = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .map_err(io)?;
        // The parent, so that a deleted-and-recreated catalog directory is noticed.
        if let Some(parent) = self.root.parent().filter(|p| p.is_dir()) {
            w.watch(parent, RecursiveMode::NonRecursive).map_err(io)?;
        }
        if self.root.is_dir() {
            w.watch(&self.root, RecursiveMode::Recursive).map_err(io)?;
        } else {
            return Err(self.missing_root());
        }
        Ok(w)
    }
}

fn inotify_hint(e: notify::Error) -> String {
    let text = e.to_string();
    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch)
        || text.contains("No space left")
        || text.contains("Too many open files")
    {
        format!(
            "{text}: the system ran out of inotify watches or instances; raise fs.inotify.max_user_watches / fs.inotify.max_user_instances (sysctl)"
        )
    } else {
        text
    }
}

/// Whether an event may have left a file (or directory) in a new, complete state. A file is
/// read when it is closed after writing, moved in, or created as a link (hard or symbolic: no
/// writer will close it), never while a writer is still at it: `echo ... > web-3.json` truncates, writes
/// and closes, and reading at the truncation would see an empty file and drop the instance for
/// a moment (and reading at the create as well as the close would warn twice about a bad one).
fn worth_reading(ev: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Create(CreateKind::File) => ev.paths.iter().any(|p| {
            use std::os::unix::fs::MetadataExt;
            // A symlink or a second link to a file that is already whole.
            std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink() || m.nlink() > 1)
        }),
        _ => true,
    }
}
