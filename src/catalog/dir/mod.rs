//! The directory catalog: the embedded default, which needs nothing installed.
//!
//! Layout (one file per instance, one file per key):
//!
//! ```text
//! PATH/services/<service>/<instance-id>.json   {"address": "10.0.0.5", "port": 8080, ...}
//! PATH/kv/<key path>                           raw value
//! ```
//!
//! The whole tree is held in memory and watched with one inotify tree (`notify`): an event
//! re-reads only the file it names, so one change among 10 000 instances costs one file read.
//! Several rewire processes on one machine discover each other through one directory: each
//! registers by writing its own file atomically and refreshes `expires_at` on every TTL pass.
//! Past `expires_at` an instance counts as critical (a timer fires exactly then, no polling);
//! past `expires_at + deregister_after` any rewire that sees the file deletes it, so a
//! `docker kill` leaves nothing behind for long.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::record::{Record, truncate_note};
use super::{Catalog, CatalogError};
use crate::lock::lock;
use crate::model::{Data, Instance, KeyValue, Query, Registration, Status, check_name};
use crate::store::{Health, Store};

/// Wall-clock source, injectable so expiry can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct DirCatalog {
    root: PathBuf,
    node: String,
    clock: Clock,
    /// How long an expired instance file may linger before any rewire deletes it.
    deregister_after: Duration,
    /// The last full read, reused by `fetch_many` for a moment: a one-shot render discovers
    /// its queries over two or three rounds, and re-reading 10 000 files each round would
    /// triple its run time.
    recent: std::sync::Mutex<Option<(std::time::Instant, Arc<Tree>)>>,
}

/// How long `fetch_many` may answer from the last full read.
const RECENT: Duration = Duration::from_millis(200);

/// One instance file, decoded.
#[derive(Clone, Debug)]
struct Entry {
    instance: Arc<Instance>,
    expiry: Option<SystemTime>,
}

/// Everything under the catalog directory.
#[derive(Default)]
struct Tree {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    kv: BTreeMap<String, String>,
}

impl DirCatalog {
    pub fn new(root: impl Into<PathBuf>) -> DirCatalog {
        DirCatalog::with_clock(root, Arc::new(SystemTime::now))
    }

    pub fn with_clock(root: impl Into<PathBuf>, clock: Clock) -> DirCatalog {
        DirCatalog {
            root: root.into(),
            node: crate::host::hostname(),
            clock,
            deregister_after: Duration::from_secs(600),
            recent: std::sync::Mutex::new(None),
        }
    }

    /// Sets how long expired instance files linger (`[catalog] deregister_after`).
    pub fn with_deregister_after(mut self, d: Duration) -> DirCatalog {
        self.deregister_after = d;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn services_dir(&self) -> PathBuf {
        self.root.join("services")
    }

    fn kv_dir(&self) -> PathBuf {
        self.root.join("kv")
    }

    fn instance_path(&self, service: &str, id: &str) -> PathBuf {
        self.services_dir().join(service).join(format!("{id}.json"))
    }

    fn missing_root(&self) -> CatalogError {
        CatalogError::Io {
            path: self.root.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the catalog directory does not exist: create it (with services/ and kv/ inside) or point [catalog] path at it",
            ),
        }
    }

    /// Reads the whole tree, files in parallel (10 000 small files take ~30-50 ms in series).
    fn load(&self) -> Result<Tree, CatalogError> {
        if !self.root.is_dir() {
            return Err(self.missing_root());
        }
        // Each service directory is opened once and its files are opened relative to it.
        let mut dirs: Vec<std::fs::File> = Vec::new();
        let mut files: Vec<(usize, String, String, PathBuf)> = Vec::new();
        for service_dir in list_dir(&self.services_dir()) {
            let Some(service) = file_name(&service_dir) else {
                continue;
            };
            if !service_dir.is_dir() {
                continue;
            }
            let Ok(dir) = std::fs::File::open(&service_dir) else {
                continue;
            };
            dirs.push(dir);
            for file in list_dir(&service_dir) {
                if let Some(id) = instance_id(&file) {
                    files.push((dirs.len() - 1, service.clone(), id, file));
                }
            }
        }
        let node = self.node.as_str();
        let entries = parallel_map(&files, |(dir, service, id, path)| {
            READ_BUF.with_borrow_mut(|buf| {
                let read = match path.file_name() {
                    Some(name) => read_at(&dirs[*dir], name, buf),
                    None => Err(std::io::ErrorKind::NotFound.into()),
                };
                decode_instance(path, read.map(|()| buf.as_slice()), service, id, node)
            })
        });
        let mut tree = Tree::default();
        for ((_, service, id, _), entry) in files.into_iter().zip(entries) {
            if let Some(entry) = entry {
                tree.services.entry(service).or_default().insert(id, entry);
            }
        }
        let kv_root = self.kv_dir();
        let mut kv_files = Vec::new();
        collect_files(&kv_root, &mut kv_files);
        for path in kv_files {
            if let Some(key) = kv_key(&kv_root, &path)
                && let Some(value) = read_kv(&path)
            {
                tree.kv.insert(key, value);
            }
        }
        Ok(tree)
    }

    /// Re-reads what one changed path may have touched.
    fn apply_path(&self, tree: &mut Tree, path: &Path) -> Touched {
        let mut touched = Touched::default();
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return touched;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match parts.as_slice() {
            [] => touched.everything = true,
            [top] if top == "services" || top == "kv" => touched.everything = true,
            [top, service] if top == "services" => {
                // A service directory appeared or went: re-read just it.
                let dir = self.services_dir().join(service);
                let mut fresh = BTreeMap::new();
                for file in list_dir(&dir) {
                    if let Some(id) = instance_id(&file)
                        && let Some(e) = read_instance(&file, service, &id, &self.node)
                    {
                        fresh.insert(id, e);
                    }
                }
                if fresh.is_empty() {
                    tree.services.remove(service);
                } else {
                    tree.services.insert(service.clone(), fresh);
                }
                touched.services.insert(service.clone());
                touched.new_dirs.push(dir.clone());
            }
            [top, service, _file] if top == "services" => {
                let Some(id) = instance_id(path) else {
                    return touched;
                };
                let entry = read_instance(path, service, &id, &self.node);
                let list = tree.services.entry(service.clone()).or_default();
                match entry {
                    Some(e) => {
                        list.insert(id, e);
                    }
                    None => {
                        list.remove(&id);
                    }
                }
                if list.is_empty() {
                    tree.services.remove(service);
                }
                touched.services.insert(service.clone());
            }
            [top, ..] if top == "kv" => {
                let kv_root = self.kv_dir();
                if path.is_dir() {
                    // A directory of keys moved in or out: re-read the subtree.
                    let Some(prefix) = kv_key(&kv_root, path) else {
                        return touched;
                    };
                    let prefix = format!("{prefix}/");
                    tree.kv.retain(|k, _| !k.starts_with(&prefix));
                    let mut files = Vec::new();
                    collect_files(path, &mut files);
                    for f in files {
                        if let Some(k) = kv_key(&kv_root, &f)
                            && let Some(v) = read_kv(&f)
                        {
                            tree.kv.insert(k, v);
                        }
                    }
                    touched.kv = true;
                } else if let Some(key) = kv_key(&kv_root, path) {
                    match read_kv(path) {
                        Some(v) => {
                            tree.kv.insert(key, v);
                        }
                        None => {
                            // Gone: a file, or a whole directory of keys.
                            let prefix = format!("{key}/");
                            tree.kv.retain(|k, _| *k != key && !k.starts_with(&prefix));
                        }
                    }
                    touched.kv = true;
                }
            }
            _ => {}
        }
        touched
    }

    /// Deletes instance files expired for longer than their service's `deregister_after`.
    /// Re-reads each file first, so a registration refreshed a moment ago survives.
    fn reap(&self, tree: &Tree, now: SystemTime, deregister_after: Duration) {
        for (service, list) in &tree.services {
            for (id, e) in list {
                let Some(expiry) = e.expiry else { continue };
                if expiry + deregister_after > now {
                    continue;
                }
                let path = self.instance_path(service, id);
                if let Some(fresh) = read_instance(&path, service, id, &self.node)
                    && fresh.expiry.is_some_and(|x| x + deregister_after <= now)
                {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            info!(file = %path.display(), "removed an instance expired for longer than deregister_after")
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            warn!(file = %path.display(), error = %e, "cannot remove expired instance")
                        }
                    }
                }
            }
        }
    }

    /// Forgets the last full read (after our own writes, which must show at once).
    fn invalidate(&self) {
        *lock(&self.recent) = None;
    }

    fn write_record(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        self.invalidate();
        check_name(&reg.name)
            .map_err(|e| CatalogError::Unsupported(format!("service name {e}")))?;
        check_name(&reg.id).map_err(|e| CatalogError::Unsupported(format!("service id {e}")))?;
        let mut record = Record::from_registration(reg, status, &self.node);
        let expires = (self.clock)() + reg.ttl;
        record.expires_at = Some(humantime::format_rfc3339_millis(expires).to_string());
        if !note.is_empty() {
            record.notes = Some(truncate_note(note, 4096));
        }
        let mut bytes = serde_json::to_vec_pretty(&record).expect("a Record always serializes");
        bytes.push(b'\n');
        let path = self.instance_path(&reg.name, &reg.id);
        crate::files::write_atomic(&path, &bytes, Some(0o644), true).map_err(|e| CatalogError::Io {
            path: path.display().to_string(),
            source: e,
        })
    }
}

/// Which answers a batch of file events may have changed.
#[derive(Default)]
struct Touched {
    everything: bool,
    services: BTreeSet<String>,
    kv: bool,
    /// Service directories that appeared: files written into them before inotify watched
    /// them raise no event, so they are read again a little later.
    new_dirs: Vec<PathBuf>,
}

impl Touched {
    fn merge(&mut self, other: Touched) {
        self.everything |= other.everything;
        self.services.extend(other.services);
        self.kv |= other.kv;
        self.new_dirs.extend(other.new_dirs);
    }

    fn affects(&self, q: &Query) -> bool {
        self.everything
            || match q {
                Query::Service(name) => self.services.contains(name),
                Query::Services => !self.services.is_empty(),
                Query::Key(_) | Query::Keys(_) => self.kv,
            }
    }
}

fn answer(tree: &Tree, q: &Query, now: SystemTime) -> Data {
    match q {
        Query::Service(name) => Data::Instances(
            tree.services
                .get(name)
                .map(|list| list.values().map(|e| instance_at(e, now)).collect())
                .unwrap_or_default(),
        ),
        Query::Services => Data::services_from(
            tree.services
                .values()
                .flat_map(|l| l.values().map(|e| &*e.instance)),
        ),
        Query::Key(path) => Data::Key(tree.kv.get(path.trim_matches('/')).cloned()),
        Query::Keys(prefix) => {
            let prefix = prefix.trim_start_matches('/');
            Data::Keys(
                tree.kv
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| KeyValue {
                        path: k.clone(),
                        value: v.clone(),
                    })
                    .collect(),
            )
        }
    }
}

fn instance_at(e: &Entry, now: SystemTime) -> Arc<Instance> {
    if e.expiry.is_some_and(|x| x <= now) && e.instance.status != Status::Critical {
        let mut i = Instance::clone(&e.instance);
        i.status = Status::Critical;
        return Arc::new(i);
    }
    e.instance.clone()
}

/// The next moment an instance expires, or an expired one becomes due for removal.
fn next_deadline(tree: &Tree, now: SystemTime, deregister_after: Duration) -> Option<SystemTime> {
    tree.services
        .values()
        .flat_map(|l| l.values())
        .filter_map(|e| e.expiry)
        .flat_map(|x| [x, x + deregister_after])
        .filter(|t| *t > now)
        .min()
}

#[async_trait]
impl Catalog for DirCatalog {
    fn describe(&self) -> String {
        format!("dir:{}", self.root.display())
    }

    async fn fetch(&self, query: &Query) -> Result<Data, CatalogError> {
        let mut all = self.fetch_many(std::slice::from_ref(query)).await;
        all.pop()
            .map(|(_, r)| r)
            .unwrap_or_else(|| Ok(Data::empty_for(query)))
    }

    async fn fetch_many(&self, queries: &[Query]) -> Vec<(Query, Result<Data, CatalogError>)> {
        let now = (self.clock)();
        let cached = lock(&self.recent)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < RECENT)
            .map(|(_, t)| t.clone());
        let tree = match cached {
            Some(t) => Ok(t),
            None => tokio::task::block_in_place(|| self.load()).map(|t| {
                let t = Arc::new(t);
                *lock(&self.recent) = Some((std::time::Instant::now(), t.clone()));
                t
            }),
        };
        queries
            .iter()
            .map(|q| {
                let r = match &tree {
                    Ok(t) => Ok(answer(t, q, now)),
                    Err(_) => Err(self.missing_root()),
                };
                (q.clone(), r)
            })
            .collect()
    }

    async fn watch(
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
                                if store.set_health(Health::Unreachable(e.to_string())) {
                                    warn!(error = %e, "catalog unavailable; keeping the last good data");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        watcher = None;
                        loaded = false;
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

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.write_record(reg, reg.status, "")
    }

    async fn deregister(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.invalidate();
        let path = self.instance_path(&reg.name, &reg.id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CatalogError::Io {
                path: path.display().to_string(),
                source: e,
            }),
        }
    }

    async fn update_ttl(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        let path = self.instance_path(&reg.name, &reg.id);
        if !path.exists() {
            return Err(CatalogError::NotRegistered {
                backend: self.describe(),
                id: reg.id.clone(),
                detail: format!("{} is gone", path.display()),
            });
        }
        self.write_record(reg, status, note)
    }
}

impl DirCatalog {
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

thread_local! {
    /// A reader thread's buffer, reused from one instance file to the next.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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

/// Reads a small file relative to an open directory into `buf`. A whole-tree read opens
/// thousands of files: `openat` skips walking the path from `/` for each one, and reading in
/// chunks skips the `statx` that `std::fs::read` makes for a size hint.
fn read_at(dir: &std::fs::File, name: &std::ffi::OsStr, buf: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    buf.clear();
    loop {
        let start = buf.len();
        buf.resize(start + 4096, 0);
        match file.read(&mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return Ok(());
            }
            Ok(n) => buf.truncate(start + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(start),
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        }
    }
}

fn read_instance(path: &Path, service: &str, id: &str, node: &str) -> Option<Entry> {
    match std::fs::read(path) {
        Ok(bytes) => decode_instance(path, Ok(&bytes), service, id, node),
        Err(e) => decode_instance(path, Err(e), service, id, node),
    }
}

/// Decodes an instance file's bytes (or reports why they could not be read).
fn decode_instance(
    path: &Path,
    bytes: std::io::Result<&[u8]>,
    service: &str,
    id: &str,
    node: &str,
) -> Option<Entry> {
    let bytes = match bytes {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read instance file; skipping it");
            return None;
        }
    };
    let record: Record = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "malformed instance file skipped: fix its JSON (see the README's catalog format)");
            return None;
        }
    };
    let expiry = match record.expiry() {
        Ok(x) => x,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "malformed instance file skipped");
            return None;
        }
    };
    // Status is re-derived from `expiry` at answer time; decode against the epoch so the
    // stored instance keeps the status the file states.
    match record.into_instance(service, id, node, SystemTime::UNIX_EPOCH) {
        Ok(instance) => Some(Entry {
            instance: Arc::new(instance),
            expiry,
        }),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "invalid instance skipped");
            None
        }
    }
}

fn read_kv(path: &Path) -> Option<String> {
    match std::fs::read(path) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => None,
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read key file; skipping it");
            None
        }
    }
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for p in list_dir(dir) {
        if file_name(&p).is_none() {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The name of a file, unless it is hidden (our temp files, editors' swap files).
fn file_name(p: &Path) -> Option<String> {
    let n = p.file_name()?.to_string_lossy();
    (!n.starts_with('.')).then(|| n.into_owned())
}

/// `<id>.json` → `<id>`; anything else (temp files, backups) is not an instance.
fn instance_id(p: &Path) -> Option<String> {
    let n = file_name(p)?;
    let id = n.strip_suffix(".json")?;
    (!id.is_empty()).then(|| id.to_string())
}

fn kv_key(kv_root: &Path, p: &Path) -> Option<String> {
    let rel = p.strip_prefix(kv_root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        let s = c.as_os_str().to_string_lossy();
        if s.starts_with('.') || s.ends_with('~') {
            return None;
        }
        parts.push(s.into_owned());
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Runs `f` over `items` on a few threads, keeping order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .min(8);
    if items.len() < 64 || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("catalog reader thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_instances_and_keys_and_skips_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "services/web/a.json",
            r#"{"address":"10.0.0.2","port":80,"tags":["v2"]}"#,
        );
        write(
            root,
            "services/web/b.json",
            r#"{"address":"10.0.0.1","port":80}"#,
        );
        write(
            root,
            "services/web/bad.json",
            r#"{"address":"10.0.0.3","port":"#,
        );
        write(
            root,
            "services/web/evil.json",
            r#"{"address":"x; rm -rf /","port":80}"#,
        );
        write(root, "services/web/.a.json.rewire-1234", "junk");
        write(
            root,
            "services/db/x.json",
            r#"{"address":"10.0.1.1","port":5432,"status":"critical"}"#,
        );
        write(root, "kv/app/name", "shop");
        write(root, "kv/app/db/url", "pg://");
        let cat = DirCatalog::new(root);
        let got = cat
            .fetch_many(&[
                Query::Service("web".into()),
                Query::Services,
                Query::Key("app/name".into()),
                Query::Key("app/none".into()),
                Query::Keys("app/".into()),
            ])
            .await;
        let Ok(Data::Instances(web)) = &got[0].1 else {
            panic!("{got:?}")
        };
        let web = Data::Instances(web.clone()).normalize();
        let Data::Instances(web) = web else { panic!() };
        assert_eq!(
            web.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let Ok(Data::Services(s)) = &got[1].1 else {
            panic!()
        };
        assert_eq!(
            s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["db", "web"]
        );
        assert_eq!(got[2].1.as_ref().unwrap(), &Data::Key(Some("shop".into())));
        assert_eq!(got[3].1.as_ref().unwrap(), &Data::Key(None));
        let Ok(Data::Keys(k)) = &got[4].1 else {
            panic!()
        };
        assert_eq!(
            k.iter().map(|k| k.path.as_str()).collect::<Vec<_>>(),
            ["app/db/url", "app/name"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_directory_is_an_error_not_an_empty_catalog() {
        let cat = DirCatalog::new("/nonexistent/rewire-catalog");
        assert!(cat.fetch(&Query::Service("web".into())).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registration_expires_by_the_injected_clock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("services")).unwrap();
        let now = Arc::new(std::sync::Mutex::new(SystemTime::now()));
        let n2 = now.clone();
        let cat = DirCatalog::with_clock(dir.path(), Arc::new(move || *n2.lock().unwrap()));
        let reg = Registration {
            id: "web-h-80".into(),
            name: "web".into(),
            address: "10.0.0.9".into(),
            port: 80,
            tags: vec![],
            meta: BTreeMap::new(),
            ttl: Duration::from_secs(10),
            deregister_after: Duration::from_secs(600),
            status: Status::Passing,
        };
        cat.register(&reg).await.unwrap();
        let q = Query::Service("web".into());
        let Data::Instances(l) = cat.fetch(&q).await.unwrap() else {
            panic!()
        };
        assert_eq!(l[0].status, Status::Passing);
        *now.lock().unwrap() += Duration::from_secs(11);
        let Data::Instances(l) = cat.fetch(&q).await.unwrap() else {
            panic!()
        };
        assert_eq!(l[0].status, Status::Critical);
        cat.update_ttl(&reg, Status::Passing, "ok").await.unwrap();
        let Data::Instances(l) = cat.fetch(&q).await.unwrap() else {
            panic!()
        };
        assert_eq!(l[0].status, Status::Passing);
        cat.deregister(&reg).await.unwrap();
        assert!(matches!(
            cat.update_ttl(&reg, Status::Passing, "").await,
            Err(CatalogError::NotRegistered { .. })
        ));
    }
}
