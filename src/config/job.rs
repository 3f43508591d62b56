//! `[[job]]`: supervised processes beside `[main]`, and `when` (which other job's event starts
//! something) for jobs, `[main]`, `[[task]]` and `[[watch]]`.
//!
//! A `when` that can never fire is refused here, with its location: a name that is neither a
//! job nor `main`, or a cycle in the graph of `when`s (main included). The graph is checked
//! after every section was read ([`Walker::check_jobs`]), because a `when` may name a job
//! declared further down the file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker, suggest};
use super::{CommandSpec, Event, JobConfig, JobHealth, Restart, When};

/// The name `[main]` has in the job graph.
pub const MAIN_JOB: &str = "main";

/// A `when` as written, kept with its location for the cross-section checks.
pub(super) struct WhenRef {
    /// Who waits: a job name, `main`, or a `[[task]]`/`[[watch]]` label (never a graph node).
    pub owner: String,
    /// Whether the owner is a node of the job graph (a job or main).
    pub node: bool,
    pub after: String,
    pub is: Event,
    pub span: Range<usize>,
}

/// `[[service]] job = "NAME"`, with its location.
pub(super) struct ServiceJobRef {
    pub job: String,
    pub span: Range<usize>,
}

const EVENTS: &[(&str, Event)] = &[
    ("started", Event::Started),
    ("healthy", Event::Healthy),
    ("unhealthy", Event::Unhealthy),
    ("exited", Event::Exited),
    ("succeeded", Event::Succeeded),
    ("failed", Event::Failed),
    ("stopping", Event::Stopping),
    ("stopped", Event::Stopped),
];

impl Walker<'_> {
    pub(super) fn jobs(&mut self, root: &Tbl) -> Vec<JobConfig> {
        let mut out: Vec<JobConfig> = Vec::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for t in self.tables(root, "job") {
            let name = self.required_string(&t, "name", "name = \"consul-agent\"");
            if let Some(n) = &name {
                let s = n.get_ref();
                if s.is_empty()
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    self.error(
                        n.span(),
                        format!("job name {s:?} must be letters, digits, '-', '_' or '.'"),
                        "name = \"consul-agent\"",
                    );
                } else if s == MAIN_JOB {
                    self.error(
                        n.span(),
                        "`main` is the name of [main] in the job graph",
                        "choose another name for this job",
                    );
                } else if !seen.insert(s.clone()) {
                    self.error(
                        n.span(),
                        format!("two jobs are named {s:?}"),
                        "job names must be unique",
                    );
                }
            }
            let exec = self
                .required_command(
                    &t,
                    "exec",
                    Duration::MAX,
                    "[\"consul\", \"agent\", \"-config-dir\", \"/etc/consul\"]",
                )
                .map(|c| c.program);
            let restart = self.restart(&t);
            let restart_limit = self.restart_limit(&t);
            let stop_signal = self
                .signal(&t, "stop_signal")
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            let stop_timeout = self
                .duration(&t, "stop_timeout")
                .unwrap_or(Duration::from_secs(10));
            let interval = self
                .duration(&t, "interval")
                .unwrap_or(Duration::from_secs(10));
            if interval.is_zero() {
                let span = t.key_span("interval").unwrap_or(t.span.clone());
                self.error(span, "`interval` must be more than 0", "");
            }
            if t.map.get("health").is_some() {
                self.warn_frantic(&t, "interval", Some(interval));
            }
            let timeout = self.positive_duration(&t, "timeout");
            let health = self.command(&t, "health", timeout.unwrap_or(interval)).map(
                |mut check: CommandSpec| {
                    if let Some(timeout) = timeout {
                        check.timeout = timeout;
                    }
                    JobHealth { check, interval }
                },
            );
            let owner = name
                .as_ref()
                .map(|n| n.get_ref().clone())
                .unwrap_or_default();
            let when = self.when(&t, &owner, true);
            let each = self.boolean(&t, "each").unwrap_or(false);
            if each && when.is_none() && t.map.get("when").is_none() {
                let span = t.key_span("each").unwrap_or(t.span.clone());
                self.error(
                    span,
                    "`each = true` needs a `when`",
                    "when = { after = \"NAME\", is = \"unhealthy\" } says which event re-runs the job",
                );
            }
            self.finish(&t, JOB_KEYS);
            let (Some(name), Some(exec)) = (name, exec) else {
                continue;
            };
            out.push(JobConfig {
                name: name.into_inner(),
                exec,
                restart,
                restart_limit,
                stop_signal,
                stop_timeout,
                health,
                when,
                each,
            });
        }
        out
    }

    pub(super) fn restart(&mut self, t: &Tbl) -> Restart {
        self.choice(
            t,
            "restart",
            &[
                ("never", Restart::Never),
                ("on-failure", Restart::OnFailure),
                ("always", Restart::Always),
            ],
            Restart::Never,
            "restart policy",
            "use \"never\", \"on-failure\" or \"always\"",
        )
    }

    pub(super) fn restart_limit(&mut self, t: &Tbl) -> Option<u32> {
        let n = self.integer(t, "restart_limit")?;
        match u32::try_from(*n.get_ref()) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    n.span(),
                    format!("`restart_limit` {} is not a count", n.get_ref()),
                    "restart_limit = 5 (leave it out for no limit)",
                );
                None
            }
        }
    }

    /// `when = { after = "NAME", is = "EVENT", timeout = "60s" }`; remembered for the graph
    /// checks under `owner` (`node`: a job or main, which can take part in a cycle).
    pub(super) fn when(&mut self, t: &Tbl, owner: &str, node: bool) -> Option<When> {
        let w = self.table(t, "when")?;
        let after = self.required_string(&w, "after", "after = \"consul-agent\"");
        let is = match self.required_string(&w, "is", "is = \"healthy\"") {
            Some(s) => match EVENTS.iter().find(|(n, _)| *n == s.get_ref().as_str()) {
                Some((_, e)) => Some(*e),
                None => {
                    let names: Vec<&str> = EVENTS.iter().map(|(n, _)| *n).collect();
                    self.error(
                        s.span(),
                        format!("unknown event {:?} in `when`", s.get_ref()),
                        format!("use one of: {}", names.join(", ")),
                    );
                    None
                }
            },
            None => None,
        };
        let timeout = self.duration(&w, "timeout");
        if timeout.is_some_and(|d| d.is_zero()) {
            let span = w.key_span("timeout").unwrap_or(w.span.clone());
            self.error(
                span,
                "`when.timeout` must be more than 0",
                "leave it out to wait forever",
            );
        }
        self.finish(&w, &["after", "is", "timeout"]);
        let (after, is) = (after?, is?);
        self.whens.push(WhenRef {
            owner: owner.to_string(),
            node,
            after: after.get_ref().clone(),
            is,
            span: after.span(),
        });
        Some(When {
            after: after.into_inner(),
            is,
            timeout,
        })
    }

    /// `[[service]] job = "NAME"`, remembered for [`Walker::check_jobs`].
    pub(super) fn service_job(&mut self, t: &Tbl) -> Option<String> {
        let job: Spanned<String> = self.string(t, "job")?;
        self.service_jobs.push(ServiceJobRef {
            job: job.get_ref().clone(),
            span: job.span(),
        });
        Some(job.into_inner())
    }

    /// The checks that need every section: `when` names a job or main, the graph has no
    /// cycle, a service's `job` exists.
    pub(super) fn check_jobs(&mut self, jobs: &[JobConfig], has_main: bool) {
        let checked = |name: &str| jobs.iter().any(|j| j.name == name && j.health.is_some());
        let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        if has_main {
            names.push(MAIN_JOB);
        }
        let refs = std::mem::take(&mut self.whens);
        for r in &refs {
            if !names.contains(&r.after.as_str()) {
                let hint = match suggest(&r.after, &names) {
                    Some(s) => format!("did you mean {s:?}? jobs: {}", names.join(", ")),
                    None if names.is_empty() => {
                        "there are no [[job]]s (nor a [main]) to wait for".to_string()
                    }
                    None => format!("jobs: {}", names.join(", ")),
                };
                self.error(
                    r.span.clone(),
                    format!("`when` waits for {:?}, which is not a job", r.after),
                    hint,
                );
            } else if matches!(r.is, Event::Healthy | Event::Unhealthy) && !checked(&r.after) {
                self.error(
                    r.span.clone(),
                    format!(
                        "`when` waits for {:?} to be {}, but it has no `health` command: that event never happens",
                        r.after, r.is
                    ),
                    format!(
                        "give the [[job]] {:?} a `health` command, or wait for \"started\"",
                        r.after
                    ),
                );
            }
        }
        // Cycles: each node has at most one `when`, so following `after` from any node either
        // ends or comes back to a node already on the path.
        let next: BTreeMap<&str, &WhenRef> = refs
            .iter()
            .filter(|r| r.node)
            .map(|r| (r.owner.as_str(), r))
            .collect();
        let mut reported: BTreeSet<&str> = BTreeSet::new();
        for start in next.keys() {
            let mut path: Vec<&str> = vec![start];
            let mut at = *start;
            while let Some(r) = next.get(at) {
                at = r.after.as_str();
                if let Some(pos) = path.iter().position(|n| *n == at) {
                    let cycle = &path[pos..];
                    if cycle.iter().any(|n| reported.contains(n)) {
                        break;
                    }
                    reported.extend(cycle.iter().copied());
                    let mut shown: Vec<&str> = cycle.to_vec();
                    shown.push(at);
                    let first = next[cycle[0]];
                    self.error(
                        first.span.clone(),
                        format!(
                            "`when` of {:?} can never fire: a cycle {}",
                            cycle[0],
                            shown.join(" -> ")
                        ),
                        "a job cannot wait, directly or through others, for itself: remove one `when` of the cycle",
                    );
                    break;
                }
                path.push(at);
            }
        }
        self.whens = refs;
        let service_jobs = std::mem::take(&mut self.service_jobs);
        let job_names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        for s in &service_jobs {
            if !job_names.contains(&s.job.as_str()) {
                let hint = match suggest(&s.job, &job_names) {
                    Some(n) => format!("did you mean {n:?}?"),
                    None => "name a [[job]] whose health this service reports".to_string(),
                };
                self.error(
                    s.span.clone(),
                    format!("`job` names {:?}, which is not a [[job]]", s.job),
                    hint,
                );
            }
        }
    }
}

const JOB_KEYS: &[&str] = &[
    "name",
    "exec",
    "restart",
    "restart_limit",
    "stop_signal",
    "stop_timeout",
    "health",
    "interval",
    "timeout",
    "when",
    "each",
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Event, Restart, parse_str};

    fn errors(text: &str) -> Vec<String> {
        parse_str(text, Path::new("/etc/rewire/rewire.toml"), &|_| None)
            .expect_err("config should be rejected")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_job_reads_every_key() {
        let c = parse_str(
            r#"
[[job]]
name = "consul-agent"
exec = ["consul", "agent", "-dev"]
health = ["consul", "members"]
interval = "2s"
timeout = "1s"
restart = "always"
restart_limit = 5
stop_signal = "INT"
stop_timeout = "3s"

[[job]]
name = "reporter"
exec = ["report"]
when = { after = "consul-agent", is = "unhealthy" }
each = true

[main]
exec = ["app"]
when = { after = "consul-agent", is = "healthy", timeout = "60s" }
"#,
            Path::new("/etc/rewire/rewire.toml"),
            &|_| None,
        )
        .unwrap();
        let agent = &c.jobs[0];
        assert_eq!(agent.restart, Restart::Always);
        assert_eq!(agent.restart_limit, Some(5));
        let h = agent.health.as_ref().unwrap();
        assert_eq!(h.interval, std::time::Duration::from_secs(2));
        assert_eq!(h.check.timeout, std::time::Duration::from_secs(1));
        assert!(c.jobs[1].each);
        assert_eq!(c.jobs[1].when.as_ref().unwrap().is, Event::Unhealthy);
        let w = c.main.unwrap().when.unwrap();
        assert_eq!(
            w.to_string(),
            "consul-agent healthy (timeout 1m)",
            "what `rewire status` shows"
        );
    }

    #[test]
    fn a_when_on_an_unknown_name_is_located_with_a_suggestion() {
        let errs = errors(
            "[[job]]\nname = \"consul-agent\"\nexec = [\"consul\"]\n\n[main]\nexec = [\"app\"]\nwhen = { after = \"consul-agnet\", is = \"started\" }\n",
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(
            errs[0].contains(
                "rewire.toml:7:18: `when` waits for \"consul-agnet\", which is not a job"
            ),
            "{errs:#?}"
        );
        assert!(
            errs[0].contains("did you mean \"consul-agent\"?"),
            "{errs:#?}"
        );
    }

    #[test]
    fn a_cycle_through_main_is_refused_once_with_its_path() {
        let errs = errors(
            "[[job]]\nname = \"a\"\nexec = [\"a\"]\nwhen = { after = \"main\", is = \"started\" }\n\n[[job]]\nname = \"b\"\nexec = [\"b\"]\nwhen = { after = \"a\", is = \"started\" }\n\n[main]\nexec = [\"app\"]\nwhen = { after = \"b\", is = \"started\" }\n",
        );
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].contains("can never fire: a cycle"), "{errs:#?}");
        for hop in ["a", "b", "main"] {
            assert!(errs[0].contains(&format!("{hop} ->")), "{errs:#?}");
        }
        let errs = errors(
            "[[job]]\nname = \"a\"\nexec = [\"a\"]\nwhen = { after = \"a\", is = \"exited\" }\n",
        );
        assert!(
            errs[0].contains(":4:18: `when` of \"a\" can never fire: a cycle a -> a"),
            "{errs:#?}"
        );
    }

    #[test]
    fn impossible_or_conflicting_settings_are_refused() {
        // healthy of a job without a health command never happens.
        let errs = errors(
            "[[job]]\nname = \"a\"\nexec = [\"a\"]\n\n[main]\nexec = [\"app\"]\nwhen = { after = \"a\", is = \"healthy\" }\n",
        );
        assert!(errs[0].contains("has no `health` command"), "{errs:#?}");
        // A service reporting a job's health cannot have its own.
        let errs = errors(
            "[[job]]\nname = \"a\"\nexec = [\"a\"]\nhealth = [\"true\"]\n\n[[service]]\nname = \"web\"\nport = 80\njob = \"a\"\nhealth = [\"true\"]\n",
        );
        assert!(
            errs[0].contains(":10:1: a [[service]] with `job` reports that job's health"),
            "{errs:#?}"
        );
        let errs = errors("[[service]]\nname = \"web\"\nport = 80\njob = \"nope\"\n");
        assert!(
            errs[0].contains("`job` names \"nope\", which is not a [[job]]"),
            "{errs:#?}"
        );
        let errs = errors(
            "[[job]]\nname = \"main\"\nexec = [\"a\"]\n\n[[job]]\nname = \"x\"\nexec = [\"x\"]\neach = true\nwhen = { after = \"y\", is = \"sometimes\" }\n",
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("`main` is the name of [main]")),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.contains("unknown event \"sometimes\"")),
            "{errs:#?}"
        );
    }

    #[test]
    fn tasks_and_watches_may_wait_for_a_job() {
        let c = parse_str(
            "[[job]]\nname = \"a\"\nexec = [\"a\"]\n\n[[task]]\nevery = \"1m\"\nexec = [\"t\"]\nwhen = { after = \"a\", is = \"started\" }\n\n[[watch]]\nservice = \"db\"\non_change = [\"w\"]\nwhen = { after = \"a\", is = \"succeeded\" }\n",
            Path::new("/etc/rewire/rewire.toml"),
            &|_| None,
        )
        .unwrap();
        assert!(c.tasks[0].when.is_some());
        assert!(c.watches[0].when.is_some());
        let errs = errors(
            "[[task]]\nevery = \"1m\"\nexec = [\"t\"]\nwhen = { after = \"a\", is = \"started\" }\n",
        );
        assert!(errs[0].contains("there are no [[job]]s"), "{errs:#?}");
    }
}
