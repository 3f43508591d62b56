//! Reading instance and key files: small, many, and never trusted.
//!
//! A whole-tree read opens thousands of files, so they are opened relative to their service
//! directory and read on a few threads. A file that cannot be read or decoded is skipped
//! with a warning naming it; the rest of the catalog still works.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::tree::Entry;
use crate::catalog::record::Record;

thread_local! {
    /// A reader thread's buffer, reused from one instance file to the next.
    pub(super) static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads a small file relative to an open directory into `buf`. A whole-tree read opens
/// thousands of files: `openat` skips walking the path from `/` for each one, and reading in
/// chunks skips the `statx` that `std::fs::read` makes for a size hint.
pub(super) fn read_at(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
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

pub(super) fn read_instance(path: &Path, service: &str, id: &str, node: &str) -> Option<Entry> {
    match std::fs::read(path) {
        Ok(bytes) => decode_instance(path, Ok(&bytes), service, id, node),
        Err(e) => decode_instance(path, Err(e), service, id, node),
    }
}

/// Decodes an instance file's bytes (or reports why they could not be read).
pub(super) fn decode_instance(
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

pub(super) fn read_kv(path: &Path) -> Option<String> {
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

pub(super) fn list_dir(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

pub(super) fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
pub(super) fn file_name(p: &Path) -> Option<String> {
    let n = p.file_name()?.to_string_lossy();
    (!n.starts_with('.')).then(|| n.into_owned())
}

/// `<id>.json` → `<id>`; anything else (temp files, backups) is not an instance.
pub(super) fn instance_id(p: &Path) -> Option<String> {
    let n = file_name(p)?;
    let id = n.strip_suffix(".json")?;
    (!id.is_empty()).then(|| id.to_string())
}

pub(super) fn kv_key(kv_root: &Path, p: &Path) -> Option<String> {
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
pub(super) fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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
