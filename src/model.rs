//! The words every part of rewire shares: what a template asks the catalog for ([`Query`]),
//! what comes back ([`Data`], [`Instance`], [`Status`]), what rewire registers for itself
//! ([`Registration`]), where the catalog lives ([`CatalogUrl`]), and the checks catalog and
//! config values pass before anyone may use them.
//!
//! This module imports nothing of the crate, so every other module may import it without
//! pulling in a backend, the config parser or the template engine.
//!
//! Queries are coarse on purpose. `service("web", tag="v2", status="any")` and `service("web")`
//! both watch [`Query::Service`]`("web")` (every instance, whatever its health); templates filter
//! by tag and status on the snapshot. That is how two templates, or one template calling the
//! same service twice, share one watch (consul-template opens one long poll per variant).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One thing a template (or a `[[watch]]`) asks the catalog for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Query {
    /// Every instance of one service, whatever its health.
    Service(String),
    /// Every service name with its tags.
    Services,
    /// One key's value (missing is a valid answer).
    Key(String),
    /// Every key under a prefix.
    Keys(String),
    /// One `[[election]]` of this process: who holds it and whether this process does.
    /// Published by the election itself, never read from the catalog (see [`Query::is_catalog`]).
    Election(String),
    /// Every node of the datacenter (Consul only).
    Nodes,
    /// Every datacenter the agent knows (Consul only; Consul cannot block on it, so it is
    /// read again every few seconds).
    Datacenters,
    /// Another query asked of a named datacenter (Consul only): `service("web", dc="dc2")`.
    /// Built with [`Query::in_datacenter`], which never nests it.
    #[serde(rename = "datacenter")]
    InDatacenter(String, Box<Query>),
}

impl Query {
    /// Whether the catalog answers this query. An election's view comes from this process's
    /// own candidate, so it never joins the set the catalog watches.
    pub fn is_catalog(&self) -> bool {
        !matches!(self, Query::Election(_))
    }

    /// `self` asked of datacenter `dc` (`None`: the catalog's own).
    pub fn in_datacenter(self, dc: Option<String>) -> Query {
        match (dc, self) {
            (None, q) => q,
            (Some(dc), Query::InDatacenter(_, q)) => Query::InDatacenter(dc, q),
            (Some(dc), q) => Query::InDatacenter(dc, Box::new(q)),
        }
    }

    /// The datacenter named for this query (if any) and the query itself.
    pub fn datacenter(&self) -> (Option<&str>, &Query) {
        match self {
            Query::InDatacenter(dc, q) => (Some(dc), q),
            q => (None, q),
        }
    }

    /// Whether only Consul can answer this query (the dir catalog and etcd know neither
    /// datacenters nor nodes).
    pub fn needs_consul(&self) -> bool {
        matches!(
            self,
            Query::Nodes | Query::Datacenters | Query::InDatacenter(..)
        )
    }

    /// Whether the catalog can hold a read of this query until it changes. Consul's
    /// datacenter list cannot be watched, only read again.
    pub fn blocks(&self) -> bool {
        !matches!(self.datacenter().1, Query::Datacenters)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Service(name) => write!(f, "service({name})"),
            Query::Services => write!(f, "services()"),
            Query::Key(path) => write!(f, "key({path})"),
            Query::Keys(prefix) => write!(f, "keys({prefix})"),
            Query::Election(name) => write!(f, "election({name})"),
            Query::Nodes => write!(f, "nodes()"),
            Query::Datacenters => write!(f, "datacenters()"),
            Query::InDatacenter(dc, q) => write!(f, "{q}@{dc}"),
        }
    }
}

/// Health of one instance, as the catalog reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// The worse of two statuses (an instance with one critical check is critical).
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

impl std::str::FromStr for Status {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "passing" => Ok(Status::Passing),
            "warning" => Ok(Status::Warning),
            "critical" => Ok(Status::Critical),
            other => Err(Invalid::Status(other.to_string())),
        }
    }
}

/// The most tags an instance may carry: a catalog record with more is refused, and a
/// `[[service]]` with more is a config error (each tag is its own allocation: 133 000 tags in
/// a 1 MiB file took 8 MB).
pub const MAX_TAGS: usize = 256;
/// The most `meta` entries an instance may carry (Consul's own limit is 64).
pub const MAX_META: usize = 64;

/// One running copy of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    /// The node (host) the instance runs on; the hostname for the dir catalog.
    pub node: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub status: Status,
}

impl Instance {
    /// The order templates see: by address (IP addresses numerically, IPv4 before IPv6, then
    /// hostnames as strings), then port, then id, so output is deterministic and
    /// 10.0.0.7 comes before 10.0.0.12.
    pub fn sort_key(&self) -> (AddressOrder<&str>, u16, &str) {
        (AddressOrder::of(&self.address), self.port, &self.id)
    }

    /// An integer prefix of [`Instance::sort_key`] for
    /// [`sort_by_prefix`](crate::prefix_sort::sort_by_prefix). The top two bits tell IPv4,
    /// IPv6 and hostnames apart (in that order); below them an IPv4 address and the port, or
    /// the first 126 bits of an IPv6 address or of a hostname (ties go to the full key).
    pub fn sort_prefix(&self) -> u128 {
        match AddressOrder::of(&self.address) {
            AddressOrder::Ip(std::net::IpAddr::V4(ip)) => {
                u128::from(ip.to_bits()) << 16 | u128::from(self.port)
            }
            AddressOrder::Ip(std::net::IpAddr::V6(ip)) => 1 << 126 | ip.to_bits() >> 2,
            AddressOrder::Host(h) => 2 << 126 | crate::prefix_sort::bytes_prefix(h.as_bytes()) >> 2,
        }
    }

    /// [`Instance::sort_key`] owned, for a collection kept in template order (the etcd
    /// mirror): it orders exactly as the borrowed key does.
    pub fn owned_sort_key(&self) -> (AddressOrder<String>, u16, String) {
        let address = match AddressOrder::of(&self.address) {
            AddressOrder::Ip(ip) => AddressOrder::Ip(ip),
            AddressOrder::Host(h) => AddressOrder::Host(h.to_owned()),
        };
        (address, self.port, self.id.clone())
    }
}

/// An address as instances are ordered by it: IP addresses first, numerically; hostnames
/// after them, as strings (`H` is `&str` or `String`, which order alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressOrder<H> {
    Ip(std::net::IpAddr),
    Host(H),
}

impl<'a> AddressOrder<&'a str> {
    pub fn of(address: &'a str) -> AddressOrder<&'a str> {
        match address.parse() {
            Ok(ip) => AddressOrder::Ip(ip),
            Err(_) => AddressOrder::Host(address),
        }
    }
}

/// A service name and the union of its instances' tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
}

/// One node (machine) of a Consul datacenter, as `nodes()` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// A key/value pair under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    /// The full path of the key.
    pub path: String,
    pub value: String,
}

/// The answer to one [`Query`].
///
/// Instances are shared (`Arc`): a backend that keeps a copy of the catalog (etcd's mirror)
/// hands the store the same instances it holds, so one change among 1 000 instances copies
/// 1 000 pointers, not 1 000 records, and the template side can tell an unchanged instance by
/// its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Instances(Vec<Arc<Instance>>),
    Services(Vec<ServiceSummary>),
    Key(Option<String>),
    Keys(Vec<KeyValue>),
    Election(ElectionView),
    Nodes(Vec<Node>),
    Datacenters(Vec<String>),
}

/// What the holder of an election publishes (its `value`): where the others find it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    pub id: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl LeaderValue {
    /// Catalog data is never trusted: a holder's value reaches templates and hook
    /// environments, so it passes the checks instance records pass.
    pub fn check(&self) -> Result<(), Invalid> {
        check_name(&self.id)?;
        check_address(&self.address)?;
        if self.port == Some(0) {
            return Err(Invalid::Port(0));
        }
        Ok(())
    }
}

/// One term of an election: who holds it, and its fencing token (Consul's ModifyIndex, etcd's
/// create_revision, the dir catalog's counter), which grows from one term to the next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    pub value: LeaderValue,
    pub token: u64,
}

/// An election as this process sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ElectionView {
    /// The current holder, or `None` while there is none.
    pub holder: Option<Holder>,
    /// This process holds the election and its `on_elected` hook succeeded.
    pub is_leader: bool,
}

impl Data {
    /// Puts the data in its canonical order, so that equal data compares equal and renders
    /// byte-identical output whatever order the backend produced it in.
    pub fn normalize(mut self) -> Data {
        match &mut self {
            Data::Instances(list) => {
                // The dir tree hands over a list in id order, sorted again on every change;
                // the etcd mirror keeps template order, found sorted in one pass. Either way
                // each address is parsed once for its prefix, and again only to settle a tie.
                crate::prefix_sort::sort_by_prefix(
                    list,
                    |i| i.sort_prefix(),
                    |a, b| a.sort_key().cmp(&b.sort_key()),
                );
                for i in list.iter_mut() {
                    if !i.tags.is_sorted_by(|a, b| a < b) {
                        let tags = &mut Arc::make_mut(i).tags;
                        tags.sort();
                        tags.dedup();
                    }
                }
            }
            Data::Services(list) => {
                list.sort_by(|a, b| a.name.cmp(&b.name));
                for s in list.iter_mut() {
                    s.tags.sort();
                    s.tags.dedup();
                }
            }
            Data::Keys(list) => list.sort_by(|a, b| a.path.cmp(&b.path)),
            // consul-template's order: by node name, then address.
            Data::Nodes(list) => {
                list.sort_by(|a, b| (&a.name, &a.address).cmp(&(&b.name, &b.address)))
            }
            Data::Datacenters(list) => {
                list.sort();
                list.dedup();
            }
            Data::Key(_) | Data::Election(_) => {}
        }
        self
    }

    /// The empty answer for a query: no instances, no services, no key.
    pub fn empty_for(query: &Query) -> Data {
        match query {
            Query::Service(_) => Data::Instances(Vec::new()),
            Query::Services => Data::Services(Vec::new()),
            Query::Key(_) => Data::Key(None),
            Query::Keys(_) => Data::Keys(Vec::new()),
            Query::Election(_) => Data::Election(ElectionView::default()),
            Query::Nodes => Data::Nodes(Vec::new()),
            Query::Datacenters => Data::Datacenters(Vec::new()),
            Query::InDatacenter(_, q) => Data::empty_for(q),
        }
    }

    /// Builds the `services()` answer from a full list of instances.
    pub fn services_from<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Data {
        let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        // Catalogs hand over a service's instances together, mostly with the same tags: an
        // instance like the one before adds nothing (10 000 instances: ~1 ms of map lookups).
        let mut previous: Option<&Instance> = None;
        for i in instances {
            if previous.is_some_and(|p| p.name == i.name && p.tags == i.tags) {
                continue;
            }
            previous = Some(i);
            let tags = by_name.entry(&i.name).or_default();
            tags.extend(i.tags.iter().map(String::as_str));
        }
        Data::Services(
            by_name
                .into_iter()
                .map(|(name, tags)| ServiceSummary {
                    name: name.to_string(),
                    tags: tags.into_iter().map(str::to_string).collect(),
                })
                .collect(),
        )
    }
}

/// What a rewire process registers for itself (a `[[service]]` block, resolved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// How long a pass counts for; missing the next one by more turns the instance critical.
    #[serde(skip)]
    pub ttl: Duration,
    /// How long a critical registration may linger before the catalog removes it.
    #[serde(skip)]
    pub deregister_after: Duration,
    /// Status to register with.
    pub status: Status,
}

/// A value that catalog data or the config may not hold. Catalog data is never trusted: an
/// address that is neither an IP nor a hostname, or a port outside 1–65535, would end up in an
/// nginx or haproxy config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("address {} is neither an IP address nor a hostname", shown(.0))]
    Address(String),
    #[error("address {} is refused: nginx would read `{}:PORT` as the path of a UNIX-domain socket", shown(.0), .0)]
    UnixAddress(String),
    #[error("port {0} is outside 1-65535")]
    Port(i64),
    #[error("{} may only hold letters, digits and - _ . : @ (and may not start with a dot)", shown(.0))]
    Name(String),
    #[error("unknown status {}: use passing, warning or critical", shown(.0))]
    Status(String),
}

/// A value from the catalog as a log line or message shows it: quoted and escaped (a newline
/// in it cannot start a forged log line) and cut after 64 characters.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// A message that may hold catalog data, made fit for one log line: control characters
/// escaped (`\n`, `\u{1}`: a newline cannot start a forged log line) and cut after `max`
/// characters, saying how long it was.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 16));
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An IP address (v4 or v6) or an RFC 1123 hostname, but never `unix` (any case): nginx reads
/// `unix:PORT` in `server` and `listen` as the path of a UNIX-domain socket, so an instance
/// at "host" `unix` would send traffic to (or listen on) a socket file named after the port.
pub fn check_address(addr: &str) -> Result<(), Invalid> {
    if addr.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if addr.eq_ignore_ascii_case("unix") {
        return Err(Invalid::UnixAddress(addr.to_string()));
    }
    let ok = !addr.is_empty()
        && addr.len() <= 253
        && addr.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(Invalid::Address(addr.to_string()))
    }
}

/// A port between 1 and 65535.
pub fn check_port(port: i64) -> Result<u16, Invalid> {
    match u16::try_from(port) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(Invalid::Port(port)),
    }
}

/// Service names and instance ids become file names and URL path segments: keep them plain.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::Name(name.to_string()))
    }
}

/// Where the catalog lives, as given by `--catalog` or `[catalog]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogUrl {
    Dir(std::path::PathBuf),
    Consul(String),
    Etcd(Vec<String>),
}

/// A `--catalog` value rewire cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogUrlError {
    #[error("dir: needs a path, e.g. dir:./catalog")]
    NoPath,
    #[error("{scheme}:// needs at least one HOST:PORT")]
    NoEndpoint { scheme: &'static str },
    #[error(
        "unknown catalog {0:?}: use dir:PATH, consul://HOST:PORT or etcd://HOST:PORT[,HOST:PORT...]"
    )]
    Unknown(String),
}

impl CatalogUrl {
    /// Parses `dir:PATH`, `consul://HOST:PORT` (or `consuls://` for https) and
    /// `etcd://HOST:PORT[,HOST:PORT...]` (or `etcds://`).
    pub fn parse(s: &str) -> Result<CatalogUrl, CatalogUrlError> {
        if let Some(path) = s.strip_prefix("dir:") {
            if path.is_empty() {
                return Err(CatalogUrlError::NoPath);
            }
            return Ok(CatalogUrl::Dir(path.into()));
        }
        if let Some(rest) = s.strip_prefix("consul://") {
            return Ok(CatalogUrl::Consul(format!("http://{rest}")));
        }
        if let Some(rest) = s.strip_prefix("consuls://") {
            return Ok(CatalogUrl::Consul(format!("https://{rest}")));
        }
        for (scheme, http) in [("etcd", "http"), ("etcds", "https")] {
            if let Some(rest) = s.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) {
                let eps: Vec<String> = rest
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("{http}://{e}"))
                    .collect();
                if eps.is_empty() {
                    return Err(CatalogUrlError::NoEndpoint { scheme });
                }
                return Ok(CatalogUrl::Etcd(eps));
            }
        }
        Err(CatalogUrlError::Unknown(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn catalog_values_are_shown_quoted_escaped_and_cut() {
        assert_eq!(shown("web"), "\"web\"");
        assert_eq!(shown("a\nINFO forged"), "\"a\\nINFO forged\"");
        let long = "x".repeat(5000);
        let s = shown(&long);
        assert!(s.starts_with(&format!("\"{}\"…", "x".repeat(64))), "{s}");
        assert!(s.ends_with("(5000 bytes)"), "{s}");
    }

    use super::*;

    #[test]
    fn a_datacenter_wraps_a_query_once_and_only_the_datacenter_list_does_not_block() {
        let web = Query::Service("web".into());
        assert_eq!(web.clone().in_datacenter(None), web);
        let east = web.clone().in_datacenter(Some("east".into()));
        assert_eq!(east.datacenter(), (Some("east"), &web));
        assert_eq!(east.to_string(), "service(web)@east");
        let west = east.clone().in_datacenter(Some("west".into()));
        assert_eq!(west.datacenter(), (Some("west"), &web), "never nested");
        assert!(east.needs_consul() && Query::Nodes.needs_consul() && !web.needs_consul());
        assert!(east.blocks() && Query::Nodes.blocks());
        assert!(!Query::Datacenters.blocks());
        assert!(!Query::Datacenters.in_datacenter(Some("x".into())).blocks());
        assert_eq!(Data::empty_for(&east), Data::Instances(Vec::new()));
    }

    #[test]
    fn catalog_urls_parse() {
        assert_eq!(
            CatalogUrl::parse("dir:./cat").unwrap(),
            CatalogUrl::Dir("./cat".into())
        );
        assert_eq!(
            CatalogUrl::parse("consul://127.0.0.1:8500").unwrap(),
            CatalogUrl::Consul("http://127.0.0.1:8500".into())
        );
        assert_eq!(
            CatalogUrl::parse("etcd://a:1,b:2").unwrap(),
            CatalogUrl::Etcd(vec!["http://a:1".into(), "http://b:2".into()])
        );
        assert_eq!(
            CatalogUrl::parse("etcds://a:1").unwrap(),
            CatalogUrl::Etcd(vec!["https://a:1".into()])
        );
        assert!(CatalogUrl::parse("zk://x").is_err());
        assert!(CatalogUrl::parse("dir:").is_err());
        assert_eq!(
            CatalogUrl::parse("etcd://").unwrap_err().to_string(),
            "etcd:// needs at least one HOST:PORT"
        );
    }

    #[test]
    fn normalize_sorts_instances_by_numeric_address_then_port_then_id() {
        let mk = |id: &str, addr: &str, port| Instance {
            id: id.into(),
            name: "web".into(),
            node: "n".into(),
            address: addr.into(),
            port,
            tags: vec!["b".into(), "a".into(), "a".into()],
            meta: BTreeMap::new(),
            status: Status::Passing,
        };
        let d = Data::Instances(
            vec![
                mk("z", "10.0.0.2", 80),
                mk("y", "10.0.0.1", 81),
                mk("x", "10.0.0.1", 80),
                mk("h", "backend.internal", 80),
                mk("v6", "::1", 80),
                mk("w", "10.0.0.12", 80),
            ]
            .into_iter()
            .map(Arc::new)
            .collect(),
        )
        .normalize();
        let Data::Instances(list) = d else { panic!() };
        let ids: Vec<_> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "z", "w", "v6", "h"]);
        assert_eq!(list[0].tags, ["a", "b"]);
    }

    /// Wherever two instances' sort prefixes differ, they order the two as the full sort key
    /// does (the prefix sort relies on it).
    #[test]
    fn sort_prefixes_agree_with_sort_keys() {
        let addresses = [
            "10.0.0.2",
            "10.0.0.12",
            "9.255.255.255",
            "255.255.255.255",
            "::1",
            "::ffff:10.0.0.1",
            "fe80::1",
            "a.internal",
            "backend-0001.very-long-domain.internal",
            "backend-0001.very-long-domain.internal2",
            "backend-0002.very-long-domain.internal",
        ];
        let mk = |addr: &str, port| Instance {
            id: format!("{addr}-{port}"),
            name: "web".into(),
            node: "n".into(),
            address: addr.into(),
            port,
            tags: vec![],
            meta: BTreeMap::new(),
            status: Status::Passing,
        };
        let all: Vec<Instance> = addresses
            .iter()
            .flat_map(|a| [mk(a, 80), mk(a, 8080)])
            .collect();
        for a in &all {
            for b in &all {
                let (pa, pb) = (a.sort_prefix(), b.sort_prefix());
                if pa != pb {
                    assert_eq!(pa.cmp(&pb), a.sort_key().cmp(&b.sort_key()), "{a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn addresses_are_checked() {
        assert!(check_address("10.0.0.5").is_ok());
        assert!(check_address("::1").is_ok());
        assert!(check_address("web-1.internal").is_ok());
        assert!(check_address("").is_err());
        assert!(check_address("evil; rm -rf /").is_err());
        assert!(check_address("a b").is_err());
        assert!(check_address("-x.y").is_err());
        // nginx reads `unix:PORT` as a socket path.
        assert!(check_address("unix").is_err());
        assert!(check_address("UNIX").is_err());
        assert!(check_address("unix.internal").is_ok());
    }

    #[test]
    fn one_line_escapes_control_characters_and_cuts() {
        assert_eq!(one_line("bad x\nFORGED\u{1}", 100), "bad x\\nFORGED\\u{1}");
        let long = "a".repeat(5000);
        assert_eq!(one_line(&long, 10), "aaaaaaaaaa… (5000 bytes)");
        assert_eq!(one_line("é", 1), "é");
    }

    #[test]
    fn ports_are_checked() {
        assert_eq!(check_port(80), Ok(80));
        assert!(check_port(0).is_err());
        assert!(check_port(65536).is_err());
        assert!(check_port(-1).is_err());
    }
}
