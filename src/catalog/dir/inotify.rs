//! Following the catalog directory with inotify (`notify`), and publishing what changed.
//!
//! The catalog root and its parent are watched (so a deleted and recreated catalog directory
//! is noticed), and `services/` and `kv/` with everything beneath them: only those are read.
//! Each batch of events re-reads what it touched and republishes only the queries it affects.
//! At most [`MAX_WATCHED_DIRS`] directories are watched: inotify watches are one budget for
//! all of a user's processes (root's, for rewire as PID 1), and a catalog writer who made
//! 200 000 directories used to take all of it, pin a core walking them again every second,
//! and leave a thread behind per attempt. Past the bound rewire stops watching, keeps the last
//! good data and says why, until the directories are gone. A timer fires exactly when an instance expires or becomes due for removal. A
//! directory that vanishes, or a watch that fails (inotify limits), is retried every second
//! while the store keeps the last good data.
//!
//! Two rules keep bad moments from reaching a config:
//!
//! - Files are read on tokio's blocking pool, never on an async worker: whatever a read meets,
//!   the watch loop, the control socket and the stop sequence keep running.
//! - Deletions wait [`DELETION_HOLD`] of quiet before they count. `rm -rf catalog` deletes one
//!   file at a time, each looking like a deregistration, and the directories last; applied as
//!   they came, the deletions would render a config without upstreams before the root is seen
//!   to go. Held, they are applied only once the root (and the `services/` and `kv/` it had)
//!   are still there; otherwise the burst is an outage and the last good data stays.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::DirCatalog;
use super::files::hidden;
use super::tree::{
    KUBERNETES_DATA, Touched, Tree, answers, due_for_removal, next_deadline, services_due,
};
use crate::catalog::{Catalog, CatalogError};
use crate::model::Query;
use crate::store::{Health, Store};
use crate::timing::{self, stage};

/// The most directories under `services/` and `kv/` rewire watches (see the module docs):
/// a service is one, a key path's folders one each.
pub(super) const MAX_WATCHED_DIRS: usize = 4096;

/// The two directories beneath the root that rewire reads (and so watches).
const SERVICES: &str = "services";
const KV: &str = "kv";

/// How long an expired instance whose file could not be removed waits for another try.
const UNREMOVABLE_RETRY: Duration = Duration::from_secs(3600);

/// Instance expiries are handled this long after they pass, together with every other one
/// due by then (see the expiry arm of the watch loop).
const EXPIRY_BATCH: Duration = Duration::from_millis(100);

/// How long deletions wait for quiet before they are applied (see the module docs). `rm -rf`
/// raises an event per file, microseconds apart, so its burst never goes quiet this long
/// before the directories themselves are gone.
pub(super) const DELETION_HOLD: Duration = Duration::from_millis(100);

/// Deletions are applied at the latest this long after the first one was held, even under
/// constant churn.
const DELETION_HOLD_MAX: Duration = Duration::from_secs(5);

/// Up to this many changed paths are read on the async worker itself. They are small files
/// (capped by `max_file`, opened without blocking), just written and so in the page cache:
/// reading them takes microseconds, while handing them to the blocking pool and back costs two
/// thread wake-ups on the path from a change to the file in place (~0.1-0.3 ms on a busy
/// machine). Bigger batches (a deploy, a whole service directory) still go to the pool.
const INLINE_READS: usize = 4;

/// Runs `f` (file reading) on the blocking pool. `None` when `stop` fired first: nothing waits
/// for the read, which ends on its own.
async fn off_worker<T: Send + 'static>(
    stop: &CancellationToken,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let task = tokio::task::spawn_blocking(f);
    tokio::select! {
        _ = stop.cancelled() => None,
        joined = task => match joined {
            Ok(v) => Some(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
    }
}

/// Deletions seen and not applied yet.
#[derive(Default)]
struct Held {
    paths: BTreeSet<PathBuf>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Held {
    fn add(&mut self, p: PathBuf) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.paths.insert(p);
    }

    fn due(&self) -> Option<Instant> {
        Some((self.last? + DELETION_HOLD).min(self.first? + DELETION_HOLD_MAX))
    }

    fn take(&mut self) -> Vec<PathBuf> {
        self.first = None;
        self.last = None;
        std::mem::take(&mut self.paths).into_iter().collect()
    }
}

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
        // Whether any read ever succeeded: before one there is no "last good data" to keep.
        let mut ever_loaded = false;
        let mut published: BTreeSet<Query> = BTreeSet::new();
        // Queries not updated because a key file they read is refused (warned once each).
        let mut held_back: BTreeSet<Query> = BTreeSet::new();
        // Every instance expiry (and removal time) up to this moment is in the published
        // answers; the next wake-up handles the first one after it.
        let mut expiries_done = std::time::SystemTime::UNIX_EPOCH;
        // Expired instances whose file could not be removed, and when to try again.
        let mut unremovable: std::collections::HashMap<(String, String), Instant> =
            std::collections::HashMap::new();
        // Directories to read again, and when (see `Touched::new_dirs`).
        let mut reread: Vec<(Instant, PathBuf)> = Vec::new();
        let mut held = Held::default();
        // Directories watched: counted at each start, and each one created since counts too.
        let mut watched_dirs = 0usize;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            if watcher.is_none() || !loaded {
                // (Re)start: watch the tree (and its parent, to see it come back), then load.
                held.take();
                // The old watcher goes first: its watches count against the same budget.
                drop(watcher.take());
                match self.start_watcher(tx.clone()) {
                    Ok((w, dirs)) => {
                        watcher = Some(w);
                        watched_dirs = dirs;
                        let reader = self.reader.clone();
                        let prev = std::mem::take(&mut tree);
                        let Some((read, prev)) = off_worker(&stop, move || {
                            let read = reader.load(Some(&prev));
                            (read, prev)
                        })
                        .await
                        else {
                            return;
                        };
                        match read {
                            Ok(t) => {
                                tree = t;
                                loaded = true;
                                ever_loaded = true;
                                // Everything is answered afresh below, as of a later clock.
                                expiries_done = (self.clock)();
                                published.clear();
                                if store.set_health(Health::Healthy) {
                                    info!(catalog = %self.describe(), "catalog directory is readable");
                                }
                            }
                            Err(e) => {
                                tree = prev;
                                loaded = false;
                                store.failed();
                                if store.set_health(Health::Unreachable(e.to_string())) {
                                    warn!(error = %e, "catalog unavailable; {}", keeping(ever_loaded));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        watcher = None;
                        loaded = false;
                        store.failed();
                        if store.set_health(Health::Unreachable(e.to_string())) {
                            warn!(error = %e, "cannot watch the catalog directory; {}", keeping(ever_loaded));
                        }
                    }
                }
            }

            let now = (self.clock)();
            if loaded {
                // Publish queries that are new since the last round.
                let want = wanted.borrow_and_update().clone();
                let fresh = answers(
                    &tree,
                    want.iter().filter(|q| !published.contains(*q)),
                    now,
                    &mut held_back,
                );
                if !fresh.is_empty() {
                    store.update_many(fresh);
                }
                published = want;
                let mut due = due_for_removal(&tree, now, deregister_after);
                let now_i = Instant::now();
                unremovable.retain(|_, until| *until > now_i);
                due.retain(|k| !unremovable.contains_key(k));
                if !due.is_empty() {
                    let reader = self.reader.clone();
                    let Some(failed) =
                        off_worker(&stop, move || reader.reap(&due, now, deregister_after)).await
                    else {
                        return;
                    };
                    // Not tried (nor warned about) again at every event: once an hour.
                    for k in failed {
                        unremovable.insert(k, now_i + UNREMOVABLE_RETRY);
                    }
                }
            }
            // (A clock set back is taken as it is.)
            expiries_done = expiries_done.min(now);
            let deadline = if loaded {
                next_deadline(&tree, expiries_done, deregister_after)
            } else {
                None
            };
            // Deadlines closer together than EXPIRY_BATCH are handled in one wake-up: a writer
            // spreading 10 000 expiries 3 ms apart kept the loop busy re-answering for the
            // whole window. One already past (the loop was busy) is handled at once.
            let sleep_for = deadline
                .map(|d| {
                    d.duration_since(now)
                        .map_or(Duration::ZERO, |d| d + EXPIRY_BATCH)
                })
                .unwrap_or(Duration::from_secs(3600));

            let next_reread = reread.iter().map(|(at, _)| *at).min();
            let held_due = held.due();
            // What to re-read this round, and whether a burst of deletions proved an outage.
            let mut paths: Vec<PathBuf> = Vec::new();
            let mut everything = false;
            let mut rereading = false;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = async { tokio::time::sleep_until(next_reread.expect("guarded")).await }, if next_reread.is_some() && loaded => {
                    let now_i = Instant::now();
                    paths.extend(reread.iter().filter(|(at, _)| *at <= now_i).map(|(_, p)| p.clone()));
                    reread.retain(|(at, _)| *at > now_i);
                    rereading = true;
                }
                _ = async { tokio::time::sleep_until(held_due.expect("guarded")).await }, if held_due.is_some() && loaded => {
                    let deletions = held.take();
                    match self.reader.still_there(&tree) {
                        Ok(()) => paths.extend(deletions),
                        Err(e) => {
                            warn!(error = %e, deletions = deletions.len(), "the catalog directory went away; treating it as an outage, not as deregistrations");
                            everything = true;
                        }
                    }
                }
                changed = wanted.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                _ = tokio::time::sleep(sleep_for), if loaded => {
                    // An expiry passed: re-answer the services with one since the last
                    // wake-up (statuses depend on the clock).
                    let now = (self.clock)();
                    let due = services_due(&tree, expiries_done, now, deregister_after);
                    expiries_done = now;
                    let updates = answers(
                        &tree,
                        published
                            .iter()
                            .filter(|q| matches!(q, Query::Service(name) if due.contains(name))),
                        now,
                        &mut held_back,
                    );
                    store.update_many(updates);
                    continue;
                }
                _ = retry.tick(), if !loaded => continue,
                Some(ev) = events.recv() => {
                    timing::mark(stage::RECEIVED);
                    let mut batch = vec![ev];
                    while let Ok(more) = events.try_recv() {
                        batch.push(more);
                    }
                    let (all, created) = self.sort_events(batch, &mut paths, &mut held);
                    everything = all;
                    watched_dirs += created;
                    if watched_dirs > MAX_WATCHED_DIRS {
                        // Counted again (and refused, while still too many) at the restart.
                        everything = true;
                    }
                }
            }
            if !loaded {
                continue;
            }
            let mut touched = Touched::default();
            if !everything && !paths.is_empty() {
                let applied = if paths.len() <= INLINE_READS
                    && paths.iter().all(|p| self.is_instance_file(p))
                {
                    // A change or two: read right here (see INLINE_READS).
                    self.reader.apply_paths(&mut tree, &paths)
                } else {
                    let reader = self.reader.clone();
                    let mut t = std::mem::take(&mut tree);
                    let Some((applied, t)) = off_worker(&stop, move || {
                        let applied = reader.apply_paths(&mut t, &paths);
                        (applied, t)
                    })
                    .await
                    else {
                        return;
                    };
                    tree = t;
                    applied
                };
                timing::mark(stage::DECODED);
                match applied {
                    // A whole `services/` or `kv/` (or the root) to read again: Kubernetes
                    // swapped the `..data` link of a volume mounted there, whose entries are
                    // links into it. Read it all, as at a start: nothing else would (the
                    // touched answers alone were published again, from the old tree).
                    Ok(t) if t.everything => everything = true,
                    Ok(t) => touched = t,
                    Err(e) => {
                        debug!(error = %e, "cannot open the catalog directory; re-reading it");
                        everything = true;
                    }
                }
            }
            let base = Instant::now();
            for d in touched.new_dirs.drain(..) {
                // Re-reads do not schedule more re-reads.
                if !rereading {
                    for ms in [50u64, 500] {
                        reread.push((base + Duration::from_millis(ms), d.clone()));
                    }
                }
            }
            if everything {
                debug!("re-reading the whole catalog directory");
                loaded = false;
                if !self.reader.root.is_dir() {
                    watcher = None;
                }
                continue;
            }
            let now = (self.clock)();
            let updates = answers(
                &tree,
                published.iter().filter(|q| touched.affects(q)),
                now,
                &mut held_back,
            );
            store.update_many(updates);
        }
    }

    /// Whether `path` names one instance file (`services/<service>/<file>`, not Kubernetes'
    /// `..data`, which re-reads its directory): reading it reads one small file.
    fn is_instance_file(&self, path: &std::path::Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.reader.root) else {
            return false;
        };
        let mut parts = rel.components();
        matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(std::path::Component::Normal(top)), Some(std::path::Component::Normal(_)), Some(std::path::Component::Normal(file)), None)
                if top == "services" && file != "..data"
        )
    }

    /// Sorts a batch of events: paths to re-read now go to `paths`, deletions to `held`.
    /// Returns whether the whole tree must be read again, and how many directories were
    /// created (each is watched from now on).
    fn sort_events(
        &self,
        batch: Vec<notify::Result<notify::Event>>,
        paths: &mut Vec<PathBuf>,
        held: &mut Held,
    ) -> (bool, usize) {
        let root = &self.reader.root;
        let mut everything = false;
        let mut created = 0;
        for ev in batch {
            match ev {
                Ok(ev) => {
                    {
                        use notify::event::{CreateKind, ModifyKind, RenameMode};
                        match ev.kind {
                            EventKind::Create(CreateKind::Folder) => created += ev.paths.len(),
                            // A directory moved in brings everything beneath it.
                            EventKind::Modify(ModifyKind::Name(
                                RenameMode::To | RenameMode::Both,
                            )) => {
                                if let Some(p) = ev.paths.last()
                                    && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
                                {
                                    created += count_dirs(p, MAX_WATCHED_DIRS + 1);
                                }
                            }
                            _ => {}
                        }
                    }
                    if !worth_reading(&ev) {
                        continue;
                    }
                    if ev.need_rescan() {
                        everything = true;
                    }
                    let gone = gone_paths(&ev.kind);
                    for (n, p) in ev.paths.into_iter().enumerate() {
                        if p == *root || !p.starts_with(root) {
                            if p == *root || root.starts_with(&p) {
                                everything = true;
                            }
                            continue;
                        }
                        if p.parent() == Some(root.as_path()) && self.watched_top(&p) {
                            // `services/` or `kv/` made, moved or removed: watch (or stop
                            // watching) beneath it.
                            everything = true;
                            continue;
                        }
                        if never_read(&p) || under_hidden(root, &p) {
                            continue;
                        }
                        // Gone now: a deletion (or one side of a rename), held until the
                        // burst it belongs to is over. The names the event itself says are
                        // gone are not looked up (see `gone_paths`).
                        if n < gone || std::fs::symlink_metadata(&p).is_err() {
                            held.add(p);
                        } else {
                            paths.push(p);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "file watch error; re-reading the catalog directory");
                    everything = true;
                }
            }
        }
        (everything, created)
    }

    /// Whether `path` (a name in the root) is one of the directories watched beneath.
    fn watched_top(&self, path: &std::path::Path) -> bool {
        path.file_name()
            .is_some_and(|n| n == std::ffi::OsStr::new(SERVICES) || n == std::ffi::OsStr::new(KV))
    }

    /// Watches the root, its parent, and `services/` and `kv/` with everything beneath them;
    /// returns the watcher and how many directories it watches beneath them. Refused when
    /// those are more than [`MAX_WATCHED_DIRS`] (counted before a single watch is added).
    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
    ) -> Result<(notify::RecommendedWatcher, usize), CatalogError> {
        let root = &self.reader.root;
        let io = |e: notify::Error| CatalogError::Io {
            path: root.display().to_string(),
            source: std::io::Error::other(inotify_hint(e)),
        };
        if !root.is_dir() {
            return Err(self.missing_root());
        }
        // Real directories only: a symlinked one is not followed (see below).
        let tops: Vec<PathBuf> = [SERVICES, KV]
            .iter()
            .map(|t| root.join(t))
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .collect();
        let mut dirs = 0;
        for top in &tops {
            dirs += count_dirs(top, MAX_WATCHED_DIRS + 1 - dirs);
        }
        if dirs > MAX_WATCHED_DIRS {
            return Err(CatalogError::Io {
                path: root.display().to_string(),
                source: std::io::Error::other(format!(
                    "more than {MAX_WATCHED_DIRS} directories under services/ and kv/: rewire \
                     watches at most that many (inotify watches are shared by every process of \
                     this user); remove the directories that are not services or key folders"
                )),
            });
        }
        // Symlinked directories are not followed: one could lead out of the catalog (files are
        // read only beneath it anyway), and inotify would watch wherever it points.
        let mut w = notify::RecommendedWatcher::new(
            move |ev: notify::Result<notify::Event>| {
                // Dropped on the watcher's own thread: the async side is not woken for them.
                if ev.as_ref().is_ok_and(|e| never_completes(&e.kind)) {
                    return;
                }
                let _ = tx.send(ev);
            },
            notify::Config::default().with_follow_symlinks(false),
        )
        .map_err(io)?;
        // The parent, so that a deleted-and-recreated catalog directory is noticed.
        if let Some(parent) = root.parent().filter(|p| p.is_dir()) {
            w.watch(parent, RecursiveMode::NonRecursive).map_err(io)?;
        }
        w.watch(root, RecursiveMode::NonRecursive).map_err(io)?;
        for top in &tops {
            w.watch(top, RecursiveMode::Recursive).map_err(io)?;
        }
        Ok((w, dirs))
    }
}

/// How many directories `top` and those beneath it are, counting up to `limit` (symlinks are
/// not followed; an unreadable directory counts as itself).
fn count_dirs(top: &std::path::Path, limit: usize) -> usize {
    let mut count = 0;
    let mut pending = vec![top.to_path_buf()];
    while let Some(dir) = pending.pop() {
        count += 1;
        if count >= limit {
            return count;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(e.path());
            }
        }
    }
    count
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
/// A FIFO or device created in the catalog is read (and refused) at once.
fn worth_reading(ev: &notify::Event) -> bool {
    use notify::event::CreateKind;
    if never_completes(&ev.kind) {
        return false;
    }
    match ev.kind {
        EventKind::Create(CreateKind::File) => {
            ev.paths.iter().filter(|p| !never_read(p)).any(|p| {
                use std::os::unix::fs::MetadataExt;
                // A symlink, a second link to a file that is already whole, or no file at all.
                std::fs::symlink_metadata(p)
                    .is_ok_and(|m| !m.file_type().is_file() || m.nlink() > 1)
            })
        }
        _ => true,
    }
}

/// Events that never leave a file in a new, complete state: opens, reads, closes after
/// reading and writes still in progress. Rewire's own reads of the catalog raise the first
/// three (and anything opening a file beside the catalog, in the watched parent), so they are
/// dropped before they wake the watch loop: on the path from a change to the config, they
/// would wake it a second time while the render is under way.
fn never_completes(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        EventKind::Modify(ModifyKind::Data(_)) => true,
        _ => false,
    }
}

/// Whether a path has a hidden name (a temp file renamed into place, an editor's swap file),
/// which is never read (Kubernetes' `..data` excepted). Its events stop before any lookup:
/// see [`gone_paths`] for what a lookup can cost.
fn never_read(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| hidden(n) && n != KUBERNETES_DATA)
}

/// Whether a path lies inside a hidden directory below the catalog root (Kubernetes'
/// timestamped `..2026_..` version directories, which its `..data` link points into): read
/// through the link, never as a path of its own (it is not a service named `..2026_..`).
fn under_hidden(root: &std::path::Path, path: &std::path::Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let mut parents = rel.components().rev().skip(1);
    parents.any(|c| hidden(c.as_os_str()))
}

/// How many of an event's paths (from the first) name something the kernel has just
/// removed or renamed away. Those are held as deletions without a `stat`: a name renamed away
/// is no longer in the dentry cache, so looking it up waits for the directory's lock, which the
/// writer's rename holds until it has freed the file it replaced (0.4-0.5 ms on ext4, on the
/// path from every `mv tmp web-1.json` to the config). A name that comes back meanwhile brings
/// its own event, and a held deletion re-reads its path before it counts.
fn gone_paths(kind: &EventKind) -> usize {
    use notify::event::{ModifyKind, RenameMode};
    match kind {
        EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => usize::MAX,
        // `[from, to]`.
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => 1,
        _ => 0,
    }
}

/// What an outage means for the data: kept, or (before the first read) still awaited.
fn keeping(ever_loaded: bool) -> &'static str {
    if ever_loaded {
        "keeping the last good data"
    } else {
        "nothing read yet: templates wait until it is readable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// The kinds of every event a real inotify watch reports while `act` runs in `dir`.
    fn events_during(dir: &std::path::Path, act: impl FnOnce()) -> Vec<EventKind> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                let _ = tx.send(ev);
            }
        })
        .expect("inotify");
        w.watch(dir, RecursiveMode::NonRecursive).expect("watch");
        act();
        // A marker file closes the sequence: inotify keeps order, so everything `act` raised
        // has been delivered once the marker's own events arrive.
        let marker = dir.join("zz-marker");
        std::fs::write(&marker, b"").unwrap();
        let mut kinds = Vec::new();
        loop {
            let ev = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("events within 10 s");
            if ev.paths.contains(&marker) {
                return kinds;
            }
            kinds.push(ev.kind);
        }
    }

    #[test]
    fn reading_a_catalog_file_raises_only_events_dropped_before_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web-1.json");
        std::fs::write(&file, br#"{"address": "10.0.0.1", "port": 80}"#).unwrap();
        let kinds = events_during(dir.path(), || {
            let _ = std::fs::read(&file).unwrap();
            let _ = std::fs::read_dir(dir.path()).unwrap().count();
        });
        assert!(!kinds.is_empty(), "inotify reported no opens");
        assert!(
            kinds.iter().all(never_completes),
            "an event of a plain read would wake the loop: {kinds:?}"
        );
    }

    #[test]
    fn a_finished_write_and_a_rename_still_reach_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let kinds = events_during(dir.path(), || {
            let mut f = std::fs::File::create(dir.path().join(".tmp")).unwrap();
            f.write_all(b"{}").unwrap();
            drop(f);
            std::fs::rename(dir.path().join(".tmp"), dir.path().join("web-2.json")).unwrap();
        });
        assert!(
            kinds.iter().any(|k| matches!(
                k,
                EventKind::Access(notify::event::AccessKind::Close(
                    notify::event::AccessMode::Write
                ))
            ) && !never_completes(k)),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|k| matches!(
                k,
                EventKind::Modify(notify::event::ModifyKind::Name(_))
            ) && !never_completes(k)),
            "{kinds:?}"
        );
    }
}
