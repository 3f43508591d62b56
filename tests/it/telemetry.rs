//! `[telemetry]`: /metrics read by the real promtool and a real Prometheus server, /ready and
//! /health through a catalog outage (real etcd behind a gateway we kill), user metrics set
//! with `rewire metric` and by a `[[task]]`, and the listener's HTTP hygiene.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::project::{Project, Running, UPSTREAM, code, stderr};
use crate::support::process::{Daemon, temp_dir};
use crate::support::{
    Etcd, EtcdGateway, TIMEOUT, find_binary, free_port, http, poll_until, skip, wait_for,
};

fn prometheus_bin(name: &str) -> Option<PathBuf> {
    find_binary(name, None, &[]).or_else(|| {
        skip(
            name,
            "is not installed (Debian package `prometheus`)",
            false,
        )
    })
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// GETs `path` from rewire's listener (status, body); (0, error) while it does not answer.
fn get(port: u16, path: &str) -> (u16, String) {
    match http::get(&addr(port), path)
        .timeout(Duration::from_secs(5))
        .try_send()
    {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// A dir-catalog project whose template `up` is checked (it rejects 10.9.9.9) and reloaded
/// (the reload appends to reloads.log), with telemetry on `port`.
fn checked_project(port: u16, extra: &str) -> Project {
    let p = Project::new();
    p.file("up.tera", UPSTREAM)
        .instance("web", "w1", "10.0.0.1", 8080)
        .config(&format!(
            "{control}\
             [catalog]\nbackend = \"dir\"\npath = \"catalog\"\n\
             [defaults]\nwait = {{ min = \"0s\" }}\n\
             [telemetry]\nlisten = \"127.0.0.1:{port}\"\n\
             [[template]]\nsource = \"up.tera\"\ndestination = \"out/up.conf\"\n\
             check = [\"sh\", \"-c\", \"! grep -q 10.9.9.9 \\\"$1\\\"\", \"check\", \"{{file}}\"]\n\
             reload = [\"sh\", \"-c\", \"echo reloaded >> reloads.log\"]\n\
             {extra}",
            control = p.control(),
        ));
    p
}

fn start(p: &Project, port: u16) -> Running {
    let run = p.run();
    wait_for("rewire's /ready says 200", TIMEOUT, || {
        get(port, "/ready").0 == 200
    });
    run
}

/// A real Prometheus server scraping rewire every second; killed when dropped.
struct Prometheus {
    port: u16,
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: u16) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: rewire\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let (port, daemon) = crate::support::with_retries("starting prometheus", || {
            let port = free_port();
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .current_dir(dir.path());
            let log = dir.path().join("prometheus.log");
            Daemon::start("prometheus", cmd, &log, TIMEOUT, || {
                http::get(&addr(port), "/-/ready")
                    .timeout(Duration::from_secs(2))
                    .try_send()
                    .is_ok_and(|r| r.status == 200)
            })
            .map(|d| (port, d))
        });
        Prometheus {
            port,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// The value of the instant query `q` (its first series), if any.
    fn value(&self, q: &str) -> Option<f64> {
        let r = http::get(&addr(self.port), "/api/v1/query")
            .query(&[("query", q)])
            .timeout(Duration::from_secs(5))
            .try_send()
            .ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `q` has a value for which `ok` holds; panics with the last value.
    #[track_caller]
    fn wait(&self, q: &str, ok: impl Fn(f64) -> bool) {
        let mut last = None;
        let seen = poll_until(TIMEOUT, || {
            last = self.value(q);
            last.is_some_and(&ok)
        });
        assert!(
            seen,
            "Prometheus: {q} never satisfied the test; last value {last:?}"
        );
    }
}

#[test]
fn promtool_accepts_the_metrics_and_prometheus_sees_renders_a_failed_check_and_a_reload() {
    let (Some(promtool), Some(prometheus)) =
        (prometheus_bin("promtool"), prometheus_bin("prometheus"))
    else {
        return;
    };
    let port = free_port();
    let p = checked_project(
        port,
        "[[metric]]\nname = \"jobs_total\"\ntype = \"counter\"\nhelp = \"Jobs done.\"\n\
         [[metric]]\nname = \"queue_depth\"\ntype = \"gauge\"\n\
         [[task]]\nname = \"depth\"\nevery = \"200ms\"\nexec = [\"echo\", \"42\"]\nmetric = \"queue_depth\"\n",
    );
    let _run = start(&p, port);

    // promtool reads what a scrape reads.
    let (status, text) = get(port, "/metrics");
    assert_eq!(status, 200);
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
        "rewire_catalog_connected{backend=\"dir\"} 1",
        "rewire_template_ready{template=\"up\"} 1",
        // Failure series exist at 0 before any failure, so increase() sees the first one
        // (found by an operator hunt: the README's alert missed a single failed reload).
        "rewire_template_reloads_total{result=\"failed\",template=\"up\"} 0",
        "rewire_template_checks_total{result=\"rejected\",template=\"up\"} 0",
        "rewire_template_rollbacks_total{template=\"up\"} 0",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }

    let prom = Prometheus::start(&prometheus, port);
    prom.wait("up{job=\"rewire\"}", |v| v == 1.0);
    prom.wait("rewire_template_writes_total{template=\"up\"}", |v| {
        v == 1.0
    });

    // A change: rendered, checked, written, reloaded.
    p.instance("web", "w2", "10.0.0.2", 8080);
    wait_for("the second instance in the file", TIMEOUT, || {
        p.read("out/up.conf").contains("10.0.0.2")
    });
    prom.wait("rewire_template_writes_total{template=\"up\"}", |v| {
        v == 2.0
    });
    prom.wait(
        "rewire_template_reloads_total{template=\"up\",result=\"ok\"}",
        |v| v == 2.0,
    );
    prom.wait(
        "rewire_template_checks_total{template=\"up\",result=\"ok\"}",
        |v| v == 2.0,
    );
    prom.wait(
        "rewire_template_reaction_seconds_count{template=\"up\"}",
        |v| v == 2.0,
    );
    prom.wait(
        "rewire_template_render_duration_seconds_count{template=\"up\"}",
        |v| v >= 2.0,
    );

    // A change the check rejects: counted, the file keeps the last good content.
    p.instance("web", "bad", "10.9.9.9", 8080);
    prom.wait(
        "rewire_template_checks_total{template=\"up\",result=\"rejected\"}",
        |v| v >= 1.0,
    );
    prom.wait("rewire_template_failing{template=\"up\"}", |v| v == 1.0);
    assert!(!p.read("out/up.conf").contains("10.9.9.9"));
    prom.wait("rewire_template_writes_total{template=\"up\"}", |v| {
        v == 2.0
    });

    // Fixed (and one more instance): written and reloaded again. (Only fixing it would render
    // the bytes the file already holds: nothing to write.)
    p.remove_instance("web", "bad");
    p.instance("web", "w3", "10.0.0.3", 8080);
    prom.wait("rewire_template_failing{template=\"up\"}", |v| v == 0.0);
    prom.wait("rewire_template_writes_total{template=\"up\"}", |v| {
        v == 3.0
    });
    prom.wait(
        "rewire_template_reloads_total{template=\"up\",result=\"ok\"}",
        |v| v == 3.0,
    );

    // User metrics: over the control socket (a counter adds) and from a task's output.
    for _ in 0..2 {
        let o = p.rewire(&["metric", "jobs_total", "2.5"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    prom.wait("jobs_total", |v| v == 5.0);
    prom.wait("queue_depth", |v| v == 42.0);
    prom.wait(
        "rewire_task_runs_total{task=\"depth\",result=\"ok\"}",
        |v| v >= 1.0,
    );
    prom.wait("rewire_catalog_connected{backend=\"dir\"}", |v| v == 1.0);
    prom.wait("rewire_catalog_watch_events_total{backend=\"dir\"}", |v| {
        v >= 3.0
    });
    prom.wait("process_resident_memory_bytes", |v| v > 1e6);
}

#[test]
fn user_metrics_refuse_undeclared_and_reserved_names() {
    let port = free_port();
    let p = checked_project(
        port,
        "[[metric]]\nname = \"jobs_total\"\ntype = \"counter\"\n",
    );
    let _run = start(&p, port);
    let o = p.rewire(&["metric", "nope_total", "1"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains(
            "metric \"nope_total\" is not declared; add [[metric]] name = \"nope_total\" to the config"
        ),
        "{}",
        stderr(&o)
    );
    let o = p.rewire(&["metric", "rewire_template_writes_total", "1"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("is rewire's own"), "{}", stderr(&o));
    let o = p.rewire(&["metric", "jobs_total", "-1"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("only adds"), "{}", stderr(&o));

    // Declaring one with rewire's prefix is a config error, with its location.
    let p2 = Project::new();
    p2.config("[[metric]]\nname = \"rewire_mine\"\ntype = \"gauge\"\n");
    let o = p2.rewire(&["check"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("rewire.toml:2:8: metric name \"rewire_mine\" starts with `rewire_`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn listener_serves_only_get_and_head_on_known_paths() {
    let port = free_port();
    let p = checked_project(port, "");
    let _run = start(&p, port);
    let a = addr(port);
    let r = http::post(&a, "/metrics", "x").send();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(get(port, "/nope").0, 404);
    // /status is off unless `status = true`: it shows addresses and commands.
    assert_eq!(get(port, "/status").0, 404);
    let (status, body) = get(port, "/health");
    assert_eq!((status, body.trim()), (200, r#"{"ok":true}"#));
    let r = http::get(&a, "/metrics").send();
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // A request head larger than the bound is refused, and the listener keeps serving.
    let big = "x".repeat(16 * 1024);
    let r = http::get(&a, "/metrics").header("x-big", &big).try_send();
    assert!(
        r.as_ref().map_or(true, |r| r.status == 431),
        "an oversized head was answered: {:?}",
        r.map(|r| r.status)
    );
    assert_eq!(get(port, "/health").0, 200);
}

/// Clients that connect and send nothing must not keep a probe out: with every slot held by
/// them (and the kernel's backlog full behind), /health used to wait for their 5 s head
/// timeouts, one batch of 64 after another, past any probe's timeout.
#[test]
fn idle_connections_never_keep_a_probe_waiting() {
    let port = free_port();
    let p = checked_project(port, "");
    let _run = start(&p, port);
    let mut idle = Vec::new();
    for _ in 0..300 {
        // Generous: with the kernel's accept queue at 128 (older kernels' somaxconn) a burst of
        // connects outruns a busy machine's accept loop, and a dropped SYN is sent again only
        // after 1 s, then 3 s. The probe below is what must be quick.
        match std::net::TcpStream::connect_timeout(
            &addr(port).parse().unwrap(),
            Duration::from_secs(10),
        ) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} was not accepted: {e}", idle.len() + 1),
        }
    }
    // A slow client too: half a request head.
    use std::io::Write;
    idle[0].write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let (status, body) = get(port, "/health");
    assert_eq!((status, body.trim()), (200, r#"{"ok":true}"#));
    assert_eq!(get(port, "/metrics").0, 200);
    drop(idle);
}

/// Found by testing as a ContainerPilot user: a `[[job]]` without a health check (or one that
/// never exited) left a labelled family without samples, the encoder stopped there, and every
/// family after `rewire_job_*` (main, services, templates, user metrics) was missing.
#[test]
fn every_family_is_served_while_a_job_has_no_health_and_never_exited() {
    let port = free_port();
    let p = checked_project(
        port,
        "[[job]]\nname = \"agent\"\nexec = [\"sleep\", \"1000\"]\n\n\
         [[metric]]\nname = \"zz_queue_depth\"\ntype = \"gauge\"\nhelp = \"queue depth\"\n",
    );
    let _run = start(&p, port);
    let (status, body) = get(port, "/metrics");
    assert_eq!(status, 200);
    for family in ["rewire_job_up", "rewire_template_", "zz_queue_depth"] {
        assert!(body.contains(family), "{family} missing:\n{body}");
    }
}

#[test]
fn status_is_served_when_asked_for() {
    let port = free_port();
    let p = Project::new();
    p.file("up.tera", UPSTREAM)
        .instance("web", "w1", "10.0.0.1", 8080)
        .config(&format!(
            "{}[catalog]\nbackend = \"dir\"\npath = \"catalog\"\n\
             [telemetry]\nlisten = \"127.0.0.1:${{TPORT}}\"\nstatus = true\n\
             [[template]]\nsource = \"up.tera\"\ndestination = \"out/up.conf\"\n",
            p.control()
        ));
    p.env("TPORT", &port.to_string());
    let _run = p.run();
    wait_for("/ready", TIMEOUT, || get(port, "/ready").0 == 200);
    let (status, body) = get(port, "/status");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["templates"]["up"]["state"], "ok");
    assert_eq!(v["catalog_health"], "healthy");
}

/// Found by an operator hunt: /ready said 200 through the whole stop sequence, so a balancer
/// checking it kept sending traffic during the drain meant to move it away. It says 503 from
/// the stop signal on, while /health stays 200.
#[test]
fn ready_says_no_from_the_stop_signal_on() {
    let port = free_port();
    let p = Project::new();
    p.file("up.tera", UPSTREAM)
        .instance("web", "w1", "10.0.0.1", 8080)
        .config(&format!(
            "{}[catalog]\nbackend = \"dir\"\npath = \"catalog\"\n\
             [telemetry]\nlisten = \"127.0.0.1:${{TPORT}}\"\n\
             [[template]]\nsource = \"up.tera\"\ndestination = \"out/up.conf\"\n\n\
             [[service]]\nname = \"api\"\nport = 9000\naddress = \"127.0.0.1\"\ninterval = \"200ms\"\nttl = \"5s\"\n\n\
             [main]\nexec = [\"sleep\", \"300\"]\ndrain = \"5s\"\n",
            p.control()
        ));
    p.env("TPORT", &port.to_string());
    let run = p.run();
    let pid = run.child.id() as i32;
    wait_for("/ready", TIMEOUT, || get(port, "/ready").0 == 200);
    crate::support::process::signal(pid, crate::support::process::SIGTERM).unwrap();
    wait_for("/ready saying 503 while draining", TIMEOUT, || {
        let (status, body) = get(port, "/ready");
        status == 503 && body.contains("stopping")
    });
    assert_eq!(get(port, "/health").0, 200, "draining is not dead");
}

/// Found by an operator hunt: /health failed for up to `stop_timeout` after each crash of a
/// main that restarts, while what the crashed run left in its group was stopped: the board
/// said "exited" although the restart was decided.
#[test]
fn health_stays_up_while_a_restarting_main_s_leftovers_are_stopped() {
    let port = free_port();
    let p = Project::new();
    p.config(&format!(
        "{}[catalog]\nbackend = \"dir\"\npath = \"catalog\"\n\
         [telemetry]\nlisten = \"127.0.0.1:${{TPORT}}\"\n\n\
         [main]\nexec = [\"sh\", \"-c\", \"(trap '' TERM; exec sleep 300) & sleep 0.5; exit 3\"]\n\
         restart = \"on-failure\"\nstop_timeout = \"8s\"\n",
        p.control()
    ));
    std::fs::create_dir_all(p.path("catalog/services")).unwrap();
    p.env("TPORT", &port.to_string());
    let run = p.run();
    let log = run.log.clone();
    // The leftover ignores its stop signal: the cleanup lasts its whole stop_timeout.
    wait_for("the crashed run's leftovers being stopped", TIMEOUT, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("stopping what it left in its process group"))
    });
    let (status, body) = get(port, "/health");
    assert_eq!(status, 200, "{body}");
}

/// Found by an operator hunt: the listener was bound before the catalog preflight but served
/// only after it, up to 30 s with a `[[job]]` (the in-container agent starting): probes
/// connected and timed out, `rewire status` found no daemon, and a liveness probe restarted a
/// container that was only waiting. It answers at once now: alive, not ready.
#[test]
fn probes_and_status_answer_while_the_catalog_is_awaited() {
    let port = free_port();
    let nobody = free_port();
    let p = Project::new();
    p.file("up.tera", UPSTREAM).config(&format!(
        "{}[catalog]\nbackend = \"consul\"\naddress = \"127.0.0.1:{nobody}\"\n\
         [telemetry]\nlisten = \"127.0.0.1:${{TPORT}}\"\n\
         [[template]]\nsource = \"up.tera\"\ndestination = \"out/up.conf\"\n\n\
         [[job]]\nname = \"agent\"\nexec = [\"sleep\", \"300\"]\n",
        p.control()
    ));
    p.env("TPORT", &port.to_string());
    let _run = p.run();
    let alive =
        crate::support::poll_until(Duration::from_secs(5), || get(port, "/health").0 == 200);
    assert!(
        alive,
        "/health did not answer while the catalog was awaited"
    );
    let (status, body) = get(port, "/ready");
    assert_eq!(status, 503, "{body}");
    let o = p.rewire(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn ready_fails_after_catalog_grace_while_health_stays_up() {
    let Some(etcd) = Etcd::try_start() else {
        return;
    };
    let mut gw = EtcdGateway::start(&etcd.endpoints());
    etcd.put("/rewire/kv/app/greeting", "hello");
    let port = free_port();
    let p = Project::new();
    p.file("app.tera", "{{ key(path=\"app/greeting\") }}\n")
        .config(&format!(
            "{}[catalog]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"/rewire\"\n\
             retry = {{ base = \"100ms\", max = \"500ms\" }}\n\
             [telemetry]\nlisten = \"127.0.0.1:{port}\"\ncatalog_grace = \"2s\"\n\
             [[template]]\nsource = \"app.tera\"\ndestination = \"out/app.conf\"\n",
            p.control(),
            gw.endpoint()
        ));
    let _run = start(&p, port);
    assert_eq!(p.read("out/app.conf"), "hello\n");

    gw.kill();
    let mut health_codes = Vec::new();
    let mut body = String::new();
    let flipped = poll_until(TIMEOUT, || {
        health_codes.push(get(port, "/health").0);
        let (status, b) = get(port, "/ready");
        body = b;
        status == 503
    });
    assert!(
        flipped,
        "/ready never said 503 with etcd away; last body {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("catalog unreachable") && problems.contains("catalog_grace 2s"),
        "{body}"
    );
    let (_, metrics) = get(port, "/metrics");
    assert!(
        metrics.contains("rewire_catalog_connected{backend=\"etcd\"} 0"),
        "{metrics}"
    );

    gw.restart();
    let back = poll_until(TIMEOUT, || {
        health_codes.push(get(port, "/health").0);
        get(port, "/ready").0 == 200
    });
    assert!(back, "/ready stayed 503 after etcd came back");
    assert!(
        health_codes.iter().all(|c| *c == 200),
        "/health failed during the outage: {health_codes:?}"
    );
    let (_, metrics) = get(port, "/metrics");
    assert!(
        metrics.contains("rewire_catalog_connected{backend=\"etcd\"} 1"),
        "{metrics}"
    );
}

#[test]
fn readme_alert_rules_and_scrape_config_pass_promtool() {
    let Some(promtool) = prometheus_bin("promtool") else {
        return;
    };
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# prometheus.yml\n")
        .expect("the README shows a scrape config");
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("the example's code block ends")];
    let (scrape, rules) = block
        .split_once("# rewire-alerts.yml\n")
        .expect("the README shows alert rules");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), scrape).unwrap();
    std::fs::write(dir.path().join("rewire-alerts.yml"), rules).unwrap();
    for (what, file) in [("config", "prometheus.yml"), ("rules", "rewire-alerts.yml")] {
        let o = Command::new(&promtool)
            .args(["check", what, file])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "promtool check {what} refused the README's example:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
