//! The shipped examples, followed as their comments say, against real programs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::project::{Project, code, stderr};
use crate::support::{self, TIMEOUT, free_port, wait_for};

/// The quickstart's pid path, as its rewire.toml and catalog/kv/nginx/pid write it.
const QUICKSTART_PID: &str = "/tmp/rewire-quickstart-nginx.pid";

/// Copies `examples/quickstart` (config, templates, catalog; not `out/`) into `p`.
fn copy_quickstart(p: &Project) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    copy_tree(&root, p.root(), &root);
}

fn copy_tree(from: &Path, to: &Path, root: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap();
        if ["out", "run"].iter().any(|d| rel.starts_with(d)) || rel.ends_with("web-3.json") {
            continue;
        }
        let dest = to.join(rel);
        if path.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&path, to, root);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// An nginx that daemonized itself (started as the quickstart says), stopped by its pidfile.
struct DaemonizedNginx(std::path::PathBuf);

impl DaemonizedNginx {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

impl Drop for DaemonizedNginx {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = support::process::signal(pid, 9);
            // Its workers follow the master's death (they watch the parent); nothing else holds the port.
        }
    }
}

#[test]
fn quickstart_check_and_reload_lines_work_as_written_against_nginx() {
    let Some(nginx) = support::nginx::binary() else {
        let _: Option<()> = support::skip("nginx", "binary not found", false);
        return;
    };
    let p = Project::new();
    copy_quickstart(&p);
    // The lines exactly as shipped, uncommented; only the pid path and port are made private to
    // this test (a fixed /tmp path and port 8080 would collide with a user's own quickstart).
    let pidfile = p.path("nginx.pid");
    let config = p.read("rewire.toml");
    for line in [
        "# check = [\"nginx\", \"-t\", \"-q\", \"-c\", \"{file}\"]",
        "# reload = { signal = \"HUP\", pidfile = \"/tmp/rewire-quickstart-nginx.pid\" }",
    ] {
        assert!(
            config.contains(line),
            "the quickstart no longer says {line}"
        );
    }
    let config = config
        .replace("# check = ", "check = ")
        .replace("# reload = ", "reload = ")
        .replace(QUICKSTART_PID, &pidfile.display().to_string());
    p.config(&config);
    assert_eq!(p.read("catalog/kv/nginx/pid").trim(), QUICKSTART_PID);
    p.kv("nginx/pid", &pidfile.display().to_string());
    let port = free_port();
    p.kv("nginx/listen", &format!("127.0.0.1:{port}"));

    let o = p.rewire(&["render", "--timeout", "20s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // `nginx -c "$PWD/examples/quickstart/out/nginx.conf"`: an absolute path, from elsewhere.
    let conf = p.path("out/nginx.conf");
    // It daemonizes: its output goes to a file (a pipe would stay open after the parent exits).
    let out = std::fs::File::create(p.path("nginx.out")).unwrap();
    let started = Command::new(&nginx)
        .arg("-c")
        .arg(&conf)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    let guard = DaemonizedNginx(pidfile.clone());
    assert!(started.success(), "{}", p.read("nginx.out"));
    let health = |port: u16| {
        support::http::get(&support::ports::addr(port), "/health")
            .timeout(Duration::from_secs(2))
            .try_send()
            .map(|r| r.status == 200)
            .unwrap_or(false)
    };
    wait_for("nginx answers /health", TIMEOUT, || health(port));

    // A change goes through the check and the HUP: nginx moves to the new port.
    let mut r = p.run();
    let moved = free_port();
    p.kv("nginx/listen", &format!("127.0.0.1:{moved}"));
    wait_for("nginx listens on the new port", TIMEOUT, || health(moved));
    p.instance("web", "web-3", "10.0.0.7", 8080);
    wait_for("web-3 rendered", TIMEOUT, || {
        p.read("out/nginx.conf").contains("10.0.0.7:8080")
    });
    let log = r.log();
    assert!(
        !log.contains("rolled back") && !log.contains("ERROR"),
        "{log}"
    );
    assert_eq!(r.stop(), Some(0), "{}", r.log());
    assert!(guard.pid().is_some());
}
