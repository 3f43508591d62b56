//! The catalog directory held in memory, and the answers it gives.
//!
//! [`DirCatalog::load`] reads the whole tree (files in parallel); after that an inotify event
//! re-reads only what one path may have touched ([`DirCatalog::apply_path`]), so one change
//! among 10 000 instances costs one file read. Expiry is decided at answer time from the
//! catalog's clock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::DirCatalog;
use super::files::{
    READ_BUF, collect_files, decode_instance, file_name, instance_id, kv_key, list_dir,
    parallel_map, read_at, read_instance, read_kv,
};
use crate::catalog::CatalogError;
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
}

impl DirCatalog {
    /// Reads the whole tree, files in parallel (10 000 small files take ~30-50 ms in series).
    pub(super) fn load(&self) -> Result<Tree, CatalogError> {
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
    pub(super) fn apply_path(&self, tree: &mut Tree, path: &Path) -> Touched {
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
    pub(super) fn reap(&self, tree: &Tree, now: SystemTime, deregister_after: Duration) {
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
            }
    }
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
        // Never asked: elections are not catalog queries (`Query::is_catalog`).
        Query::Election(_) => Data::empty_for(q),
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
