//! The etcd v3 JSON gateway's wire format: request bodies and response decoding.
//!
//! The gateway is grpc-gateway in front of etcd's protobuf API, so every field follows the
//! proto3 JSON mapping: keys and values are base64, int64 fields are JSON strings, and a field
//! holding its zero value is left out (a PUT event has no `type`, an empty value has no `value`,
//! a keepalive for a lost lease has no `TTL`). Errors come in two shapes: unary calls answer
//! `{"error": "...", "message": "...", "code": N}` with a non-200 status, streams send
//! `{"error": {"grpc_code": N, "message": "..."}}` as a line.
//!
//! Everything here is a plain function over bytes, unit tested on responses captured from
//! etcd 3.4.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Value, json};

/// A response the gateway sent that rewire cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error etcd reported (gRPC code and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    pub code: i32,
    pub message: String,
}

/// gRPC status codes etcd uses (google.golang.org/grpc/codes).
mod code {
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

impl GatewayError {
    /// The auth token expired or the member restarted (simple tokens live in memory): get a
    /// new one and try again.
    pub fn is_invalid_token(&self) -> bool {
        self.message.contains("invalid auth token")
    }

    /// Credentials or permissions are wrong: retrying will not help.
    pub fn is_denied(&self) -> bool {
        !self.is_invalid_token()
            && (matches!(self.code, code::PERMISSION_DENIED | code::UNAUTHENTICATED)
                || self.message.contains("permission denied")
                || self.message.contains("user name is empty")
                || self.message.contains("authentication failed")
                || self.message.contains("root user does not have root role")
                || self.message.contains("user name not found"))
    }

    /// The member cannot serve right now (no leader, stopping, overloaded, timed out): another
    /// member may.
    pub fn is_unavailable(&self) -> bool {
        self.code == code::UNAVAILABLE
            || self.message.contains("no leader")
            || self.message.contains("leader changed")
            || self.message.contains("timed out")
            || self.message.contains("not capable")
            || self.message.contains("stopped")
    }

    /// A username was given but the cluster does not use authentication.
    pub fn is_auth_disabled(&self) -> bool {
        self.message.contains("authentication is not enabled")
    }

    pub fn is_lease_not_found(&self) -> bool {
        self.code == code::NOT_FOUND || self.message.contains("requested lease not found")
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

// ---- helpers --------------------------------------------------------------------------------

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The `range_end` that selects every key starting with `prefix`: the prefix with its last
/// byte incremented (trailing 0xff bytes dropped first); `"\0"` (every key) if none is left.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

// ---- requests -------------------------------------------------------------------------------

/// `/v3/kv/range`: one key (`end` = None) or a range.
pub fn range_request(key: &[u8], end: Option<&[u8]>) -> Value {
    let mut v = json!({ "key": b64(key) });
    if let Some(end) = end {
        v["range_end"] = json!(b64(end));
    }
    v
}

/// `/v3/kv/range` of at most `limit` keys of `[key, end)`, sorted by key, as of `revision`
/// (0: the latest).
pub fn range_page_request(key: &[u8], end: &[u8], limit: i64, revision: i64) -> Value {
    let mut v = json!({
        "key": b64(key),
        "range_end": b64(end),
        "limit": limit.to_string(),
    });
    if revision > 0 {
        v["revision"] = json!(revision.to_string());
    }
    v
}

/// `/v3/kv/put`, attached to `lease` unless it is 0.
pub fn put_request(key: &[u8], value: &[u8], lease: i64) -> Value {
    let mut v = json!({ "key": b64(key), "value": b64(value) });
    if lease != 0 {
        v["lease"] = json!(lease.to_string());
    }
    v
}

/// `/v3/kv/deleterange` for one key.
pub fn delete_request(key: &[u8]) -> Value {
    json!({ "key": b64(key) })
}

/// `/v3/watch`: a prefix watch from `start_revision`, asking for progress notifications so an
/// idle stream still proves it is alive (and moves the resume point forward).
pub fn watch_request(key: &[u8], end: &[u8], start_revision: i64) -> Value {
    json!({
        "create_request": {
            "key": b64(key),
            "range_end": b64(end),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }
    })
}

/// `/v3/lease/grant`.
pub fn grant_request(ttl_secs: i64) -> Value {
    json!({ "TTL": ttl_secs.to_string() })
}

/// `/v3/lease/keepalive` and `/v3/lease/revoke`.
pub fn lease_request(id: i64) -> Value {
    json!({ "ID": id.to_string() })
}

/// `/v3/auth/authenticate`. The body holds the password: never log it.
pub fn authenticate_request(name: &str, password: &str) -> Value {
    json!({ "name": name, "password": password })
}

/// `/v3/watch` of one key from `start_revision` (elections).
pub fn watch_key_request(key: &[u8], start_revision: i64) -> Value {
    json!({
        "create_request": {
            "key": b64(key),
            "start_revision": start_revision.to_string(),
        }
    })
}

/// `/v3/kv/txn` that creates `key` = `value` on `lease` only while the key does not exist
/// (`create_revision == 0`), else reads it.
pub fn create_if_absent_request(key: &[u8], value: &[u8], lease: i64) -> Value {
    json!({
        "compare": [{
            "key": b64(key),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": "0",
        }],
        "success": [{ "request_put": put_request(key, value, lease) }],
        "failure": [{ "request_range": range_request(key, None) }],
    })
}

/// What a [`create_if_absent_request`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The key was created at this revision (its create_revision).
    Yes(i64),
    /// It existed: this is what it holds.
    No(Option<Kv>),
}

pub fn decode_create_if_absent(body: &[u8]) -> Result<Created, Malformed> {
    #[derive(Deserialize)]
    struct RangePart {
        #[serde(default)]
        kvs: Vec<Kv>,
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(default)]
        response_range: Option<RangePart>,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        header: Header,
        #[serde(default)]
        succeeded: bool,
        #[serde(default)]
        responses: Vec<Part>,
    }
    let r: Raw = serde_json::from_slice(body).map_err(|e| malformed("txn", e))?;
    if r.succeeded {
        if r.header.revision <= 0 {
            return Err(Malformed("txn succeeded without a revision".into()));
        }
        return Ok(Created::Yes(r.header.revision));
    }
    Ok(Created::No(
        r.responses
            .into_iter()
            .find_map(|p| p.response_range)
            .and_then(|rr| rr.kvs.into_iter().next()),
    ))
}

// ---- responses ------------------------------------------------------------------------------

/// One key/value pair, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Kv {
    #[serde(default, deserialize_with = "de_b64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "de_b64")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "de_i64")]
    pub mod_revision: i64,
    /// The revision that created the key (an election's fencing token).
    #[serde(default, deserialize_with = "de_i64")]
    pub create_revision: i64,
    #[serde(default, deserialize_with = "de_i64")]
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Header {
    #[serde(default, deserialize_with = "de_i64")]
    pub revision: i64,
}

/// A `/v3/kv/range` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<Kv>,
    /// More keys are in the range than `limit` let through.
    #[serde(default)]
    pub more: bool,
}

pub fn decode_range(body: &[u8]) -> Result<RangeResponse, Malformed> {
    serde_json::from_slice(body).map_err(|e| malformed("range", e))
}

/// A granted lease: its id and the TTL etcd actually gave (it raises a TTL below its minimum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: i64,
    pub ttl: i64,
}

pub fn decode_grant(body: &[u8]) -> Result<Grant, Malformed> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "ID", default, deserialize_with = "de_i64")]
        id: i64,
        #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
        ttl: i64,
        #[serde(default)]
        error: Option<String>,
    }
    let r: Raw = serde_json::from_slice(body).map_err(|e| malformed("lease grant", e))?;
    if let Some(e) = r.error.filter(|e| !e.is_empty()) {
        return Err(Malformed(format!("lease grant: {e}")));
    }
    if r.id == 0 || r.ttl <= 0 {
        return Err(Malformed(
            "lease grant answered without an ID or TTL".into(),
        ));
    }
    Ok(Grant {
        id: r.id,
        ttl: r.ttl,
    })
}

/// What a keepalive says about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Renewed for this many seconds.
    Alive(i64),
    /// etcd answers 200 without a TTL (or TTL 0) for a lease that expired or was revoked.
    Gone,
    /// The stream carried an error instead.
    Error(GatewayError),
}

/// `/v3/lease/keepalive` is a stream endpoint: its answer is one `{"result": ...}` line.
pub fn decode_keepalive(body: &[u8]) -> Result<KeepAlive, Malformed> {
    #[derive(Deserialize)]
    struct Result_ {
        #[serde(rename = "TTL", default, deserialize_with = "de_i64")]
        ttl: i64,
    }
    #[derive(Deserialize)]
    struct Line {
        result: Option<Result_>,
        error: Option<Value>,
    }
    let first = body
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .ok_or_else(|| Malformed("lease keepalive: empty answer".into()))?;
    let line: Line = serde_json::from_slice(first).map_err(|e| malformed("lease keepalive", e))?;
    if let Some(err) = line.error {
        return Ok(KeepAlive::Error(gateway_error_from(&err)));
    }
    match line.result {
        Some(r) if r.ttl > 0 => Ok(KeepAlive::Alive(r.ttl)),
        Some(_) => Ok(KeepAlive::Gone),
        None => Err(Malformed(
            "lease keepalive: neither result nor error".into(),
        )),
    }
}

pub fn decode_authenticate(body: &[u8]) -> Result<String, Malformed> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        token: String,
    }
    let r: Raw = serde_json::from_slice(body).map_err(|e| malformed("authenticate", e))?;
    if r.token.is_empty() {
        return Err(Malformed("authenticate answered without a token".into()));
    }
    Ok(r.token)
}

/// The error in a non-200 answer. Falls back to the body's text when it is not JSON (a proxy
/// in the way, a gateway that is not etcd).
pub fn decode_error(status: u16, body: &[u8]) -> GatewayError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => gateway_error_from(&v),
        Err(_) => GatewayError {
            code: if status == 503 { code::UNAVAILABLE } else { 2 },
            message: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
        },
    }
}

/// Unary shape `{"error": "msg", "message": "msg", "code": N}` or stream shape
/// `{"error": {"grpc_code": N, "message": "msg"}}`.
fn gateway_error_from(v: &Value) -> GatewayError {
    let (obj, code_key) = match v.get("error") {
        Some(e @ Value::Object(_)) => (e, "grpc_code"),
        _ => (v, "code"),
    };
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| obj.get("error").and_then(Value::as_str))
        .unwrap_or("unknown error")
        .to_string();
    let code = obj
        .get(code_key)
        .or_else(|| obj.get("code"))
        .and_then(Value::as_i64)
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(2);
    GatewayError { code, message }
}

// ---- watch ----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
}

/// One line of a watch stream, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// The watch exists; `revision` is the store's revision now (not a resume point).
    Created { revision: i64 },
    /// Changes, in revision order (one transaction is one message).
    Events { revision: i64, events: Vec<Event> },
    /// No change up to `revision`: every event up to it has been delivered.
    Progress { revision: i64 },
    /// The start revision was compacted away: re-read the range, watch from its revision + 1.
    Compacted { compact_revision: i64 },
    /// etcd ended the watch (auth, permission, member stopping). The stream stays open: close it.
    Canceled { reason: String },
    /// The gateway reported an error on the stream.
    Error(GatewayError),
}

pub fn decode_watch_line(line: &[u8]) -> Result<WatchMessage, Malformed> {
    #[derive(Deserialize)]
    struct RawEvent {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        kv: Kv,
    }
    #[derive(Deserialize)]
    struct RawResult {
        #[serde(default)]
        header: Header,
        #[serde(default)]
        created: bool,
        #[serde(default)]
        canceled: bool,
        #[serde(default, deserialize_with = "de_i64")]
        compact_revision: i64,
        #[serde(default)]
        cancel_reason: String,
        #[serde(default)]
        events: Vec<RawEvent>,
    }
    #[derive(Deserialize)]
    struct Line {
        result: Option<RawResult>,
        error: Option<Value>,
    }
    let line: Line = serde_json::from_slice(line).map_err(|e| malformed("watch", e))?;
    if let Some(err) = line.error {
        return Ok(WatchMessage::Error(gateway_error_from(
            &serde_json::json!({
                "error": err
            }),
        )));
    }
    let r = line
        .result
        .ok_or_else(|| Malformed("watch: a line with neither result nor error".into()))?;
    if r.compact_revision > 0 {
        return Ok(WatchMessage::Compacted {
            compact_revision: r.compact_revision,
        });
    }
    if r.canceled {
        let reason = if r.cancel_reason.is_empty() {
            "watch canceled by etcd".to_string()
        } else {
            r.cancel_reason
        };
        return Ok(WatchMessage::Canceled { reason });
    }
    if r.created {
        return Ok(WatchMessage::Created {
            revision: r.header.revision,
        });
    }
    if r.events.is_empty() {
        return Ok(WatchMessage::Progress {
            revision: r.header.revision,
        });
    }
    let events = r
        .events
        .into_iter()
        .map(|e| {
            let kind = match e.kind.as_deref() {
                None | Some("PUT") => EventKind::Put,
                Some("DELETE") => EventKind::Delete,
                Some(other) => {
                    return Err(Malformed(format!("watch: unknown event type {other:?}")));
                }
            };
            Ok(Event { kind, kv: e.kv })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WatchMessage::Events {
        revision: r.header.revision,
        events,
    })
}

// ---- serde helpers --------------------------------------------------------------------------

fn malformed(what: &str, e: serde_json::Error) -> Malformed {
    Malformed(format!("{what}: {e}"))
}

/// proto3 JSON int64: a string, though a number is accepted too.
fn de_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an int64 as a string or a number")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<i64, E> {
            s.parse().map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<i64, E> {
            Ok(n)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<i64, E> {
            i64::try_from(n).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// proto3 JSON bytes: standard base64.
fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("base64 bytes")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<u8>, E> {
            STANDARD.decode(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_if_absent_answers_decode() {
        // etcd 3.4: a won and a lost create.
        let won = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"57","raft_term":"3"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"57"}}}]}"#;
        assert_eq!(decode_create_if_absent(won).unwrap(), Created::Yes(57));
        let lost = br#"{"header":{"revision":"58"},"responses":[{"response_range":{"header":{"revision":"58"},"kvs":[{"key":"L3Jld2lyZS9lbGVjdGlvbnMvcA==","create_revision":"57","mod_revision":"57","version":"1","value":"e30=","lease":"7587"}],"count":"1"}}]}"#;
        let Created::No(Some(kv)) = decode_create_if_absent(lost).unwrap() else {
            panic!()
        };
        assert_eq!((kv.create_revision, kv.lease), (57, 7587));
        let body = create_if_absent_request(b"/k", b"v", 5);
        assert_eq!(body["compare"][0]["target"], "CREATE");
        assert_eq!(body["success"][0]["request_put"]["lease"], "5");
    }

    // Captured from etcd 3.4.23 through its JSON gateway.
    const RANGE: &str = r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"kvs":[{"key":"L3Jld2lyZS9rdi9h","create_revision":"2","mod_revision":"2","version":"1","value":"aGVsbG8="}],"count":"1"}"#;
    const RANGE_EMPTY: &str = r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"}}"#;
    const EVENTS: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"5","raft_term":"2"},"events":[{"type":"DELETE","kv":{"key":"L3Jld2lyZS9rdi9h","mod_revision":"3"}},{"kv":{"key":"L3Jld2lyZS9rdi9i","create_revision":"4","mod_revision":"4","version":"1","value":"eA=="}},{"type":"DELETE","kv":{"key":"L3Jld2lyZS9rdi9i","mod_revision":"5"}}]}}"#;
    const LEASED_PUT: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"6","raft_term":"2"},"events":[{"kv":{"key":"L3Jld2lyZS9rdi9i","create_revision":"6","mod_revision":"6","version":"1","value":"eA==","lease":"2324035561518228501"}}]}}"#;
    const EMPTY_VALUE_PUT: &str = r#"{"result":{"header":{"revision":"7"},"events":[{"kv":{"key":"L3Jld2lyZS9rdi9j","create_revision":"7","mod_revision":"7","version":"1"}}]}}"#;
    const CREATED: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"},"created":true}}"#;
    const COMPACTED: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","raft_term":"2"},"canceled":true,"compact_revision":"2"}}"#;
    const BAD_TOKEN_WATCH: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"8","raft_term":"2"},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"}}"#;
    const PROGRESS: &str = r#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"42","raft_term":"2"}}}"#;
    const STREAM_ERROR: &str = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
    const GRANT: &str = r#"{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"2","raft_term":"2"},"ID":"2324035561518228490","TTL":"5"}"#;
    const KEEPALIVE_OK: &str = r#"{"result":{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"},"ID":"2324035561518228490","TTL":"5"}}"#;
    const KEEPALIVE_GONE: &str = r#"{"result":{"header":{"cluster_id":"324952591200643719","member_id":"3319814642761637952","revision":"3","raft_term":"2"},"ID":"12345"}}"#;
    const LEASE_NOT_FOUND: &str = r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    const BAD_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#;
    const NO_USER: &str = r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#;
    const BAD_PASSWORD: &str = r#"{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#;
    const COMPACTED_RANGE: &str = r#"{"error":"etcdserver: mvcc: required revision has been compacted","message":"etcdserver: mvcc: required revision has been compacted","code":11}"#;

    #[test]
    fn range_decodes_keys_values_and_revisions() {
        let r = decode_range(RANGE.as_bytes()).unwrap();
        assert_eq!(r.header.revision, 2);
        assert_eq!(
            r.kvs,
            vec![Kv {
                key: b"/rewire/kv/a".to_vec(),
                value: b"hello".to_vec(),
                mod_revision: 2,
                create_revision: 2,
                lease: 0,
            }]
        );
        let empty = decode_range(RANGE_EMPTY.as_bytes()).unwrap();
        assert_eq!(empty.header.revision, 2);
        assert!(empty.kvs.is_empty());
    }

    #[test]
    fn bad_base64_is_malformed() {
        let body = r#"{"header":{"revision":"2"},"kvs":[{"key":"%%%"}]}"#;
        assert!(decode_range(body.as_bytes()).is_err());
    }

    #[test]
    fn watch_events_default_to_put_and_empty_value() {
        let WatchMessage::Events { revision, events } =
            decode_watch_line(EVENTS.as_bytes()).unwrap()
        else {
            panic!("expected events")
        };
        assert_eq!(revision, 5);
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.kv.mod_revision)).collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Delete, 3),
                (EventKind::Put, 4),
                (EventKind::Delete, 5)
            ]
        );
        assert_eq!(events[1].kv.value, b"x");

        let WatchMessage::Events { events, .. } = decode_watch_line(LEASED_PUT.as_bytes()).unwrap()
        else {
            panic!("expected events")
        };
        assert_eq!(events[0].kv.lease, 2324035561518228501);

        let WatchMessage::Events { events, .. } =
            decode_watch_line(EMPTY_VALUE_PUT.as_bytes()).unwrap()
        else {
            panic!("expected events")
        };
        assert_eq!(events[0].kind, EventKind::Put);
        assert!(events[0].kv.value.is_empty());
    }

    #[test]
    fn watch_control_messages_are_classified() {
        assert_eq!(
            decode_watch_line(CREATED.as_bytes()).unwrap(),
            WatchMessage::Created { revision: 3 }
        );
        assert_eq!(
            decode_watch_line(COMPACTED.as_bytes()).unwrap(),
            WatchMessage::Compacted {
                compact_revision: 2
            }
        );
        assert_eq!(
            decode_watch_line(PROGRESS.as_bytes()).unwrap(),
            WatchMessage::Progress { revision: 42 }
        );
        let WatchMessage::Canceled { reason } =
            decode_watch_line(BAD_TOKEN_WATCH.as_bytes()).unwrap()
        else {
            panic!("a created-and-canceled watch is canceled")
        };
        assert!(reason.contains("invalid auth token"));
        let WatchMessage::Error(e) = decode_watch_line(STREAM_ERROR.as_bytes()).unwrap() else {
            panic!("expected a stream error")
        };
        assert_eq!(e.code, 14);
        assert!(e.is_unavailable());
        assert!(decode_watch_line(b"not json").is_err());
        assert!(decode_watch_line(b"{}").is_err());
    }

    #[test]
    fn lease_answers() {
        assert_eq!(
            decode_grant(GRANT.as_bytes()).unwrap(),
            Grant {
                id: 2324035561518228490,
                ttl: 5
            }
        );
        assert_eq!(
            decode_keepalive(KEEPALIVE_OK.as_bytes()).unwrap(),
            KeepAlive::Alive(5)
        );
        assert_eq!(
            decode_keepalive(format!("{KEEPALIVE_GONE}\n").as_bytes()).unwrap(),
            KeepAlive::Gone
        );
        let KeepAlive::Error(e) = decode_keepalive(STREAM_ERROR.as_bytes()).unwrap() else {
            panic!("expected an error")
        };
        assert!(e.is_unavailable());
        assert!(decode_keepalive(b"").is_err());
    }

    #[test]
    fn unary_errors_are_classified() {
        let e = decode_error(404, LEASE_NOT_FOUND.as_bytes());
        assert!(e.is_lease_not_found() && !e.is_denied());
        let e = decode_error(401, BAD_TOKEN.as_bytes());
        assert!(e.is_invalid_token() && !e.is_denied());
        assert!(decode_error(400, NO_USER.as_bytes()).is_denied());
        assert!(decode_error(400, BAD_PASSWORD.as_bytes()).is_denied());
        let e = decode_error(400, COMPACTED_RANGE.as_bytes());
        assert!(!e.is_denied() && !e.is_unavailable() && e.code == 11);
        let e = decode_error(503, b"<html>bad gateway</html>");
        assert!(e.is_unavailable());
        assert!(e.message.contains("HTTP 503"));
    }

    #[test]
    fn authenticate_answer_holds_the_token() {
        let body = r#"{"header":{"cluster_id":"1","member_id":"2","revision":"8","raft_term":"2"},"token":"OWJweTKOfalIDovJ.25"}"#;
        assert_eq!(
            decode_authenticate(body.as_bytes()).unwrap(),
            "OWJweTKOfalIDovJ.25"
        );
        assert!(decode_authenticate(b"{}").is_err());
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/rewire/"), b"/rewire0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn requests_encode_int64_as_strings_and_bytes_as_base64() {
        assert_eq!(
            put_request(b"k", b"v", 7),
            json!({"key": "aw==", "value": "dg==", "lease": "7"})
        );
        assert_eq!(
            put_request(b"k", b"", 0),
            json!({"key": "aw==", "value": ""})
        );
        assert_eq!(
            watch_request(b"/a/", b"/a0", 11)["create_request"]["start_revision"],
            json!("11")
        );
        assert_eq!(grant_request(5), json!({"TTL": "5"}));
        assert_eq!(lease_request(9), json!({"ID": "9"}));
        assert_eq!(range_request(b"k", None), json!({"key": "aw=="}));
        assert_eq!(
            range_page_request(b"k", b"l", 500, 0),
            json!({"key": "aw==", "range_end": "bA==", "limit": "500"})
        );
        assert_eq!(range_page_request(b"k", b"l", 2, 9)["revision"], json!("9"));
    }
}
