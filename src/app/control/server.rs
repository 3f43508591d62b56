//! The daemon's side of the control socket: bind it, answer each connection, remove it.
//!
//! The socket is bound inside a fresh 0700 directory, given its final mode (0600, or 0660 for
//! `[control] group`) and only then renamed into place: it never exists at its path with a
//! wider mode, whatever the umask (a bind-then-chmod left a window in which any local user
//! could connect). Before binding, the directory and any file at the path are checked
//! ([`trust`](super::trust)): a socket another user owns is refused, never replaced. Each
//! connection's peer is identified (SO_PEERCRED): anyone who can connect may read the status,
//! only root and the daemon's own user may change state.
//!
//! A socket file left by a dead daemon of ours is replaced; one that a live daemon answers on
//! is not (the second daemon runs without a control socket and says so).

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::trust::{self, Untrusted};
use super::{Answer, Command, IO_TIMEOUT, Request};
use crate::config::ControlConfig;
use crate::status::Board;
use crate::telemetry::metrics::Metrics;
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Connections of users who may only read the status, at most, at once. Past that a new one of
/// theirs is closed at once: each costs a descriptor and ~12 KiB for up to 5 s, and a `[control]
/// group` member holding thousands used up rewire's descriptors (the catalog watch then failed
/// with "Too many open files"). Root's and the daemon's user's connections are never turned
/// away.
const MAX_READERS: usize = 32;

/// A refused request or connection is logged at warn level at most once a minute.
const REFUSAL_QUIET: Duration = Duration::from_secs(60);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error("another rewire answers on {}; give each daemon its own [control] socket", .0.display())]
    InUse(PathBuf),
    #[error("[control] group {0:?} does not exist: create it, or name a group from /etc/group")]
    NoGroup(String),
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BindError {
    let path = path.to_path_buf();
    move |source| BindError::Io { what, path, source }
}

/// Binds the socket and serves it until `stop` fires; the socket file is removed on stop. The
/// accept loop and each connection run on `tasks`; a connection still talking when `stop`
/// fires is dropped.
pub fn start(
    control: &ControlConfig,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> Result<mpsc::UnboundedReceiver<Command>, BindError> {
    let socket = &control.socket;
    let listener = bind(control)?;
    let identity = std::fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok();
    let (tx, rx) = mpsc::unbounded_channel();
    let path = socket.to_path_buf();
    info!(socket = %path.display(), group = control.group.as_deref().unwrap_or(""), "control socket listening");
    let connections = tasks.clone();
    let readers = Arc::new(tokio::sync::Semaphore::new(MAX_READERS));
    let refusals = Arc::new(Refusals::default());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // Who connected: decides whether the request may change state.
                        let peer = stream.peer_cred().ok().map(|c| c.uid());
                        let slot = if peer.is_some_and(trust::trusted) {
                            None
                        } else {
                            match readers.clone().try_acquire_owned() {
                                Ok(p) => Some(p),
                                Err(_) => {
                                    refusals.note(peer, "closed a connection: too many at once from users who may only read the status");
                                    continue;
                                }
                            }
                        };
                        let (board, metrics, tx, stop, refusals) = (
                            board.clone(),
                            metrics.clone(),
                            tx.clone(),
                            stop.clone(),
                            refusals.clone(),
                        );
                        connections.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = serve(stream, peer, board, metrics, tx, &refusals) => {}
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        // Remove the file only if it is still ours (not replaced by another daemon).
        if std::fs::metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            .is_some_and(|id| Some(id) == identity)
        {
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok(rx)
}

/// Binds the control socket (see the module docs), replacing a stale socket of ours nobody
/// answers on.
fn bind(control: &ControlConfig) -> Result<UnixListener, BindError> {
    let socket = &control.socket;
    let gid = match &control.group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => return Err(BindError::NoGroup(name.clone())),
            Err(e) => return Err(io("cannot look up group", Path::new(name))(e.into())),
        },
    };
    let dir = trust::dir_of(socket);
    if !dir.exists() {
        // Only its owner (and the group, when one is named) may reach what rewire creates.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if gid.is_some() { 0o710 } else { 0o700 })
            .create(dir)
            .map_err(io("cannot create", dir))?;
        if let Some(gid) = gid {
            nix::unistd::chown(dir, None, Some(gid))
                .map_err(|e| io("cannot give the group", dir)(e.into()))?;
        }
    }
    if trust::check_socket(socket)? {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(BindError::InUse(socket.clone()));
        }
        info!(socket = %socket.display(), "replacing a stale control socket");
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    let listener = bind_private(dir, socket, mode, gid)?;
    listener
        .set_nonblocking(true)
        .map_err(io("cannot set up", socket))?;
    UnixListener::from_std(listener).map_err(io("cannot set up", socket))
}

/// Binds inside a fresh 0700 directory next to `socket`, sets the final mode and group there,
/// then renames the socket into place (atomically replacing a stale one).
fn bind_private(
    dir: &Path,
    socket: &Path,
    mode: u32,
    gid: Option<nix::unistd::Gid>,
) -> Result<std::os::unix::net::UnixListener, BindError> {
    use rand::Rng;
    /// Removes the private directory however the bind ends.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    // Short: a socket path may not exceed 107 bytes, and this one is the final one plus 13.
    let scratch = dir.join(format!(".rw{:08x}", rand::rng().random::<u32>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(io("cannot create", &scratch))?;
    let scratch = Scratch(scratch);
    let private = scratch.0.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&private)
        .map_err(io("cannot bind the control socket at", &private))?;
    if let Some(gid) = gid {
        nix::unistd::chown(&private, None, Some(gid))
            .map_err(|e| io("cannot give the group", &private)(e.into()))?;
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(mode))
        .map_err(io("cannot set the mode of", &private))?;
    std::fs::rename(&private, socket).map_err(io("cannot put the control socket at", socket))?;
    Ok(listener)
}

/// Refusals logged at warn level once a minute, the rest at debug (a client can ask as fast as
/// it likes: 20 000 refused requests wrote 2.3 MB of log in 7 s).
#[derive(Default)]
struct Refusals {
    last_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Refusals {
    fn note(&self, peer: Option<u32>, what: &str) {
        let mut last = crate::lock::lock(&self.last_warned);
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_QUIET) {
            *last = Some(now);
            warn!(peer = ?peer, "control socket: {what} (more within a minute are logged at debug level)");
        } else {
            debug!(peer = ?peer, "control socket: {what}");
        }
    }
}

async fn serve(
    stream: UnixStream,
    peer: Option<u32>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Command>,
    refusals: &Refusals,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let reply = match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => answer(line.trim(), peer, &board, &metrics, &tx, refusals),
        Ok(Err(e)) => Answer::refused(format!("cannot read the request: {e}")),
        Err(_) => Answer::refused("no request within 5s"),
    };
    let mut bytes = serde_json::to_vec(&reply).expect("an answer always serializes");
    bytes.push(b'\n');
    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, write.write_all(&bytes)).await {
        debug!(error = %e, "control client went away");
    }
    let _ = write.shutdown().await;
}

fn answer(
    request: &str,
    peer: Option<u32>,
    board: &Board,
    metrics: &Metrics,
    tx: &mpsc::UnboundedSender<Command>,
    refusals: &Refusals,
) -> Answer {
    match Request::parse(request) {
        Err(e) => Answer::refused(e.to_string()),
        Ok(Request::Status) => Answer {
            ok: Some(true),
            status: Some(board.report()),
            ..Answer::default()
        },
        Ok(Request::Maintenance { .. }) if !peer.is_some_and(trust::trusted) => {
            let who = peer.map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
            refusals.note(peer, "refused a maintenance request from another user");
            Answer::refused(format!(
                "maintenance may be switched only by root or the daemon's user (uid {}); {who} may read the status",
                trust::me()
            ))
        }
        Ok(Request::Metric { .. }) if !peer.is_some_and(trust::trusted) => {
            let who = peer.map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
            refusals.note(peer, "refused a metric from another user");
            Answer::refused(format!(
                "metrics may be set only by root or the daemon's user (uid {}); {who} may read the status",
                trust::me()
            ))
        }
        Ok(Request::Metric { name, value }) => match metrics.set_user(&name, value) {
            Ok(()) => Answer {
                ok: Some(true),
                ..Answer::default()
            },
            Err(e) => Answer::refused(e.to_string()),
        },
        Ok(Request::Maintenance { on }) => {
            if tx.send(Command::Maintenance(on)).is_err() {
                return Answer::refused("the daemon is stopping");
            }
            Answer {
                ok: Some(true),
                maintenance: Some(on),
                ..Answer::default()
            }
        }
    }
}

/// Removes the socket file once nobody serves it. The serving task removes its own socket when
/// the daemon's token is cancelled; this waits a moment for that, then removes a socket no
/// daemon answers on, and never one a live daemon answers on.
pub fn cleanup(socket: &Path) {
    let is_socket = || {
        std::fs::symlink_metadata(socket)
            .is_ok_and(|m| m.file_type().is_socket() && m.uid() == trust::me())
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while is_socket() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if is_socket() && std::os::unix::net::UnixStream::connect(socket).is_err() {
        let _ = std::fs::remove_file(socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::control::client;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let board = Arc::new(Board::new(1, "c".into(), "dir:x".into()));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let control = ControlConfig {
            socket: sock.clone(),
            group: None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.declare(&[crate::config::MetricConfig {
            name: "jobs_total".into(),
            help: "jobs".into(),
            kind: crate::config::MetricKind::Counter,
        }]);
        let mut rx = start(&control, board, metrics.clone(), stop.clone(), &tasks).unwrap();
        assert_eq!(
            std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let metric = |name: &str, value: f64| Request::Metric {
            name: name.into(),
            value,
        };
        client::request(&sock, metric("jobs_total", 2.0))
            .await
            .unwrap();
        let refused = |r| match r {
            Err(client::ClientError::Refused { message, .. }) => message,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(
            refused(client::request(&sock, metric("nope", 1.0)).await),
            "metric \"nope\" is not declared; add [[metric]] name = \"nope\" to the config"
        );
        assert!(
            refused(client::request(&sock, metric("rewire_up", 1.0)).await)
                .contains("is rewire's own")
        );
        assert!(
            refused(client::request(&sock, metric("jobs_total", -1.0)).await).contains("only adds")
        );
        let a = client::request(&sock, Request::Status).await.unwrap();
        assert_eq!(a.status.unwrap().catalog, "dir:x");
        client::request(&sock, Request::Maintenance { on: true })
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(Command::Maintenance(true)));
        // A live daemon's socket is not taken over.
        let second = start(
            &control,
            Arc::new(Board::new(2, "c".into(), "d".into())),
            metrics.clone(),
            stop.clone(),
            &tasks,
        );
        assert!(second.is_err());
        cleanup(&sock);
        assert!(sock.exists(), "cleanup removed a live socket");
        stop.cancel();
        tasks.close();
        tasks.wait().await;
        assert!(!sock.exists(), "the socket outlived its daemon");
    }
}
