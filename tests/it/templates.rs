//! The shipped templates (templates/*.tera) against real nginx and HAProxy: the fragments pass
//! their checks in context, bad KV settings fail the render by name, odd service names still
//! give valid configs, and the production behaviour works end to end (HTTP/1.1 with pooled
//! upstream connections and forwarded headers, a failed request tried on the next backend,
//! health checks on the configured path, the status locations).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::project::{self, Project};
use crate::support::process::Daemon;
use crate::support::{self, TIMEOUT, free_port, wait_for};

fn shipped(p: &Project, name: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    p.file(
        name,
        &std::fs::read_to_string(format!("{root}/templates/{name}")).unwrap(),
    );
}

fn binaries() -> Option<(PathBuf, PathBuf)> {
    match (support::nginx::binary(), support::haproxy::binary()) {
        (Some(n), Some(h)) => Some((n, h)),
        _ => support::skip("nginx/haproxy", "binary not found", false),
    }
}

fn nginx_check(nginx: &std::path::Path, p: &Project) -> String {
    format!(
        "check = [\"{}\", \"-t\", \"-q\", \"-p\", \"{}/\", \"-c\", \"{{file}}\"]\n",
        nginx.display(),
        p.root().display()
    )
}

fn haproxy_check(haproxy: &std::path::Path) -> String {
    format!(
        "check = [\"{}\", \"-c\", \"-dW\", \"-f\", \"{{file}}\"]\n",
        haproxy.display()
    )
}

#[test]
fn shipped_fragments_pass_real_checks_in_context() {
    let Some((nginx, haproxy)) = binaries() else {
        return;
    };
    let p = Project::new();
    shipped(&p, "nginx-upstreams.conf.tera");
    shipped(&p, "haproxy-backends.cfg.tera");
    p.instance("web", "a", "127.0.0.1", 18080)
        .instance("api.v2", "b@1", "::1", 18081)
        .kv("haproxy/check_path", "/health")
        .file(
            "main/nginx.conf",
            &format!(
                "pid {dir}/nginx.pid;\nevents {{}}\nhttp {{\n    include {dir}/out/upstreams.conf;\n    server {{ listen 127.0.0.1:18099; location /web/ {{ proxy_pass http://web/; }} location /api/ {{ proxy_pass http://api.v2/; }} }}\n}}\n",
                dir = p.root().display()
            ),
        )
        .file(
            "main/haproxy.cfg",
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n    timeout check 2s\nfrontend f\n    bind 127.0.0.1:18098\n    use_backend be_api.v2 if { path_beg /api/ }\n    default_backend be_web\n",
        )
        .config(&format!(
            "[[template]]\nsource = \"nginx-upstreams.conf.tera\"\ndestination = \"out/upstreams.conf\"\ncheck_mode = \"swap\"\ncheck = [\"{nginx}\", \"-t\", \"-q\", \"-p\", \"{dir}/\", \"-c\", \"{dir}/main/nginx.conf\"]\n\n[[template]]\nsource = \"haproxy-backends.cfg.tera\"\ndestination = \"out/backends.cfg\"\ncheck = [\"{haproxy}\", \"-c\", \"-dW\", \"-f\", \"{dir}/main/haproxy.cfg\", \"-f\", \"{{file}}\"]\n",
            nginx = nginx.display(),
            haproxy = haproxy.display(),
            dir = p.root().display()
        ));
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let (ups, bes) = (p.read("out/upstreams.conf"), p.read("out/backends.cfg"));
    assert!(
        ups.contains("upstream api.v2 {") && ups.contains("keepalive 16;"),
        "{ups}"
    );
    assert!(
        bes.contains("backend be_api.v2")
            && bes.contains(":b_21 [::1]:18081 check")
            && bes.contains("http-check send meth GET uri '/health'")
            && bes.contains("option redispatch")
            && bes.contains("retry-on conn-failure empty-response response-timeout"),
        "{bes}"
    );
}

#[test]
fn bad_kv_settings_fail_the_render_and_name_the_key() {
    let Some((nginx, haproxy)) = binaries() else {
        return;
    };
    let cases = [
        ("nginx.conf.tera", "nginx/listen", "80; include /etc/passwd"),
        ("nginx.conf.tera", "nginx/worker_connections", "1024;"),
        ("nginx.conf.tera", "nginx/keepalive_timeout", "75s; x"),
        ("nginx.conf.tera", "nginx/upstream_keepalive", "0"),
        (
            "haproxy.cfg.tera",
            "haproxy/listen",
            ":80\n    stats enable",
        ),
        ("haproxy.cfg.tera", "haproxy/check_path", "/health HTTP/1.0"),
        ("haproxy.cfg.tera", "haproxy/log_level", "loud"),
        ("haproxy.cfg.tera", "haproxy/log", "stdout format raw"),
    ];
    for (template, key, value) in cases {
        let p = Project::new();
        shipped(&p, template);
        let check = if template.starts_with("nginx") {
            nginx_check(&nginx, &p)
        } else {
            haproxy_check(&haproxy)
        };
        p.instance("web", "a", "127.0.0.1", 18080)
            .kv(key, value)
            .config(&format!(
                "[[template]]\nsource = \"{template}\"\ndestination = \"out/conf\"\n{check}"
            ));
        let o = p.rewire(&["render"]);
        let err = project::stderr(&o);
        assert_eq!(project::code(&o), 1, "{key} = {value:?}: {err}");
        assert!(err.contains(&format!("{key} must be")), "{key}: {err}");
        assert!(!p.path("out/conf").exists(), "{key}: written anyway");
    }
}

/// Found by a migration hunt: `service (printf "%s.web" $tag)` and other queries built at run
/// time became `service(name=...)` with the whole string as the name: an empty list, no
/// error. `rewire import` writes `service(query=...)` for them now, read as consul-template
/// reads it: the tag before the last dot, the dc after `@`, the status after `|`.
#[test]
fn a_consul_template_query_built_at_render_time_is_read_as_consul_template_reads_it() {
    let p = Project::new();
    p.file(
        "q.tera",
        "{% set t = \"v2\" %}tagged:{% for s in service(query=t ~ \".web\") %} {{ s.id }}{% endfor %}\n\
         any:{% for s in service(query=\"web\" ~ \"|any\") %} {{ s.id }}{% endfor %}\n\
         plain:{% for s in service(query=\"web\") %} {{ s.id }}{% endfor %}\n",
    )
    .instance_json(
        "web",
        "a",
        r#"{"address": "10.0.0.1", "port": 80, "tags": ["v1"]}"#,
    )
    .instance_json(
        "web",
        "b",
        r#"{"address": "10.0.0.2", "port": 80, "tags": ["v2"]}"#,
    )
    .instance_json(
        "web",
        "c",
        r#"{"address": "10.0.0.3", "port": 80, "tags": ["v2"], "status": "critical"}"#,
    )
    .config("[[template]]\nsource = \"q.tera\"\ndestination = \"out/q\"\n");
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    assert_eq!(
        std::fs::read_to_string(p.path("out/q")).unwrap(),
        "tagged: b\nany: a b c\nplain: a b\n"
    );
    // A query given beside its parts is refused rather than guessed at.
    p.file(
        "q.tera",
        "{{ service(query=\"web\", tag=\"v2\") | length }}",
    );
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 1);
    assert!(
        project::stderr(&o).contains("`query` holds the name, tag, dc and status"),
        "{}",
        project::stderr(&o)
    );
}

#[test]
fn odd_service_names_and_ids_still_render_valid_configs() {
    let Some((nginx, haproxy)) = binaries() else {
        return;
    };
    let p = Project::new();
    shipped(&p, "nginx.conf.tera");
    shipped(&p, "haproxy.cfg.tera");
    p.instance("api.v2", "x@y:1", "127.0.0.1", 18080)
        .instance("team@corp", "b", "127.0.0.1", 18081)
        .kv("nginx/listen", "127.0.0.1:18082")
        .env("NGINX_PID", &p.path("nginx.pid").display().to_string())
        .kv("haproxy/listen", "18083")
        .config(&format!(
            "[[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"out/nginx.conf\"\n{}\n[[template]]\nsource = \"haproxy.cfg.tera\"\ndestination = \"out/haproxy.cfg\"\n{}",
            nginx_check(&nginx, &p),
            haproxy_check(&haproxy)
        ));
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let (ngx, hap) = (p.read("out/nginx.conf"), p.read("out/haproxy.cfg"));
    assert!(
        ngx.contains("upstream team_2corp {")
            && ngx.contains("location \"/team@corp/\" { proxy_pass http://team_2corp/; }"),
        "{ngx}"
    );
    assert!(
        hap.contains("bind :18083")
            && hap.contains("use_backend be_team_2corp if { path_beg '/team@corp/' }")
            && hap.contains(":x_2y_11 127.0.0.1:18080 check"),
        "{hap}"
    );
}

/// A backend for the end-to-end tests: keeps connections alive, records every request head
/// with the number of the connection it came on, answers `/health` with 200 and every other
/// path with its name, or (when `drop_requests`) closes the connection without an answer.
struct Backend {
    port: u16,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(name: &'static str, drop_requests: bool) -> Backend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (heads.clone(), stop.clone());
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let h = h.clone();
                std::thread::spawn(move || serve(conn, n, name, drop_requests, &h));
            }
        });
        Backend { port, heads, stop }
    }

    /// Request heads seen, other than health checks.
    fn requests(&self) -> Vec<(usize, String)> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h)| !h.starts_with("GET /health "))
            .cloned()
            .collect()
    }

    fn health_checks(&self) -> usize {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h)| h.starts_with("GET /health "))
            .count()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
    }
}

fn serve(
    conn: TcpStream,
    n: usize,
    name: &str,
    drop_requests: bool,
    heads: &Mutex<Vec<(usize, String)>>,
) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        heads.lock().unwrap().push((n, head.clone()));
        let health = head.starts_with("GET /health ");
        if drop_requests && !health {
            return; // closed without a byte of answer
        }
        let body = if health {
            "ok\n".to_string()
        } else {
            format!("{name}\n")
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Ten GETs through the front all get the good backend's answer, and the bad backend (which
/// drops requests) was tried on the way.
#[track_caller]
fn ten_requests_all_answered_by_good(addr: &str, front: &Daemon, bad: &Backend) {
    for _ in 0..10 {
        let r = support::http::get(addr, "/web/").send();
        assert_eq!(
            (r.status, r.text()),
            (200, "good\n".into()),
            "{}",
            front.log_tail(20)
        );
    }
    assert!(
        !bad.requests().is_empty(),
        "the backend that drops requests was never tried"
    );
}

/// Found by a load hunt: `nginx -t` does not bind, so a config whose listen port is taken
/// passes the check and then fails nginx's own reload: nginx keeps its old config (and
/// refuses every later reload), while rewire logged "reloaded" and status said ok. With
/// `confirm = "new_child"` the reload counts only once nginx started new workers: here it
/// fails, the previous file goes back, and status says why.
#[test]
fn an_nginx_reload_that_nginx_refuses_is_a_failed_reload_with_confirm() {
    let Some((nginx, _)) = binaries() else {
        return;
    };
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let port = free_port();
    let p = Project::new();
    shipped(&p, "nginx.conf.tera");
    p.instance("web", "a", "127.0.0.1", 18080)
        .kv("nginx/listen", &format!("127.0.0.1:{port}"))
        .env("NGINX_PID", &p.path("nginx.pid").display().to_string())
        .config(&format!(
            "[defaults]\nwait = {{ min = \"0s\" }}\n\n[control]\nsocket = \"ctl.sock\"\n\n\
             [[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"nginx.conf\"\n{}\
             reload = {{ signal = \"HUP\", target = \"main\", confirm = \"new_child\" }}\n\n\
             [main]\nexec = [\"{}\", \"-p\", \"{}/\", \"-e\", \"stderr\", \"-c\", \"{}\", \"-g\", \"daemon off;\"]\n",
            nginx_check(&nginx, &p),
            nginx.display(),
            p.root().display(),
            p.path("nginx.conf").display(),
        ));
    let daemon = Daemon::spawn("rewire", p.command(&["run"]), &p.path("rewire.log")).unwrap();
    let status = || {
        let o = p.rewire(&["status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    wait_for("nginx serving", TIMEOUT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // A change nginx applies: confirmed.
    p.instance("web", "b", "127.0.0.1", 18081);
    wait_for("the second backend reloaded", TIMEOUT, || {
        std::fs::read_to_string(p.path("rewire.log")).is_ok_and(|l| l.contains("reloaded"))
            && std::fs::read_to_string(p.path("nginx.conf")).is_ok_and(|c| c.contains(":18081"))
    });
    // A listen port another process holds: `nginx -t` passes, nginx's reload does not.
    p.kv("nginx/listen", &format!("127.0.0.1:{taken_port}"));
    let failed = support::poll_until(Duration::from_secs(30), || {
        status()["templates"]["nginx.conf"]["detail"]
            .as_str()
            .is_some_and(|e| e.contains("started no new child"))
    });
    assert!(
        failed,
        "no failed reload in status {}:\n{}",
        status(),
        std::fs::read_to_string(p.path("rewire.log")).unwrap_or_default()
    );
    let conf = std::fs::read_to_string(p.path("nginx.conf")).unwrap();
    assert!(
        conf.contains(&format!(":{port}")) && !conf.contains(&format!(":{taken_port}")),
        "the file nginx refused stayed in place:\n{conf}"
    );
    drop(taken);
    drop(daemon);
}

#[test]
fn nginx_template_pools_http11_upstream_connections_and_tries_the_next_backend() {
    let Some((nginx, _)) = binaries() else {
        return;
    };
    let good = Backend::start("good", false);
    let bad = Backend::start("bad", true);
    let port = free_port();
    let p = Project::new();
    shipped(&p, "nginx.conf.tera");
    p.instance("web", "good", "127.0.0.1", good.port)
        .instance("web", "bad", "127.0.0.1", bad.port)
        .kv("nginx/listen", &format!("127.0.0.1:{port}"))
        .env("NGINX_PID", &p.path("nginx.pid").display().to_string())
        .config(&format!(
            "[[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"nginx.conf\"\n{}",
            nginx_check(&nginx, &p)
        ));
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let mut cmd = Command::new(&nginx);
    cmd.arg("-p")
        .arg(format!("{}/", p.root().display()))
        .args(["-e", "stderr", "-c"])
        .arg(p.path("nginx.conf"))
        .args(["-g", "daemon off;"]);
    let mut d = Daemon::spawn("nginx", cmd, &p.path("nginx.log")).unwrap();
    let addr = support::ports::addr(port);
    d.wait_ready(TIMEOUT, || {
        support::http::get(&addr, "/health")
            .try_send()
            .is_ok_and(|r| r.status == 200)
    })
    .unwrap();

    // The backend that drops requests is tried, and nginx goes on to the next one.
    ten_requests_all_answered_by_good(&addr, &d, &bad);
    let seen = good.requests();
    assert_eq!(seen.len(), 10, "{seen:?}");
    let (_, head) = &seen[0];
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(head, "host"), Some("127.0.0.1"), "{head}");
    assert_eq!(header(head, "x-forwarded-for"), Some("127.0.0.1"), "{head}");
    assert_eq!(header(head, "x-forwarded-proto"), Some("http"), "{head}");
    assert_eq!(
        header(head, "x-forwarded-port"),
        Some(port.to_string().as_str()),
        "{head}"
    );
    assert_eq!(header(head, "connection"), None, "{head}");
    // Pooled: ten requests, one after the other, on fewer connections (one per worker at most).
    let conns: std::collections::BTreeSet<usize> = seen.iter().map(|(c, _)| *c).collect();
    assert!(
        conns.len() < seen.len(),
        "no upstream keep-alive: {conns:?}"
    );

    let status = support::http::get(&addr, "/nginx-status").send();
    assert_eq!(status.status, 200);
    assert!(
        status.text().contains("Active connections"),
        "{}",
        status.text()
    );
}

#[test]
fn haproxy_template_retries_on_another_server_and_checks_the_configured_path() {
    let Some((_, haproxy)) = binaries() else {
        return;
    };
    let good = Backend::start("good", false);
    let bad = Backend::start("bad", true);
    let port = free_port();
    let p = Project::new();
    shipped(&p, "haproxy.cfg.tera");
    p.instance("web", "good", "127.0.0.1", good.port)
        .instance("web", "bad", "127.0.0.1", bad.port)
        .kv("haproxy/listen", &format!("127.0.0.1:{port}"))
        .kv("haproxy/check_path", "/health")
        .env(
            "HAPROXY_ADMIN_SOCKET",
            &p.path("admin.sock").display().to_string(),
        )
        .config(&format!(
            "[[template]]\nsource = \"haproxy.cfg.tera\"\ndestination = \"haproxy.cfg\"\n{}",
            haproxy_check(&haproxy)
        ));
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let mut cmd = Command::new(&haproxy);
    cmd.arg("-W")
        .arg("-S")
        .arg(p.path("master.sock"))
        .arg("-f")
        .arg(p.path("haproxy.cfg"));
    let mut d = Daemon::spawn("haproxy", cmd, &p.path("haproxy.log")).unwrap();
    d.wait_ready(TIMEOUT, || support::ports::port_open(port))
        .unwrap();
    // Both servers pass their checks on /health (the dropping one answers health checks).
    wait_for("health checks on /health", TIMEOUT, || {
        good.health_checks() > 0 && bad.health_checks() > 0
    });

    let addr = support::ports::addr(port);
    ten_requests_all_answered_by_good(&addr, &d, &bad);
    let seen = good.requests();
    let (_, head) = &seen[0];
    assert_eq!(header(head, "x-forwarded-for"), Some("127.0.0.1"), "{head}");
    assert_eq!(header(head, "x-forwarded-proto"), Some("http"), "{head}");
    // The admin socket is there for the Runtime API.
    wait_for("admin socket", Duration::from_secs(5), || {
        p.path("admin.sock").exists()
    });
}
