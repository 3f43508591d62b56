//! `rewire run` as a daemon against a temp directory catalog, real processes only.

use std::time::{Duration, SystemTime};

use crate::project::{self, Project, UPSTREAM};
use crate::support::process::SIGHUP;
use crate::support::{self, TIMEOUT, wait_for};

fn config(p: &Project, extra: &str) -> String {
    format!(
        "{}\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n{extra}",
        p.control()
    )
}

/// `rewire run` rendering the web upstream template to out/web.conf (`extra`: more lines for
/// its `[[template]]`), one instance `a` at 10.0.0.1:80; returns once the first render is
/// written.
fn web_daemon(extra: &str) -> (Project, project::Running) {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, extra));
    p.instance("web", "a", "10.0.0.1", 80);
    let r = started(&p);
    (p, r)
}

fn started(p: &Project) -> project::Running {
    let r = p.run();
    wait_for("first render", TIMEOUT, || p.path("out/web.conf").exists());
    r
}

#[test]
fn follows_added_removed_and_expired_instances() {
    let (p, mut r) = web_daemon("");
    assert!(p.read("out/web.conf").contains("10.0.0.1:80"));

    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("added instance", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });

    p.remove_instance("web", "a");
    wait_for("removed instance", TIMEOUT, || {
        !p.read("out/web.conf").contains("10.0.0.1:80")
    });

    // An instance whose registration expires in 2 s leaves the passing set by itself.
    let expires = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(2));
    p.instance_json(
        "web",
        "c",
        &format!(r#"{{"address": "10.0.0.3", "port": 80, "expires_at": "{expires}"}}"#),
    );
    wait_for("instance with a TTL", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    wait_for("expired instance dropped", TIMEOUT, || {
        !p.read("out/web.conf").contains("10.0.0.3:80")
    });
    assert!(p.read("out/web.conf").contains("10.0.0.2:80"));
    // A new service directory created after start is followed too.
    p.file("web.tera", UPSTREAM);
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn failing_check_keeps_the_old_file_and_new_data_tries_again() {
    let (p, mut r) = web_daemon(
        "check = [\"sh\", \"-c\", \"if grep -q 10.0.0.66 {file}; then echo 'rejected: bad backend' >&2; exit 1; fi\"]\n",
    );
    p.instance("web", "bad", "10.0.0.66", 80);
    wait_for("check rejection logged", TIMEOUT, || {
        r.log().contains("rejected: bad backend")
    });
    assert!(!p.read("out/web.conf").contains("10.0.0.66"));
    assert!(p.read("out/web.conf").contains("10.0.0.1:80"));
    p.remove_instance("web", "bad");
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("new data written", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn failing_reload_restores_the_previous_file() {
    let (p, mut r) = web_daemon(
        "reload = [\"sh\", \"-c\", \"echo reloaded >> reloads; if grep -q 10.0.0.66 out/web.conf; then echo 'reload failed: bad upstream' >&2; exit 1; fi\"]\n",
    );
    wait_for("first reload", TIMEOUT, || {
        p.read("reloads").lines().count() == 1
    });
    let good = p.read("out/web.conf");
    p.instance("web", "bad", "10.0.0.66", 80);
    wait_for("failed reload logged", TIMEOUT, || {
        r.log().contains("reload failed: bad upstream")
    });
    wait_for("rollback", TIMEOUT, || p.read("out/web.conf") == good);
    assert!(
        r.log().contains("restoring the previous files"),
        "{}",
        r.log()
    );
    // Still running, and new data is applied.
    p.remove_instance("web", "bad");
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("recovered", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert_eq!(r.stop(), Some(0));
}

/// Found by testing as an operator: a SIGTERM while a reload ran killed it, leaving the new
/// file in place unloaded; the restarted rewire found the same bytes and reloaded nothing, so
/// nginx kept its old upstreams until some other change came. The reload in progress now
/// finishes first (for a few seconds at most).
#[test]
fn a_stop_during_a_reload_lets_the_reload_finish() {
    let (p, mut r) = web_daemon(
        "reload = [\"sh\", \"-c\", \"echo started >> reloads; sleep 1; echo done >> reloads\"]\n",
    );
    wait_for("first reload", TIMEOUT, || {
        p.read("reloads").matches("done").count() == 1
    });
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("the second reload running", TIMEOUT, || {
        p.read("reloads").matches("started").count() == 2
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
    assert_eq!(p.read("reloads"), "started\ndone\nstarted\ndone\n");
}

#[test]
fn a_failed_reload_is_tried_again_without_a_catalog_change() {
    let (p, mut r) = web_daemon(
        "reload = [\"sh\", \"-c\", \"echo x >> reloads; if [ -e down ]; then echo 'program restarting' >&2; exit 1; fi\"]\n",
    );
    wait_for("first reload", TIMEOUT, || {
        p.read("reloads").lines().count() == 1
    });
    p.file("down", "");
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("failed reload", TIMEOUT, || {
        r.log().contains("program restarting")
    });
    wait_for("rollback", TIMEOUT, || {
        !p.read("out/web.conf").contains("10.0.0.2")
    });
    // The program is back; nothing changes in the catalog. The same bytes are tried again.
    std::fs::remove_file(p.path("down")).unwrap();
    wait_for("retried and written", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn a_signal_reload_to_a_program_not_running_keeps_the_new_file() {
    let (p, mut r) = web_daemon("reload = { signal = \"HUP\", pidfile = \"app.pid\" }\n");
    // No pidfile (the program is not running, as in preStart or while it restarts): the new
    // file stays and the program reads it when it starts.
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("written", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert!(r.log().contains("not reloaded"), "{}", r.log());
    // An empty pidfile (nginx -t and a starting nginx leave one) is the same.
    p.file("app.pid", "");
    p.instance("web", "c", "10.0.0.3", 80);
    wait_for("written", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    // Once it runs, it gets the signal.
    let mut app = std::process::Command::new("sh")
        .args([
            "-c",
            "trap 'echo hup >> hups' HUP; echo $$ > app.pid; while :; do sleep 0.05; done",
        ])
        .current_dir(p.path("."))
        .spawn()
        .unwrap();
    wait_for("pidfile", TIMEOUT, || !p.read("app.pid").trim().is_empty());
    p.instance("web", "d", "10.0.0.4", 80);
    wait_for("signalled", TIMEOUT, || p.read("hups").contains("hup"));
    assert!(p.read("out/web.conf").contains("10.0.0.4:80"));
    let _ = app.kill();
    let _ = app.wait();
    assert!(!r.log().contains("restoring"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn a_file_rewritten_in_place_is_read_when_its_writer_closes_it() {
    use std::io::Write;
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    p.instance("web", "b", "10.0.0.2", 80);
    let mut r = started(&p);
    wait_for("both", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    // `echo ... > b.json`, slowly: truncate, half the JSON, a pause, the rest, close.
    let mut f = std::fs::File::create(p.path("catalog/services/web/b.json")).unwrap();
    f.write_all(br#"{"address": "10.0.0.2","#).unwrap();
    f.flush().unwrap();
    // Give a reader that reacts to the truncation or the first write time to do harm.
    let deadline = std::time::Instant::now() + Duration::from_millis(400);
    while std::time::Instant::now() < deadline {
        assert!(
            p.read("out/web.conf").contains("10.0.0.2:80"),
            "b dropped while its file was being written:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    f.write_all(br#" "port": 81}"#).unwrap();
    drop(f);
    wait_for("rewritten b", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:81")
    });
    assert!(!r.log().contains("malformed"), "{}", r.log());
    // A file created empty and filled by its writer is read once, complete.
    let mut f = std::fs::File::create(p.path("catalog/services/web/c.json")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    f.write_all(br#"{"address": "10.0.0.3", "port": 80}"#)
        .unwrap();
    drop(f);
    wait_for("new c", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    assert!(!r.log().contains("malformed"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn shipped_templates_pass_real_nginx_and_haproxy_checks() {
    let (Some(nginx), Some(haproxy)) = (support::nginx::binary(), support::haproxy::binary())
    else {
        return support::skip::<()>("nginx/haproxy", "binary not found", false).unwrap_or(());
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let p = Project::new();
    for t in ["nginx.conf.tera", "haproxy.cfg.tera"] {
        p.file(
            t,
            &std::fs::read_to_string(format!("{root}/templates/{t}")).unwrap(),
        );
    }
    p.instance("web", "a", "127.0.0.1", 18080)
        // Names that a character replacement made equal (duplicate upstreams, backends or
        // servers fail the check, and then every later update): nginx compares upstream
        // names without case.
        .instance("web", "x@1", "127.0.0.1", 18083)
        .instance("web", "x_1", "127.0.0.1", 18084)
        .instance("Web", "a", "127.0.0.1", 18085)
        .instance("my.svc", "a", "127.0.0.1", 18086)
        .instance("my_svc", "a", "127.0.0.1", 18087)
        // Consul lists itself (its server RPC port): the shipped templates leave it out.
        .instance("consul", "c", "127.0.0.1", 8300)
        .file("catalog/kv/nginx/listen", "127.0.0.1:18082")
        .env("NGINX_PID", &p.path("nginx.pid").display().to_string())
        .file("catalog/kv/haproxy/listen", "127.0.0.1:18081")
        .config(&format!(
            "[[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"out/nginx.conf\"\ncheck = [\"{}\", \"-t\", \"-q\", \"-p\", \"{}\", \"-c\", \"{{file}}\"]\n\n[[template]]\nsource = \"haproxy.cfg.tera\"\ndestination = \"out/haproxy.cfg\"\ncheck = [\"{}\", \"-c\", \"-dW\", \"-f\", \"{{file}}\"]\n",
            nginx.display(),
            p.path(".").display(),
            haproxy.display()
        ));
    let o = p.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let (ngx, hap) = (p.read("out/nginx.conf"), p.read("out/haproxy.cfg"));
    assert!(
        ngx.contains("server 127.0.0.1:18080;") && ngx.contains("listen 127.0.0.1:18082;"),
        "{ngx}"
    );
    assert!(
        hap.contains("bind 127.0.0.1:18081") && hap.contains("127.0.0.1:18080 check"),
        "{hap}"
    );
    for port in 18083..=18087 {
        assert!(ngx.contains(&format!("server 127.0.0.1:{port};")), "{ngx}");
        assert!(hap.contains(&format!("127.0.0.1:{port} check")), "{hap}");
    }
    assert!(
        !ngx.contains("consul") && !hap.contains("consul"),
        "{ngx}\n{hap}"
    );
}

#[test]
fn catalog_directory_deleted_and_recreated() {
    let (p, mut r) = web_daemon("");
    // Moved away in one step: an outage, and the last good file stays.
    std::fs::rename(p.path("catalog"), p.path("catalog.old")).unwrap();
    wait_for("outage logged", TIMEOUT, || {
        r.log().contains("keeping the last good data")
    });
    assert!(p.read("out/web.conf").contains("10.0.0.1:80"));
    std::fs::create_dir_all(p.path("catalog/services")).unwrap();
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("recreated catalog followed", TIMEOUT, || {
        let t = p.read("out/web.conf");
        t.contains("10.0.0.2:80") && !t.contains("10.0.0.1:80")
    });
    // Deleted file by file (rm -rf) and created again: rewire survives and follows.
    std::fs::remove_dir_all(p.path("catalog")).unwrap();
    std::fs::create_dir_all(p.path("catalog/services")).unwrap();
    p.instance("web", "c", "10.0.0.3", 80);
    wait_for("catalog created again followed", TIMEOUT, || {
        let t = p.read("out/web.conf");
        t.contains("10.0.0.3:80") && !t.contains("10.0.0.2:80")
    });
    assert_eq!(r.stop(), Some(0));
}

/// A check still running when a new config takes over (past the daemon's 10 s grace) must not
/// put the old config's output in place after the new config's.
#[test]
fn a_check_outliving_a_sighup_never_writes_over_the_new_configs_file() {
    let started_mark = "check.started";
    let done_mark = "check.done";
    let check = format!(
        "check = [\"sh\", \"-c\", \"touch {started_mark}; sleep 12; touch {done_mark}; test -s {{file}}\"]\n"
    );
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, &check));
    let mut r = p.run();
    p.instance("web", "a", "10.0.0.1", 80);
    wait_for("the slow check running", TIMEOUT, || {
        p.path(started_mark).exists()
    });
    // The new config: no check, another template text.
    p.file("web.tera", "new {{ service(name=\"web\") | length }}\n")
        .config(&config(&p, ""));
    r.signal(SIGHUP);
    wait_for("the new config's file", Duration::from_secs(30), || {
        p.read("out/web.conf") == "new 1\n"
    });
    wait_for("the old check done", Duration::from_secs(30), || {
        p.path(done_mark).exists()
    });
    // Give the old runner time to do what it would do after its check.
    wait_for("the old round over", TIMEOUT, || {
        r.log().contains("the config was replaced during the check")
    });
    assert_eq!(p.read("out/web.conf"), "new 1\n", "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_running() {
    let (p, mut r) = web_daemon("");
    let good = std::fs::read_to_string(p.path("rewire.toml")).unwrap();
    p.config(&format!("{good}\nbogus_key = 1\n"));
    r.signal(SIGHUP);
    wait_for("rejection logged", TIMEOUT, || {
        r.log().contains("new config rejected")
    });
    assert!(r.log().contains("unknown key `bogus_key`"), "{}", r.log());
    // `rewire status` says so until a config is applied: the operator who just reloaded must
    // not take the old config for the new one.
    let o = p.rewire(&["status"]);
    let text = project::stdout(&o);
    assert!(text.contains("last reload: rejected at "), "{text}");
    assert!(text.contains("bogus_key"), "{text}");
    // The old config still runs.
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("still following", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    // A broken template is rejected too.
    p.config(&good);
    p.file("web.tera", "{% for %}");
    r.signal(SIGHUP);
    wait_for("template rejection", TIMEOUT, || {
        r.log().matches("new config rejected").count() == 2
    });
    // A valid change is applied.
    p.file("web.tera", "v2 {{ service(name=\"web\") | length }}\n");
    r.signal(SIGHUP);
    wait_for("new template applied", TIMEOUT, || {
        p.read("out/web.conf") == "v2 2\n"
    });
    assert!(r.log().contains("new config applied"));
    let o = p.rewire(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(status.get("rejected_reload").is_none(), "{status}");
    // The status report follows the running config: a moved destination shows its new path.
    p.config(&good.replace("out/web.conf", "out/moved.conf"));
    r.signal(SIGHUP);
    wait_for("moved destination written", TIMEOUT, || {
        p.read("out/moved.conf") == "v2 2\n"
    });
    let o = p.rewire(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dest = status["templates"]["web"]["destination"]
        .as_str()
        .unwrap_or("");
    assert!(dest.ends_with("out/moved.conf"), "{status}");
    // No reload is configured: the change reached the program by the write alone.
    assert_eq!(status["templates"]["web"]["last_path"], "write", "{status}");
    // A new control socket applies only on restart: said, naming the socket still answering.
    let moved = good.replace("out/web.conf", "out/moved.conf");
    let old_socket = p.path("rewire.sock").display().to_string();
    p.config(&moved.replace(&old_socket, &p.path("other.sock").display().to_string()));
    r.signal(SIGHUP);
    wait_for("the control change warned about", TIMEOUT, || {
        r.log()
            .contains("[control] changed: it applies when rewire restarts")
    });
    assert!(r.log().contains(&old_socket), "{}", r.log());
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn burst_of_changes_is_coalesced_by_the_wait() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\nwait = {{ min = \"1s\", max = \"5s\" }}\nreload = [\"sh\", \"-c\", \"echo x >> reloads\"]\n",
        p.control()
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || {
        p.read("reloads").lines().count() == 1
    });
    for i in 2..22 {
        p.instance("web", &format!("i{i}"), &format!("10.0.0.{i}"), 80);
    }
    wait_for("burst rendered", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.21:80")
    });
    // 20 changes in well under a second: one render, one reload (plus the first).
    let reloads = p.read("reloads").lines().count();
    assert!(reloads <= 3, "{reloads} reloads for one burst");
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn real_nginx_is_reloaded_and_serves_the_new_upstream_set() {
    let p = Project::new();
    let (pa, pb) = (support::free_port(), support::free_port());
    // nginx needs the included upstream file to exist and be valid before it starts.
    let upstreams = p.path("upstreams.conf");
    std::fs::write(
        &upstreams,
        format!("upstream web {{ server 127.0.0.1:{pa}; }}\n"),
    )
    .unwrap();
    let body = format!(
        r#"
    server {{ listen 127.0.0.1:@PORT@; location / {{ proxy_pass http://web; }} }}
    server {{ listen 127.0.0.1:{pa}; location / {{ return 200 "backend-a\n"; }} }}
    server {{ listen 127.0.0.1:{pb}; location / {{ return 200 "backend-b\n"; }} }}
    include {};
"#,
        upstreams.display()
    );
    let Some(nginx) = support::Nginx::try_start(&body) else {
        return;
    };
    let quoted: Vec<String> = nginx.cli_args().iter().map(|a| format!("{a:?}")).collect();
    p.file(
        "web.tera",
        "upstream web {\n{% for s in service(name=\"web\") %}  server {{ s | addr_port }};\n{% endfor %}{% if service(name=\"web\") | length == 0 %}  server 127.0.0.1:1 down;\n{% endif %}}\n",
    )
    .config(&format!(
        "{}\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"upstreams.conf\"\ncheck_mode = \"swap\"\ncheck = [\"nginx\", {}, \"-t\", \"-q\"]\nreload = [\"nginx\", {}, \"-s\", \"reload\"]\n",
        p.control(),
        quoted.join(", "),
        quoted.join(", "),
    ));
    let get = || {
        support::http::get(&nginx.addr(), "/")
            .timeout(Duration::from_secs(2))
            .try_send()
            .map(|resp| resp.text())
            .unwrap_or_default()
    };
    assert_eq!(get(), "backend-a\n");
    p.instance("web", "b", "127.0.0.1", pb);
    let mut r = p.run();
    wait_for("nginx serves backend b", TIMEOUT, || get() == "backend-b\n");
    p.remove_instance("web", "b");
    p.instance("web", "a", "127.0.0.1", pa);
    wait_for("nginx serves backend a", TIMEOUT, || get() == "backend-a\n");
    // No backend at all: the placeholder keeps nginx's config valid.
    p.remove_instance("web", "a");
    wait_for("placeholder written", TIMEOUT, || {
        p.read("upstreams.conf").contains("127.0.0.1:1 down")
    });
    assert!(
        nginx.test_config().0,
        "nginx -t fails on the rendered config"
    );
    // A config nginx rejects never reaches it: the swap is undone and nginx keeps serving.
    p.file("web.tera", "upstream web { this is not nginx; }\n");
    r.signal(SIGHUP);
    let rejected = support::poll_until(TIMEOUT, || r.log().contains("rejected the new"));
    assert!(rejected, "nginx -t never rejected it:\n{}", r.log());
    assert!(p.read("upstreams.conf").contains("127.0.0.1:1 down"));
    assert!(nginx.test_config().0);
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn files_written_into_a_new_service_directory_at_once_are_all_seen() {
    let p = Project::new();
    p.file(
        "web.tera",
        "{% set n = 0 %}{% for s in services() %}{{ s.name }}={{ service(name=s.name) | length }}\n{% endfor %}",
    )
    .config(&config(&p, ""));
    p.instance("seed", "s", "10.0.0.1", 80);
    let mut r = started(&p);
    for d in 0..15 {
        for i in 0..3 {
            p.instance(
                &format!("svc{d}"),
                &format!("i{i}"),
                &format!("10.1.{d}.{i}"),
                80,
            );
        }
    }
    wait_for("every instance of every new directory", TIMEOUT, || {
        let t = p.read("out/web.conf");
        (0..15).all(|d| t.contains(&format!("svc{d}=3\n")))
    });
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn a_destination_deleted_by_hand_is_written_again_at_once() {
    let (p, mut r) = web_daemon("");
    let first = p.read("out/web.conf");
    std::fs::remove_file(p.path("out/web.conf")).unwrap();
    // No catalog change: inotify on out/ tells the runner.
    wait_for("the file is back", TIMEOUT, || {
        p.read("out/web.conf") == first
    });
    assert!(
        r.log().contains("destination removed; writing it again"),
        "{}",
        r.log()
    );
    // Moved away counts too.
    std::fs::rename(p.path("out/web.conf"), p.path("out/moved")).unwrap();
    wait_for("the file is back again", TIMEOUT, || {
        p.read("out/web.conf") == first
    });
    // The whole directory moved away: written again into a new one, which is watched in turn.
    std::fs::rename(p.path("out"), p.path("out.old")).unwrap();
    wait_for("the file is back in a new directory", TIMEOUT, || {
        p.read("out/web.conf") == first
    });
    std::fs::remove_file(p.path("out/web.conf")).unwrap();
    wait_for(
        "the file is back after a removal in the new directory",
        TIMEOUT,
        || p.read("out/web.conf") == first,
    );
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn sighup_rejects_a_template_with_a_misspelt_argument_before_applying_the_config() {
    let (p, mut r) = web_daemon("");
    p.file(
        "web.tera",
        "{% for s in service(nam=\"web\") %}{% endfor %}\n",
    );
    r.signal(SIGHUP);
    wait_for("the rejection", TIMEOUT, || {
        r.log().contains("has no argument `nam`")
    });
    let log = r.log();
    assert!(!log.contains("new config applied"), "{log}");
    // The old template keeps running.
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("old template still renders", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// Renames are how most writers publish a file. Events for hidden names are dropped before any
/// lookup and the names a rename moved away are not looked up either (src/catalog/dir/
/// inotify.rs: a lookup of such a name waits for the writer's rename to finish); these are the
/// moves that must still be followed.
#[test]
fn files_renamed_into_place_and_away_are_followed() {
    let (p, mut r) = web_daemon("");
    let dir = p.path("catalog/services/web");
    // Replaced through a hidden temp file (the harness writes every instance this way).
    p.instance("web", "a", "10.0.0.1", 81);
    wait_for("replaced instance", TIMEOUT, || {
        let t = p.read("out/web.conf");
        t.contains("10.0.0.1:81") && !t.contains("10.0.0.1:80;")
    });
    // Moved in from a visible name that is not an instance's.
    std::fs::write(
        dir.join("b.json.new"),
        r#"{"address": "10.0.0.2", "port": 80}"#,
    )
    .unwrap();
    std::fs::rename(dir.join("b.json.new"), dir.join("b.json")).unwrap();
    wait_for("instance moved in", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    // Moved away to a name that is not an instance's: a deregistration.
    std::fs::rename(dir.join("a.json"), dir.join("a.json.bak")).unwrap();
    wait_for("instance moved away", TIMEOUT, || {
        !p.read("out/web.conf").contains("10.0.0.1:81")
    });
    // Moved back over a hidden name's event burst: it comes back.
    std::fs::rename(dir.join("a.json.bak"), dir.join(".a.json")).unwrap();
    std::fs::rename(dir.join(".a.json"), dir.join("a.json")).unwrap();
    wait_for("instance moved back", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:81")
    });
    // A hidden file is never an instance, however it got there.
    std::fs::write(
        dir.join(".c.json"),
        r#"{"address": "10.0.0.3", "port": 80}"#,
    )
    .unwrap();
    p.instance("web", "d", "10.0.0.4", 80);
    wait_for("a later change", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.4:80")
    });
    assert!(!p.read("out/web.conf").contains("10.0.0.3"));
    // `b.json.new` and `a.json.bak` are a writer's versions of instance files, and gone by
    // now: nothing to warn about.
    assert!(!r.log().contains("not an instance file"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// A Kubernetes ConfigMap volume mounted as a service directory: the files are links through
/// `..data`, and an update swaps `..data` to a new timestamped directory with one rename (the
/// kubelet's atomic writer). Every step but that rename has a hidden name.
#[test]
fn a_kubernetes_volume_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, ""));
    let dir = p.path("catalog/services/web");
    // A timestamped version directory holding `a.json` on `port`.
    let version = |name: &str, port: u16| {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        let json = format!(r#"{{"address": "10.0.0.1", "port": {port}}}"#);
        std::fs::write(dir.join(name).join("a.json"), json).unwrap();
    };
    version("..2026_12_02_1", 80);
    symlink("..2026_12_02_1", dir.join("..data")).unwrap();
    symlink("..data/a.json", dir.join("a.json")).unwrap();
    let mut r = started(&p);
    assert!(p.read("out/web.conf").contains("10.0.0.1:80"));

    version("..2026_12_02_2", 81);
    symlink("..2026_12_02_2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_12_02_1")).unwrap();
    wait_for("the new version", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:81")
    });
    assert!(!p.read("out/web.conf").contains("10.0.0.1:80"));
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}
