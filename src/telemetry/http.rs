//! The telemetry listener: a small HTTP/1.1 server (hyper) for Prometheus and probes.
//!
//! Bounded on purpose, since the port may face a network: GET and HEAD only (405 otherwise),
//! request heads up to 8 KiB read within 5 s, bodies never read, each connection closed after
//! 30 s, at most 64 connections at once (more wait in the kernel's backlog). It runs on its own
//! tasks and only reads shared state (the board, the store's snapshot, the metrics), so a
//! render or a hanging check never delays a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "telemetry listening");
    }
    tasks.spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
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
            let (sources, stop) = (sources.clone(), stop.clone());
            connections.spawn(async move {
                let _permit = permit;
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
                    r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => match r {
                        Ok(Err(e)) => debug!(%peer, error = %e, "telemetry connection ended"),
                        Err(_) => debug!(%peer, "telemetry connection closed after its lifetime"),
                        Ok(Ok(())) => {}
                    },
                }
            });
        }
    });
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
