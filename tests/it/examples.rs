//! The shipped examples, followed as their comments say, against real programs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::project::{Project, code, stderr};
use crate::support::{self, TIMEOUT, free_port, wait_for};

/// The quickstart's pid path, as its rewire.toml and its template's NGINX_PID default say.
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
            // Workers outlive a SIGKILLed master (each full test run left four, holding their
            // port): the daemonized master leads its own session and process group, so the
            // group goes, workers included.
            let _ = support::process::signal(-pid, 9);
            let _ = support::process::signal(pid, 9);
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
        "# reload = { signal = \"HUP\", pidfile = \"/tmp/rewire-quickstart-nginx.pid\", confirm = \"new_child\" }",
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
    assert!(
        p.read("templates/nginx.conf.tera").contains(&format!(
            "env(name=\"NGINX_PID\", default=\"{QUICKSTART_PID}\")"
        )),
        "the quickstart's template no longer defaults to {QUICKSTART_PID}"
    );
    p.env("NGINX_PID", &pidfile.display().to_string());
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

/// A value at `path` (keys separated by `.`, list indexes as numbers) in a YAML document.
fn yaml_at<'v>(v: &'v serde_norway::Value, path: &str) -> &'v serde_norway::Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn seconds(d: &str) -> u64 {
    rewire::config::parse_duration(d).unwrap().as_secs()
}

#[test]
fn kubernetes_manifests_keep_their_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/kubernetes/rewire.yaml")).unwrap();
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let by_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let config_map = by_kind("ConfigMap");
    let config_text = config_map["data"]["rewire.toml"].as_str().unwrap();
    let template = config_map["data"]["nginx.conf.tera"].as_str().unwrap();
    let config: toml::Table = toml::from_str(config_text).unwrap();
    let pod = yaml_at(by_kind("Deployment"), "spec.template.spec");
    assert_eq!(pod["shareProcessNamespace"].as_bool(), Some(true));

    // The grace period covers the whole stop sequence.
    let main = config["main"].as_table().unwrap();
    let hook = |name: &str| -> u64 {
        match main.get(name) {
            None => 0,
            Some(toml::Value::Table(t)) => t
                .get("timeout")
                .and_then(|v| v.as_str())
                .map_or(60, seconds),
            Some(_) => 60,
        }
    };
    let drain = main
        .get("drain")
        .and_then(|v| v.as_str())
        .map_or(0, seconds);
    let stop_timeout = main
        .get("stop_timeout")
        .and_then(|v| v.as_str())
        .map_or(10, seconds);
    let needed = drain + hook("pre_stop") + hook("post_stop") + stop_timeout + 5;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= needed, "grace {grace}s < {needed}s");

    // The probes ask rewire's telemetry listener.
    let listen = config["telemetry"]["listen"].as_str().unwrap();
    let port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    let containers = pod["containers"].as_sequence().unwrap();
    let container = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container {name}"))
    };
    let rewire = container("rewire");
    for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
        let get = &rewire[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_u64(), Some(port), "{probe}");
    }

    // One shared emptyDir, mounted at the same place in both, holding the config and the pid
    // file the reload signals and the template writes.
    let shared = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v.get("emptyDir").is_some())
        .expect("an emptyDir volume");
    let shared_name = shared["name"].as_str().unwrap();
    let mount_of = |c: &serde_norway::Value| {
        c["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"].as_str() == Some(shared_name))
            .and_then(|m| m["mountPath"].as_str())
            .map(str::to_string)
    };
    let mount = mount_of(rewire).expect("rewire mounts the shared volume");
    assert_eq!(
        mount_of(container("nginx")).as_deref(),
        Some(mount.as_str())
    );
    let tpl = &config["template"].as_array().unwrap()[0];
    let pidfile = tpl["reload"]["pidfile"].as_str().unwrap();
    let destination = tpl["destination"].as_str().unwrap();
    assert!(pidfile.starts_with(&format!("{mount}/")), "{pidfile}");
    assert!(
        destination.starts_with(&format!("{mount}/")),
        "{destination}"
    );
    assert!(
        template.contains(&format!("pid {pidfile};")),
        "the template's pid is not {pidfile}"
    );
    let nginx_cmd: Vec<&str> = container("nginx")["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        nginx_cmd.contains(&destination),
        "nginx does not read {destination}"
    );

    // The template renders (through the real binary, from a dir catalog) into a config nginx
    // accepts.
    let p = Project::new();
    p.file("nginx.conf.tera", template)
        .config("[[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"out/nginx.conf\"\n")
        .instance("web", "a", "10.0.0.7", 8080)
        .instance("web", "b", "10.0.0.12", 8080)
        .instance("api", "c", "2001:db8::1", 9000);
    let o = p.rewire(&["render", "--timeout", "10s"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = p.read("out/nginx.conf");
    assert!(
        out.contains("server 10.0.0.7:8080;\n        server 10.0.0.12:8080;"),
        "{out}"
    );
    assert!(out.contains("server [2001:db8::1]:9000;"), "{out}");
    if let Some(nginx) = support::nginx::binary() {
        // `nginx -t` opens the pid file's directory: put the shared volume in the project.
        let shared = p.path("shared");
        std::fs::create_dir_all(&shared).unwrap();
        p.file(
            "shared/nginx.conf",
            &out.replace(&format!("{mount}/"), &format!("{}/", shared.display())),
        );
        let t = Command::new(nginx)
            .args(["-t", "-q", "-e", "stderr", "-c"])
            .arg(p.path("shared/nginx.conf"))
            .output()
            .unwrap();
        assert!(t.status.success(), "nginx -t: {}\n{out}", stderr(&t));
    }
}
