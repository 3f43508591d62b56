//! Candidates for leader election tests and the failover benchmark: one `rewire run` per
//! node, each supervising its own `redis-server` and registering it, all running one
//! `[[election]]` in a shared catalog (the dir catalog, a real etcd or a real Consul agent).
//!
//! Each node's `on_elected` and `on_demoted` hooks append a line to one shared log:
//! `elected NODE TOKEN NANOS` / `demoted NODE TOKEN NANOS` (CLOCK_REALTIME from `date +%s%N`).
//! Kills are recorded by the test with the same clock. "Never two leaders" is then checked on
//! the leadership intervals these give ([`Log::intervals`], [`overlaps`]), not by sampling.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::process::{self, Daemon, SIGKILL, SIGTERM};
use super::{Consul, Etcd, free_port};

/// Where the test components are: `None` when one is missing (reported as a skip).
pub fn redis_server() -> Option<PathBuf> {
    super::find_binary("redis-server", Some("REWIRE_REDIS_BIN"), &[])
}

#[track_caller]
pub fn redis_or_skip() -> Option<PathBuf> {
    match redis_server() {
        Some(p) => Some(p),
        None => super::skip(
            "redis-server",
            "not found (apt-get install redis-server, or run scripts/test)",
            false,
        ),
    }
}

/// Nanoseconds since the epoch (CLOCK_REALTIME, as `date +%s%N` prints it).
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Etcd,
    Consul,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::Etcd => "etcd",
            Kind::Consul => "consul",
        }
    }
}

/// The shared catalog and a directory for the nodes.
pub struct Catalog {
    pub kind: Kind,
    pub etcd: Option<Etcd>,
    pub consul: Option<Consul>,
    root: tempfile::TempDir,
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if super::env_flag("REWIRE_TEST_KEEP") {
            let kept = std::mem::replace(&mut self.root, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept {}", kept.keep().display());
        }
    }
}

impl Catalog {
    /// Starts the catalog (`None`, loudly, when its component is missing).
    #[track_caller]
    pub fn try_start(kind: Kind) -> Option<Catalog> {
        let root = tempfile::Builder::new()
            .prefix("rewire-election-")
            .tempdir()
            .expect("temp dir");
        let (etcd, consul) = match kind {
            Kind::Dir => {
                std::fs::create_dir_all(root.path().join("catalog/services")).unwrap();
                std::fs::create_dir_all(root.path().join("catalog/kv")).unwrap();
                (None, None)
            }
            Kind::Etcd => (Some(Etcd::try_start()?), None),
            Kind::Consul => (None, Some(Consul::try_start()?)),
        };
        Some(Catalog {
            kind,
            etcd,
            consul,
            root,
        })
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The catalog's address ("host:port"), for a proxy in front of it. `None` for dir.
    pub fn address(&self) -> Option<String> {
        match self.kind {
            Kind::Dir => None,
            Kind::Etcd => self.etcd.as_ref().map(Etcd::client_addr),
            Kind::Consul => self.consul.as_ref().map(Consul::http_addr),
        }
    }

    /// The `--catalog` URL, reaching the catalog at `via` ("host:port") when given.
    pub fn url(&self, via: Option<&str>) -> String {
        let at = via.map(str::to_string).or_else(|| self.address());
        match self.kind {
            Kind::Dir => format!("dir:{}", self.root().join("catalog").display()),
            Kind::Etcd => format!("etcd://{}", at.unwrap_or_default()),
            Kind::Consul => format!("consul://{}", at.unwrap_or_default()),
        }
    }

    /// The `[catalog]` section, reaching the catalog at `via` when given. Short retries: the
    /// tests cut and restore connections.
    pub fn section(&self, via: Option<&str>) -> String {
        let at = via.map(str::to_string).or_else(|| self.address());
        let retry = "retry = { base = \"100ms\", max = \"1s\" }\n";
        match self.kind {
            Kind::Dir => format!(
                "[catalog]\nbackend = \"dir\"\npath = {:?}\n{retry}",
                self.root().join("catalog").display().to_string()
            ),
            Kind::Etcd => format!(
                "[catalog]\nbackend = \"etcd\"\nendpoints = [\"http://{}\"]\nprefix = \"/rewire\"\n{retry}",
                at.unwrap_or_default()
            ),
            Kind::Consul => format!(
                "[catalog]\nbackend = \"consul\"\naddress = \"http://{}\"\n{retry}",
                at.unwrap_or_default()
            ),
        }
    }

    /// The shared leadership log.
    pub fn log(&self) -> Log {
        Log(self.root().join("leadership.log"))
    }
}

/// Election timing for the nodes.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ttl: Duration,
    pub lock_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ttl: Duration::from_secs(2),
            lock_delay: Duration::from_secs(1),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One candidate: `rewire run` supervising `redis-server`.
pub struct Node {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
    config: PathBuf,
    /// Extra arguments to `rewire run` and environment (the example's nodes).
    args: Vec<String>,
    env: Vec<(String, String)>,
    daemon: Option<Daemon>,
    /// The redis of the last run, to kill with rewire.
    redis_pid: Option<u32>,
}

impl Node {
    /// Writes the node's config: a `[[service]]` for its redis (health: PING), the election
    /// gated on it, the logging hooks, redis as main. `via`: reach the catalog there.
    pub fn new(cat: &Catalog, name: &str, timing: Timing, via: Option<&str>) -> Node {
        let dir = cat.root().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let log = cat.log().0;
        let redis = redis_server().unwrap_or_else(|| "redis-server".into());
        let config = dir.join("rewire.toml");
        let text = format!(
            r#"{catalog}
[control]
socket = {sock:?}

[[service]]
name = "redis"
id = "redis-{name}"
port = {port}
address = "127.0.0.1"
health = ["redis-cli", "-p", "{port}", "ping"]
interval = "250ms"
ttl = "5s"

[[election]]
name = "primary"
service = "redis"
ttl = "{ttl}"
lock_delay = "{lock_delay}"
on_elected = {{ shell = "echo elected {name} $REWIRE_FENCING_TOKEN $(date +%s%N) >> {log}; redis-cli -p {port} replicaof no one >/dev/null" }}
on_demoted = {{ shell = "echo demoted {name} $REWIRE_FENCING_TOKEN $(date +%s%N) >> {log}" }}

[main]
exec = [{redis:?}, "--port", "{port}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", {dir:?}]
stop_timeout = "5s"
drain = "0s"
"#,
            catalog = cat.section(via),
            sock = dir.join("ctl.sock").display().to_string(),
            ttl = ms(timing.ttl),
            lock_delay = ms(timing.lock_delay),
            log = log.display(),
            redis = redis.display().to_string(),
            dir = dir.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        Node {
            name: name.to_string(),
            port,
            dir,
            config,
            args: Vec::new(),
            env: Vec::new(),
            daemon: None,
            redis_pid: None,
        }
    }

    /// A node of `examples/stateful-redis`, as its README runs one: its rewire.toml with
    /// `NODE`, `REDIS_PORT` and `REDIS_DIR` set and `--catalog` pointing at `cat`.
    pub fn example(cat: &Catalog, name: &str) -> Node {
        let dir = cat.root().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        Node {
            name: name.to_string(),
            port,
            config: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/stateful-redis/rewire.toml"),
            args: vec!["--catalog".into(), cat.url(None)],
            env: vec![
                ("NODE".into(), name.into()),
                ("REDIS_PORT".into(), port.to_string()),
                ("REDIS_DIR".into(), dir.display().to_string()),
            ],
            dir,
            daemon: None,
            redis_pid: None,
        }
    }

    /// Starts `rewire run` (its log: `<node>/rewire.log`, appended).
    pub fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewire"));
        cmd.arg("run")
            .arg("-c")
            .arg(&self.config)
            .current_dir(&self.dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("REWIRE_CONFIG")
            .env(
                "REWIRE_LOG",
                std::env::var("REWIRE_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            );
        let d = Daemon::spawn(
            &format!("rewire {}", self.name),
            cmd,
            &self.dir.join("rewire.log"),
        )
        .expect("start rewire run");
        self.daemon = Some(d);
        self.redis_pid = None;
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Daemon::is_running)
    }

    /// Waits until this node's redis answers PING.
    pub fn wait_redis(&mut self, timeout: Duration) -> bool {
        let port = self.port;
        super::poll_until(timeout, || redis_cli(port, &["ping"]).trim() == "PONG")
    }

    fn find_redis(&mut self) -> Option<u32> {
        if self.redis_pid.is_none() {
            self.redis_pid = self
                .pid()
                .and_then(|p| process::children(p).first().copied());
        }
        self.redis_pid
    }

    /// SIGKILLs the node's rewire and its redis (each leads its own process group) at once.
    /// Returns when it happened ([`now_ns`]).
    pub fn kill9(&mut self) -> u128 {
        let redis = self.find_redis();
        let at = now_ns();
        if let Some(d) = &self.daemon {
            let _ = d.signal_group(SIGKILL);
        }
        if let Some(r) = redis {
            let _ = process::signal(-(r as i32), SIGKILL);
        }
        if let Some(mut d) = self.daemon.take() {
            d.kill();
        }
        at
    }

    /// Sends SIGTERM to rewire; returns when ([`now_ns`]).
    pub fn sigterm(&mut self) -> u128 {
        let _ = self.find_redis();
        let at = now_ns();
        if let Some(d) = &self.daemon {
            let _ = d.signal(SIGTERM);
        }
        at
    }

    /// Waits for rewire to exit after a SIGTERM.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let exited = super::poll_until(timeout, || !self.is_running());
        if exited {
            self.daemon = None;
        }
        exited
    }

    pub fn log_tail(&self) -> String {
        process::tail(&self.dir.join("rewire.log"), 60)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `redis-cli -p PORT ARGS...`: its output (empty when it could not run).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let (_, out) = process::run(
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args),
    );
    out
}

/// One line of the leadership log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub elected: bool,
    pub node: String,
    pub token: u64,
    pub at: u128,
}

/// One term as the hooks saw it: from `on_elected` to `on_demoted` (or the kill, or now).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    pub node: String,
    pub token: u64,
    pub start: u128,
    pub end: u128,
    /// Still running (no end seen yet).
    pub open: bool,
}

pub struct Log(pub PathBuf);

impl Log {
    pub fn events(&self) -> Vec<Event> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let [what, node, token, at] = f.as_slice() else {
                    return None;
                };
                Some(Event {
                    elected: *what == "elected",
                    node: node.to_string(),
                    token: token.parse().ok()?,
                    at: at.parse().ok()?,
                })
            })
            .collect()
    }

    /// The terms, by start. `kills`: (node, when) of each SIGKILL, which ends a term the
    /// killed node never got to log.
    pub fn intervals(&self, kills: &[(String, u128)]) -> Vec<Interval> {
        let events = self.events();
        let mut out: Vec<Interval> = Vec::new();
        for e in events.iter().filter(|e| e.elected) {
            let demoted = events
                .iter()
                .find(|d| !d.elected && d.node == e.node && d.token == e.token)
                .map(|d| d.at);
            let killed = kills
                .iter()
                .filter(|(n, at)| *n == e.node && *at >= e.at)
                .map(|(_, at)| *at)
                .min();
            let end = match (demoted, killed) {
                (Some(d), Some(k)) => Some(d.min(k)),
                (d, k) => d.or(k),
            };
            out.push(Interval {
                node: e.node.clone(),
                token: e.token,
                start: e.at,
                end: end.unwrap_or_else(now_ns),
                open: end.is_none(),
            });
        }
        out.sort_by_key(|i| i.start);
        out
    }

    /// The node holding the election now, as the log says (an open term).
    pub fn leader(&self, kills: &[(String, u128)]) -> Option<Interval> {
        self.intervals(kills).into_iter().rev().find(|i| i.open)
    }

    /// Waits for an open term with a token above `after`.
    pub fn wait_leader(
        &self,
        kills: &[(String, u128)],
        after: u64,
        timeout: Duration,
    ) -> Option<Interval> {
        let mut found = None;
        super::poll_until(timeout, || {
            found = self.leader(kills).filter(|i| i.token > after);
            found.is_some()
        });
        found
    }
}

/// How many terms overlap the one before them, or do not carry a higher token: both must
/// be 0 for "at most one holder at any moment" and "tokens only grow".
pub fn overlaps(intervals: &[Interval]) -> usize {
    intervals
        .windows(2)
        .filter(|w| w[1].start < w[0].end || w[1].token <= w[0].token)
        .count()
}

/// The intervals, one per line, for failure messages.
pub fn show(intervals: &[Interval]) -> String {
    let base = intervals.first().map_or(0, |i| i.start);
    intervals
        .iter()
        .map(|i| {
            format!(
                "  {} token {}: {:.3}s .. {:.3}s{}",
                i.node,
                i.token,
                (i.start - base) as f64 / 1e9,
                (i.end.saturating_sub(base)) as f64 / 1e9,
                if i.open { " (open)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
