//! The control socket: `rewire status` and `rewire maintenance on|off` talk to the daemon here.
//!
//! A unix stream socket (`[control] socket`, mode 0600: maintenance takes the container out of
//! the catalog, so only its owner may ask). One request per connection, one JSON object per
//! line each way:
//!
//! ```text
//! → {"command":"status"}                    ← {"ok":true,"status":{...the report...}}
//! → {"command":"maintenance","on":true}     ← {"ok":true,"maintenance":true}
//!                                           ← {"ok":false,"error":"..."}
//! ```
//!
//! A socket file left by a dead daemon is replaced; one that a live daemon answers on is not
//! (the second daemon runs without a control socket and says so).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::status::Board;

/// What the daemon is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Maintenance(bool),
}

/// How long a client may take to send its request, and the client to get its answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Binds the socket and serves it until `stop` fires. The socket file is removed on stop.
pub fn start(
    socket: &Path,
    board: Arc<Board>,
    stop: CancellationToken,
) -> std::io::Result<mpsc::UnboundedReceiver<Command>> {
    let listener = bind(socket)?;
    let identity = std::fs::metadata(socket).map(|m| (m.dev(), m.ino())).ok();
    let (tx, rx) = mpsc::unbounded_channel();
    let path = socket.to_path_buf();
    info!(socket = %path.display(), "control socket listening");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, board.clone(), tx.clone()));
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

async fn serve(stream: UnixStream, board: Arc<Board>, tx: mpsc::UnboundedSender<Command>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST as u64);
    let reply = match tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => answer(line.trim(), &board, &tx),
        Ok(Err(e)) => json!({"ok": false, "error": format!("cannot read the request: {e}")}),
        Err(_) => json!({"ok": false, "error": "no request within 5s"}),
    };
    let mut bytes = serde_json::to_vec(&reply).expect("a JSON value always serializes");
    bytes.push(b'\n');
    if let Err(e) = tokio::time::timeout(IO_TIMEOUT, write.write_all(&bytes)).await {
        debug!(error = %e, "control client went away");
    }
    let _ = write.shutdown().await;
}

fn answer(request: &str, board: &Board, tx: &mpsc::UnboundedSender<Command>) -> Value {
    let req: Value = match serde_json::from_str(request) {
        Ok(v) => v,
        Err(e) => return json!({"ok": false, "error": format!("not a JSON request: {e}")}),
    };
    match req.get("command").and_then(Value::as_str) {
        Some("status") => json!({"ok": true, "status": board.report()}),
        Some("maintenance") => match req.get("on").and_then(Value::as_bool) {
            Some(on) => {
                if tx.send(Command::Maintenance(on)).is_err() {
                    return json!({"ok": false, "error": "the daemon is stopping"});
                }
                json!({"ok": true, "maintenance": on})
            }
            None => json!({"ok": false, "error": "maintenance needs \"on\": true or false"}),
        },
        Some(other) => json!({"ok": false, "error": format!("unknown command {other:?}")}),
        None => json!({"ok": false, "error": "the request needs a \"command\""}),
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

/// Why a client request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no rewire daemon answers on {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon on {socket} said: {message}")]
    Refused { socket: PathBuf, message: String },
}

/// Sends one request and returns the answer (its `ok` already checked).
pub async fn request(socket: &Path, req: &Value) -> Result<Value, ClientError> {
    let unreachable = |source: std::io::Error| ClientError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        let mut bytes = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        stream.write_all(&bytes).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        serde_json::from_str::<Value>(&line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unreadable answer: {e}"),
            )
        })
    };
    let answer = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 5s",
            ))
        })?
        .map_err(unreachable)?;
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        Ok(answer)
    } else {
        Err(ClientError::Refused {
            socket: socket.to_path_buf(),
            message: answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("an unknown error")
                .to_string(),
        })
    }
}

/// Asks for the daemon's status. With `expected` (the config this command was given), a daemon
/// running another config is an error: two daemons left on the default socket would otherwise
/// answer (and take `maintenance on`) for each other.
async fn daemon_status(socket: &Path, expected: Option<&Path>) -> Result<Value, String> {
    let answer = request(socket, &json!({"command": "status"}))
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.get("status").cloned().unwrap_or(Value::Null);
    if let (Some(expected), Some(running)) =
        (expected, status.get("config").and_then(Value::as_str))
        && Path::new(running) != expected
    {
        return Err(format!(
            "the daemon on {} runs {running}, not {}: give each daemon its own [control] socket, \
             or pass --socket to talk to this one anyway",
            socket.display(),
            expected.display()
        ));
    }
    Ok(status)
}

/// `rewire status [--json]`: 0 when the daemon answered, 1 when it is unreachable.
pub async fn status_command(socket: &Path, expected: Option<&Path>, as_json: bool) -> u8 {
    match daemon_status(socket, expected).await {
        Ok(status) => {
            if as_json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).expect("a JSON value always serializes")
                );
            } else {
                print!("{}", render_status(&status));
            }
            0
        }
        Err(e) => {
            eprintln!("rewire: {e}");
            1
        }
    }
}

/// `rewire maintenance on|off`: 0 when the daemon took it, 1 when it is unreachable.
pub async fn maintenance_command(socket: &Path, expected: Option<&Path>, on: bool) -> u8 {
    if expected.is_some()
        && let Err(e) = daemon_status(socket, expected).await
    {
        eprintln!("rewire: {e}");
        return 1;
    }
    let req = json!({"command": "maintenance", "on": on});
    match request(socket, &req).await {
        Ok(_) => {
            println!(
                "maintenance {}: {}",
                if on { "on" } else { "off" },
                if on {
                    "services deregistered; main keeps running"
                } else {
                    "services register again once their health checks pass"
                }
            );
            0
        }
        Err(e) => {
            eprintln!("rewire: {e}");
            1
        }
    }
}

/// The human-readable form of a status report.
pub fn render_status(s: &Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value, k: &str| -> String {
        match v.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rewire (pid {})  config {}",
        text(s, "pid"),
        text(s, "config")
    );
    let health = text(s, "catalog_health");
    if health.is_empty() {
        let _ = writeln!(out, "catalog: {}", text(s, "catalog"));
    } else {
        let _ = writeln!(out, "catalog: {} ({health})", text(s, "catalog"));
    }
    let maintenance = s.get("maintenance").and_then(Value::as_bool) == Some(true);
    let _ = writeln!(
        out,
        "maintenance: {}",
        if maintenance { "on" } else { "off" }
    );

    match s.get("main") {
        Some(m) if !m.is_null() => {
            let mut line = format!("main: {}", text(m, "state"));
            if let Some(pid) = m.get("pid").and_then(Value::as_i64) {
                line.push_str(&format!(" (pid {pid})"));
            }
            let restarts = m.get("restarts").and_then(Value::as_u64).unwrap_or(0);
            if restarts > 0 {
                line.push_str(&format!(", {restarts} restart(s)"));
            }
            let last = text(m, "last_exit");
            if !last.is_empty() {
                line.push_str(&format!(", last: {last}"));
            }
            let _ = writeln!(out, "{line}");
        }
        _ => {
            let _ = writeln!(out, "main: none");
        }
    }

    let section = |out: &mut String, title: &str, items: Vec<String>| {
        let _ = writeln!(out, "{title}:");
        if items.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for i in items {
            let _ = writeln!(out, "  {i}");
        }
    };

    let services = s
        .get("services")
        .and_then(Value::as_object)
        .map(|m| {
            m.values()
                .map(|v| {
                    let registered = v.get("registered").and_then(Value::as_bool) == Some(true);
                    let mut line = format!(
                        "{} ({})  {}:{}  {}{}",
                        text(v, "id"),
                        text(v, "name"),
                        text(v, "address"),
                        text(v, "port"),
                        text(v, "status"),
                        if registered {
                            ", registered"
                        } else {
                            ", not registered"
                        }
                    );
                    let detail = one_line(&text(v, "detail"));
                    if !detail.is_empty() {
                        line.push_str(&format!("  {detail}"));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default();
    section(&mut out, "services", services);

    let watches = s
        .get("watches")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    section(&mut out, "watches", watches);

    let templates = s
        .get("templates")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, v)| {
                    let mut line =
                        format!("{name} -> {}  {}", text(v, "destination"), text(v, "state"));
                    let render = text(v, "last_render");
                    line.push_str(&format!(
                        ", last render {}",
                        if render.is_empty() { "never" } else { &render }
                    ));
                    let written = text(v, "last_written");
                    if !written.is_empty() {
                        line.push_str(&format!(", last written {written}"));
                    }
                    let detail = one_line(&text(v, "detail"));
                    if !detail.is_empty() {
                        let what = if text(v, "state") == "error" {
                            "last error"
                        } else {
                            "waiting"
                        };
                        line.push_str(&format!("\n    {what}: {detail}"));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default();
    section(&mut out, "templates", templates);

    let tasks = s
        .get("tasks")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(name, v)| {
                    let mut line = format!(
                        "{name}: {} run(s), {} failed",
                        text(v, "runs"),
                        text(v, "failures")
                    );
                    let e = one_line(&text(v, "last_error"));
                    if !e.is_empty() {
                        line.push_str(&format!("; last error: {e}"));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default();
    section(&mut out, "tasks", tasks);
    out
}

/// The first line of a multi-line detail, marked as cut.
fn one_line(s: &str) -> String {
    let s = s.trim();
    match s.split_once('\n') {
        Some((first, _)) => format!("{first} ..."),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_lists_every_section() {
        let report = json!({
            "pid": 7, "config": "/etc/rewire.toml", "catalog": "dir:/cat", "catalog_health": "",
            "maintenance": false,
            "templates": {"nginx": {"destination": "/etc/nginx.conf", "state": "error",
                "detail": "check rejected\nmore", "last_render": "2024-01-01T00:00:00.000Z",
                "last_written": null, "renders": 1, "writes": 0, "ready": false}},
            "services": {"web-h-80": {"id": "web-h-80", "name": "web", "address": "10.0.0.1",
                "port": 80, "status": "passing", "registered": true, "detail": "ok"}},
            "watches": ["sales: 2 healthy; on_change ran 1 time(s), 0 failed"],
            "tasks": {"backup": {"runs": 3, "failures": 1, "last_error": "exited with status 1"}},
            "main": {"state": "running", "pid": 42, "restarts": 0, "last_exit": null}
        });
        let t = render_status(&report);
        assert!(t.contains("main: running (pid 42)"), "{t}");
        assert!(
            t.contains("web-h-80 (web)  10.0.0.1:80  passing, registered  ok"),
            "{t}"
        );
        assert!(t.contains("sales: 2 healthy"), "{t}");
        assert!(
            t.contains("nginx -> /etc/nginx.conf  error, last render 2024-01-01"),
            "{t}"
        );
        assert!(t.contains("last error: check rejected ..."), "{t}");
        assert!(
            t.contains("backup: 3 run(s), 1 failed; last error: exited with status 1"),
            "{t}"
        );
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        assert!(sock.exists());
        let board = Arc::new(Board::new(1, "c".into(), "dir:x".into()));
        let stop = CancellationToken::new();
        let mut rx = start(&sock, board, stop.clone()).unwrap();
        let a = request(&sock, &json!({"command": "status"})).await.unwrap();
        assert_eq!(a["status"]["catalog"], "dir:x");
        request(&sock, &json!({"command": "maintenance", "on": true}))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(Command::Maintenance(true)));
        // A live daemon's socket is not taken over.
        let second = start(
            &sock,
            Arc::new(Board::new(2, "c".into(), "d".into())),
            stop.clone(),
        );
        assert!(second.is_err());
        cleanup(&sock);
        assert!(sock.exists(), "cleanup removed a live socket");
        stop.cancel();
        for _ in 0..200 {
            if !sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!sock.exists(), "the socket outlived its daemon");
    }
}
