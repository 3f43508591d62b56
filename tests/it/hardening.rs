//! Issue 12, the render and process side: each attack reproduced through the real binary.
//!
//! Runaway templates (a loop that prints nothing, one that prints without end), a long check
//! under SIGTERM, nginx under `[main]` whose reload fails before it runs, writes that fail
//! (a full tmpfs, a check program not installed yet), kill -9 in the middle of a check, and
//! the bound on shutdown under each of them. State is polled with generous deadlines; the
//! shutdown bounds are the documented ones (drain + hooks + stop_timeout + 5 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::project::{self, Project, UPSTREAM};
use crate::support::process::{self as proc_, SIGHUP, SIGKILL, SIGTERM};
use crate::support::{self, TIMEOUT, free_port, wait_for};

fn rewire_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rewire")
}

/// A TOML string literal (temp paths hold nothing Debug escapes differently).
fn q(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

/// The control socket and no quiescence, so every change renders at once.
fn preamble(p: &Project) -> String {
    format!(
        "{}\n[defaults]\nwait = {{ min = \"0s\", max = \"0s\" }}\n",
        p.control()
    )
}

/// Three nested loops of 100 000 (Tera's largest range): 10^15 iterations, printing nothing.
const SILENT_LOOP: &str = "{% for a in range(end=100000) %}{% for b in range(end=100000) %}{% for c in range(end=100000) %}{% endfor %}{% endfor %}{% endfor %}never\n";

/// Prints without end (10^10 lines).
const FLOOD: &str = "{% for a in range(end=100000) %}{% for b in range(end=100000) %}line {{ a }} {{ b }}\n{% endfor %}{% endfor %}";

/// `rewire status --json` of the running daemon, if it answers.
fn status(p: &Project) -> Option<serde_json::Value> {
    let o = p.rewire(&["status", "--json"]);
    if project::code(&o) != 0 {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// A template's state and detail in `rewire status`.
fn template_state(p: &Project, name: &str) -> Option<(String, String)> {
    let v = status(p)?;
    let t = &v["templates"][name];
    Some((
        t["state"].as_str()?.to_string(),
        t["detail"].as_str()?.to_string(),
    ))
}

/// Threads of `pid` named `name` (rewire names its render threads "render").
fn threads_named(pid: u32, name: &str) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// True once `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    !proc_::running(pid as u32)
}

fn read_pid(p: &Project, file: &str) -> Option<i32> {
    p.read(file).trim().parse().ok()
}

/// Waits for `child` to exit, at most `bound`; returns its exit code and how long it took.
#[track_caller]
fn exit_within(child: &mut Child, since: Instant, bound: Duration, log: &Path) -> (i32, Duration) {
    let mut code = None;
    let exited = support::poll_until(bound + Duration::from_secs(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            code = Some(status.code().unwrap_or(-1));
        }
        code.is_some()
    });
    let took = since.elapsed();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        exited && took <= bound,
        "rewire exited: {exited}, after {took:?} (bound {bound:?})\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    (code.unwrap_or(-1), took)
}

/// Temp files (`.NAME.rewire-XXXXXX`) in `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(".rewire-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Kills a leftover process by pid when dropped (a grandchild the test let escape on purpose).
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = proc_::signal(*pid, SIGKILL);
        }
    }
}

#[test]
fn runaway_templates_fail_alone_show_in_status_and_hold_neither_sighup_nor_sigterm() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM)
        .file("spin.tera", SILENT_LOOP)
        .file("flood.tera", FLOOD)
        .file("stuck.tera", SILENT_LOOP);
    p.config(&format!(
        "{}
[[template]]
source = \"web.tera\"
destination = \"out/web.conf\"

# Prints nothing: stopped at its render_timeout.
[[template]]
source = \"spin.tera\"
destination = \"out/spin.conf\"
render_timeout = \"1s\"

# Prints without end: stopped at max_output.
[[template]]
source = \"flood.tera\"
destination = \"out/flood.conf\"
max_output = \"64KiB\"

# Still running when the SIGHUP and the SIGTERM come.
[[template]]
source = \"stuck.tera\"
destination = \"out/stuck.conf\"
render_timeout = \"120s\"
",
        preamble(&p)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    let pid = r.child.id();
    wait_for("web written", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });

    wait_for("spin and flood failed in status", TIMEOUT, || {
        let spin = template_state(&p, "spin");
        let flood = template_state(&p, "flood");
        spin.is_some_and(|(s, d)| s == "error" && d.contains("render_timeout"))
            && flood.is_some_and(|(s, d)| s == "error" && d.contains("max_output"))
    });
    assert!(!p.path("out/spin.conf").exists() && !p.path("out/flood.conf").exists());
    // spin's thread ended at its deadline, flood's at its limit: only stuck's runs on.
    wait_for("one render thread left", TIMEOUT, || {
        threads_named(pid, "render") == 1
    });

    // The other templates keep following the catalog.
    let changed = Instant::now();
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("web follows a new instance", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.2:80")
    });
    eprintln!(
        "hardening: web followed a change in {:?} beside the runaway renders",
        changed.elapsed()
    );

    // Fixing the stuck template and SIGHUP: applied at once, the stuck thread is not waited for.
    p.file("stuck.tera", "fixed\n");
    let hup = Instant::now();
    r.signal(SIGHUP);
    wait_for("stuck template fixed after SIGHUP", TIMEOUT, || {
        p.read("out/stuck.conf") == "fixed\n"
    });
    let after_hup = hup.elapsed();
    eprintln!("hardening: SIGHUP -> fixed template written in {after_hup:?}");
    assert!(
        after_hup < Duration::from_secs(5),
        "{after_hup:?}\n{}",
        r.log()
    );
    p.instance("web", "c", "10.0.0.3", 80);
    wait_for("web follows after SIGHUP", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.3:80")
    });
    assert!(
        threads_named(pid, "render") >= 1,
        "the old stuck render should still be running (it has 120 s)"
    );

    let term = Instant::now();
    r.signal(SIGTERM);
    let (code, took) = exit_within(&mut r.child, term, Duration::from_secs(5), &r.log.clone());
    eprintln!("hardening: SIGTERM with a render thread in flight -> exit in {took:?}");
    assert_eq!(code, 0, "{}", r.log());
}

#[test]
fn rewire_render_gives_up_on_a_runaway_template_at_its_render_timeout() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).file("spin.tera", SILENT_LOOP);
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n\n[[template]]\nsource = \"spin.tera\"\ndestination = \"out/spin.conf\"\nrender_timeout = \"1s\"\n",
        preamble(&p)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let started = Instant::now();
    let o = p.rewire(&["render", "--timeout", "20s"]);
    let took = started.elapsed();
    eprintln!("hardening: rewire render with a runaway template -> exit 1 in {took:?}");
    assert_eq!(project::code(&o), 1, "{}", project::stderr(&o));
    let err = project::stderr(&o);
    assert!(
        err.contains("spin: render stopped after 1s (render_timeout)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(p.read("out/web.conf").contains("10.0.0.1:80"));
}

/// The long check of the issue, with the pids of its shell and of its `sleep 300`.
fn long_check(p: &Project) -> String {
    let script = format!(
        "echo $$ > {}; sleep 300 & echo $! > {}; wait; test -s {{file}}",
        p.path("check.pid").display(),
        p.path("sleep.pid").display()
    );
    format!("check = [\"sh\", \"-c\", {}]\n", q(script))
}

#[test]
fn sigterm_during_a_long_check_kills_its_whole_group_and_does_not_wait_for_its_pipe() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM);
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n{}",
        preamble(&p),
        long_check(&p)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("check running", TIMEOUT, || {
        read_pid(&p, "sleep.pid").is_some()
    });
    let (sh, sleep) = (
        read_pid(&p, "check.pid").unwrap(),
        read_pid(&p, "sleep.pid").unwrap(),
    );
    let _leftovers = KillOnDrop(vec![sh, sleep]);
    let term = Instant::now();
    r.signal(SIGTERM);
    let (code, took) = exit_within(&mut r.child, term, Duration::from_secs(5), &r.log.clone());
    eprintln!("hardening: SIGTERM during a 300 s check -> exit in {took:?}");
    assert_eq!(code, 0, "{}", r.log());
    wait_for("the check's shell and its sleep are gone", TIMEOUT, || {
        gone(sh) && gone(sleep)
    });
    assert!(
        temp_files(&p.path("out")).is_empty(),
        "the staged file was left behind"
    );
}

/// One shutdown measurement: SIGTERM (and optionally a second one) against a daemon in the
/// middle of an attack; the time to exit must stay within `bound`.
struct Attack {
    name: &'static str,
    /// Lines for the config after the preamble.
    config: String,
    /// Ready for the signal when this holds.
    ready: fn(&Project, u32) -> bool,
    /// drain + pre_stop/post_stop timeouts + stop_timeout + 5 s.
    bound: Duration,
    second_signal_after: Option<&'static str>,
    expect_code: i32,
}

fn run_attack(a: &Attack) -> Duration {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).file("spin.tera", SILENT_LOOP);
    p.instance("web", "a", "10.0.0.1", 80);
    p.config(&format!(
        "{}\n{}",
        preamble(&p),
        a.config.replace("@DIR@", &p.root().display().to_string())
    ));
    let mut r = p.run();
    let pid = r.child.id();
    wait_for(a.name, TIMEOUT, || (a.ready)(&p, pid));
    let mut pids: Vec<i32> = ["check.pid", "sleep.pid", "main.pid"]
        .iter()
        .filter_map(|f| read_pid(&p, f))
        .collect();
    let mut since = Instant::now();
    r.signal(SIGTERM);
    if let Some(text) = a.second_signal_after {
        wait_for("stop sequence begun", TIMEOUT, || r.log().contains(text));
        since = Instant::now();
        r.signal(SIGTERM);
    }
    let (code, took) = exit_within(&mut r.child, since, a.bound, &r.log.clone());
    assert_eq!(code, a.expect_code, "{}: {}", a.name, r.log());
    pids.retain(|pid| *pid > 0);
    wait_for("every process of the attack gone", TIMEOUT, || {
        pids.iter().all(|pid| gone(*pid))
    });
    took
}

#[test]
fn shutdown_is_bounded_under_each_attack() {
    fn render_in_flight(_: &Project, pid: u32) -> bool {
        threads_named(pid, "render") >= 1
    }
    fn check_in_flight(p: &Project, _: u32) -> bool {
        read_pid(p, "sleep.pid").is_some()
    }
    fn main_running(p: &Project, pid: u32) -> bool {
        read_pid(p, "main.pid").is_some() && check_in_flight(p, pid) && render_in_flight(p, pid)
    }
    let runaway = "[[template]]\nsource = \"spin.tera\"\ndestination = \"out/spin.conf\"\nrender_timeout = \"300s\"\n";
    let checked = |p: &str| {
        format!(
            "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"sh\", \"-c\", {}]\n",
            q(format!(
                "echo $$ > {p}/check.pid; sleep 300 & echo $! > {p}/sleep.pid; wait; test -s {{file}}"
            ))
        )
    };
    // Main ignores SIGTERM (killed at stop_timeout); drain 1 s.
    let main = "[main]\nexec = [\"sh\", \"-c\", \"echo $$ > @DIR@/main.pid; trap '' TERM; sleep 300 & wait\"]\nwait_for_templates = \"1s\"\ndrain = \"1s\"\nstop_timeout = \"2s\"\n";
    let attacks = [
        Attack {
            name: "a runaway render",
            config: runaway.to_string(),
            ready: render_in_flight,
            bound: Duration::from_secs(5),
            second_signal_after: None,
            expect_code: 0,
        },
        Attack {
            name: "a 300 s check",
            config: checked("@DIR@"),
            ready: check_in_flight,
            bound: Duration::from_secs(5),
            second_signal_after: None,
            expect_code: 0,
        },
        Attack {
            name: "both, and main ignoring SIGTERM (drain 1 s, stop_timeout 2 s)",
            config: format!("{runaway}{}{main}", checked("@DIR@")),
            ready: main_running,
            bound: Duration::from_secs(1 + 2 + 5),
            second_signal_after: None,
            expect_code: 128 + 9,
        },
        Attack {
            name: "the same, and a second SIGTERM during the drain",
            config: format!(
                "{runaway}{}{}",
                checked("@DIR@"),
                main.replace("drain = \"1s\"", "drain = \"60s\"")
                    .replace("stop_timeout = \"2s\"", "stop_timeout = \"60s\"")
            ),
            ready: main_running,
            // A second signal exits at once: measured from the second signal.
            bound: Duration::from_secs(2),
            second_signal_after: Some("draining"),
            expect_code: 128 + 9,
        },
    ];
    let mut table = String::from("\nhardening: SIGTERM -> exit\n");
    for a in &attacks {
        let took = run_attack(a);
        table.push_str(&format!(
            "  {:<70} {took:>10.2?} (bound {:?})\n",
            a.name, a.bound
        ));
    }
    eprintln!("{table}");
}

/// The nginx config template: a complete nginx.conf (pid and logs in `dir`) answering
/// `backends=N` for the number of passing `web` instances.
fn nginx_template(dir: &Path, port: u16) -> String {
    let header = support::nginx::conf_header().replace("@DIR@", &dir.display().to_string());
    format!(
        "{header}    upstream web {{\n{{% for s in service(name=\"web\") %}}        server {{{{ s | addr_port }}}};\n{{% endfor %}}    }}\n    server {{\n        listen 127.0.0.1:{port};\n        location / {{ return 200 \"backends={{{{ service(name=\"web\") | length }}}}\\n\"; }}\n    }}\n}}\n"
    )
}

fn nginx_answer(port: u16) -> Option<String> {
    let r = support::http::get(&support::ports::addr(port), "/")
        .timeout(Duration::from_secs(2))
        .try_send()
        .ok()?;
    r.is_success().then(|| r.text())
}

/// rewire supervising nginx, with `reload = ["nginx", "-s", "reload", ...]`; `pre_start` when
/// given. Returns the project, nginx's port and rewire.
fn nginx_under_main(pre_start: Option<&str>) -> Option<(Project, u16, project::Running)> {
    let nginx =
        support::nginx::binary().or_else(|| support::skip("nginx", "is not installed", false))?;
    let nginx = nginx.display().to_string();
    let p = Project::new();
    let dir = p.path("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let conf = p.path("nginx/nginx.conf").display().to_string();
    p.file("nginx.tera", &nginx_template(&dir, port));
    let pre_start = pre_start
        .map(|ps| format!("pre_start = {ps}\n"))
        .unwrap_or_default();
    p.config(&format!(
        "{}
[[template]]
source = \"nginx.tera\"
destination = {}
check = [{}, \"-t\", \"-q\", \"-c\", \"{{file}}\"]
reload = [{}, \"-s\", \"reload\", \"-c\", {}]

[main]
{pre_start}exec = [{}, \"-c\", {}]
",
        preamble(&p),
        q(&conf),
        q(&nginx),
        q(&nginx),
        q(&conf),
        q(&nginx),
        q(&conf),
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let r = p.run();
    Some((p, port, r))
}

#[test]
fn nginx_under_main_gets_its_first_config_although_the_reload_fails_before_it_runs() {
    let Some((p, port, mut r)) = nginx_under_main(None) else {
        return;
    };
    wait_for("nginx serving the first config", TIMEOUT, || {
        nginx_answer(port).as_deref() == Some("backends=1\n")
    });
    assert!(
        r.log()
            .contains("kept: there was no previous file to restore"),
        "{}",
        r.log()
    );
    // The reload owed to the kept file goes through once nginx runs; then changes reload it.
    wait_for("template ok in status", TIMEOUT, || {
        template_state(&p, "nginx").is_some_and(|(s, _)| s == "ok")
    });
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("nginx reloaded with the new upstream set", TIMEOUT, || {
        nginx_answer(port).as_deref() == Some("backends=2\n")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn pre_start_rewire_render_does_not_race_with_the_runner() {
    let pre_start = format!("[{}, \"render\"]", q(rewire_bin()));
    let Some((p, port, mut r)) = nginx_under_main(Some(&pre_start)) else {
        return;
    };
    wait_for("nginx serving what pre_start wrote", TIMEOUT, || {
        nginx_answer(port).as_deref() == Some("backends=1\n")
    });
    wait_for("template ok in status", TIMEOUT, || {
        template_state(&p, "nginx").is_some_and(|(s, _)| s == "ok")
    });
    let log = r.log();
    assert!(!log.contains("restoring"), "{log}");
    assert!(log.contains("pre_start done"), "{log}");
    p.instance("web", "b", "10.0.0.2", 80);
    wait_for("nginx reloaded with the new upstream set", TIMEOUT, || {
        nginx_answer(port).as_deref() == Some("backends=2\n")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

/// A 64 KiB tmpfs mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let (ok, out) = proc_::run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
                .arg(dir),
        );
        if ok {
            Some(Tmpfs(dir.to_path_buf()))
        } else {
            // Mounting needs root (CAP_SYS_ADMIN); the missing-check-program test below covers
            // the same retry everywhere.
            support::skip(
                "a 64 KiB tmpfs",
                &format!("cannot be mounted here: {out}"),
                true,
            )
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = proc_::run(Command::new("umount").arg("-l").arg(&self.0));
    }
}

/// Fills the file system holding `dir` (writes until ENOSPC); returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = [b'x'; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_write_to_a_full_disk_is_retried_and_recovers_without_a_catalog_change() {
    let p = Project::new();
    let Some(_tmpfs) = Tmpfs::mount(&p.path("out")) else {
        return;
    };
    let filler = fill(&p.path("out"));
    p.file("web.tera", UPSTREAM);
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
        preamble(&p)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("the failed write in status", TIMEOUT, || {
        template_state(&p, "web").is_some_and(|(s, d)| s == "error" && d.contains("No space left"))
    });
    assert!(!p.path("out/web.conf").exists());
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_for("written once there is room", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    eprintln!(
        "hardening: full tmpfs freed -> written in {:?}",
        freed.elapsed()
    );
    wait_for("ok in status", TIMEOUT, || {
        template_state(&p, "web").is_some_and(|(s, _)| s == "ok")
    });
    assert!(temp_files(&p.path("out")).is_empty());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn a_check_program_missing_is_retried_once_it_is_installed() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM);
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"./bin/check\", \"{{file}}\"]\n",
        preamble(&p)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("the check that cannot start, in status", TIMEOUT, || {
        template_state(&p, "web").is_some_and(|(s, d)| {
            s == "error" && d.contains("cannot start [\"./bin/check\", \"{file}\"]")
        })
    });
    // Installed the way a package manager does (write aside, rename: no ETXTBSY).
    p.file("bin/.check.tmp", "#!/bin/sh\ntest -s \"$1\"\n");
    {
        use std::os::unix::fs::PermissionsExt;
        let tmp = p.path("bin/.check.tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, p.path("bin/check")).unwrap();
    }
    wait_for("written once the check exists", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn after_kill_9_the_check_dies_and_the_next_start_removes_the_temp_file_left() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM);
    let config = |check: &str| {
        format!(
            "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n{check}",
            preamble(&p)
        )
    };
    p.config(&config(&long_check(&p)));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("check running", TIMEOUT, || {
        read_pid(&p, "sleep.pid").is_some()
    });
    let (sh, sleep) = (
        read_pid(&p, "check.pid").unwrap(),
        read_pid(&p, "sleep.pid").unwrap(),
    );
    // Without a reaper, the check's own children are beyond reach: documented, killed here.
    let _sleep = KillOnDrop(vec![sleep]);
    let left = temp_files(&p.path("out"));
    assert_eq!(left.len(), 1, "{left:?}");
    let _ = proc_::signal(r.child.id() as i32, SIGKILL);
    let _ = r.child.wait();
    wait_for("the check died with rewire", TIMEOUT, || gone(sh));
    assert!(left[0].exists(), "kill -9 leaves the staged file");

    p.config(&config("check = [\"test\", \"-s\", \"{file}\"]\n"));
    let mut r = p.run();
    wait_for("written by the next start", TIMEOUT, || {
        p.read("out/web.conf").contains("10.0.0.1:80")
    });
    assert!(!left[0].exists(), "the leftover temp file is still there");
    assert!(
        r.log()
            .contains("removed a temp file an earlier run left behind"),
        "{}",
        r.log()
    );
    assert!(temp_files(&p.path("out")).is_empty());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn with_subreaper_even_the_checks_grandchildren_die_with_rewire() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM);
    let script = format!(
        "echo $REWIRE_PID > {}; echo $$ > {}; sleep 300 & echo $! > {}; wait; test -s {{file}}",
        p.path("worker.pid").display(),
        p.path("check.pid").display(),
        p.path("sleep.pid").display()
    );
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"sh\", \"-c\", {}]\n",
        preamble(&p),
        q(script)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let log = std::fs::File::create(p.path("rewire.log")).unwrap();
    let mut reaper = p
        .command(&["run", "--subreaper"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(vec![reaper.id() as i32]);
    wait_for("check running", TIMEOUT, || {
        read_pid(&p, "sleep.pid").is_some()
    });
    let (worker, sh, sleep) = (
        read_pid(&p, "worker.pid").unwrap(),
        read_pid(&p, "check.pid").unwrap(),
        read_pid(&p, "sleep.pid").unwrap(),
    );
    let _leftovers = KillOnDrop(vec![worker, sh, sleep]);
    assert_ne!(worker, reaper.id() as i32);
    proc_::signal(worker, SIGKILL).unwrap();
    let killed = Instant::now();
    let (code, _) = exit_within(
        &mut reaper,
        killed,
        Duration::from_secs(10),
        &p.path("rewire.log"),
    );
    assert_eq!(code, 128 + 9, "{}", p.read("rewire.log"));
    wait_for("the check and its sleep are gone", TIMEOUT, || {
        gone(sh) && gone(sleep)
    });
}

#[test]
fn rewire_render_beside_the_daemon_leaves_the_daemons_temp_file_alone() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM);
    // Each check announces itself and takes 2 s: the daemon's staged file exists meanwhile.
    let script = format!(
        "echo x >> {}; sleep 2; test -s {{file}}",
        p.path("checks").display()
    );
    p.config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"sh\", \"-c\", {}]\n",
        preamble(&p),
        q(script)
    ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("the daemon's check running", TIMEOUT, || {
        !p.read("checks").is_empty()
    });
    assert_eq!(temp_files(&p.path("out")).len(), 1);
    let o = p.rewire(&["render", "--timeout", "20s"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    wait_for("the daemon's own write went through", TIMEOUT, || {
        template_state(&p, "web").is_some_and(|(s, _)| s == "ok")
    });
    let log = r.log();
    assert!(!log.contains("rejected"), "{log}");
    assert!(temp_files(&p.path("out")).is_empty());
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}
