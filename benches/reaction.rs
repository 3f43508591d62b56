//! Reaction benchmark: a catalog change is acknowledged → the rendered file holds it, beside
//! the store's own answer to the same change (its floor), and where rewire's time goes.
//!
//! `cargo bench --bench reaction -- [dir] [etcd] [consul] [--changes N] [--idle-secs S]
//! [--sizes 1,1000]`; `REWIRE_BIN=target/dist/rewire` measures a given binary (default: the
//! one cargo built for the bench).
//!
//! For each backend, with 1 and with 1 000 instances of one service: start `rewire run` (one
//! template, `wait = 0`, telemetry off), then make N changes 50 ms apart. Each change moves one
//! "marker" instance to a new port. Three instants per change, all read from the same
//! monotonic clock:
//!
//! - ack: the write is acknowledged (the dir writer's rename returned; the etcd put or the
//!   Consul register answered);
//! - floor: the store's own answer reached a plain client started before the change
//!   (`support/floor.rs`: an inotify watch on the catalog directory; a raw etcd watch on the
//!   prefix rewire watches; a raw Consul blocking query on the endpoint rewire uses, read to
//!   its end), each a thread blocked until the kernel wakes it;
//! - file: the destination holds the new port. The destination's directory is watched with
//!   inotify in the measuring thread itself (blocked in `poll`, no polling loop: one wake-up),
//!   and the file is re-read on each event.
//!
//! Prints median / p90 / p99 of file - ack, of floor - ack and of file - floor (rewire's
//! overhead over the store); of a plain durable write of the same bytes beside the destination
//! (create, write, fsync, rename: what the disk charges any program for one, timed 25 ms after
//! each change, since a virtual disk's fsync varies from hour to hour); the daemon's RSS (VmRSS
//! after 2 s idle) and its CPU over the idle period (utime + stime). Then a second rewire runs with `rewire::timing=trace` (see
//! `src/timing.rs`) for half as many changes, and the median time from ack to each stage
//! (received, decoded, store updated, runner woken, render done, temp written, fsync, rename,
//! directory fsync) is printed: the trace lines cost a few microseconds each, which is why the
//! first table comes from a rewire without them. Everything runs on loopback on this machine.
//! Run by `cargo test --all-targets` (no `--bench`), it only does a short smoke run (dir,
//! 1 instance, 5 changes), where a missing floor or breakdown is reported, never a failure.

#[path = "support/floor.rs"]
mod floor;
#[path = "support/inotify.rs"]
mod inotify;
// The integration tests' harnesses; this benchmark needs only Consul, etcd and `poll_until`.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use floor::Floor;
use inotify::DirEvents;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    backends: Vec<String>,
    changes: usize,
    idle: Duration,
    sizes: Vec<usize>,
    bin: PathBuf,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let mut a = Args {
        backends: Vec::new(),
        changes: if bench { 200 } else { 5 },
        idle: Duration::from_secs(if bench { 60 } else { 1 }),
        sizes: if bench { vec![1, 1000] } else { vec![1] },
        bin: std::env::var_os("REWIRE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rewire"))),
    };
    let mut it = raw.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--changes" => a.changes = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.changes),
            "--idle-secs" => {
                a.idle = Duration::from_secs(it.next().and_then(|v| v.parse().ok()).unwrap_or(60))
            }
            "--sizes" => {
                if let Some(v) = it.next() {
                    a.sizes = v.split(',').filter_map(|n| n.trim().parse().ok()).collect();
                }
            }
            "dir" | "etcd" | "consul" => a.backends.push(x.clone()),
            _ => {}
        }
    }
    if a.backends.is_empty() {
        a.backends = if bench {
            vec!["dir".into(), "etcd".into(), "consul".into()]
        } else {
            vec!["dir".into()]
        };
    }
    a
}

/// The marker's value in every backend (the etcd floor looks for exactly these bytes).
fn marker_value(addr: &str, port: u16) -> String {
    format!(r#"{{"address":"{addr}","port":{port}}}"#)
}

/// Writes instances into one backend; returns when the write is acknowledged.
trait Writer {
    fn put(&mut self, id: &str, addr: &str, port: u16);
    fn catalog_config(&self) -> String;
    /// A plain observer of this store's answer to the marker's changes.
    fn floor(&self) -> Option<Box<dyn Floor>>;
    fn name(&self) -> &'static str;
}

struct DirWriter {
    root: PathBuf,
}

impl Writer for DirWriter {
    fn put(&mut self, id: &str, addr: &str, port: u16) {
        let dir = self.root.join("services/web");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{id}.tmp"));
        std::fs::write(&tmp, marker_value(addr, port)).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{id}.json"))).unwrap();
    }
    fn catalog_config(&self) -> String {
        format!(
            "[catalog]\nbackend = \"dir\"\npath = \"{}\"\n",
            self.root.display()
        )
    }
    fn floor(&self) -> Option<Box<dyn Floor>> {
        floor::DirFloor::new(&self.root.join("services/web"))
            .ok()
            .map(|f| Box::new(f) as Box<dyn Floor>)
    }
    fn name(&self) -> &'static str {
        "dir"
    }
}

struct EtcdWriter {
    etcd: support::Etcd,
}

impl Writer for EtcdWriter {
    fn put(&mut self, id: &str, addr: &str, port: u16) {
        let key = format!("/rewire/services/web/{id}");
        self.etcd.put(&key, &marker_value(addr, port));
    }
    fn catalog_config(&self) -> String {
        format!(
            "[catalog]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/rewire\"\n",
            self.etcd.endpoints()
        )
    }
    fn floor(&self) -> Option<Box<dyn Floor>> {
        // The prefix rewire's one watch covers.
        floor::EtcdFloor::new(
            &self.etcd.client_addr(),
            "/rewire/",
            Box::new(|port| marker_value("10.9.9.9", port)),
        )
        .ok()
        .map(|f| Box::new(f) as Box<dyn Floor>)
    }
    fn name(&self) -> &'static str {
        "etcd 3.4"
    }
}

struct ConsulWriter {
    consul: support::Consul,
}

impl Writer for ConsulWriter {
    fn put(&mut self, id: &str, addr: &str, port: u16) {
        let body = format!(r#"{{"ID":"{id}","Name":"web","Address":"{addr}","Port":{port}}}"#);
        self.consul.register_service(&body);
    }
    fn catalog_config(&self) -> String {
        format!(
            "[catalog]\nbackend = \"consul\"\naddress = \"http://{}\"\n",
            self.consul.http_addr()
        )
    }
    fn floor(&self) -> Option<Box<dyn Floor>> {
        floor::ConsulFloor::new(&self.consul.http_addr(), "web")
            .ok()
            .map(|f| Box::new(f) as Box<dyn Floor>)
    }
    fn name(&self) -> &'static str {
        "Consul 1.8.7"
    }
}

fn writer(backend: &str, dir: &Path) -> Option<Box<dyn Writer>> {
    match backend {
        "dir" => Some(Box::new(DirWriter {
            root: dir.join("catalog"),
        })),
        "etcd" => {
            support::Etcd::try_start().map(|etcd| Box::new(EtcdWriter { etcd }) as Box<dyn Writer>)
        }
        "consul" => support::Consul::try_start()
            .map(|consul| Box::new(ConsulWriter { consul }) as Box<dyn Writer>),
        _ => None,
    }
}

/// Milliseconds: median, p90, p99 (None without samples).
#[derive(Clone, Copy)]
struct Dist {
    median: f64,
    p90: f64,
    p99: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Option<Dist> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|x, y| x.total_cmp(y));
        Some(Dist {
            median: percentile(&v, 0.5),
            p90: percentile(&v, 0.9),
            p99: percentile(&v, 0.99),
        })
    }
}

fn cell(d: Option<Dist>) -> String {
    match d {
        Some(d) => format!("{:.2} / {:.2} / {:.2}", d.median, d.p90, d.p99),
        None => "n/a".into(),
    }
}

struct Row {
    backend: String,
    instances: usize,
    rewire: Option<Dist>,
    floor: Option<Dist>,
    overhead: Option<Dist>,
    /// The same bytes written durably by a plain program between changes.
    plain_write: Option<Dist>,
    rss_kb: u64,
    idle_cpu: f64,
    idle_secs: u64,
    /// Stage → median ms from ack (the traced run).
    breakdown: BTreeMap<&'static str, f64>,
    /// Floor and file in the traced run, to set the stages beside.
    traced_floor: Option<f64>,
    traced_file: Option<f64>,
}

fn proc_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of rewire's timing marks (and of `Instant`).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns `Instant`s into `mono_ns` readings (both are CLOCK_MONOTONIC on Linux; the offset
/// between them is taken once).
struct Clock {
    base: Instant,
    base_ns: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            base_ns: mono_ns(),
        }
    }
    fn ns(&self, at: Instant) -> i128 {
        self.base_ns as i128 + at.saturating_duration_since(self.base).as_nanos() as i128
            - self.base.saturating_duration_since(at).as_nanos() as i128
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1000.0
    } else {
        -(from.duration_since(to).as_secs_f64() * 1000.0)
    }
}

struct Sample {
    ack: Instant,
    floor: Option<Instant>,
    file: Instant,
    /// A plain durable write of the same bytes on the same file system, 25 ms after the change.
    plain_write: Duration,
}

/// The timing marks a traced rewire printed: (stage, mono_ns).
type Marks = Arc<Mutex<Vec<(String, u64)>>>;

struct Daemon {
    child: Child,
    marks: Marks,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(a: &Args, dir: &Path, traced: bool) -> Daemon {
    let mut cmd = Command::new(&a.bin);
    cmd.args(["run", "-c"])
        .arg(dir.join("rewire.toml"))
        .stdout(Stdio::null());
    if traced {
        cmd.env("REWIRE_LOG", "warn,rewire::timing=trace")
            .args(["--log-format", "json"])
            .stderr(Stdio::piped());
    } else {
        cmd.env("REWIRE_LOG", "warn").stderr(Stdio::inherit());
    }
    let mut child = cmd.spawn().expect("start rewire");
    let marks: Marks = Arc::default();
    if let Some(err) = child.stderr.take() {
        let marks = marks.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                match (v["stage"].as_str(), v["mono_ns"].as_u64()) {
                    (Some(stage), Some(ns)) => marks.lock().unwrap().push((stage.to_string(), ns)),
                    _ => eprintln!("{line}"),
                }
            }
        });
    }
    Daemon { child, marks }
}

/// Makes `changes` changes and measures each (see the module docs).
fn changes(
    w: &mut dyn Writer,
    floor: &mut Option<Box<dyn Floor>>,
    dest: &Path,
    first_port: u16,
    changes: usize,
) -> Vec<Sample> {
    let events = DirEvents::new(dest.parent().unwrap()).expect("watch the destination's directory");
    // Beside `out/`, not in it: nobody watches this directory (the dir catalog watches its
    // root's parent, which reports the directory's creation once, not the files inside).
    let probe = dest.parent().unwrap().with_file_name("probe");
    std::fs::create_dir_all(&probe).expect("create the probe directory");
    let mut samples = Vec::with_capacity(changes);
    for n in 0..changes {
        let port = first_port + n as u16;
        let marker = format!(":{port};");
        if let Some(f) = floor.as_mut() {
            f.arm(port);
        }
        events.drain();
        w.put("marker", "10.9.9.9", port);
        let ack = Instant::now();
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(dest)
                && t.contains(&marker)
            {
                break t;
            }
            if !events.wait(Duration::from_secs(30)) {
                panic!("{}: change {n} never reached the file", w.name());
            }
        };
        let file = Instant::now();
        let floor = floor.as_mut().and_then(|f| f.seen(Duration::from_secs(5)));
        // rewire's directory fsync follows its rename: let it finish before the probe.
        std::thread::sleep(Duration::from_millis(25));
        let plain_write = durable_write(&probe, text.as_bytes(), n);
        samples.push(Sample {
            ack,
            floor,
            file,
            plain_write,
        });
        std::thread::sleep(Duration::from_millis(25));
    }
    samples
}

/// What a durable replace of `bytes` costs this file system right now, without rewire: create a
/// temp file, write, fsync, rename over `dir/file` (rewire's write path up to the moment the
/// new file is visible; the directory fsync after it is not timed, as in rewire).
fn durable_write(dir: &Path, bytes: &[u8], n: usize) -> Duration {
    use std::io::Write;
    let temp = dir.join(format!(".file.{n}"));
    let started = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .expect("create the probe's temp file");
    f.write_all(bytes).expect("write the probe");
    f.sync_all().expect("fsync the probe");
    std::fs::rename(&temp, dir.join("file")).expect("rename the probe");
    let took = started.elapsed();
    drop(f);
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync the probe's directory");
    took
}

const STAGES: [&str; 9] = [
    "received",
    "decoded",
    "store_updated",
    "runner_woken",
    "render_done",
    "temp_written",
    "fsync",
    "rename",
    "dir_fsync",
];

/// Median ms from ack to each stage. A change's marks are those between 10 ms before its ack
/// and 10 ms before the next change's ack (changes are at least 50 ms apart). `received` and
/// `decoded` are the last ones before the store update (a Consul index may move without a
/// change; the dir writer's temp file raises events of its own before the rename), the
/// others the first.
///
/// Also `own`: per change, the file seen minus rewire's `received` (rewire's share alone: a
/// Consul agent serves each waiting query in turn, so rewire's answer may leave the agent
/// after the floor's).
fn breakdown(
    samples: &[Sample],
    marks: &[(String, u64)],
    clock: &Clock,
) -> BTreeMap<&'static str, f64> {
    let mut per: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let ack = clock.ns(s.ack);
        let from = ack - 10_000_000;
        let to = samples
            .get(i + 1)
            .map_or(i128::MAX, |n| clock.ns(n.ack) - 10_000_000);
        let window: Vec<(&str, i128)> = marks
            .iter()
            .map(|(st, ns)| (st.as_str(), *ns as i128))
            .filter(|(_, ns)| *ns >= from && *ns < to)
            .collect();
        let stored = window
            .iter()
            .find(|(st, _)| *st == "store_updated")
            .map(|(_, ns)| *ns);
        for stage in STAGES {
            let at = if stage == "received" || stage == "decoded" {
                window
                    .iter()
                    .filter(|(st, ns)| *st == stage && stored.is_none_or(|s| *ns <= s))
                    .map(|(_, ns)| *ns)
                    .next_back()
            } else {
                window
                    .iter()
                    .find(|(st, _)| *st == stage)
                    .map(|(_, ns)| *ns)
            };
            if let Some(at) = at {
                per.entry(stage).or_default().push((at - ack) as f64 / 1e6);
                if stage == "received" {
                    per.entry("own")
                        .or_default()
                        .push((clock.ns(s.file) - at) as f64 / 1e6);
                }
            }
        }
    }
    per.into_iter()
        .filter_map(|(k, v)| Some((k, Dist::of(v)?.median)))
        .collect()
}

fn run_one(backend: &str, instances: usize, a: &Args) -> Option<Row> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = writer(backend, dir.path())?;
    std::fs::create_dir_all(dir.path().join("catalog/services/web")).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    for i in 1..instances {
        w.put(
            &format!("web-{i}"),
            &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            8080,
        );
    }
    w.put("marker", "10.9.9.9", 10_000);
    std::fs::write(
        dir.path().join("web.tera"),
        "{% for s in service(name=\"web\") %}server {{ s | addr_port }};\n{% endfor %}",
    )
    .unwrap();
    let dest = dir.path().join("out/web.conf");
    std::fs::write(
        dir.path().join("rewire.toml"),
        format!(
            "{}\n[control]\nsocket = \"{}\"\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n[[template]]\nsource = \"web.tera\"\ndestination = \"{}\"\n",
            w.catalog_config(),
            dir.path().join("rewire.sock").display(),
            dest.display()
        ),
    )
    .unwrap();
    let ready = |port: u16| {
        let marker = format!(":{port};");
        support::poll_until(Duration::from_secs(60), || {
            std::fs::read_to_string(&dest)
                .is_ok_and(|t| t.contains(&marker) && t.lines().count() == instances)
        })
    };
    let mut floor = w.floor();
    if floor.is_none() {
        eprintln!("reaction: {backend}: no floor observer; only rewire is measured");
    }

    // The measured run: rewire at its default logging.
    let d = start(a, dir.path(), false);
    let pid = d.child.id();
    assert!(ready(10_000), "{backend}: first render never arrived");
    let samples = changes(w.as_mut(), &mut floor, &dest, 10_001, a.changes);
    std::thread::sleep(Duration::from_secs(2));
    let rss_kb = proc_rss_kb(pid);
    let cpu0 = proc_cpu_secs(pid);
    std::thread::sleep(a.idle);
    let idle_cpu = proc_cpu_secs(pid) - cpu0;
    drop(d);
    let last = 10_000 + a.changes as u16;

    // The traced run: where the time goes.
    let clock = Clock::new();
    let d = start(a, dir.path(), true);
    let traced = if ready(last) {
        let n = (a.changes / 2).max(3);
        let samples = changes(w.as_mut(), &mut floor, &dest, last + 1, n);
        // The last marks (dir fsync) may still be on their way through the pipe.
        std::thread::sleep(Duration::from_millis(200));
        let marks = d.marks.lock().unwrap().clone();
        Some((breakdown(&samples, &marks, &clock), samples))
    } else {
        eprintln!("reaction: {backend}: the traced rewire never rendered; no breakdown");
        None
    };
    drop(d);

    let rewire = Dist::of(samples.iter().map(|s| ms(s.ack, s.file)).collect());
    let floor_d = Dist::of(
        samples
            .iter()
            .filter_map(|s| Some(ms(s.ack, s.floor?)))
            .collect(),
    );
    let overhead = Dist::of(
        samples
            .iter()
            .filter_map(|s| Some(ms(s.floor?, s.file)))
            .collect(),
    );
    let plain_write = Dist::of(
        samples
            .iter()
            .map(|s| s.plain_write.as_secs_f64() * 1000.0)
            .collect(),
    );
    let (breakdown, traced_floor, traced_file) = match traced {
        Some((b, t)) => (
            b,
            Dist::of(t.iter().filter_map(|s| Some(ms(s.ack, s.floor?))).collect())
                .map(|d| d.median),
            Dist::of(t.iter().map(|s| ms(s.ack, s.file)).collect()).map(|d| d.median),
        ),
        None => (BTreeMap::new(), None, None),
    };
    Some(Row {
        backend: w.name().to_string(),
        instances,
        rewire,
        floor: floor_d,
        overhead,
        plain_write,
        rss_kb,
        idle_cpu,
        idle_secs: a.idle.as_secs(),
        breakdown,
        traced_floor,
        traced_file,
    })
}

fn main() {
    let a = args();
    let mut rows = Vec::new();
    for b in &a.backends {
        for &n in &a.sizes {
            match run_one(b, n, &a) {
                Some(r) => rows.push(r),
                None => eprintln!("reaction: {b} not available here; skipped"),
            }
        }
    }
    println!(
        "\nReaction: catalog write acknowledged -> destination updated ({} changes, 50 ms apart, wait = 0, one template, telemetry off; {})",
        a.changes,
        a.bin.display()
    );
    println!(
        "median / p90 / p99, ms; floor: the store's answer reaching a plain client; overhead: file - floor, per change; plain durable write: create, write, fsync and rename the same bytes, 25 ms after each change"
    );
    println!(
        "| backend | instances | floor (from ack) | rewire (from ack) | overhead over the floor | plain durable write | RSS after 2 s idle | idle CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} MB | {:.2} s / {} s |",
            r.backend,
            r.instances,
            cell(r.floor),
            cell(r.rewire),
            cell(r.overhead),
            cell(r.plain_write),
            r.rss_kb as f64 / 1024.0,
            r.idle_cpu,
            r.idle_secs
        );
    }
    println!(
        "\nWhere the time goes: median ms from ack to each stage (a rewire with rewire::timing=trace, {} changes)",
        (a.changes / 2).max(3)
    );
    let mut head = String::from("| backend | instances | floor");
    let mut rule = String::from("|---|---:|---:");
    for s in STAGES {
        head.push_str(&format!(" | {}", s.replace('_', " ")));
        rule.push_str("|---:");
    }
    println!("{head} | file seen | received → file |");
    println!("{rule}|---:|---:|");
    let f = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    for r in &rows {
        let mut line = format!("| {} | {} | {}", r.backend, r.instances, f(r.traced_floor));
        for s in STAGES {
            line.push_str(&format!(" | {}", f(r.breakdown.get(s).copied())));
        }
        println!(
            "{line} | {} | {} |",
            f(r.traced_file),
            f(r.breakdown.get("own").copied())
        );
    }
}
