//! Talking to etcd members over HTTP: endpoints and failover, timeouts, TLS, the auth token,
//! and reading a watch stream line by line.
//!
//! Unary calls get a short timeout (a write in flight when the leader dies hangs rather than
//! fails) and move to the next member on a connection error, a timeout or "no leader". Every
//! request carries `Grpc-Metadata-hasleader: true`, which the gateway turns into etcd's
//! require-leader metadata: a member cut off from its cluster refuses instead of serving stale
//! data, and ends its watch streams.
//!
//! With a username, rewire calls `/v3/auth/authenticate` and sends the token in the
//! `Authorization` header. Simple tokens expire (`--auth-token-ttl`, 5 min idle by default) and
//! vanish when a member restarts; "invalid auth token" fetches a new one. The token and the
//! password live in [`Secret`]s, so no log line can show them.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::wire::{self, GatewayError};
use crate::catalog::CatalogError;
use crate::catalog::http::{self, Tls, Tuning};
use crate::config::Secret;
use crate::lock::lock;

/// How long a unary call may take before the next member is tried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections to members: 1 s to connect. A watch socket to a member that vanished (power
/// loss, partition) sees no FIN: TCP keepalive (10 s idle, then 3 probes 5 s apart) notices
/// within ~25 s, whatever the watch's own progress timeout.
const TUNING: Tuning = Tuning {
    connect_timeout: Duration::from_secs(1),
    keepalive: Duration::from_secs(10),
    keepalive_probes: Some((Duration::from_secs(5), 3)),
    pool_idle_timeout: Some(Duration::from_secs(30)),
};

/// Errors from one member, sorted by what the caller does next.
/// Keys asked for per page of a range read (see [`Transport::range_all`]): a few thousand
/// instances are read in a few round trips.
const RANGE_PAGE: i64 = 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdError {
    /// Could not reach the member, or it cannot serve now: try another one.
    Unreachable(String),
    /// Credentials or permissions are wrong: retrying will not help until someone fixes them.
    Denied(String),
    /// etcd answered with an error the caller may branch on (lease not found, compacted, ...).
    Gateway(GatewayError),
    /// An answer rewire cannot read.
    Malformed(String),
    /// An answer over `[catalog] max_response`.
    TooBig(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(d)
            | EtcdError::Denied(d)
            | EtcdError::Malformed(d)
            | EtcdError::TooBig(d) => f.write_str(d),
            EtcdError::Gateway(g) => write!(f, "{g}"),
        }
    }
}

impl EtcdError {
    /// Sorts an error etcd reported.
    pub fn from_gateway(g: GatewayError) -> EtcdError {
        if g.is_denied() {
            EtcdError::Denied(g.message)
        } else if g.is_unavailable() {
            EtcdError::Unreachable(g.message)
        } else {
            EtcdError::Gateway(g)
        }
    }

    pub fn is_invalid_token(&self) -> bool {
        matches!(self, EtcdError::Gateway(g) if g.is_invalid_token())
    }

    pub fn to_catalog(&self) -> CatalogError {
        let backend = "etcd".to_string();
        match self {
            EtcdError::Unreachable(detail) => CatalogError::Unreachable {
                backend,
                detail: detail.clone(),
            },
            EtcdError::Denied(detail) => CatalogError::Denied {
                backend,
                detail: detail.clone(),
                hint: "check [catalog] username/password (or ETCDCTL_USER) and that the user's \
                       role may read and write the prefix"
                    .into(),
            },
            // Errors nobody branches on (too many requests, request too large, ...): transient.
            EtcdError::Gateway(g) => CatalogError::Unreachable {
                backend,
                detail: g.to_string(),
            },
            EtcdError::Malformed(detail) | EtcdError::TooBig(detail) => CatalogError::Malformed {
                backend,
                detail: detail.clone(),
            },
        }
    }
}

struct Endpoint {
    /// `http(s)://host:port`, as requests are sent (host replaced by `server_name` if set).
    url: String,
    /// As the user wrote it, for logs.
    shown: String,
    client: reqwest::Client,
}

struct Auth {
    user: String,
    password: Secret,
    token: Mutex<Option<Secret>>,
    /// The cluster answered "authentication is not enabled": send no token.
    disabled: AtomicBool,
    /// Held while authenticating so that concurrent callers wait for one new token.
    refresh: tokio::sync::Mutex<()>,
}

pub struct Transport {
    endpoints: Vec<Endpoint>,
    preferred: AtomicUsize,
    auth: Option<Auth>,
    /// `[catalog] max_response`: the largest answer, or watch message, read.
    max_response: u64,
}

impl Transport {
    pub fn new(
        endpoints: &[String],
        tls: &Tls,
        user: Option<(String, Secret)>,
        max_response: u64,
    ) -> Result<Transport, CatalogError> {
        let shared = http::build("etcd", http::builder("etcd", &TUNING, Some(tls))?)?;
        let mut eps = Vec::with_capacity(endpoints.len());
        for shown in endpoints {
            let mut url = reqwest::Url::parse(shown).map_err(|e| {
                CatalogError::Unsupported(format!("etcd endpoint {shown:?} is not a URL: {e}"))
            })?;
            let ip_host = url.host_str().is_some_and(|h| {
                h.trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            });
            let client = match &tls.server_name {
                // Verify an IP endpoint's certificate against `server_name`: send the request to
                // that name and resolve the name to the endpoint's address for this client.
                Some(name) if ip_host => {
                    let addrs = url.socket_addrs(|| None).map_err(|e| {
                        CatalogError::Unsupported(format!("etcd endpoint {shown:?}: {e}"))
                    })?;
                    url.set_host(Some(name)).map_err(|e| {
                        CatalogError::Unsupported(format!("etcd server_name {name:?}: {e}"))
                    })?;
                    http::build(
                        "etcd",
                        http::builder("etcd", &TUNING, Some(tls))?.resolve_to_addrs(name, &addrs),
                    )?
                }
                _ => shared.clone(),
            };
            eps.push(Endpoint {
                url: url.as_str().trim_end_matches('/').to_string(),
                shown: shown.clone(),
                client,
            });
        }
        Ok(Transport {
            endpoints: eps,
            preferred: AtomicUsize::new(0),
            auth: user.map(|(user, password)| Auth {
                user,
                password,
                token: Mutex::new(None),
                disabled: AtomicBool::new(false),
                refresh: tokio::sync::Mutex::new(()),
            }),
            max_response,
        })
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// The endpoints as configured, for logs and `describe`.
    pub fn shown(&self) -> Vec<&str> {
        self.endpoints.iter().map(|e| e.shown.as_str()).collect()
    }

    pub fn shown_at(&self, idx: usize) -> &str {
        &self.endpoints[idx % self.endpoints.len()].shown
    }

    /// The member to talk to next.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// Moves on from member `idx` (unless someone already did).
    pub fn rotate(&self, idx: usize) {
        let next = (idx + 1) % self.endpoints.len();
        let _ = self
            .preferred
            .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A unary call with failover: each member at most once, starting with the preferred one.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Vec<u8>, EtcdError> {
        let mut last = None;
        for _ in 0..self.endpoints.len() {
            let idx = self.preferred();
            match self.call_at(idx, path, body).await {
                Err(e @ EtcdError::Unreachable(_)) => {
                    tracing::debug!(endpoint = %self.shown_at(idx), error = %e, "etcd member failed; trying the next");
                    self.rotate(idx);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Unreachable("no etcd endpoints".into())))
    }

    /// A unary call to one member, authenticating again once if the token went stale.
    /// Reads every key in `[key, end)` as of one revision, in pages, so that what the range
    /// holds in all (a writer can put 50 values of 1 MiB anywhere under the prefix) never
    /// makes one answer go over `max_response`: a page that does is asked again with half as
    /// many keys. `idx`: the member to ask (`None`: the preferred one, failing over). Returns
    /// the keys and the revision they are as of.
    pub async fn range_all(
        &self,
        idx: Option<usize>,
        key: &[u8],
        end: &[u8],
    ) -> Result<(Vec<wire::Kv>, i64), EtcdError> {
        let mut kvs = Vec::new();
        let mut start = key.to_vec();
        let mut revision = 0;
        let mut limit = RANGE_PAGE;
        loop {
            let body = wire::range_page_request(&start, end, limit, revision);
            let answer = match idx {
                Some(i) => self.call_at(i, "/v3/kv/range", &body).await,
                None => self.call("/v3/kv/range", &body).await,
            };
            let bytes = match answer {
                Err(EtcdError::TooBig(_)) if limit > 1 => {
                    limit /= 2;
                    continue;
                }
                other => other?,
            };
            let page = wire::decode_range(&bytes).map_err(|m| EtcdError::Malformed(m.0))?;
            if revision == 0 {
                revision = page.header.revision;
            }
            let Some(last) = page.kvs.last() else {
                break;
            };
            // The next page starts right after the last key.
            start = last.key.clone();
            start.push(0);
            let more = page.more;
            kvs.extend(page.kvs);
            if !more {
                break;
            }
        }
        Ok((kvs, revision))
    }

    pub async fn call_at(
        &self,
        idx: usize,
        path: &str,
        body: &Value,
    ) -> Result<Vec<u8>, EtcdError> {
        let token = self.token().await?;
        match self.post(idx, path, body, token.as_ref()).await {
            Err(e) if e.is_invalid_token() && self.auth.is_some() => {
                self.invalidate(token.as_ref());
                let token = self.token().await?;
                self.post(idx, path, body, token.as_ref()).await
            }
            other => other,
        }
    }

    async fn post(
        &self,
        idx: usize,
        path: &str,
        body: &Value,
        token: Option<&Secret>,
    ) -> Result<Vec<u8>, EtcdError> {
        let ep = &self.endpoints[idx % self.endpoints.len()];
        let resp = request(ep, path, body, token)?
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable_err(ep, &e))?;
        let status = resp.status();
        let bytes = self.body(ep, path, resp).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(EtcdError::from_gateway(wire::decode_error(
                status.as_u16(),
                &bytes,
            )))
        }
    }

    /// Opens a watch stream on member `idx`. Only the response head has a timeout: the stream
    /// itself may stay quiet for as long as nothing changes.
    pub async fn watch(&self, idx: usize, body: &Value) -> Result<LineStream, EtcdError> {
        let ep = &self.endpoints[idx % self.endpoints.len()];
        let token = self.token().await?;
        let send = request(ep, "/v3/watch", body, token.as_ref())?.send();
        let resp = match tokio::time::timeout(REQUEST_TIMEOUT, send).await {
            Err(_) => {
                return Err(EtcdError::Unreachable(format!(
                    "{}: no answer to the watch request within {REQUEST_TIMEOUT:?}",
                    ep.shown
                )));
            }
            Ok(r) => r.map_err(|e| unreachable_err(ep, &e))?,
        };
        let status = resp.status();
        if !status.is_success() {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, self.body(ep, "/v3/watch", resp))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(EtcdError::from_gateway(wire::decode_error(
                status.as_u16(),
                &bytes,
            )));
        }
        Ok(LineStream {
            skipping: false,
            resp,
            buf: Vec::new(),
            scanned: 0,
            endpoint: ep.shown.clone(),
            max_line: self.max_response,
        })
    }

    /// Reads an answer's body, refusing one over `max_response`.
    async fn body(
        &self,
        ep: &Endpoint,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<Vec<u8>, EtcdError> {
        http::read_body(resp, self.max_response)
            .await
            .map_err(|e| match e {
                http::BodyError::Transport(e) => unreachable_err(ep, &e),
                too_big => EtcdError::TooBig(format!("{}: {path}: {too_big}", ep.shown)),
            })
    }

    /// Forgets `used` if it is still the current token (a watch was canceled for it).
    pub fn invalidate(&self, used: Option<&Secret>) {
        if let Some(auth) = &self.auth {
            let mut t = lock(&auth.token);
            if t.as_ref() == used {
                *t = None;
            }
        }
    }

    /// Forgets the current token (a watch was canceled for it); the next call authenticates.
    pub fn forget_token(&self) {
        if let Some(auth) = &self.auth {
            *lock(&auth.token) = None;
        }
    }

    /// Authenticates now (when a username is configured), so bad credentials show at start.
    pub async fn login(&self) -> Result<(), EtcdError> {
        self.token().await.map(|_| ())
    }

    /// The current token, fetching one first if there is none.
    pub async fn token(&self) -> Result<Option<Secret>, EtcdError> {
        let Some(auth) = self
            .auth
            .as_ref()
            .filter(|a| !a.disabled.load(Ordering::Relaxed))
        else {
            return Ok(None);
        };
        if let Some(t) = lock(&auth.token).clone() {
            return Ok(Some(t));
        }
        let _one_at_a_time = auth.refresh.lock().await;
        if let Some(t) = lock(&auth.token).clone() {
            return Ok(Some(t));
        }
        if auth.disabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let body = wire::authenticate_request(&auth.user, auth.password.expose());
        let mut last = None;
        for _ in 0..self.endpoints.len() {
            let idx = self.preferred();
            match self.post(idx, "/v3/auth/authenticate", &body, None).await {
                Ok(bytes) => {
                    let token = Secret::new(
                        wire::decode_authenticate(&bytes)
                            .map_err(|m| EtcdError::Malformed(m.to_string()))?,
                    );
                    *lock(&auth.token) = Some(token.clone());
                    tracing::debug!(user = %auth.user, "authenticated to etcd");
                    return Ok(Some(token));
                }
                Err(EtcdError::Unreachable(d)) => {
                    self.rotate(idx);
                    last = Some(EtcdError::Unreachable(d));
                }
                Err(EtcdError::Gateway(g)) if g.is_auth_disabled() => {
                    tracing::warn!(
                        user = %auth.user,
                        "etcd does not use authentication; sending requests without a token"
                    );
                    auth.disabled.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(EtcdError::Denied(d)) => {
                    return Err(EtcdError::Denied(format!(
                        "authenticating as {:?}: {d}",
                        auth.user
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Unreachable("no etcd endpoints".into())))
    }
}

fn request(
    ep: &Endpoint,
    path: &str,
    body: &Value,
    token: Option<&Secret>,
) -> Result<reqwest::RequestBuilder, EtcdError> {
    let mut req = ep
        .client
        .post(format!("{}{path}", ep.url))
        .header(CONTENT_TYPE, "application/json")
        .header("grpc-metadata-hasleader", "true")
        .body(body.to_string());
    if let Some(token) = token {
        let mut v = HeaderValue::from_str(token.expose()).map_err(|_| {
            EtcdError::Malformed("etcd issued a token that is not a valid header".into())
        })?;
        v.set_sensitive(true);
        req = req.header(AUTHORIZATION, v);
    }
    Ok(req)
}

fn unreachable_err(ep: &Endpoint, e: &reqwest::Error) -> EtcdError {
    EtcdError::Unreachable(format!("{}: {}", ep.shown, describe(e)))
}

/// What went wrong, with its causes: reqwest's own text is terse ("error sending request").
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else {
        "request failed"
    });
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A watch stream, read as it arrives and split into lines (one JSON message each).
pub struct LineStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    endpoint: String,
    /// `[catalog] max_response`: a longer message is skipped (see [`LineStream::next_line`]).
    max_line: u64,
    /// In the middle of a message over `max_line`: its bytes are dropped until its newline.
    skipping: bool,
}

impl LineStream {
    /// The next non-empty line; `None` when the member closed the stream.
    ///
    /// A message over `[catalog] max_response` (one huge value written anywhere under the
    /// prefix) is dropped as it arrives, with a warning, and the stream goes on: failing the
    /// watch instead resumed it at the same revision, the same message came again, and the
    /// watch never got past it. The keys that message changed keep their last values.
    ///
    /// Cancel safe: the only await is reading the next chunk, and what was read stays in `buf`.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, EtcdError> {
        loop {
            if self.skipping {
                match self.buf.iter().position(|&b| b == b'\n') {
                    Some(pos) => {
                        self.buf.drain(..=pos);
                        self.skipping = false;
                    }
                    None => self.buf.clear(),
                }
                self.scanned = 0;
            }
            if !self.skipping
                && let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n')
            {
                let end = self.scanned + pos;
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                self.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            match self.resp.chunk().await {
                Ok(Some(chunk)) => {
                    if !self.skipping && (self.buf.len() + chunk.len()) as u64 > self.max_line {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            limit = %crate::config::show_size(self.max_line),
                            "a watch message over [catalog] max_response skipped: the keys it changed keep their last values"
                        );
                        self.skipping = true;
                        self.buf.clear();
                    }
                    self.buf.extend_from_slice(&chunk)
                }
                Ok(None) => {
                    if self.skipping || self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    // The last line without its newline.
                    self.scanned = 0;
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
                Err(e) => {
                    return Err(EtcdError::Unreachable(format!(
                        "{}: watch stream broke: {}",
                        self.endpoint,
                        describe(&e)
                    )));
                }
            }
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}
