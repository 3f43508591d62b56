//! Reading instance and key files: small, many, and never trusted.
//!
//! Whoever may write the catalog directory decides what is there, and rewire often runs as
//! root. So every file is read through [`confined`](crate::confined): resolved beneath the
//! catalog root (symlinks that stay inside are followed, as Kubernetes ConfigMap volumes need;
//! one leading out is refused), opened without blocking (a FIFO cannot hang a reader),
//! regular files only, at most `[catalog] max_file` bytes.
//!
//! A whole-tree read opens thousands of files, so they are opened relative to their service
//! directory (falling back to the root for a link that leaves it) and read on a few threads.
//! A file that cannot be used is [`Read::Refused`] with the reason; what happens then (keep the
//! last good copy, warn once) is the tree's business.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::tree::Entry;
use crate::catalog::record::Record;
use crate::config::show_size;
use crate::confined::{self, Kind, Refused};
use crate::model::check_name;

thread_local! {
    /// A reader thread's buffer, reused from one file to the next.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What reading one catalog file gave.
#[derive(Debug)]
pub(super) enum Read<T> {
    Good(T),
    /// Not there (deleted, or never was).
    Gone,
    /// There, but not usable: why, for the warning.
    Refused(String),
}

/// Reads the catalog directory's files. Cheap to share between the watch loop and the
/// blocking threads that do the reading.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) root: PathBuf,
    pub(super) node: String,
    pub(super) max_file: u64,
    /// Files in a service directory that are not instances (no `.json`), each warned about
    /// once: `web-3` instead of `web-3.json` is an easy mistake that otherwise shows nowhere.
    pub(super) ignored: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl Reader {
    pub(super) fn new(root: PathBuf, node: String, max_file: u64) -> Reader {
        Reader {
            root,
            node,
            max_file,
            ignored: Default::default(),
        }
    }

    /// Warns (once per file) about a file in `services/<service>/` that is not read because
    /// its name does not end in `.json`. Hidden files, backups (`~`) and other versions of an
    /// instance file (`web-3.json.tmp`, `web-3.json.bak`: a writer's temp file on its way to
    /// a rename) are silently skipped, and so is a name that is gone by now: the event was
    /// its rename or removal. Only files that are there are remembered, and forgotten when
    /// they go, so a writer using a new temp name each time grows nothing.
    pub(super) fn note_not_an_instance(&self, rel: &Path, name: &std::ffi::OsStr) {
        let n = name.to_string_lossy();
        if hidden(name) || n.ends_with('~') || n.ends_with(".json") || n.contains(".json.") {
            return;
        }
        let there = std::fs::symlink_metadata(self.root.join(rel)).is_ok();
        let mut ignored = crate::lock::lock(&self.ignored);
        if !there {
            ignored.remove(rel);
        } else if ignored.insert(rel.to_path_buf()) {
            // Quoted and escaped: the name is the catalog writer's (a newline in it would
            // forge a log line).
            tracing::warn!(
                file = ?self.root.join(rel),
                "not an instance file (instance files end in .json); ignored"
            );
        }
    }
}

/// The catalog root, opened once per read so that every file is resolved beneath it.
pub(super) struct Root(File);

impl Root {
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Another descriptor of the root, for the tree to hold.
    pub(super) fn handle(&self) -> Option<Arc<File>> {
        self.0.try_clone().ok().map(Arc::new)
    }
}

/// An open directory inside the root, with its path relative to the root.
pub(super) struct OpenDir {
    pub(super) file: File,
    pub(super) rel: PathBuf,
}

impl Reader {
    pub(super) fn open_root(&self) -> std::io::Result<Root> {
        confined::open_dir(&self.root).map(Root)
    }

    /// Opens `rel` (relative to the root) beneath `dir` when given and `rel` is inside it,
    /// else beneath the root.
    fn open(
        &self,
        root: &Root,
        dir: Option<&OpenDir>,
        rel: &Path,
        directory: bool,
    ) -> Result<File, Refused> {
        if let Some(d) = dir
            && let Ok(name) = rel.strip_prefix(&d.rel)
        {
            return self.open_in(root, d, name, directory);
        }
        confined::open_beneath(root.fd(), rel, directory)
    }

    /// Opens `name` beneath the open directory `dir` (one short lookup), or beneath the root
    /// when a link leaves `dir` (it may still stay inside the root).
    fn open_in(
        &self,
        root: &Root,
        dir: &OpenDir,
        name: &Path,
        directory: bool,
    ) -> Result<File, Refused> {
        match confined::open_beneath(dir.file.as_fd(), name, directory) {
            Err(Refused::Escapes(_)) => {
                confined::open_beneath(root.fd(), &dir.rel.join(name), directory)
            }
            other => other,
        }
    }

    /// Opens a directory inside the root. `Ok(None)`: not there, or not a directory.
    pub(super) fn open_dir(&self, root: &Root, rel: &Path) -> Result<Option<OpenDir>, String> {
        match self.open(root, None, rel, true) {
            Ok(file) => Ok(Some(OpenDir {
                file,
                rel: rel.to_path_buf(),
            })),
            Err(Refused::NotFound) => Ok(None),
            Err(e) => Err(self.why(e)),
        }
    }

    /// Opens an entry of `dir` and tells what it is (`Ok(None)`: gone meanwhile).
    pub(super) fn open_entry(
        &self,
        root: &Root,
        dir: &OpenDir,
        name: &std::ffi::OsStr,
    ) -> Result<Option<(File, Kind)>, String> {
        let rel = dir.rel.join(name);
        match self.open(root, Some(dir), &rel, false) {
            Ok(file) => {
                let kind = confined::kind(&file).map_err(|e| self.why(e))?;
                Ok(Some((file, kind)))
            }
            Err(Refused::NotFound) => Ok(None),
            Err(e) => Err(self.why(e)),
        }
    }

    /// Reads an open regular file as a key's value.
    pub(super) fn read_value(&self, file: File) -> Read<String> {
        READ_BUF.with_borrow_mut(
            |buf| match confined::read_regular(file, self.max_file, buf) {
                Ok(()) => Read::Good(String::from_utf8_lossy(buf).into_owned()),
                Err(e) => self.refused(e),
            },
        )
    }

    /// Reads a key file (`rel` relative to the root).
    pub(super) fn read_kv(&self, root: &Root, rel: &Path) -> Read<String> {
        match self.open(root, None, rel, false) {
            Ok(file) => self.read_value(file),
            Err(e) => self.refused(e),
        }
    }

    /// Reads an instance file (`rel` relative to the root; `dir` its service directory, when
    /// open).
    pub(super) fn read_instance(
        &self,
        root: &Root,
        dir: Option<&OpenDir>,
        rel: &Path,
        service: &str,
        id: &str,
    ) -> Read<Entry> {
        self.read_opened_instance(self.open(root, dir, rel, false), service, id)
    }

    /// Reads the instance file `name` in the open service directory `dir`.
    pub(super) fn read_instance_in(
        &self,
        root: &Root,
        dir: &OpenDir,
        name: &std::ffi::OsStr,
        service: &str,
        id: &str,
    ) -> Read<Entry> {
        let opened = self.open_in(root, dir, Path::new(name), false);
        self.read_opened_instance(opened, service, id)
    }

    fn read_opened_instance(
        &self,
        opened: Result<File, Refused>,
        service: &str,
        id: &str,
    ) -> Read<Entry> {
        READ_BUF.with_borrow_mut(|buf| {
            match opened.and_then(|f| confined::read_regular(f, self.max_file, buf)) {
                Ok(()) => decode_instance(buf, service, id, &self.node),
                Err(e) => self.refused(e),
            }
        })
    }

    fn refused<T>(&self, e: Refused) -> Read<T> {
        match e {
            Refused::NotFound => Read::Gone,
            other => Read::Refused(self.why(other)),
        }
    }

    /// Why a file is refused, for the warning.
    fn why(&self, e: Refused) -> String {
        match e {
            Refused::TooBig { size, max } => format!(
                "{} is over the limit of {} (raise [catalog] max_file if it is meant to be this big)",
                show_size(size),
                show_size(max)
            ),
            Refused::Escapes(_) => format!(
                "a symlink leads out of the catalog directory {}; only links that stay inside are followed",
                self.root.display()
            ),
            Refused::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                "{e}: rewire runs as a user that may not read it (make it readable, e.g. chmod o+r, or run rewire as its owner)"
            ),
            other => other.to_string(),
        }
    }
}

/// Decodes an instance file's bytes.
pub(super) fn decode_instance(bytes: &[u8], service: &str, id: &str, node: &str) -> Read<Entry> {
    // The id comes from the file name, which may hold anything but `/`: it ends up in
    // configs (HAProxy server names), so it passes the same check as every other backend's.
    if let Err(e) = check_name(id) {
        return Read::Refused(format!(
            "invalid instance: instance id {e} (rename the file)"
        ));
    }
    let record = match Record::parse(bytes) {
        Ok(r) => r,
        Err(e) => {
            return Read::Refused(format!(
                "malformed instance file: {e} (see the README's catalog format)"
            ));
        }
    };
    let expiry = match record.expiry() {
        Ok(x) => x,
        Err(e) => return Read::Refused(format!("invalid instance: {e}")),
    };
    // Status is re-derived from `expiry` at answer time; decode against the epoch so the
    // stored instance keeps the status the file states.
    match record.into_instance(service, id, node, SystemTime::UNIX_EPOCH) {
        Ok(instance) => Read::Good(Entry {
            instance: Arc::new(instance),
            expiry,
        }),
        Err(e) => Read::Refused(format!("invalid instance: {e}")),
    }
}

/// The names in an open directory, without `.` and `..`, sorted.
pub(super) fn list(dir: &OpenDir) -> Vec<OsString> {
    let Ok(fd) = dir.file.try_clone() else {
        return Vec::new();
    };
    let Ok(d) = nix::dir::Dir::from_fd(fd.into()) else {
        return Vec::new();
    };
    let mut names: Vec<OsString> = d
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| OsString::from(std::ffi::OsStr::from_bytes(e.file_name().to_bytes())))
        .filter(|n| n != "." && n != "..")
        .collect();
    // Files are read in name order and the tree keeps instances by id, so their memory lies
    // in the order they are answered (and, where names follow addresses, `web-1`, `web-2`,
    // nearly in template order). Read in the directory's own order into a hash map instead, a
    // 10 000-instance one-shot ran 8 M fewer instructions but took ~9 ms more CPU (cache
    // misses walking instances scattered in memory).
    crate::prefix_sort::sort_by_prefix(
        &mut names,
        |n| crate::prefix_sort::bytes_prefix(n.as_bytes()),
        |a, b| a.cmp(b),
    );
    names
}

/// Whether a name is hidden (our temp files, editors' swap files, Kubernetes' `..data`).
pub(super) fn hidden(name: &std::ffi::OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

/// `<id>.json` → `<id>`; anything else (temp files, backups) is not an instance.
pub(super) fn instance_id(name: &std::ffi::OsStr) -> Option<String> {
    if hidden(name) {
        return None;
    }
    let n = name.to_string_lossy();
    let id = n.strip_suffix(".json")?;
    (!id.is_empty()).then(|| id.to_string())
}

/// The key a path under `kv/` names (`rel` relative to `kv/`), unless a component is hidden
/// or a backup (`~`).
pub(super) fn kv_key(rel: &Path) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the dir_record fuzz target: a file named `api=-2.json` became an instance
    /// whose id the model's checks refuse.
    #[test]
    fn an_instance_file_whose_name_is_not_a_valid_id_is_refused() {
        let body = br#"{"address": "10.0.1.6", "port": 9000, "status": "critical"}"#;
        let Read::Refused(why) = decode_instance(body, "api", "api=-2", "n") else {
            panic!("an id with '=' was accepted");
        };
        assert!(why.contains("instance id"), "{why}");
        assert!(matches!(
            decode_instance(body, "api", "api-2", "n"),
            Read::Good(_)
        ));
    }

    /// A writer that renames a new temp name into place each time must not grow the set of
    /// files warned about, and a name that is gone is not warned about.
    #[test]
    fn only_non_instance_files_that_stay_are_remembered() {
        let root = tempfile::tempdir().unwrap();
        let web = root.path().join("services/web");
        std::fs::create_dir_all(&web).unwrap();
        let reader = Reader::new(root.path().to_path_buf(), "n".into(), 1 << 20);
        let note = |name: &str| {
            reader.note_not_an_instance(
                &Path::new("services/web").join(name),
                std::ffi::OsStr::new(name),
            )
        };
        let remembered = || crate::lock::lock(&reader.ignored).len();
        for i in 0..100 {
            note(&format!("tmp{i}")); // created and renamed away before its event was read
        }
        assert_eq!(remembered(), 0);
        std::fs::write(web.join("web-3"), "{}").unwrap();
        note("web-3");
        std::fs::write(web.join("web-4.json.tmp"), "{}").unwrap();
        note("web-4.json.tmp");
        assert_eq!(remembered(), 1, "only the typo is remembered");
        std::fs::remove_file(web.join("web-3")).unwrap();
        note("web-3");
        assert_eq!(remembered(), 0, "forgotten once gone");
    }
}
