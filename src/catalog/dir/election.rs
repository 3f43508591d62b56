//! Elections in the directory catalog: an `flock` held for the whole term.
//!
//! ```text
//! PATH/elections/<name>/lock          flock(LOCK_EX) by the holder, never removed
//! PATH/elections/<name>/token         the last term's token; bumped by each new holder, under the lock
//! PATH/elections/<name>/leader.json   {"id", "address", "port", "token"}: the holder's record
//! ```
//!
//! The kernel keeps the lock exactly as long as the holder's descriptor is open, so a
//! SIGKILLed holder frees it at once: followers poll every [`POLL`] and the next one takes it.
//! The descriptor is close-on-exec (Rust opens every file so): a child that inherited it (the
//! supervised main process, a hook) would keep the lock after rewire died.
//!
//! Followers see who holds the election without taking it: a shared lock that can be taken
//! means nobody holds the exclusive one (the record may be a dead holder's leftover); one that
//! cannot means the record names the holder, once its token matches the counter (a new holder
//! bumps the counter before it writes its record: in between, the holder is not known).
//!
//! A dir catalog lives on one machine: there is no TTL to lapse, so a term ends when its
//! process does, resigns, or finds the lock file replaced (someone removed the directory).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::catalog::CatalogError;
use crate::catalog::election::{Ballot, BallotSpec, Sight, set_sight};
use crate::confined::{self, Refused};
use crate::lock::lock;
use crate::model::{Holder, LeaderValue};

/// How often followers look at the lock.
pub const POLL: Duration = Duration::from_millis(100);

/// `leader.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    value: LeaderValue,
    token: u64,
}

/// The term this process holds: the locked descriptor and the lock file's identity.
struct Term {
    file: File,
    token: u64,
}

pub struct DirBallot {
    root: PathBuf,
    /// `elections/<name>`, beneath `root`.
    rel: PathBuf,
    term: std::sync::Mutex<Option<Term>>,
    /// The highest token this process has read or given.
    highest: std::sync::atomic::AtomicU64,
}

/// The largest `token` or `leader.json` read: both are a line or two.
const MAX_FILE: u64 = 64 * 1024;

impl DirBallot {
    pub fn new(root: &Path, spec: &BallotSpec) -> DirBallot {
        DirBallot {
            root: root.to_path_buf(),
            rel: Path::new("elections").join(&spec.name),
            term: std::sync::Mutex::new(None),
            highest: Default::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(&self.rel).join(name)
    }

    fn io(&self, name: &str, e: io::Error) -> CatalogError {
        CatalogError::Io {
            path: self.path(name).display().to_string(),
            source: e,
        }
    }

    /// The election's directory, opened beneath the catalog (never through a link leading out
    /// of it); `create`: made when missing, else None when missing.
    fn dir(&self, create: bool) -> Result<Option<File>, CatalogError> {
        super::writable_dir(&self.root, &self.rel, create)
    }

    /// The lock file, created when missing; a symlink or anything but a regular file there is
    /// refused (it would lock, or create, a file elsewhere).
    fn open_lock(&self, dir: &File) -> Result<File, CatalogError> {
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let file = openat(dir, "lock", flags, Mode::from_bits_truncate(0o644))
            .map(File::from)
            .map_err(|e| {
                let e = io::Error::from(e);
                if e.raw_os_error() == Some(libc::ELOOP) {
                    io::Error::new(
                        e.kind(),
                        "it is a symlink: remove it (rewire creates the lock file)",
                    )
                } else {
                    e
                }
            })
            .map_err(|e| self.io("lock", e))?;
        match confined::kind(&file) {
            Ok(confined::Kind::Regular { .. }) => Ok(file),
            Ok(confined::Kind::Directory) => Err(self.io(
                "lock",
                io::Error::other("a directory, not a regular file: remove it"),
            )),
            Ok(confined::Kind::Other(what)) => Err(self.io(
                "lock",
                io::Error::other(format!("{what}, not a regular file: remove it")),
            )),
            Err(e) => Err(self.io("lock", io::Error::other(e.to_string()))),
        }
    }

    /// A small file of the election's directory; None when there is none.
    fn read(&self, dir: &File, name: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut buf = Vec::new();
        match confined::read_beneath(dir.as_fd(), Path::new(name), MAX_FILE, &mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(Refused::NotFound) => Ok(None),
            Err(Refused::Io(e)) => Err(self.io(name, e)),
            Err(e) => Err(self.io(name, io::Error::other(format!("{e}: remove it")))),
        }
    }

    fn read_token(&self, dir: &File) -> Result<u64, CatalogError> {
        let Some(bytes) = self.read(dir, "token")? else {
            return Ok(0);
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim().parse().map_err(|_| CatalogError::Malformed {
            backend: "dir".into(),
            detail: format!(
                "{}: {:?} is not a token (a whole number)",
                self.path("token").display(),
                text.trim()
            ),
        })
    }

    fn read_record(&self, dir: &File) -> Option<Record> {
        let bytes = self.read(dir, "leader.json").ok()??;
        let record: Record = serde_json::from_slice(&bytes).ok()?;
        record.value.check().ok()?;
        Some(record)
    }

    fn write(&self, dir: &File, name: &str, bytes: &[u8]) -> Result<(), CatalogError> {
        crate::files::write_atomic_in(dir, name, bytes, 0o644).map_err(|e| self.io(name, e))
    }

    /// Who holds the election, as the lock and the files say.
    fn look(&self) -> Result<Sight, CatalogError> {
        let dir = self.dir(true)?.expect("created when missing");
        let file = self.open_lock(&dir)?;
        if try_flock(&file, libc::LOCK_SH).map_err(|e| self.io("lock", e))? {
            // Nobody holds the exclusive lock; ours goes with `file`.
            return Ok(Sight::Vacant);
        }
        let counter = self.read_token(&dir)?;
        self.highest
            .fetch_max(counter, std::sync::atomic::Ordering::Relaxed);
        Ok(match self.read_record(&dir) {
            Some(r) if r.token == counter => Sight::Held(Holder {
                value: r.value,
                token: r.token,
            }),
            // Between a new holder's counter and its record.
            _ => Sight::Unknown,
        })
    }
}

/// `flock(how | LOCK_NB)`: true when taken, false when someone else holds a conflicting lock.
fn try_flock(file: &File, how: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor this `File` owns; no memory is involved.
        let r = unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

#[async_trait]
impl Ballot for DirBallot {
    async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError> {
        if let Some(t) = lock(&self.term).as_ref() {
            return Ok(Some(t.token));
        }
        let dir = self.dir(true)?.expect("created when missing");
        let file = self.open_lock(&dir)?;
        if !try_flock(&file, libc::LOCK_EX).map_err(|e| self.io("lock", e))? {
            return Ok(None);
        }
        // Held from here until `file` is closed: bump the counter, then publish the record.
        // Never below a token this process has seen: the counter is a file a catalog writer
        // could lower (or set to u64::MAX, which wrapped to 0).
        let seen = self.highest.load(std::sync::atomic::Ordering::Relaxed);
        let token = self
            .read_token(&dir)?
            .max(seen)
            .checked_add(1)
            .ok_or_else(|| {
                self.io(
                    "token",
                    std::io::Error::other(
                        "the counter is at its maximum; a catalog writer put it there: reset it \
                         to the last real token",
                    ),
                )
            })?;
        self.highest
            .fetch_max(token, std::sync::atomic::Ordering::Relaxed);
        self.write(&dir, "token", format!("{token}\n").as_bytes())?;
        let record = Record {
            value: value.clone(),
            token,
        };
        let mut bytes = serde_json::to_vec(&record).expect("a Record always serializes");
        bytes.push(b'\n');
        self.write(&dir, "leader.json", &bytes)?;
        *lock(&self.term) = Some(Term { file, token });
        Ok(Some(token))
    }

    async fn renew(&self) -> Result<bool, CatalogError> {
        let guard = lock(&self.term);
        let Some(term) = guard.as_ref() else {
            return Ok(false);
        };
        // Still the lock file others open? (A removed or replaced file locks nobody out.)
        let ours = term.file.metadata().map_err(|e| self.io("lock", e))?;
        let Ok(Some(dir)) = self.dir(false) else {
            return Ok(false);
        };
        Ok(match fstatat(&dir, "lock", AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(now) => now.st_dev == ours.dev() && now.st_ino == ours.ino(),
            Err(_) => false,
        })
    }

    async fn resign(&self) -> Result<(), CatalogError> {
        let Some(term) = lock(&self.term).take() else {
            return Ok(());
        };
        // The record goes first, while the lock still keeps others out.
        if let Ok(Some(dir)) = self.dir(false)
            && self
                .read_record(&dir)
                .is_some_and(|r| r.token == term.token)
            && let Err(e) = unlinkat(&dir, "leader.json", UnlinkatFlags::NoRemoveDir)
            && e != nix::errno::Errno::ENOENT
        {
            warn!(file = %self.path("leader.json").display(), error = %e, "cannot remove the leader record");
        }
        drop(term.file);
        Ok(())
    }

    async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken) {
        let mut said_error = false;
        loop {
            let seen = match tokio::task::block_in_place(|| self.look()) {
                Ok(s) => {
                    said_error = false;
                    s
                }
                Err(e) => {
                    if !said_error {
                        warn!(election = %self.root.join(&self.rel).display(), error = %e, "cannot read the election");
                        said_error = true;
                    } else {
                        debug!(error = %e, "cannot read the election");
                    }
                    Sight::Unknown
                }
            };
            set_sight(&sight, seen);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BallotSpec {
        BallotSpec {
            name: "primary".into(),
            candidate: "a".into(),
            ttl: Duration::from_secs(2),
            lock_delay: Duration::ZERO,
        }
    }

    fn value(id: &str) -> LeaderValue {
        LeaderValue {
            id: id.into(),
            address: "127.0.0.1".into(),
            port: Some(6379),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_holder_at_a_time_and_tokens_grow_across_terms() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirBallot::new(dir.path(), &spec());
        let b = DirBallot::new(dir.path(), &spec());
        assert_eq!(a.look().unwrap(), Sight::Vacant);
        assert_eq!(a.campaign(&value("a")).await.unwrap(), Some(1));
        assert_eq!(b.campaign(&value("b")).await.unwrap(), None);
        let Sight::Held(h) = b.look().unwrap() else {
            panic!("b does not see a")
        };
        assert_eq!((h.value.id.as_str(), h.token), ("a", 1));
        assert!(a.renew().await.unwrap());
        a.resign().await.unwrap();
        assert!(!a.renew().await.unwrap());
        assert_eq!(b.look().unwrap(), Sight::Vacant);
        assert_eq!(b.campaign(&value("b")).await.unwrap(), Some(2));
        // A dead holder's record is not a holder: dropping the ballot closes its descriptor.
        drop(b);
        assert_eq!(a.look().unwrap(), Sight::Vacant);
        assert_eq!(a.campaign(&value("a")).await.unwrap(), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lock_descriptor_is_not_inherited_by_children() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirBallot::new(dir.path(), &spec());
        a.campaign(&value("a")).await.unwrap();
        let fd = lock(&a.term).as_ref().unwrap().file.as_raw_fd();
        // SAFETY: F_GETFD on a descriptor the ballot owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0, "flags {flags:#x}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_lock_file_ends_the_term() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirBallot::new(dir.path(), &spec());
        a.campaign(&value("a")).await.unwrap();
        std::fs::remove_dir_all(dir.path().join("elections")).unwrap();
        assert!(!a.renew().await.unwrap());
    }

    #[tokio::test]
    async fn an_election_never_locks_or_writes_through_links_leading_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("catalog");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("elections")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("elections/primary")).unwrap();
        let a = DirBallot::new(&root, &spec());
        let err = a.campaign(&value("a")).await.unwrap_err();
        assert!(
            err.to_string().contains("leads out of the catalog"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // A lock file that is a link is refused, and says what to do.
        std::fs::remove_file(root.join("elections/primary")).unwrap();
        std::fs::create_dir_all(root.join("elections/primary")).unwrap();
        let theirs = outside.join("theirs");
        std::fs::write(&theirs, "").unwrap();
        std::os::unix::fs::symlink(&theirs, root.join("elections/primary/lock")).unwrap();
        let err = a.campaign(&value("a")).await.unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        std::fs::remove_file(root.join("elections/primary/lock")).unwrap();
        assert_eq!(a.campaign(&value("a")).await.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn a_counter_lowered_or_maxed_by_a_writer_never_makes_the_token_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirBallot::new(dir.path(), &spec());
        for want in 1..=3 {
            assert_eq!(a.campaign(&value("a")).await.unwrap(), Some(want));
            a.resign().await.unwrap();
        }
        let counter = dir.path().join("elections").join(spec().name).join("token");
        std::fs::write(&counter, "1\n").unwrap();
        assert_eq!(a.campaign(&value("a")).await.unwrap(), Some(4));
        a.resign().await.unwrap();
        std::fs::write(&counter, format!("{}\n", u64::MAX)).unwrap();
        let err = a.campaign(&value("a")).await.unwrap_err().to_string();
        assert!(err.contains("at its maximum"), "{err}");
        assert_eq!(a.look().unwrap(), Sight::Vacant);
    }
}
