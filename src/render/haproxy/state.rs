//! What HAProxy says it runs, and whether that agrees with a config. Pure: the Runtime API's
//! answers (`show servers state`, `show backend`, `show info`) in, typed values out.
//!
//! Agreement, the invariant after every round: every `server` line of a backend is a server
//! HAProxy has, ready (neither in maintenance nor draining), at the same address, port and
//! weight; any other server HAProxy has in that backend is in maintenance, on its way out
//! (`del server` waits until no connection is attached). Health is not part of it: a server
//! the checks marked down is still the one the file describes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::cfg::HaproxyConfig;
use super::plan::{self, Change, Plan};

/// `srv_admin_state` bits (HAProxy's `enum srv_admin`).
const ADMIN_FORCED_MAINT: u32 = 0x01;
/// Every maintenance and drain bit: forced, inherited, configured, resolution; drains.
const ADMIN_NOT_READY: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20;

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_admin_state`: maintenance and drain flags.
    pub admin: u32,
    /// `srv_uweight`: the weight the config or `set weight` gave.
    pub weight: u32,
    /// `srv_check_result`: 0 no check finished yet, 1 neutral, 2 failed, 3 passed,
    /// 4 passed conditionally.
    pub check_result: u32,
}

impl ServerState {
    /// Takes traffic as far as the admin state goes (health aside).
    pub fn ready(&self) -> bool {
        self.admin & ADMIN_NOT_READY == 0
    }

    /// Put in maintenance by hand (`set server ... state maint`): on its way out.
    pub fn in_maintenance(&self) -> bool {
        self.admin & ADMIN_FORCED_MAINT != 0
    }

    /// A health check has finished since the checks started, passed or not.
    pub fn checked(&self) -> bool {
        self.check_result >= 2
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot read HAProxy's `{command}` answer: {detail}")]
pub struct AnswerError {
    pub command: &'static str,
    pub detail: String,
}

/// Parses `show servers state` (format 1: a version line, a `# ` header naming the columns,
/// one line per server). Columns are found by name, so later versions' extra ones are fine.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, AnswerError> {
    let err = |detail: String| AnswerError {
        command: "show servers state",
        detail,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => return Err(err(format!("expected format version 1, got {other:?}"))),
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or_else(|| err("no header line".into()))?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| err(format!("no column {name}")))
    };
    let (be, name, addr, admin, weight, port) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
        col("srv_port")?,
    );
    let check_result = col("srv_check_result").ok();
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .ok_or_else(|| err(format!("short line {line:?}")))
        };
        let num = |i: usize| -> Result<u32, AnswerError> {
            get(i)?
                .parse()
                .map_err(|_| err(format!("not a number in {line:?}")))
        };
        out.push(ServerState {
            backend: get(be)?.to_string(),
            name: get(name)?.to_string(),
            addr: get(addr)?.to_string(),
            port: u16::try_from(num(port)?).map_err(|_| err(format!("bad port in {line:?}")))?,
            admin: num(admin)?,
            weight: num(weight)?,
            check_result: match check_result {
                Some(i) => num(i)?,
                None => 0,
            },
        });
    }
    Ok(out)
}

/// Parses `show backend`: a `# name` header, then one backend per line.
pub fn parse_backends(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// From `show info`: the worker's pid and HAProxy's version.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Info {
    pub pid: Option<u32>,
    /// (major, minor), e.g. (2, 6).
    pub version: Option<(u32, u32)>,
    pub version_text: String,
}

pub fn parse_info(text: &str) -> Info {
    let mut info = Info::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Pid" => info.pid = v.parse().ok(),
            "Version" => {
                info.version_text = v.to_string();
                let mut parts = v.split(|c: char| !c.is_ascii_digit());
                let major = parts.next().and_then(|p| p.parse().ok());
                let minor = parts.next().and_then(|p| p.parse().ok());
                info.version = major.zip(minor);
            }
            _ => {}
        }
    }
    info
}

/// What HAProxy runs: its backends and their servers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observed {
    pub backends: BTreeSet<String>,
    pub servers: Vec<ServerState>,
}

/// One way HAProxy differs from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The config has a backend HAProxy does not.
    MissingBackend(String),
    /// HAProxy has a backend the config does not.
    ExtraBackend(String),
    MissingServer {
        backend: String,
        name: String,
    },
    /// In maintenance or draining while the config lists it.
    NotReady {
        backend: String,
        name: String,
    },
    /// At another address, port or weight than the line says.
    Differs {
        backend: String,
        name: String,
        what: String,
    },
    /// A server the config does not list, and not in maintenance.
    Unexpected {
        backend: String,
        name: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::MissingBackend(b) => write!(f, "HAProxy has no backend {b}"),
            Mismatch::ExtraBackend(b) => write!(f, "HAProxy has a backend {b} the file does not"),
            Mismatch::MissingServer { backend, name } => {
                write!(f, "HAProxy has no server {backend}/{name}")
            }
            Mismatch::NotReady { backend, name } => {
                write!(f, "{backend}/{name} is in maintenance or draining")
            }
            Mismatch::Differs {
                backend,
                name,
                what,
            } => write!(f, "{backend}/{name}: {what}"),
            Mismatch::Unexpected { backend, name } => write!(
                f,
                "HAProxy routes to {backend}/{name}, which the file does not list"
            ),
        }
    }
}

/// How HAProxy compares with a config.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Comparison {
    pub mismatches: Vec<Mismatch>,
    /// Servers the config does not list that are in maintenance: on their way out.
    pub leaving: BTreeSet<(String, String)>,
}

impl Comparison {
    pub fn agrees(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Compares what HAProxy runs with `cfg`'s backends and server lines.
pub fn compare(cfg: &HaproxyConfig, observed: &Observed) -> Comparison {
    let mut out = Comparison::default();
    let proxies: BTreeSet<&str> = cfg
        .sections
        .iter()
        .filter(|s| s.is_proxy_with_servers())
        .filter_map(|s| s.name())
        .collect();
    for b in &proxies {
        if !observed.backends.contains(*b) {
            out.mismatches.push(Mismatch::MissingBackend(b.to_string()));
        }
    }
    for b in &observed.backends {
        if !proxies.contains(b.as_str()) {
            out.mismatches.push(Mismatch::ExtraBackend(b.clone()));
        }
    }
    let mut have: BTreeMap<(&str, &str), &ServerState> = BTreeMap::new();
    for s in &observed.servers {
        have.insert((s.backend.as_str(), s.name.as_str()), s);
    }
    let mut listed: BTreeSet<(&str, &str)> = BTreeSet::new();
    for section in cfg.sections.iter().filter(|s| s.is_proxy_with_servers()) {
        let backend = section.name().unwrap_or_default();
        if !observed.backends.contains(backend) {
            continue;
        }
        for line in &section.servers {
            listed.insert((backend, line.name.as_str()));
            let key = |name: &str| (backend.to_string(), name.to_string());
            let Some(s) = have.get(&(backend, line.name.as_str())) else {
                let (backend, name) = key(&line.name);
                out.mismatches
                    .push(Mismatch::MissingServer { backend, name });
                continue;
            };
            let disabled = line.options.iter().any(|o| o == "disabled");
            if !s.ready() && !disabled {
                let (backend, name) = key(&line.name);
                out.mismatches.push(Mismatch::NotReady { backend, name });
            }
            let mut what = Vec::new();
            if let Some(want) = plan::endpoint(&line.address) {
                let ip: Option<IpAddr> = s.addr.parse().ok();
                if ip != Some(want.ip()) || s.port != want.port() {
                    what.push(format!("at {}:{}, the file says {want}", s.addr, s.port));
                }
            }
            let weight = weight_of(&line.options);
            if s.weight != weight {
                what.push(format!("weight {}, the file says {weight}", s.weight));
            }
            if !what.is_empty() {
                let (backend, name) = key(&line.name);
                out.mismatches.push(Mismatch::Differs {
                    backend,
                    name,
                    what: what.join("; "),
                });
            }
        }
    }
    for s in &observed.servers {
        if listed.contains(&(s.backend.as_str(), s.name.as_str()))
            || !proxies.contains(s.backend.as_str())
        {
            continue;
        }
        if s.in_maintenance() {
            out.leaving.insert((s.backend.clone(), s.name.clone()));
        } else {
            out.mismatches.push(Mismatch::Unexpected {
                backend: s.backend.clone(),
                name: s.name.clone(),
            });
        }
    }
    out
}

/// The `weight` of a server line (1 when not given or unreadable: HAProxy's default).
fn weight_of(options: &[String]) -> u32 {
    options
        .iter()
        .position(|o| o == "weight")
        .and_then(|i| options.get(i + 1))
        .and_then(|w| w.parse().ok())
        .unwrap_or(1)
}

/// The changes that bring HAProxy back to `cfg` after `comparison` found it differs, or why
/// only a reload can.
pub fn repair(cfg: &HaproxyConfig, comparison: &Comparison) -> Plan {
    let mut changes = Vec::new();
    for m in &comparison.mismatches {
        let proxy = |backend: &str| cfg.proxy(backend);
        let change = match m {
            Mismatch::MissingBackend(_) | Mismatch::ExtraBackend(_) => {
                return Plan::Reload(format!("{m}: HAProxy runs another config"));
            }
            Mismatch::MissingServer { backend, name }
            | Mismatch::NotReady { backend, name }
            | Mismatch::Differs { backend, name, .. } => {
                let Some(p) = proxy(backend) else {
                    return Plan::Reload(m.to_string());
                };
                let Some(line) = p.servers.iter().find(|s| &s.name == name) else {
                    return Plan::Reload(m.to_string());
                };
                if let Err(why) = plan::dynamic_balance(cfg, p) {
                    return Plan::Reload(format!("{m}, and {why}"));
                }
                let server = match plan::addable(cfg, p, line) {
                    Ok(server) => server,
                    Err(why) => return Plan::Reload(format!("{m}, and {why}")),
                };
                let backend = backend.clone();
                match m {
                    Mismatch::MissingServer { .. } => Change::Add { backend, server },
                    Mismatch::NotReady { .. } => Change::Ready { backend, server },
                    _ => Change::Set {
                        backend,
                        name: server.name,
                        addr: Some(server.addr),
                        weight: Some(server.weight),
                    },
                }
            }
            Mismatch::Unexpected { backend, name } => {
                let Some(p) = proxy(backend) else {
                    return Plan::Reload(m.to_string());
                };
                if let Err(why) = plan::removable(cfg, p, name) {
                    return Plan::Reload(format!("{m}, and {why}"));
                }
                Change::Remove {
                    backend: backend.clone(),
                    name: name.clone(),
                }
            }
        };
        changes.push(change);
    }
    Plan::Runtime(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6.12 (`show servers state be_web`).
    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be_web 1 web-1 10.0.0.1 2 0 1 1 6 15 3 4 6 0 0 0 - 8080 - 0 0 - - 0
3 be_web 2 web-2 10.0.0.2 0 0 3 3 1 1 0 0 2 0 0 0 - 8080 - 0 0 - - 0
3 be_web 3 old ::1 0 1 1 1 0 1 0 0 0 0 0 0 - 18083 - 0 0 - - 0

";

    const CFG: &str = "backend be_web\n  server web-1 10.0.0.1:8080 check\n  server web-2 10.0.0.2:8080 weight 3\n";

    fn observed() -> Observed {
        Observed {
            backends: ["be_web".to_string()].into(),
            servers: parse_servers_state(STATE).unwrap(),
        }
    }

    #[test]
    fn servers_state_is_read_by_column_name() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[1],
            ServerState {
                backend: "be_web".into(),
                name: "web-2".into(),
                addr: "10.0.0.2".into(),
                port: 8080,
                admin: 0,
                weight: 3,
                check_result: 0,
            }
        );
        assert!(s[0].checked() && !s[1].checked());
        assert!(s[1].ready(), "health down is still ready");
        assert!(!s[2].ready() && s[2].in_maintenance());
        // No servers at all: the version and the header only.
        assert!(
            parse_servers_state(&STATE[..STATE.find("\n3 ").unwrap()])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_state_answer_is_an_error() {
        assert!(parse_servers_state("Unknown command").is_err());
        assert!(parse_servers_state("1\n# be_name\nx\n").is_err());
        assert!(parse_servers_state("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_port\n3 b 1 s 1.1.1.1 2 0 x 80\n").is_err());
    }

    #[test]
    fn backends_and_info_are_read() {
        assert_eq!(
            parse_backends("# name\nbe_web\nbe_static\n\n"),
            ["be_static".to_string(), "be_web".to_string()].into()
        );
        let i = parse_info(
            "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nPid: 20837\n",
        );
        assert_eq!(i.pid, Some(20837));
        assert_eq!(i.version, Some((2, 6)));
        assert_eq!(i.version_text, "2.6.12-1+deb12u4");
        assert_eq!(parse_info("nothing"), Info::default());
    }

    #[test]
    fn a_matching_haproxy_agrees_and_maintenance_servers_are_leaving() {
        let c = compare(&HaproxyConfig::parse(CFG), &observed());
        assert!(c.agrees(), "{:?}", c.mismatches);
        assert_eq!(
            c.leaving,
            [("be_web".to_string(), "old".to_string())].into()
        );
    }

    #[test]
    fn every_kind_of_difference_is_found() {
        let cfg = HaproxyConfig::parse(
            "backend be_web\n  server web-1 10.0.0.9:8080 check\n  server web-2 10.0.0.2:8080 weight 2\n  server web-3 10.0.0.3:80\nbackend be_api\n",
        );
        let mut o = observed();
        o.backends.insert("be_gone".into());
        o.servers[0].admin = 0x08; // drained
        o.servers.push(ServerState {
            backend: "be_web".into(),
            name: "stray".into(),
            addr: "10.0.0.8".into(),
            port: 80,
            admin: 0,
            weight: 1,
            check_result: 0,
        });
        let c = compare(&cfg, &o);
        let text: Vec<String> = c.mismatches.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "HAProxy has no backend be_api",
                "HAProxy has a backend be_gone the file does not",
                "be_web/web-1 is in maintenance or draining",
                "be_web/web-1: at 10.0.0.1:8080, the file says 10.0.0.9:8080",
                "be_web/web-2: weight 3, the file says 2",
                "HAProxy has no server be_web/web-3",
                "HAProxy routes to be_web/stray, which the file does not list",
            ]
        );
    }

    #[test]
    fn ipv6_addresses_compare_as_addresses() {
        let cfg = HaproxyConfig::parse("backend be_web\n  server old [0:0::1]:18083 disabled\n");
        let mut o = observed();
        o.servers.retain(|s| s.name == "old");
        assert!(compare(&cfg, &o).agrees(), "{:?}", compare(&cfg, &o));
    }

    #[test]
    fn server_differences_are_repaired_at_runtime() {
        let cfg = HaproxyConfig::parse(
            "backend be_web\n  server web-1 10.0.0.9:8080 check\n  server web-2 10.0.0.2:8080 weight 3\n  server web-3 10.0.0.3:80\n",
        );
        let mut o = observed();
        o.servers.push(ServerState {
            backend: "be_web".into(),
            name: "stray".into(),
            addr: "10.0.0.8".into(),
            port: 80,
            admin: 0,
            weight: 1,
            check_result: 0,
        });
        let Plan::Runtime(changes) = repair(&cfg, &compare(&cfg, &o)) else {
            panic!()
        };
        let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "~be_web/web-1 addr 10.0.0.9:8080 weight 1",
                "+be_web/web-3 10.0.0.3:80",
                "-be_web/stray"
            ]
        );
        let mut o = observed();
        o.servers[1].admin = 0x01;
        let Plan::Runtime(changes) = repair(&cfg, &compare(&cfg, &o)) else {
            panic!()
        };
        assert!(
            changes
                .iter()
                .any(|c| c.to_string() == "^be_web/web-2 10.0.0.2:8080"),
            "{changes:?}"
        );
    }

    #[test]
    fn a_backend_difference_needs_a_reload() {
        let cfg = HaproxyConfig::parse("backend be_web\nbackend be_api\n");
        let Plan::Reload(why) = repair(&cfg, &compare(&cfg, &observed())) else {
            panic!()
        };
        assert_eq!(
            why,
            "HAProxy has no backend be_api: HAProxy runs another config"
        );
    }

    #[test]
    fn an_ineligible_server_difference_needs_a_reload() {
        let cfg = HaproxyConfig::parse(
            "backend be_web\n  balance static-rr\n  server web-1 10.0.0.1:8080 check\n  server web-2 10.0.0.2:8080 weight 3\n  server web-3 10.0.0.3:80\n",
        );
        let Plan::Reload(why) = repair(&cfg, &compare(&cfg, &observed())) else {
            panic!()
        };
        assert!(why.contains("static-rr"), "{why}");
    }
}
