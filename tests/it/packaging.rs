//! What packagers and operators use: completions, the man page, systemd readiness.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::project::{Project, code, stderr, stdout};
use crate::support::{TIMEOUT, wait_for};

#[test]
fn completions_and_the_man_page_are_printed_for_each_shell() {
    let p = Project::new();
    for (shell, marker) in [
        ("bash", "complete -F _rewire"),
        ("zsh", "#compdef rewire"),
        ("fish", "complete -c rewire"),
    ] {
        let o = p.rewire(&["completions", shell]);
        assert_eq!(code(&o), 0, "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("maintenance"), "{shell}: no subcommands");
    }
    // No config needed, and `man` prints roff covering every subcommand.
    let o = p.rewire(&["man"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH rewire 1"), "{page}");
    for sub in [
        "rewire\\-run",
        "rewire\\-render",
        "rewire\\-diff",
        "rewire\\-check",
    ] {
        assert!(page.contains(sub), "{sub} missing");
    }
    let o = p.rewire(&["completions", "tcsh"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn systemd_hears_ready_once_templates_are_written_and_stopping_on_stop() {
    let p = Project::new();
    p.file("web.tera", "listen {{ key(path=\"app/port\") }};\n").config(&format!(
        "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\nwait = {{ min = \"0s\", max = \"0s\" }}\n\n[main]\nexec = [\"sh\", \"-c\", \"echo ${{NOTIFY_SOCKET:-unset}} > notify-env; exec sleep 60\"]\n",
        p.control()
    ));
    let socket_path = p.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = std::fs::File::create(p.path("rewire.log")).unwrap();
    let mut child = p
        .command(&["run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    // Nothing yet: the template waits for its key.
    let early = socket.recv(&mut buf);
    assert!(early.is_err(), "notified before any template was written");
    // Written whole (temp file + rename), so the daemon never reads it empty.
    std::fs::create_dir_all(p.path("catalog/kv/app")).unwrap();
    std::fs::write(p.path("catalog/kv/.port.tmp"), "8080").unwrap();
    std::fs::rename(
        p.path("catalog/kv/.port.tmp"),
        p.path("catalog/kv/app/port"),
    )
    .unwrap();
    let mut got = String::new();
    wait_for("READY=1", TIMEOUT, || {
        if let Ok(n) = socket.recv(&mut buf) {
            got = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        !got.is_empty()
    });
    assert_eq!(got, "READY=1");
    assert_eq!(p.read("out/web.conf"), "listen 8080;\n");
    // Children never see the socket (they could say "ready" on rewire's behalf).
    wait_for("main started", TIMEOUT, || !p.read("notify-env").is_empty());
    assert_eq!(p.read("notify-env").trim(), "unset");
    crate::support::process::signal(child.id() as i32, crate::support::process::SIGTERM).unwrap();
    got.clear();
    wait_for("STOPPING=1", TIMEOUT, || {
        if let Ok(n) = socket.recv(&mut buf) {
            got = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        !got.is_empty()
    });
    assert_eq!(got, "STOPPING=1");
    let status = child.wait().unwrap();
    assert!(status.code().is_some(), "{}", p.read("rewire.log"));
}

/// rewire's one libm function, `pow`, is its own (src/main.rs), so libm.so is not loaded: it
/// kept ~0.6 MB of an idle daemon resident. A dependency that starts calling libm brings it
/// back; then define that function beside `pow` or accept the cost knowingly.
#[test]
fn a_running_daemon_does_not_load_libm() {
    let p = Project::new();
    p.file("web.tera", crate::project::UPSTREAM)
        .config(&format!(
            "{}\n[[template]]\nsource = \"web.tera\"\ndestination = \"out/web.conf\"\n",
            p.control()
        ));
    p.instance("web", "a", "10.0.0.1", 80);
    let mut r = p.run();
    wait_for("first render", TIMEOUT, || p.path("out/web.conf").exists());
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", r.child.id())).unwrap();
    assert!(maps.contains("libc.so"), "not the daemon's maps:\n{maps}");
    assert!(!maps.contains("libm.so"), "libm is loaded:\n{maps}");
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}
