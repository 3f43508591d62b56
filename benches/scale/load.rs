//! The load client: a fixed number of keep-alive connections, each sending GETs at a steady
//! pace, one request at a time, with no retries, counting every failure by kind.
//!
//! It speaks HTTP/1.1 through hyper's connection API rather than a pooled client: a pool
//! (hyper-util's, reqwest's) quietly re-sends a request whose pooled connection turned out to be
//! closed, which hides exactly the keep-alive race this benchmark measures. Here a connection
//! the server closed while idle is replaced before the next request (any client does that, and
//! it fails nothing); a request written on a connection that then breaks is a failure:
//!
//! - `connect`: the TCP connection to the front could not be opened;
//! - `reset`: the connection was reset or the write hit a closed socket (RST, EPIPE);
//! - `unsent`: the front closed the connection as the request was handed to it, before a byte
//!   of it was written (hyper cancels it). Nothing reached the front, so a pooled client
//!   (browsers, hyper-util, reqwest) sends it again on a new connection without risk; counted
//!   apart because this client does not;
//! - `eof`: the front closed the connection after the request was sent, with no response;
//! - `status`: a response that is not 2xx (nginx 502/504, HAProxy 503 with no server);
//! - `timeout`: no complete response within the timeout;
//! - `other`: anything else (kept with its message).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    Connect,
    Unsent,
    Reset,
    Eof,
    Status,
    Timeout,
    Other,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::Connect,
        Failure::Unsent,
        Failure::Reset,
        Failure::Eof,
        Failure::Status,
        Failure::Timeout,
        Failure::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Unsent => "unsent",
            Failure::Reset => "reset",
            Failure::Eof => "eof",
            Failure::Status => "non-2xx",
            Failure::Timeout => "timeout",
            Failure::Other => "other",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The front's address.
    pub addr: SocketAddr,
    /// Method and path of every request (no body).
    pub method: hyper::Method,
    pub path: String,
    pub connections: usize,
    /// Requests per second, all connections together.
    pub rps: f64,
    /// Budget for one request, connect included.
    pub timeout: Duration,
}

/// One failed request.
#[derive(Clone, Debug)]
pub struct Failed {
    pub at: Instant,
    pub kind: Failure,
    pub detail: String,
}

/// What the connections saw, merged.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: u64,
    pub failed: Vec<Failed>,
    /// Latency of every successful request, in microseconds.
    pub latencies_us: Vec<u64>,
}

impl Tally {
    pub fn requests(&self) -> u64 {
        self.ok + self.failed.len() as u64
    }

    pub fn by_kind(&self) -> BTreeMap<Failure, u64> {
        let mut m = BTreeMap::new();
        for f in &self.failed {
            *m.entry(f.kind).or_insert(0) += 1;
        }
        m
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed.extend(other.failed);
        self.latencies_us.extend(other.latencies_us);
    }
}

/// When each backend id first answered a request.
pub type FirstSeen = Arc<Mutex<HashMap<String, Instant>>>;

/// A running load.
pub struct Load {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Tally>>,
    pub first_seen: FirstSeen,
}

impl Load {
    /// Starts the connections on the current tokio runtime.
    pub fn start(rt: &tokio::runtime::Handle, opts: LoadOptions) -> Load {
        let stop = CancellationToken::new();
        let first_seen: FirstSeen = Arc::default();
        let period = Duration::from_secs_f64(opts.connections as f64 / opts.rps.max(0.001));
        let tasks = (0..opts.connections)
            .map(|i| {
                // Spread the connections' ticks over one period.
                let offset = period.mul_f64(i as f64 / opts.connections as f64);
                rt.spawn(connection(
                    opts.clone(),
                    period,
                    offset,
                    first_seen.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            stop,
            tasks,
            first_seen,
        }
    }

    /// Stops every connection after its request in flight and returns the merged tally.
    pub fn stop(self, rt: &tokio::runtime::Handle) -> Tally {
        self.stop.cancel();
        let mut total = Tally::default();
        for t in self.tasks {
            if let Ok(tally) = rt.block_on(t) {
                total.merge(tally);
            }
        }
        total
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connection(
    opts: LoadOptions,
    period: Duration,
    offset: Duration,
    first_seen: FirstSeen,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sender: Option<Sender> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        // A connection the server closed while it was idle is replaced, as any client does.
        if let Some(s) = &mut sender
            && (s.is_closed() || s.ready().await.is_err())
        {
            sender = None;
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => match tokio::time::timeout(opts.timeout, connect(opts.addr)).await {
                Ok(Ok(s)) => sender.insert(s),
                Ok(Err(e)) => {
                    tally.failed.push(Failed {
                        at: started,
                        kind: Failure::Connect,
                        detail: e,
                    });
                    continue;
                }
                Err(_) => {
                    tally.failed.push(Failed {
                        at: started,
                        kind: Failure::Timeout,
                        detail: "connect timed out".into(),
                    });
                    continue;
                }
            },
        };
        let req = hyper::Request::builder()
            .method(opts.method.clone())
            .uri(opts.path.as_str())
            .header(hyper::header::HOST, "scale.test")
            .body(Empty::<Bytes>::new())
            .expect("a method, a static path and a header make a valid request");
        let left = opts.timeout.saturating_sub(started.elapsed());
        let answer = tokio::time::timeout(left, async {
            let resp = s.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await;
        match answer {
            Ok(Ok((status, body))) if status.is_success() => {
                tally.ok += 1;
                tally
                    .latencies_us
                    .push(started.elapsed().as_micros() as u64);
                let id = String::from_utf8_lossy(&body).trim().to_string();
                let mut seen = first_seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.entry(id).or_insert_with(Instant::now);
            }
            Ok(Ok((status, body))) => tally.failed.push(Failed {
                at: started,
                kind: Failure::Status,
                detail: format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(80)]).trim()
                ),
            }),
            Ok(Err(e)) => {
                sender = None;
                tally.failed.push(Failed {
                    at: started,
                    kind: classify(&e),
                    detail: error_text(&e),
                });
            }
            Err(_) => {
                // The connection's state is unknown after a timeout: start afresh.
                sender = None;
                tally.failed.push(Failed {
                    at: started,
                    kind: Failure::Timeout,
                    detail: "no complete response in time".into(),
                });
            }
        }
    }
    tally
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn classify(e: &hyper::Error) -> Failure {
    if e.is_canceled() {
        // hyper: "the message was never even started".
        return Failure::Unsent;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe => Failure::Reset,
                UnexpectedEof => Failure::Eof,
                _ => Failure::Other,
            };
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        Failure::Eof
    } else {
        Failure::Other
    }
}

fn error_text(e: &hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
