//! The HTTP side of the Consul backend: one client, the agent's address, the token as a
//! ready header, and what a request's failure means.
//!
//! Every request carries the token only in `X-Consul-Token` (marked sensitive, so no `Debug`
//! shows it). Transport errors are described by their causes, and TLS setup mistakes (an
//! unknown CA, a refused client certificate, plain HTTP on a TLS port) become refusals that
//! name the setting to change rather than outages retried forever.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, Url};

use super::decode::{self, Answer, BACKEND, Reply};
use super::poll::Source;
use crate::catalog::CatalogError;
use crate::catalog::http::{BodyError, read_body};
use crate::model::Query;
use crate::timing::{self, stage};

/// Added to `wait + wait/16` for a blocking read's timeout: the agent may hold the request
/// that long, plus the time to forward it to a server and send a large answer.
const BLOCK_MARGIN: Duration = Duration::from_secs(15);

/// Timeout of a non-blocking read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of agent writes (register, deregister, TTL updates) and of the preflight check.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers bigger than this are decoded off the async workers (1 000 instances is ~1.5 MB).
const BIG_BODY: usize = 256 * 1024;

/// The HTTP side: one client, the agent's address, the token as a ready header.
pub(super) struct Agent {
    pub(super) http: reqwest::Client,
    /// Requests go here (the address, or the TLS server name; see `settings::build_client`).
    pub(super) base: Url,
    /// The address as configured, for messages.
    pub(super) address: Url,
    /// `X-Consul-Token`, marked sensitive so that no `Debug` shows it.
    pub(super) token: Option<HeaderValue>,
    /// `Authorization: Basic ...` from `CONSUL_HTTP_AUTH`, sensitive too.
    pub(super) auth: Option<HeaderValue>,
    /// A TLS client certificate is configured.
    pub(super) client_cert: bool,
    pub(super) datacenter: Option<String>,
    pub(super) stale: bool,
    pub(super) wait: Duration,
    /// `[catalog] max_response`: the largest answer read.
    pub(super) max_response: u64,
    /// `[catalog] max_file`: the largest KV value accepted.
    pub(super) max_value: u64,
    /// Bounds the reads in flight (see [`Reads`]).
    pub(super) reads: Reads,
}

/// At most `max_connections` reads in flight at once (default [`DEFAULT_READS`]), so that
/// rewire never holds more connections to the agent than that: each blocking query holds one
/// for up to `block_wait`, and Consul refuses a client IP past 200
/// (`limits.http_max_conns_per_client`), every other client on that address with it. A
/// catalog writer registering a few hundred services made the shipped templates ask a query
/// each, and the agent then reset rewire's connections: every template stalled, removed
/// backends stayed in the configs. Past the bound, reads take turns: while any waits for a
/// slot, blocking queries ask Consul to answer within [`SHARED_WAIT`] instead of `block_wait`,
/// so each query is asked again every few seconds (changes are seen that much later, but they
/// are seen). Registrations and TTL updates do not take a slot.
///
/// Consul 1.8 keeps a blocking query (and counts its connection) until its wait ends, even
/// after the client went away. So a read given up early (its query no longer wanted) keeps its
/// slot until Consul would have answered it (see [`Turn`]), and the default leaves room for a
/// whole second set: a restarted rewire's reads beside the ones its predecessor left waiting,
/// which Consul still counts for up to `block_wait`. With 150 slots, a restart with a few
/// hundred services could read only 50 queries for a minute: templates waited, and every
/// other client on the address was refused.
#[derive(Debug)]
pub(super) struct Reads {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
    waiting: std::sync::atomic::AtomicUsize,
}

/// Reads in flight at once unless `[catalog] max_connections` says otherwise: two sets of
/// them stay under Consul's default of 200 per client IP, with 20 to spare for registrations,
/// TTL updates, elections and other clients on the same address.
pub const DEFAULT_READS: usize = 90;
const _: () = assert!(2 * DEFAULT_READS + 20 <= 200);

/// The blocking wait asked for while reads take turns.
pub(super) const SHARED_WAIT: Duration = Duration::from_secs(5);

/// Past a blocking read's `wait + wait/16` (Consul's jitter): by then Consul has answered it.
const ANSWERED_BY: Duration = Duration::from_secs(1);

impl Reads {
    pub(super) fn new(max: usize) -> Reads {
        let max = max.max(1);
        Reads {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            waiting: Default::default(),
        }
    }

    /// Waits for a slot; the read holds it until the permit is dropped.
    async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        use std::sync::atomic::Ordering;
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return p;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = self.slots.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        permit.expect("the semaphore is never closed")
    }

    /// Whether reads are taking turns (one waits for a slot).
    fn crowded(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// A read's slot while its request is out. Dropped before [`Turn::answered`] (the read was
/// given up: its query is no longer wanted, or rewire is stopping), it is handed back only
/// when Consul would have answered the request, since Consul keeps it (and counts its
/// connection) until then.
struct Turn {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When Consul answers a blocking read at the latest; `None` for a read answered at once.
    answered_by: Option<tokio::time::Instant>,
}

impl Turn {
    fn answered(mut self) {
        self.answered_by = None;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (Some(permit), Some(until)) = (self.permit.take(), self.answered_by) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(until).await;
                drop(permit);
            });
        }
    }
}

impl Agent {
    pub(super) fn describe(&self) -> String {
        let mut s = format!("consul at {}", self.address.as_str().trim_end_matches('/'));
        let mut extras = Vec::new();
        if let Some(dc) = &self.datacenter {
            extras.push(format!("datacenter {dc}"));
        }
        if self.stale {
            extras.push("stale reads".to_string());
        }
        if self.token.is_some() {
            extras.push("ACL token set".to_string());
        }
        if !extras.is_empty() {
            s.push_str(&format!(" ({})", extras.join(", ")));
        }
        s
    }

    /// `<base>/v1/<segments...>`, each segment percent-encoded.
    pub(super) fn url<'a>(&self, segments: impl IntoIterator<Item = &'a str>) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http(s) URLs always have a path")
            .pop_if_empty()
            .push("v1")
            .extend(segments);
        url
    }

    /// The URL of one read of `query`; `index` > 0 makes it a blocking query.
    /// A query's own datacenter (`service("web", dc="dc2")`) wins over `[catalog] datacenter`.
    #[cfg(test)]
    pub(super) fn read_url(&self, query: &Query, index: u64) -> Url {
        self.read_url_waiting(query, index, self.wait)
    }

    /// The URL of a read; `wait` is a blocking query's.
    fn read_url_waiting(&self, query: &Query, index: u64, wait: Duration) -> Url {
        let (dc, query) = query.datacenter();
        let mut url = match query {
            Query::Service(name) => self.url(["health", "service", name.as_str()]),
            Query::Services => self.url(["catalog", "services"]),
            Query::Key(path) | Query::Keys(path) => {
                self.url(std::iter::once("kv").chain(path.trim_start_matches('/').split('/')))
            }
            Query::Nodes => self.url(["catalog", "nodes"]),
            Query::Datacenters => self.url(["catalog", "datacenters"]),
            // Never sent: elections are not catalog queries (`Query::is_catalog`), and
            // `Query::datacenter` has taken the datacenter off.
            Query::Election(name) => self.url(["kv", "rewire", "elections", name.as_str()]),
            Query::InDatacenter(_, q) => return self.read_url_waiting(q, index, wait),
        };
        {
            let mut q = url.query_pairs_mut();
            // The list of datacenters is the same from every datacenter.
            if !matches!(query, Query::Datacenters)
                && let Some(dc) = dc.or(self.datacenter.as_deref())
            {
                q.append_pair("dc", dc);
            }
            if self.stale {
                q.append_key_only("stale");
            }
            if matches!(query, Query::Keys(_)) {
                q.append_key_only("recurse");
            }
            if index > 0 && query.blocks() {
                q.append_pair("index", &index.to_string());
                q.append_pair("wait", &go_duration(wait));
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    /// An agent that requires client certificates (verify_incoming) accepts the TLS handshake
    /// and then closes the connection with an alert. The alert often reaches the request as
    /// such (see [`tls_hint`]), but when the connection is gone before the request is sent,
    /// hyper says only "connection was not ready". On a fresh https connection without a
    /// client certificate that is the same refusal: say so, rather than wait for an outage to
    /// end that never will.
    pub(super) fn closed_after_handshake(&self, e: CatalogError) -> CatalogError {
        match e {
            CatalogError::Unreachable { backend, detail }
                if self.base.scheme() == "https"
                    && !self.client_cert
                    && detail.contains("connection was not ready") =>
            {
                CatalogError::Denied {
                    backend,
                    detail,
                    hint: CLIENT_CERT_HINT.into(),
                }
            }
            other => other,
        }
    }

    pub(super) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token.clone());
        }
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        req
    }

    /// Sends a request and reads the whole answer; transport failures are `Unreachable`.
    pub(super) async fn exchange(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(u16, HeaderMap, Vec<u8>), CatalogError> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport(what, &e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = read_body(resp, self.max_response)
            .await
            .map_err(|e| match e {
                BodyError::Transport(e) => transport(what, &e),
                too_big => CatalogError::Malformed {
                    backend: BACKEND.into(),
                    detail: format!(
                        "{what} at {}: {too_big}",
                        self.address.as_str().trim_end_matches('/')
                    ),
                },
            })?;
        Ok((status, headers, body))
    }

    pub(super) async fn read_once(&self, query: &Query, index: u64) -> Result<Reply, CatalogError> {
        let permit = self.reads.slot().await;
        let wait = if self.reads.crowded() {
            self.wait.min(SHARED_WAIT)
        } else {
            self.wait
        };
        let url = self.read_url_waiting(query, index, wait);
        let what = format!("GET {}", url.path());
        let blocking = index > 0;
        let timeout = if blocking {
            wait + wait / 16 + BLOCK_MARGIN
        } else {
            READ_TIMEOUT
        };
        let turn = Turn {
            permit: Some(permit),
            answered_by: blocking
                .then(|| tokio::time::Instant::now() + wait + wait / 16 + ANSWERED_BY),
        };
        let req = self.request(Method::GET, url);
        let exchanged = self.exchange(&what, req, timeout).await;
        // Answered, or failed (timed out past Consul's own deadline, or the connection is
        // gone): either way Consul no longer holds it.
        turn.answered();
        let (status, headers, body) = exchanged?;
        timing::mark(stage::RECEIVED);
        let index = header(&headers, "x-consul-index").map(str::to_owned);
        let leader = header(&headers, "x-consul-knownleader").map(str::to_owned);
        let token_set = self.token.is_some();
        let max_value = self.max_value;
        let big = body.len() > BIG_BODY;
        let interpret = move |query: &Query| {
            decode::interpret(
                query,
                &what,
                Answer {
                    status,
                    index: index.as_deref(),
                    known_leader: leader.as_deref(),
                    body: &body,
                },
                token_set,
                max_value,
            )
        };
        let reply = if big {
            let query = query.clone();
            tokio::task::spawn_blocking(move || interpret(&query))
                .await
                .map_err(|e| CatalogError::Malformed {
                    backend: BACKEND.into(),
                    detail: format!("decoding failed: {e}"),
                })?
        } else {
            interpret(query)
        };
        timing::mark(stage::DECODED);
        reply
    }

    pub(super) async fn put(
        &self,
        what: &str,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, Vec<u8>), CatalogError> {
        let mut req = self.request(Method::PUT, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (status, _, body) = self.exchange(what, req, WRITE_TIMEOUT).await?;
        Ok((status, body))
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Source for Agent {
    async fn read(&self, query: &Query, index: u64) -> Result<Reply, CatalogError> {
        self.read_once(query, index).await
    }

    fn connections(&self) -> usize {
        self.reads.max
    }
}

/// A transport failure, described by its causes: reqwest's own message holds the URL, which
/// adds nothing to `what` (method and path).
fn transport(what: &str, e: &reqwest::Error) -> CatalogError {
    let mut detail = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    // Only the agent's address from the URL: its path is in `what`, its query adds nothing.
    let at = e
        .url()
        .and_then(|u| {
            Some(format!(
                " at {}://{}:{}",
                u.scheme(),
                u.host_str()?,
                u.port_or_known_default()?
            ))
        })
        .unwrap_or_default();
    let detail = format!("{what}{at}: {detail}");
    match tls_hint(&detail) {
        // A TLS setup problem: retrying will not help, the settings must change.
        Some(hint) => CatalogError::Denied {
            backend: BACKEND.into(),
            detail,
            hint: hint.into(),
        },
        None => CatalogError::Unreachable {
            backend: BACKEND.into(),
            detail,
        },
    }
}

/// Recognises TLS setup mistakes in a transport error (rustls's messages, as reqwest passes
/// them on) and names the setting that fixes each.
const CLIENT_CERT_HINT: &str = "the agent refused the TLS handshake; it probably requires a \
     client certificate (verify_incoming): set [catalog.tls] cert and key or CONSUL_CLIENT_CERT \
     and CONSUL_CLIENT_KEY";

fn tls_hint(detail: &str) -> Option<&'static str> {
    if detail.contains("invalid peer certificate") {
        Some(
            "the agent's TLS certificate was not accepted: give its CA in [catalog.tls] ca or \
             CONSUL_CACERT and the name it was issued for in server_name or \
             CONSUL_TLS_SERVER_NAME (verify = false / CONSUL_HTTP_SSL_VERIFY=false turns \
             checking off; for tests only)",
        )
    } else if [
        "BadCertificate",
        "CertificateRequired",
        "UnknownCA",
        "HandshakeFailure",
    ]
    .iter()
    .any(|alert| detail.contains(&format!("fatal alert: {alert}")))
    {
        Some(CLIENT_CERT_HINT)
    } else if detail.contains("InvalidContentType") || detail.contains("corrupt message") {
        Some("the agent does not speak TLS on this port: use http:// or the agent's https port")
    } else {
        None
    }
}

/// A Go duration string, which is what Consul parses (`60000ms`).
pub(super) fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(reads: &Reads) -> bool {
        reads.slots.clone().try_acquire_owned().is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocking_read_given_up_keeps_its_slot_until_consul_would_answer_it() {
        let reads = Reads::new(1);
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        drop(Turn {
            permit: Some(reads.slot().await),
            answered_by: Some(until),
        });
        tokio::task::yield_now().await;
        assert!(
            !free(&reads),
            "handed back while Consul still holds the request"
        );
        tokio::time::sleep_until(until - Duration::from_millis(1)).await;
        assert!(!free(&reads));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(free(&reads), "never handed back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_read_or_one_answered_at_once_hands_its_slot_back_at_once() {
        let reads = Reads::new(1);
        Turn {
            permit: Some(reads.slot().await),
            answered_by: Some(tokio::time::Instant::now() + Duration::from_secs(10)),
        }
        .answered();
        assert!(free(&reads));
        drop(Turn {
            permit: Some(reads.slot().await),
            answered_by: None,
        });
        assert!(free(&reads));
    }
}
