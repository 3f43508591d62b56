//! What the daemon is doing, for `rewire status`, the supervisor and the logs.
//!
//! Runners, the registrar and the supervisor write here; the control socket reads. It is a
//! plain mutex-guarded record: writes are rare (once per render or health check). The
//! [`Report`] is typed end to end: the daemon serializes it, `rewire status` deserializes it
//! and formats the text from the same struct, so a renamed field cannot silently blank a line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::lock::lock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TemplateState {
    /// Not rendered yet, or waiting for data.
    Pending,
    /// The destination holds the latest render.
    Ok,
    /// The last attempt failed (render error, check rejected, reload failed).
    Error,
}

/// What became of one template in a render round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateEvent {
    /// The destination already held these bytes.
    Unchanged,
    /// Written (and reloaded, when it has a reload).
    Written,
    /// Not written yet: waiting for data, and why.
    Waiting(String),
    /// Not written: the render, the check, the write or the reload failed.
    Failed(String),
    /// Written and in place (it had no previous version to restore), but its reload failed:
    /// the program can start with it; the reload is tried again.
    WrittenNotReloaded(String),
    /// A reload owed to written files (see `WrittenNotReloaded`) went through.
    Reloaded,
    /// A reload owed to written files failed again.
    ReloadFailed(String),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TemplateStatus {
    pub destination: String,
    pub state: TemplateState,
    /// What it waits for, or the last error.
    pub detail: String,
    #[serde(default, with = "opt_time")]
    pub last_render: Option<SystemTime>,
    #[serde(default, with = "opt_time")]
    pub last_written: Option<SystemTime>,
    pub renders: u64,
    pub writes: u64,
    /// The destination has held a complete render at least once since start.
    pub ready: bool,
    /// How the last written change reached the program: `reload`, `reload: <why the
    /// runtime API could not>`, `runtime: <the server changes>`, or `write` (no reload).
    #[serde(default)]
    pub last_path: String,
    /// Servers removed through a runtime API that wait for their connections to end.
    #[serde(default)]
    pub leaving: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct ServiceStatus {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub status: String,
    pub registered: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct MainStatus {
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// The last exit status, as rewire would exit with it (128+N: killed by signal N).
    #[serde(default)]
    pub last_exit_code: Option<i32>,
}

/// One job (a `[[job]]`, or `main`) as the job supervisor publishes it: the entries of the
/// immutable [`Jobs`] snapshot (see `proc::jobs`).
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct JobStatus {
    /// waiting, running, restarting, exited, failed, stopping, stopped, ...
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// The last exit status as a number (128+N when signal N killed it).
    #[serde(default)]
    pub last_exit_code: Option<i32>,
    /// The last health check: `Some(true)` passing; `None` before the first one (or when the
    /// job has no health command, or its process is not running).
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub health_note: String,
    /// The job has a health command (without one, a `[[service]]` naming the job is passing
    /// while the process runs).
    #[serde(default)]
    pub checked: bool,
    /// The event it waits for before (re)starting, e.g. `consul-agent healthy (timeout 1m)`.
    #[serde(default)]
    pub waits_for: Option<String>,
    /// How often each event happened (`started`, `healthy`, ...): `when` waits on these.
    #[serde(default)]
    pub events: BTreeMap<String, u64>,
}

impl JobStatus {
    pub fn count(&self, event: &str) -> u64 {
        self.events.get(event).copied().unwrap_or(0)
    }
}

/// Every job by name: one immutable snapshot, replaced on each change.
pub type Jobs = BTreeMap<String, JobStatus>;

#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct TaskStatus {
    pub runs: u64,
    pub failures: u64,
    pub last_error: String,
}

/// One `[[election]]` as this process sees it.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct ElectionStatus {
    /// `leader`, `follower`, `candidate` (nobody holds it; running), `waiting` (not eligible:
    /// health not passing yet) or `unknown` (the catalog cannot be read).
    pub role: String,
    /// The holder's id and address, empty while there is none.
    pub holder: String,
    pub token: Option<u64>,
    /// Since when the holder (this process, when leader) holds the election, as seen here.
    #[serde(default, with = "opt_time")]
    pub since: Option<SystemTime>,
    /// Why this process is not running, or what ended its last term.
    pub detail: String,
    /// Terms this process has held since it started.
    pub terms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct Report {
    pub pid: u32,
    pub config: String,
    pub catalog: String,
    pub catalog_health: String,
    pub maintenance: bool,
    /// The stop sequence has begun (services deregistered, draining): `/ready` says no.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
    /// The last SIGHUP's config, when it was rejected: when, and the first problem (cleared by
    /// the next one applied). An operator who just reloaded must not take the old config for
    /// the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reload: Option<String>,
    pub templates: BTreeMap<String, TemplateStatus>,
    pub services: BTreeMap<String, ServiceStatus>,
    pub watches: Vec<String>,
    pub tasks: BTreeMap<String, TaskStatus>,
    #[serde(default)]
    pub elections: BTreeMap<String, ElectionStatus>,
    pub main: Option<MainStatus>,
    /// Every job, `main` included when there is one.
    #[serde(default)]
    pub jobs: Jobs,
}

pub struct Board {
    report: Mutex<Report>,
    /// Bumped whenever a template becomes ready, so the supervisor can wait for all.
    ready_tx: watch::Sender<u64>,
    /// The job supervisor's published state, read (never written) for the report.
    jobs: Mutex<Option<watch::Receiver<Arc<Jobs>>>>,
}

impl Board {
    pub fn new(pid: u32, config: String, catalog: String) -> Board {
        let (ready_tx, _) = watch::channel(0);
        Board {
            report: Mutex::new(Report {
                pid,
                config,
                catalog,
                ..Report::default()
            }),
            ready_tx,
            jobs: Mutex::new(None),
        }
    }

    /// Makes the report show the jobs published on `rx`.
    pub fn attach_jobs(&self, rx: watch::Receiver<Arc<Jobs>>) {
        *lock(&self.jobs) = Some(rx);
    }

    pub fn update(&self, f: impl FnOnce(&mut Report)) {
        let mut r = lock(&self.report);
        f(&mut r);
    }

    pub fn report(&self) -> Report {
        let mut r = lock(&self.report).clone();
        if let Some(rx) = lock(&self.jobs).as_ref() {
            r.jobs = Jobs::clone(&rx.borrow());
        }
        r
    }

    /// Records one template's new state.
    pub fn template(&self, name: &str, dest: &str, f: impl FnOnce(&mut TemplateStatus)) {
        let mut became_ready = false;
        self.update(|r| {
            let t = r
                .templates
                .entry(name.to_string())
                .or_insert_with(|| TemplateStatus {
                    destination: dest.to_string(),
                    state: TemplateState::Pending,
                    detail: String::new(),
                    last_render: None,
                    last_written: None,
                    renders: 0,
                    writes: 0,
                    ready: false,
                    last_path: String::new(),
                    leaving: Vec::new(),
                });
            // A SIGHUP may have moved the destination.
            if t.destination != dest {
                t.destination = dest.to_string();
            }
            let was = t.ready;
            f(t);
            became_ready = !was && t.ready;
        });
        if became_ready {
            self.ready_tx.send_modify(|n| *n += 1);
        }
    }

    /// Records what became of one template in a render round.
    pub fn record(&self, name: &str, dest: &str, at: SystemTime, event: TemplateEvent) {
        self.template(name, dest, |s| match event {
            TemplateEvent::Unchanged | TemplateEvent::Written => {
                s.state = TemplateState::Ok;
                s.detail.clear();
                s.last_render = Some(at);
                s.renders += 1;
                s.ready = true;
                if matches!(event, TemplateEvent::Written) {
                    s.last_written = Some(at);
                    s.writes += 1;
                }
            }
            TemplateEvent::Waiting(reason) => {
                s.state = TemplateState::Pending;
                s.detail = reason;
            }
            TemplateEvent::Failed(error) => {
                s.state = TemplateState::Error;
                s.detail = error;
                s.last_render = Some(at);
                s.renders += 1;
            }
            TemplateEvent::WrittenNotReloaded(error) => {
                s.state = TemplateState::Error;
                s.detail = error;
                s.last_render = Some(at);
                s.last_written = Some(at);
                s.renders += 1;
                s.writes += 1;
                s.ready = true;
            }
            TemplateEvent::Reloaded => {
                s.state = TemplateState::Ok;
                s.detail.clear();
            }
            TemplateEvent::ReloadFailed(error) => {
                s.state = TemplateState::Error;
                s.detail = error;
            }
        });
    }

    /// Whether every named template has been ready at least once.
    pub fn all_ready(&self, names: &[String]) -> bool {
        let r = lock(&self.report);
        names
            .iter()
            .all(|n| r.templates.get(n).is_some_and(|t| t.ready))
    }

    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready_tx.subscribe()
    }
}

/// Times travel as RFC 3339 with milliseconds (`rewire status --json` shows them as they are).
mod opt_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => humantime::parse_rfc3339(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
