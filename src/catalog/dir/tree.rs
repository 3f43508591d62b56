//! The catalog directory held in memory, and the answers it gives.
//!
//! [`Reader::load`] reads the whole tree (files in parallel); after that an inotify event
//! re-reads only what one path may have touched ([`Reader::apply_path`]), so one change among
//! 10 000 instances costs one file read. Expiry is decided at answer time from the catalog's
//! clock.
//!
//! A file that turns unusable (a half-typed edit, a typo, a FIFO, a file over `max_file`)
//! keeps the last good copy of what it held: only its deletion (or, for an instance, its
//! expiry) removes it. It is warned about once, when it turns bad, and noted when it is good
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::files::{OpenDir, Read, Reader, Root, hidden, instance_id, kv_key, list};
use crate::catalog::CatalogError;
use crate::confined::Kind;
use crate::model::{Data, Instance, KeyValue, Query, Status};

/// One instance file, decoded.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) instance: Arc<Instance>,
    pub(super) expiry: Option<SystemTime>,
}

/// Everything under the catalog directory.
#[derive(Default)]
pub(super) struct Tree {
    pub(super) services: BTreeMap<String, BTreeMap<String, Entry>>,
    pub(super) kv: BTreeMap<String, String>,
    /// Files that cannot be used now (path relative to the root → why). Each was warned about
    /// once; a good copy read before stays in use.
    pub(super) refused: BTreeMap<PathBuf, String>,
    /// Whether `services/` and `kv/` were there at the last full read: one that vanishes
    /// afterwards from the same root directory is an outage (`rm -rf`), not an empty catalog.
    /// (A root directory replaced by a new one is a new catalog: it is read as it is.)
    pub(super) has_services: bool,
    pub(super) has_kv: bool,
    /// The root directory read last, held open: while it is, its inode cannot be reused, so
    /// a root deleted and created again never passes for the same one.
    pub(super) root: Option<Arc<std::fs::File>>,
    /// Files that turned unusable lately: when the window began, and how often since (see
    /// [`Tree::flap`]).
    flaps: BTreeMap<PathBuf, (std::time::Instant, u32)>,
}

/// A file may turn unusable this many times within [`FLAP_WINDOW`] and be warned about each
/// time; past that, until the window is over, its turns are logged at debug. A writer
/// alternating bad and good content wrote a warning and an info line per write (28 000 lines
/// in 10 s).
const FLAP_WARNINGS: u32 = 3;
const FLAP_WINDOW: Duration = Duration::from_secs(60);

impl Tree {
    /// Counts one more turn to unusable of `rel`: (whether to warn about it, whether to say
    /// now that its turns go to debug for a while).
    fn flap(&mut self, rel: &Path, now: std::time::Instant) -> (bool, bool) {
        if self.flaps.len() >= 4096 {
            self.flaps
                .retain(|_, (since, _)| now.duration_since(*since) < FLAP_WINDOW);
        }
        let (since, n) = self.flaps.entry(rel.to_path_buf()).or_insert((now, 0));
        if now.duration_since(*since) >= FLAP_WINDOW {
            (*since, *n) = (now, 0);
        }
        *n += 1;
        (*n <= FLAP_WARNINGS, *n == FLAP_WARNINGS + 1)
    }

    /// Whether `rel`'s turns are logged at debug now (see [`Tree::flap`]).
    fn flapping(&self, rel: &Path, now: std::time::Instant) -> bool {
        self.flaps.get(rel).is_some_and(|(since, n)| {
            *n > FLAP_WARNINGS && now.duration_since(*since) < FLAP_WINDOW
        })
    }

    /// Whether `path` is still the root directory this tree was read from.
    fn same_root(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(held) = self.root.as_ref().and_then(|f| f.metadata().ok()) else {
            return false;
        };
        held.nlink() > 0
            && std::fs::metadata(path)
                .is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == (held.dev(), held.ino()))
    }
}

/// Directories deeper than this under `kv/` are not read (a link loop that stays inside the
/// root is also stopped by remembering the directories seen).
const MAX_KV_DEPTH: usize = 32;

/// Kubernetes' atomic writer (ConfigMap and Secret volumes) swaps this link to publish a new
/// version of every file in the directory at once.
pub(super) const KUBERNETES_DATA: &str = "..data";

impl Reader {
    /// Reads the whole tree, files in parallel (10 000 small files take ~30-50 ms in series).
    /// `prev` is what was known before: a file that is unusable now keeps its copy from there,
    /// and files already known to be unusable are not warned about again.
    pub(super) fn load(&self, prev: Option<&Tree>) -> Result<Tree, CatalogError> {
        let root = self.open_root().map_err(|e| self.root_error(e))?;
        let mut tree = Tree {
            root: root.handle(),
            flaps: prev.map(|p| p.flaps.clone()).unwrap_or_default(),
            ..Tree::default()
        };
        let services_rel = Path::new("services");
        match self.open_dir(&root, services_rel) {
            Ok(Some(services)) => {
                tree.has_services = true;
                self.load_services(&root, &services, prev, &mut tree);
            }
            Ok(None) => {}
            Err(why) => self.refuse(&mut tree, prev, services_rel, why),
        }
        let kv_rel = Path::new("kv");
        match self.open_dir(&root, kv_rel) {
            Ok(Some(kv)) => {
                tree.has_kv = true;
                self.load_kv(&root, &kv, 0, &mut Vec::new(), prev, &mut tree);
            }
            Ok(None) => {}
            Err(why) => self.refuse(&mut tree, prev, kv_rel, why),
        }
        if let Some(prev) = prev.filter(|p| p.same_root(&self.root)) {
            for (dir, had) in [("services", prev.has_services), ("kv", prev.has_kv)] {
                let has = if dir == "services" {
                    tree.has_services
                } else {
                    tree.has_kv
                };
                if had && !has {
                    return Err(self.vanished(dir));
                }
            }
        }
        Ok(tree)
    }

    fn load_services(&self, root: &Root, services: &OpenDir, prev: Option<&Tree>, tree: &mut Tree) {
        // Each service directory is opened once and its files are opened relative to it. This
        // thread only lists names: ids, paths and decoding are the reader threads' work (with
        // 10 000 files, doing them here took ~3 ms before the first file was opened).
        let mut dirs: Vec<(String, OpenDir)> = Vec::new();
        let mut files: Vec<(usize, OsString)> = Vec::new();
        for name in list(services) {
            if hidden(&name) {
                continue;
            }
            let rel = services.rel.join(&name);
            let dir = match self.open_dir(root, &rel) {
                Ok(Some(d)) => d,
                // A stray file in services/, or gone meanwhile.
                Ok(None) => continue,
                Err(why) => {
                    self.refuse(tree, prev, &rel, why);
                    continue;
                }
            };
            files.extend(list(&dir).into_iter().map(|file| (dirs.len(), file)));
            dirs.push((name.to_string_lossy().into_owned(), dir));
        }
        // Twice the cores: a file not in the page cache blocks its thread on the disk.
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .min(8);
        let reads = crate::parallel::map(&files, threads, |(d, file)| {
            let (service, dir) = &dirs[*d];
            let id = instance_id(file)?;
            let read = self.read_instance_in(root, dir, file, service, &id);
            Some((id, read))
        });
        // Each service's instances, collected before they go into its map in one sorted build.
        let mut found: Vec<Vec<(String, Entry)>> = vec![Vec::new(); dirs.len()];
        for ((d, file), read) in files.into_iter().zip(reads) {
            let (service, dir) = &dirs[d];
            let Some((id, read)) = read else {
                self.note_not_an_instance(&dir.rel.join(&file), &file);
                continue;
            };
            let entry = match read {
                Read::Good(e) => Some(e),
                Read::Gone => None,
                Read::Refused(why) => {
                    self.refuse(tree, prev, &dir.rel.join(&file), why);
                    prev.and_then(|p| p.services.get(service)?.get(&id).cloned())
                }
            };
            if let Some(e) = entry {
                found[d].push((id, e));
            }
        }
        for ((service, _), entries) in dirs.into_iter().zip(found) {
            if !entries.is_empty() {
                tree.services.insert(service, entries.into_iter().collect());
            }
        }
    }

    /// Reads every key under `dir` (recursively; directories linked inside the root are
    /// followed, except back into a directory being read: a link loop).
    fn load_kv(
        &self,
        root: &Root,
        dir: &OpenDir,
        depth: usize,
        ancestors: &mut Vec<(u64, u64)>,
        prev: Option<&Tree>,
        tree: &mut Tree,
    ) {
        use std::os::unix::fs::MetadataExt;
        let id = dir.file.metadata().map(|m| (m.dev(), m.ino())).ok();
        if let Some(id) = id {
            if ancestors.contains(&id) {
                self.refuse(tree, prev, &dir.rel, "a symlink loop".into());
                return;
            }
            ancestors.push(id);
        }
        self.load_kv_entries(root, dir, depth, ancestors, prev, tree);
        if id.is_some() {
            ancestors.pop();
        }
    }

    fn load_kv_entries(
        &self,
        root: &Root,
        dir: &OpenDir,
        depth: usize,
        ancestors: &mut Vec<(u64, u64)>,
        prev: Option<&Tree>,
        tree: &mut Tree,
    ) {
        for name in list(dir) {
            let rel = dir.rel.join(&name);
            let Some(key) = kv_key_of(&rel) else {
                continue;
            };
            match self.open_entry(root, dir, &name) {
                Ok(None) => {}
                Ok(Some((file, Kind::Directory))) => {
                    if depth < MAX_KV_DEPTH {
                        let sub = OpenDir { file, rel };
                        self.load_kv(root, &sub, depth + 1, ancestors, prev, tree);
                    } else {
                        self.refuse(
                            tree,
                            prev,
                            &rel,
                            format!("more than {MAX_KV_DEPTH} directories deep"),
                        );
                    }
                }
                Ok(Some((file, _))) => match self.read_value(file) {
                    Read::Good(v) => {
                        tree.kv.insert(key, v);
                    }
                    Read::Gone => {}
                    Read::Refused(why) => self.keep_kv(tree, prev, &rel, key, why),
                },
                Err(why) => self.keep_kv(tree, prev, &rel, key, why),
            }
        }
    }

    /// A key file that cannot be read: keep its last good value, if any.
    fn keep_kv(&self, tree: &mut Tree, prev: Option<&Tree>, rel: &Path, key: String, why: String) {
        self.refuse(tree, prev, rel, why);
        if let Some(v) = prev.and_then(|p| p.kv.get(&key)) {
            tree.kv.insert(key, v.clone());
        }
    }

    /// Records an unusable file in a tree being loaded; warns unless `prev` knew already.
    fn refuse(&self, tree: &mut Tree, prev: Option<&Tree>, rel: &Path, why: String) {
        let known = prev.is_some_and(|p| p.refused.contains_key(rel));
        if !known {
            warn!(file = ?self.root.join(rel), reason = %why, "catalog file skipped; fix or remove it");
        }
        tree.refused.insert(rel.to_path_buf(), why);
    }

    fn root_error(&self, e: std::io::Error) -> CatalogError {
        let source = if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the catalog directory does not exist: create it (with services/ and kv/ inside) or point [catalog] path at it; the last good data stays in use meanwhile",
            )
        } else {
            e
        };
        CatalogError::Io {
            path: self.root.display().to_string(),
            source,
        }
    }

    fn vanished(&self, dir: &str) -> CatalogError {
        CatalogError::Io {
            path: self.root.join(dir).display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{dir}/ vanished: keeping the last good data until it is back (to empty the catalog on purpose, leave an empty {dir}/)"
                ),
            ),
        }
    }

    /// Whether the root and the top directories the last full read found are still there. A
    /// burst of deletions is applied only then: `rm -rf catalog` is an outage, not a catalog
    /// emptied one file at a time.
    pub(super) fn still_there(&self, tree: &Tree) -> Result<(), CatalogError> {
        let is_dir = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
        if !tree.same_root(&self.root) {
            return Err(self.root_error(std::io::ErrorKind::NotFound.into()));
        }
        for (dir, had) in [("services", tree.has_services), ("kv", tree.has_kv)] {
            if had && !is_dir(&self.root.join(dir)) {
                return Err(self.vanished(dir));
            }
        }
        Ok(())
    }

    /// Re-reads what changed paths may have touched. `Err`: the root cannot be opened (the
    /// caller re-reads everything).
    pub(super) fn apply_paths(
        &self,
        tree: &mut Tree,
        paths: &[PathBuf],
    ) -> Result<Touched, CatalogError> {
        let root = self.open_root().map_err(|e| self.root_error(e))?;
        let mut touched = Touched::default();
        let mut done = BTreeSet::new();
        for p in paths {
            if done.insert(p.clone()) {
                touched.merge(self.apply_path(&root, tree, p));
            }
        }
        Ok(touched)
    }

    /// Re-reads what one changed path may have touched.
    fn apply_path(&self, root: &Root, tree: &mut Tree, path: &Path) -> Touched {
        let mut touched = Touched::default();
        let Ok(rel) = path.strip_prefix(&self.root) else {
            return touched;
        };
        let mut parts: Vec<String> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
                _ => return touched,
            }
        }
        // Kubernetes published a new version of a directory: re-read the directory.
        if parts.last().is_some_and(|n| n == KUBERNETES_DATA) {
            parts.pop();
            debug!(dir = %parts.join("/"), "a Kubernetes volume was updated; re-reading its directory");
        }
        match parts.as_slice() {
            [] => touched.everything = true,
            [top] if top == "services" || top == "kv" => touched.everything = true,
            [top, service] if top == "services" => {
                // A service directory appeared, went or was replaced: re-read just it.
                self.reread_service(root, tree, service);
                touched.services.insert(service.clone());
                touched.new_dirs.push(path.to_path_buf());
            }
            [top, service, file] if top == "services" => {
                let Some(id) = instance_id(std::ffi::OsStr::new(file)) else {
                    self.note_not_an_instance(rel, std::ffi::OsStr::new(file));
                    return touched;
                };
                let rel = Path::new("services").join(service).join(file);
                let read = self.read_instance(root, None, &rel, service, &id);
                self.apply_instance(tree, &rel, service, &id, read);
                touched.services.insert(service.clone());
            }
            [top, rest @ ..] if top == "kv" => {
                let rel: PathBuf = std::iter::once("kv")
                    .chain(rest.iter().map(String::as_str))
                    .collect();
                self.apply_kv(root, tree, &rel);
                touched.kv = true;
            }
            _ => {}
        }
        touched
    }

    fn reread_service(&self, root: &Root, tree: &mut Tree, service: &str) {
        let rel = Path::new("services").join(service);
        let dir = match self.open_dir(root, &rel) {
            Ok(d) => d,
            Err(why) => {
                self.note_refused(tree, &rel, why, tree.services.contains_key(service));
                return;
            }
        };
        let mut ids: BTreeSet<String> = tree
            .services
            .get(service)
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(dir) = &dir {
            self.note_good(tree, &rel);
            for name in list(dir) {
                if instance_id(&name).is_none() {
                    self.note_not_an_instance(&rel.join(&name), &name);
                }
                if let Some(id) = instance_id(&name) {
                    let file = rel.join(&name);
                    let read = self.read_instance(root, Some(dir), &file, service, &id);
                    self.apply_instance(tree, &file, service, &id, read);
                    ids.remove(&id);
                }
            }
        }
        // What the directory no longer holds (or the whole directory, if it went).
        for id in ids {
            let file = rel.join(format!("{id}.json"));
            self.apply_instance(tree, &file, service, &id, Read::Gone);
        }
    }

    fn apply_instance(
        &self,
        tree: &mut Tree,
        rel: &Path,
        service: &str,
        id: &str,
        read: Read<Entry>,
    ) {
        match read {
            Read::Good(e) => {
                self.note_good(tree, rel);
                tree.services
                    .entry(service.to_string())
                    .or_default()
                    .insert(id.to_string(), e);
            }
            Read::Gone => {
                tree.refused.remove(rel);
                if let Some(list) = tree.services.get_mut(service) {
                    list.remove(id);
                    if list.is_empty() {
                        tree.services.remove(service);
                    }
                }
            }
            Read::Refused(why) => {
                let kept = tree
                    .services
                    .get(service)
                    .is_some_and(|l| l.contains_key(id));
                self.note_refused(tree, rel, why, kept);
            }
        }
    }

    fn apply_kv(&self, root: &Root, tree: &mut Tree, rel: &Path) {
        let Some(key) = kv_key_of(rel) else {
            return;
        };
        let prefix = format!("{key}/");
        let opened = match self.open_dir(root, rel) {
            Ok(Some(dir)) => Some(dir),
            Ok(None) => None,
            Err(why) => {
                let kept = tree.kv.contains_key(&key);
                self.note_refused(tree, rel, why, kept);
                return;
            }
        };
        if let Some(dir) = opened {
            // A directory of keys appeared, moved or was republished: re-read the subtree.
            let mut fresh = Tree::default();
            self.load_kv(root, &dir, 0, &mut Vec::new(), Some(tree), &mut fresh);
            let subtree = |p: &PathBuf| p.starts_with(rel) && p != rel;
            tree.kv.retain(|k, _| *k != key && !k.starts_with(&prefix));
            tree.kv.extend(fresh.kv);
            let now_refused: BTreeSet<PathBuf> = fresh.refused.keys().cloned().collect();
            tree.refused
                .retain(|p, _| !subtree(p) || now_refused.contains(p));
            tree.refused.extend(fresh.refused);
            return;
        }
        match self.read_kv(root, rel) {
            Read::Good(v) => {
                self.note_good(tree, rel);
                tree.kv.insert(key, v);
            }
            Read::Gone => {
                // Gone: a file, or a whole directory of keys.
                tree.refused.retain(|p, _| !p.starts_with(rel));
                tree.kv.retain(|k, _| *k != key && !k.starts_with(&prefix));
            }
            Read::Refused(why) => {
                let kept = tree.kv.contains_key(&key);
                self.note_refused(tree, rel, why, kept);
            }
        }
    }

    /// A file turned unusable: warn once (until it is good again), keep what it held.
    fn note_refused(&self, tree: &mut Tree, rel: &Path, why: String, kept: bool) {
        let file = self.root.join(rel);
        let new = !tree.refused.contains_key(rel);
        let (loud, say) = if new {
            tree.flap(rel, std::time::Instant::now())
        } else {
            (false, false)
        };
        if say {
            warn!(file = ?file, "catalog file keeps turning unusable and usable again; its next turns are logged at debug level for a minute");
        }
        if !new {
            debug!(file = ?file, reason = %why, "catalog file still unusable");
        } else if !loud {
            debug!(file = ?file, reason = %why, "catalog file unusable again");
        } else if kept {
            warn!(file = ?file, reason = %why, "catalog file unusable; keeping its last good content until it is fixed or removed");
        } else {
            warn!(file = ?file, reason = %why, "catalog file skipped; fix or remove it");
        }
        tree.refused.insert(rel.to_path_buf(), why);
    }

    fn note_good(&self, tree: &mut Tree, rel: &Path) {
        if tree.refused.remove(rel).is_some() {
            let file = self.root.join(rel);
            if tree.flapping(rel, std::time::Instant::now()) {
                debug!(file = ?file, "catalog file is usable again");
            } else {
                info!(file = ?file, "catalog file is usable again");
            }
        }
    }

    /// Deletes instance files expired for longer than `deregister_after` (`due`, from
    /// [`due_for_removal`]). Re-reads each file first, so a registration refreshed a moment ago
    /// survives (and a file that does not read as an expired instance is left alone).
    /// Returns the instances whose file could not be removed (a read-only catalog, another
    /// user's directory).
    pub(super) fn reap(
        &self,
        due: &[(String, String)],
        now: SystemTime,
        deregister_after: Duration,
    ) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let Ok(root) = self.open_root() else {
            return failed;
        };
        for (service, id) in due {
            // The service directory is opened beneath the root and the file removed inside
            // that very directory (`unlinkat`), never by path: a writer who swaps
            // `services/<service>` for a link leading out between the re-read and the removal
            // must not get rewire (often root) to delete `<id>.json` anywhere else.
            let Ok(Some(dir)) = self.open_dir(&root, &Path::new("services").join(service)) else {
                continue;
            };
            let name = format!("{id}.json");
            let rel = dir.rel.join(&name);
            let Read::Good(fresh) = self.read_instance_in(&root, &dir, name.as_ref(), service, id)
            else {
                continue;
            };
            if fresh.expiry.is_none_or(|x| x + deregister_after > now) {
                continue;
            }
            let path = self.root.join(&rel);
            match nix::unistd::unlinkat(
                &dir.file,
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) => {
                    info!(file = %path.display(), "removed an instance expired for longer than deregister_after")
                }
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot remove expired instance; trying again in an hour");
                    failed.push((service.clone(), id.clone()));
                }
            }
        }
        failed
    }
}

/// The key a path relative to the root names, if it is under `kv/`.
fn kv_key_of(rel: &Path) -> Option<String> {
    kv_key(rel.strip_prefix("kv").ok()?)
}

/// Instances expired for longer than `deregister_after`, whose files are due for removal.
pub(super) fn due_for_removal(
    tree: &Tree,
    now: SystemTime,
    deregister_after: Duration,
) -> Vec<(String, String)> {
    tree.services
        .iter()
        .flat_map(|(service, list)| {
            list.iter()
                .filter(|(_, e)| e.expiry.is_some_and(|x| x + deregister_after <= now))
                .map(move |(id, _)| (service.clone(), id.clone()))
        })
        .collect()
}

/// Which answers a batch of file events may have changed.
#[derive(Default)]
pub(super) struct Touched {
    pub(super) everything: bool,
    pub(super) services: BTreeSet<String>,
    pub(super) kv: bool,
    /// Service directories that appeared: files written into them before inotify watched
    /// them raise no event, so they are read again a little later.
    pub(super) new_dirs: Vec<PathBuf>,
}

impl Touched {
    pub(super) fn merge(&mut self, other: Touched) {
        self.everything |= other.everything;
        self.services.extend(other.services);
        self.kv |= other.kv;
        self.new_dirs.extend(other.new_dirs);
    }

    pub(super) fn affects(&self, q: &Query) -> bool {
        self.everything
            || match q {
                Query::Service(name) => self.services.contains(name),
                Query::Services => !self.services.is_empty(),
                Query::Key(_) | Query::Keys(_) => self.kv,
                Query::Election(_) => false,
                // Never asked (the template engine refuses Consul-only queries here).
                Query::Nodes | Query::Datacenters | Query::InDatacenter(..) => false,
            }
    }
}

/// The answers to `queries` the tree can give, leaving out the [`withheld`] ones: the store
/// keeps what it had for them (nothing yet, on a fresh start). `held` remembers those, so each
/// is warned about once while it stays held (a good change to another key of a held `keys()`
/// prefix does not show either, and templates look "ok" meanwhile).
pub(super) fn answers<'q>(
    tree: &Tree,
    queries: impl IntoIterator<Item = &'q Query>,
    now: SystemTime,
    held: &mut BTreeSet<Query>,
) -> Vec<(Query, Data)> {
    let mut out = Vec::new();
    for q in queries {
        match withheld(tree, q) {
            Some(why) => {
                if held.insert(q.clone()) {
                    warn!(query = %q, "not updated while {why}: templates using it keep its last answer (or wait for a first one); fix or remove the file");
                }
            }
            None => {
                if held.remove(q) {
                    info!(query = %q, "updated again: the refused file is fixed or gone");
                }
                out.push((q.clone(), answer(tree, q, now)));
            }
        }
    }
    out
}

/// Why `q` cannot be answered now, if it cannot: a key file it reads was refused (over
/// `max_file`, a symlink leading out, unreadable) and no good copy of it is held. Answering
/// "absent" would put a `key()` default in place of the real value; Consul refuses the same
/// key with an error.
pub(super) fn withheld(tree: &Tree, q: &Query) -> Option<String> {
    let (asked, exact) = match q {
        Query::Key(path) => (path.trim_matches('/'), true),
        Query::Keys(prefix) => (prefix.trim_start_matches('/'), false),
        _ => return None,
    };
    tree.refused.iter().find_map(|(rel, why)| {
        let key = kv_key_of(rel)?;
        // The key itself, or a directory of keys holding it; for a prefix, any key under it.
        let under_refused_dir = asked.starts_with(&format!("{key}/"));
        let hit = under_refused_dir
            || if exact {
                key == asked
            } else {
                key.starts_with(asked)
            };
        (hit && !tree.kv.contains_key(&key)).then(|| format!("{}: {why}", rel.display()))
    })
}

pub(super) fn answer(tree: &Tree, q: &Query, now: SystemTime) -> Data {
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
        // Never asked: elections are not catalog queries (`Query::is_catalog`), and the
        // template engine refuses Consul-only queries on other catalogs.
        Query::Election(_) | Query::Nodes | Query::Datacenters | Query::InDatacenter(..) => {
            Data::empty_for(q)
        }
    }
}

pub(super) fn instance_at(e: &Entry, now: SystemTime) -> Arc<Instance> {
    if e.expiry.is_some_and(|x| x <= now) && e.instance.status != Status::Critical {
        let mut i = Instance::clone(&e.instance);
        i.status = Status::Critical;
        return Arc::new(i);
    }
    e.instance.clone()
}

/// The next moment an instance expires, or an expired one becomes due for removal.
pub(super) fn next_deadline(
    tree: &Tree,
    now: SystemTime,
    deregister_after: Duration,
) -> Option<SystemTime> {
    tree.services
        .values()
        .flat_map(|l| l.values())
        .filter_map(|e| e.expiry)
        .flat_map(|x| [x, x + deregister_after])
        .filter(|t| *t > now)
        .min()
}

/// The services with an instance whose expiry (or removal time) falls in `(since, now]`: their
/// answers change then (passing to critical, or gone), and no other's does.
pub(super) fn services_due(
    tree: &Tree,
    since: SystemTime,
    now: SystemTime,
    deregister_after: Duration,
) -> BTreeSet<String> {
    tree.services
        .iter()
        .filter(|(_, l)| {
            l.values()
                .filter_map(|e| e.expiry)
                .flat_map(|x| [x, x + deregister_after])
                .any(|t| t > since && t <= now)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_services_with_a_deadline_in_the_window_are_due() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let entry = |expiry: Option<SystemTime>| Entry {
            instance: Arc::new(Instance {
                id: "i".into(),
                name: "s".into(),
                node: "n".into(),
                address: "10.0.0.1".into(),
                port: 80,
                tags: Vec::new(),
                meta: BTreeMap::new(),
                status: crate::model::Status::Passing,
            }),
            expiry,
        };
        let mut tree = Tree::default();
        for (svc, at) in [("a", Some(5)), ("b", Some(50)), ("c", None)] {
            tree.services
                .entry(svc.into())
                .or_default()
                .insert("i".into(), entry(at.map(|s| t0 + Duration::from_secs(s))));
        }
        let gone_after = Duration::from_secs(100);
        let due = |from: u64, to: u64| -> Vec<String> {
            services_due(
                &tree,
                t0 + Duration::from_secs(from),
                t0 + Duration::from_secs(to),
                gone_after,
            )
            .into_iter()
            .collect()
        };
        assert_eq!(due(0, 5), ["a"]);
        assert_eq!(due(5, 49), Vec::<String>::new());
        assert_eq!(due(40, 60), ["b"]);
        // Its removal, deregister_after later.
        assert_eq!(due(100, 105), ["a"]);
    }

    /// A writer alternating bad and good content: three turns a minute are warned about, the
    /// fourth says the rest go to debug, and a minute later it is warned about again.
    #[test]
    fn a_flapping_file_is_warned_about_a_few_times_a_minute() {
        let mut tree = Tree::default();
        let rel = Path::new("services/web/flip.json");
        let t0 = std::time::Instant::now();
        let turns: Vec<(bool, bool)> = (0..6).map(|_| tree.flap(rel, t0)).collect();
        assert_eq!(
            turns,
            [
                (true, false),
                (true, false),
                (true, false),
                (false, true),
                (false, false),
                (false, false)
            ]
        );
        assert!(tree.flapping(rel, t0));
        assert!(!tree.flapping(Path::new("services/web/other.json"), t0));
        let later = t0 + FLAP_WINDOW;
        assert!(!tree.flapping(rel, later));
        assert_eq!(tree.flap(rel, later), (true, false));
    }
}
