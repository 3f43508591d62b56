//! Whether a control socket can be trusted: the checks the daemon makes before it binds and a
//! client makes before (and after) it connects.
//!
//! A socket's owner decides who answers on it. In a directory another user can write (a
//! shared /tmp, a directory that is not ours) that user can create the name first, or swap the
//! file: `rewire status` would then print their data, and `rewire maintenance on` would go
//! nowhere. So both sides trust a socket, and the directory holding it, only when they belong
//! to root or to the user running rewire, and a directory others may write only when it is
//! sticky (others cannot rename or remove what is ours). After connecting, the client checks
//! the daemon's own uid (SO_PEERCRED), which no file trick can fake.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who this process runs as (the effective uid, the one files and sockets are checked
/// against).
pub fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Root and the user running rewire: the only owners a socket (or its directory) may have.
pub fn trusted(uid: u32) -> bool {
    uid == 0 || uid == me()
}

/// A socket, directory or daemon rewire will not talk through.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    #[error(
        "{path} belongs to uid {owner}, neither to rewire's user (uid {me}) nor to root: another user could answer on it with fake data or swallow `maintenance on`; remove it, or choose a path of your own ([control] socket, --socket)",
        path = .path.display(),
        me = me()
    )]
    Owner { path: PathBuf, owner: u32 },
    #[error(
        "{dir} is writable by other users (mode {mode:04o}) without the sticky bit: another user could replace the socket; choose a directory only you (or root) can write ([control] socket)",
        dir = .dir.display()
    )]
    Writable { dir: PathBuf, mode: u32 },
    #[error(
        "{dir} must be a directory of rewire's user (uid {me}) that nobody else can use (mode 0700), not a link or a directory of another user (owner uid {owner}, mode {mode:04o}): remove it, and rewire creates it again",
        dir = .dir.display(),
        me = me()
    )]
    Private { dir: PathBuf, owner: u32, mode: u32 },
    #[error("{path} exists and is not a socket", path = .path.display())]
    NotSocket { path: PathBuf },
    #[error(
        "the process answering on {socket} runs as uid {uid}, neither as rewire's user (uid {me}) nor as root: not a rewire daemon of yours",
        socket = .socket.display(),
        me = me()
    )]
    Peer { socket: PathBuf, uid: u32 },
    #[error("cannot check {path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory a socket path lives in (`.` for a bare name).
pub fn dir_of(socket: &Path) -> &Path {
    socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether `dir` is the private directory the default socket of a user without a runtime
/// directory lives in (`$TMPDIR/rewire-<uid>`), which must be that user's alone.
pub fn is_private_dir(dir: &Path) -> bool {
    dir == crate::config::private_socket_dir(&std::env::temp_dir(), me())
}

/// Checks the directory holding a socket (it must exist).
pub fn check_dir(dir: &Path) -> Result<(), Untrusted> {
    let io = |source| Untrusted::Io {
        path: dir.to_path_buf(),
        source,
    };
    if is_private_dir(dir) {
        // Not followed: a link here would be anybody's.
        let m = std::fs::symlink_metadata(dir).map_err(io)?;
        let mode = m.permissions().mode() & 0o7777;
        if !m.is_dir() || m.uid() != me() || mode & 0o077 != 0 {
            return Err(Untrusted::Private {
                dir: dir.to_path_buf(),
                owner: m.uid(),
                mode,
            });
        }
        return Ok(());
    }
    let m = std::fs::metadata(dir).map_err(io)?;
    if !trusted(m.uid()) {
        return Err(Untrusted::Owner {
            path: dir.to_path_buf(),
            owner: m.uid(),
        });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(Untrusted::Writable {
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks a socket path and its directory before connecting or binding. `Ok(false)`: nothing
/// is there (yet).
pub fn check_socket(socket: &Path) -> Result<bool, Untrusted> {
    use std::os::unix::fs::FileTypeExt;
    let dir = dir_of(socket);
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        _ => check_dir(dir)?,
    }
    match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Untrusted::Io {
            path: socket.to_path_buf(),
            source,
        }),
        Ok(m) if !m.file_type().is_socket() => Err(Untrusted::NotSocket {
            path: socket.to_path_buf(),
        }),
        Ok(m) if !trusted(m.uid()) => Err(Untrusted::Owner {
            path: socket.to_path_buf(),
            owner: m.uid(),
        }),
        Ok(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_may_write_is_trusted_only_when_sticky() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_dir(dir),
            Err(Untrusted::Writable { mode: 0o777, .. })
        ));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_dir(dir).is_ok());
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir(dir).is_ok());
        // A file where the socket should be.
        std::fs::write(dir.join("s"), "").unwrap();
        assert!(matches!(
            check_socket(&dir.join("s")),
            Err(Untrusted::NotSocket { .. })
        ));
        assert!(!check_socket(&dir.join("none")).unwrap());
        assert!(!check_socket(&dir.join("no/such/dir/s")).unwrap());
    }
}
