//! `[control]`: where the control socket for `rewire status` and `rewire maintenance` lives
//! (by default one per user, in a directory only that user can write, so two users' daemons
//! never answer for each other and nobody can put a socket where a client will look), and which
//! group besides its owner may use it.

use std::path::{Path, PathBuf};

use super::ControlConfig;
use super::walker::{Tbl, Walker};

impl Walker<'_> {
    pub(super) fn control(&mut self, root: &Tbl) -> ControlConfig {
        let Some(t) = self.table(root, "control") else {
            return ControlConfig {
                socket: default_socket(),
                group: None,
            };
        };
        let socket = self.path(&t, "socket").unwrap_or_else(default_socket);
        let group = self.string(&t, "group").and_then(|g| {
            let ok = !g.get_ref().is_empty()
                && g.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                self.error(
                    g.span(),
                    format!("`group` {:?} is not a group name", g.get_ref()),
                    "name a group from /etc/group, e.g. group = \"rewire\"",
                );
            }
            ok.then(|| g.into_inner())
        });
        self.finish(&t, &["socket", "group"]);
        ControlConfig { socket, group }
    }
}

/// The directory holding the default socket of a user without a runtime directory:
/// `<tmp>/rewire-<uid>`, created 0700 and refused unless it is that user's (see
/// [`default_socket_for`]).
pub fn private_socket_dir(tmp: &Path, uid: u32) -> PathBuf {
    tmp.join(format!("rewire-{uid}"))
}

/// The default control socket for this process (see [`default_socket_for`]).
pub fn default_socket() -> PathBuf {
    let uid = nix::unistd::geteuid().as_raw();
    let xdg = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from);
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    let run_user_ours = {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&run_user).is_ok_and(|m| m.is_dir() && m.uid() == uid)
    };
    default_socket_for(
        uid,
        xdg,
        run_user_ours.then_some(run_user),
        &std::env::temp_dir(),
    )
}

/// `$XDG_RUNTIME_DIR/rewire.sock`; else as root `/run/rewire.sock`; else
/// `/run/user/<uid>/rewire.sock` when that directory exists and belongs to the user
/// (`run_user`); else `<tmp>/rewire-<uid>/rewire.sock` (`$TMPDIR`, usually `/tmp`), in a
/// 0700 directory that must be the user's. Never a file directly in a shared directory such as
/// /tmp, where another user could create the name first.
pub fn default_socket_for(
    uid: u32,
    xdg: Option<PathBuf>,
    run_user: Option<PathBuf>,
    tmp: &Path,
) -> PathBuf {
    if let Some(dir) = xdg {
        return dir.join("rewire.sock");
    }
    if uid == 0 {
        return PathBuf::from("/run/rewire.sock");
    }
    match run_user {
        Some(dir) => dir.join("rewire.sock"),
        None => private_socket_dir(tmp, uid).join("rewire.sock"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_socket_never_sits_directly_in_a_shared_directory() {
        let tmp = Path::new("/tmp");
        assert_eq!(
            default_socket_for(1000, Some("/run/user/1000".into()), None, tmp),
            Path::new("/run/user/1000/rewire.sock")
        );
        assert_eq!(
            default_socket_for(0, None, None, tmp),
            Path::new("/run/rewire.sock")
        );
        assert_eq!(
            default_socket_for(1000, None, Some("/run/user/1000".into()), tmp),
            Path::new("/run/user/1000/rewire.sock")
        );
        assert_eq!(
            default_socket_for(1000, None, None, tmp),
            Path::new("/tmp/rewire-1000/rewire.sock")
        );
    }
}
