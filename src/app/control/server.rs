//! The daemon's side of the control socket: bind it, answer each connection, remove it.
//!
//! A socket file left by a dead daemon is replaced; one that a live daemon answers on is not
//! (the second daemon runs without a control socket and says so).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Answer, Command, IO_TIMEOUT, Request};
use crate::status::Board;
use crate::telemetry::metrics::Metrics;
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Binds the socket and serves it until `stop` fires; the socket file is removed on stop. The
/// accept loop and each connection run on `tasks`; a connection still talking when `stop`
/// fires is dropped.
pub fn start(
    socket: &Path,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<mpsc::UnboundedReceiver<Command>> {
    let listener = bind(socket)?;
    let identity = std::fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok();
    let (tx, rx) = mpsc::unbounded_channel();
    let path = socket.to_path_buf();
    info!(socket = %path.display(), "control socket listening");
    let connections = tasks.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (board, metrics, tx, stop) =
                            (board.clone(), metrics.clone(), tx.clone(), stop.clone());
                        connections.spawn(async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = serve(stream, board, metrics, tx) => {}
                            }
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

/// Binds `socket`, replacing a stale socket file nobody answers on.
fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "another rewire answers on {}; give each daemon its own [control] socket",
                        socket.display()
                    ),
                ));
            }
            info!(socket = %socket.display(), "replacing a stale control socket");
            std::fs::remove_file(socket)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", socket.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve(
    stream: UnixStream,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    tx: mpsc::UnboundedSender<Command>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let reply = match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => answer(line.trim(), &board, &metrics, &tx),
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
    board: &Board,
    metrics: &Metrics,
    tx: &mpsc::UnboundedSender<Command>,
) -> Answer {
    match Request::parse(request) {
        Err(e) => Answer::refused(e.to_string()),
        Ok(Request::Status) => Answer {
            ok: Some(true),
            status: Some(board.report()),
            ..Answer::default()
        },
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
    let is_socket = || std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
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
        let metrics = Arc::new(Metrics::new());
        metrics.declare(&[crate::config::MetricConfig {
            name: "jobs_total".into(),
            help: "jobs".into(),
            kind: crate::config::MetricKind::Counter,
        }]);
        let mut rx = start(&sock, board, metrics.clone(), stop.clone(), &tasks).unwrap();
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
            &sock,
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
