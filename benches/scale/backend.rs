//! The backends of a scale run: a small HTTP/1.1 server and its health check, both run by
//! re-executing the benchmark (or test) binary, so a run needs nothing beyond nginx and HAProxy.
//!
//! The server answers `/health` with `ok` and every other path with its id, so the load client
//! learns which backend served each request. It keeps connections alive (HTTP/1.1) and stops
//! the way a well-behaved service does on SIGTERM: it closes its listener, answers requests
//! already being read with `Connection: close`, closes idle connections, and exits when none
//! is left (5 s at most).
//!
//! A role is chosen by argv in the bench binary (`serve-backend --port P --id ID`,
//! `check-backend --port P`) and by the `REWIRE_SCALE_ROLE` variable in the test binary, where
//! libtest owns argv (see [`SelfExe`]).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The environment variable that carries a role into the test binary.
pub const ROLE_ENV: &str = "REWIRE_SCALE_ROLE";

/// How to run this binary again as a backend server or a health check.
#[derive(Clone, Debug)]
pub enum SelfExe {
    /// The bench binary: the role is its argv.
    Bench(PathBuf),
    /// A libtest binary: the role travels in [`ROLE_ENV`] (set through `env`, since rewire
    /// passes its own environment to every command), and the named test picks it up.
    Test { exe: PathBuf, test: String },
}

impl SelfExe {
    fn argv(&self, role: &[String]) -> Vec<String> {
        match self {
            SelfExe::Bench(exe) => {
                let mut v = vec![exe.display().to_string()];
                v.extend(role.iter().cloned());
                v
            }
            SelfExe::Test { exe, test } => vec![
                "env".into(),
                format!("{ROLE_ENV}={}", role.join(" ")),
                exe.display().to_string(),
                test.clone(),
                "--nocapture".into(),
                "--test-threads=1".into(),
                "-q".into(),
            ],
        }
    }

    /// argv of the backend server with this id on this port.
    pub fn serve(&self, port: u16, id: &str) -> Vec<String> {
        self.argv(&[
            "serve-backend".into(),
            "--port".into(),
            port.to_string(),
            "--id".into(),
            id.into(),
        ])
    }

    /// argv of the health check of the backend on this port.
    pub fn check(&self, port: u16) -> Vec<String> {
        self.argv(&["check-backend".into(), "--port".into(), port.to_string()])
    }
}

/// Runs the role named by `args` (`serve-backend ...` or `check-backend ...`), or `None` when
/// `args` names no role.
pub fn run_role(args: &[String]) -> Option<ExitCode> {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port = flag("--port").and_then(|p| p.parse::<u16>().ok());
    match (args.first().map(String::as_str), port) {
        (Some("serve-backend"), Some(port)) => {
            let id = flag("--id").unwrap_or_else(|| format!("backend-{port}"));
            Some(serve_blocking(port, id))
        }
        (Some("check-backend"), Some(port)) => Some(check(port)),
        (Some("serve-backend" | "check-backend"), None) => {
            eprintln!("scale: {} needs --port PORT", args[0]);
            Some(ExitCode::from(2))
        }
        _ => None,
    }
}

/// Runs the role in [`ROLE_ENV`], if set (the test binary's entry point).
pub fn run_role_from_env() -> Option<ExitCode> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let args: Vec<String> = role.split_whitespace().map(String::from).collect();
    run_role(&args)
}

/// GET /health on 127.0.0.1:`port` with a 1 s budget: 0 on a 200, 1 otherwise.
fn check(port: u16) -> ExitCode {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let budget = Duration::from_secs(1);
    let answer = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, budget)?;
        s.set_read_timeout(Some(budget))?;
        s.set_write_timeout(Some(budget))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })();
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(a) => {
            println!("unexpected answer: {}", a.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("127.0.0.1:{port}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve_blocking(port: u16, id: String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scale backend: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(port, id)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale backend on port {port}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or SIGINT, then stops gracefully.
async fn serve(port: u16, id: String) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let body: std::sync::Arc<str> = format!("{id}\n").into();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tasks.spawn(connection(stream, body.clone(), stop.clone()));
            }
        }
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    Ok(())
}

/// One client connection: requests one after the other (HTTP/1.1 keep-alive).
async fn connection(
    stream: tokio::net::TcpStream,
    body: std::sync::Arc<str>,
    stop: CancellationToken,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        // Idle between requests: a stop closes the connection here, never in mid-request.
        if r.buffer().is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                filled = r.fill_buf() => match filled {
                    Ok([]) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
        let Some(req) = read_head(&mut r).await else {
            return;
        };
        if req.chunked {
            let _ = w
                .write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
        if req.content_length > 0 {
            let mut rest = (&mut r).take(req.content_length);
            if tokio::io::copy(&mut rest, &mut tokio::io::sink())
                .await
                .is_err()
            {
                return;
            }
        }
        let text: &str = if req.path == "/health" { "ok\n" } else { &body };
        let close = req.close || stop.is_cancelled();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n",
            text.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        let mut out = head.into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(text.as_bytes());
        }
        if w.write_all(&out).await.is_err() || close {
            let _ = w.shutdown().await;
            return;
        }
    }
}

struct Head {
    method: String,
    path: String,
    close: bool,
    chunked: bool,
    content_length: u64,
}

/// Reads a request line and headers (16 KiB at most); `None` on EOF or a malformed head.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<Head> {
    let mut line = String::new();
    let mut total = 0usize;
    let mut next_line = async |line: &mut String| -> Option<()> {
        line.clear();
        let n = r.read_line(line).await.ok()?;
        total += n;
        (n > 0 && total <= 16 * 1024).then_some(())
    };
    next_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let version = parts.next()?.to_string();
    let mut close = version == "HTTP/1.0";
    let mut chunked = false;
    let mut content_length = 0;
    loop {
        next_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" if value.contains("close") => close = true,
            "connection" if value.contains("keep-alive") => close = false,
            "transfer-encoding" => chunked = true,
            "content-length" => content_length = value.parse().ok()?,
            _ => {}
        }
    }
    Some(Head {
        method,
        path,
        close,
        chunked,
        content_length,
    })
}
