//! Reading files that someone else may have put there: regular files only, inside one
//! directory, never blocking, never more than a cap.
//!
//! Whoever may write the catalog directory (or a template directory) decides what rewire,
//! often running as root, opens there. Read naively, a FIFO blocks the reading thread forever,
//! a symlink to `/dev/zero` fills memory, and a symlink to `/etc/shadow` copies a root-only
//! file into a 0644 config. So every such read goes through here:
//!
//! - The path is resolved *beneath* a directory opened once: `openat2(RESOLVE_BENEATH)`, which
//!   follows symlinks that stay inside (Kubernetes ConfigMap volumes are made of `..data`
//!   links) and refuses absolute links and `..` leading out. Kernels before 5.6 (or a seccomp
//!   filter refusing the call) get [`fallback`]: the same walk done one component at a time.
//! - The open is non-blocking (`O_NONBLOCK`: a FIFO opens at once instead of waiting for a
//!   writer) and the descriptor is `fstat`ed: anything but a regular file is refused, named.
//! - A file larger than the cap is refused from its size alone, and reading stops one byte
//!   past the cap, so a file that grows while it is read is refused too.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Nothing there (or a path component is not a directory): the file is gone.
    #[error("no such file")]
    NotFound,
    /// A symlink (or `..`) leads out of the directory the read is confined to.
    #[error("a symlink leads out of {0}")]
    Escapes(String),
    /// A FIFO, socket, device or directory where a file was expected.
    #[error("{0}, not a regular file")]
    NotRegular(&'static str),
    #[error("{size} bytes, over the limit of {max} bytes")]
    TooBig { size: u64, max: u64 },
    #[error("{0}")]
    Io(std::io::Error),
}

impl Refused {
    /// Whether the file is simply not there (a deletion, not a problem).
    pub fn is_gone(&self) -> bool {
        matches!(self, Refused::NotFound)
    }
}

impl From<Errno> for Refused {
    fn from(e: Errno) -> Refused {
        match e {
            Errno::ENOENT | Errno::ENOTDIR => Refused::NotFound,
            other => Refused::Io(other.into()),
        }
    }
}

/// Opens a directory to confine reads to (the path itself may be a symlink: it comes from the
/// config, not from the directory's writers).
pub fn open_dir(path: &Path) -> std::io::Result<File> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Opens `rel` beneath `dir`, without blocking and without following a link out of `dir`.
/// `directory` asks for a directory (`O_DIRECTORY`); otherwise anything may come back: check
/// it with [`kind`].
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, directory: bool) -> Result<File, Refused> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    if directory {
        flags |= OFlag::O_DIRECTORY;
    }
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a rename or mount raced with the lookup; the kernel asks to try again.
    for _ in 0..8 {
        match openat2(dir, rel, how) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::EAGAIN) => continue,
            Err(Errno::EXDEV) => return Err(escapes(rel)),
            // No openat2 (before Linux 5.6), or a seccomp filter that does not know it.
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => return fallback(dir, rel, flags),
            Err(e) => return Err(e.into()),
        }
    }
    Err(Refused::Io(std::io::Error::other(
        "the directory kept changing while the file was looked up",
    )))
}

/// Opens the directory `rel` beneath `root`, creating what is missing of it (mode 0755), for
/// writing files into it with the `*at` calls: a symlink on the way that leads out of `root`
/// is refused, never written through.
pub fn dir_beneath(root: &Path, rel: &Path) -> Result<File, Refused> {
    let root =
        open_dir(root).map_err(|e| match Errno::from_raw(e.raw_os_error().unwrap_or(0)) {
            Errno::ENOENT | Errno::ENOTDIR => Refused::NotFound,
            _ => Refused::Io(e),
        })?;
    match open_beneath(root.as_fd(), rel, true) {
        Err(Refused::NotFound) => {}
        other => return other,
    }
    // Made one component at a time, each in the directory opened (beneath `root`) just before.
    let mut made = std::path::PathBuf::new();
    for c in rel.components() {
        let parent = open_beneath(root.as_fd(), Path::new(".").join(&made).as_path(), true)?;
        match nix::sys::stat::mkdirat(
            parent.as_fd(),
            c.as_os_str(),
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        made.push(c);
    }
    open_beneath(root.as_fd(), rel, true)
}

fn escapes(rel: &Path) -> Refused {
    Refused::Escapes(rel.display().to_string())
}

/// What an open descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular {
        size: u64,
    },
    Directory,
    /// A FIFO, socket or device, named for messages.
    Other(&'static str),
}

/// `fstat`s an open file.
pub fn kind(file: &File) -> Result<Kind, Refused> {
    Ok(kind_of(&fstat(file.as_fd())?))
}

fn kind_of(st: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => Kind::Regular {
            size: u64::try_from(st.st_size).unwrap_or(0),
        },
        SFlag::S_IFDIR => Kind::Directory,
        SFlag::S_IFIFO => Kind::Other("a FIFO"),
        SFlag::S_IFSOCK => Kind::Other("a socket"),
        SFlag::S_IFCHR => Kind::Other("a character device"),
        SFlag::S_IFBLK => Kind::Other("a block device"),
        SFlag::S_IFLNK => Kind::Other("a symlink"),
        _ => Kind::Other("an unknown kind of file"),
    }
}

/// Reads an open file into `buf` (cleared first) if it is a regular file of at most `max`
/// bytes.
pub fn read_regular(mut file: File, max: u64, buf: &mut Vec<u8>) -> Result<(), Refused> {
    buf.clear();
    let size = match kind(&file)? {
        Kind::Regular { size } if size > max => return Err(Refused::TooBig { size, max }),
        Kind::Regular { size } => size,
        Kind::Directory => return Err(Refused::NotRegular("a directory")),
        Kind::Other(what) => return Err(Refused::NotRegular(what)),
    };
    // The common case in one read: ask for one byte more than `fstat` reported; getting
    // exactly the reported size back means the file is read whole (a regular file's read
    // comes back short only at its end). Anything else (a file that grew or shrank meanwhile)
    // reads on to the end. Saves the second, empty read per file: 10 000 of them when a
    // whole catalog is read.
    let want = usize::try_from(size).map_or(usize::MAX, |s| s.saturating_add(1));
    buf.resize(want, 0);
    let first = loop {
        match file.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                buf.clear();
                return Err(Refused::Io(e));
            }
        }
    };
    buf.truncate(first);
    if first as u64 != size {
        // One byte past the cap tells a file that grew while it was read.
        let limit = max.saturating_add(1).saturating_sub(buf.len() as u64);
        (&mut file)
            .take(limit)
            .read_to_end(buf)
            .map_err(Refused::Io)?;
    }
    let read = buf.len() as u64;
    if read > max {
        buf.clear();
        return Err(Refused::TooBig { size: read, max });
    }
    Ok(())
}

/// Reads `rel` beneath `dir` (see the module docs).
pub fn read_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    max: u64,
    buf: &mut Vec<u8>,
) -> Result<(), Refused> {
    read_regular(open_beneath(dir, rel, false)?, max, buf)
}

/// Reads a file named by the config (symlinks followed: the config's author chose the path),
/// still refusing anything but a regular file of at most `max` bytes, without blocking.
pub fn read_path(path: &Path, max: u64) -> Result<Vec<u8>, Refused> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    let mut buf = Vec::new();
    read_regular(File::from(fd), max, &mut buf)?;
    Ok(buf)
}

/// At most this many symlinks in one lookup, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// `openat2(RESOLVE_BENEATH)` done by hand, one component at a time: each directory is
/// opened without following links (`O_NOFOLLOW`), a symlink is read and its target spliced
/// into the path still to walk, `..` steps back along the directories actually opened, and an
/// absolute target or a `..` above `dir` is refused. A component swapped for a symlink between
/// the check and the open fails the open (`O_NOFOLLOW`) rather than being followed.
pub fn fallback(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> Result<File, Refused> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, rel).ok_or_else(|| escapes(rel))?;
    // Directories below `dir` along the walk; empty: at `dir` itself.
    let mut opened: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    // `todo` is a stack: the next component is its last element.
    while let Some(name) = todo.pop() {
        let here = opened.last().map(|f| f.as_fd()).unwrap_or(dir);
        if name == ".." {
            if opened.pop().is_none() {
                return Err(escapes(rel));
            }
            continue;
        }
        let st = fstatat(here, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = readlinkat(here, name.as_os_str())?;
            push_components(&mut todo, Path::new(&target)).ok_or_else(|| escapes(rel))?;
            continue;
        }
        if todo.is_empty() {
            let fd = openat(
                here,
                name.as_os_str(),
                flags | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )?;
            return Ok(File::from(fd));
        }
        let fd = openat(
            here,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        opened.push(fd);
    }
    // An empty path, or one that ended on `..`: the directory reached.
    let here = opened.last().map(|f| f.as_fd()).unwrap_or(dir);
    let fd = openat(here, ".", flags, Mode::empty())?;
    Ok(File::from(fd))
}

/// Pushes `path`'s components onto the walk stack (last component first). `None` for an
/// absolute path, which would leave the directory.
fn push_components(todo: &mut Vec<OsString>, path: &Path) -> Option<()> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return None,
            Component::CurDir => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(n) => {
                if n.as_bytes().is_empty() {
                    continue;
                }
                parts.push(n.to_os_string());
            }
        }
    }
    todo.extend(parts.into_iter().rev());
    Some(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn read(dir: &File, rel: &str, max: u64) -> Result<String, Refused> {
        let mut buf = Vec::new();
        read_beneath(dir.as_fd(), Path::new(rel), max, &mut buf)?;
        Ok(String::from_utf8(buf).unwrap())
    }

    fn read_fallback(dir: &File, rel: &str) -> Result<String, Refused> {
        let file = fallback(
            dir.as_fd(),
            Path::new(rel),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        )?;
        let mut buf = Vec::new();
        read_regular(file, 1 << 20, &mut buf)?;
        Ok(String::from_utf8(buf).unwrap())
    }

    /// root/a/f (file), root/a/inside -> f, root/data -> a (relative), root/key -> data/f,
    /// root/abs -> /outside/secret, root/up -> ../outside/secret, root/loop -> loop.
    fn tree() -> (tempfile::TempDir, File) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::fs::write(root.join("a/f"), "inside").unwrap();
        std::fs::write(t.path().join("outside/secret"), "secret").unwrap();
        symlink("f", root.join("a/inside")).unwrap();
        symlink("a", root.join("data")).unwrap();
        symlink("data/f", root.join("key")).unwrap();
        symlink(t.path().join("outside/secret"), root.join("abs")).unwrap();
        symlink("../outside/secret", root.join("up")).unwrap();
        symlink("a/../../outside/secret", root.join("sneaky")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let dir = open_dir(&root).unwrap();
        (t, dir)
    }

    #[test]
    fn links_inside_are_followed_and_links_out_refused() {
        let (_t, dir) = tree();
        type Read = fn(&File, &str) -> Result<String, Refused>;
        let readers: [Read; 2] = [|d, r| read(d, r, 1 << 20), read_fallback];
        for read in readers {
            assert_eq!(read(&dir, "a/f").unwrap(), "inside");
            assert_eq!(read(&dir, "a/inside").unwrap(), "inside");
            assert_eq!(read(&dir, "key").unwrap(), "inside");
            assert_eq!(read(&dir, "data/inside").unwrap(), "inside");
            for out in ["abs", "up", "sneaky", "../outside/secret", "/etc/passwd"] {
                assert!(
                    matches!(read(&dir, out), Err(Refused::Escapes(_))),
                    "{out}: {:?}",
                    read(&dir, out)
                );
            }
            assert!(matches!(read(&dir, "nope"), Err(Refused::NotFound)));
            assert!(matches!(read(&dir, "a/f/x"), Err(Refused::NotFound)));
            assert!(matches!(read(&dir, "loop"), Err(Refused::Io(_))));
            assert!(matches!(
                read(&dir, "a"),
                Err(Refused::NotRegular("a directory"))
            ));
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (t, dir) = tree();
        let fifo = t.path().join("root/a/pipe");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        symlink("a/pipe", t.path().join("root/viapipe")).unwrap();
        for rel in ["a/pipe", "viapipe"] {
            assert!(matches!(
                read(&dir, rel, 100),
                Err(Refused::NotRegular("a FIFO"))
            ));
            assert!(matches!(
                read_fallback(&dir, rel),
                Err(Refused::NotRegular("a FIFO"))
            ));
        }
        assert!(matches!(
            read_path(&fifo, 100),
            Err(Refused::NotRegular("a FIFO"))
        ));
    }

    #[test]
    fn a_reused_buffer_holds_exactly_each_file() {
        let (t, dir) = tree();
        let mut buf = Vec::new();
        for (name, len) in [("big", 5000), ("small", 3), ("empty", 0), ("page", 4096)] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(t.path().join("root").join(name), &bytes).unwrap();
            let file = open_beneath(dir.as_fd(), Path::new(name), false).unwrap();
            read_regular(file, 5000, &mut buf).unwrap();
            assert_eq!(buf, bytes, "{name}");
        }
    }

    #[test]
    fn every_size_against_every_cap() {
        let (t, dir) = tree();
        let mut buf = Vec::new();
        for len in 0..40usize {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            std::fs::write(t.path().join("root/f"), &bytes).unwrap();
            for cap in 0..40u64 {
                let file = open_beneath(dir.as_fd(), Path::new("f"), false).unwrap();
                match read_regular(file, cap, &mut buf) {
                    Ok(()) => assert!(len as u64 <= cap && buf == bytes, "{len} / {cap}"),
                    Err(Refused::TooBig { .. }) => assert!(len as u64 > cap, "{len} / {cap}"),
                    Err(e) => panic!("{len} / {cap}: {e}"),
                }
            }
        }
    }

    #[test]
    fn files_over_the_cap_are_refused_by_size() {
        let (t, dir) = tree();
        std::fs::write(t.path().join("root/big"), vec![b'x'; 1000]).unwrap();
        assert!(matches!(
            read(&dir, "big", 999),
            Err(Refused::TooBig {
                size: 1000,
                max: 999
            })
        ));
        assert_eq!(read(&dir, "big", 1000).unwrap().len(), 1000);
        // A device reports no size: the cap still holds while reading.
        let mut buf = Vec::new();
        let zero = File::open("/dev/zero").unwrap();
        assert!(matches!(
            read_regular(zero, 10, &mut buf),
            Err(Refused::NotRegular("a character device"))
        ));
    }
}
