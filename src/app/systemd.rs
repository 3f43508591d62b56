//! systemd's readiness protocol (`sd_notify`), without libsystemd: one datagram to the unix
//! socket named by `$NOTIFY_SOCKET` for each state change.
//!
//! With `Type=notify`, systemd counts rewire as started once it sends `READY=1`; rewire sends it
//! when every template has been written once (so units ordered after rewire find their
//! configs), and `STOPPING=1` when its stop sequence begins. Without `$NOTIFY_SOCKET` (not run
//! by systemd, or another `Type=`) nothing is sent.
//!
//! `main` calls [`take_from_env`] first thing, while the process has one thread: it reads the
//! variable and removes it, so that no child (nginx, a health check) inherits it and tells
//! systemd "ready" on rewire's behalf (with `NotifyAccess=all` systemd would believe it).

use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

use tracing::{debug, warn};

static SOCKET: OnceLock<Option<String>> = OnceLock::new();

/// Reads `$NOTIFY_SOCKET` and removes it from the environment.
///
/// Call only while the process has a single thread (first thing in `main`).
pub fn take_from_env() {
    let value = std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|v| !v.is_empty());
    if value.is_some() {
        // SAFETY: called from `main` before any thread exists (no runtime, no fork yet), so no
        // other thread can read the environment while it changes.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    }
    let _ = SOCKET.set(value);
}

/// Sends `state` (e.g. `READY=1`) to systemd, if it asked for notifications. Failures are
/// logged, never fatal: the service manager decides what a missing notification means.
pub fn notify(state: &str) {
    let Some(Some(path)) = SOCKET.get() else {
        return;
    };
    match send(path, state) {
        Ok(()) => debug!(state, socket = %path, "told systemd"),
        Err(e) => warn!(state, socket = %path, error = %e, "cannot notify systemd"),
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        // An abstract socket (Linux): `@name` stands for a leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_arrives_as_one_datagram_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
