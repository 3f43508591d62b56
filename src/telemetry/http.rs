//! The telemetry listener: a small HTTP/1.1 server (hyper) for Prometheus and probes.
//!
//! Bounded on purpose, since the port may face a network: GET and HEAD only (405 otherwise),
//! request heads up to 8 KiB read within 5 s, bodies never read, each connection closed after
//! 30 s, at most 64 connections at once. A new connection beyond that closes the oldest one
//! rather than waiting for it: otherwise 64 clients that connect and send nothing (or a byte
//! at a time) would hold every slot, and a liveness probe queued behind them in the kernel's
//! backlog would time out and get the container restarted. A real request is answered within
//! a millisecond of its head, long before 64 newer connections push it out. It runs on its own
//! tasks and only reads shared state (the board, the store's snapshot, the metrics), so a
//! render or a hanging check never delays a scrape.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::{Probe, Sources};

const MAX_CONNECTIONS: usize = 64;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 8 * 1024;

/// The exposition format Prometheus and promtool read.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the listener (before anything else starts, so a taken port stops `rewire run`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `listener` until `stop` fires; the accept loop and each connection run on `tasks`.
pub fn serve(
    listener: TcpListener,
    sources: Sources,
    stop: CancellationToken,
    tasks: &TaskTracker,
) {
    let connections = tasks.clone();
    let live = Arc::new(Mutex::new(Live::default()));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "telemetry listening");
    }
    tasks.spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "telemetry accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (id, evicted) = crate::lock::lock(&live).admit();
            let (sources, stop, live) = (sources.clone(), stop.clone(), live.clone());
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let sources = sources.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &sources)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = evicted.cancelled() => debug!(%peer, "telemetry connection closed for a newer one"),
                    r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => match r {
                        Ok(Err(e)) => debug!(%peer, error = %e, "telemetry connection ended"),
                        Err(_) => debug!(%peer, "telemetry connection closed after its lifetime"),
                        Ok(Ok(())) => {}
                    },
                }
                crate::lock::lock(&live).leave(id);
            });
        }
    });
}

/// The open connections, oldest first, each with the token that closes it.
#[derive(Default)]
struct Live {
    next: u64,
    open: VecDeque<(u64, CancellationToken)>,
}

impl Live {
    /// Takes in a new connection, closing the oldest when [`MAX_CONNECTIONS`] are open.
    fn admit(&mut self) -> (u64, CancellationToken) {
        if self.open.len() >= MAX_CONNECTIONS
            && let Some((_, oldest)) = self.open.pop_front()
        {
            oldest.cancel();
        }
        let id = self.next;
        self.next += 1;
        let token = CancellationToken::new();
        self.open.push_back((id, token.clone()));
        (id, token)
    }

    fn leave(&mut self, id: u64) {
        self.open.retain(|(i, _)| *i != id);
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn probe(p: Probe) -> Response<Full<Bytes>> {
    let status = if p.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_string(&p).expect("a probe always serializes");
    body.push('\n');
    text(status, "application/json", body)
}

/// One request's answer. HEAD gets GET's head (hyper drops the body).
fn answer(req: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, METRICS_TYPE, sources.metrics_text()),
        "/health" => probe(sources.health()),
        "/ready" => probe(sources.ready()),
        "/status" if sources.settings.borrow().status => {
            let value =
                serde_json::to_value(sources.board.report()).expect("a report always serializes");
            let mut body =
                serde_json::to_string_pretty(&value).expect("a JSON value always serializes");
            body.push('\n');
            text(StatusCode::OK, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /health, /ready (and /status with [telemetry] status = true)\n"
                .into(),
        ),
    }
}
