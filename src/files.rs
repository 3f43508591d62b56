//! Putting a file in place: atomic write, in-place fallback, reading what is there, diff.
//!
//! A shared leaf: the render pipeline writes templates through it, the dir catalog writes its
//! registration files through it, `rewire diff` compares with it. It knows nothing of either.
//!
//! The rules (docs/architecture.md, "Rules the code keeps"): never a torn file, never a broken config in place.
//! A render is staged as `.<dest>.rewire-XXXXXX` in the destination's directory (leading dot
//! and no `.conf` suffix, so `include *.conf` and `haproxy -f DIR` never load it), created
//! with the final mode, fsynced, checked, renamed over the destination, and the directory is
//! fsynced. A symlinked destination is written through (the link stays a link).
//!
//! A temp file is locked (`flock`) for as long as it exists, so leftovers of a rewire killed
//! mid-write can be told from files in use: [`remove_leftovers`] removes only those nobody
//! holds (`rewire render` in `pre_start` runs beside the daemon and writes the same places).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::timing::{self, stage};

/// A staged file: written and fsynced next to its destination, not yet in place.
/// Dropping it without [`Staged::commit`] removes it.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
    /// Open and locked while the temp file exists (see the module docs).
    lock: Option<File>,
}

impl Staged {
    /// The temp file, for `{file}` in a check.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Renames the staged file over the destination and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.temp, &self.dest).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} cannot be replaced by rename (it is probably a bind-mounted file): set write = \"in-place\" for this template",
                        self.dest.display()
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot rename into {}: {e}", self.dest.display()))
            }
        })?;
        timing::mark(stage::RENAME);
        self.committed = true;
        // The temp name is gone: nothing left to guard.
        self.lock = None;
        if let Some(dir) = self.dest.parent() {
            // The file is visible now; the directory fsync makes the rename durable.
            File::open(dir)?.sync_all()?;
            timing::mark(stage::DIR_FSYNC);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Removed while still locked, so a cleaner never sees it unheld.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The temp file names used for `dest`: `.<name>.rewire-` and six hex digits.
fn temp_prefix(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.rewire-")
}

/// A fresh temp name for `prefix` (from [`temp_prefix`]): the prefix and six random hex digits.
fn temp_name(prefix: &str, rng: &mut impl Rng) -> String {
    let suffix: u32 = rng.random_range(0..0x100_0000);
    format!("{prefix}{suffix:06x}")
}

fn is_temp_name(file_name: &str, prefix: &str) -> bool {
    file_name
        .strip_prefix(prefix)
        .is_some_and(|s| s.len() == 6 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes the temp files an earlier rewire left beside `dest` (killed during a write or a
/// check): `.<name>.rewire-XXXXXX` that no process holds locked. Files in use by a rewire
/// running now are left alone. Returns what was removed.
pub fn remove_leftovers(dest: &Path) -> io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dest = real_destination(dest);
    let Some(dir) = dest.parent() else {
        return Ok(Vec::new());
    };
    let prefix = temp_prefix(&dest);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !is_temp_name(&entry.file_name().to_string_lossy(), &prefix) {
            continue;
        }
        let path = entry.path();
        // Never follow a link planted under that name; open without blocking on a FIFO.
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if !meta.is_file() || file.try_lock().is_err() {
            // Not ours, or a rewire is writing it right now.
            continue;
        }
        // Still the file we locked (not replaced meanwhile): remove it, then unlock.
        let same = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if same && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Where writes really go: a symlink's target, so the link survives.
pub fn real_destination(dest: &Path) -> PathBuf {
    resolve(dest).0
}

/// The real destination and, when it exists, its metadata (one `lstat` for a plain file).
fn resolve(dest: &Path) -> (PathBuf, Option<std::fs::Metadata>) {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => {
            // A dangling link names the file to create (written through, the link kept).
            let real =
                std::fs::canonicalize(dest).unwrap_or_else(|_| match std::fs::read_link(dest) {
                    Ok(target) => dest
                        .parent()
                        .map_or(target.clone(), |dir| dir.join(&target)),
                    Err(_) => dest.to_path_buf(),
                });
            let meta = std::fs::metadata(&real).ok();
            (real, meta)
        }
        Ok(m) => (dest.to_path_buf(), Some(m)),
        Err(_) => (dest.to_path_buf(), None),
    }
}

/// The process umask, read once (from /proc: asking umask(2) would have to change it).
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

/// Writes `bytes` into a temp file beside `dest`. Mode: `perms`, else the existing file's, else
/// 0644; the existing file's owner is kept when we may set it (as root).
///
/// This is on the path from a catalog change to the file in place, so it makes no call it does
/// not need: the fsync is the one that costs (most of the half millisecond a write takes).
pub fn stage(dest: &Path, bytes: &[u8], perms: Option<u32>) -> io::Result<Staged> {
    let (dest, existing) = resolve(dest);
    let dir = dest.parent().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "destination has no directory")
    })?;
    let mode = perms
        .or_else(|| existing.as_ref().map(|m| m.permissions().mode() & 0o7777))
        .unwrap_or(0o644);
    let prefix = temp_prefix(&dest);
    let mut rng = rand::rng();
    let mut created_dir = false;
    for _ in 0..16 {
        let temp = dir.join(temp_name(&prefix, &mut rng));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !created_dir => {
                created_dir = true;
                std::fs::create_dir_all(dir).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
                })?;
                continue;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create a temp file in {}: {e}", dir.display()),
                ));
            }
        };
        // Locked from here until it is renamed or removed. A cleaner that got to the name
        // between our create and our lock has removed it (nlink 0), or holds the lock now:
        // both mean "take another name".
        if file.try_lock().is_err() || file.metadata().is_ok_and(|m| m.nlink() == 0) {
            continue;
        }
        let mut staged = Staged {
            temp,
            dest: dest.clone(),
            committed: false,
            lock: None,
        };
        let file = staged.lock.insert(file);
        // The umask may have narrowed the mode given to open() (setuid bits are never kept).
        if mode & 0o7000 != 0 || umask().is_none_or(|u| mode & u != 0) {
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        if let Some(m) = &existing {
            // Keep the owner; only root may give files away, so ignore EPERM.
            // SAFETY: geteuid and getegid cannot fail.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            if m.uid() != uid || m.gid() != gid {
                let _ = std::os::unix::fs::fchown(&*file, Some(m.uid()), Some(m.gid()));
            }
        }
        file.write_all(bytes)?;
        timing::mark(stage::TEMP_WRITTEN);
        file.sync_all()?;
        timing::mark(stage::FSYNC);
        return Ok(staged);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("cannot find a free temp file name in {}", dir.display()),
    ))
}

/// Stage and commit in one go (the destination's directory is created when missing).
pub fn write_atomic(dest: &Path, bytes: &[u8], perms: Option<u32>) -> io::Result<()> {
    stage(dest, bytes, perms)?.commit()
}

/// Writes `name` in the open directory `dir` atomically: a temp file `.<name>.rewire-XXXXXX`
/// created with `mode`, written, fsynced, renamed over `name`, then the directory fsynced.
///
/// For files in a directory others may write (the dir catalog's records): the directory is
/// the one opened (see [`crate::confined::dir_beneath`]) whatever its path leads to by now,
/// and a symlink planted at `name` is replaced, never written through.
pub fn write_atomic_in(dir: &File, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::Mode;
    use nix::unistd::{UnlinkatFlags, unlinkat};
    let prefix = temp_prefix(Path::new(name));
    let mut rng = rand::rng();
    for _ in 0..16 {
        let temp = temp_name(&prefix, &mut rng);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut file = match openat(dir, temp.as_str(), flags, Mode::from_bits_truncate(mode)) {
            Ok(fd) => File::from(fd),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        };
        let written = (|| {
            if umask().is_none_or(|u| mode & u != 0) {
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            file.write_all(bytes)?;
            file.sync_all()?;
            renameat(dir, temp.as_str(), dir, name).map_err(io::Error::from)
        })();
        if let Err(e) = written {
            let _ = unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        return dir.sync_all();
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "cannot find a free temp file name",
    ))
}

/// Rewrites the destination itself: for bind-mounted files, which cannot be renamed over. Not
/// atomic: a reader may see a mix of old and new bytes for a moment. But never a cut-off file
/// for lack of space: the new length is allocated before any byte is overwritten, so a full
/// disk fails the write with the old content whole.
pub fn write_in_place(dest: &Path, bytes: &[u8], perms: Option<u32>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let dest = real_destination(dest);
    if let Some(dir) = dest.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(perms.unwrap_or(0o644))
        .open(&dest)?;
    if !bytes.is_empty() {
        // SAFETY: posix_fallocate on a descriptor this `File` owns.
        let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, bytes.len() as libc::off_t) };
        // EOPNOTSUPP/EINVAL: a file system without it; the write below then takes its chance.
        if r != 0 && r != libc::EOPNOTSUPP && r != libc::EINVAL {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)?;
    if let Some(p) = perms {
        f.set_permissions(std::fs::Permissions::from_mode(p))?;
    }
    f.sync_all()
}

/// The destination's current bytes, or None if it does not exist.
pub fn read_current(dest: &Path) -> io::Result<Option<Vec<u8>>> {
    Ok(open_current(dest)?.map(|(bytes, _)| bytes))
}

/// The destination's current bytes and the file, still open. Keep it open across the rename
/// that replaces it: the old inode is freed when its last descriptor closes, and on ext4 that
/// costs about 0.13 ms, which then leaves the rename (the moment the new file is visible) for
/// the close.
pub fn open_current(dest: &Path) -> io::Result<Option<(Vec<u8>, File)>> {
    use std::io::Read;
    let err =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot read {}: {e}", dest.display()));
    let mut file = match File::open(dest) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(err)?;
    Ok(Some((bytes, file)))
}

/// A unified diff from `old` (None: the file does not exist) to `new`.
/// Empty when they are equal.
pub fn unified_diff(dest: &Path, old: Option<&[u8]>, new: &[u8], color: bool) -> String {
    let old_text = old.map(String::from_utf8_lossy).unwrap_or_default();
    let new_text = String::from_utf8_lossy(new);
    if old.is_some() && old_text == new_text {
        return String::new();
    }
    let name = dest.display().to_string();
    let old_name = if old.is_some() {
        name.clone()
    } else {
        "/dev/null".to_string()
    };
    let diff = similar::TextDiff::from_lines(old_text.as_ref(), new_text.as_ref());
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &name)
        .to_string();
    if !color {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let (start, end) = if line.starts_with("+++") || line.starts_with("---") {
            ("\x1b[1m", "\x1b[0m")
        } else if line.starts_with('+') {
            ("\x1b[32m", "\x1b[0m")
        } else if line.starts_with('-') {
            ("\x1b[31m", "\x1b[0m")
        } else if line.starts_with("@@") {
            ("\x1b[36m", "\x1b[0m")
        } else {
            ("", "")
        };
        let body = line.strip_suffix('\n');
        out.push_str(start);
        out.push_str(body.unwrap_or(line));
        out.push_str(end);
        if body.is_some() {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dangling_symlinked_destination_is_created_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let link = dir.path().join("out/dang.conf");
        std::os::unix::fs::symlink("../real/nothere.conf", &link).unwrap();
        write_atomic(&link, b"new\n", None).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read(dir.path().join("real/nothere.conf")).unwrap(),
            b"new\n"
        );
    }

    #[test]
    fn an_in_place_write_keeps_the_inode_and_fits_longer_and_shorter_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("bound.conf");
        std::fs::write(&dest, "a fairly long first version\n").unwrap();
        let ino = std::fs::metadata(&dest).unwrap().ino();
        write_in_place(&dest, b"short\n", None).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"short\n");
        write_in_place(
            &dest,
            b"a much longer second version than the first one\n",
            Some(0o600),
        )
        .unwrap();
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            b"a much longer second version than the first one\n"
        );
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(m.ino(), ino, "the same file, as a bind mount needs");
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        write_in_place(&dest, b"", None).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"");
        // Nothing else was created beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/out.conf");
        write_atomic(&dest, b"one\n", None).unwrap();
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&dest, b"two\n", None).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two\n");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&dest, b"three\n", Some(0o640)).unwrap();
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = std::fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.conf")]);
    }

    #[test]
    fn the_replaced_file_stays_readable_through_a_held_descriptor() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.conf");
        assert!(open_current(&dest).unwrap().is_none());
        std::fs::write(&dest, "old\n").unwrap();
        let (bytes, mut held) = open_current(&dest).unwrap().unwrap();
        assert_eq!(bytes, b"old\n");
        write_atomic(&dest, b"new\n", None).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new\n");
        use std::io::Seek;
        held.rewind().unwrap();
        let mut old = String::new();
        held.read_to_string(&mut old).unwrap();
        assert_eq!(
            old, "old\n",
            "the held descriptor still names the replaced inode"
        );
    }

    #[test]
    fn staged_file_is_hidden_and_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("haproxy.cfg");
        let staged = stage(&dest, b"x", Some(0o600)).unwrap();
        let name = staged
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with(".haproxy.cfg.rewire-"), "{name}");
        assert!(!name.ends_with(".cfg"));
        assert_eq!(
            std::fs::metadata(staged.path())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let temp = staged.path().to_path_buf();
        drop(staged);
        assert!(!temp.exists());
        assert!(!dest.exists());
    }

    #[test]
    fn only_leftover_temp_files_nobody_holds_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.conf");
        let leftover = dir.path().join(".out.conf.rewire-00abcd");
        std::fs::write(&leftover, "from a rewire killed mid-write").unwrap();
        let unrelated = dir.path().join(".out.conf.rewire-notours");
        std::fs::write(&unrelated, "x").unwrap();
        let other = dir.path().join(".other.conf.rewire-00abcd");
        std::fs::write(&other, "x").unwrap();
        // A write in progress (another rewire, or this one) holds its temp file.
        let staged = stage(&dest, b"new", None).unwrap();
        let removed = remove_leftovers(&dest).unwrap();
        assert_eq!(removed, vec![leftover.clone()]);
        assert!(!leftover.exists());
        assert!(staged.path().exists(), "a held temp file was removed");
        assert!(unrelated.exists() && other.exists());
        staged.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(remove_leftovers(&dest).unwrap().is_empty());
    }

    #[test]
    fn symlinked_destination_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.conf");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.conf");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, b"new", None).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    #[test]
    fn diff_is_unified_and_empty_when_equal() {
        let d = unified_diff(Path::new("/x.conf"), Some(b"a\nb\n"), b"a\nc\n", false);
        assert!(d.contains("--- /x.conf\n+++ /x.conf\n"), "{d}");
        assert!(d.contains("-b\n+c\n"), "{d}");
        assert_eq!(
            unified_diff(Path::new("/x"), Some(b"a\n"), b"a\n", false),
            ""
        );
        let d = unified_diff(Path::new("/x"), None, b"a\n", false);
        assert!(d.starts_with("--- /dev/null"));
    }
}
