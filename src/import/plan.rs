//! What an import produces before it is written: the rewire config as types, the converted
//! templates and the findings.
//!
//! Importers fill a [`Plan`]; [`super::toml_out`] alone turns it into text, so quoting and
//! section order live in one place and the importers never format TOML.

use std::fmt;
use std::path::PathBuf;

/// A command as rewire takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`: only where the original ran a shell too.
    Shell(String),
}

/// A command with an optional timeout (rewire's own default applies without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: Command,
    pub timeout: Option<String>,
}

impl Run {
    pub fn new(command: Command) -> Run {
        Run {
            command,
            timeout: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub min: String,
    pub max: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub address: Option<String>,
    pub token: Option<String>,
    pub datacenter: Option<String>,
    pub stale: bool,
    pub tls: Tls,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub server_name: Option<String>,
    pub verify: Option<bool>,
}

impl Tls {
    pub fn is_empty(&self) -> bool {
        *self == Tls::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    Run(Run),
    /// A signal to the supervised main process (consul-template's exec mode).
    SignalMain(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Relative to the output directory: `templates/NAME.tera`.
    pub source: String,
    pub destination: String,
    pub perms: Option<String>,
    pub reload: Option<Reload>,
    pub wait: Option<Wait>,
    pub backup: bool,
    pub origin: String,
    /// Written commented out, with this reason, when the template could not be converted.
    pub disabled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub name: String,
    /// A number, or `${VAR}` text for a port taken from the environment.
    pub port: String,
    pub tags: Vec<String>,
    /// Interface names, tried in order.
    pub interface: Vec<String>,
    pub address: Option<String>,
    pub health: Option<Run>,
    pub interval: Option<String>,
    pub ttl: Option<String>,
    pub deregister_after: Option<String>,
    /// The `[[job]]` whose health this service reports.
    pub job: Option<String>,
    pub origin: String,
}

/// A `[[metric]]`: a counter or gauge the app sets with `rewire metric NAME VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: &'static str,
    pub help: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub service: String,
    pub tag: Option<String>,
    pub on_change: Run,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub name: Option<String>,
    pub every: String,
    pub exec: Command,
    pub timeout: Option<String>,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Main {
    pub pre_start: Option<Command>,
    pub exec: Option<Command>,
    pub pre_stop: Option<Command>,
    pub post_stop: Option<Command>,
    pub stop_timeout: Option<String>,
    pub stop_signal: Option<String>,
    pub restart: Option<&'static str>,
    pub restart_limit: Option<u32>,
    /// `wait_for_templates`, as written ("forever", "60s").
    pub wait_for_templates: Option<String>,
    /// `when = { after, is, timeout }`.
    pub when: Option<When>,
    pub origin: String,
}

/// `when = { after = "NAME", is = "EVENT", timeout = "60s" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    pub after: String,
    pub is: String,
    pub timeout: Option<String>,
}

/// A `[[job]]`: a supervised process beside `[main]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    pub name: String,
    pub exec: Option<Command>,
    pub restart: Option<&'static str>,
    pub restart_limit: Option<u32>,
    pub stop_timeout: Option<String>,
    pub health: Option<Run>,
    pub interval: Option<String>,
    pub when: Option<When>,
    pub each: bool,
    pub origin: String,
}

impl Main {
    pub fn is_empty(&self) -> bool {
        self.pre_start.is_none()
            && self.exec.is_none()
            && self.pre_stop.is_none()
            && self.post_stop.is_none()
            && self.stop_timeout.is_none()
            && self.stop_signal.is_none()
            && self.restart.is_none()
            && self.when.is_none()
    }
}

/// The rewire config an import arrives at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Said at the top of the file: where it came from.
    pub header: Vec<String>,
    pub catalog: Option<Catalog>,
    pub control_socket: Option<String>,
    /// `[telemetry] listen`.
    pub telemetry_listen: Option<String>,
    pub metrics: Vec<Metric>,
    pub default_wait: Option<Wait>,
    pub main: Main,
    pub templates: Vec<Template>,
    pub services: Vec<Service>,
    pub watches: Vec<Watch>,
    pub tasks: Vec<Task>,
    pub jobs: Vec<Job>,
}

/// A converted template to write under the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateFile {
    /// Relative to the output directory.
    pub path: String,
    pub text: String,
}

/// Where a finding points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Pos {
        file: PathBuf,
        line: usize,
        col: usize,
    },
    /// A JSON path (`jobs[1].when`) when the reader keeps no positions.
    Path { file: PathBuf, path: String },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Pos { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Location::Path { file, path } if path.is_empty() => write!(f, "{}", file.display()),
            Location::Path { file, path } => write!(f, "{}: {path}", file.display()),
        }
    }
}

/// Something the import could not map exactly, or wants the reader to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub at: Location,
    pub what: String,
    /// False for remarks about a faithful mapping; true when a person has to act.
    pub needs_person: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = if self.needs_person {
            "not mapped"
        } else {
            "note"
        };
        write!(f, "{}: {tag}: {}", self.at, self.what)
    }
}
