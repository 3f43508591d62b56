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
//!
//! `tree.rs` holds the in-memory tree and the answers it gives, `files.rs` reading instance
//! and key files (confined to the catalog directory, regular files only, capped at
//! `[catalog] max_file`), `inotify.rs` the watch loop, `election.rs` elections
//! (`PATH/elections/`).

mod election;
mod files;
mod inotify;
mod tree;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::files::Reader;
use self::tree::{Tree, answer, withheld};
use super::record::{Record, truncate_note};
use super::{Catalog, CatalogError};
use crate::lock::lock;
use crate::model::{Data, Query, Registration, Status, check_name};
use crate::store::Store;

/// Wall-clock source, injectable so expiry can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

pub struct DirCatalog {
    /// Root, node name and size cap: what the blocking reader threads need.
    reader: Arc<Reader>,
    clock: Clock,
    /// How long an expired instance file may linger before any rewire deletes it.
    deregister_after: Duration,
    /// The last full read, reused by `fetch_many` for a moment: a one-shot render discovers
    /// its queries over two or three rounds, and re-reading 10 000 files each round would
    /// triple its run time.
    recent: std::sync::Mutex<Option<(std::time::Instant, Arc<Tree>)>>,
    /// A full read started by `warm_up`, for the first `fetch_many` to take. The templates
    /// render once meanwhile, to learn their queries: time that used to pass before the first
    /// file was opened.
    warming: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Tree, CatalogError>>>>,
}

/// How long `fetch_many` may answer from the last full read.
const RECENT: Duration = Duration::from_millis(200);

impl DirCatalog {
    pub fn new(root: impl Into<PathBuf>) -> DirCatalog {
        DirCatalog::with_clock(root, Arc::new(SystemTime::now))
    }

    pub fn with_clock(root: impl Into<PathBuf>, clock: Clock) -> DirCatalog {
        DirCatalog {
            reader: Arc::new(Reader::new(
                root.into(),
                crate::host::hostname(),
                crate::config::DEFAULT_MAX_FILE,
            )),
            clock,
            deregister_after: Duration::from_secs(600),
            recent: std::sync::Mutex::new(None),
            warming: std::sync::Mutex::new(None),
        }
    }

    /// Sets how long expired instance files linger (`[catalog] deregister_after`).
    pub fn with_deregister_after(mut self, d: Duration) -> DirCatalog {
        self.deregister_after = d;
        self
    }

    /// Sets the largest file read (`[catalog] max_file`).
    pub fn with_max_file(mut self, max: u64) -> DirCatalog {
        let r = &self.reader;
        self.reader = Arc::new(Reader::new(r.root.clone(), r.node.clone(), max));
        self
    }

    pub fn root(&self) -> &Path {
        &self.reader.root
    }

    pub(super) fn services_dir(&self) -> PathBuf {
        self.root().join("services")
    }

    pub(super) fn instance_path(&self, service: &str, id: &str) -> PathBuf {
        self.services_dir().join(service).join(format!("{id}.json"))
    }

    /// `services/<service>` opened for writing a record into it (see [`writable_dir`]).
    fn service_dir(&self, service: &str, create: bool) -> Result<Option<File>, CatalogError> {
        writable_dir(self.root(), &Path::new("services").join(service), create)
    }

    pub(super) fn missing_root(&self) -> CatalogError {
        CatalogError::Io {
            path: self.root().display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the catalog directory does not exist: create it (with services/ and kv/ inside) or point [catalog] path at it",
            ),
        }
    }

    /// Forgets the last full read (after our own writes, which must show at once).
    pub(super) fn invalidate(&self) {
        *lock(&self.recent) = None;
    }

    pub(super) fn write_record(
        &self,
        reg: &Registration,
        status: Status,
        note: &str,
    ) -> Result<(), CatalogError> {
        self.invalidate();
        check_name(&reg.name)
            .map_err(|e| CatalogError::Unsupported(format!("service name {e}")))?;
        check_name(&reg.id).map_err(|e| CatalogError::Unsupported(format!("service id {e}")))?;
        let mut record = Record::from_registration(reg, status, &self.reader.node);
        let expires = (self.clock)() + reg.ttl;
        record.expires_at = Some(humantime::format_rfc3339_millis(expires).to_string());
        if !note.is_empty() {
            record.notes = Some(truncate_note(note, 4096));
        }
        let mut bytes = serde_json::to_vec_pretty(&record).expect("a Record always serializes");
        bytes.push(b'\n');
        let path = self.instance_path(&reg.name, &reg.id);
        let dir = self
            .service_dir(&reg.name, true)?
            .expect("created when missing");
        crate::files::write_atomic_in(&dir, &format!("{}.json", reg.id), &bytes, 0o644).map_err(
            |e| CatalogError::Io {
                path: path.display().to_string(),
                source: e,
            },
        )
    }
}

/// The directory `rel` beneath the catalog `root`, opened for writing files into it with the
/// `*at` calls; `create`: made when missing (the catalog directory itself too: it comes from
/// the config), else None when missing. Whoever may write the catalog may plant symlinks in
/// it, and rewire often runs as root: a link on the way that leads out of the catalog is
/// refused, as the reader refuses it, so no record, lock or token is ever written elsewhere.
pub(super) fn writable_dir(
    root: &Path,
    rel: &Path,
    create: bool,
) -> Result<Option<File>, CatalogError> {
    use crate::confined::{Refused, dir_beneath, open_beneath, open_dir};
    let opened = if create {
        std::fs::create_dir_all(root).map_err(|e| CatalogError::Io {
            path: root.display().to_string(),
            source: e,
        })?;
        dir_beneath(root, rel)
    } else {
        match open_dir(root) {
            Ok(r) => open_beneath(std::os::fd::AsFd::as_fd(&r), rel, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refused::NotFound),
            Err(e) => Err(Refused::Io(e)),
        }
    };
    let path = root.join(rel).display().to_string();
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(Refused::NotFound) if !create => Ok(None),
        Err(Refused::Escapes(_)) => Err(CatalogError::Io {
            path,
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "a symlink leads out of the catalog directory {}; rewire writes only inside it: replace the link with a directory",
                    root.display()
                ),
            ),
        }),
        Err(Refused::Io(e)) => Err(CatalogError::Io { path, source: e }),
        Err(e) => Err(CatalogError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// The same error again, for each query a failed read answers.
fn copy_error(e: &CatalogError) -> CatalogError {
    match e {
        CatalogError::Io { path, source } => CatalogError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => CatalogError::Unsupported(other.to_string()),
    }
}

#[async_trait]
impl Catalog for DirCatalog {
    fn describe(&self) -> String {
        format!("dir:{}", self.root().display())
    }

    fn warm_up(&self) {
        let mut warming = lock(&self.warming);
        if warming.is_none() {
            let reader = self.reader.clone();
            *warming = Some(tokio::task::spawn_blocking(move || reader.load(None)));
        }
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
            None => {
                // On the blocking pool: reading never holds an async worker.
                let warming = lock(&self.warming).take();
                let reader = self.reader.clone();
                let read = match warming {
                    Some(started) => started.await,
                    None => tokio::task::spawn_blocking(move || reader.load(None)).await,
                };
                match read {
                    Ok(read) => read.map(|t| {
                        let t = Arc::new(t);
                        *lock(&self.recent) = Some((std::time::Instant::now(), t.clone()));
                        t
                    }),
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
        };
        queries
            .iter()
            .map(|q| {
                let r = match &tree {
                    _ if q.needs_consul() => Err(super::consul_only(q, "dir")),
                    Ok(t) => match withheld(t, q) {
                        // As Consul does for the same key: an error, not "absent".
                        Some(why) => Err(CatalogError::Malformed {
                            backend: "dir".into(),
                            detail: format!("{q}: {why}"),
                        }),
                        None => Ok(answer(t, q, now)),
                    },
                    Err(e) => Err(copy_error(e)),
                };
                (q.clone(), r)
            })
            .collect()
    }
    async fn watch(
        &self,
        wanted: watch::Receiver<BTreeSet<Query>>,
        store: Arc<Store>,
        stop: CancellationToken,
    ) {
        self.watch_tree(wanted, store, stop).await
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.write_record(reg, reg.status, "")
    }

    async fn deregister(&self, reg: &Registration) -> Result<(), CatalogError> {
        self.invalidate();
        let path = self.instance_path(&reg.name, &reg.id);
        let Some(dir) = self.service_dir(&reg.name, false)? else {
            return Ok(());
        };
        let name = format!("{}.json", reg.id);
        match nix::unistd::unlinkat(&dir, name.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(CatalogError::Io {
                path: path.display().to_string(),
                source: e.into(),
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

    fn ballot(
        &self,
        spec: &crate::catalog::election::BallotSpec,
    ) -> Result<Arc<dyn crate::catalog::election::Ballot>, CatalogError> {
        Ok(Arc::new(election::DirBallot::new(self.root(), spec)))
    }
}

/// An instance file's bytes as the tree takes them (`<service>/<id>.json`), for the fuzz
/// targets (`fuzzing.rs`): the instance, or why the file is refused.
pub(crate) fn decode_instance_file(
    bytes: &[u8],
    service: &str,
    id: &str,
) -> Result<Arc<crate::model::Instance>, String> {
    match files::decode_instance(bytes, service, id, "node") {
        files::Read::Good(entry) => Ok(entry.instance),
        files::Read::Refused(why) => Err(why),
        files::Read::Gone => Err("gone".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    fn reader(root: &Path, max_file: u64) -> Reader {
        Reader::new(root.to_path_buf(), "h".into(), max_file)
    }

    fn ids(tree: &Tree, service: &str) -> Vec<String> {
        tree.services
            .get(service)
            .map(|l| l.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_file_turned_invalid_keeps_its_last_good_copy_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "services/web/a.json",
            r#"{"address":"10.0.0.1","port":80}"#,
        );
        write(root, "kv/app/port", "8080");
        let r = reader(root, 1 << 20);
        let mut tree = r.load(None).unwrap();
        // A half-typed edit, then a value over the cap.
        write(root, "services/web/a.json", r#"{"address":"10.0.0.1","po"#);
        std::fs::write(root.join("kv/app/port"), "9".repeat(2 << 20)).unwrap();
        let paths = [root.join("services/web/a.json"), root.join("kv/app/port")];
        r.apply_paths(&mut tree, &paths).unwrap();
        assert_eq!(ids(&tree, "web"), ["a"]);
        assert_eq!(tree.kv.get("app/port").map(String::as_str), Some("8080"));
        assert_eq!(tree.refused.len(), 2, "{:?}", tree.refused);
        // A full re-read keeps them too.
        let tree2 = r.load(Some(&tree)).unwrap();
        assert_eq!(ids(&tree2, "web"), ["a"]);
        assert_eq!(tree2.kv.get("app/port").map(String::as_str), Some("8080"));
        // Fixed: the new content; deleted: gone.
        write(
            root,
            "services/web/a.json",
            r#"{"address":"10.0.0.2","port":80}"#,
        );
        r.apply_paths(&mut tree, &paths[..1]).unwrap();
        assert_eq!(tree.services["web"]["a"].instance.address, "10.0.0.2");
        assert_eq!(tree.refused.len(), 1);
        std::fs::remove_file(root.join("services/web/a.json")).unwrap();
        std::fs::remove_file(root.join("kv/app/port")).unwrap();
        r.apply_paths(&mut tree, &paths).unwrap();
        assert!(tree.services.is_empty() && tree.kv.is_empty() && tree.refused.is_empty());
    }

    /// A link out of its service directory that stays inside the root is opened from the root
    /// (the first try, beneath the service directory, refuses it).
    #[test]
    fn an_instance_linked_from_elsewhere_in_the_root_is_read() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("catalog");
        write(
            &root,
            "shared/b.json",
            r#"{"address": "10.0.0.2", "port": 80}"#,
        );
        write(
            &root,
            "services/web/a.json",
            r#"{"address": "10.0.0.1", "port": 80}"#,
        );
        symlink("../../shared/b.json", root.join("services/web/b.json")).unwrap();
        let tree = reader(&root, 1024).load(None).unwrap();
        let web = &tree.services["web"];
        assert_eq!(web.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(web["b"].instance.address, "10.0.0.2");
        assert!(tree.refused.is_empty(), "{:?}", tree.refused);
    }

    #[test]
    fn fifos_devices_and_links_leaving_the_root_are_refused_without_blocking() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("catalog");
        write(&root, "kv/app/ok", "fine");
        write(dir.path(), "secret", "root only");
        nix::unistd::mkfifo(
            &root.join("kv/app/pipe"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("services/web")).unwrap();
        symlink(
            root.join("kv/app/pipe"),
            root.join("services/web/fifo.json"),
        )
        .unwrap();
        symlink("/dev/zero", root.join("kv/app/zero")).unwrap();
        symlink(dir.path().join("secret"), root.join("kv/app/shadow")).unwrap();
        symlink("../../../secret", root.join("kv/app/up")).unwrap();
        // Inside the root: followed.
        symlink("ok", root.join("kv/app/alias")).unwrap();
        symlink("../kv/app", root.join("kv/linked")).unwrap();
        symlink("..", root.join("kv/app/loop")).unwrap();
        write(
            &root,
            "services/web/big.json",
            &format!(
                r#"{{"address":"10.0.0.1","port":80,"meta":{{"x":"{}"}}}}"#,
                "x".repeat(2000)
            ),
        );
        let tree = reader(&root, 1024).load(None).unwrap();
        let keys: Vec<&str> = tree.kv.keys().map(String::as_str).collect();
        assert_eq!(keys, ["app/alias", "app/ok", "linked/alias", "linked/ok"]);
        assert!(tree.services.is_empty());
        let refused: Vec<String> = tree
            .refused
            .keys()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            refused,
            [
                "kv/app/loop",
                "kv/app/pipe",
                "kv/app/shadow",
                "kv/app/up",
                "kv/app/zero",
                "kv/linked/loop",
                "kv/linked/pipe",
                "kv/linked/shadow",
                "kv/linked/up",
                "kv/linked/zero",
                "services/web/big.json",
                "services/web/fifo.json",
            ]
        );
        assert!(tree.refused[Path::new("kv/app/pipe")].contains("a FIFO"));
        assert!(tree.refused[Path::new("kv/app/shadow")].contains("leads out of the catalog"));
        assert!(tree.refused[Path::new("services/web/big.json")].contains("max_file"));
    }

    #[test]
    fn a_kubernetes_volume_update_rereads_its_directory() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "kv/nginx/..v1/listen", "80");
        symlink("..v1", root.join("kv/nginx/..data")).unwrap();
        symlink("..data/listen", root.join("kv/nginx/listen")).unwrap();
        let r = reader(root, 1 << 20);
        let mut tree = r.load(None).unwrap();
        assert_eq!(tree.kv.get("nginx/listen").map(String::as_str), Some("80"));
        // What kubelet does: a new version directory, the ..data link swapped by a rename.
        write(root, "kv/nginx/..v2/listen", "8080");
        symlink("..v2", root.join("kv/nginx/..data_tmp")).unwrap();
        std::fs::rename(
            root.join("kv/nginx/..data_tmp"),
            root.join("kv/nginx/..data"),
        )
        .unwrap();
        let touched = r
            .apply_paths(&mut tree, &[root.join("kv/nginx/..data")])
            .unwrap();
        assert!(touched.kv);
        assert_eq!(
            tree.kv.get("nginx/listen").map(String::as_str),
            Some("8080")
        );
        assert_eq!(tree.kv.len(), 1, "{:?}", tree.kv);
    }

    #[test]
    fn a_vanished_services_or_kv_directory_is_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "services/web/a.json",
            r#"{"address":"10.0.0.1","port":80}"#,
        );
        write(root, "kv/k", "v");
        let r = reader(root, 1 << 20);
        let tree = r.load(None).unwrap();
        assert!(r.still_there(&tree).is_ok());
        std::fs::remove_dir_all(root.join("services")).unwrap();
        let e = r.load(Some(&tree)).err().expect("an outage").to_string();
        assert!(e.contains("services/ vanished"), "{e}");
        assert!(r.still_there(&tree).is_err());
        // A fresh catalog without services/ is fine, and so is a new root directory.
        assert!(r.load(None).is_ok());
        std::fs::remove_dir_all(root).unwrap();
        write(root, "kv/k", "v");
        assert!(r.load(Some(&tree)).is_ok());
    }

    /// A fetch after `warm_up` answers from the read that started then (a file written in
    /// between is not in it), and the next fetch past the reuse window reads again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warmed_up_read_answers_the_first_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "services/web/a.json",
            r#"{"address":"10.0.0.1","port":80}"#,
        );
        let cat = DirCatalog::new(root);
        cat.warm_up();
        cat.warm_up();
        let started = lock(&cat.warming).take().expect("a read was started");
        let tree = started.await.unwrap().unwrap();
        assert_eq!(ids(&tree, "web"), ["a"]);

        cat.warm_up();
        // Wait for the warm-up's read to finish before the tree changes.
        while !lock(&cat.warming).as_ref().unwrap().is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        write(
            root,
            "services/web/b.json",
            r#"{"address":"10.0.0.2","port":80}"#,
        );
        let web = Query::Service("web".into());
        let Data::Instances(list) = cat.fetch(&web).await.unwrap() else {
            panic!("not instances");
        };
        assert_eq!(
            list.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(
            lock(&cat.warming).is_none(),
            "the warm-up read was not taken"
        );

        *lock(&cat.recent) = None;
        let Data::Instances(list) = cat.fetch(&web).await.unwrap() else {
            panic!("not instances");
        };
        assert_eq!(list.len(), 2);
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
        let reg = registration("web", "web-h-80");
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

    fn registration(name: &str, id: &str) -> Registration {
        Registration {
            id: id.into(),
            name: name.into(),
            address: "10.0.0.9".into(),
            port: 80,
            tags: vec![],
            meta: BTreeMap::new(),
            ttl: Duration::from_secs(10),
            deregister_after: Duration::from_secs(600),
            status: Status::Passing,
        }
    }

    #[tokio::test]
    async fn records_are_never_written_or_removed_through_links_leading_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("catalog");
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(root.join("services")).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("services/api")).unwrap();
        std::fs::write(victim.join("api-1.json"), "theirs").unwrap();
        let cat = DirCatalog::new(&root);

        let err = cat
            .register(&registration("api", "api-1"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("leads out of the catalog"),
            "{err}"
        );
        assert!(cat.deregister(&registration("api", "api-1")).await.is_err());
        assert_eq!(
            std::fs::read_to_string(victim.join("api-1.json")).unwrap(),
            "theirs"
        );
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            1,
            "nothing else written there"
        );

        // A link planted at the record's own name is replaced, not written through.
        std::fs::create_dir_all(root.join("services/web")).unwrap();
        let target = dir.path().join("passwd");
        std::fs::write(&target, "root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink(&target, root.join("services/web/web-1.json")).unwrap();
        cat.register(&registration("web", "web-1")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:0\n");
        let meta = std::fs::symlink_metadata(root.join("services/web/web-1.json")).unwrap();
        assert!(meta.is_file());
        cat.deregister(&registration("web", "web-1")).await.unwrap();
        assert!(!root.join("services/web/web-1.json").exists());
        assert!(target.exists());

        // A missing catalog and service directory are made on the first registration.
        let fresh = DirCatalog::new(dir.path().join("fresh"));
        fresh.register(&registration("db", "db-1")).await.unwrap();
        assert!(dir.path().join("fresh/services/db/db-1.json").is_file());
    }
}
