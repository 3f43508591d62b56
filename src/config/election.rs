//! `[[election]]`: one holder at a time among the rewire processes that share a catalog.
//!
//! The name becomes a catalog key and a file name, so it passes the service-name check. The
//! `service` it names must be a `[[service]]` of this file: its health gates running for leader
//! and it gives the default published value (its id, address and port). A `job` names a
//! `[[job]]` with a health command instead: its health gates the same way, and the default
//! value comes from the `[[service]]` reporting that job's health, if any (see [`Gate`]).

use std::time::Duration;

use super::walker::{Tbl, Walker};
use super::{AddressSpec, ElectionConfig, Gate, JobConfig, LeaderValueSpec, ServiceConfig};
use crate::model::{check_address, check_name};

/// Default term length: a holder that stops renewing is replaced about this long after.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default Consul lock delay (Consul's own default is 15 s).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(5);
/// Hooks (`on_elected`, `on_demoted`, `on_change`) get this long unless they say otherwise.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

const ELECTION_KEYS: &[&str] = &[
    "name",
    "ttl",
    "lock_delay",
    "value",
    "service",
    "job",
    "on_elected",
    "on_demoted",
    "on_change",
];

impl Walker<'_> {
    pub(super) fn elections(
        &mut self,
        root: &Tbl,
        services: &[ServiceConfig],
        jobs: &[JobConfig],
    ) -> Vec<ElectionConfig> {
        let mut out: Vec<ElectionConfig> = Vec::new();
        for t in self.tables(root, "election") {
            let name = self.required_string(&t, "name", "name = \"primary\"");
            if let Some(n) = &name {
                if let Err(e) = check_name(n.get_ref()) {
                    self.error(n.span(), format!("election name {e}"), "");
                } else if out.iter().any(|o| o.name == *n.get_ref()) {
                    self.error(
                        n.span(),
                        format!("a second [[election]] named {:?}", n.get_ref()),
                        "give each election its own name",
                    );
                }
            }
            let ttl = self.duration(&t, "ttl").unwrap_or(DEFAULT_TTL);
            if ttl < Duration::from_secs(1) {
                let span = t.key_span("ttl").unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!(
                        "`ttl` ({}) is shorter than 1s",
                        humantime::format_duration(ttl)
                    ),
                    "a holder renews every ttl/3; etcd leases and Consul checks count in seconds: use 2s or more",
                );
            }
            let lock_delay = self
                .duration(&t, "lock_delay")
                .unwrap_or(DEFAULT_LOCK_DELAY);
            if lock_delay > Duration::from_secs(60) {
                let span = t.key_span("lock_delay").unwrap_or(t.span.clone());
                self.error(span, "`lock_delay` may be at most 60s (Consul's limit)", "");
            }
            let gate = self.string(&t, "service").and_then(|s| {
                if services.iter().any(|svc| svc.name == *s.get_ref()) {
                    Some(Gate::Service(s.into_inner()))
                } else {
                    let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                    self.error(
                        s.span(),
                        format!(
                            "`service` {:?} is not a [[service]] of this file",
                            s.get_ref()
                        ),
                        if known.is_empty() {
                            "add a [[service]] with that name, or remove `service`".to_string()
                        } else {
                            format!("the [[service]] names here: {}", known.join(", "))
                        },
                    );
                    None
                }
            });
            let job_gate = self.string(&t, "job").and_then(|j| {
                match jobs.iter().find(|job| job.name == *j.get_ref()) {
                    Some(job) if job.health.is_some() => Some(Gate::Job(j.into_inner())),
                    Some(_) => {
                        self.error(
                            j.span(),
                            format!("`job` {:?} has no `health` command to gate on", j.get_ref()),
                            "give that [[job]] a `health` command, or remove `job`",
                        );
                        None
                    }
                    None => {
                        let known: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
                        self.error(
                            j.span(),
                            format!("`job` {:?} is not a [[job]] of this file", j.get_ref()),
                            if known.is_empty() {
                                "add a [[job]] with that name and a `health` command, or remove `job`"
                                    .to_string()
                            } else {
                                format!("the [[job]] names here: {}", known.join(", "))
                            },
                        );
                        None
                    }
                }
            });
            let gate = match (gate, job_gate) {
                (Some(_), Some(_)) => {
                    let span = t.key_span("job").unwrap_or(t.span.clone());
                    self.error(
                        span,
                        "an [[election]] takes `service` or `job`, not both",
                        "keep the one whose health should decide who may lead",
                    );
                    None
                }
                (s, j) => s.or(j),
            };
            let value = self.leader_value(&t);
            let on_elected = self.command(&t, "on_elected", HOOK_TIMEOUT);
            let on_demoted = self.command(&t, "on_demoted", HOOK_TIMEOUT);
            let on_change = self.command(&t, "on_change", HOOK_TIMEOUT);
            self.finish(&t, ELECTION_KEYS);
            let Some(name) = name else { continue };
            out.push(ElectionConfig {
                name: name.into_inner(),
                ttl,
                lock_delay,
                value,
                gate,
                on_elected,
                on_demoted,
                on_change,
            });
        }
        out
    }

    /// `value = { id = "...", address = "...", interface = "...", port = N }`, every key optional.
    fn leader_value(&mut self, t: &Tbl) -> LeaderValueSpec {
        let mut spec = LeaderValueSpec::default();
        let Some(v) = self.table(t, "value") else {
            return spec;
        };
        if let Some(id) = self.string(&v, "id") {
            match check_name(id.get_ref()) {
                Ok(()) => spec.id = Some(id.into_inner()),
                Err(e) => self.error(id.span(), format!("value id {e}"), ""),
            }
        }
        let address = self.string(&v, "address");
        let interface = self.interfaces(&v, "interface");
        spec.address = match (address, interface) {
            (Some(a), None) => match check_address(a.get_ref()) {
                Ok(()) => Some(AddressSpec::Literal(a.into_inner())),
                Err(e) => {
                    self.error(a.span(), e.to_string(), "give an IP address or a hostname");
                    None
                }
            },
            (None, Some(i)) => Some(AddressSpec::Interface(i)),
            (None, None) => None,
            (Some(a), Some(_)) => {
                self.error(a.span(), "`address` and `interface` both given", "keep one");
                None
            }
        };
        if let Some(p) = self.integer(&v, "port") {
            match u16::try_from(*p.get_ref()) {
                Ok(port) if port > 0 => spec.port = Some(port),
                _ => self.error(
                    p.span(),
                    format!("port {} is outside 1-65535", p.get_ref()),
                    "",
                ),
            }
        }
        self.finish(&v, &["id", "address", "interface", "port"]);
        spec
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigErrors, Gate, parse_str};

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("/etc/rewire/rewire.toml"), &|_| None)
    }

    #[test]
    fn an_election_takes_its_defaults_and_its_service() {
        let c = parse(
            "[[service]]\nname = \"redis\"\nport = 6379\n\n[[election]]\nname = \"primary\"\nservice = \"redis\"\nttl = \"3s\"\non_elected = [\"redis-cli\", \"replicaof\", \"no\", \"one\"]\n",
        )
        .unwrap();
        let e = &c.elections[0];
        assert_eq!(e.name, "primary");
        assert_eq!(e.ttl.as_secs(), 3);
        assert_eq!(e.lock_delay.as_secs(), 5);
        assert_eq!(e.gate, Some(Gate::Service("redis".into())));
        assert!(e.on_elected.is_some() && e.on_demoted.is_none());
    }

    #[test]
    fn a_job_with_a_health_command_may_gate_an_election() {
        let c = parse(
            "[[job]]\nname = \"db\"\nexec = [\"db\"]\nhealth = [\"db-ping\"]\n\n[[election]]\nname = \"primary\"\njob = \"db\"\n",
        )
        .unwrap();
        assert_eq!(c.elections[0].gate, Some(Gate::Job("db".into())));
        let errs = |text: &str| -> String {
            parse(text)
                .unwrap_err()
                .0
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let all = errs(
            "[[job]]\nname = \"db\"\nexec = [\"db\"]\n\n[[election]]\nname = \"primary\"\njob = \"db\"\n",
        );
        assert!(
            all.contains(":7:7: `job` \"db\" has no `health` command"),
            "{all}"
        );
        let all = errs("[[election]]\nname = \"primary\"\njob = \"nope\"\n");
        assert!(all.contains("`job` \"nope\" is not a [[job]]"), "{all}");
        let all = errs(
            "[[service]]\nname = \"redis\"\nport = 6379\n[[job]]\nname = \"db\"\nexec = [\"db\"]\nhealth = [\"db-ping\"]\n[[election]]\nname = \"p\"\nservice = \"redis\"\njob = \"db\"\n",
        );
        assert!(all.contains("takes `service` or `job`, not both"), "{all}");
    }

    #[test]
    fn election_mistakes_are_reported_with_their_place() {
        let errs: Vec<String> = parse(
            "[[election]]\nname = \"a b\"\nttl = \"500ms\"\nservice = \"nope\"\nvalue = { port = 0 }\nlock_delay = \"2m\"\n\n[[election]]\nttl = \"2s\"\n",
        )
        .unwrap_err()
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
        let all = errs.join("\n");
        assert!(all.contains(":2:8: election name"), "{all}");
        assert!(
            all.contains(":3:1: `ttl` (500ms) is shorter than 1s"),
            "{all}"
        );
        assert!(
            all.contains(":4:11: `service` \"nope\" is not a [[service]]"),
            "{all}"
        );
        assert!(all.contains(":5:18: port 0 is outside 1-65535"), "{all}");
        assert!(all.contains("`lock_delay` may be at most 60s"), "{all}");
        assert!(all.contains("[election[2]] needs `name`"), "{all}");
    }

    #[test]
    fn two_elections_may_not_share_a_name() {
        let e = parse("[[election]]\nname = \"p\"\n[[election]]\nname = \"p\"\n").unwrap_err();
        assert!(e.to_string().contains("a second [[election]] named \"p\""));
    }
}
