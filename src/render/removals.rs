//! Noticing a destination deleted (or moved away) by hand, so the runner writes it again at
//! once instead of at the next catalog change.
//!
//! One inotify watch per destination directory (not the file: a watch on the file would follow
//! the inode that rewire's own rename replaces), read on tokio's reactor. The watch asks the
//! kernel for deletions, renames away and the directory itself moving (`IN_DELETE |
//! IN_MOVED_FROM | IN_MOVE_SELF`) and nothing else, so rewire's own write (open the old file,
//! create the temp file, write it, rename it over) wakes nothing until its rename, when the
//! file is already in place: one event for the temp name, which matches no destination. (The
//! `notify` crate, used before, asks for opens, creates and writes too and cannot be told
//! otherwise, so it woke its own thread on the path of every write.)
//!
//! A directory that does not exist yet is watched once a render has created it; one that is
//! deleted or moved away is watched again when a render creates it anew.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tracing::debug;

/// What a destination directory is watched for.
const MASK: u32 = libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVE_SELF | libc::IN_ONLYDIR;

pub struct Removals {
    /// The inotify instance; `None` when inotify is unavailable (limits reached) or failed.
    fd: Option<AsyncFd<OwnedFd>>,
    dests: Vec<PathBuf>,
    /// Watch descriptor → the directories it stands for (one, unless two spellings of a
    /// directory name the same one).
    dirs: HashMap<i32, Vec<PathBuf>>,
    watched: HashSet<PathBuf>,
    /// Destinations reported gone and not handed out yet.
    gone: VecDeque<PathBuf>,
}

impl Removals {
    /// Follows `dests`. Without inotify it never reports anything: the file is then written
    /// again at the next change, as before.
    pub fn new(dests: Vec<PathBuf>) -> Removals {
        let fd = inotify_instance()
            .map_err(|e| debug!(error = %e, "cannot watch destinations for removal"))
            .ok();
        let mut removals = Removals {
            fd,
            dests,
            dirs: HashMap::new(),
            watched: HashSet::new(),
            gone: VecDeque::new(),
        };
        // Nothing was written yet: a missing destination is the first render's job.
        let _ = removals.watch_dirs();
        removals
    }

    /// Watches every destination directory that exists and is not watched yet. True when a
    /// destination in a directory watched just now is already missing (removed between the
    /// write that created the directory and this watch): the caller writes it again.
    pub fn watch_dirs(&mut self) -> bool {
        let Some(fd) = self.fd.as_ref() else {
            return false;
        };
        let mut missed = false;
        for dir in self.dests.iter().filter_map(|d| d.parent()) {
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            match add_watch(fd.get_ref(), dir) {
                Ok(wd) => {
                    self.watched.insert(dir.to_path_buf());
                    let spellings = self.dirs.entry(wd).or_default();
                    if !spellings.iter().any(|d| d == dir) {
                        spellings.push(dir.to_path_buf());
                    }
                    missed |= self
                        .dests
                        .iter()
                        .any(|d| d.parent() == Some(dir) && missing(d));
                }
                Err(e) => {
                    debug!(dir = %dir.display(), error = %e, "cannot watch a destination directory")
                }
            }
        }
        missed
    }

    /// The next destination removed; pending forever without a watcher. Cancel-safe: events
    /// read are kept until handed out.
    pub async fn removed(&mut self) -> PathBuf {
        loop {
            if let Some(dest) = self.gone.pop_front() {
                return dest;
            }
            let Some(fd) = self.fd.as_ref() else {
                return std::future::pending().await;
            };
            let read = match fd.readable().await {
                Ok(mut ready) => {
                    // Declared after the await, so the future does not carry it.
                    let mut buf = [0u8; 4096];
                    match ready.try_io(|fd| read(fd.get_ref(), &mut buf)) {
                        Ok(Ok(n)) => Ok(buf[..n].to_vec()),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(Err(e)) => Err(e),
                        Err(_would_block) => continue,
                    }
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(events) => self.take_events(&events),
                Err(e) => {
                    debug!(error = %e, "cannot read destination removals; no longer following them");
                    self.fd = None;
                }
            }
        }
    }

    /// Sorts one read's events: destinations gone are queued. A directory whose watch ended
    /// (deleted) or that was moved away (its watch would follow it) is forgotten, its missing
    /// destinations are queued, and it is watched again once it exists.
    fn take_events(&mut self, mut buf: &[u8]) {
        let mut lost = false;
        while let Some((event, rest)) = Event::parse(buf) {
            buf = rest;
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                // Events were dropped: look at every destination.
                lost = true;
                continue;
            }
            if event.mask & (libc::IN_IGNORED | libc::IN_MOVE_SELF) != 0 {
                if event.mask & libc::IN_MOVE_SELF != 0
                    && let Some(fd) = self.fd.as_ref()
                {
                    // SAFETY: a valid descriptor; a stale watch number only fails.
                    unsafe { libc::inotify_rm_watch(fd.get_ref().as_raw_fd(), event.wd) };
                }
                for dir in self.dirs.remove(&event.wd).unwrap_or_default() {
                    self.watched.remove(&dir);
                }
                lost = true;
                continue;
            }
            let Some(dirs) = self.dirs.get(&event.wd) else {
                continue;
            };
            for dir in dirs {
                let path = dir.join(event.name);
                if self.dests.contains(&path) && !self.gone.contains(&path) {
                    self.gone.push_back(path);
                }
            }
        }
        if lost {
            let _ = self.watch_dirs();
            for dest in self.dests.iter().filter(|d| missing(d)) {
                if !self.gone.contains(dest) {
                    self.gone.push_back(dest.clone());
                }
            }
        }
    }
}

/// Whether `path` still exists (a removal event may come from a file already written again).
pub fn missing(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err()
}

/// One `struct inotify_event` from a read.
struct Event<'a> {
    wd: i32,
    mask: u32,
    name: &'a OsStr,
}

impl<'a> Event<'a> {
    /// The first event of `buf` and what follows it; `None` at the end (or on a short record,
    /// which the kernel never writes: a read returns whole events).
    fn parse(buf: &'a [u8]) -> Option<(Event<'a>, &'a [u8])> {
        let field = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
        let wd = i32::from_ne_bytes(field(0)?);
        let mask = u32::from_ne_bytes(field(4)?);
        let len = u32::from_ne_bytes(field(12)?) as usize;
        let name = buf.get(16..16 + len)?;
        // The name is NUL-padded to an alignment boundary.
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        Some((
            Event {
                wd,
                mask,
                name: OsStr::from_bytes(name),
            },
            &buf[16 + len..],
        ))
    }
}

fn inotify_instance() -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: no pointers; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else; the OwnedFd keeps it open
    // for as long as the AsyncFd holds it, and never hands out another.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: as above.
    Ok(unsafe { AsyncFd::register(owned) }?)
}

fn add_watch(fd: &OwnedFd, dir: &Path) -> std::io::Result<i32> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), MASK) };
    if wd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(wd)
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(r: &mut Removals) -> PathBuf {
        tokio::time::timeout(Duration::from_secs(10), r.removed())
            .await
            .expect("a removal within 10 s")
    }

    /// What the runner relies on: a write like rewire's own (create a temp file, write it,
    /// rename it over) is never reported; a deletion and a rename away are, once each.
    #[tokio::test]
    async fn reports_deletions_and_renames_away_but_not_a_write_over() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("web.conf");
        let other = dir.path().join("other.conf");
        std::fs::write(&dest, "a").unwrap();
        let mut r = Removals::new(vec![dest.clone()]);
        assert!(!r.watch_dirs(), "nothing is missing");

        crate::files::write_atomic(&dest, b"b", None).unwrap();
        std::fs::write(&other, "x").unwrap();
        std::fs::remove_file(&other).unwrap();
        std::fs::remove_file(&dest).unwrap();
        // The first report is the deletion: nothing before it was one.
        assert_eq!(next(&mut r).await, dest);

        std::fs::write(&dest, "c").unwrap();
        std::fs::rename(&dest, dir.path().join("moved")).unwrap();
        assert_eq!(next(&mut r).await, dest);
    }

    /// A destination directory deleted and created again (by the next render) is watched
    /// again; a removal in the new directory is reported.
    #[tokio::test]
    async fn a_directory_deleted_and_created_again_is_watched_again() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let dest = out.join("web.conf");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(&dest, "a").unwrap();
        let mut r = Removals::new(vec![dest.clone()]);

        std::fs::remove_dir_all(&out).unwrap();
        assert_eq!(next(&mut r).await, dest);
        // The runner's next render creates the directory again and asks for watches. The old
        // watch's end may not have been read yet: then this finds the directory still
        // watched, and reading that end watches the new one (reporting a destination already
        // missing by then). Either way the removal below is reported.
        std::fs::create_dir(&out).unwrap();
        std::fs::write(&dest, "b").unwrap();
        let _ = r.watch_dirs();
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(next(&mut r).await, dest);
    }

    #[test]
    fn parses_events_with_padded_names_and_stops_at_a_short_record() {
        let mut buf = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_DELETE, &b"web.conf\0\0\0\0\0\0\0\0"[..]),
            (2, libc::IN_IGNORED, b""),
        ] {
            buf.extend(wd.to_ne_bytes());
            buf.extend(mask.to_ne_bytes());
            buf.extend(0u32.to_ne_bytes());
            buf.extend((name.len() as u32).to_ne_bytes());
            buf.extend(name);
        }
        let (first, rest) = Event::parse(&buf).unwrap();
        assert_eq!(
            (first.wd, first.mask, first.name),
            (1, libc::IN_DELETE, OsStr::new("web.conf"))
        );
        let (second, rest) = Event::parse(rest).unwrap();
        assert_eq!(
            (second.wd, second.mask, second.name),
            (2, libc::IN_IGNORED, OsStr::new(""))
        );
        assert!(rest.is_empty());
        assert!(Event::parse(&buf[..20]).is_none(), "a record cut short");
    }
}
