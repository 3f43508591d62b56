//! One scale run: a front (nginx or HAProxy under `rewire run`, rendering the shipped
//! template), N backends (each a small HTTP server under its own `rewire run`, registering in
//! a shared dir catalog), steady keep-alive load through the front, and scale events.
//!
//! Events alternate: stop the oldest backend (SIGTERM to its rewire: deregister, drain, stop
//! the server; or with `kill`, SIGKILL to the whole container: rewire and server, nothing
//! deregistered), then start a new one on a new port. Measured per run:
//!
//! - every request's outcome and latency ([`super::load`]);
//! - signal -> out of the front's config: the front's rendered file is watched with inotify
//!   and every version kept, so the time from the signal to the first version without the
//!   backend's address is exact to the observer's wake-up;
//! - start -> in the front's config, and start -> first request served (the first response
//!   carrying the new backend's id);
//! - the reloads rewire asked for during the events, and (HAProxy) the reloads the master
//!   did, by its own counter. rewire reloads HAProxy through its master CLI by default
//!   (`reload = { haproxy_master = ... }`, confirmed by that counter); with
//!   `haproxy_reload = Signal` it sends SIGUSR2, which HAProxy 2.6 ignores while it is still
//!   busy with the previous reload (two signals 0.2 s apart reload once, 0.3 s apart twice),
//!   and the counters show the difference.
//!
//! Setup is not measured: the front starts first, then the backends; it is ready once the
//! front's file lists every backend and requests through the front reach each of them. When
//! HAProxy dropped a reload during setup, the run sends SIGUSR2 once more itself and says so
//! in the report.
//!
//! Everything runs on loopback in a temp dir; [`Procs`] kills every process on the way out,
//! panics included. The bench (`benches/scale/main.rs`) and the test (`tests/scale.rs`) share
//! this module through `#[path]`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::backend::SelfExe;
use super::inotify::DirEvents;
use super::load::{Failure, Load, LoadOptions, Tally};
use super::procs::Procs;

/// The front and how it learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// nginx, `reload = { signal = "HUP", target = "main" }` on every change.
    Nginx,
    /// HAProxy master-worker, reloaded on every change (see [`HaproxyReload`]).
    Haproxy,
    /// HAProxy with `runtime = { haproxy = "<admin socket>" }`: server changes through the
    /// Runtime API, no reload.
    HaproxyRuntime,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Nginx, Mode::Haproxy, Mode::HaproxyRuntime];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Nginx => "nginx",
            Mode::Haproxy => "haproxy",
            Mode::HaproxyRuntime => "haproxy-runtime",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Nginx => "nginx, reload (HUP) per change",
            Mode::Haproxy => "HAProxy master-worker, reload per change",
            Mode::HaproxyRuntime => "HAProxy master-worker, Runtime API updates",
        }
    }
}

/// How the front's rewire reloads HAProxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaproxyReload {
    /// `reload = { haproxy_master = "<master socket>" }`: through the master CLI, confirmed.
    Master,
    /// `reload = { signal = "USR2", target = "main" }`.
    Signal,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// How HAProxy is reloaded (the HAProxy modes).
    pub haproxy_reload: HaproxyReload,
    /// Backends running at the start.
    pub backends: usize,
    /// Scale events (alternately a stop and a start).
    pub events: usize,
    /// Time between two events.
    pub interval: Duration,
    pub rps: f64,
    pub connections: usize,
    /// The requests' method: GET, or POST to see what happens to requests a front must not
    /// send twice.
    pub method: hyper::Method,
    /// The backends' `[main] drain`.
    pub drain: Duration,
    /// The front's `[defaults] wait` (min, max); `None` keeps rewire's default.
    pub wait: Option<(Duration, Duration)>,
    /// Scale down with SIGKILL (rewire and the server die at once, nothing deregisters).
    pub kill: bool,
    /// KV `nginx/keepalive_timeout` (the template's default when `None`).
    pub nginx_keepalive_timeout: Option<String>,
    /// Budget for one request.
    pub request_timeout: Duration,
    /// The rewire binary.
    pub rewire: PathBuf,
    /// Where the front's template (`nginx.conf.tera`, `haproxy.cfg.tera`) comes from: the
    /// shipped `templates/` unless an experiment says otherwise.
    pub templates: PathBuf,
    pub nginx: PathBuf,
    pub haproxy: PathBuf,
    /// How the backends and their health checks are run.
    pub self_exe: SelfExe,
    /// Keep the temp dir (logs, configs) and name it in the report.
    pub keep: bool,
    /// Print a line per event on stderr.
    pub verbose: bool,
}

impl Options {
    /// The defaults of the benchmark: 6 backends, 50 events 1.5 s apart, 200 requests/s on 20
    /// connections, drain 3 s, rewire's default wait.
    pub fn new(mode: Mode, rewire: PathBuf, self_exe: SelfExe) -> Options {
        Options {
            mode,
            haproxy_reload: HaproxyReload::Master,
            backends: 6,
            events: 50,
            interval: Duration::from_millis(1500),
            rps: 200.0,
            connections: 20,
            method: hyper::Method::GET,
            drain: Duration::from_secs(3),
            wait: None,
            kill: false,
            nginx_keepalive_timeout: None,
            request_timeout: Duration::from_secs(5),
            rewire,
            templates: Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
            nginx: find_program("nginx", "REWIRE_NGINX_BIN").unwrap_or_else(|| "nginx".into()),
            haproxy: find_program("haproxy", "REWIRE_HAPROXY_BIN")
                .unwrap_or_else(|| "haproxy".into()),
            self_exe,
            keep: false,
            verbose: false,
        }
    }

    /// A short name for summary tables: "nginx, SIGTERM, drain 3s".
    pub fn label(&self) -> String {
        let keepalive = match (
            &self.nginx_keepalive_timeout,
            self.mode,
            self.haproxy_reload,
        ) {
            (Some(k), Mode::Nginx, _) => format!(" (keepalive_timeout {k})"),
            (_, Mode::Haproxy | Mode::HaproxyRuntime, HaproxyReload::Signal) => {
                " (USR2)".to_string()
            }
            _ => String::new(),
        };
        if self.kill {
            format!("{}{keepalive}, {}, SIGKILL", self.mode.name(), self.method)
        } else {
            format!(
                "{}{keepalive}, {}, SIGTERM, drain {}",
                self.mode.name(),
                self.method,
                secs(self.drain)
            )
        }
    }

    /// One line saying what ran.
    pub fn title(&self) -> String {
        let wait = match self.wait {
            Some((min, max)) => format!("wait {}/{}", secs(min), secs(max)),
            None => "wait default (500ms/2s)".into(),
        };
        let keepalive = match (
            &self.nginx_keepalive_timeout,
            self.mode,
            self.haproxy_reload,
        ) {
            (Some(k), Mode::Nginx, _) => format!(", client keepalive_timeout {k}"),
            (_, Mode::Haproxy | Mode::HaproxyRuntime, HaproxyReload::Master) => {
                " (reloads through the master CLI)".to_string()
            }
            (_, Mode::Haproxy | Mode::HaproxyRuntime, HaproxyReload::Signal) => {
                " (reloads by SIGUSR2)".to_string()
            }
            _ => String::new(),
        };
        format!(
            "{}{keepalive}: {} backends, {} events ({} / start, every {}), drain {}, front {wait}, {} {} req/s on {} keep-alive connections",
            self.mode.describe(),
            self.backends,
            self.events,
            if self.kill { "SIGKILL" } else { "SIGTERM" },
            secs(self.interval),
            secs(self.drain),
            self.rps,
            self.method,
            self.connections,
        )
    }
}

/// What one run measured.
pub struct Report {
    pub title: String,
    pub label: String,
    /// Scale-downs were SIGKILLs.
    pub kill: bool,
    pub tally: Tally,
    /// How long the load ran.
    pub load_time: Duration,
    pub scale_downs: usize,
    /// Signal -> the front's file no longer lists the backend, per scale-down observed.
    pub out_of_config: Vec<Duration>,
    pub scale_ups: usize,
    /// Start -> the front's file lists the backend.
    pub start_to_config: Vec<Duration>,
    /// Start -> the first response from the backend.
    pub start_to_served: Vec<Duration>,
    /// Reloads rewire performed during the events (its log's `reloaded` lines).
    pub reloads_sent: Option<u64>,
    /// Reloads HAProxy's master did during the events (`show proc`); `None` for nginx.
    pub reloads_done: Option<u64>,
    /// SIGUSR2 the run sent itself during setup because HAProxy had dropped rewire's.
    pub setup_resends: u32,
    /// Failed requests that started within 0.2 s and within 1 s after a change of the front's
    /// file.
    pub failed_near_change: (usize, usize),
    /// The temp dir, when kept.
    pub kept: Option<PathBuf>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.tally.failed.len()
    }

    /// The report as a two-column markdown table, with failure samples below it.
    pub fn table(&self) -> String {
        let mut out = format!("{}\n\n| metric | value |\n|---|---|\n", self.title);
        let t = &self.tally;
        let requests = t.requests();
        out += &format!(
            "| requests | {requests} ({:.1}/s) |\n",
            requests as f64 / self.load_time.as_secs_f64().max(0.001)
        );
        let kinds = t.by_kind();
        let by_kind: Vec<String> = Failure::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), kinds.get(k).copied().unwrap_or(0)))
            .collect();
        out += &format!(
            "| failed | {} ({:.3} %): {} |\n",
            self.failed(),
            100.0 * self.failed() as f64 / requests.max(1) as f64,
            by_kind.join(", ")
        );
        let (p50, p99, max) = self.latency_ms();
        out += &format!("| latency p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.1} ms |\n");
        let signal = if self.kill { "SIGKILL" } else { "SIGTERM" };
        out += &format!(
            "| {signal} -> out of the front's config | {} |\n",
            spread(&self.out_of_config, self.scale_downs)
        );
        out += &format!(
            "| start -> in the front's config | {} |\n",
            spread(&self.start_to_config, self.scale_ups)
        );
        out += &format!(
            "| start -> first request served | {} |\n",
            spread(&self.start_to_served, self.scale_ups)
        );
        let count = |n: Option<u64>| n.map_or("?".to_string(), |n| n.to_string());
        match self.reloads_done {
            None => {
                out += &format!(
                    "| front reloads during the events | {} |\n",
                    count(self.reloads_sent)
                )
            }
            Some(done) => {
                out += &format!(
                    "| reloads during the events: signalled by rewire / done by HAProxy | {} / {done} |\n",
                    count(self.reloads_sent)
                )
            }
        }
        out += &format!(
            "| failed within 0.2 s / 1 s after a config change | {} / {} |\n",
            self.failed_near_change.0, self.failed_near_change.1
        );
        let mut samples: BTreeMap<(Failure, String), usize> = BTreeMap::new();
        for f in &t.failed {
            *samples.entry((f.kind, f.detail.clone())).or_insert(0) += 1;
        }
        for ((kind, detail), n) in samples.iter().take(8) {
            out += &format!("\n  {n} x {}: {detail}", kind.name());
        }
        if self.setup_resends > 0 {
            out += &format!(
                "\n  setup: HAProxy dropped a reload; the run re-sent SIGUSR2 {} time(s)",
                self.setup_resends
            );
        }
        if let Some(dir) = &self.kept {
            out += &format!("\n  logs and configs kept in {}", dir.display());
        }
        out
    }

    /// Reloads rewire signalled that HAProxy never did.
    pub fn lost_reloads(&self) -> u64 {
        match (self.reloads_sent, self.reloads_done) {
            (Some(sent), Some(done)) => sent.saturating_sub(done),
            _ => 0,
        }
    }

    /// p50, p99 and max latency of the successful requests, in ms.
    pub fn latency_ms(&self) -> (f64, f64, f64) {
        let mut l = self.tally.latencies_us.clone();
        l.sort_unstable();
        let at = |p: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((l.len() - 1) as f64 * p).round() as usize;
            l[i.min(l.len() - 1)] as f64 / 1000.0
        };
        (at(0.5), at(0.99), at(1.0))
    }
}

/// "median 0.62 s, max 0.80 s (25 of 25)".
fn spread(d: &[Duration], of: usize) -> String {
    if d.is_empty() {
        return format!("- (0 of {of})");
    }
    let mut v = d.to_vec();
    v.sort_unstable();
    format!(
        "median {:.2} s, max {:.2} s ({} of {of})",
        v[(v.len() - 1) / 2].as_secs_f64(),
        v[v.len() - 1].as_secs_f64(),
        v.len()
    )
}

fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A backend of the run.
struct Backend {
    id: String,
    port: u16,
    pid: u32,
    dir: PathBuf,
    started: Instant,
    stopped: Option<Instant>,
    /// Started by an event (not one of the initial backends).
    by_event: bool,
}

/// Runs one scale scenario.
pub fn run(o: &Options) -> anyhow::Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("rewire-scale-")
        .tempdir()
        .context("temp dir")?;
    // Declared after `dir`, so dropped (every process killed) before the dir is removed.
    let procs = Procs::default();
    let mut report = run_in(o, dir.path(), &procs);
    procs.kill_all();
    if o.keep || report.is_err() && std::env::var_os("REWIRE_SCALE_KEEP").is_some() {
        let kept = dir.keep();
        match &mut report {
            Ok(r) => r.kept = Some(kept),
            Err(e) => eprintln!("scale: run dir kept in {} ({e})", kept.display()),
        }
    }
    report
}

fn run_in(o: &Options, root: &Path, procs: &Procs) -> anyhow::Result<Report> {
    let mut run = Run::new(o, root, procs)?;
    let dest = run.write_front()?;
    let watch = ConfigWatch::start(&run.front, &dest)?;
    let front_pid = run.start_front()?;
    for _ in 0..o.backends {
        run.start_backend(false)?;
    }
    let setup_resends = wait_ready(o, &run.front, run.front_addr, &watch, &run.backends)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", run.diagnostics()))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let load = Load::start(
        rt.handle(),
        LoadOptions {
            addr: run.front_addr,
            method: o.method.clone(),
            path: "/web/".into(),
            connections: o.connections,
            rps: o.rps,
            timeout: o.request_timeout,
        },
    );
    let load_started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    let before = run.reloads();
    let events_started = Instant::now();
    for k in 0..o.events {
        sleep_until(events_started + o.interval * k as u32);
        if k % 2 == 0 {
            run.scale_down(k)?;
        } else {
            run.scale_up(k)?;
        }
    }
    run.settle(&watch, &load);
    let after = run.reloads();
    std::thread::sleep(Duration::from_secs(1));
    let first_seen = load
        .first_seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tally = load.stop(rt.handle());
    let load_time = load_started.elapsed();
    if procs.exited(front_pid).is_some() {
        bail!(
            "the front's rewire exited during the run\n{}",
            run.diagnostics()
        );
    }
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    let mut report = Report {
        title: o.title(),
        label: o.label(),
        kill: o.kill,
        load_time,
        scale_downs: run.backends.iter().filter(|b| b.stopped.is_some()).count(),
        out_of_config: Vec::new(),
        scale_ups: run.backends.iter().filter(|b| b.by_event).count(),
        start_to_config: Vec::new(),
        start_to_served: Vec::new(),
        reloads_sent: delta(before.0, after.0),
        reloads_done: delta(before.1, after.1),
        setup_resends,
        failed_near_change: (0, 0),
        tally,
        kept: None,
    };
    measure(&mut report, &run.backends, &watch, &first_seen);
    Ok(report)
}

/// Fills in the timings: signal -> out of config, start -> in config, start -> first served,
/// and the failures that followed a config change.
fn measure(
    r: &mut Report,
    backends: &[Backend],
    watch: &ConfigWatch,
    first_seen: &HashMap<String, Instant>,
) {
    for b in backends {
        if let Some(at) = b.stopped
            && let Some(gone) = watch.first_without(b.port, at)
        {
            r.out_of_config.push(gone - at);
        }
        if b.by_event {
            if let Some(listed) = watch.first_with(b.port, b.started) {
                r.start_to_config.push(listed - b.started);
            }
            if let Some(&served) = first_seen.get(&b.id) {
                r.start_to_served
                    .push(served.saturating_duration_since(b.started));
            }
        }
    }
    let changes = watch.change_times();
    let near = |within: Duration| {
        r.tally
            .failed
            .iter()
            .filter(|f| {
                changes
                    .iter()
                    .any(|&c| c <= f.at && f.at.duration_since(c) <= within)
            })
            .count()
    };
    r.failed_near_change = (
        near(Duration::from_millis(200)),
        near(Duration::from_secs(1)),
    );
}

/// The state of one run: where things live, and the backends so far.
struct Run<'a> {
    o: &'a Options,
    procs: &'a Procs,
    root: &'a Path,
    catalog: PathBuf,
    front: PathBuf,
    front_log: PathBuf,
    front_addr: SocketAddr,
    ports: Ports,
    backends: Vec<Backend>,
}

impl<'a> Run<'a> {
    fn new(o: &'a Options, root: &'a Path, procs: &'a Procs) -> anyhow::Result<Run<'a>> {
        let catalog = root.join("catalog");
        std::fs::create_dir_all(catalog.join("services/web"))?;
        let front = root.join("front");
        std::fs::create_dir_all(&front)?;
        let mut ports = Ports::default();
        let front_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.take()?));
        Ok(Run {
            o,
            procs,
            root,
            catalog,
            front_log: front.join("rewire.log"),
            front,
            front_addr,
            ports,
            backends: Vec::new(),
        })
    }

    /// Writes the front's KV settings and rewire.toml; returns the rendered file's path.
    fn write_front(&self) -> anyhow::Result<PathBuf> {
        let kv = |key: &str, value: &str| -> std::io::Result<()> {
            let p = self.catalog.join("kv").join(key);
            std::fs::create_dir_all(p.parent().expect("a kv path has a parent"))?;
            std::fs::write(p, value)
        };
        let listen = self.front_addr.to_string();
        let front = &self.front;
        let (template, dest) = match self.o.mode {
            Mode::Haproxy | Mode::HaproxyRuntime => {
                kv("haproxy/listen", &listen)?;
                kv("haproxy/check_path", "/health")?;
                kv("haproxy/log_level", "notice")?;
                ("haproxy.cfg.tera", front.join("haproxy.cfg"))
            }
            Mode::Nginx => {
                kv("nginx/listen", &listen)?;
                if let Some(k) = &self.o.nginx_keepalive_timeout {
                    kv("nginx/keepalive_timeout", k)?;
                }
                ("nginx.conf.tera", front.join("nginx.conf"))
            }
        };
        let toml = front.join("rewire.toml");
        std::fs::write(
            &toml,
            front_config(self.o, &self.catalog, front, template, &dest),
        )?;
        if self.o.mode == Mode::HaproxyRuntime {
            refuse_without_runtime(self.o, &toml)?;
        }
        Ok(dest)
    }

    /// Starts the front's rewire and waits until the front answers (with no backend yet:
    /// nginx 502, HAProxy 503), plus a moment: HAProxy's master ignores signals just after it
    /// starts.
    fn start_front(&self) -> anyhow::Result<u32> {
        let toml = self.front.join("rewire.toml");
        let pid = spawn_rewire(self.o, self.procs, "front", &toml, &self.front_log)?;
        if !poll(Duration::from_secs(60), || {
            get(self.front_addr, "/web/").is_some()
        }) {
            bail!(
                "the front never answered within 60 s\n{}",
                self.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(pid)
    }

    fn start_backend(&mut self, by_event: bool) -> anyhow::Result<&Backend> {
        let id = format!("web-{}", self.backends.len() + 1);
        let port = self.ports.take()?;
        let dir = self.root.join(&id);
        std::fs::create_dir_all(&dir)?;
        let toml = dir.join("rewire.toml");
        std::fs::write(
            &toml,
            backend_config(self.o, &self.catalog, &dir, &id, port),
        )?;
        let started = Instant::now();
        let pid = spawn_rewire(self.o, self.procs, &id, &toml, &dir.join("rewire.log"))?;
        self.backends.push(Backend {
            id,
            port,
            pid,
            dir,
            started,
            stopped: None,
            by_event,
        });
        Ok(self.backends.last().expect("just pushed"))
    }

    /// Stops the oldest running backend: SIGTERM to its rewire, or SIGKILL to rewire and
    /// server together.
    fn scale_down(&mut self, k: usize) -> anyhow::Result<()> {
        let (o, procs) = (self.o, self.procs);
        let Some(b) = self.backends.iter_mut().find(|b| b.stopped.is_none()) else {
            bail!("no backend left to stop");
        };
        b.stopped = Some(Instant::now());
        if o.kill {
            procs.kill_tree(b.pid);
        } else {
            procs
                .signal(b.pid, libc::SIGTERM)
                .with_context(|| format!("SIGTERM {}", b.id))?;
        }
        if o.verbose {
            let how = if o.kill { "SIGKILL" } else { "SIGTERM" };
            eprintln!(
                "scale: event {}/{}: {how} {} (port {})",
                k + 1,
                o.events,
                b.id,
                b.port
            );
        }
        Ok(())
    }

    fn scale_up(&mut self, k: usize) -> anyhow::Result<()> {
        let (verbose, events) = (self.o.verbose, self.o.events);
        let b = self.start_backend(true)?;
        if verbose {
            eprintln!(
                "scale: event {}/{events}: start {} (port {})",
                k + 1,
                b.id,
                b.port
            );
        }
        Ok(())
    }

    /// Waits until every stopped backend is out of the front's config (and, stopped
    /// gracefully, has exited) and every new one was served. A SIGKILLed backend leaves the
    /// config when its TTL runs out. Gives up after drain + 40 s: the report then shows what
    /// never happened.
    fn settle(&self, watch: &ConfigWatch, load: &Load) {
        let settle = self.o.drain + Duration::from_secs(40);
        let settled = poll(settle, || {
            let seen = load.first_seen.lock().unwrap_or_else(|e| e.into_inner());
            self.backends.iter().all(|b| match b.stopped {
                Some(at) => {
                    watch.first_without(b.port, at).is_some()
                        && (self.o.kill || self.procs.exited(b.pid).is_some())
                }
                None => !b.by_event || seen.contains_key(&b.id),
            })
        });
        if !settled && self.o.verbose {
            eprintln!(
                "scale: not settled after {}: some backends never left the config or were never served",
                secs(settle)
            );
        }
    }

    /// (reloads rewire performed, reloads HAProxy did) so far.
    fn reloads(&self) -> (Option<u64>, Option<u64>) {
        (
            reloads_sent(&self.front_log),
            reloads_done(self.o.mode, &self.front),
        )
    }

    fn diagnostics(&self) -> String {
        diagnostics(self.procs, &self.front_log, &self.backends)
    }
}

/// The haproxy-runtime mode needs `runtime = { haproxy = ... }` in `[[template]]`: ask this
/// rewire whether it knows the key before starting anything.
fn refuse_without_runtime(o: &Options, front_toml: &Path) -> anyhow::Result<()> {
    let out = Command::new(&o.rewire)
        .args(["check", "-c"])
        .arg(front_toml)
        .output()
        .with_context(|| format!("run {} check", o.rewire.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("runtime") {
        bail!(
            "haproxy-runtime: this rewire ({}) does not know `runtime = {{ haproxy = \"...\" }}` in [[template]] yet (HAProxy Runtime API updates, issue 14 item 1); `rewire check` says:\n{}",
            o.rewire.display(),
            text.trim()
        );
    }
    bail!(
        "haproxy-runtime: rewire check rejected the front's config:\n{}",
        text.trim()
    )
}

fn front_config(o: &Options, catalog: &Path, front: &Path, template: &str, dest: &Path) -> String {
    let source = o.templates.join(template);
    let mut c = format!(
        "[catalog]\nbackend = \"dir\"\npath = {}\n\n[control]\nsocket = {}\n\n",
        toml_str(catalog),
        toml_str(front.join("rewire.sock"))
    );
    if let Some((min, max)) = o.wait {
        c += &format!(
            "[defaults]\nwait = {{ min = \"{}ms\", max = \"{}ms\" }}\n\n",
            min.as_millis(),
            max.as_millis()
        );
    }
    c += &format!(
        "[[template]]\nsource = {}\ndestination = {}\n",
        toml_str(&source),
        toml_str(dest)
    );
    let front_prefix = format!("{}/", front.display());
    match o.mode {
        Mode::Nginx => {
            c += &format!(
                "check = {}\nreload = {{ signal = \"HUP\", target = \"main\" }}\n\n[main]\nexec = {}\nstop_signal = \"QUIT\"\nstop_timeout = \"5s\"\n",
                toml_argv(&[
                    &o.nginx.display().to_string(),
                    "-t",
                    "-q",
                    "-p",
                    &front_prefix,
                    "-e",
                    "stderr",
                    "-c",
                    "{file}"
                ]),
                toml_argv(&[
                    &o.nginx.display().to_string(),
                    "-p",
                    &front_prefix,
                    "-e",
                    "stderr",
                    "-c",
                    &dest.display().to_string(),
                    "-g",
                    "daemon off;"
                ]),
            );
        }
        Mode::Haproxy | Mode::HaproxyRuntime => {
            let reload = match o.haproxy_reload {
                HaproxyReload::Master => format!(
                    "{{ haproxy_master = {} }}",
                    toml_str(front.join("master.sock"))
                ),
                HaproxyReload::Signal => "{ signal = \"USR2\", target = \"main\" }".into(),
            };
            c += &format!(
                "check = {}\nreload = {reload}\n",
                toml_argv(&[
                    &o.haproxy.display().to_string(),
                    "-c",
                    "-dW",
                    "-f",
                    "{file}"
                ]),
            );
            if o.mode == Mode::HaproxyRuntime {
                c += &format!(
                    "runtime = {{ haproxy = {} }}\n",
                    toml_str(front.join("admin.sock"))
                );
            }
            c += &format!(
                "\n[main]\nexec = {}\nstop_timeout = \"5s\"\n",
                toml_argv(&[
                    &o.haproxy.display().to_string(),
                    "-W",
                    "-S",
                    &front.join("master.sock").display().to_string(),
                    "-f",
                    &dest.display().to_string(),
                ]),
            );
        }
    }
    c
}

fn backend_config(o: &Options, catalog: &Path, dir: &Path, id: &str, port: u16) -> String {
    format!(
        "[catalog]\nbackend = \"dir\"\npath = {}\n\n[control]\nsocket = {}\n\n[[service]]\nname = \"web\"\nid = \"{id}\"\nport = {port}\naddress = \"127.0.0.1\"\nhealth = {{ exec = {}, timeout = \"2s\" }}\ninterval = \"2s\"\nttl = \"6s\"\n\n[main]\nexec = {}\ndrain = \"{}ms\"\nstop_timeout = \"10s\"\n",
        toml_str(catalog),
        toml_str(dir.join("rewire.sock")),
        toml_argv_owned(&o.self_exe.check(port)),
        toml_argv_owned(&o.self_exe.serve(port, id)),
        o.drain.as_millis(),
    )
}

fn spawn_rewire(
    o: &Options,
    procs: &Procs,
    name: &str,
    toml: &Path,
    log: &Path,
) -> anyhow::Result<u32> {
    let mut cmd = Command::new(&o.rewire);
    // The shipped templates take the operator's paths from the environment: the front's
    // pid file and admin socket live beside its rewire.toml.
    let dir = toml.parent().unwrap_or(Path::new("."));
    cmd.args(["run", "-c"])
        .arg(toml)
        .env("REWIRE_LOG", "info")
        .env("NGINX_PID", dir.join("nginx.pid"))
        .env("HAPROXY_ADMIN_SOCKET", dir.join("admin.sock"))
        .env_remove("REWIRE_CONFIG");
    procs
        .spawn(name, cmd, log)
        .with_context(|| format!("start {} for {name}", o.rewire.display()))
}

/// Waits until the front's file lists every backend and requests through the front have
/// reached each of them. Returns how many times it re-sent a reload HAProxy had dropped.
fn wait_ready(
    o: &Options,
    front: &Path,
    front_addr: SocketAddr,
    watch: &ConfigWatch,
    backends: &[Backend],
) -> Result<u32, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut served: BTreeSet<String> = BTreeSet::new();
    let mut resends = 0;
    loop {
        if let Some((200, id)) = get(front_addr, "/web/") {
            served.insert(id);
        }
        if backends.iter().all(|b| served.contains(&b.id)) {
            return Ok(resends);
        }
        let listed = watch.current();
        let quiet = watch
            .change_times()
            .last()
            .is_none_or(|t| t.elapsed() > Duration::from_secs(3));
        if o.mode != Mode::Nginx
            && quiet
            && backends.iter().all(|b| listed.contains(&b.port))
            && resends < 3
            && let Some(master) = haproxy_master_pid(front)
        {
            // The file is complete and has not changed for 3 s, yet some backend never
            // answers: HAProxy is running an older config. Reload it again.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(master as libc::pid_t, libc::SIGUSR2) };
            resends += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the front never served all {} backends within 90 s (served: {served:?}, listed ports: {listed:?})",
                backends.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reloads rewire has performed so far (its log's `reloaded` lines).
fn reloads_sent(front_log: &Path) -> Option<u64> {
    let log = std::fs::read_to_string(front_log).ok()?;
    Some(
        log.lines()
            .filter(|l| l.contains(" reloaded") && l.contains("templates="))
            .count() as u64,
    )
}

/// Reloads HAProxy's master has done so far; `None` for nginx.
fn reloads_done(mode: Mode, front: &Path) -> Option<u64> {
    match mode {
        Mode::Haproxy | Mode::HaproxyRuntime => haproxy_master_reloads(&front.join("master.sock")),
        Mode::Nginx => None,
    }
}

/// The HAProxy master's pid, from the master CLI's `show proc`.
fn haproxy_master_pid(front: &Path) -> Option<u32> {
    let out = master_cli(&front.join("master.sock"), "show proc")?;
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The reload counter in the master CLI's `show proc`. The master CLI is gone for a moment
/// while the master re-executes itself for a reload: retried for up to 10 s.
fn haproxy_master_reloads(socket: &Path) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(out) = master_cli(socket, "show proc") {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
            return line.split_whitespace().nth(2)?.parse().ok();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One command on HAProxy's master CLI.
fn master_cli(socket: &Path, command: &str) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{command}\n").as_bytes()).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn diagnostics(procs: &Procs, front_log: &Path, backends: &[Backend]) -> String {
    let mut out = String::new();
    for (name, status) in procs.exits() {
        out += &format!("{name} exited: {status}\n");
    }
    out += &format!("--- front log (last 30 lines):\n{}\n", tail(front_log, 30));
    if let Some(b) = backends.first() {
        out += &format!(
            "--- {} log (last 15 lines):\n{}\n",
            b.id,
            tail(&b.dir.join("rewire.log"), 15)
        );
    }
    out
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET path` on `addr` (one connection, closed after the answer): status and trimmed body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.trim().to_string()))
}

/// Free loopback ports, never the same one twice in a run.
#[derive(Default)]
struct Ports {
    used: BTreeSet<u16>,
}

impl Ports {
    fn take(&mut self) -> std::io::Result<u16> {
        loop {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            if self.used.insert(port) {
                return Ok(port);
            }
        }
    }
}

/// Versions of the front's file: when each was seen, and the backend ports it lists.
type Versions = Arc<Mutex<Vec<(Instant, BTreeSet<u16>)>>>;

/// Every version of the front's rendered file, as the set of backend ports its `server`
/// lines name, with the time the version was seen.
struct ConfigWatch {
    versions: Versions,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ConfigWatch {
    fn start(dir: &Path, dest: &Path) -> anyhow::Result<ConfigWatch> {
        let inotify = DirEvents::new(dir)?;
        let versions: Versions = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s, dest) = (versions.clone(), stop.clone(), dest.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("scale-config-watch".into())
            .spawn(move || {
                let mut last: Option<String> = None;
                while !s.load(Ordering::Relaxed) {
                    let woke = inotify.wait(Duration::from_millis(100));
                    let at = Instant::now();
                    if !woke && last.is_some() {
                        continue;
                    }
                    let Ok(text) = std::fs::read_to_string(&dest) else {
                        continue;
                    };
                    if last.as_deref() != Some(text.as_str()) {
                        v.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((at, server_ports(&text)));
                        last = Some(text);
                    }
                }
            })?;
        Ok(ConfigWatch {
            versions,
            stop,
            thread: Some(thread),
        })
    }

    fn versions(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, BTreeSet<u16>)>> {
        self.versions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> BTreeSet<u16> {
        self.versions()
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    /// When the first version seen after `after` without `port` appeared.
    fn first_without(&self, port: u16, after: Instant) -> Option<Instant> {
        self.versions()
            .iter()
            .find(|(at, p)| *at >= after && !p.contains(&port))
            .map(|(at, _)| *at)
    }

    /// When the first version seen after `after` with `port` appeared.
    fn first_with(&self, port: u16, after: Instant) -> Option<Instant> {
        self.versions()
            .iter()
            .find(|(at, p)| *at >= after && p.contains(&port))
            .map(|(at, _)| *at)
    }

    fn change_times(&self) -> Vec<Instant> {
        self.versions().iter().skip(1).map(|(at, _)| *at).collect()
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Ports of `127.0.0.1:PORT` on `server` lines (nginx `server 127.0.0.1:P;`, HAProxy
/// `server NAME 127.0.0.1:P check ...`).
fn server_ports(text: &str) -> BTreeSet<u16> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .filter_map(|l| {
            let rest = &l[l.find("127.0.0.1:")? + "127.0.0.1:".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// `$ENV_VAR`, else `name` on PATH or in /usr/sbin and /sbin.
pub fn find_program(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A TOML basic string.
fn toml_str(p: impl AsRef<Path>) -> String {
    let s = p.as_ref().display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn toml_argv(argv: &[&str]) -> String {
    let items: Vec<String> = argv.iter().map(toml_str).collect();
    format!("[{}]", items.join(", "))
}

fn toml_argv_owned(argv: &[String]) -> String {
    let items: Vec<String> = argv.iter().map(toml_str).collect();
    format!("[{}]", items.join(", "))
}
