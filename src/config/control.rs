//! `[control]`: where the control socket for `rewire status` and `rewire maintenance` lives
//! (by default one per user, so two users' daemons never answer for each other).

use std::path::PathBuf;

use super::ControlConfig;
use super::walker::{Tbl, Walker};

impl Walker<'_> {
    pub(super) fn control(&mut self, root: &Tbl) -> ControlConfig {
        let Some(t) = self.table(root, "control") else {
            return ControlConfig {
                socket: default_socket(),
            };
        };
        let socket = self.path(&t, "socket").unwrap_or_else(default_socket);
        self.finish(&t, &["socket"]);
        ControlConfig { socket }
    }
}

/// `$XDG_RUNTIME_DIR/rewire.sock`, `/run/rewire.sock` as root, else `/tmp/rewire-<uid>.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rewire.sock");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/rewire.sock")
    } else {
        PathBuf::from(format!("/tmp/rewire-{uid}.sock"))
    }
}
