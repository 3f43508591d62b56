//! Reaction benchmark: a catalog change is acknowledged → the rendered file holds it.
//!
//! `cargo bench --bench reaction -- [dir] [etcd] [consul] [--changes N] [--idle-secs S]`
//!
//! For each backend, with 1 and with 1 000 instances of one service: start the release
//! `rewire run` (wait.min = 0), then make N changes 50 ms apart. Each change moves one
//! "marker" instance to a new port; the clock starts when the write is acknowledged (the
//! rename returned, the etcd put or Consul register answered) and stops when the destination
//! holds the new port (the destination's directory is watched with inotify, read by the
//! measuring thread itself so that the observer adds one wake-up, and the file is re-read on
//! each event). Prints median / p90 / p99, the daemon's RSS (VmRSS after 2 s idle)
//! and its CPU over the idle period (utime + stime). Everything runs on loopback on this
//! machine. Run by `cargo test --all-targets` (no `--bench`), it only does a short smoke run.

#[path = "support/inotify.rs"]
mod inotify;
// The integration tests' harnesses; this benchmark needs only Consul, etcd and `poll_until`.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use inotify::DirEvents;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    backends: Vec<String>,
    changes: usize,
    idle: Duration,
    sizes: Vec<usize>,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let bench = raw.iter().any(|a| a == "--bench");
    let mut a = Args {
        backends: Vec::new(),
        changes: if bench { 200 } else { 5 },
        idle: Duration::from_secs(if bench { 60 } else { 1 }),
        sizes: if bench { vec![1, 1000] } else { vec![1] },
    };
    let mut it = raw.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--changes" => a.changes = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.changes),
            "--idle-secs" => {
                a.idle = Duration::from_secs(it.next().and_then(|v| v.parse().ok()).unwrap_or(60))
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

/// Writes instances into one backend; returns when the write is acknowledged.
trait Writer {
    fn put(&mut self, id: &str, addr: &str, port: u16);
    fn catalog_config(&self) -> String;
}

struct DirWriter {
    root: PathBuf,
}

impl Writer for DirWriter {
    fn put(&mut self, id: &str, addr: &str, port: u16) {
        let dir = self.root.join("services/web");
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!(".{id}.tmp"));
        std::fs::write(&tmp, format!(r#"{{"address":"{addr}","port":{port}}}"#)).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{id}.json"))).unwrap();
    }
    fn catalog_config(&self) -> String {
        format!(
            "[catalog]\nbackend = \"dir\"\npath = \"{}\"\n",
            self.root.display()
        )
    }
}

struct EtcdWriter {
    etcd: support::Etcd,
}

impl Writer for EtcdWriter {
    fn put(&mut self, id: &str, addr: &str, port: u16) {
        let key = format!("/rewire/services/web/{id}");
        self.etcd
            .put(&key, &format!(r#"{{"address":"{addr}","port":{port}}}"#));
    }
    fn catalog_config(&self) -> String {
        format!(
            "[catalog]\nbackend = \"etcd\"\nendpoints = {:?}\nprefix = \"/rewire\"\n",
            self.etcd.endpoints()
        )
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

struct Row {
    backend: String,
    instances: usize,
    median: f64,
    p90: f64,
    p99: f64,
    rss_kb: u64,
    idle_cpu: f64,
    idle_secs: u64,
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
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(["run", "-c"])
        .arg(dir.path().join("rewire.toml"))
        .env("REWIRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rewire");
    let pid = child.id();
    let ready = support::poll_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&dest)
            .is_ok_and(|t| t.contains(":10000;") && t.lines().count() == instances)
    });
    assert!(ready, "{backend}: first render never arrived");

    let events = DirEvents::new(dest.parent().unwrap()).expect("watch the destination's directory");

    let mut samples = Vec::with_capacity(a.changes);
    for n in 0..a.changes {
        let port = 10_001 + n as u16;
        let marker = format!(":{port};");
        events.drain();
        w.put("marker", "10.9.9.9", port);
        let acked = Instant::now();
        loop {
            if std::fs::read_to_string(&dest).is_ok_and(|t| t.contains(&marker)) {
                break;
            }
            if !events.wait(Duration::from_secs(30)) {
                panic!("{backend}: change {n} never reached the file");
            }
        }
        samples.push(acked.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_kb = proc_rss_kb(pid);
    let cpu0 = proc_cpu_secs(pid);
    std::thread::sleep(a.idle);
    let idle_cpu = proc_cpu_secs(pid) - cpu0;
    let _ = child.kill();
    let _ = child.wait();
    samples.sort_by(|x, y| x.total_cmp(y));
    Some(Row {
        backend: backend.to_string(),
        instances,
        median: percentile(&samples, 0.5),
        p90: percentile(&samples, 0.9),
        p99: percentile(&samples, 0.99),
        rss_kb,
        idle_cpu,
        idle_secs: a.idle.as_secs(),
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
        "\nReaction: catalog write acknowledged -> destination updated ({} changes, 50 ms apart, wait.min = 0)",
        a.changes
    );
    println!(
        "| backend | instances | median ms | p90 ms | p99 ms | RSS after 2 s idle | idle CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} MB | {:.2} s / {} s |",
            r.backend,
            r.instances,
            r.median,
            r.p90,
            r.p99,
            r.rss_kb as f64 / 1024.0,
            r.idle_cpu,
            r.idle_secs
        );
    }
}
