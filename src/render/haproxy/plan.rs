//! Which Runtime API commands turn the config HAProxy runs into the new one, or why only a
//! reload can. Pure: two parsed configs in, a [`Plan`] out.
//!
//! The Runtime API changes servers, nothing else, so the plan is `Runtime` only when every
//! section is the same but for `server` lines inside existing backends (or listens), and
//! each server change is one HAProxy 2.6 makes (measured):
//!
//! - the backend balances dynamically: not `static-rr`, and hashing (`source`, `uri`,
//!   `url_param`, `hdr`, `rdp-cookie`, `hash`) only with `hash-type consistent`;
//! - an added server passes every option on `add server`, because a dynamic server inherits
//!   no `default-server`: so no `default-server` may apply to the backend, and every option
//!   must be one HAProxy accepts there (not `cookie`, `resolvers`, `init-addr`, `redir`,
//!   `namespace`, ...; an option this module does not know counts as refused);
//! - addresses are `IP:PORT` (or `[IPv6]:PORT`): a name would be resolved by HAProxy, and
//!   `set server addr` takes addresses only;
//! - a server named by a `track` or a `use-server` cannot be deleted; a tracking server is
//!   not added at runtime;
//! - an existing server may change its address, port and weight (`set server`); any other
//!   option change reloads.
//!
//! Words are checked to be safe on the CLI (`;` separates commands there, and catalog data
//! reaches these lines): a server whose name, address or options hold anything but plain
//! characters is reloaded, never sent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use super::cfg::{HaproxyConfig, Section, Server};

/// What it takes to go from one config to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// These commands, in order (possibly none: the configs differ only in comments).
    Runtime(Vec<Change>),
    /// Only a reload can, and why.
    Reload(String),
}

/// One server change the Runtime API makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `add server`, then health checks on, then ready.
    Add { backend: String, server: Target },
    /// Maintenance, then `del server` (retried while connections are attached).
    Remove { backend: String, name: String },
    /// A server HAProxy still has (in maintenance, on its way out) made ready again as the
    /// line says: address and weight set, health checks restarted.
    Ready { backend: String, server: Target },
    /// `set server ... addr/port`, `set server ... weight`.
    Set {
        backend: String,
        name: String,
        addr: Option<SocketAddr>,
        weight: Option<u32>,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Add { backend, server } => {
                write!(f, "+{backend}/{} {}", server.name, server.addr)
            }
            Change::Remove { backend, name } => write!(f, "-{backend}/{name}"),
            Change::Ready { backend, server } => {
                write!(f, "^{backend}/{} {}", server.name, server.addr)
            }
            Change::Set {
                backend,
                name,
                addr,
                weight,
            } => {
                write!(f, "~{backend}/{name}")?;
                if let Some(a) = addr {
                    write!(f, " addr {a}")?;
                }
                if let Some(w) = weight {
                    write!(f, " weight {w}")?;
                }
                Ok(())
            }
        }
    }
}

/// A server line the Runtime API can add as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// Every option of the line, as written (`weight` included), for `add server`.
    pub options: Vec<String>,
    /// `weight`, 1 when not given.
    pub weight: u32,
    /// Health checks are on (`check`): start it down, up after its first passing checks.
    pub check: bool,
}

impl Target {
    /// The options other than `weight N`, which `set server` can change.
    pub fn options_but_weight(&self) -> Vec<&str> {
        without_weight(&self.options)
    }
}

/// Server options without `weight N`.
pub fn without_weight(options: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut it = options.iter();
    while let Some(o) = it.next() {
        if o == "weight" {
            it.next();
            continue;
        }
        out.push(o.as_str());
    }
    out
}

/// Server options HAProxy 2.6 accepts on `add server` (measured), with how many words follow
/// each. Anything else, known to be refused or unknown here, reloads.
const DYNAMIC_OPTIONS: &[(&str, usize)] = &[
    ("check", 0),
    ("backup", 0),
    ("no-backup", 0),
    ("send-proxy", 0),
    ("send-proxy-v2", 0),
    ("no-send-proxy", 0),
    ("no-send-proxy-v2", 0),
    ("check-send-proxy", 0),
    ("tfo", 0),
    ("no-tfo", 0),
    ("enabled", 0),
    ("ssl", 0),
    ("no-ssl", 0),
    ("check-ssl", 0),
    ("no-ssl-reuse", 0),
    ("allow-0rtt", 0),
    ("check-via-socks4", 0),
    ("inter", 1),
    ("fastinter", 1),
    ("downinter", 1),
    ("rise", 1),
    ("fall", 1),
    ("weight", 1),
    ("maxconn", 1),
    ("minconn", 1),
    ("maxqueue", 1),
    ("slowstart", 1),
    ("on-error", 1),
    ("on-marked-down", 1),
    ("on-marked-up", 1),
    ("observe", 1),
    ("error-limit", 1),
    ("port", 1),
    ("addr", 1),
    ("id", 1),
    ("pool-max-conn", 1),
    ("pool-purge-delay", 1),
    ("pool-low-conn", 1),
    ("ws", 1),
    ("proto", 1),
    ("alpn", 1),
    ("check-proto", 1),
    ("check-alpn", 1),
    ("check-sni", 1),
    ("sni", 1),
    ("verify", 1),
    ("verifyhost", 1),
    ("ca-file", 1),
    ("crl-file", 1),
    ("crt", 1),
    ("ciphers", 1),
    ("ciphersuites", 1),
    ("ssl-min-ver", 1),
    ("ssl-max-ver", 1),
    ("proxy-v2-options", 1),
];

/// Options HAProxy 2.6 refuses on a dynamic server (measured), for a precise reason.
const REFUSED_OPTIONS: &[&str] = &[
    "cookie",
    "resolvers",
    "resolve-prefer",
    "resolve-net",
    "resolve-opts",
    "init-addr",
    "redir",
    "namespace",
    "non-stick",
    "stick",
    "tcp-ut",
    "max-reuse",
    "log-proto",
    "socks4",
    "no-check",
];

/// The plan from `old` (what HAProxy runs) to `new`.
pub fn plan(old: &HaproxyConfig, new: &HaproxyConfig) -> Plan {
    match changes(old, new) {
        Ok(c) => Plan::Runtime(c),
        Err(why) => Plan::Reload(why),
    }
}

fn changes(old: &HaproxyConfig, new: &HaproxyConfig) -> Result<Vec<Change>, String> {
    if old.conditional || new.conditional {
        return Err("the config uses .if blocks: which lines count is HAProxy's decision".into());
    }
    same_outline(old, new)?;
    let mut out = Vec::new();
    for (o, n) in old.sections.iter().zip(&new.sections) {
        if o.servers == n.servers {
            continue;
        }
        if !n.is_proxy_with_servers() {
            if without_lines(&o.servers) != without_lines(&n.servers) {
                return Err(format!("the servers of {} changed", n.title()));
            }
            continue;
        }
        out.extend(proxy_changes(old, o, new, n)?);
    }
    Ok(out)
}

/// The same sections in the same order, with the same lines but for `server` lines.
fn same_outline(old: &HaproxyConfig, new: &HaproxyConfig) -> Result<(), String> {
    let titles = |c: &HaproxyConfig| -> Vec<(String, Vec<String>)> {
        c.sections
            .iter()
            .map(|s| (s.kind.clone(), s.args.clone()))
            .collect()
    };
    let (o, n) = (titles(old), titles(new));
    if o != n {
        let added: Vec<String> = new
            .sections
            .iter()
            .filter(|s| !o.contains(&(s.kind.clone(), s.args.clone())))
            .map(Section::title)
            .collect();
        let gone: Vec<String> = old
            .sections
            .iter()
            .filter(|s| !n.contains(&(s.kind.clone(), s.args.clone())))
            .map(Section::title)
            .collect();
        return Err(match (added.first(), gone.first()) {
            (Some(a), _) => format!("{a} is new"),
            (None, Some(g)) => format!("{g} is gone"),
            (None, None) => "the sections changed order".into(),
        });
    }
    for (o, n) in old.sections.iter().zip(&new.sections) {
        if o.lines != n.lines {
            let first = n
                .lines
                .iter()
                .find(|l| !o.lines.contains(l))
                .or_else(|| o.lines.iter().find(|l| !n.lines.contains(l)));
            return Err(match first {
                Some(l) => format!("{} changed: {}", n.title(), l.join(" ")),
                None => format!("{} changed the order of its lines", n.title()),
            });
        }
    }
    Ok(())
}

fn without_lines(servers: &[Server]) -> Vec<(&str, &str, &[String])> {
    servers
        .iter()
        .map(|s| (s.name.as_str(), s.address.as_str(), s.options.as_slice()))
        .collect()
}

/// The changes inside one backend (same header and lines in both configs).
fn proxy_changes(
    old_cfg: &HaproxyConfig,
    old: &Section,
    new_cfg: &HaproxyConfig,
    new: &Section,
) -> Result<Vec<Change>, String> {
    let backend = new.name().unwrap_or_default().to_string();
    if !plain_name(&backend) {
        return Err(format!(
            "{}: the name is not plain enough to send on the CLI",
            new.title()
        ));
    }
    let by_name = |s: &Section| -> Result<BTreeMap<String, Server>, String> {
        let mut m = BTreeMap::new();
        for srv in &s.servers {
            if m.insert(srv.name.clone(), srv.clone()).is_some() {
                return Err(format!("{} names server {} twice", s.title(), srv.name));
            }
        }
        Ok(m)
    };
    let (before, after) = (by_name(old)?, by_name(new)?);
    if before
        .iter()
        .map(|(n, s)| (n, &s.address, &s.options))
        .eq(after.iter().map(|(n, s)| (n, &s.address, &s.options)))
    {
        // Only the order of the lines moved: nothing HAProxy needs to hear about.
        return Ok(Vec::new());
    }
    dynamic_balance(new_cfg, new)?;
    let mut out = Vec::new();
    for name in before.keys().filter(|n| !after.contains_key(*n)) {
        removable(old_cfg, old, name)?;
        removable(new_cfg, new, name)?;
        out.push(Change::Remove {
            backend: backend.clone(),
            name: name.clone(),
        });
    }
    for (name, srv) in &after {
        match before.get(name) {
            None => out.push(Change::Add {
                backend: backend.clone(),
                server: addable(new_cfg, new, srv)?,
            }),
            Some(was) if was.address == srv.address && was.options == srv.options => {}
            Some(was) => {
                let (a, b) = (target(was, new)?, target(srv, new)?);
                if a.options_but_weight() != b.options_but_weight() {
                    return Err(format!(
                        "server {backend}/{name} changed options other than its address and weight (line {})",
                        srv.line
                    ));
                }
                out.push(Change::Set {
                    backend: backend.clone(),
                    name: name.clone(),
                    addr: (a.addr != b.addr).then_some(b.addr),
                    weight: (a.weight != b.weight).then_some(b.weight),
                });
            }
        }
    }
    Ok(out)
}

/// Whether servers can be added to, removed from or reweighted in `proxy` at runtime.
pub fn dynamic_balance(cfg: &HaproxyConfig, proxy: &Section) -> Result<(), String> {
    let defaults = cfg.defaults_of(proxy);
    let setting = |key: &str| -> Option<Vec<String>> {
        proxy
            .directives(key)
            .last()
            .or_else(|| defaults.and_then(|d| d.directives(key).last()))
            .map(<[String]>::to_vec)
    };
    let balance = setting("balance").unwrap_or_default();
    let algo = balance.first().map(String::as_str).unwrap_or("roundrobin");
    let hashing = matches!(algo, "source" | "uri" | "url_param" | "rdp-cookie" | "hash")
        || algo.starts_with("hdr(")
        || algo.starts_with("rdp-cookie(");
    let consistent =
        setting("hash-type").is_some_and(|h| h.first().is_some_and(|m| m == "consistent"));
    if algo == "static-rr" {
        return Err(format!(
            "{} balances static-rr: HAProxy adds servers only with a dynamic balance",
            proxy.title()
        ));
    }
    if hashing && !consistent {
        return Err(format!(
            "{} hashes ({algo}) without hash-type consistent: HAProxy adds servers only with a dynamic balance",
            proxy.title()
        ));
    }
    Ok(())
}

/// Whether `add server` can create `srv` in `proxy` exactly as the line says.
pub fn addable(cfg: &HaproxyConfig, proxy: &Section, srv: &Server) -> Result<Target, String> {
    let inherited = proxy.directives("default-server").next().is_some()
        || cfg
            .defaults_of(proxy)
            .is_some_and(|d| d.directives("default-server").next().is_some());
    if inherited {
        return Err(format!(
            "{} has a default-server, which a server added at runtime would not inherit: put its options on each server line",
            proxy.title()
        ));
    }
    let t = target(srv, proxy)?;
    if srv.options.iter().any(|o| o == "track") {
        return Err(format!(
            "server {}/{} tracks another server (line {})",
            proxy.name().unwrap_or_default(),
            srv.name,
            srv.line
        ));
    }
    Ok(t)
}

/// Whether `del server` can remove `name` from `proxy`: nothing tracks it or routes to it by
/// name.
pub fn removable(cfg: &HaproxyConfig, proxy: &Section, name: &str) -> Result<(), String> {
    let backend = proxy.name().unwrap_or_default();
    let full = format!("{backend}/{name}");
    if !plain_name(name) || !plain_name(backend) {
        return Err(format!(
            "server {full}: the name is not plain enough to send on the CLI"
        ));
    }
    for s in cfg.sections.iter().filter(|s| s.is_proxy_with_servers()) {
        for other in &s.servers {
            let mut opts = other.options.iter();
            while let Some(o) = opts.next() {
                if o != "track" {
                    continue;
                }
                let tracked = opts.next().map(String::as_str).unwrap_or_default();
                if tracked == full || (s.name() == Some(backend) && tracked == name) {
                    return Err(format!(
                        "server {full} is tracked by {}/{} (line {}), so HAProxy cannot delete it",
                        s.name().unwrap_or_default(),
                        other.name,
                        other.line
                    ));
                }
            }
        }
    }
    if proxy
        .directives("use-server")
        .any(|args| args.first().is_some_and(|s| s == name))
    {
        return Err(format!(
            "{} routes to server {name} by name (use-server), so HAProxy cannot delete it",
            proxy.title()
        ));
    }
    Ok(())
}

/// Reads a server line as the Runtime API would take it.
fn target(srv: &Server, proxy: &Section) -> Result<Target, String> {
    let at = || {
        format!(
            "server {}/{} (line {})",
            proxy.name().unwrap_or_default(),
            srv.name,
            srv.line
        )
    };
    if !plain_name(&srv.name) {
        return Err(format!(
            "{}: the name is not plain enough to send on the CLI",
            at()
        ));
    }
    let addr = endpoint(&srv.address).ok_or_else(|| {
        format!(
            "{}: {:?} is not IP:PORT (names and port ranges need a reload)",
            at(),
            srv.address
        )
    })?;
    let mut weight = 1;
    let mut check = false;
    let mut it = srv.options.iter();
    while let Some(o) = it.next() {
        if !plain_word(o) {
            return Err(format!("{}: option {o:?} cannot be sent on the CLI", at()));
        }
        if REFUSED_OPTIONS.contains(&o.as_str()) {
            return Err(format!(
                "{}: HAProxy refuses `{o}` on a server added at runtime",
                at()
            ));
        }
        if o == "track" || o == "disabled" || o.starts_with("agent-") {
            // Handled by the caller (track) or never added at runtime: a disabled server
            // starts in maintenance, an agent needs `enable agent`.
            if o == "track" {
                let _ = it.next();
                continue;
            }
            return Err(format!("{}: `{o}` is not applied at runtime", at()));
        }
        let Some((_, arity)) = DYNAMIC_OPTIONS.iter().find(|(k, _)| *k == o) else {
            return Err(format!(
                "{}: rewire does not know whether HAProxy accepts `{o}` on a server added at runtime",
                at()
            ));
        };
        let args: Vec<&String> = it.by_ref().take(*arity).collect();
        if args.len() != *arity {
            return Err(format!("{}: option `{o}` lacks its value", at()));
        }
        if let Some(a) = args.iter().find(|a| !plain_word(a)) {
            return Err(format!(
                "{}: option `{o} {a}` cannot be sent on the CLI",
                at()
            ));
        }
        match o.as_str() {
            "weight" => {
                weight = args[0]
                    .parse()
                    .map_err(|_| format!("{}: weight {:?} is not a number", at(), args[0]))?;
            }
            "check" => check = true,
            _ => {}
        }
    }
    Ok(Target {
        name: srv.name.clone(),
        addr,
        options: srv.options.clone(),
        weight,
        check,
    })
}

/// `IP:PORT` or `[IPv6]:PORT`, nothing HAProxy would resolve or offset.
pub fn endpoint(address: &str) -> Option<SocketAddr> {
    if address.starts_with('[') || address.chars().filter(|c| *c == ':').count() == 1 {
        let a: SocketAddr = address.parse().ok()?;
        (a.port() != 0).then_some(a)
    } else {
        None
    }
}

/// Server names as HAProxy takes them and the CLI cannot misread.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A word the CLI passes through unchanged: no blanks, quotes, escapes, `;` or `#`.
fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_graphic() && !matches!(c, ';' | '"' | '\'' | '\\' | '#' | '$' | '`')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "\
global
    maxconn 4096
defaults
    mode http
frontend http
    bind :80
    default_backend be_web
backend be_web
    balance roundrobin
    option httpchk
    server web-1 10.0.0.1:8080 check inter 2s fall 3 rise 2
    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2
";

    fn plan_of(old: &str, new: &str) -> Plan {
        plan(&HaproxyConfig::parse(old), &HaproxyConfig::parse(new))
    }

    fn reload_reason(old: &str, new: &str) -> String {
        match plan_of(old, new) {
            Plan::Reload(why) => why,
            other => panic!("expected a reload, got {other:?}"),
        }
    }

    fn with_server(line: &str) -> String {
        format!("{BASE}    {line}\n")
    }

    #[test]
    fn identical_configs_need_nothing() {
        assert_eq!(plan_of(BASE, BASE), Plan::Runtime(vec![]));
        let commented = BASE.replace("maxconn 4096", "maxconn 4096  # max");
        assert_eq!(plan_of(BASE, &commented), Plan::Runtime(vec![]));
    }

    #[test]
    fn a_new_server_line_is_added_with_every_option() {
        let new = with_server("server web-3 10.0.0.3:8080 check inter 2s fall 3 rise 2 weight 5");
        let Plan::Runtime(c) = plan_of(BASE, &new) else {
            panic!()
        };
        assert_eq!(
            c,
            [Change::Add {
                backend: "be_web".into(),
                server: Target {
                    name: "web-3".into(),
                    addr: "10.0.0.3:8080".parse().unwrap(),
                    options: [
                        "check", "inter", "2s", "fall", "3", "rise", "2", "weight", "5"
                    ]
                    .map(String::from)
                    .to_vec(),
                    weight: 5,
                    check: true,
                }
            }]
        );
        assert_eq!(c[0].to_string(), "+be_web/web-3 10.0.0.3:8080");
    }

    #[test]
    fn a_gone_server_line_is_removed() {
        let new = BASE.replace(
            "    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2\n",
            "",
        );
        assert_eq!(
            plan_of(BASE, &new),
            Plan::Runtime(vec![Change::Remove {
                backend: "be_web".into(),
                name: "web-2".into()
            }])
        );
        // The last server may go too: an empty backend is valid (503).
        let empty = new.replace(
            "    server web-1 10.0.0.1:8080 check inter 2s fall 3 rise 2\n",
            "",
        );
        assert!(matches!(plan_of(BASE, &empty), Plan::Runtime(c) if c.len() == 2));
    }

    #[test]
    fn address_port_and_weight_changes_are_set() {
        let new = BASE
            .replace(
                "10.0.0.2:8080 check inter 2s",
                "10.0.0.9:9090 check inter 2s",
            )
            .replace(
                "fall 3 rise 2\n    server web-2",
                "fall 3 rise 2 weight 4\n    server web-2",
            );
        let Plan::Runtime(c) = plan_of(BASE, &new) else {
            panic!("{:?}", plan_of(BASE, &new))
        };
        assert_eq!(
            c,
            [
                Change::Set {
                    backend: "be_web".into(),
                    name: "web-1".into(),
                    addr: None,
                    weight: Some(4)
                },
                Change::Set {
                    backend: "be_web".into(),
                    name: "web-2".into(),
                    addr: Some("10.0.0.9:9090".parse().unwrap()),
                    weight: None
                },
            ]
        );
        assert_eq!(c[0].to_string(), "~be_web/web-1 weight 4");
    }

    #[test]
    fn reordered_server_lines_need_nothing() {
        let new = BASE
            .replace("web-1 10.0.0.1", "web-X 10.0.0.X")
            .replace("web-2 10.0.0.2", "web-1 10.0.0.1")
            .replace("web-X 10.0.0.X", "web-2 10.0.0.2");
        assert_eq!(plan_of(BASE, &new), Plan::Runtime(vec![]));
    }

    #[test]
    fn ipv6_endpoints_are_eligible() {
        let new = with_server("server v6 [fd00::5]:8080");
        assert!(matches!(plan_of(BASE, &new), Plan::Runtime(c) if c.len() == 1));
    }

    // ---- every reason to reload

    #[test]
    fn a_new_backend_reloads() {
        let new = format!("{BASE}backend be_api\n    server a 10.0.1.1:80\n");
        assert_eq!(reload_reason(BASE, &new), "backend be_api is new");
        assert_eq!(reload_reason(&new, BASE), "backend be_api is gone");
    }

    #[test]
    fn a_changed_setting_reloads() {
        let new = BASE.replace("maxconn 4096", "maxconn 100");
        assert_eq!(reload_reason(BASE, &new), "global changed: maxconn 100");
        let new = BASE.replace("    option httpchk\n", "");
        assert_eq!(
            reload_reason(BASE, &new),
            "backend be_web changed: option httpchk"
        );
        let new = BASE.replace("bind :80", "bind :81");
        assert_eq!(reload_reason(BASE, &new), "frontend http changed: bind :81");
    }

    #[test]
    fn reordered_sections_reload() {
        let a = "backend a\nbackend b\n";
        let b = "backend b\nbackend a\n";
        assert_eq!(reload_reason(a, b), "the sections changed order");
    }

    #[test]
    fn static_rr_reloads() {
        let old = BASE.replace("balance roundrobin", "balance static-rr");
        let new = format!("{old}    server web-3 10.0.0.3:8080\n");
        assert!(
            reload_reason(&old, &new).contains("static-rr"),
            "{}",
            reload_reason(&old, &new)
        );
    }

    #[test]
    fn hashing_without_consistent_hash_type_reloads() {
        for algo in [
            "source",
            "uri",
            "url_param id",
            "hdr(host)",
            "rdp-cookie",
            "hash path",
        ] {
            let old = BASE.replace("balance roundrobin", &format!("balance {algo}"));
            let new = format!("{old}    server web-3 10.0.0.3:8080\n");
            assert!(
                reload_reason(&old, &new).contains("hash-type consistent"),
                "{algo}"
            );
            let old = old.replace("option httpchk", "option httpchk\n    hash-type consistent");
            let new = format!("{old}    server web-3 10.0.0.3:8080\n");
            assert!(
                matches!(plan_of(&old, &new), Plan::Runtime(_)),
                "{algo} consistent"
            );
        }
    }

    #[test]
    fn balance_and_hash_type_come_from_defaults_too() {
        let old = BASE
            .replace("    balance roundrobin\n", "")
            .replace("mode http", "mode http\n    balance source");
        let new = format!("{old}    server web-3 10.0.0.3:8080\n");
        assert!(reload_reason(&old, &new).contains("hash-type consistent"));
        let old = old.replace("balance source", "balance source\n    hash-type consistent");
        let new = format!("{old}    server web-3 10.0.0.3:8080\n");
        assert!(matches!(plan_of(&old, &new), Plan::Runtime(_)));
    }

    #[test]
    fn a_default_server_reloads_additions_only() {
        for place in ["mode http", "option httpchk"] {
            let old = BASE.replace(
                place,
                &format!("{place}\n    default-server check inter 2s"),
            );
            let new = format!("{old}    server web-3 10.0.0.3:8080\n");
            assert!(
                reload_reason(&old, &new).contains("default-server"),
                "{place}"
            );
            // Removing needs nothing inherited.
            let fewer = old.replace(
                "    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2\n",
                "",
            );
            assert!(matches!(plan_of(&old, &fewer), Plan::Runtime(_)), "{place}");
        }
    }

    #[test]
    fn options_refused_on_dynamic_servers_reload() {
        for opt in [
            "cookie c1",
            "resolvers dns",
            "init-addr last",
            "redir http://x",
            "namespace ns",
            "non-stick",
            "resolve-prefer ipv4",
            "tcp-ut 10s",
            "max-reuse 1",
            "socks4 1.2.3.4:1080",
        ] {
            let new = with_server(&format!("server web-3 10.0.0.3:8080 {opt}"));
            let why = reload_reason(BASE, &new);
            assert!(why.contains("refuses"), "{opt}: {why}");
        }
    }

    #[test]
    fn unknown_disabled_and_agent_options_reload() {
        for opt in ["frobnicate 3", "disabled", "agent-check agent-port 9"] {
            let new = with_server(&format!("server web-3 10.0.0.3:8080 {opt}"));
            let why = reload_reason(BASE, &new);
            assert!(why.contains("web-3"), "{opt}: {why}");
        }
        let new = with_server("server web-3 10.0.0.3:8080 inter");
        assert!(reload_reason(BASE, &new).contains("lacks its value"));
        let new = with_server("server web-3 10.0.0.3:8080 weight heavy");
        assert!(reload_reason(BASE, &new).contains("not a number"));
    }

    #[test]
    fn addresses_other_than_ip_and_port_reload() {
        for addr in [
            "web.internal:8080",
            "10.0.0.3",
            "10.0.0.3:8080-8090",
            "10.0.0.3:+1",
            "ipv4@10.0.0.3:8080",
            "unix@/run/x.sock",
            "10.0.0.3:0",
            "fd00::5:8080",
            "${ADDR}:80",
        ] {
            let new = with_server(&format!("server web-3 {addr}"));
            let why = reload_reason(BASE, &new);
            assert!(why.contains("IP:PORT"), "{addr}: {why}");
        }
        let moved = BASE.replace("10.0.0.2:8080", "web2.internal:8080");
        assert!(reload_reason(BASE, &moved).contains("IP:PORT"));
    }

    #[test]
    fn words_unsafe_on_the_cli_reload() {
        let new = with_server("server web-3 10.0.0.3:8080 sni str(a;b)");
        assert!(reload_reason(BASE, &new).contains("cannot be sent on the CLI"));
        let new = with_server("server \"w 3\" 10.0.0.3:8080");
        assert!(reload_reason(BASE, &new).contains("not plain enough"));
        let old = with_server("server w;3 10.0.0.3:8080");
        assert!(reload_reason(&old, BASE).contains("not plain enough"));
        let odd = BASE.replace("backend be_web", "backend be;web");
        let new = format!("{odd}    server web-3 10.0.0.3:8080\n");
        assert!(reload_reason(&odd, &new).contains("not plain enough"));
    }

    #[test]
    fn tracking_servers_are_not_added_and_tracked_ones_not_deleted() {
        let new = with_server("server web-3 10.0.0.3:8080 track be_web/web-1");
        assert!(reload_reason(BASE, &new).contains("tracks another server"));
        let old = with_server("server web-3 10.0.0.3:8080 track web-2");
        let new = old.replace(
            "    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2\n",
            "",
        );
        assert!(reload_reason(&old, &new).contains("tracked by be_web/web-3"));
        let other = format!("{BASE}backend be_b\n    server x 10.0.5.1:80 track be_web/web-2\n");
        let new = other.replace(
            "    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2\n",
            "",
        );
        assert!(reload_reason(&other, &new).contains("tracked by be_b/x"));
    }

    #[test]
    fn use_server_blocks_deletion() {
        let old = BASE.replace(
            "option httpchk",
            "option httpchk\n    use-server web-2 if { path_beg /two }",
        );
        let new = old.replace(
            "    server web-2 10.0.0.2:8080 check inter 2s fall 3 rise 2\n",
            "",
        );
        assert!(reload_reason(&old, &new).contains("use-server"));
    }

    #[test]
    fn other_option_changes_on_an_existing_server_reload() {
        let new = BASE.replace(
            "10.0.0.1:8080 check inter 2s",
            "10.0.0.1:8080 check inter 5s",
        );
        assert!(reload_reason(BASE, &new).contains("other than its address and weight"));
    }

    #[test]
    fn a_duplicate_server_name_reloads() {
        let new = with_server("server web-1 10.0.0.7:8080");
        assert!(reload_reason(BASE, &new).contains("twice"));
    }

    #[test]
    fn server_changes_outside_backends_reload() {
        let old = format!("{BASE}ring r\n    server log 10.0.9.1:514\n");
        let new = old.replace("10.0.9.1:514", "10.0.9.2:514");
        assert_eq!(reload_reason(&old, &new), "the servers of ring r changed");
    }

    #[test]
    fn conditional_configs_reload() {
        let old = format!("{BASE}.if defined(X)\n.endif\n");
        let new = format!("{old}    server web-3 10.0.0.3:8080\n");
        assert!(reload_reason(&old, &new).contains(".if"));
    }

    #[test]
    fn listen_sections_take_runtime_changes() {
        let old = "listen l\n    bind :80\n    server a 10.0.0.1:80\n";
        let new = "listen l\n    bind :80\n    server a 10.0.0.1:80\n    server b 10.0.0.2:80\n";
        assert!(matches!(plan_of(old, new), Plan::Runtime(c) if c.len() == 1));
    }

    #[test]
    fn endpoints_are_ip_and_port_only() {
        assert_eq!(
            endpoint("10.0.0.1:80"),
            Some("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(endpoint("[::1]:80"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(endpoint("::1:80"), None);
        assert_eq!(endpoint("localhost:80"), None);
        assert_eq!(endpoint(""), None);
    }
}
