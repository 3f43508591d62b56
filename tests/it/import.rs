//! `rewire import` through the real binary: ContainerPilot v2 and v3 configs and a
//! consul-template config with real-world templates, imported into a temp dir, checked with
//! `rewire check`, and rendered with `rewire render` against a directory catalog. The expected
//! outputs under tests/fixtures/import/*/expected/ were written by hand from consul-template's
//! documented semantics (instances by node, then ID; services by name; Go's trim markers).

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::str::contains;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(rel)
}

fn rewire() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rewire"));
    c.env_remove("REWIRE_CONFIG").env("REWIRE_LOG", "warn");
    c
}

/// `rewire import KIND FILE --out OUT`.
fn import(kind: &str, file: &Path, out: &Path) -> std::process::Output {
    rewire()
        .args(["import", kind])
        .arg(file)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// `rewire check -c DIR/rewire.toml` with the environment the config needs.
fn check(dir: &Path, env: &[(&str, &str)]) {
    let mut c = rewire();
    c.arg("check").arg("-c").arg(dir.join("rewire.toml"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.assert().code(0);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes a directory catalog: instances as `(service, id, json)`, keys as `(path, value)`.
fn catalog(root: &Path, instances: &[(&str, &str, &str)], keys: &[(&str, &str)]) {
    for (service, id, json) in instances {
        let dir = root.join("services").join(service);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{id}.json")), json).unwrap();
    }
    for (path, value) in keys {
        let file = root.join("kv").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, value).unwrap();
    }
}

#[test]
fn containerpilot_v2_autopilot_nginx_imports_checks_and_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rewire");
    let o = import(
        "containerpilot",
        &fixture("containerpilot-v2/containerpilot.json"),
        &out,
    );
    // The app is on ContainerPilot's command line, not in the file: a step for a person.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "with --out nothing goes to stdout");
    let config = read(&out.join("rewire.toml"));
    for line in [
        "address = \"${CONSUL}:8500\"",
        "pre_start = [\"rewire\", \"render\"]",
        "stop_timeout = \"5s\"",
        "source = \"templates/nginx.conf.tera\"",
        "destination = \"/etc/nginx/nginx.conf\"",
        "reload = { shell = \"nginx -s reload\" }",
        "health = [\"/usr/bin/curl\", \"--fail\", \"-s\", \"-o\", \"/dev/null\", \"http://localhost/health\"]",
        "interval = \"10s\"",
        "ttl = \"25s\"",
        "interface = \"eth0\"",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    // preStart and both backends' onChange render the same file: one template.
    assert_eq!(config.matches("[[template]]").count(), 1, "{config}");
    assert!(!config.contains("[[watch]]"), "{config}");
    let err = stderr(&o);
    assert!(
        err.contains("ContainerPilot v2 ran the app given on its own command line"),
        "{err}"
    );
    assert!(!err.contains("everything mapped"), "{err}");

    check(&out, &[("CONSUL", "consul.service.consul")]);

    // Render the converted template: point it at a temp file and a directory catalog in
    // which address order and consul-template's node order differ.
    let dest = tmp.path().join("nginx.conf");
    std::fs::write(
        out.join("rewire.toml"),
        config.replace("/etc/nginx/nginx.conf", &dest.display().to_string()),
    )
    .unwrap();
    let cat = tmp.path().join("catalog");
    catalog(
        &cat,
        &[
            (
                "app",
                "app-1",
                r#"{"address": "10.0.0.2", "port": 8080, "node": "n2"}"#,
            ),
            (
                "app",
                "app-2",
                r#"{"address": "10.0.0.3", "port": 8080, "node": "n1"}"#,
            ),
            (
                "api",
                "api-1",
                r#"{"address": "10.0.1.1", "port": 9000, "status": "critical"}"#,
            ),
        ],
        &[],
    );
    let o = rewire()
        .arg("render")
        .arg("-c")
        .arg(out.join("rewire.toml"))
        .arg("--catalog")
        .arg(format!("dir:{}", cat.display()))
        .env("CONSUL", "consul.service.consul")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        read(&dest),
        read(&fixture("containerpilot-v2/expected/nginx.conf"))
    );
}

#[test]
fn containerpilot_v3_jobs_become_jobs_and_main_waits_for_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rewire");
    let o = import(
        "containerpilot",
        &fixture("containerpilot-v3/containerpilot.json5"),
        &out,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "everything maps now:\n{err}");
    assert!(!err.contains(": not mapped: "), "{err}");
    // The placeholder outside a string is located and explained.
    assert!(err.contains("containerpilot.json5:17:13: note: {{ .PORT }} outside a JSON string is read as the string \"${PORT}\""), "{err}");
    let config = read(&out.join("rewire.toml"));
    for line in [
        "exec = [\"/bin/app\", \"--listen\", \":${PORT:-8080}\"]",
        "pre_stop = [\"/usr/local/bin/drain.sh\"]",
        "restart = \"always\"",
        "stop_timeout = \"10s\"",
        "port = \"${PORT}\"",
        "deregister_after = \"10m\"",
        "health = { exec = [\"/usr/bin/curl\", \"--fail\", \"-s\", \"-o\", \"/dev/null\", \"http://localhost:${PORT}/health\"], timeout = \"2s\" }",
        "reload = { shell = \"pkill -HUP -x app\", timeout = \"30s\" }",
        "service = \"cache\"",
        "every = \"60m\"",
        "socket = \"/var/run/containerpilot.socket\"",
        // The agent beside the app is a [[job]]; the app waits for its health.
        "[[job]]\nname = \"consul-agent\"\nexec = [\"/usr/local/bin/consul\", \"agent\", \"-data-dir=/data\", \"-retry-join\", \"${CONSUL}\", \"-retry-interval\", \"10s\"]\nrestart = \"always\"\nhealth = [\"consul\", \"info\"]\ninterval = \"5s\"\n",
        "when = { after = \"consul-agent\", is = \"healthy\" }",
        // each -> each = true; restarts N -> restart_limit; when.timeout kept.
        "when = { after = \"consul-agent\", is = \"unhealthy\" }\neach = true\n",
        "restart = \"always\"\nrestart_limit = 3\nstop_timeout = \"3s\"\nhealth = { exec = [\"/usr/bin/curl\", \"-fs\", \"http://localhost:9100/metrics\"], timeout = \"2s\" }\ninterval = \"10s\"\nwhen = { after = \"consul-agent\", is = \"healthy\", timeout = \"60s\" }\n",
        // A job's port registers a service that reports the job's health.
        "name = \"metrics-sidecar\"\nport = 9100\ninterval = \"10s\"\nttl = \"30s\"\njob = \"metrics-sidecar\"",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    assert_eq!(
        read(&out.join("templates/upstreams.tera")),
        "{% for s in service(name=\"backend\", tag=\"prod\") | sort(attribute=\"id\") | sort(attribute=\"node\") -%}\nserver {{ s.address }}:{{ s.port }};\n{% endfor -%}\n"
    );
    check(&out, &[("PORT", "8080"), ("CONSUL", "consul")]);
}

/// Found by a migration hunt: `interfaces: ["eth1", "eth0"]` (one image for Triton and plain
/// Docker) became `interface = "eth1"` with a note, so on a host without eth1 the service
/// never registered. rewire tries a list in order too; a fallback it cannot express is not
/// mapped.
#[test]
fn containerpilot_interface_fallback_lists_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = tmp.path().join("containerpilot.json5");
    let job = |interfaces: &str| {
        format!(
            r#"{{ consul: "localhost:8500", jobs: [ {{ name: "app", exec: "/bin/app", port: 8080, interfaces: {interfaces},
              health: {{ exec: "/bin/true", interval: 2, ttl: 10 }} }} ] }}"#
        )
    };
    std::fs::write(&cp, job(r#"["eth1", "eth0:inet"]"#)).unwrap();
    let out = tmp.path().join("a");
    let o = import("containerpilot", &cp, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config = read(&out.join("rewire.toml"));
    assert!(
        config.contains("interface = [\"eth1\", \"eth0\"]"),
        "{config}"
    );
    check(&out, &[]);

    std::fs::write(&cp, job(r#"["eth1", "static:10.0.0.1"]"#)).unwrap();
    let o = import("containerpilot", &cp, &tmp.path().join("b"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("jobs[0].interfaces: not mapped"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn containerpilot_telemetry_coprocesses_and_a_restart_count_are_mapped() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("containerpilot.json");
    std::fs::write(
        &file,
        r#"{
  "consul": "localhost:8500",
  "coprocesses": [{"name": "agent", "command": ["consul", "agent", "-dev"], "restarts": 3}],
  "telemetry": {
    "port": 9090,
    "metrics": [
      {"namespace": "app", "subsystem": "queue", "name": "depth", "help": "jobs waiting", "type": "gauge"},
      {"namespace": "app", "name": "latency", "help": "request time", "type": "histogram"}
    ]
  }
}"#,
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("containerpilot", &file, &out);
    let err = stderr(&o);
    // The histogram needs a person; everything else is mapped.
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("histogram"), "{err}");
    let config = read(&out.join("rewire.toml"));
    for line in [
        "[telemetry]",
        "listen = \"0.0.0.0:9090\"",
        "name = \"app_queue_depth\"",
        "type = \"gauge\"",
        "name = \"agent\"",
        "exec = [\"consul\", \"agent\", \"-dev\"]",
        "restart_limit = 3",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    assert!(!config.contains("latency"), "{config}");
    check(&out, &[]);
}

#[test]
fn a_consul_template_config_without_a_consul_block_still_means_consul() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("m.ctmpl"), "{{ key \"app/x\" }}\n").unwrap();
    let hcl = tmp.path().join("c.hcl");
    std::fs::write(
        &hcl,
        "template {\n  source = \"m.ctmpl\"\n  destination = \"/tmp/out.txt\"\n}\n",
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("consul-template", &hcl, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config = read(&out.join("rewire.toml"));
    // No address: rewire's Consul backend finds the agent as consul-template does.
    assert!(config.contains("backend = \"consul\""), "{config}");
    assert!(config.contains("CONSUL_HTTP_ADDR"), "{config}");
    assert!(!config.contains("address ="), "{config}");
    check(&out, &[]);
}

#[test]
fn consul_template_config_renders_the_bytes_consul_template_would() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rewire");
    let o = import(
        "consul-template",
        &fixture("consul-template/config.hcl"),
        &out,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("config.hcl:12:13: note: max_stale"), "{err}");
    let config = read(&out.join("rewire.toml"));
    for line in [
        "backend = \"consul\"",
        "address = \"127.0.0.1:8500\"",
        "stale = true",
        "wait = { min = \"2s\", max = \"10s\" }",
        "perms = \"0644\"",
        "reload = { shell = \"nginx -s reload || true\", timeout = \"30s\" }",
        "backup = true",
        "reload = { shell = \"systemctl reload haproxy\" }",
        "wait = { min = \"1s\", max = \"4s\" }",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    check(&out, &[]);

    let cat = tmp.path().join("catalog");
    catalog(
        &cat,
        &[
            (
                "web",
                "web-a",
                r#"{"address":"10.0.0.1","port":8080,"tags":["prod","http"],"node":"node-3"}"#,
            ),
            (
                "web",
                "web-b",
                r#"{"address":"10.0.0.2","port":8080,"tags":["prod"],"status":"warning","meta":{"weight":"50"},"node":"node-1"}"#,
            ),
            (
                "web",
                "web-c",
                r#"{"address":"10.0.0.3","port":8080,"tags":["prod","canary"],"meta":{"weight":"5"},"node":"node-2"}"#,
            ),
            (
                "web",
                "web-d",
                r#"{"address":"10.0.0.4","port":8081,"tags":[],"node":"node-1"}"#,
            ),
            (
                "web",
                "web-e",
                r#"{"address":"10.0.0.5","port":8080,"tags":["prod"],"status":"critical","node":"node-0"}"#,
            ),
            (
                "web",
                "web-0",
                r#"{"address":"10.0.0.9","port":8080,"tags":["prod"],"node":"node-1"}"#,
            ),
            (
                "api",
                "api-1",
                r#"{"address":"10.0.1.1","port":9001,"tags":["v1","http"],"node":"Node-B"}"#,
            ),
            (
                "api",
                "api-2",
                r#"{"address":"10.0.1.2","port":9000,"tags":["v2","http"],"node":"Node-B"}"#,
            ),
            (
                "api",
                "api-3",
                r#"{"address":"10.0.1.3","port":9000,"tags":["http"],"node":"Node-A"}"#,
            ),
            (
                "db",
                "db-1",
                r#"{"address":"10.0.2.1","port":5432,"node":"node-1"}"#,
            ),
            (
                "cache",
                "cache-1",
                r#"{"address":"10.0.3.1","port":6379,"tags":["http"],"status":"critical","node":"node-2"}"#,
            ),
        ],
        &[
            ("config/nginx/zone", " eu-west \n"),
            ("config/nginx/extra/gzip", "on"),
            ("config/nginx/extra/limits/rate", "10r/s"),
            ("config/haproxy/maxconn", "2000"),
            ("config/haproxy/acl/blocked", "10.9.0.0/16"),
            ("config/haproxy/acl/admins", "10.8.0.0/16"),
            ("config/haproxy/acl/nested/x", "y"),
        ],
    );
    let o = rewire()
        .arg("render")
        .arg("-c")
        .arg(out.join("rewire.toml"))
        .arg("--catalog")
        .arg(format!("dir:{}", cat.display()))
        .env("SITE_NAME", "edge")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        read(&out.join("out/upstreams.conf")),
        read(&fixture("consul-template/expected/upstreams.conf"))
    );
    assert_eq!(
        read(&out.join("out/backends.cfg")),
        read(&fixture("consul-template/expected/backends.cfg"))
    );
}

#[test]
fn existing_files_are_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rewire");
    let run = |force: bool| {
        let mut c = rewire();
        c.args(["import", "consul-template"])
            .arg(fixture("consul-template/config.hcl"))
            .arg("--out")
            .arg(&out);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    assert_eq!(run(false).status.code(), Some(0));
    std::fs::write(out.join("rewire.toml"), "# mine\n").unwrap();
    let o = run(false);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("rewire.toml") && err.contains("use --force"),
        "{err}"
    );
    assert_eq!(read(&out.join("rewire.toml")), "# mine\n");
    assert_eq!(run(true).status.code(), Some(0));
    assert!(read(&out.join("rewire.toml")).contains("[[template]]"));
}

#[test]
fn without_out_the_config_goes_to_stdout() {
    rewire()
        .args(["import", "consul-template"])
        .arg(fixture("consul-template/config.hcl"))
        .assert()
        .code(0)
        .stdout(contains(
            "[[template]]\nsource = \"templates/nginx-upstreams.tera\"",
        ))
        .stderr(contains("written to templates/ only with --out DIR"));
}

#[test]
fn unreadable_input_exits_2_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = tmp.path().join("containerpilot.json");
    std::fs::write(
        &cp,
        "{\n  \"services\": [\n    {{ range $i := loop 3 }}{\"name\": \"s{{ $i }}\"},{{ end }}\n  ]\n}\n",
    )
    .unwrap();
    rewire()
        .args(["import", "containerpilot"])
        .arg(&cp)
        .assert()
        .code(2)
        .stderr(contains("containerpilot.json:3:5: template logic {{ range $i := loop 3 }} outside a JSON string"));

    let hcl = tmp.path().join("config.hcl");
    std::fs::write(
        &hcl,
        "consul {\n  address = \"127.0.0.1:8500\"\n}\nwait { min = \"2s\" max = \"10s\" }\n",
    )
    .unwrap();
    rewire()
        .args(["import", "consul-template"])
        .arg(&hcl)
        .assert()
        .code(2)
        .stderr(contains("config.hcl:4:"))
        .stderr(contains("HCL1"));

    rewire()
        .args(["import", "consul-template"])
        .arg(tmp.path().join("missing.hcl"))
        .assert()
        .code(2)
        .stderr(contains("cannot read"));
}

#[test]
fn unconvertible_template_parts_are_comments_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("t.ctmpl"),
        "{{ range service \"web\" }}{{ .Address }}\n{{ end }}{{ range $tag, $s := service \"web\" | byTag }}{{ $tag }}{{ end }}\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.hcl"),
        "template {\n  source = \"t.ctmpl\"\n  destination = \"out/t\"\n}\nvault {\n  address = \"https://vault:8200\"\n}\n",
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("consul-template", &tmp.path().join("config.hcl"), &out);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("t.ctmpl:2:47: not mapped: not converted, left as a comment: byTag"),
        "{err}"
    );
    assert!(
        err.contains("config.hcl:5:1: not mapped: vault: Vault is not supported"),
        "{err}"
    );
    let text = read(&out.join("templates/t.tera"));
    assert!(
        text.contains("{# rewire import: line 2 not converted (byTag"),
        "{text}"
    );
    check(&out, &[]);
}

/// The autopilotpattern layout: the agent, a preStart that waits for the agent's health, and
/// the app that waits for preStart's success. rewire's pre_start runs at once, so preStart
/// stays a job with its `when` (it used to become pre_start while [main] still waited for a
/// job named preStart that the file no longer had, and `rewire check` refused it).
#[test]
fn containerpilot_prestart_waiting_for_the_agent_stays_a_job_main_waits_for() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = tmp.path().join("containerpilot.json5");
    std::fs::write(
        &cp,
        r#"{
  consul: "localhost:8500",
  jobs: [
    { name: "consul-agent", exec: ["consul", "agent", "-data-dir=/data"], restarts: "unlimited",
      health: { exec: "consul info", interval: 5, ttl: 10 } },
    { name: "preStart", exec: "/usr/local/bin/prestart.sh",
      when: { source: "consul-agent", once: "healthy" } },
    { name: "app", port: 8080, exec: "/bin/app", restarts: "unlimited",
      when: { source: "preStart", once: "exitSuccess" },
      health: { exec: "/usr/bin/curl -fs localhost:8080/health", interval: 5, ttl: 10 } }
  ]
}
"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = import("containerpilot", &cp, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config = read(&out.join("rewire.toml"));
    for line in [
        "[[job]]\nname = \"preStart\"\nexec = [\"/usr/local/bin/prestart.sh\"]\nwhen = { after = \"consul-agent\", is = \"healthy\" }\n",
        "when = { after = \"preStart\", is = \"succeeded\" }",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    assert!(!config.contains("pre_start"), "{config}");
    check(&out, &[]);
}

/// Found by a migration hunt: the same layout with preStart running `consul-template -once`
/// kept that command as the job's exec ("everything mapped"), in an image that no longer has
/// consul-template: preStart failed and the app never started. The templates are converted
/// and the job runs `rewire render`, as a pre_start without `when` does.
#[test]
fn containerpilot_a_prestart_job_running_consul_template_renders_with_rewire() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("n.ctmpl"),
        "{{ range service \"web\" }}{{ .Address }}\n{{ end }}",
    )
    .unwrap();
    let cp = tmp.path().join("containerpilot.json5");
    std::fs::write(
        &cp,
        format!(
            r#"{{
  consul: "localhost:8500",
  jobs: [
    {{ name: "consul-agent", exec: ["consul", "agent", "-data-dir=/data"], restarts: "unlimited",
      health: {{ exec: "consul info", interval: 5, ttl: 10 }} }},
    {{ name: "preStart",
      exec: "consul-template -once -consul-addr localhost:8500 -template {dir}/n.ctmpl:{dir}/n.conf",
      when: {{ source: "consul-agent", once: "healthy" }} }},
    {{ name: "app", port: 8080, exec: "/bin/app", restarts: "unlimited",
      when: {{ source: "preStart", once: "exitSuccess" }},
      health: {{ exec: "/usr/bin/curl -fs localhost:8080/health", interval: 5, ttl: 10 }} }}
  ]
}}
"#,
            dir = tmp.path().display()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = import("containerpilot", &cp, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let config = read(&out.join("rewire.toml"));
    for line in [
        "[[job]]\nname = \"preStart\"\nexec = [\"rewire\", \"render\"]\nwhen = { after = \"consul-agent\", is = \"healthy\" }\n",
        "when = { after = \"preStart\", is = \"succeeded\" }",
        "[[template]]",
    ] {
        assert!(config.contains(line), "missing {line:?} in:\n{config}");
    }
    assert!(!config.contains("consul-template"), "{config}");
    check(&out, &[]);
}

/// Found by testing as a migrating user: consul-template never expanded `${...}` in its
/// config (a command's `${f}` is the shell's), one source may go to two destinations, and in
/// exec mode the child was signalled after a template's command too.
#[test]
fn consul_template_commands_keep_shell_variables_and_what_rewire_cannot_do_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("a.ctmpl"),
        "{{ key \"demo/a\" }}\n{{ scratch.Set \"k\" \"v\" }}{{ range service \"web\" }}{{ printf \"%v\" .Tags }}{{ end }}\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("config.hcl"),
        r#"exec {
  command = "python3 app.py"
  reload_signal = "SIGUSR1"
}
template {
  source = "a.ctmpl"
  destination = "out/a.txt"
  command = "for f in out/*.txt; do echo \"touched ${f} $${X}\" >> cmd.log; done"
}
template {
  source = "a.ctmpl"
  destination = "out/b.txt"
}
"#,
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("consul-template", &tmp.path().join("config.hcl"), &out);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let config = read(&out.join("rewire.toml"));
    // The shell sees what it saw: `${f}`, and `$${X}` (its PID, then `{X}`).
    assert!(
        config.contains(r#"echo \"touched $${f} $$${X}\" >> cmd.log"#),
        "{config}"
    );
    assert!(config.contains("name = \"a-2\""), "{config}");
    // The child starts only once every template rendered, however long that takes, as in
    // consul-template (found by a migration hunt: it started after rewire's default minute).
    assert!(
        config.contains("wait_for_templates = \"forever\""),
        "{config}"
    );
    assert!(
        err.contains("config.hcl:8:13: not mapped: template[1].command: consul-template also sent the exec child SIGUSR1 after this template's command"),
        "{err}"
    );
    // `scratch.Set` is one unconvertible action, not an unreadable template.
    assert!(
        err.contains(
            "a.ctmpl:2:4: not mapped: not converted, left as a comment: scratch has no translation"
        ),
        "{err}"
    );
    let text = read(&out.join("templates/a.tera"));
    assert!(text.starts_with("{{ key(path=\"demo/a\") }}\n"), "{text}");
    // printf "%v" of a list prints it the way Go does.
    assert!(
        text.contains("(\"[\" ~ (s.tags | join(sep=\" \")) ~ \"]\")"),
        "{text}"
    );
    check(&out, &[]);
}

/// Found by testing as a migrating user: a one-shot job waiting for the app's `healthy` (an
/// announcer) was taken for the app; mysqld, with its port and health, became a plain job.
#[test]
fn containerpilot_the_app_is_the_service_not_a_job_waiting_for_its_health() {
    let tmp = tempfile::tempdir().unwrap();
    let cp = tmp.path().join("containerpilot.json5");
    std::fs::write(
        &cp,
        r#"{
  consul: "localhost:8500",
  jobs: [
    { name: "preStart", exec: "/usr/local/bin/manage.py" },
    {
      name: "mysql",
      exec: ["mysqld", "--console"],
      port: 3306,
      when: { source: "preStart", once: "exitSuccess" },
      health: { exec: "/usr/local/bin/manage.py health", interval: 5, ttl: 25 },
    },
    { name: "announce", exec: "/usr/local/bin/announce.sh", when: { source: "mysql", once: "healthy" } },
    { name: "preStop", exec: "/usr/local/bin/manage.py pre_stop", when: { source: "mysql", once: "stopping" } },
  ],
}
"#,
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("containerpilot", &cp, &out);
    let err = stderr(&o);
    let config = read(&out.join("rewire.toml"));
    assert!(
        config.contains("[main]\npre_start = [\"/usr/local/bin/manage.py\"]\nexec = [\"mysqld\", \"--console\"]\npre_stop = [\"/usr/local/bin/manage.py\", \"pre_stop\"]"),
        "{config}"
    );
    assert!(
        err.contains("job \"announce\" runs on \"mysql\" healthy: not mapped (\"mysql\" became [main], and rewire's [main] has no health events"),
        "{err}"
    );
    assert_eq!(o.status.code(), Some(1), "{err}");
}

/// An onChange job running consul-template keeps its `timeout` on the reload it becomes.
#[test]
fn containerpilot_an_onchange_consul_template_job_keeps_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nginx.conf.ctmpl"),
        "{{ range service \"backend\" }}server {{ .Address }};{{ end }}\n",
    )
    .unwrap();
    let cp = tmp.path().join("containerpilot.json5");
    std::fs::write(
        &cp,
        r#"{
  consul: "localhost:8500",
  jobs: [
    { name: "nginx", exec: "nginx", port: 80 },
    {
      name: "onchange-backend",
      exec: "consul-template -once -consul-addr localhost:8500 -template /etc/containerpilot/nginx.conf.ctmpl:/etc/nginx/nginx.conf:'nginx -s reload'",
      when: { source: "watch.backend", each: "changed" },
      timeout: "10s",
    },
  ],
  watches: [{ name: "backend", interval: 3 }],
}
"#,
    )
    .unwrap();
    let out = tmp.path().join("rewire");
    let o = import("containerpilot", &cp, &out);
    let config = read(&out.join("rewire.toml"));
    assert!(
        config.contains("reload = { shell = \"nginx -s reload\", timeout = \"10s\" }"),
        "{config}\n{}",
        stderr(&o)
    );
}
