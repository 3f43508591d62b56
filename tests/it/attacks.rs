//! Issue 12's attacks on rewire's input side, each reproduced through the real binary: what a
//! catalog writer, a template directory or another local user could do to a config or to the
//! daemon, and what rewire does instead.
//!
//! - A FIFO in the catalog never blocks a render, the daemon or its stop.
//! - `rm -rf catalog` is an outage: the destination keeps its upstreams.
//! - A file that turns invalid keeps the last good instance.
//! - KV injections fail the render through real `nginx -t` / `haproxy -c`, the last good
//!   config stays.
//! - Symlinks leading out of the catalog, and partials leading out of the template directory,
//!   are refused.
//! - Size caps: a 50 MB instance file, a link to /dev/zero, a Consul value over `max_file`, a
//!   huge Consul body: refused by name, memory flat.
//! - The control socket: 0600 from the start under umask 000, a squatted path refused, other
//!   users may read the status of a `[control] group` socket but never switch maintenance.
//!
//! Tests that switch to another user (`nobody`) need root; as another user they say SKIPPED.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::project::{self, Project, UPSTREAM};
use crate::support::process::{self as proc, SIGTERM};
use crate::support::{self, Consul, TIMEOUT, wait_for};

const NOBODY: u32 = 65534;

fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// A template group rendering `web.tera` to out/web.conf at once (wait 0).
fn config(p: &Project, catalog: &str) -> String {
    format!(
        "{}{catalog}\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        p.control()
    )
}

/// The web upstream plus one KV value.
fn web_and_key(key: &str) -> String {
    format!("{UPSTREAM}value = {{{{ key(path=\"{key}\", default=\"none\") }}}}\n")
}

/// `VmRSS` or `VmHWM` (peak) of a process, in KiB.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn status_json(p: &Project) -> Option<serde_json::Value> {
    let o = p.rewire(&["status", "--json"]);
    serde_json::from_slice(&o.stdout).ok()
}

/// The state and detail of template `name` in `rewire status`.
fn template_state(p: &Project, name: &str) -> (String, String) {
    let s = status_json(p).unwrap_or_default();
    let t = &s["templates"][name];
    (
        t["state"].as_str().unwrap_or("").to_string(),
        t["detail"].as_str().unwrap_or("").to_string(),
    )
}

#[test]
fn a_fifo_in_the_catalog_never_blocks_render_run_or_stop() {
    let p = Project::new();
    p.file("web.tera", &web_and_key("app/name"))
        .config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    // The issue's two shapes: a FIFO under kv/ at start, and an instance file linked to a FIFO.
    // (The FIFO is beside the key the template reads: a key that is a FIFO is refused, and a
    // template reading it waits rather than render its default; see
    // a_refused_key_file_is_not_rendered_as_its_default.)
    mkfifo(&p.path("catalog/kv/app/fifo"));
    mkfifo(&p.path("pipe"));
    symlink(p.path("pipe"), p.path("catalog/services/web/x.json")).unwrap();

    let started = Instant::now();
    let o = p.rewire(&["render", "--timeout", "5s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 0, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "render took {:?}",
        started.elapsed()
    );
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(err.contains("leads out of the catalog directory"), "{err}");
    let out = p.read("out/web.conf");
    assert!(
        out.contains("10.0.0.1:80") && out.contains("value = none"),
        "{out}"
    );

    let mut r = p.run();
    wait_for("the daemon's first round", TIMEOUT, || {
        r.log().contains("rewire running")
    });
    // A FIFO appearing while running, then a real change: the change still arrives.
    mkfifo(&p.path("catalog/services/web/y.json"));
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("a change after the FIFO", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert_eq!(project::code(&p.rewire(&["status"])), 0, "{}", r.log());
    let stopping = Instant::now();
    assert_eq!(r.stop(), Some(0), "{}", r.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        stopping.elapsed()
    );
}

fn shipped(p: &Project, name: &str) {
    let root = env!("CARGO_MANIFEST_DIR");
    p.file(
        name,
        &std::fs::read_to_string(format!("{root}/templates/{name}")).unwrap(),
    );
}

fn nginx_check(p: &Project) -> Option<String> {
    let nginx =
        support::nginx::binary().or_else(|| support::skip("nginx", "binary not found", false))?;
    Some(format!(
        "check = [\"{}\", \"-t\", \"-q\", \"-p\", \"{}/\", \"-c\", \"{{file}}\"]\n",
        nginx.display(),
        p.root().display()
    ))
}

fn haproxy_check() -> Option<String> {
    let haproxy = support::haproxy::binary()
        .or_else(|| support::skip("haproxy", "binary not found", false))?;
    Some(format!(
        "check = [\"{}\", \"-c\", \"-dW\", \"-f\", \"{{file}}\"]\n",
        haproxy.display()
    ))
}

/// The shipped template `source` rendered to out/conf by `rewire run`/`render`, checked by
/// `check`, with the default wait unless `wait` says otherwise.
fn shipped_config(p: &Project, source: &str, check: &str, wait: &str) -> String {
    format!(
        "{}{wait}\n[[template]]\nname = \"conf\"\nsource = \"{source}\"\ndestination = \"out/conf\"\n{check}",
        p.control()
    )
}

#[test]
fn rm_rf_of_the_catalog_keeps_the_last_good_config_until_it_is_back() {
    let p = Project::new();
    let Some(check) = nginx_check(&p) else {
        return;
    };
    shipped(&p, "nginx.conf.tera");
    // The shipped template with the default wait, as in the issue.
    p.config(&shipped_config(&p, "nginx.conf.tera", &check, ""));
    p.env("NGINX_PID", &p.path("nginx.pid").display().to_string());
    for n in 0..40 {
        p.instance("web", &format!("w{n}"), &format!("10.0.1.{n}"), 8080);
    }
    p.instance("api", "a1", "10.0.2.1", 9090);
    let mut r = p.run();
    wait_for("every upstream written", TIMEOUT, || {
        let c = p.read("out/conf");
        c.contains("10.0.1.39:8080") && c.contains("10.0.2.1:9090")
    });
    let before = p.read("out/conf");

    std::fs::remove_dir_all(p.path("catalog")).unwrap();
    wait_for("the outage reported", TIMEOUT, || {
        r.log().contains("keeping the last good data")
    });
    // The old behaviour wrote an upstream-less config wait.min (0.5 s) after the deletions;
    // watch the file for longer than wait.max (2 s) plus a check.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(
            p.read("out/conf"),
            before,
            "the config changed during the outage:\n{}",
            r.log()
        );
        std::thread::sleep(support::POLL_INTERVAL);
    }
    let s = status_json(&p).unwrap_or_default();
    assert!(
        s["catalog_health"]
            .as_str()
            .is_some_and(|h| h.contains("does not exist")),
        "{s}"
    );
    eprintln!("{}", r.log());

    // It comes back with whatever the catalog holds then.
    std::fs::create_dir_all(p.path("catalog/kv")).unwrap();
    p.instance("web", "new", "10.0.3.1", 8080);
    wait_for("the catalog's return rendered", TIMEOUT, || {
        let c = p.read("out/conf");
        c.contains("10.0.3.1:8080") && !c.contains("10.0.1.0:8080")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn an_instance_file_turned_invalid_keeps_its_last_good_content_until_deleted() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    p.instance("web", "b", "10.0.0.2", 80);
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    // A half-typed edit in place (an editor saving), then a typo.
    std::fs::write(
        p.path("catalog/services/web/a.json"),
        r#"{"address": "10.0.0.1", "po"#,
    )
    .unwrap();
    p.instance("web", "c", "10.0.0.3", 80);
    wait_for("a later change rendered", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    std::fs::write(
        p.path("catalog/services/web/a.json"),
        r#"{"address": "10.0.0.1", "port": "80"}"#,
    )
    .unwrap();
    p.instance("web", "d", "10.0.0.4", 80);
    wait_for("another change rendered", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.4:80")
    });
    assert!(
        p.read("out/web.conf").contains("10.0.0.1:80"),
        "{}",
        p.read("out/web.conf")
    );
    let warnings = r.log().matches("keeping its last good content").count();
    assert_eq!(warnings, 1, "warned {warnings} times:\n{}", r.log());
    // Fixed: the fix shows; deleted: gone.
    p.instance("web", "a", "10.0.0.11", 80);
    wait_for("the fixed file", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.11:80")
    });
    assert!(
        r.log().contains("catalog file is usable again"),
        "{}",
        r.log()
    );
    p.remove_instance("web", "a");
    wait_for("the deleted file", TIMEOUT, || {
        !p.read("out/web.conf").contains("10.0.0.11:80")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// inotify watches a process holds (every inotify descriptor's `wd` lines).
fn inotify_watches(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .map(|f| {
            std::fs::read_to_string(f.path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count()
        })
        .sum()
}

fn threads(pid: u32) -> u64 {
    memory_kib(pid, "Threads")
}

/// Found by a hostile-writer hunt: 200 000 empty directories anywhere in the catalog took
/// the user's whole inotify budget (root's, shared by every root daemon), pinned a core
/// walking them again every second, and left a watcher thread behind per attempt (RSS 212 MB).
/// Past 4 096 directories under services/ and kv/ rewire stops watching and keeps the last
/// good config; directories it never reads are not watched at all.
#[test]
fn thousands_of_directories_in_the_catalog_neither_exhaust_inotify_nor_leak() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    let pid = r.child.id();
    let threads_before = threads(pid);
    // Never read, so never watched.
    for i in 0..3000 {
        std::fs::create_dir_all(p.path(&format!("catalog/junk/{i}"))).unwrap();
    }
    // Read (key folders), past the bound.
    for i in 0..5000 {
        std::fs::create_dir_all(p.path(&format!("catalog/kv/junk/{i}"))).unwrap();
    }
    wait_for("the refusal to watch is logged", TIMEOUT, || {
        r.log()
            .contains("more than 4096 directories under services/ and kv/")
    });
    // The watcher that was running when the bound was passed closes its inotify descriptor
    // on its own thread, once it has worked through the creations queued before the drop:
    // under load, a moment after the refusal is logged (a CI run sampled 4 981 watches then).
    wait_for("the old watcher's descriptor closed", TIMEOUT, || {
        inotify_watches(pid) <= 4096 + 8
    });
    // Through a few retry rounds (one a second) the watches stay bounded.
    let sampling = Instant::now();
    while sampling.elapsed() < Duration::from_secs(3) {
        let w = inotify_watches(pid);
        assert!(w <= 4096 + 8, "{w} inotify watches");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.read("out/web.conf").matches("server ").count(), 1);
    std::fs::remove_dir_all(p.path("catalog/kv/junk")).unwrap();
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("watching again once they are gone", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    assert!(inotify_watches(pid) < 16, "{}", inotify_watches(pid));
    wait_for("no thread left behind", TIMEOUT, || {
        threads(pid) <= threads_before + 1
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// Found by a hostile-writer hunt: each expiry re-answered every service (17 CPU-seconds for
/// 10 000 expiries 3 ms apart). Now an expiry re-answers the services it touches, in 100 ms
/// batches; this checks that no expiry falls between two batches: 500 services whose one
/// instance each expires 2 ms after the previous one all leave the file.
#[test]
fn close_expiries_across_many_services_are_all_applied() {
    let p = Project::new();
    p.file(
        "all.tera",
        "{% for s in services() %}{% for i in service(name=s.name) %}{{ i.id }}\n{% endfor %}{% endfor %}",
    )
    .config(&format!(
        "{}[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"all.tera\"\ndestination = \"out/all.conf\"\n",
        p.control()
    ));
    let start = std::time::SystemTime::now() + Duration::from_secs(6);
    for i in 0..500u64 {
        let at = humantime::format_rfc3339_millis(start + Duration::from_millis(2 * i));
        p.instance_json(
            &format!("s{i}"),
            "a",
            &format!(r#"{{"address": "10.0.0.1", "port": 80, "expires_at": "{at}"}}"#),
        );
    }
    let mut r = p.run();
    wait_for("every instance listed", TIMEOUT, || {
        p.read("out/all.conf").lines().count() == 500
    });
    wait_for("every instance expired", TIMEOUT, || {
        p.path("out/all.conf").exists() && p.read("out/all.conf").is_empty()
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// The issue's payloads, each with the message that names the setting.
const NGINX_LISTEN: &str = "80; location /leak/ { alias /etc/; autoindex on; } #";
const HAPROXY_LISTEN: &str =
    ":80\n    http-request return status 200 content-type text/plain file /etc/shadow";

#[test]
fn kv_injections_fail_the_render_and_the_last_good_config_stays() {
    let p = Project::new();
    let (Some(nginx), Some(haproxy)) = (nginx_check(&p), haproxy_check()) else {
        return;
    };
    // One-shot renders: exit 1, naming the setting, nothing written.
    for (template, check, key, value) in [
        ("nginx.conf.tera", &nginx, "nginx/listen", NGINX_LISTEN),
        (
            "haproxy.cfg.tera",
            &haproxy,
            "haproxy/listen",
            HAPROXY_LISTEN,
        ),
    ] {
        let q = Project::new();
        shipped(&q, template);
        q.config(&shipped_config(
            &q,
            template,
            &check.replace(
                &p.root().display().to_string(),
                &q.root().display().to_string(),
            ),
            "",
        ));
        q.instance("web", "a", "127.0.0.1", 18080).kv(key, value);
        let o = q.rewire(&["render"]);
        let err = project::stderr(&o);
        assert_eq!(project::code(&o), 1, "{key}: {err}");
        assert!(err.contains(&format!("{key} must be")), "{key}: {err}");
        assert!(!q.path("out/conf").exists(), "{key}: written anyway");
        // The message names the value escaped: its second line never becomes a line of its own.
        if let Some((_, after)) = value.split_once('\n') {
            assert!(
                !err.lines()
                    .any(|l| l.trim_start().starts_with(after.trim_start())),
                "{key}: {err}"
            );
        }
    }

    // nginx's pid file is the operator's (NGINX_PID): a catalog writer who could move it would
    // stop every later reload by pidfile. A KV nginx/pid is not read.
    let q = Project::new();
    shipped(&q, "nginx.conf.tera");
    q.config(&shipped_config(
        &q,
        "nginx.conf.tera",
        &nginx.replace(
            &p.root().display().to_string(),
            &q.root().display().to_string(),
        ),
        "",
    ));
    let pid = q.path("nginx.pid").display().to_string();
    q.env("NGINX_PID", &pid)
        .instance("web", "a", "127.0.0.1", 18080)
        .kv("nginx/pid", "/tmp/elsewhere.pid");
    let o = q.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let conf = q.read("out/conf");
    assert!(conf.contains(&format!("pid \"{pid}\";")), "{conf}");
    assert!(!conf.contains("elsewhere"), "{conf}");
    // Nor may it choose the access log: a plain `.log` path in a directory the writer owns can
    // be a link to any file, and nginx (root) appends to it. Only NGINX_ACCESS_LOG's file is.
    let evil = q.path("catalog/kv/evil.log");
    symlink(q.path("victim"), &evil).unwrap();
    q.kv("nginx/access_log", &evil.display().to_string());
    let o = q.rewire(&["render"]);
    assert_eq!(project::code(&o), 1, "{}", project::stderr(&o));
    assert!(
        project::stderr(&o).contains("nginx/access_log must be off, /dev/stdout or /dev/stderr"),
        "{}",
        project::stderr(&o)
    );
    assert_eq!(q.read("out/conf"), conf, "the config changed");
    let log = q.path("access.log").display().to_string();
    q.env("NGINX_ACCESS_LOG", &log).kv("nginx/access_log", &log);
    let o = q.rewire(&["render"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    assert!(
        q.read("out/conf")
            .contains(&format!("access_log \"{log}\";"))
    );

    // The daemon: a good config first, then each payload: the template fails, the file stays.
    for (template, check, settings, payloads) in [
        (
            "nginx.conf.tera",
            &nginx,
            vec![("nginx/worker_connections", "512".to_string())],
            vec![
                ("nginx/listen", NGINX_LISTEN),
                (
                    "nginx/worker_connections",
                    "512;\nload_module /tmp/rewire-evil/evil.so",
                ),
            ],
        ),
        (
            "haproxy.cfg.tera",
            &haproxy,
            vec![],
            vec![("haproxy/listen", HAPROXY_LISTEN)],
        ),
    ] {
        let q = Project::new();
        q.env("NGINX_PID", &q.path("nginx.pid").display().to_string());
        let check = check.replace(
            &p.root().display().to_string(),
            &q.root().display().to_string(),
        );
        shipped(&q, template);
        q.config(&shipped_config(
            &q,
            template,
            &check,
            "[defaults]\nwait = { min = \"0s\", max = \"0s\" }\n",
        ));
        q.instance("web", "a", "127.0.0.1", 18080);
        for (k, v) in &settings {
            q.kv(k, v);
        }
        let mut r = q.run();
        wait_for("the good config", TIMEOUT, || {
            q.read("out/conf").contains("127.0.0.1:18080")
        });
        wait_for("the template ok", TIMEOUT, || {
            template_state(&q, "conf").0 == "ok"
        });
        let good = q.read("out/conf");
        for (key, value) in payloads {
            q.kv(key, value);
            wait_for(&format!("{key} refused"), TIMEOUT, || {
                let (state, detail) = template_state(&q, "conf");
                state == "error" && detail.contains(&format!("{key} must be"))
            });
            assert_eq!(q.read("out/conf"), good, "{key}: the config changed");
            assert!(
                !q.read("out/conf").contains("/etc/shadow")
                    && !q.read("out/conf").contains("load_module")
            );
            // Put the good value back: the template recovers.
            match settings.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => {
                    q.kv(key, v);
                }
                None => std::fs::remove_file(q.path(&format!("catalog/kv/{key}"))).unwrap(),
            }
            wait_for("the template ok again", TIMEOUT, || {
                template_state(&q, "conf").0 == "ok"
            });
        }
        assert_eq!(r.stop(), Some(0), "{}", r.log());
    }
}

#[test]
fn links_out_of_the_catalog_and_partials_out_of_the_template_dir_are_refused() {
    let p = Project::new();
    let outside = tempfile::tempdir().unwrap();
    let shadow = outside.path().join("shadow");
    std::fs::write(&shadow, "root:secret-hash:19000::::::\n").unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.file(
        "web.tera",
        "secret = {{ key(path=\"app/secret\", default=\"refused\") }}\nalias = {{ key(path=\"app/alias\") }}\n",
    )
    .config(&config(&p, ""));
    p.kv("app/real", "inside");
    symlink(&shadow, p.path("catalog/kv/app/secret")).unwrap();
    symlink("real", p.path("catalog/kv/app/alias")).unwrap();
    // The key behind a link leading out is refused: not read, and not "absent" either (its
    // default is not rendered in its place); the template is not written.
    let o = p.rewire(&["render", "--timeout", "5s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 1, "{err}");
    assert!(err.contains("leads out of the catalog directory"), "{err}");
    assert!(!err.contains("secret-hash"), "{err}");
    assert!(!p.path("out/web.conf").exists());
    // A link that stays inside is followed.
    p.file("web.tera", "alias = {{ key(path=\"app/alias\") }}\n");
    let o = p.rewire(&["render", "--timeout", "5s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 0, "{err}");
    assert_eq!(p.read("out/web.conf"), "alias = inside\n");

    // A partial linked to the same file: `check` and `render` refuse it by name.
    symlink(&shadow, p.path("evil.tera")).unwrap();
    p.file("web.tera", "{% include \"evil.tera\" %}\n");
    std::fs::remove_file(p.path("out/web.conf")).unwrap();
    for args in [&["check"][..], &["render", "--timeout", "5s"][..]] {
        let o = p.rewire(args);
        let err = project::stderr(&o);
        assert_ne!(project::code(&o), 0, "{args:?}: {err}");
        assert!(
            err.contains("evil.tera") && err.contains("leads out of the template directory"),
            "{args:?}: {err}"
        );
    }
    assert!(!p.path("out/web.conf").exists());
}

#[test]
fn huge_files_and_device_links_are_refused_and_memory_stays_flat() {
    let p = Project::new();
    p.file("web.tera", &web_and_key("app/name"))
        .config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    let pid = r.child.id();
    let before = memory_kib(pid, "VmRSS");

    // A 50 MB instance file (moved in whole), a link to /dev/zero, a character device inside.
    let big = p.path("big.tmp");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(br#"{"address": "10.0.0.9", "port": 80, "meta": {"x": ""#)
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..50 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\"}}").unwrap();
    drop(f);
    std::fs::rename(&big, p.path("catalog/services/web/huge.json")).unwrap();
    std::fs::create_dir_all(p.path("catalog/kv/app")).unwrap();
    symlink("/dev/zero", p.path("catalog/kv/app/name")).unwrap();
    if proc::is_root() {
        nix::sys::stat::mknod(
            &p.path("catalog/kv/app/zero"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            nix::sys::stat::makedev(1, 5),
        )
        .unwrap();
    }
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("a later change rendered", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    wait_for("the huge file refused", TIMEOUT, || {
        r.log().contains("over the limit of 1MiB")
    });
    let after = memory_kib(pid, "VmRSS");
    let peak = memory_kib(pid, "VmHWM");
    eprintln!(
        "dir catalog, 50 MB instance file + /dev/zero link: VmRSS {before} KiB -> {after} KiB, VmHWM {peak} KiB"
    );
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(
        peak < before + 16 * 1024,
        "peak RSS {peak} KiB (from {before})"
    );
    let out = p.read("out/web.conf");
    assert!(
        !out.contains("10.0.0.9") && out.contains("value = none"),
        "{out}"
    );
    assert_eq!(r.stop(), Some(0), "{}", r.log());

    // The one-shot render refuses them too, promptly, naming the file and the setting. The
    // key behind the /dev/zero link exists but cannot be read: not "absent", so its default
    // is not written in its place (as on Consul), and the error names the file.
    let before = p.read("out/web.conf");
    let started = Instant::now();
    let o = p.rewire(&["render", "--timeout", "5s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        err.contains("huge.json") && err.contains("max_file"),
        "{err}"
    );
    assert!(err.contains("kv/app/name"), "{err}");
    assert_eq!(p.read("out/web.conf"), before);
}

/// A key file that exists but is refused (over `max_file`) is not an absent key: neither the
/// daemon nor the one-shot writes `key()`'s default in its place; a good value afterwards is.
#[test]
fn a_refused_key_file_is_not_rendered_as_its_default() {
    let p = Project::new();
    p.file("web.tera", &web_and_key("app/big"))
        .config(&config(&p, "[catalog]\nmax_file = \"2KiB\"\n"));
    p.instance("web", "a", "10.0.0.1", 80);
    std::fs::create_dir_all(p.path("catalog/kv/app")).unwrap();
    std::fs::write(p.path("catalog/kv/app/big"), "x".repeat(3000)).unwrap();

    let o = p.rewire(&["render", "--timeout", "3s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 1, "{err}");
    assert!(
        err.contains("kv/app/big") && err.contains("max_file"),
        "{err}"
    );
    assert!(!p.path("out/web.conf").exists(), "{err}");

    let mut r = p.run();
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("the refusal logged", TIMEOUT, || {
        r.log().contains("kv/app/big")
    });
    // The query it holds back is named too (a keys() prefix would look up to date otherwise).
    wait_for("the held query named", TIMEOUT, || {
        r.log().contains("not updated while kv/app/big")
    });
    wait_for("the template reported waiting", TIMEOUT, || {
        r.log().contains("not written yet")
    });
    assert!(!p.path("out/web.conf").exists(), "{}", r.log());

    std::fs::write(p.path("catalog/kv/app/big"), "small").unwrap();
    wait_for("the good value rendered", TIMEOUT, || {
        p.read("out/web.conf").contains("value = small")
    });
    assert!(p.read("out/web.conf").contains("10.0.0.2:80"));
    assert!(r.log().contains("updated again"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// A fake Consul agent: answers the ACL preflight as an agent without ACLs, and every other
/// request with a 200 whose body (no Content-Length, ended by closing) runs to `body_mib` MiB.
fn fake_consul(body_mib: usize, stop: Arc<AtomicBool>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            std::thread::spawn(move || {
                let _ = conn.set_nonblocking(false);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                if head.contains("/v1/acl/token/self") {
                    let body = "ACL support disabled";
                    let _ = write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\nX-Consul-Knownleader: true\r\nConnection: close\r\n\r\n[");
                let chunk = vec![b' '; 64 << 10];
                for _ in 0..body_mib * 16 {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn consul_values_over_max_file_and_bodies_over_max_response_are_refused_by_name() {
    // A huge body from a fake agent: refused at the cap, memory bounded by it.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fake_consul(300, stop.clone());
    let p = Project::new();
    p.file("web.tera", "{{ key(path=\"app/name\") }}\n").config(&format!(
        "{}[catalog]\nbackend = \"consul\"\naddress = \"http://{addr}\"\nmax_response = \"8MiB\"\nretry = {{ base = \"100ms\", max = \"1s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        p.control()
    ));
    let mut r = p.run();
    wait_for("the body refused", TIMEOUT, || {
        r.log()
            .contains("over the limit of 8MiB ([catalog] max_response)")
    });
    // A few more refused rounds, then the peak.
    wait_for("refused again", TIMEOUT, || {
        r.log().matches("max_response").count() >= 1
    });
    let peak = memory_kib(r.child.id(), "VmHWM");
    eprintln!("consul: a 300 MB body with max_response = 8MiB: peak VmHWM {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    r.signal(SIGTERM);
    assert_eq!(r.stop(), Some(0), "{}", r.log());
    stop.store(true, Ordering::Relaxed);

    // A KV value over max_file in a real agent (Consul itself caps values at 512 KiB).
    let Some(consul) = Consul::try_start() else {
        return;
    };
    consul.put_ok("/v1/kv/app/big", vec![b'x'; 200 << 10]);
    let p = Project::new();
    p.file("web.tera", "{{ key(path=\"app/big\") | length }}\n").config(&format!(
        "[catalog]\nbackend = \"consul\"\naddress = \"{}\"\nmax_file = \"100KiB\"\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        consul.http_url()
    ));
    let o = p.rewire(&["render", "--timeout", "3s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 1, "{err}");
    assert!(
        err.contains("\"app/big\"") && err.contains("max_file"),
        "{err}"
    );
    assert!(!p.path("out/web.conf").exists());
    // Raised, it renders.
    p.config(&p.read("rewire.toml").replace("100KiB", "1MiB"));
    let o = p.rewire(&["render", "--timeout", "10s"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    assert_eq!(p.read("out/web.conf"), format!("{}\n", 200 << 10));
}

// --- the control socket ----------------------------------------------------------------------

/// Root is needed to act as another user; otherwise the test says so and does nothing.
fn as_root() -> bool {
    proc::is_root()
        || support::skip::<()>("root", "is needed to act as user nobody", true).is_some()
}

/// A directory every user may traverse but only root may write (the socket's directory in
/// these tests: `nobody` must reach the socket for the socket's own mode to be what stops it).
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `rewire ARGS` as user nobody (no config: `--socket` in ARGS).
fn as_nobody(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .env_remove("REWIRE_CONFIG")
        .env_remove("REWIRE_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("run rewire as nobody")
}

#[test]
fn the_control_socket_is_0600_from_the_start_even_under_umask_000() {
    if !as_root() {
        return;
    }
    let dir = open_dir();
    let sock = dir.path().join("rewire.sock");
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&format!(
        "[control]\nsocket = \"{}\"\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        sock.display()
    ));
    p.instance("web", "a", "10.0.0.1", 80);

    // Watch every mode the socket path shows, as fast as possible, across restarts.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, sock) = (done.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut modes = std::collections::BTreeSet::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&sock) {
                    modes.insert(m.permissions().mode() & 0o7777);
                }
            }
            modes
        })
    };
    // And user nobody trying to switch maintenance on all along.
    let attacker = {
        let (done, sock) = (done.clone(), sock.clone());
        std::thread::spawn(move || {
            let mut tries = 0;
            while !done.load(Ordering::Relaxed) {
                let o = as_nobody(&["maintenance", "on", "--socket", &sock.display().to_string()]);
                assert_ne!(
                    o.status.code(),
                    Some(0),
                    "nobody switched maintenance on: {}",
                    String::from_utf8_lossy(&o.stdout)
                );
                tries += 1;
            }
            tries
        })
    };
    for round in 0..5 {
        let mut cmd = p.command(&["run"]);
        let log = std::fs::File::create(p.path(&format!("run-{round}.log"))).unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        // SAFETY: umask is async-signal-safe and touches nothing shared.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        wait_for("the daemon answers", TIMEOUT, || {
            project::code(&p.rewire(&["status", "--socket", &sock.display().to_string()])) == 0
        });
        proc::signal(child.id() as i32, SIGTERM).unwrap();
        assert!(child.wait().unwrap().success());
    }
    done.store(true, Ordering::Relaxed);
    let modes = watcher.join().unwrap();
    let tries = attacker.join().unwrap();
    let seen: Vec<String> = modes.iter().map(|m| format!("{m:04o}")).collect();
    eprintln!(
        "socket modes seen over 5 starts under umask 000: {seen:?}; nobody tried {tries} times"
    );
    assert!(modes.iter().all(|m| *m == 0o600), "modes seen: {seen:?}");
    assert!(tries > 0);
    for round in 0..5 {
        let log = p.read(&format!("run-{round}.log"));
        assert!(!log.contains("maintenance on"), "{log}");
    }
}

/// Kills the child when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_group_may_read_the_status_but_only_root_or_the_owner_may_switch_maintenance() {
    if !as_root() {
        return;
    }
    let dir = open_dir();
    let sock = dir.path().join("rewire.sock");
    let socket = sock.display().to_string();
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&format!(
        "[control]\nsocket = \"{socket}\"\ngroup = \"nogroup\"\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n\n[main]\nexec = [\"sh\", \"-c\", \"echo \\\"$REWIRE_SOCKET\\\" > child-env.txt; exec sleep 600\"]\n"
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("the daemon answers", TIMEOUT, || {
        project::code(&p.rewire(&["status", "--socket", &socket])) == 0
    });
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, NOBODY));
    // Children find the daemon without the config.
    wait_for("main started", TIMEOUT, || {
        p.read("child-env.txt") == format!("{socket}\n")
    });

    let o = as_nobody(&["status", "--socket", &socket]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = as_nobody(&["maintenance", "on", "--socket", &socket]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("maintenance may be switched only by root"),
        "{err}"
    );
    assert_eq!(status_json(&p).unwrap()["maintenance"], false);
    // A group member flooding the socket: connections held open cost rewire at most
    // MAX_READERS descriptors, its owner still gets answers, and the refusals are one warning.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", r.child.id())).map_or(0, |d| d.count());
    let fds_before = fds();
    const FLOOD: &str = r#"
import socket, sys, time
for _ in range(50):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    s.sendall(b'{"command":"maintenance","on":true}\n'); s.recv(4096); s.close()
held = []
for _ in range(300):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); held.append(s)
print('held', flush=True)
time.sleep(30)
"#;
    let flood = Command::new("python3")
        .args(["-c", FLOOD, &socket])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut flood = KillOnDrop(flood);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(flood.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    assert!(
        fds() <= fds_before + 32 + 4,
        "{} descriptors, {fds_before} before",
        fds()
    );
    let o = p.rewire(&["status", "--socket", &socket]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    drop(flood);
    let log = r.log();
    assert!(
        log.matches("control socket:").count() <= 2,
        "one warning per kind and minute:\n{log}"
    );
    // Its owner may.
    let o = p.rewire(&["maintenance", "on", "--socket", &socket]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    assert_eq!(status_json(&p).unwrap()["maintenance"], true);
    // Main (sleep) dies of the stop signal: rewire exits with its status.
    assert_eq!(r.stop(), Some(143), "{}", r.log());
}

#[test]
fn a_socket_squatted_by_another_user_is_refused_by_daemon_and_client() {
    if !as_root() {
        return;
    }
    // A shared sticky directory (like /tmp), and user nobody's own rewire daemon holding the
    // path first.
    let base = open_dir();
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.join("rewire.sock");
    let socket = sock.display().to_string();
    let squat = base.path().join("squatter");
    for d in ["catalog/services", "catalog/kv", "out"] {
        std::fs::create_dir_all(squat.join(d)).unwrap();
    }
    std::fs::write(squat.join("t.tera"), "fake\n").unwrap();
    std::fs::write(
        squat.join("rewire.toml"),
        format!("[control]\nsocket = \"{socket}\"\n\n[[template]]\nsource = \"t.tera\"\ndestination = \"out/t\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(squat.join("out"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut squatter = proc::Daemon::start(
        "squatter",
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rewire"));
            c.args(["run", "-c"])
                .arg(squat.join("rewire.toml"))
                .current_dir(&squat)
                .uid(NOBODY)
                .gid(NOBODY)
                .env_remove("REWIRE_CONFIG");
            c
        },
        &base.path().join("squatter.log"),
        TIMEOUT,
        || std::fs::symlink_metadata(&sock).is_ok_and(|m| m.uid() == NOBODY),
    )
    .unwrap_or_else(|report| panic!("{report}"));

    // The client refuses to talk to it.
    let p = Project::new();
    for args in [
        &["status", "--socket", &socket][..],
        &["maintenance", "on", "--socket", &socket][..],
    ] {
        let o = p.rewire(args);
        let err = project::stderr(&o);
        assert_eq!(project::code(&o), 1, "{err}");
        assert!(err.contains(&format!("belongs to uid {NOBODY}")), "{err}");
    }
    // The daemon refuses to take the path over (and runs on without a control socket).
    p.file("web.tera", UPSTREAM).config(&format!(
        "[control]\nsocket = \"{socket}\"\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n"
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("the refusal", TIMEOUT, || {
        r.log().contains("control socket unavailable")
    });
    assert!(
        r.log().contains(&format!("belongs to uid {NOBODY}")),
        "{}",
        r.log()
    );
    assert_eq!(std::fs::symlink_metadata(&sock).unwrap().uid(), NOBODY);
    assert!(squatter.is_running());
    assert_eq!(r.stop(), Some(0), "{}", r.log());

    // The default path of a user without a runtime directory: a private directory that must be
    // theirs. Another user's directory there is refused.
    let tmp = open_dir();
    let private = tmp.path().join(format!("rewire-{NOBODY}"));
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(tmp.path().join("rewire.toml"), "").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rewire"))
        .args(["status", "-c"])
        .arg(tmp.path().join("rewire.toml"))
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .env("TMPDIR", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("REWIRE_SOCKET")
        .env_remove("REWIRE_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&private.display().to_string())
            && err.contains("must be a directory of rewire's user"),
        "{err}"
    );
    squatter.kill();
}

#[test]
fn etcd_values_over_max_file_and_watch_messages_over_max_response_are_refused() {
    let Some(etcd) = support::Etcd::try_start() else {
        return;
    };
    let p = Project::new();
    p.file("web.tera", "{{ key(path=\"app/name\") | length }}\n").config(&format!(
        "{}[catalog]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nmax_file = \"16KiB\"\nmax_response = \"64KiB\"\nretry = {{ base = \"100ms\", max = \"1s\" }}\n\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        p.control(),
        etcd.endpoints()[0]
    ));
    etcd.put("/rewire/kv/app/name", "shop");
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || p.read("out/web.conf") == "4\n");
    // Over max_file: the key keeps what it held.
    etcd.put("/rewire/kv/app/name", &"x".repeat(20 << 10));
    wait_for("the value refused", TIMEOUT, || {
        r.log().contains("over [catalog] max_file")
    });
    etcd.put("/rewire/kv/app/name", "market");
    wait_for("a later value", TIMEOUT, || p.read("out/web.conf") == "6\n");
    // A watch message over max_response: skipped with a warning; the last good data stays,
    // and the watch goes on past it (it used to resume at that message, forever).
    etcd.put("/rewire/kv/other", &"y".repeat(100 << 10));
    wait_for("the message skipped", TIMEOUT, || {
        r.log()
            .contains("a watch message over [catalog] max_response skipped")
    });
    assert_eq!(p.read("out/web.conf"), "6\n");
    etcd.put("/rewire/kv/app/name", "marketplace");
    wait_for("a change after it", TIMEOUT, || {
        p.read("out/web.conf") == "11\n"
    });
    assert!(!r.log().contains("etcd unreachable"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
    // A one-shot that finds only a refused value does not render the key as missing: it
    // waits for a usable one, says why, and leaves the file in place.
    etcd.put("/rewire/kv/app/name", &"x".repeat(20 << 10));
    let o = p.rewire(&["render", "--timeout", "2s"]);
    let err = project::stderr(&o);
    assert_eq!(project::code(&o), 1, "{err}");
    assert!(err.contains("over [catalog] max_file"), "{err}");
    assert_eq!(p.read("out/web.conf"), "11\n");
}

/// Found by a hostile-writer hunt: the whole prefix was read in one answer, so ~55 MB of junk
/// values (each under max_file) anywhere under it put that answer over max_response and no new
/// or restarted rewire (nor a running one after a compaction) ever got data again. It is read in
/// pages now, halved while one is too big. Here 40 values of 12 KiB against a 64 KiB bound.
#[test]
fn etcd_junk_under_the_prefix_past_max_response_in_all_still_lets_rewire_start() {
    let Some(etcd) = support::Etcd::try_start() else {
        return;
    };
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&format!(
        "{}[catalog]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nmax_file = \"16KiB\"\nmax_response = \"64KiB\"\nretry = {{ base = \"100ms\", max = \"1s\" }}\n\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        p.control(),
        etcd.endpoints()[0]
    ));
    etcd.put(
        "/rewire/services/web/a",
        r#"{"address":"10.0.0.1","port":80}"#,
    );
    for i in 0..40 {
        etcd.put(&format!("/rewire/kv/junk/{i:02}"), &"j".repeat(12 << 10));
    }
    etcd.put(
        "/rewire/services/web/b",
        r#"{"address":"10.0.0.2","port":80}"#,
    );
    // The one-shot, then the daemon: both read the whole prefix first.
    let o = p.rewire(&["render", "--timeout", "20s"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let text = p.read("out/web.conf");
    assert!(
        text.contains("10.0.0.1:80") && text.contains("10.0.0.2:80"),
        "{text}"
    );
    std::fs::remove_file(p.path("out/web.conf")).unwrap();
    let mut r = p.run();
    wait_for("the daemon's first render", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    etcd.put(
        "/rewire/services/web/c",
        r#"{"address":"10.0.0.3","port":80}"#,
    );
    wait_for("a change after it", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    assert!(!r.log().contains("max_response"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// Found by attacking the dir catalog: the reaper re-read an expired instance confined, then
/// removed it by path, so a writer flipping `services/x` between a directory inside the catalog
/// and a link to one outside got `<id>.json` deleted there (rewire often runs as root). Now the
/// file is removed inside the directory that was opened and read (`unlinkat`). The race runs
/// for a few seconds; the reaper must have removed the file inside at least once meanwhile, so
/// the test cannot pass without the race having been run.
#[test]
fn the_reaper_never_deletes_outside_the_catalog_through_a_swapped_link() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(&config(&p, ""));
    p.instance("web", "a", "10.0.0.1", 80);
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("precious.json");
    std::fs::write(&victim, "{\"important\": true}\n").unwrap();
    let stash = p.path("catalog/stash");
    std::fs::create_dir_all(&stash).unwrap();
    let expired = r#"{"address": "127.0.0.1", "port": 80, "expires_at": "2020-01-01T00:00:00Z"}"#;
    let services = p.path("catalog/services");
    let mut r = p.run();
    wait_for("the first render", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    let (mut reaped_inside, started) = (0, Instant::now());
    while started.elapsed() < Duration::from_secs(4) && victim.exists() {
        if !stash.join("precious.json").exists() {
            reaped_inside += 1;
            std::fs::write(stash.join(".w"), expired).unwrap();
            std::fs::rename(stash.join(".w"), stash.join("precious.json")).unwrap();
        }
        for target in [Path::new("../stash"), outside.path()] {
            let _ = std::fs::remove_file(services.join(".l"));
            symlink(target, services.join(".l")).unwrap();
            std::fs::rename(services.join(".l"), services.join("x")).unwrap();
        }
    }
    assert!(victim.exists(), "rewire deleted a file outside the catalog");
    assert!(
        reaped_inside > 0,
        "the reaper never ran during the race: {}",
        r.log()
    );
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// What kubelet does to a projected ConfigMap or Secret volume: each version in a hidden
/// `..<timestamp>` directory, `..data` linking to the current one, every entry a link through
/// `..data`, and an update swapped in by renaming a new `..data` link over the old one.
fn kubelet_publish(volume: &Path, version: &str, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let path = volume.join(version).join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let tmp = volume.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    for (rel, _) in files {
        let top = rel.split('/').next().unwrap();
        let link = volume.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{top}"), &link).unwrap();
        }
    }
}

/// Found by a container user's hunt: a volume with `items[].path` subdirectories (mounted at
/// `services/`, `web -> ..data/web`; or at `kv/`) was read once and never again: the `..data`
/// swap marked every answer as touched but re-read nothing, so the old backends stayed in the
/// config for good, and kubelet's version directory was warned about as a service.
#[test]
fn a_kubernetes_volume_with_subdirectories_is_read_again_when_kubelet_swaps_it() {
    let p = Project::new();
    p.file(
        "web.tera",
        &format!("{UPSTREAM}listen = {{{{ key(path=\"nginx/listen\", default=\"80\") }}}}\n"),
    )
    .config(&config(&p, ""));
    let services = p.path("catalog/services");
    let kv = p.path("catalog/kv");
    kubelet_publish(
        &services,
        "..2026_12_04_01",
        &[("web/web-1.json", r#"{"address": "10.0.0.1", "port": 8080}"#)],
    );
    kubelet_publish(&kv, "..2026_12_04_01", &[("nginx/listen", "8081")]);
    let mut r = p.run();
    wait_for("the first version rendered", TIMEOUT, || {
        let out = p.read("out/web.conf");
        out.contains("10.0.0.1:8080") && out.contains("listen = 8081")
    });

    kubelet_publish(
        &services,
        "..2026_12_04_02",
        &[("web/web-2.json", r#"{"address": "10.0.0.2", "port": 8080}"#)],
    );
    std::fs::remove_dir_all(services.join("..2026_12_04_01")).unwrap();
    kubelet_publish(&kv, "..2026_12_04_02", &[("nginx/listen", "9999")]);
    std::fs::remove_dir_all(kv.join("..2026_12_04_01")).unwrap();
    wait_for("the second version rendered", TIMEOUT, || {
        let out = p.read("out/web.conf");
        out.contains("10.0.0.2:8080") && !out.contains("10.0.0.1") && out.contains("listen = 9999")
    });
    assert!(!r.log().contains("not an instance file"), "{}", r.log());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}
