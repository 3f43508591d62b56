//! HAProxy Runtime API updates and confirmed reloads against a real HAProxy 2.6 in
//! master-worker mode (`-W -S`): the library's client and executor first, then `rewire run`
//! end to end (which path each change took, HAProxy's own reload counter, restarts).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rewire::config::{CommandSpec, Program, Reload};
use rewire::render::group::{self, Written};
use rewire::render::haproxy::cfg::HaproxyConfig;
use rewire::render::haproxy::master;
use rewire::render::haproxy::plan::{self, Change, Plan};
use rewire::render::haproxy::runtime::{Runtime, Verified};
use rewire::render::haproxy::socket::Cli;
use rewire::render::pipeline::{ReloadError, Reloaded};

use crate::project::{self, Project};
use crate::support::process::Daemon;
use crate::support::{self, Haproxy, free_port, wait_for};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A small HTTP/1.1 server answering its name (keep-alive; `/slow` takes 1.5 s).
struct Backend {
    name: &'static str,
    port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let r = r.clone();
                std::thread::spawn(move || serve(conn, name, &r));
            }
        });
        Backend {
            name,
            port,
            requests,
            stop,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

fn serve(conn: TcpStream, name: &str, requests: &AtomicUsize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        if path != "/health" {
            requests.fetch_add(1, Ordering::Relaxed);
        }
        if path.starts_with("/slow") {
            std::thread::sleep(Duration::from_millis(1500));
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{name}",
            name.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET path` through `addr` on a new connection: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_string()))
}

/// The config the harness starts HAProxy with, then the same with `servers` in be_web.
fn conf(servers: &[String]) -> String {
    let mut c = support::haproxy::conf_header();
    c += "    timeout check 1s\n\
          frontend fe\n    bind 127.0.0.1:@PORT@\n    default_backend be_web\n\
          backend be_web\n    balance roundrobin\n    option httpchk GET /health\n";
    for s in servers {
        c += &format!("    {s}\n");
    }
    c
}

fn filled(h: &Haproxy, template: &str) -> String {
    template
        .replace("@PORT@", h.addr().rsplit(':').next().unwrap())
        .replace("@DIR@", &h.dir().display().to_string())
}

fn server(name: &str, b: &Backend, opts: &str) -> String {
    format!("server {name} {} {opts}", b.addr())
}

fn runtime_plan(old: &str, new: &str) -> Vec<Change> {
    match plan::plan(&HaproxyConfig::parse(old), &HaproxyConfig::parse(new)) {
        Plan::Runtime(c) => c,
        Plan::Reload(why) => panic!("expected runtime changes, got a reload: {why}"),
    }
}

/// Which backends answer through the front, over `n` requests.
fn answering(h: &Haproxy, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .filter_map(|_| get(&h.addr(), "/"))
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_changes_reach_haproxy_through_the_runtime_api_without_a_reload() {
    let (b1, b2, b3) = (
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    );
    let start = conf(&[server("b1", &b1, "check inter 200ms")]);
    let Some(h) = Haproxy::try_start_conf(&start) else {
        return;
    };
    let admin = h.dir().join("admin.sock");
    let old = filled(&h, &start);
    let reloads = h.wait_reload_count(Duration::from_secs(10));
    assert!(reloads.is_some(), "the master CLI answers");
    let mut rt = Runtime::new(&admin);

    // Add b2 (checked) and b3 (unchecked, weight 3) to what HAProxy runs.
    let two = filled(
        &h,
        &conf(&[
            server("b1", &b1, "check inter 200ms"),
            server("b2", &b2, "check inter 200ms rise 1"),
            server("b3", &b3, "weight 3"),
        ]),
    );
    let changes = match rt.plan(Some(old.as_bytes()), two.as_bytes()).await {
        Plan::Runtime(c) => c,
        Plan::Reload(why) => panic!("{why}"),
    };
    assert_eq!(changes.len(), 2, "{changes:?}");
    rt.apply(&changes, two.as_bytes()).await.unwrap();
    // b2 drains until its first check passed (on its way in: agreement holds).
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    settle(&mut rt).await;
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    wait_for("b1, b2 and b3 answer", TIMEOUT, || {
        answering(&h, 12).len() == 3
    });

    // Move b3 to b1's port and weight 1; remove b2.
    let moved = filled(
        &h,
        &conf(&[
            server("b1", &b1, "check inter 200ms"),
            format!("server b3 {}", b1.addr()),
        ]),
    );
    let changes = runtime_plan(&two, &moved);
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "-be_web/b2".to_string(),
            format!("~be_web/b3 addr {} weight 1", b1.addr())
        ]
    );
    rt.apply(&changes, moved.as_bytes()).await.unwrap();
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    let before = (b2.requests(), b3.requests());
    assert_eq!(answering(&h, 10), ["b1".to_string()].into());
    assert_eq!((b2.requests(), b3.requests()), before);
    let state = Cli::new(&admin).observe().await.unwrap();
    assert!(
        state.servers.iter().all(|s| s.name != "b2"),
        "b2 had no connection attached: deleted at once: {state:?}"
    );

    assert_eq!(
        h.wait_reload_count(Duration::from_secs(10)),
        reloads,
        "no reload happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checked_server_added_at_runtime_takes_traffic_only_after_passing_checks() {
    let b1 = Backend::start("b1");
    let start = conf(&[server("b1", &b1, "")]);
    let Some(h) = Haproxy::try_start_conf(&start) else {
        return;
    };
    let admin = h.dir().join("admin.sock");
    let mut rt = Runtime::new(&admin);
    // Nothing listens on this port yet: the checks fail, so it must never be used.
    let late_port = free_port();
    let late = format!("server late 127.0.0.1:{late_port} check inter 100ms rise 1");
    let old = filled(&h, &start);
    let new = filled(&h, &conf(&[server("b1", &b1, ""), late.clone()]));
    let changes = match rt.plan(Some(old.as_bytes()), new.as_bytes()).await {
        Plan::Runtime(c) => c,
        Plan::Reload(why) => panic!("{why}"),
    };
    rt.apply(&changes, new.as_bytes()).await.unwrap();
    settle(&mut rt).await;
    for _ in 0..20 {
        let (status, body) = get(&h.addr(), "/").expect("an answer");
        assert_eq!(
            (status, body.as_str()),
            (200, "b1"),
            "never sent to a server that is down"
        );
    }
    let state = Cli::new(&admin).observe().await.unwrap();
    let s = state.servers.iter().find(|s| s.name == "late").unwrap();
    assert!(
        s.ready() && s.checked(),
        "ready after its first (failed) check: {s:?}"
    );
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_with_a_request_in_flight_is_deleted_when_it_ends_or_reused() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let both = conf(&[server("b1", &b1, ""), server("b2", &b2, "")]);
    let Some(h) = Haproxy::try_start_conf(&both) else {
        return;
    };
    let admin = h.dir().join("admin.sock");
    let cli = Cli::new(&admin);
    let mut rt = Runtime::new(&admin);
    let both = filled(&h, &both);
    let only_b1 = filled(&h, &conf(&[server("b1", &b1, "")]));

    // A slow request on b2 (b1 in maintenance for a moment so that b2 gets it).
    cli.set_state("be_web", "b1", "maint").await.unwrap();
    let addr = h.addr();
    let slow = std::thread::spawn(move || get(&addr, "/slow"));
    wait_for("the slow request reaches b2", TIMEOUT, || {
        b2.requests() == 1
    });
    cli.set_state("be_web", "b1", "ready").await.unwrap();

    let Plan::Runtime(changes) = rt.plan(Some(both.as_bytes()), only_b1.as_bytes()).await else {
        panic!()
    };
    rt.apply(&changes, only_b1.as_bytes()).await.unwrap();
    assert_eq!(rt.leaving().collect::<Vec<_>>(), ["be_web/b2"]);
    assert!(rt.next_due().is_some());
    // On its way out, in maintenance: the file and HAProxy agree.
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    assert_eq!(answering(&h, 6), ["b1".to_string()].into());
    assert_eq!(slow.join().unwrap(), Some((200, "b2".to_string())));
    settle(&mut rt).await;
    assert!(
        cli.observe()
            .await
            .unwrap()
            .servers
            .iter()
            .all(|s| s.name != "b2"),
        "deleted once its request ended"
    );

    // The same again, but b2 returns before its request ends: made ready, not added.
    cli.set_state("be_web", "b1", "maint").await.unwrap();
    let both_again = both.clone();
    let Plan::Runtime(changes) = rt.plan(None, both_again.as_bytes()).await else {
        panic!()
    };
    rt.apply(&changes, both_again.as_bytes()).await.unwrap();
    let addr = h.addr();
    let slow = std::thread::spawn(move || get(&addr, "/slow"));
    wait_for("the slow request reaches b2", TIMEOUT, || {
        b2.requests() == 2
    });
    cli.set_state("be_web", "b1", "ready").await.unwrap();
    let Plan::Runtime(changes) = rt.plan(None, only_b1.as_bytes()).await else {
        panic!()
    };
    rt.apply(&changes, only_b1.as_bytes()).await.unwrap();
    assert_eq!(rt.leaving().count(), 1);
    let Plan::Runtime(changes) = rt.plan(None, both.as_bytes()).await else {
        panic!()
    };
    assert_eq!(changes.len(), 1, "{changes:?}");
    rt.apply(&changes, both.as_bytes()).await.unwrap();
    assert_eq!(rt.leaving().count(), 0, "reused");
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    assert_eq!(slow.join().unwrap(), Some((200, "b2".to_string())));
    wait_for("b2 answers again", TIMEOUT, || {
        answering(&h, 6).contains("b2")
    });
}

/// Runs the runtime's housekeeping (new servers' first checks, deletions) until nothing is
/// left to do, as the daemon's runner does.
async fn settle(rt: &mut Runtime) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while let Some(at) = rt.next_due() {
        assert!(
            at < deadline,
            "never settled: leaving {:?}",
            rt.leaving().collect::<Vec<_>>()
        );
        tokio::time::sleep_until(at).await;
        rt.housekeeping().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_changed_by_hand_is_repaired_to_agree_with_the_file() {
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let start = conf(&[server("b1", &b1, "weight 2")]);
    let Some(h) = Haproxy::try_start_conf(&start) else {
        return;
    };
    let admin = h.dir().join("admin.sock");
    let cli = Cli::new(&admin);
    let mut rt = Runtime::new(&admin);
    assert_eq!(
        rt.adopt_file(filled(&h, &start).as_bytes()).await,
        rewire::render::haproxy::runtime::Adopted::Yes
    );
    cli.set_state("be_web", "b1", "maint").await.unwrap();
    cli.set_weight("be_web", "b1", 5).await.unwrap();
    let stray = plan::Target {
        name: "stray".into(),
        addr: b2.addr().parse().unwrap(),
        options: vec![],
        weight: 1,
        check: false,
    };
    cli.add_server("be_web", &stray).await.unwrap();
    cli.set_state("be_web", "stray", "ready").await.unwrap();
    match rt.verify().await {
        Ok(Verified::Repaired(changes)) => assert_eq!(changes.len(), 3, "{changes:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rt.verify().await, Ok(Verified::Agrees));
    assert_eq!(answering(&h, 6), ["b1".to_string()].into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_cli_reloads_are_confirmed_even_back_to_back() {
    let Some(h) = Haproxy::try_start(support::haproxy::DEFAULT_FRONTEND) else {
        return;
    };
    let before = h
        .wait_reload_count(Duration::from_secs(10))
        .expect("the master CLI answers");
    for _ in 0..3 {
        let r = master::reload(&h.master_socket()).await.unwrap();
        assert!(matches!(r, master::Reloaded::Done { .. }), "{r:?}");
    }
    assert_eq!(
        h.wait_reload_count(Duration::from_secs(10)),
        Some(before + 3),
        "every reload happened"
    );

    // A config HAProxy refuses: the master says so, the old worker keeps serving.
    std::fs::write(h.cfg_path(), "global\n    bogus directive\n").unwrap();
    let e = master::reload(&h.master_socket()).await.unwrap_err();
    assert!(matches!(e, master::MasterError::Failed { .. }), "{e}");
    assert_eq!(get(&h.addr(), "/").map(|r| r.0), Some(200));

    let gone = master::reload(&h.dir().join("nothing.sock")).await.unwrap();
    assert!(matches!(gone, master::Reloaded::NotRunning(_)), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_no_worker_is_sent_again_then_reported() {
    let Some(h) = Haproxy::try_start(support::haproxy::DEFAULT_FRONTEND) else {
        return;
    };
    let admin = h.dir().join("admin.sock");
    let env = std::collections::BTreeMap::new();
    // A "reload" that does nothing: HAProxy dropped it, as it drops a SIGUSR2 during a reload.
    let nothing = Reload::Command(CommandSpec {
        program: Program::Argv(vec!["true".into()]),
        timeout: Duration::from_secs(5),
    });
    let none: [&Written; 0] = [];
    let e = group::reload_or_restore(Some(&nothing), none, None, &env, Some(&admin))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ReloadError::Unconfirmed { sends: 3, .. }),
        "{e}"
    );

    // Dropped once, then taken: the second send reloads.
    let counter = h.dir().join("sends");
    let script = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 2 ] && kill -USR2 {pid}; true",
        c = counter.display(),
        pid = h.master_pid()
    );
    let second = Reload::Command(CommandSpec {
        program: Program::Shell(script),
        timeout: Duration::from_secs(5),
    });
    let before = h.reload_count().unwrap();
    let none: [&Written; 0] = [];
    let r = group::reload_or_restore(Some(&second), none, None, &env, Some(&admin)).await;
    assert_eq!(r.unwrap(), Reloaded::Done);
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "2");
    assert_eq!(h.reload_count(), Some(before + 1));
}

// ---- rewire run, end to end

/// A project rendering the shipped haproxy.cfg.tera with a runtime and a master CLI reload,
/// HAProxy supervised as main.
fn daemon_project(listen: u16) -> Project {
    let haproxy = support::haproxy::binary().expect("checked by the caller");
    let p = Project::new();
    p.file(
        "haproxy.cfg.tera",
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/haproxy.cfg.tera"),
        )
        .unwrap(),
    );
    p.kv("haproxy/listen", &format!("127.0.0.1:{listen}"))
        .kv("haproxy/check_path", "/health")
        .kv("haproxy/log_level", "notice")
        .env(
            "HAPROXY_ADMIN_SOCKET",
            &p.path("admin.sock").display().to_string(),
        );
    p.config(&format!(
        "{control}[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"haproxy.cfg.tera\"\ndestination = \"haproxy.cfg\"\ncheck = [\"{hap}\", \"-c\", \"-dW\", \"-f\", \"{{file}}\"]\nreload = {{ haproxy_master = \"master.sock\" }}\nruntime = {{ haproxy = \"admin.sock\" }}\n\n[main]\nexec = [\"{hap}\", \"-W\", \"-S\", \"{master}\", \"-f\", \"{cfg}\"]\nstop_timeout = \"5s\"\n",
        control = p.control(),
        hap = haproxy.display(),
        master = p.path("master.sock").display(),
        cfg = p.path("haproxy.cfg").display(),
    ));
    p
}

/// The master's reload counter; the master CLI is gone for a moment during a reload.
fn master_reloads(p: &Project) -> Option<u64> {
    let mut n = None;
    support::poll_until(Duration::from_secs(5), || {
        n = master_cli(&p.path("master.sock"), "show proc")
            .and_then(|out| master::parse_show_proc(&out))
            .map(|c| c.reloads);
        n.is_some()
    });
    n
}

fn master_cli(socket: &Path, command: &str) -> Option<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{command}\n").as_bytes()).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn status(p: &Project) -> String {
    let o = p.rewire(&[
        "status",
        "--socket",
        &p.path("rewire.sock").display().to_string(),
    ]);
    project::stdout(&o)
}

#[test]
fn rewire_run_updates_servers_at_runtime_and_reloads_for_the_rest() {
    if support::haproxy::binary().is_none() {
        support::skip::<()>("haproxy", "binary not found", false);
        return;
    }
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let listen = free_port();
    let p = daemon_project(listen);
    p.instance("web", "web-1", "127.0.0.1", b1.port);
    let front = format!("127.0.0.1:{listen}");
    let mut r = p.run();
    wait_for("b1 answers through HAProxy", TIMEOUT, || {
        get(&front, "/web/").is_some_and(|(s, b)| s == 200 && b == b1.name)
    });
    let mut reloads = 0;
    wait_for("the master CLI answers", TIMEOUT, || {
        master_reloads(&p).map(|n| reloads = n).is_some()
    });

    // A new instance: a runtime update, no reload.
    p.instance("web", "web-2", "127.0.0.1", b2.port);
    wait_for("b2 answers through HAProxy", TIMEOUT, || {
        (0..6).any(|_| get(&front, "/web/").is_some_and(|(_, b)| b == b2.name))
    });
    assert_eq!(master_reloads(&p), Some(reloads), "{}", r.log());
    assert!(
        r.log().contains("HAProxy updated through its Runtime API"),
        "{}",
        r.log()
    );
    wait_for("the runtime change in rewire status", TIMEOUT, || {
        // Server names are <node>:<id> (Consul ids are unique per node only).
        let s = status(&p);
        s.contains("last change by runtime: +be_web/") && s.contains(":web-2")
    });

    // Gone again: a runtime update.
    p.remove_instance("web", "web-1");
    wait_for("only b2 answers", TIMEOUT, || {
        (0..6).all(|_| get(&front, "/web/").is_some_and(|(_, b)| b == b2.name))
    });
    assert_eq!(master_reloads(&p), Some(reloads), "{}", r.log());

    // A new service is a new backend: a reload, confirmed by the master.
    p.instance("api", "api-1", "127.0.0.1", b1.port);
    wait_for("the api backend answers", TIMEOUT, || {
        get(&front, "/api/").is_some_and(|(s, _)| s == 200)
    });
    // HAProxy's new worker may answer a moment before rewire has recorded the reload.
    let mut s = String::new();
    wait_for("the reload in rewire status", TIMEOUT, || {
        s = status(&p);
        s.contains("last change by reload: backend be_api is new")
    });
    assert_eq!(master_reloads(&p), Some(reloads + 1), "{}", r.log());

    // And after the reload, server changes go through the runtime again.
    p.instance("web", "web-3", "127.0.0.1", b1.port);
    wait_for("web-3 in HAProxy", TIMEOUT, || {
        master_cli(&p.path("admin.sock"), "show servers state be_web")
            .is_some_and(|s| s.contains(":web-3 "))
    });
    assert_eq!(master_reloads(&p), Some(reloads + 1), "{}", r.log());
    assert!(!r.log().contains("reloading to repair"), "{}", r.log());
    r.stop();
}

#[test]
fn a_restarted_rewire_trusts_the_file_only_when_haproxy_agrees() {
    let Some(haproxy) = support::haproxy::binary() else {
        support::skip::<()>("haproxy", "binary not found", false);
        return;
    };
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    let listen = free_port();
    let p = daemon_project(listen);
    // HAProxy runs on its own here, so it outlives rewire's restarts.
    let config = std::fs::read_to_string(p.path("rewire.toml")).unwrap();
    let config = &config[..config.find("[main]").unwrap()];
    p.config(config);
    p.instance("web", "web-1", "127.0.0.1", b1.port);
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let mut cmd = Command::new(&haproxy);
    cmd.arg("-W")
        .arg("-S")
        .arg(p.path("master.sock"))
        .arg("-f")
        .arg(p.path("haproxy.cfg"));
    let mut d = Daemon::spawn("haproxy", cmd, &p.path("haproxy.log")).unwrap();
    d.wait_ready(TIMEOUT, || support::ports::port_open(listen))
        .unwrap();
    wait_for("the master CLI", TIMEOUT, || master_reloads(&p).is_some());
    let reloads = master_reloads(&p).unwrap();

    // HAProxy runs the file: a restarted rewire takes it as loaded and adds at runtime.
    let mut r = p.run();
    wait_for("rewire adopted the file", TIMEOUT, || {
        r.log().contains("HAProxy runs the file on disk")
    });
    p.instance("web", "web-2", "127.0.0.1", b2.port);
    wait_for("web-2 in HAProxy", TIMEOUT, || {
        master_cli(&p.path("admin.sock"), "show servers state be_web")
            .is_some_and(|s| s.contains(":web-2 "))
    });
    assert_eq!(master_reloads(&p), Some(reloads), "{}", r.log());
    r.stop();

    // Someone put a server in HAProxy that the file does not have: the next rewire reloads.
    let stray = format!("add server be_web/stray {}", b2.addr());
    assert!(
        master_cli(&p.path("admin.sock"), &stray)
            .unwrap()
            .contains("New server")
    );
    master_cli(&p.path("admin.sock"), "set server be_web/stray state ready").unwrap();
    let mut r = p.run();
    wait_for("the reload", TIMEOUT, || {
        master_reloads(&p) == Some(reloads + 1)
    });
    assert!(
        r.log().contains("HAProxy does not run the file on disk"),
        "{}",
        r.log()
    );
    wait_for("the stray server is gone", TIMEOUT, || {
        master_cli(&p.path("admin.sock"), "show servers state be_web")
            .is_some_and(|s| !s.contains(" stray ") && s.contains(":web-2 "))
    });
    r.stop();
    d.kill();
}
