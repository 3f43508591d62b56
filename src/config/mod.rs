//! `rewire.toml`: what the user wrote, checked and turned into types.
//!
//! Two stages (ripgrep's habit): the text is parsed into toml's spanned tree, then walked
//! section by section, collecting *every* problem with its file:line:col and a hint, into the
//! typed [`Config`] below that the rest of rewire sees. Durations, modes, signals and commands
//! become types here, so nothing downstream parses strings from the config again.
//!
//! - [`parse_str`] (`parse.rs`) is pure: text in, config or every problem out. [`load`]
//!   (`load.rs`) reads the file and adds the checks that look at the disk.
//! - `walker.rs` is the spanned walker and its plain getters; `values.rs` the typed values
//!   (durations, signals, commands, waits, modes, enum strings); `interpolate.rs` `${VAR}`.
//! - One file per section, each owning its list of accepted keys: `catalog`, `control`,
//!   `defaults`, `template`, `service`, `watch`, `task`, `election`, `main`.
//! - `error.rs`: the problems, as the text users read.
//!
//! The config imports only the model and the backoff rules: it knows nothing of catalogs,
//! templates or processes, which all read it.

mod catalog;
mod control;
mod defaults;
mod election;
mod error;
mod interpolate;
mod job;
mod load;
mod main;
mod parse;
mod service;
mod task;
mod telemetry;
mod template;
mod values;
mod walker;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::model::{CatalogUrl, CatalogUrlError, Status};

pub use self::control::{default_socket, default_socket_for, private_socket_dir};
pub use self::election::{DEFAULT_LOCK_DELAY, DEFAULT_TTL};
pub use self::error::{ConfigError, ConfigErrors};
pub use self::interpolate::{InterpolateError, interpolate};
pub use self::job::MAIN_JOB;
pub use self::load::load;
pub use self::main::SERVICE_DRAIN;
pub use self::parse::parse_str;
pub use self::telemetry::{DEFAULT_CATALOG_GRACE, metric_name_ok};
pub use self::values::{
    DurationError, SizeError, UnknownSignal, parse_duration, parse_signal, parse_size, show_size,
};

/// The whole, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Absolute path of the file this came from (children get it as `REWIRE_CONFIG`).
    pub path: PathBuf,
    pub catalog: CatalogConfig,
    pub control: ControlConfig,
    pub defaults: Defaults,
    pub templates: Vec<TemplateConfig>,
    pub services: Vec<ServiceConfig>,
    pub watches: Vec<WatchConfig>,
    pub tasks: Vec<TaskConfig>,
    pub elections: Vec<ElectionConfig>,
    pub jobs: Vec<JobConfig>,
    pub main: Option<MainConfig>,
    /// The HTTP listener for metrics and probes; `None`: off.
    pub telemetry: Option<TelemetryConfig>,
    /// The user's own metrics (`[[metric]]`).
    pub metrics: Vec<MetricConfig>,
    /// What is allowed but probably a mistake, with its location: `rewire check` prints these,
    /// `rewire run` logs them at start.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The directory relative paths were resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct CatalogConfig {
    pub backend: Backend,
    /// How long one blocking query / watch round may hold.
    pub block_wait: Duration,
    pub retry: Retry,
    /// How long a critical/expired self-registration may linger before the catalog drops it.
    pub deregister_after: Duration,
    /// The largest dir catalog file or KV value read (bytes).
    pub max_file: u64,
    /// The largest Consul or etcd response body (or etcd watch message) read (bytes).
    pub max_response: u64,
}

/// `[catalog] max_file` when unset.
pub const DEFAULT_MAX_FILE: u64 = 1 << 20;
/// `[catalog] max_response` when unset.
pub const DEFAULT_MAX_RESPONSE: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub base: Duration,
    pub max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Backend {
    Dir(DirSettings),
    Consul(ConsulSettings),
    Etcd(EtcdSettings),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Dir(_) => "dir",
            Backend::Consul(_) => "consul",
            Backend::Etcd(_) => "etcd",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DirSettings {
    pub path: PathBuf,
}

/// Consul connection settings as written in the config. Unset fields fall back to Consul's
/// own environment variables (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, ...) in the backend;
/// the config wins over the environment.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ConsulSettings {
    /// `http://host:port` or `https://host:port`.
    pub address: Option<String>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub datacenter: Option<String>,
    /// Allow any server to answer reads (`?stale`).
    pub stale: bool,
    /// `max_connections`: reads in flight at once (None: the backend's default).
    pub max_connections: Option<usize>,
    pub tls: TlsSettings,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct EtcdSettings {
    /// `http://host:port` URLs; empty means `ETCDCTL_ENDPOINTS` or `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix, e.g. `/rewire` (no trailing slash).
    pub prefix: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsSettings,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct TlsSettings {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    /// `None`: not set in the config (the backend may consult the environment).
    pub verify: Option<bool>,
}

/// A secret (token, password) whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself: only for putting it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// `[control] group`: members of this group may connect too (socket mode 0660); they may
    /// read the status, and only root or the daemon's user may change state.
    pub group: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Defaults {
    pub wait: Wait,
    pub limits: RenderLimits,
}

/// How long one render may run and how much it may print (`render_timeout`, `max_output`).
/// A render past either stops with an error naming the limit; the destination is left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderLimits {
    pub timeout: Duration,
    pub max_output: u64,
}

/// Far above what a config needs (the 10 000-instance nginx render takes 3 ms and 1 MB), low
/// enough that a runaway loop is stopped before it costs much.
pub const DEFAULT_RENDER_LIMITS: RenderLimits = RenderLimits {
    timeout: Duration::from_secs(10),
    max_output: 16 << 20,
};

/// Quiescence: settle for `min` after the last change, never delay past `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

/// Used when neither `[defaults] wait` nor a template's `wait` is set: long enough to fold a
/// rolling deploy's burst into one reload, short enough that a newcomer sees the file follow.
pub const DEFAULT_WAIT: Wait = Wait {
    min: Duration::from_millis(500),
    max: Duration::from_secs(2),
};

/// A command to run: an argv array, or a shell string only when the user asked for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    Argv(Vec<String>),
    Shell(String),
}

impl Program {
    /// The name used in logs: the program, without its arguments.
    pub fn name(&self) -> String {
        match self {
            Program::Argv(argv) => argv
                .first()
                .map(|p| {
                    Path::new(p)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| p.clone())
                })
                .unwrap_or_default(),
            Program::Shell(_) => "sh".to_string(),
        }
    }

    /// Replaces `{file}` in every argument (argv) or in the script (shell, quoted).
    pub fn with_file(&self, file: &Path) -> Program {
        let f = file.to_string_lossy();
        match self {
            Program::Argv(argv) => {
                Program::Argv(argv.iter().map(|a| a.replace("{file}", &f)).collect())
            }
            Program::Shell(s) => Program::Shell(s.replace("{file}", &shell_quote(&f))),
        }
    }

    pub fn mentions_file(&self) -> bool {
        match self {
            Program::Argv(argv) => argv.iter().any(|a| a.contains("{file}")),
            Program::Shell(s) => s.contains("{file}"),
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Program::Argv(argv) => write!(f, "{argv:?}"),
            Program::Shell(s) => write!(f, "sh -c {s:?}"),
        }
    }
}

/// Single-quotes a string for `/bin/sh`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A program with its timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: Program,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    Command(CommandSpec),
    Signal {
        signal: Signal,
        target: SignalTarget,
        /// `confirm = "new_child"`: the reload counts as done only once the process has a
        /// child it did not have before the signal (nginx starts new workers when it applied
        /// the new config, and keeps the old ones when it could not).
        confirm: bool,
    },
    /// `reload` on HAProxy's master CLI (`haproxy -W -S <socket>`), confirmed by the master's
    /// reload counter: a master still busy with the previous reload ignores a SIGUSR2, while
    /// its CLI refuses connections until it is ready, so nothing is lost.
    HaproxyMaster {
        socket: PathBuf,
    },
}

impl Reload {
    /// Identifies a reload so templates sharing one run it once.
    pub fn key(&self) -> String {
        match self {
            Reload::Command(c) => format!("cmd:{}", c.program),
            Reload::Signal {
                signal,
                target,
                confirm,
            } => format!("sig:{signal}:{target:?}:{confirm}"),
            Reload::HaproxyMaster { socket } => format!("haproxy-master:{}", socket.display()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    Pidfile(PathBuf),
    /// The supervised main process.
    Main,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckMode {
    /// Check the rendered temp file before it replaces the destination.
    Temp,
    /// Put the new file in place, check the real config, restore the old file on failure.
    Swap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Temp file + rename.
    Atomic,
    /// Truncate and write the destination itself (bind-mounted files can't be renamed over).
    InPlace,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TemplateConfig {
    /// For `--template NAME`, logs and `rewire status`.
    pub name: String,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub perms: Option<u32>,
    pub check: Option<CommandSpec>,
    pub check_mode: CheckMode,
    pub reload: Option<Reload>,
    pub wait: Wait,
    pub write: WriteMode,
    /// Keep the previous content as `<destination>.bak`.
    pub backup: bool,
    pub limits: RenderLimits,
    /// Changes the program can take without a reload, and how to make them.
    pub runtime: Option<RuntimeApi>,
}

/// A program's API for changes without a reload (`[[template]] runtime = { ... }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeApi {
    /// HAProxy's Runtime API on an admin-level stats socket: server lines added, removed or
    /// changed inside existing backends are applied there; anything else reloads.
    Haproxy { socket: PathBuf },
}

impl RuntimeApi {
    /// The admin socket of an HAProxy runtime.
    pub fn haproxy_socket(&self) -> &Path {
        match self {
            RuntimeApi::Haproxy { socket } => socket,
        }
    }
}

/// Where a registered service's address comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressSpec {
    /// The first non-loopback IPv4 address of this machine.
    Auto,
    /// Interface names such as `eth0`, tried in order: the first with an address wins.
    Interface(Vec<String>),
    /// An IP address or hostname written in the config.
    Literal(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Defaults to `<name>-<hostname>-<port>`.
    pub id: Option<String>,
    pub port: u16,
    pub address: AddressSpec,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub health: Option<CommandSpec>,
    pub interval: Duration,
    pub ttl: Duration,
    /// Register at once with this status instead of waiting for the first passing check.
    pub initial_status: Option<Status>,
    pub deregister_after: Duration,
    /// The `[[job]]` whose health this service reports (instead of its own `health`).
    pub job: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WatchConfig {
    pub service: String,
    pub tag: Option<String>,
    pub on_change: CommandSpec,
    pub wait: Wait,
    /// The handler runs only once this event happened.
    pub when: Option<When>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    pub name: String,
    pub every: Duration,
    pub exec: CommandSpec,
    /// The task starts its rhythm only once this event happened.
    pub when: Option<When>,
    /// A `[[metric]]` set from the number the task prints.
    pub metric: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    pub listen: std::net::SocketAddr,
    /// How long the catalog may be unreachable before `/ready` fails.
    pub catalog_grace: Duration,
    /// Serve `/status` (it shows addresses and commands).
    pub status: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value only adds up.
    Counter,
    /// A value is set.
    Gauge,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricConfig {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
}

/// `[[election]]`: one holder at a time among the processes sharing the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct ElectionConfig {
    pub name: String,
    /// How long a term lasts without a renewal (renewed every ttl/3).
    pub ttl: Duration,
    /// Consul: how long a lock lost by invalidation cannot be taken again.
    pub lock_delay: Duration,
    /// What the holder publishes, over what `gate`'s service gives.
    pub value: LeaderValueSpec,
    /// Whose health must pass before this process may run for leader.
    pub gate: Option<Gate>,
    pub on_elected: Option<CommandSpec>,
    pub on_demoted: Option<CommandSpec>,
    pub on_change: Option<CommandSpec>,
}

/// What must be healthy before a process runs for leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// A `[[service]]` of this config, by name: its health command must pass.
    Service(String),
    /// A `[[job]]` of this config with a health command, by name: that command must pass.
    Job(String),
}

/// The holder's published value as configured; what is not set comes from the gate's service.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaderValueSpec {
    pub id: Option<String>,
    pub address: Option<AddressSpec>,
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    Never,
    OnFailure,
    Always,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MainConfig {
    pub pre_start: Option<CommandSpec>,
    pub exec: Option<Program>,
    pub pre_stop: Option<CommandSpec>,
    pub post_stop: Option<CommandSpec>,
    pub stop_timeout: Duration,
    /// Incoming signals that stop rewire.
    pub stop_signals: Vec<Signal>,
    /// Sent to main on stop.
    pub stop_signal: Signal,
    /// Between deregistering and `pre_stop`: 3 s by default when the config registers a
    /// `[[service]]` (peers need that long to stop routing here), else 0.
    pub drain: Duration,
    pub forward_signals: Vec<Signal>,
    pub restart: Restart,
    /// Restarts in a row after which main is given up on (None: no limit).
    pub restart_limit: Option<u32>,
    pub wait_for_templates: Duration,
    /// Main (and its `pre_start`) waits for this event first.
    pub when: Option<When>,
}

/// What happens to a job; `when` waits for one of these of another job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// The process was started.
    Started,
    /// Its health command passed (after not passing, or for the first time).
    Healthy,
    /// Its health command failed (after passing, or for the first time).
    Unhealthy,
    /// The process exited, whatever its status.
    Exited,
    /// The process exited with status 0.
    Succeeded,
    /// The process exited non-zero or was killed, or could not be started at all.
    Failed,
    /// rewire's stop sequence reached the job.
    Stopping,
    /// The job is stopped for good (rewire is stopping).
    Stopped,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Healthy => "healthy",
            Event::Unhealthy => "unhealthy",
            Event::Exited => "exited",
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::Stopping => "stopping",
            Event::Stopped => "stopped",
        }
    }

    /// Events that only the stop sequence produces: a job waiting for one runs as a hook of
    /// the stop (see `proc::jobs`), not before it.
    pub fn is_stop(self) -> bool {
        matches!(self, Event::Stopping | Event::Stopped)
    }

    /// An event of a process ending: exited, succeeded, failed.
    pub fn is_exit(self) -> bool {
        matches!(self, Event::Exited | Event::Succeeded | Event::Failed)
    }
}

impl When {
    /// A job run when main ends (`after = "main"`, exited/succeeded/failed): when main ends on
    /// its own, rewire's stop sequence begins at that very moment, so such a job is a stop
    /// hook as well: it still starts, and the stop lets its run finish.
    pub fn on_main_exit(&self) -> bool {
        self.after == MAIN_JOB && self.is.is_exit()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `when = { after = "NAME", is = "EVENT", timeout = "60s" }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct When {
    /// A job's name, or `main`.
    pub after: String,
    pub is: Event,
    /// How long to wait for the first occurrence; `None`: forever.
    pub timeout: Option<Duration>,
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.after, self.is)?;
        if let Some(t) = self.timeout {
            write!(f, " (timeout {})", humantime::format_duration(t))?;
        }
        Ok(())
    }
}

/// A job's health command and how often it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobHealth {
    pub check: CommandSpec,
    pub interval: Duration,
}

/// `[[job]]`: a supervised process beside `[main]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobConfig {
    pub name: String,
    pub exec: Program,
    pub restart: Restart,
    /// How many restarts in a row before the job is given up (`None`: no limit).
    pub restart_limit: Option<u32>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub health: Option<JobHealth>,
    pub when: Option<When>,
    /// Run again on every occurrence of the `when` event, not only the first.
    pub each: bool,
}

/// Applies `--catalog URL`, keeping the config's settings (token, TLS) for the same backend.
pub fn override_catalog(config: &mut Config, url: &str) -> Result<(), CatalogUrlError> {
    let backend = match CatalogUrl::parse(url)? {
        CatalogUrl::Dir(p) => Backend::Dir(DirSettings {
            path: parse::normalize(&std::env::current_dir().unwrap_or_default().join(p)),
        }),
        CatalogUrl::Consul(address) => {
            let mut s = match &config.catalog.backend {
                Backend::Consul(s) => s.clone(),
                _ => ConsulSettings::default(),
            };
            s.address = Some(address);
            Backend::Consul(s)
        }
        CatalogUrl::Etcd(endpoints) => {
            let mut s = match &config.catalog.backend {
                Backend::Etcd(s) => s.clone(),
                _ => EtcdSettings {
                    prefix: "/rewire".into(),
                    ..EtcdSettings::default()
                },
            };
            s.endpoints = endpoints;
            Backend::Etcd(s)
        }
    };
    config.catalog.backend = backend;
    Ok(())
}

#[cfg(test)]
mod reference_tests {
    //! docs/configuration.md must name every key the parser accepts: the key lists are read
    //! from the section files themselves (each `*_KEYS` constant and each `finish(&t, &[...])`
    //! list), so a key added to a section without a line in the reference fails here.

    use std::path::Path;

    /// The quoted strings in every key list of `src`.
    fn key_lists(src: &str) -> Vec<String> {
        const CONST_LIST: &str = "KEYS: &[&str] = &[";
        let mut starts: Vec<usize> = src
            .match_indices(CONST_LIST)
            .map(|(i, _)| i + CONST_LIST.len())
            .collect();
        // Only a literal list inside a `finish(...)` call (not a constant's name).
        starts.extend(src.match_indices(".finish(&").filter_map(|(i, _)| {
            let call = &src[i..];
            let open = call.find("&[")?;
            (open < call.find(')')?).then_some(i + open + 2)
        }));
        let mut keys = Vec::new();
        for start in starts {
            let list = &src[start..];
            let end = list.find(']').unwrap_or(list.len());
            keys.extend(
                list[..end]
                    .split(',')
                    .map(|k| k.trim().trim_matches('"').to_string())
                    .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace)),
            );
        }
        keys
    }

    /// The part of the reference under the heading for `[section]` or `[[section]]`, up to
    /// the next level-2 heading; the whole reference when there is no such heading.
    fn section<'d>(doc: &'d str, name: &str) -> Option<&'d str> {
        let start = doc
            .find(&format!("## `[{name}]`"))
            .or_else(|| doc.find(&format!("## `[[{name}]]`")))?;
        let body = &doc[start + 3..];
        Some(&body[..body.find("\n## ").unwrap_or(body.len())])
    }

    #[test]
    fn the_configuration_reference_names_every_key_the_parser_accepts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let mut missing = Vec::new();
        let mut sections = 0;
        for entry in std::fs::read_dir(root.join("src/config")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&path).unwrap();
            // parse.rs holds the top-level section names: each needs its own heading.
            if stem == "parse" {
                for name in key_lists(&src) {
                    if section(&doc, &name).is_none() {
                        missing.push(format!("no heading for [{name}] / [[{name}]]"));
                    }
                }
                continue;
            }
            let keys = key_lists(&src);
            if keys.is_empty() {
                continue;
            }
            sections += 1;
            let text = section(&doc, &stem).unwrap_or(&doc);
            for key in keys {
                if !text.contains(&format!("`{key}`")) {
                    missing.push(format!("`{key}` (src/config/{stem}.rs)"));
                }
            }
        }
        assert!(sections >= 8, "found key lists in only {sections} files");
        assert!(
            missing.is_empty(),
            "docs/configuration.md lacks:\n  {}",
            missing.join("\n  ")
        );
    }
}
