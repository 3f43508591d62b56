//! Turning Consul's HTTP answers into catalog [`Data`], as plain functions.
//!
//! Everything here is pure (status, headers and body in; data or a typed error out), so the
//! rules Consul's documentation and 1.8.7's behaviour impose are unit-tested on fixtures of
//! real responses: a 404 from the KV store is an answer ("no such key"), not a failure; a
//! `false` known-leader header means the data may be arbitrarily old; a missing
//! `X-Consul-Index` makes blocking impossible. Decoding is tolerant: unknown fields are
//! ignored and `null` lists count as empty, because users run Consul 1.1x through 1.2x.
//! Every instance is validated before a template can see it; a bad one is skipped with a
//! warning naming its service and id.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::catalog::CatalogError;
use crate::model::{
    Data, Instance, KeyValue, Node, Query, ServiceSummary, Status, check_address, check_name,
    check_port, shown,
};

pub const BACKEND: &str = "consul";

/// What one HTTP exchange returned, before interpretation.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    pub status: u16,
    /// `X-Consul-Index`.
    pub index: Option<&'a str>,
    /// `X-Consul-KnownLeader`.
    pub known_leader: Option<&'a str>,
    pub body: &'a [u8],
}

/// A successful read: the data and the index to block on next.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub index: u64,
    pub data: Data,
}

/// What to tell a user whose token the agent refused (`body`: the agent's answer, which tells
/// a token it does not know from one whose policy lacks the rule).
pub fn token_hint(token_set: bool, body: &[u8]) -> String {
    if token_set && String::from_utf8_lossy(body).contains("Permission denied") {
        "the ACL token is valid but its policy does not allow this request: give it read \
         access (key_prefix, service_prefix, node_prefix) to what the templates use, and write \
         access to the services rewire registers"
            .to_string()
    } else if token_set {
        "the agent rejected the ACL token (wrong, expired or deleted?): set a valid one in \
         [catalog] token / token_file or CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE"
            .to_string()
    } else {
        "the agent has ACLs enabled and no token is set: put a token with read access in \
         [catalog] token / token_file or CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE"
            .to_string()
    }
}

/// Whether a problem with Consul's data is new. An answer comes again with every change of
/// its service, so one bad instance would be warned about on each (48 lines for eight bad
/// instances and three health flaps of another): each distinct problem is a warning once,
/// then debug. At most [`SEEN_MAX`] problems are remembered, so memory stays bounded; once
/// that many are, further new ones go to debug too (said once) until an hour has passed since
/// the memory was last emptied. Emptying it at once instead warned about all 4 300 invalid
/// instances of one service again on every change of that service.
fn first_time(parts: &[&str]) -> bool {
    use std::hash::{Hash, Hasher};
    static SEEN: std::sync::Mutex<Seen> = std::sync::Mutex::new(Seen::new());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    let (new, full) = crate::lock::lock(&SEEN).note(h.finish(), std::time::Instant::now());
    if full {
        tracing::warn!(
            "more than {SEEN_MAX} distinct problems with Consul's data: further ones are logged at debug level for the next hour"
        );
    }
    new
}

/// The problems [`first_time`] remembers.
struct Seen {
    set: BTreeSet<u64>,
    /// When the memory was last emptied (or first used).
    since: Option<std::time::Instant>,
    said_full: bool,
}

impl Seen {
    const fn new() -> Seen {
        Seen {
            set: BTreeSet::new(),
            since: None,
            said_full: false,
        }
    }

    /// (whether `key` is new, whether to say now that the memory is full).
    fn note(&mut self, key: u64, now: std::time::Instant) -> (bool, bool) {
        let since = *self.since.get_or_insert(now);
        if self.set.len() >= SEEN_MAX && !self.set.contains(&key) {
            if now.duration_since(since) < SEEN_RESET {
                return (false, !std::mem::replace(&mut self.said_full, true));
            }
            *self = Seen::new();
            self.since = Some(now);
        }
        (self.set.insert(key), false)
    }
}

/// How many distinct data problems [`first_time`] remembers.
const SEEN_MAX: usize = 4096;
/// How long a full memory of problems is kept before it is emptied.
const SEEN_RESET: std::time::Duration = std::time::Duration::from_secs(3600);

/// The start of a response body, fit for an error message.
pub fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Maps a non-success status to an error, sorted by what the caller does next: 5xx and 429
/// (an agent without a leader, a server restarting, a rate limit) are worth retrying; 401/403
/// mean the token is wrong; any other 4xx means the request itself is wrong.
pub fn status_error(what: &str, status: u16, body: &[u8], token_set: bool) -> CatalogError {
    let detail = format!("{what} answered {status}: {}", snippet(body));
    match status {
        401 | 403 => CatalogError::Denied {
            backend: BACKEND.into(),
            detail,
            hint: token_hint(token_set, body),
        },
        429 | 500..=599 => CatalogError::Unreachable {
            backend: BACKEND.into(),
            detail,
        },
        _ => CatalogError::Denied {
            backend: BACKEND.into(),
            detail,
            hint: "the agent did not accept rewire's request; if the agent is older than \
                   Consul 1.1, upgrade it, otherwise please report this as a rewire bug"
                .into(),
        },
    }
}

/// Interprets the answer to a read of `query`. A KV value over `max_value` bytes
/// (`[catalog] max_file`) fails the read, naming the key.
pub fn interpret(
    query: &Query,
    what: &str,
    a: Answer<'_>,
    token_set: bool,
    max_value: u64,
) -> Result<Reply, CatalogError> {
    let query = query.datacenter().1;
    let is_kv = matches!(query, Query::Key(_) | Query::Keys(_));
    let found = match a.status {
        200..=299 => true,
        // A missing key or prefix: 404, empty body, and an index that still blocks.
        404 if is_kv => false,
        status => return Err(status_error(what, status, a.body, token_set)),
    };
    if a.known_leader
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"))
    {
        return Err(CatalogError::Unreachable {
            backend: BACKEND.into(),
            detail: format!(
                "{what}: the agent knows no cluster leader (X-Consul-KnownLeader: false)"
            ),
        });
    }
    let malformed = |detail: Malformed| CatalogError::Malformed {
        backend: BACKEND.into(),
        detail: format!("{what}: {detail}"),
    };
    // Consul cannot block on the list of datacenters and sends no index with it.
    let index = if query.blocks() {
        parse_index(a.index).map_err(malformed)?
    } else {
        0
    };
    let data = match query {
        Query::Service(name) => Data::Instances(health_service(name, a.body).map_err(malformed)?),
        Query::Services => Data::Services(catalog_services(a.body).map_err(malformed)?),
        Query::Key(path) if found => Data::Key(kv_key(path, a.body, max_value).map_err(malformed)?),
        Query::Key(_) => Data::Key(None),
        Query::Keys(_) if found => Data::Keys(kv_keys(a.body, max_value).map_err(malformed)?),
        Query::Keys(_) => Data::Keys(Vec::new()),
        Query::Nodes => Data::Nodes(catalog_nodes(a.body).map_err(malformed)?),
        Query::Datacenters => Data::Datacenters(datacenters(a.body).map_err(malformed)?),
        Query::Election(_) | Query::InDatacenter(..) => {
            return Err(malformed(Malformed(format!(
                "{query} is not a query Consul answers"
            ))));
        }
    };
    Ok(Reply { index, data })
}

/// An answer the agent sent that rewire cannot read (the caller adds which request it was).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// `X-Consul-Index`: required (without it nothing can block). Consul documents that an
/// index of 0 must be treated as 1, or every following request returns at once.
pub fn parse_index(header: Option<&str>) -> Result<u64, Malformed> {
    let raw = header.ok_or_else(|| Malformed("the X-Consul-Index header is missing".into()))?;
    let index: u64 = raw
        .trim()
        .parse()
        .map_err(|_| Malformed(format!("X-Consul-Index {raw:?} is not a number")))?;
    Ok(index.max(1))
}

// The health answer is read borrowing from the body: strings without escapes (nearly all)
// are not copied until an instance keeps them, and what no template sees (the service name
// repeated in every entry, the check statuses, the node address when the service has its
// own) is never copied at all. A 1 000-instance answer is ~1.9 MB from a `-dev` agent.

#[derive(Deserialize)]
struct HealthEntry<'a> {
    #[serde(rename = "Node", borrow)]
    node: NodeJson<'a>,
    #[serde(rename = "Service", borrow)]
    service: ServiceJson<'a>,
    #[serde(rename = "Checks", default, borrow)]
    checks: Option<Vec<CheckJson<'a>>>,
}

#[derive(Deserialize)]
struct NodeJson<'a> {
    #[serde(rename = "Node", default, borrow)]
    node: Cow<'a, str>,
    #[serde(rename = "Address", default, borrow)]
    address: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ServiceJson<'a> {
    #[serde(rename = "ID", default, borrow)]
    id: Cow<'a, str>,
    #[serde(rename = "Service", default, borrow)]
    service: Cow<'a, str>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
    #[serde(rename = "Address", default, borrow)]
    address: Cow<'a, str>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(rename = "Port", default)]
    port: i64,
}

#[derive(Deserialize)]
struct CheckJson<'a> {
    #[serde(rename = "Status", default, borrow)]
    status: Cow<'a, str>,
}

/// Consul's check states; anything unknown counts as critical (never route to what we can't read).
fn check_status(s: &str) -> Status {
    match s {
        "passing" => Status::Passing,
        "warning" => Status::Warning,
        _ => Status::Critical,
    }
}

/// `/v1/health/service/<name>` (without `?passing`): every instance with the worst status of
/// its checks, the node's own (`serfHealth`, maintenance) included, as `?passing` counts them.
pub fn health_service(service: &str, body: &[u8]) -> Result<Vec<Arc<Instance>>, Malformed> {
    let entries: Option<Vec<HealthEntry<'_>>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("health entries: {e}")))?;
    let entries = entries.unwrap_or_default();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let status = e
            .checks
            .iter()
            .flatten()
            .map(|c| check_status(&c.status))
            .fold(Status::Passing, Status::worst);
        let s = e.service;
        // An empty service address means "the node's address" (Consul's own rule).
        let address = if s.address.is_empty() {
            e.node.address
        } else {
            s.address
        };
        // An answer for `service` holds instances of `service` only: one naming another
        // service is a malformed answer (found by fuzzing), not an instance to render.
        let checked = check_name(service)
            .map_err(|e| format!("service name {e}"))
            .and_then(|()| {
                if s.service.is_empty() || s.service == service {
                    Ok(())
                } else {
                    Err(format!(
                        "an instance of service {:?} in the answer for {service:?}",
                        s.service
                    ))
                }
            })
            .and_then(|()| check_name(&s.id).map_err(|e| format!("instance id {e}")))
            // `s.node` reaches templates like the id does: no config syntax may ride in on it.
            .and_then(|()| check_name(&e.node.node).map_err(|e| format!("node name {e}")))
            .and_then(|()| check_address(&address).map_err(|e| e.to_string()))
            .and_then(|()| check_port(s.port).map_err(|e| e.to_string()));
        match checked {
            Ok(port) => {
                let mut tags = s.tags.unwrap_or_default();
                tags.sort();
                tags.dedup();
                out.push(Arc::new(Instance {
                    id: s.id.into_owned(),
                    name: service.to_string(),
                    node: e.node.node.into_owned(),
                    address: address.into_owned(),
                    port,
                    tags,
                    meta: s.meta.unwrap_or_default(),
                    status,
                }));
            }
            Err(error) => {
                let id = shown(&s.id);
                if first_time(&[service, &id, &error]) {
                    warn!(service = %service, %id, %error, "skipping a Consul instance with invalid data");
                } else {
                    debug!(service = %service, %id, %error, "skipping a Consul instance with invalid data");
                }
            }
        }
    }
    Ok(out)
}

/// `/v1/catalog/services`: `{"name": ["tag", ...]}`.
pub fn catalog_services(body: &[u8]) -> Result<Vec<ServiceSummary>, Malformed> {
    let map: Option<BTreeMap<String, Option<Vec<String>>>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("service list: {e}")))?;
    let mut out = Vec::new();
    for (name, tags) in map.unwrap_or_default() {
        if let Err(error) = check_name(&name) {
            if first_time(&[&error.to_string()]) {
                warn!(%error, "skipping a Consul service with an invalid name");
            }
            continue;
        }
        out.push(ServiceSummary {
            name,
            tags: tags.unwrap_or_default(),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct CatalogNode {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Datacenter", default)]
    datacenter: String,
    #[serde(rename = "TaggedAddresses", default)]
    tagged_addresses: Option<BTreeMap<String, String>>,
    #[serde(rename = "Meta", default)]
    meta: Option<BTreeMap<String, String>>,
}

/// `/v1/catalog/nodes`: every node of the datacenter. Like instances, a node whose name or
/// address could not go into a config unquoted is skipped with a warning.
pub fn catalog_nodes(body: &[u8]) -> Result<Vec<Node>, Malformed> {
    let list: Option<Vec<CatalogNode>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("node list: {e}")))?;
    let mut out = Vec::new();
    for n in list.unwrap_or_default() {
        let checked = check_name(&n.node)
            .map_err(|e| format!("node name {e}"))
            .and_then(|()| check_address(&n.address).map_err(|e| e.to_string()));
        if let Err(error) = checked {
            if first_time(&[&error]) {
                warn!(%error, "skipping a Consul node with invalid data");
            }
            continue;
        }
        // Tagged addresses (lan, wan, ...) reach templates too: only valid ones are kept.
        let tagged_addresses = n
            .tagged_addresses
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, a)| check_address(a).is_ok())
            .collect();
        out.push(Node {
            id: n.id,
            name: n.node,
            address: n.address,
            datacenter: n.datacenter,
            tagged_addresses,
            meta: n.meta.unwrap_or_default(),
        });
    }
    Ok(out)
}

/// `/v1/catalog/datacenters`: `["dc1", "dc2"]`; a name that is not a plain name is skipped.
pub fn datacenters(body: &[u8]) -> Result<Vec<String>, Malformed> {
    let list: Option<Vec<String>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("datacenter list: {e}")))?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .filter(|dc| match check_name(dc) {
            Ok(()) => true,
            Err(error) => {
                warn!(datacenter = %shown(dc), %error, "skipping a Consul datacenter with an invalid name");
                false
            }
        })
        .collect())
}

#[derive(Deserialize)]
struct KvPair {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
}

/// A KV value: base64 in JSON, `null` for an empty value. Templates want text: invalid UTF-8
/// is replaced (with a warning) rather than failing the whole read.
fn kv_value(key: &str, value: Option<&str>, max: u64) -> Result<String, Malformed> {
    let Some(b64) = value else {
        return Ok(String::new());
    };
    // The decoded length, from the base64 length (padding aside), before decoding anything.
    let size = (b64.trim_end_matches('=').len() as u64 * 3) / 4;
    if size > max {
        return Err(Malformed(format!(
            "key {key:?}: the value is {} bytes, over the limit of {} ([catalog] max_file)",
            size, max
        )));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Malformed(format!("key {key:?}: value is not base64: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            warn!(key, "Consul value is not UTF-8; invalid bytes replaced");
            Ok(String::from_utf8_lossy(e.as_bytes()).into_owned())
        }
    }
}

/// `/v1/kv/<path>` (200): a one-element list.
pub fn kv_key(path: &str, body: &[u8], max: u64) -> Result<Option<String>, Malformed> {
    let pairs: Option<Vec<KvPair>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("key {path:?}: {e}")))?;
    let pairs = pairs.unwrap_or_default();
    let wanted = path.trim_start_matches('/');
    let pair = pairs
        .iter()
        .find(|p| p.key == wanted)
        .or_else(|| pairs.first());
    pair.map(|p| kv_value(&p.key, p.value.as_deref(), max))
        .transpose()
}

/// `/v1/kv/<prefix>?recurse` (200): every key under the prefix. Folders (a key ending in `/`
/// with no value, as the UI creates them) are structure, not data, and are skipped.
pub fn kv_keys(body: &[u8], max: u64) -> Result<Vec<KeyValue>, Malformed> {
    let pairs: Option<Vec<KvPair>> =
        serde_json::from_slice(body).map_err(|e| Malformed(format!("key list: {e}")))?;
    pairs
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !(p.key.ends_with('/') && p.value.is_none()))
        .map(|p| {
            Ok(KeyValue {
                value: kv_value(&p.key, p.value.as_deref(), max)?,
                path: p.key,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /v1/health/service/web` from Consul 1.8.7 (dev agent), one instance with an empty
    /// service address and a TTL check that has not passed yet.
    const HEALTH_WEB: &str = r#"[{"Node":{"ID":"5cf85b96-a5e5-ccb5-4606-131faa9ab327","Node":"vm","Address":"127.0.0.1","Datacenter":"dc1","TaggedAddresses":{"lan":"127.0.0.1","lan_ipv4":"127.0.0.1","wan":"127.0.0.1","wan_ipv4":"127.0.0.1"},"Meta":{"consul-network-segment":""},"CreateIndex":10,"ModifyIndex":12},"Service":{"ID":"web1","Service":"web","Tags":["a","b"],"Address":"","Meta":{"v":"1"},"Port":8080,"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"Proxy":{"MeshGateway":{},"Expose":{}},"Connect":{},"CreateIndex":13,"ModifyIndex":13},"Checks":[{"Node":"vm","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"","Definition":{},"CreateIndex":10,"ModifyIndex":10},{"Node":"vm","CheckID":"service:web1","Name":"ttl","Status":"critical","Notes":"","Output":"","ServiceID":"web1","ServiceName":"web","ServiceTags":["a","b"],"Type":"ttl","Definition":{},"CreateIndex":13,"ModifyIndex":13}]},
      {"Node":{"Node":"n2","Address":"10.0.0.2"},"Service":{"ID":"web2","Service":"web","Tags":null,"Address":"10.1.0.2","Meta":null,"Port":81},"Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"c1","Status":"warning"}]},
      {"Node":{"Node":"n3","Address":"10.0.0.3"},"Service":{"ID":"web3","Service":"web","Address":"10.1.0.3","Port":82},"Checks":null}]"#;

    #[test]
    fn health_entries_become_instances() {
        let list = health_service("web", HEALTH_WEB.as_bytes()).unwrap();
        assert_eq!(list.len(), 3);
        let w1 = &list[0];
        assert_eq!(w1.id, "web1");
        assert_eq!(w1.name, "web");
        assert_eq!(w1.node, "vm");
        assert_eq!(
            w1.address, "127.0.0.1",
            "empty Service.Address means Node.Address"
        );
        assert_eq!(w1.port, 8080);
        assert_eq!(w1.tags, ["a", "b"]);
        assert_eq!(w1.meta.get("v").map(String::as_str), Some("1"));
        assert_eq!(
            w1.status,
            Status::Critical,
            "worst of serfHealth and the TTL check"
        );
        assert_eq!(list[1].address, "10.1.0.2");
        assert!(list[1].tags.is_empty() && list[1].meta.is_empty());
        assert_eq!(list[1].status, Status::Warning);
        assert_eq!(list[2].status, Status::Passing, "no checks: passing");
    }

    #[test]
    fn escaped_strings_in_a_health_answer_decode_like_plain_ones() {
        // Most strings are borrowed from the body; those with escapes cannot be.
        let body = br#"[{"Node":{"Node":"n\u0031","Address":"10.0.0.1"},"Service":{"ID":"web\u002d1","Service":"w\u0065b","Address":"","Port":80},
            "Checks":[{"CheckID":"serfHealth","Status":"pass\u0069ng"}]}]"#;
        let list = health_service("web", body).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        let i = &list[0];
        assert_eq!(
            (
                i.id.as_str(),
                i.name.as_str(),
                i.node.as_str(),
                i.address.as_str()
            ),
            ("web-1", "web", "n1", "10.0.0.1")
        );
        assert_eq!(i.status, Status::Passing);
    }

    #[test]
    fn node_checks_count_towards_an_instance_status() {
        let body = r#"[{"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"web","Port":80},
            "Checks":[{"CheckID":"serfHealth","Status":"critical"},{"CheckID":"service:a","Status":"passing"}]}]"#;
        let list = health_service("web", body.as_bytes()).unwrap();
        assert_eq!(list[0].status, Status::Critical);
        let body = r#"[{"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"web","Port":80},
            "Checks":[{"CheckID":"_node_maintenance","Status":"maintenance"}]}]"#;
        let list = health_service("web", body.as_bytes()).unwrap();
        assert_eq!(
            list[0].status,
            Status::Critical,
            "unknown states are critical"
        );
    }

    #[test]
    fn invalid_instances_are_skipped_and_the_rest_kept() {
        let body = r#"[
            {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"ok","Service":"web","Port":80},"Checks":[]},
            {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"noport","Service":"web","Port":0},"Checks":[]},
            {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"evil","Service":"web","Address":"1.2.3.4; include /etc/passwd","Port":80},"Checks":[]},
            {"Node":{"Node":"n","Address":""},"Service":{"ID":"noaddr","Service":"web","Port":80},"Checks":[]},
            {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"bad id }","Service":"web","Port":80},"Checks":[]},
            {"Node":{"Node":"n1\n  server 10.7.0.9:80;\n}","Address":"10.0.0.1"},"Service":{"ID":"badnode","Service":"web","Port":80},"Checks":[]}
        ]"#;
        let list = health_service("web", body.as_bytes()).unwrap();
        let ids: Vec<_> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["ok"]);
    }

    #[test]
    fn a_token_without_the_rule_is_told_from_an_unknown_token() {
        let hint = |body: &[u8]| match status_error("GET /v1/kv/app/x", 403, body, true) {
            CatalogError::Denied { hint, .. } => hint,
            other => panic!("{other:?}"),
        };
        assert!(hint(b"Permission denied").contains("policy does not allow"));
        assert!(hint(b"ACL not found").contains("rejected the ACL token"));
    }

    #[test]
    fn each_problem_with_the_data_is_new_once() {
        // Full: new problems are quiet (said once) until the hour is over, never all again.
        let mut seen = Seen::new();
        let t0 = std::time::Instant::now();
        for k in 0..SEEN_MAX as u64 {
            assert_eq!(seen.note(k, t0), (true, false));
        }
        assert_eq!(seen.note(1, t0), (false, false), "known");
        assert_eq!(seen.note(99_999, t0), (false, true), "full: said once");
        assert_eq!(seen.note(99_998, t0), (false, false));
        assert_eq!(
            seen.note(99_997, t0 + SEEN_RESET),
            (true, false),
            "emptied after the hour"
        );
        assert_eq!(seen.note(1, t0 + SEEN_RESET), (true, false));
        assert!(first_time(&["first-time-test", "id-1", "bad"]));
        assert!(!first_time(&["first-time-test", "id-1", "bad"]));
        assert!(first_time(&["first-time-test", "id-2", "bad"]));
        // The parts are kept apart: ("a", "bc") is not ("ab", "c").
        assert!(first_time(&["first-time-test-a", "bc"]));
        assert!(first_time(&["first-time-test-ab", "c"]));
    }

    #[test]
    fn unknown_service_is_an_empty_list() {
        assert!(health_service("nope", b"[]").unwrap().is_empty());
        assert!(health_service("nope", b"null").unwrap().is_empty());
        assert!(health_service("web", b"{not json").is_err());
    }

    #[test]
    fn catalog_services_tolerate_null_tags() {
        let body = br#"{"consul":[],"web":["a","b"],"legacy":null,"bad name!":[]}"#;
        let list = catalog_services(body).unwrap();
        let names: Vec<_> = list.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["consul", "legacy", "web"]);
        assert_eq!(list[2].tags, ["a", "b"]);
        assert!(list[1].tags.is_empty());
    }

    /// `GET /v1/catalog/nodes` from Consul 1.8.7 (dev agent), plus nodes a template must not see.
    const NODES: &str = r#"[{"ID":"09b35521-7b83-a487-87c3-4042aa4f0362","Node":"vm","Address":"127.0.0.1","Datacenter":"dc1","TaggedAddresses":{"lan":"127.0.0.1","lan_ipv4":"127.0.0.1","wan":"127.0.0.1","wan_ipv4":"127.0.0.1"},"Meta":{"consul-network-segment":""},"CreateIndex":10,"ModifyIndex":11},
        {"Node":"b","Address":"10.0.0.2","TaggedAddresses":{"wan":"1.2.3.4\nevil"},"Meta":null},
        {"Node":"bad node;","Address":"10.0.0.3"},
        {"Node":"c","Address":"10.0.0.4; include /etc/passwd"}]"#;

    #[test]
    fn catalog_nodes_keep_valid_nodes_and_addresses_only() {
        let list = catalog_nodes(NODES.as_bytes()).unwrap();
        let names: Vec<_> = list.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["vm", "b"]);
        assert_eq!(list[0].address, "127.0.0.1");
        assert_eq!(list[0].datacenter, "dc1");
        assert_eq!(
            list[0].tagged_addresses.get("wan").map(String::as_str),
            Some("127.0.0.1")
        );
        assert!(
            list[1].tagged_addresses.is_empty(),
            "an address with a newline is dropped"
        );
        assert!(catalog_nodes(b"null").unwrap().is_empty());
        assert!(catalog_nodes(b"{").is_err());
    }

    #[test]
    fn the_datacenter_list_needs_no_index_and_skips_odd_names() {
        let q = Query::Datacenters;
        let a = Answer {
            status: 200,
            index: None,
            known_leader: None,
            body: br#"["dc1","dc2","bad dc\n"]"#,
        };
        let reply = interpret(&q, "datacenters", a, false, u64::MAX).unwrap();
        assert_eq!(
            reply.data,
            Data::Datacenters(vec!["dc1".into(), "dc2".into()])
        );
        let remote = Query::Service("web".into()).in_datacenter(Some("dc2".into()));
        let a = Answer {
            status: 200,
            index: Some("7"),
            known_leader: Some("true"),
            body: HEALTH_WEB.as_bytes(),
        };
        let reply = interpret(&remote, "web@dc2", a, false, u64::MAX).unwrap();
        assert!(matches!(reply.data, Data::Instances(ref l) if l.len() == 3));
        assert_eq!(reply.index, 7);
    }

    /// `GET /v1/kv/app/?recurse` from Consul 1.8.7.
    const KV_RECURSE: &str = r#"[{"LockIndex":0,"Key":"app/a","Flags":0,"Value":"aGVsbG8=","CreateIndex":14,"ModifyIndex":14},{"LockIndex":0,"Key":"app/empty","Flags":0,"Value":null,"CreateIndex":17,"ModifyIndex":17},{"LockIndex":0,"Key":"app/folder/","Flags":0,"Value":null,"CreateIndex":16,"ModifyIndex":16},{"LockIndex":0,"Key":"app/sub/b","Flags":0,"Value":"eA==","CreateIndex":15,"ModifyIndex":15}]"#;

    #[test]
    fn kv_recurse_decodes_values_and_skips_folders() {
        let list = kv_keys(KV_RECURSE.as_bytes(), u64::MAX).unwrap();
        let pairs: Vec<_> = list
            .iter()
            .map(|kv| (kv.path.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("app/a", "hello"), ("app/empty", ""), ("app/sub/b", "x")]
        );
    }

    #[test]
    fn kv_single_key_decodes() {
        let body = br#"[{"LockIndex":0,"Key":"app/a","Flags":0,"Value":"aGVsbG8=","CreateIndex":14,"ModifyIndex":14}]"#;
        assert_eq!(
            kv_key("app/a", body, u64::MAX).unwrap().as_deref(),
            Some("hello")
        );
        let body = br#"[{"Key":"app/e","Value":null}]"#;
        assert_eq!(
            kv_key("app/e", body, u64::MAX).unwrap().as_deref(),
            Some("")
        );
        assert_eq!(kv_key("app/e", b"[]", u64::MAX).unwrap(), None);
        assert!(kv_key("k", br#"[{"Key":"k","Value":"***"}]"#, u64::MAX).is_err());
        let latin1 = br#"[{"Key":"k","Value":"/w=="}]"#;
        assert_eq!(
            kv_key("k", latin1, u64::MAX).unwrap().as_deref(),
            Some("\u{fffd}")
        );
    }

    #[test]
    fn kv_values_over_the_cap_are_refused_by_name() {
        let body = br#"[{"Key":"app/big","Value":"aGVsbG8="}]"#;
        assert_eq!(
            kv_key("app/big", body, 5).unwrap().as_deref(),
            Some("hello")
        );
        let e = kv_key("app/big", body, 4).unwrap_err().to_string();
        assert!(e.contains("\"app/big\"") && e.contains("max_file"), "{e}");
        assert!(kv_keys(body, 4).is_err());
    }

    fn answer(status: u16, index: Option<&'static str>, body: &'static str) -> Answer<'static> {
        Answer {
            status,
            index,
            known_leader: Some("true"),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn missing_kv_is_an_answer_with_an_index() {
        let key = Query::Key("missing".into());
        let r = interpret(&key, "GET", answer(404, Some("17"), ""), false, u64::MAX).unwrap();
        assert_eq!(
            r,
            Reply {
                index: 17,
                data: Data::Key(None)
            }
        );
        let keys = Query::Keys("missing/".into());
        let r = interpret(&keys, "GET", answer(404, Some("17"), ""), false, u64::MAX).unwrap();
        assert_eq!(
            r,
            Reply {
                index: 17,
                data: Data::Keys(vec![])
            }
        );
        // A 404 elsewhere is not "missing".
        let svc = Query::Service("web".into());
        assert!(interpret(&svc, "GET", answer(404, Some("17"), ""), false, u64::MAX).is_err());
    }

    #[test]
    fn index_header_is_required_and_zero_counts_as_one() {
        let q = Query::Services;
        let err = interpret(&q, "GET", answer(200, None, "{}"), false, u64::MAX).unwrap_err();
        assert!(matches!(err, CatalogError::Malformed { .. }), "{err}");
        let err = interpret(&q, "GET", answer(200, Some("x1"), "{}"), false, u64::MAX).unwrap_err();
        assert!(matches!(err, CatalogError::Malformed { .. }), "{err}");
        let r = interpret(&q, "GET", answer(200, Some("0"), "{}"), false, u64::MAX).unwrap();
        assert_eq!(r.index, 1);
    }

    #[test]
    fn no_leader_is_an_outage() {
        let q = Query::Services;
        let mut a = answer(200, Some("5"), "{}");
        a.known_leader = Some("false");
        let err = interpret(&q, "GET", a, false, u64::MAX).unwrap_err();
        assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
        let err = interpret(
            &q,
            "GET",
            answer(500, None, "No cluster leader"),
            false,
            u64::MAX,
        )
        .unwrap_err();
        assert!(matches!(err, CatalogError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("No cluster leader"), "{err}");
    }

    #[test]
    fn acl_refusals_are_denied_with_a_hint() {
        let q = Query::Key("k".into());
        let mut a = answer(403, Some("1"), "ACL not found");
        a.known_leader = Some("false"); // 1.8.7 sends this with a bad token
        let err = interpret(&q, "GET /v1/kv/k", a, true, u64::MAX).unwrap_err();
        let CatalogError::Denied { detail, hint, .. } = &err else {
            panic!("{err}")
        };
        assert!(detail.contains("ACL not found"), "{detail}");
        assert!(hint.contains("CONSUL_HTTP_TOKEN"), "{hint}");
        assert!(!err.is_transient());
    }

    #[test]
    fn long_bodies_are_cut_in_errors() {
        let long = "é".repeat(1000);
        let s = snippet(long.as_bytes());
        assert!(s.chars().count() <= 203, "{}", s.len());
        assert!(s.ends_with("..."));
    }

    #[test]
    fn an_instance_of_another_service_in_a_health_answer_is_skipped() {
        let body = br#"[{"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"a","Service":"wecoDsulb","Port":80},
            "Checks":[{"CheckID":"_node_maintenance","Status":"maintenance"}]},
            {"Node":{"Node":"n","Address":"10.0.0.2"},"Service":{"ID":"b","Service":"web","Port":80},"Checks":[]}]"#;
        let list = health_service("web", body).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!((list[0].id.as_str(), list[0].name.as_str()), ("b", "web"));
    }
}
