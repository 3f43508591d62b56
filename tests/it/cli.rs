//! `rewire render`, `diff` and `check` through the real binary, on temp dirs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::project::{Project, UPSTREAM, code, stderr, stdout};

fn basic() -> Project {
    let p = Project::new();
    p.file("web.tera", UPSTREAM)
        .config("[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n")
        .instance("web", "b", "10.0.0.2", 80)
        .instance("web", "a", "10.0.0.1", 80);
    p
}

#[test]
fn render_writes_the_file_in_stable_order() {
    let p = basic();
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        p.read("out/web.conf"),
        "upstream web {\n  server 10.0.0.1:80;\n  server 10.0.0.2:80;\n}\n"
    );
}

#[test]
fn instances_sort_by_numeric_address_then_port_then_id_hostnames_last() {
    let p = basic();
    p.instance("web", "c", "10.0.0.12", 80)
        .instance("web", "d", "10.0.0.7", 80)
        .instance("web", "e", "10.0.0.7", 79)
        .instance("web", "f", "2001:db8::1", 80)
        .instance("web", "g", "app.internal", 80);
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        p.read("out/web.conf"),
        "upstream web {\n  server 10.0.0.1:80;\n  server 10.0.0.2:80;\n  server 10.0.0.7:79;\n  server 10.0.0.7:80;\n  server 10.0.0.12:80;\n  server [2001:db8::1]:80;\n  server app.internal:80;\n}\n"
    );
}

#[test]
fn unchanged_output_is_not_rewritten() {
    let p = basic();
    assert_eq!(code(&p.rewire(&["render"])), 0);
    let before = std::fs::metadata(p.path("out/web.conf")).unwrap();
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0);
    let after = std::fs::metadata(p.path("out/web.conf")).unwrap();
    assert_eq!(before.ino(), after.ino(), "the file was replaced");
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert_eq!(before.mtime(), after.mtime());
}

#[test]
fn existing_mode_is_kept_and_perms_overrides_it() {
    let p = basic();
    assert_eq!(code(&p.rewire(&["render"])), 0);
    let dest = p.path("out/web.conf");
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.instance("web", "c", "10.0.0.3", 80);
    assert_eq!(code(&p.rewire(&["render"])), 0);
    assert!(p.read("out/web.conf").contains("10.0.0.3"));
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );
    p.config(
        "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\nperms = \"0640\"\n",
    );
    assert_eq!(code(&p.rewire(&["render"])), 0);
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn malformed_catalog_file_is_skipped_with_a_warning_naming_it() {
    let p = basic();
    p.instance_json("web", "broken", "{\"address\": \"10.0.0.9\", ");
    p.instance_json(
        "web",
        "evil",
        "{\"address\": \"1.2.3.4; include /etc/passwd\", \"port\": 80}",
    );
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = p.read("out/web.conf");
    assert!(out.contains("10.0.0.1:80") && out.contains("10.0.0.2:80"));
    assert!(!out.contains("10.0.0.9") && !out.contains("passwd"));
    let err = stderr(&o);
    assert!(err.contains("broken.json"), "{err}");
    assert!(err.contains("evil.json"), "{err}");
}

/// A misspelt `--log-level` is a usage error naming it (exit 2, as every bad flag value), not
/// taken for a target name (which would show only that target's events: no log at all). A bad
/// `REWIRE_LOG`, set by a deployment for every command (`rewire status` health checks
/// included), is named and replaced by info; an empty one is unset; the flag wins over it.
/// `target=level` directives still filter.
#[test]
fn log_level_typo_is_named_and_directives_filter_by_target() {
    let p = basic();
    p.instance_json("web", "broken", "{\"address\": \"10.0.0.9\", ");
    let o = p.rewire(&["--log-level", "warning", "render"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("'warning'") && err.contains("--log-level"),
        "{err}"
    );
    assert!(!p.path("out").exists(), "rendered despite the usage error");

    let env =
        |value: &str, args: &[&str]| p.command(args).env("REWIRE_LOG", value).output().unwrap();
    let o = env("warning", &["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("invalid REWIRE_LOG \"warning\""), "{err}");
    assert!(
        err.contains("broken.json"),
        "the fallback level hid warnings: {err}"
    );
    // With JSON logs, the warning is a JSON record like every other line.
    let o = env("warning", &["--log-format", "json", "render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with('{') && first.contains("invalid REWIRE_LOG"),
        "{err}"
    );
    let o = env("", &["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("invalid"), "{}", stderr(&o));
    let o = env("warning", &["--log-level", "warn", "render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("invalid"), "{}", stderr(&o));

    let o = p.rewire(&["--log-level", "error,rewire=warn", "render"]);
    assert!(stderr(&o).contains("broken.json"), "{}", stderr(&o));
    let o = p.rewire(&["--log-level", "warn,rewire=error", "render"]);
    assert!(!stderr(&o).contains("broken.json"), "{}", stderr(&o));
}

#[test]
fn failing_check_keeps_the_old_file_and_reports_the_output() {
    let p = basic();
    assert_eq!(code(&p.rewire(&["render"])), 0);
    let old = p.read("out/web.conf");
    p.config(
        "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"sh\", \"-c\", \"grep -q 10.0.0.3 {file} && echo 'bad backend 10.0.0.3' >&2 && exit 1 || exit 0\"]\n",
    );
    p.instance("web", "c", "10.0.0.3", 80);
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 1);
    assert_eq!(p.read("out/web.conf"), old);
    assert!(
        stderr(&o).contains("bad backend 10.0.0.3"),
        "{}",
        stderr(&o)
    );
    // No temp file left behind.
    let names: Vec<String> = std::fs::read_dir(p.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["web.conf"]);
}

#[test]
fn diff_exit_codes_follow_diff1() {
    let p = basic();
    let o = p.rewire(&["diff"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("+  server 10.0.0.1:80;"),
        "{}",
        stdout(&o)
    );
    assert!(!p.path("out/web.conf").exists(), "diff wrote the file");
    assert_eq!(code(&p.rewire(&["render"])), 0);
    let o = p.rewire(&["diff"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(stdout(&o), "");
    p.remove_instance("web", "a");
    let o = p.rewire(&["diff"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("-  server 10.0.0.1:80;"));
    p.file("web.tera", "{{ nope(");
    assert_eq!(code(&p.rewire(&["diff"])), 2);
}

#[test]
fn check_lists_every_problem_with_its_location() {
    let p = Project::new();
    p.file("t.tera", "{% if %}").config(
        "[catalog]\nbackend = \"dir\"\nblock_wiat = \"10s\"\n\n[[template]]\nsource = \"t.tera\"\ndestination = \"a\"\nwait = { min = \"10 sec\" }\ncheck = [\"nginx\", \"-t\"]\n\n[[template]]\nsource = \"missing.tera\"\ndestination = \"a\"\n",
    );
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    let cfg = p.path("rewire.toml").display().to_string();
    for want in [
        format!("{cfg}:3:1: unknown key `block_wiat` in [catalog]"),
        format!("{cfg}:8:16: `min`: \"10 sec\" has a space between the number and its unit"),
        format!("{cfg}:9:1: `check` does not mention {{file}}"),
        format!("{cfg}:12:10: template source"),
        format!("{cfg}:13:15: destination"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains("5 problems in the config (templates are checked once it has none)"),
        "{err}"
    );
}

#[test]
fn check_reports_template_syntax_errors_with_file_and_line() {
    let p = Project::new();
    p.file("t.tera", "line one\n{% for x in %}\n")
        .config("[[template]]\nsource = \"t.tera\"\ndestination = \"a\"\n");
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:2:", p.path("t.tera").display())),
        "{err}"
    );
    // Several problems in one file are counted one by one (the engine reports them as one
    // error: the count said 2 for these 4).
    p.file(
        "t.tera",
        "{{ service(nam=\"web\") }}\n{{ x | nofilter }}\n{{ nofunc() }}\n{% if x is notest %}{% endif %}\n",
    );
    let err = stderr(&p.rewire(&["check"]));
    assert!(err.contains("4 problem(s) in the templates"), "{err}");
    p.file("t.tera", "fine {{ service(name=\"web\") | length }}");
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

#[test]
fn check_accepts_the_design_sketch_and_the_shipped_examples() {
    let p = Project::new();
    p.file("templates/nginx.conf.tera", "x")
        .config(include_str!("../data/design-sketch.toml"));
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let root = env!("CARGO_MANIFEST_DIR");
    for example in [
        "examples/quickstart/rewire.toml",
        "examples/autopilot-nginx/rewire.toml",
        "examples/autopilot-nginx/app.toml",
        "examples/autopilot-nginx/consul.toml",
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rewire"))
            .args(["check", "-c", &format!("{root}/{example}")])
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{example}: {}", stderr(&o));
    }
}

#[test]
fn check_warns_about_programs_it_cannot_find() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(
        "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"sh\", \"-c\", \"true\", \"{file}\"]\nreload = [\"ngnix-no-such-program\", \"-s\", \"reload\"]\n",
    );
    let o = p.rewire(&["check"]);
    // A warning, not a failure: the program may exist only where rewire runs (a container).
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("\"ngnix-no-such-program\" is not found here"),
        "{err}"
    );
    assert!(!err.contains("\"sh\""), "{err}");
}

/// Settings that pass the parser but break `run` elsewhere or lose a feature are warned about
/// (found by a docs walk-through): a relative program (found from the working directory, so
/// not under systemd's /), a control group that does not exist, an interface this machine
/// does not have.
#[test]
fn check_warns_about_relative_programs_missing_groups_and_interfaces() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM)
        .file("chk.sh", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(
        p.path("chk.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    p.config(&format!(
        "[control]\nsocket = {:?}\ngroup = \"rewire-no-such-group\"\n\n\
         [[service]]\nname = \"web\"\nport = 8080\ninterface = \"nosuchif9\"\n\n\
         [[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\ncheck = [\"./chk.sh\", \"{{file}}\"]\n",
        p.path("ctl.sock").display().to_string()
    ));
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("\"./chk.sh\" is a relative path") && err.contains("working directory"),
        "{err}"
    );
    assert!(
        err.contains("group \"rewire-no-such-group\" does not exist"),
        "{err}"
    );
    assert!(
        err.contains("interface \"nosuchif9\" does not exist"),
        "{err}"
    );

    // The same warnings beside a template error (they were left out then), and an election
    // hook's program is looked at like every other command's.
    p.file("web.tera", "{{ nofunc() }}");
    p.config(&format!(
        "{}\n[[election]]\nname = \"e\"\nvalue = {{ id = \"a\", address = \"127.0.0.1\", port = 1 }}\n\
         on_elected = [\"rewire-no-such-hook\"]\n",
        std::fs::read_to_string(p.path("rewire.toml")).unwrap()
    ));
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("Unknown function"), "{err}");
    assert!(err.contains("\"./chk.sh\" is a relative path"), "{err}");
    assert!(
        err.contains("election e on_elected: \"rewire-no-such-hook\" is not found here"),
        "{err}"
    );
}

#[test]
fn unreadable_config_is_exit_2() {
    let p = Project::new();
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot read the config"));
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 2);
    p.config("[[template]]\nsource = 1\n");
    assert_eq!(code(&p.rewire(&["render"])), 2);
    assert_eq!(code(&p.rewire(&["check"])), 1);
}

#[test]
fn render_waits_for_missing_data_then_names_it() {
    let p = Project::new();
    p.file(
        "t.tera",
        "{{ key(path=\"app/port\") }} {% for s in service(name=\"db\") %}{{ s.port }}{% endfor %}",
    )
    .config("[[template]]\nsource = \"t.tera\"\ndestination = \"out/t\"\n");
    let o = p.rewire(&["render", "--timeout", "300ms"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("key \"app/port\" does not exist"),
        "{}",
        stderr(&o)
    );
    assert!(!p.path("out/t").exists());
    // The key appears while render waits: it is picked up.
    let path = p.path("catalog/kv/app/port");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "5432").unwrap();
    });
    let o = p.rewire(&["render", "--timeout", "20s"]);
    writer.join().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(p.read("out/t"), "5432 ");
}

#[test]
fn missing_catalog_directory_is_named_at_the_timeout() {
    let p = basic();
    std::fs::remove_dir_all(p.path("catalog")).unwrap();
    let o = p.rewire(&["render", "--timeout", "200ms"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("catalog directory does not exist"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn template_flag_and_catalog_override() {
    let p = basic();
    p.file("other.tera", "other {{ services() | length }}")
        .config("[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n\n[[template]]\nname = \"other\"\nsource = \"other.tera\"\ndestination = \"out/other\"\n");
    let o = p.rewire(&["render", "--template", "other"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(p.read("out/other"), "other 1");
    assert!(!p.path("out/web.conf").exists());
    assert_eq!(code(&p.rewire(&["render", "--template", "nope"])), 2);
    let alt = Project::new();
    alt.instance("web", "z", "10.9.9.9", 80)
        .instance("db", "d", "10.9.9.8", 5432);
    let cat = format!("dir:{}", alt.path("catalog").display());
    let o = p.rewire(&["--catalog", &cat, "render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(p.read("out/web.conf").contains("10.9.9.9:80"));
    assert_eq!(p.read("out/other"), "other 2");
}

#[test]
fn render_reload_runs_once_for_templates_sharing_it_and_rolls_back_on_failure() {
    let p = basic();
    p.file("b.tera", "b {{ service(name=\"web\") | length }}").config(
        "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\nreload = [\"sh\", \"-c\", \"echo x >> reloads\"]\n\n[[template]]\nsource = \"b.tera\"\ndestination = \"out/b\"\nreload = [\"sh\", \"-c\", \"echo x >> reloads\"]\n",
    );
    let o = p.rewire(&["render", "--reload"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(p.read("reloads"), "x\n");
    // Without --reload nothing is reloaded.
    p.instance("web", "c", "10.0.0.3", 80);
    assert_eq!(code(&p.rewire(&["render"])), 0);
    assert_eq!(p.read("reloads"), "x\n");
    // A failing reload restores both files.
    let web_before = p.read("out/web.conf");
    let b_before = p.read("out/b");
    p.config(
        "[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\nreload = [\"sh\", \"-c\", \"echo reload broke; exit 3\"]\n\n[[template]]\nsource = \"b.tera\"\ndestination = \"out/b\"\nreload = [\"sh\", \"-c\", \"echo reload broke; exit 3\"]\n",
    );
    p.instance("web", "d", "10.0.0.4", 80);
    let o = p.rewire(&["render", "--reload"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("reload broke"), "{}", stderr(&o));
    assert_eq!(p.read("out/web.conf"), web_before);
    assert_eq!(p.read("out/b"), b_before);
}

/// kill -9 of `rewire render` at random moments never leaves a torn destination.
#[test]
fn kill_9_mid_write_never_leaves_a_partial_file() {
    let p = Project::new();
    // A big render (~2 MB) so the write takes a while.
    p.file("big.tera", "{% for i in range(end=40000) %}{% for s in service(name=\"web\") %}line {{ i }} {{ s.address }}\n{% endfor %}{% endfor %}END\n")
        .config("[[template]]\nsource = \"big.tera\"\ndestination = \"out/big\"\n");
    // How long one whole render takes here, so kills land before, during and after it.
    p.instance("web", "a", "10.0.0.1", 80);
    let started = std::time::Instant::now();
    assert_eq!(code(&p.rewire(&["render"])), 0);
    let full = started.elapsed();
    let mut torn = 0;
    let mut complete = 0;
    let mut killed_while_running = 0u32;
    // Kills land at 0%, 5%, ... 95% of one render's time, over and over, until 20 of them
    // have hit a running render (a loaded machine makes renders slower or faster than the
    // first one measured; counting hits instead of rounds keeps the test meaningful).
    let wanted = 20u32;
    let mut round = 0u32;
    while killed_while_running < wanted && round < 400 {
        // Alternate the content so every round really writes.
        let addr = format!("10.0.{}.{}", round % 2 + 1, round % 7);
        p.instance("web", "a", &addr, 80);
        let mut child = p
            .command(&["render"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let delay = full.mul_f64(f64::from(round % 20) / 20.0);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        match std::fs::read_to_string(p.path("out/big")) {
            Ok(text) if text.ends_with("END\n") => complete += 1,
            _ => torn += 1,
        }
        round += 1;
    }
    assert!(
        killed_while_running >= wanted,
        "only {killed_while_running} of {round} kills hit a running render"
    );
    assert_eq!(torn, 0, "torn files seen ({complete} complete)");
    // Temp files from killed runs are hidden (never loaded by include *.conf).
    for e in std::fs::read_dir(p.path("out")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(name == "big" || name.starts_with(".big.rewire-"), "{name}");
    }
}

#[test]
fn a_template_is_picked_by_its_name_without_the_extension() {
    let p = Project::new();
    p.file("templates/nginx.conf.tera", UPSTREAM)
        .file("templates/haproxy.cfg.tera", "h\n")
        .config("[[template]]\nsource = \"templates/nginx.conf.tera\"\ndestination = \"out/nginx.conf\"\n\n[[template]]\nsource = \"templates/haproxy.cfg.tera\"\ndestination = \"out/haproxy.cfg\"\n");
    p.instance("web", "a", "10.0.0.1", 80);
    let o = p.rewire(&["render", "--template", "nginx", "--timeout", "10s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(p.read("out/nginx.conf").contains("10.0.0.1:80"));
    assert!(!p.path("out/haproxy.cfg").exists());
    // The whole name still works, and an unknown one lists the names.
    let o = p.rewire(&["render", "--template", "haproxy.cfg", "--timeout", "10s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = p.rewire(&["render", "--template", "apache"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("nginx.conf, haproxy.cfg"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unknown_backend_and_a_misspelt_key_are_each_reported_once() {
    let p = Project::new();
    p.file("t.tera", "x").config(
        "[catalog]\nbackend = \"zookeeper\"\npath = \"catalog\"\n\n[[template]]\nsource = \"t.tera\"\ndestinaton = \"out/t\"\n",
    );
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(
        err.contains("unknown catalog backend \"zookeeper\""),
        "{err}"
    );
    assert!(!err.contains("unknown key `path`"), "{err}");
    assert!(err.contains("unknown key `destinaton`"), "{err}");
    assert!(err.contains("did you mean `destination`?"), "{err}");
    assert!(!err.contains("needs `destination`"), "{err}");
    assert!(err.contains("2 problems in the config"), "{err}");
}

#[test]
fn status_without_a_config_asks_the_default_socket_and_names_socket_in_the_hint() {
    let p = Project::new();
    let runtime = p.path("xdg");
    std::fs::create_dir_all(&runtime).unwrap();
    // No rewire.toml here: no "cannot read the config", but the default socket, named.
    let o = p
        .command(&["status"])
        .env("XDG_RUNTIME_DIR", &runtime)
        .env_remove("REWIRE_SOCKET")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert!(!err.contains("cannot read the config"), "{err}");
    assert!(
        err.contains(&format!("{}", runtime.join("rewire.sock").display())),
        "{err}"
    );
    assert!(err.contains("--socket"), "{err}");
}

#[test]
fn files_without_json_are_warned_about_once_and_render_errors_are_reported_once() {
    let p = basic();
    p.file(
        "catalog/services/web/web-3",
        "{\"address\": \"10.0.0.3\", \"port\": 80}",
    )
    .file("catalog/services/web/.hidden", "x")
    .file("catalog/services/web/b.json~", "x");
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("not an instance file").count(), 1, "{err}");
    assert!(err.contains("services/web/web-3"), "{err}");
    assert!(!p.read("out/web.conf").contains("10.0.0.3"));
    // A render error: once, in the report (not also as a log line).
    p.file("web.tera", "{{ nope }}\n");
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    assert_eq!(
        err.matches("Variable `nope` is not defined").count(),
        1,
        "{err}"
    );
}

#[test]
fn check_reports_a_misspelt_function_argument_with_its_location_and_a_suggestion() {
    let p = Project::new();
    p.file(
        "t.tera",
        "upstream web {\n{% for s in service(nam=\"web\") %}{% endfor %}}\n",
    )
    .config("[[template]]\nsource = \"t.tera\"\ndestination = \"out/t\"\n");
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:2:21", p.path("t.tera").display())),
        "{err}"
    );
    assert!(
        err.contains("service() has no argument `nam`; did you mean `name`?"),
        "{err}"
    );
    p.file("t.tera", UPSTREAM);
    assert_eq!(code(&p.rewire(&["check"])), 0);
}

#[test]
fn render_and_diff_say_what_they_wait_for_and_check_warns_about_a_missing_catalog() {
    let p = Project::new();
    p.file("web.tera", UPSTREAM).config(
        "[catalog]\npath = \"no-such-catalog\"\n\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
    );
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the dir catalog's directory does not exist"),
        "{}",
        stderr(&o)
    );
    let started = std::time::Instant::now();
    let o = p.rewire(&["render", "--timeout", "6s"]);
    assert_eq!(code(&o), 1);
    let err = stderr(&o);
    // At once what and from where, then progress (plain lines: stderr is not a terminal),
    // and the final explanation.
    let catalog = format!("from dir:{}", p.path("no-such-catalog").display());
    assert!(
        err.contains(&format!(
            "rewire: waiting for service(web) {catalog} (up to 6s)"
        )),
        "{err}"
    );
    assert!(
        err.contains("rewire: still waiting after 5s for service(web)"),
        "{err}"
    );
    assert!(err.contains("not written after 6s"), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(6));
    let o = p.rewire(&["diff", "--timeout", "2s"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rewire: waiting for service(web)"),
        "{}",
        stderr(&o)
    );
    // A catalog that answers at once: nothing about waiting.
    std::fs::create_dir_all(p.path("no-such-catalog/services")).unwrap();
    let o = p.rewire(&["render"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("waiting for"), "{}", stderr(&o));
}

#[test]
fn check_warns_about_a_zero_drain_beside_a_service() {
    let p = Project::new();
    p.config(
        "[catalog]\nbackend = \"dir\"\npath = \"catalog\"\n[[service]]\nname = \"web\"\nport = 80\n[main]\nexec = [\"true\"]\ndrain = \"0s\"\n",
    );
    let o = p.rewire(&["check"]);
    assert_eq!(code(&o), 0, "a warning, not a problem: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("rewire.toml:9:1: drain = \"0s\" stops main"),
        "{err}"
    );
    assert!(err.contains("wait.max"), "{err}");
}

/// Found by a new user: a destination equal to the template's source passed `check`, and one
/// render replaced the template with its output.
#[test]
fn a_destination_that_is_a_template_source_is_refused() {
    let p = Project::new();
    let template = "{% for s in service(name=\"web\") %}{{ s | addr_port }}\n{% endfor %}";
    p.file("tpl/a.tera", template)
        .instance("web", "a", "10.0.0.1", 80)
        .config("[[template]]\nsource = \"tpl/a.tera\"\ndestination = \"tpl/a.tera\"\n");
    for cmd in ["check", "render"] {
        let o = p.rewire(&[cmd]);
        assert_ne!(code(&o), 0, "{cmd}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is the source of template"),
            "{cmd}: {}",
            stderr(&o)
        );
    }
    assert_eq!(
        p.read("tpl/a.tera"),
        template,
        "the template was overwritten"
    );
}

/// Found by a new user: `check` said ok for catalog settings that stop `run` at start.
#[test]
fn check_refuses_catalog_settings_that_run_would_refuse() {
    let p = Project::new();
    p.file("t.tera", "x\n");
    for (catalog, says) in [
        (
            "backend = \"consul\"\naddress = \"http://127.0.0.1:99999\"",
            "is not an address",
        ),
        (
            "backend = \"consul\"\naddress = \"ftp://x:1\"",
            "not supported",
        ),
        (
            "backend = \"etcd\"\nendpoints = [\"not a url\"]",
            "is not a URL",
        ),
    ] {
        p.config(&format!(
            "[catalog]\n{catalog}\n\n[[template]]\nsource = \"t.tera\"\ndestination = \"out\"\n"
        ));
        let o = p.rewire(&["check"]);
        assert_eq!(code(&o), 1, "{catalog}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{catalog}: {}", stderr(&o));
    }
}

/// Found by a new user: with an unrelated error in rewire.toml (a template source removed
/// mid-edit), `status` and `maintenance` refused to ask the running daemon at all.
#[test]
fn status_reaches_the_daemon_through_a_config_with_an_unrelated_error() {
    let p = basic();
    let socket = p.path("ctl.sock").display().to_string();
    let good = format!(
        "[control]\nsocket = \"{socket}\"\n\n[catalog]\nbackend = \"dir\"\npath = \"catalog\"\n\n\
         [[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n"
    );
    p.config(&good);
    let mut run = p.run();
    crate::support::wait_for("the daemon answers", crate::support::TIMEOUT, || {
        code(&p.rewire(&["status"])) == 0
    });
    p.config(&good.replace("web.tera", "missing.tera"));
    let o = p.rewire(&["status"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("asking the daemon on"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("web"), "{}", stdout(&o));
    p.config(&good);
    assert_eq!(run.stop(), Some(0), "{}", run.log());
}

/// Found by a container user's hunt: with `--log-format json` the error that ends the command
/// (a config error, a refused token) was plain multi-line text, which a log shipper reading
/// JSON lines drops or splits. It is one JSON record now.
#[test]
fn with_json_logs_the_error_that_ends_a_command_is_a_json_record() {
    let p = Project::new();
    p.config("[defaults]\nwiat = \"1s\"\n");
    let o = p.rewire(&["--log-format", "json", "run"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    let records: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        records.iter().any(|r| r["level"] == "ERROR"
            && r["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown key `wiat`"))),
        "{err}"
    );
}
