//! Consul's datacenters and nodes in templates (`dc=`, `nodes()`, `datacenters()`), through the
//! real binary against a real agent, and their refusal on catalogs that have neither.

use crate::project::{self, Project};
use crate::support::{self, Consul, TIMEOUT, wait_for};
use std::time::Duration;

/// Every Consul-only form once: a service, a key, a prefix and the service list of a named
/// datacenter, the nodes of the agent's own and of a named one, and the datacenter list.
const TEMPLATE: &str = "\
{% for s in service(name=\"web\", dc=\"dc1\") %}{{ s | addr_port }};{% endfor %}
{% for n in nodes() %}{{ n.node }}@{{ n.address }} {{ n.datacenter }};{% endfor %}
{% for n in nodes(dc=\"dc1\") %}{{ n.name }};{% endfor %}
{{ datacenters() | join(sep=\",\") }}|{{ key(path=\"app/x\", dc=\"dc1\") }}|{% for kv in keys(prefix=\"app/\", dc=\"dc1\") %}{{ kv.key }};{% endfor %}|{% for svc in services(dc=\"dc1\") %}{{ svc.name }};{% endfor %}
";

fn consul_project(consul: &Consul, template: &str) -> Project {
    let p = Project::new();
    p.file("dc.tera", template).config(&format!(
        "[catalog]\nbackend = \"consul\"\naddress = \"{}\"\n\n[[template]]\nsource = \"dc.tera\"\ndestination = \"out/dc.conf\"\n",
        consul.http_url()
    ));
    p
}

#[test]
fn datacenters_and_nodes_render_from_a_real_agent_and_nodes_are_watched() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    consul.kv_put("app/x", "1");
    consul.register_service(r#"{"ID":"web1","Name":"web","Address":"10.0.0.1","Port":80}"#);
    let p = consul_project(&consul, TEMPLATE);

    let o = p.rewire(&["render", "--timeout", "20s"]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    assert_eq!(
        p.read("out/dc.conf"),
        "10.0.0.1:80;\nrewire-test@127.0.0.1 dc1;\nrewire-test;\ndc1|1|x;|consul;web;\n"
    );

    // nodes() is a blocking watch: a node registered in the catalog shows without a restart.
    let mut r = p.run();
    consul.put_ok(
        "/v1/catalog/register",
        r#"{"Node":"ext1","Address":"10.1.2.3","Datacenter":"dc1"}"#,
    );
    wait_for("ext1 in the rendered nodes", TIMEOUT, || {
        p.read("out/dc.conf").contains("ext1@10.1.2.3 dc1;")
    });
    assert!(p.read("out/dc.conf").contains("ext1;rewire-test;"));
    assert_eq!(r.stop(), Some(0), "{}", r.log());
}

#[test]
fn a_datacenter_consul_cannot_reach_keeps_the_file_unwritten_and_is_named() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    let p = consul_project(
        &consul,
        "{% for s in service(name=\"web\", dc=\"nowhere\") %}{{ s.address }}{% endfor %}\n",
    );
    let o = p.rewire(&["render", "--timeout", "3s"]);
    let err = project::stderr(&o);
    assert_ne!(project::code(&o), 0, "{err}");
    assert!(err.contains("service(web)@nowhere"), "{err}");
    assert!(err.contains("No path to datacenter"), "{err}");
    assert!(!p.path("out/dc.conf").exists());
}

#[test]
fn datacenters_and_nodes_on_the_dir_catalog_are_refused_by_check_and_render_with_the_line() {
    let p = Project::new();
    p.file("dc.tera", TEMPLATE)
        .config("[[template]]\nsource = \"dc.tera\"\ndestination = \"out/dc.conf\"\n");
    p.instance("web", "a", "10.0.0.1", 80);
    for args in [&["check"][..], &["render", "--timeout", "3s"][..]] {
        let o = p.rewire(args);
        let all = format!("{}{}", project::stdout(&o), project::stderr(&o));
        assert_ne!(project::code(&o), 0, "{args:?}: {all}");
        assert!(all.contains("dc.tera:1:"), "{args:?}: {all}");
        assert!(all.contains("service(dc=...)"), "{args:?}: {all}");
        assert!(
            all.contains("dir catalog has no datacenters"),
            "{args:?}: {all}"
        );
        assert!(
            all.contains("dc.tera:2:") && all.contains("nodes()"),
            "{args:?}: {all}"
        );
        assert!(
            all.contains("dc.tera:4:") && all.contains("datacenters()"),
            "{args:?}: {all}"
        );
    }
    assert!(!p.path("out/dc.conf").exists());
}

/// A consul-template file reading another datacenter, nodes and datacenters converts (nothing
/// listed for a person) and renders against the agent the bytes consul-template would.
#[test]
fn imported_go_templates_with_datacenters_render_what_consul_template_would() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    consul.kv_put("app/x", "42");
    consul.register_service(r#"{"ID":"web2","Name":"web","Address":"10.0.0.2","Port":81}"#);
    consul.register_service(r#"{"ID":"web1","Name":"web","Address":"10.0.0.3","Port":80}"#);
    let p = Project::new();
    p.file(
        "ct/config.hcl",
        &format!(
            "consul {{\n  address = \"{}\"\n}}\ntemplate {{\n  source = \"dc.ctmpl\"\n  destination = \"out/dc.conf\"\n}}\n",
            consul.http_addr()
        ),
    )
    .file(
        "ct/dc.ctmpl",
        "{{ range service \"web@dc1\" }}{{ .ID }} {{ .Address }}:{{ .Port }}\n{{ end }}\
         {{- range nodes }}node {{ .Node }} {{ .Address }} {{ .Datacenter }}\n{{ end }}\
         {{- range datacenters }}dc {{ . }}\n{{ end }}\
         {{- key \"app/x@dc1\" }}\n",
    );
    let out = p.path("imported");
    let rewire = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rewire"))
            .args(args)
            .current_dir(p.root())
            .env_remove("REWIRE_CONFIG")
            .output()
            .unwrap()
    };
    let hcl = p.path("ct/config.hcl");
    let o = rewire(&[
        "import",
        "consul-template",
        hcl.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    let config = out.join("rewire.toml");
    let o = rewire(&["render", "--timeout", "20s", "-c", config.to_str().unwrap()]);
    assert_eq!(project::code(&o), 0, "{}", project::stderr(&o));
    // consul-template's order for instances: by node, then id.
    assert_eq!(
        std::fs::read_to_string(out.join("out/dc.conf")).unwrap(),
        "web1 10.0.0.3:80\nweb2 10.0.0.2:81\nnode rewire-test 127.0.0.1 dc1\ndc dc1\n42\n"
    );
}

/// Found by attacking with catalog writes: a few hundred services (a query each, through a
/// template that walks `services()`) made rewire open a connection per blocking query, past
/// Consul's 200 per client IP; the agent reset them, the template stalled for good and every
/// other client on the address was refused too. Reads now take turns on at most 150
/// connections, so everything renders and a later change is still followed.
#[test]
fn hundreds_of_services_render_and_are_followed_within_consuls_connection_limit() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    const N: usize = 260;
    for i in 0..N {
        consul.register_service(&format!(
            r#"{{"ID":"s{i}","Name":"svc-{i}","Address":"10.1.{}.{}","Port":80}}"#,
            i / 250,
            i % 250 + 1
        ));
    }
    let p = consul_project(
        &consul,
        "{% for s in services() %}{% for i in service(name=s.name) %}{{ i.id }} {{ i.port }}\n{% endfor %}{% endfor %}",
    );
    p.file(
        "rewire.toml",
        &p.read("rewire.toml").replace(
            "[[template]]",
            "[defaults]\nwait = { min = \"0s\" }\n\n[[template]]",
        ),
    );
    let mut run = p.run();
    let rendered = || {
        let text = p.read("out/dc.conf");
        (0..N).all(|i| text.contains(&format!("s{i} 80\n")))
    };
    support::wait_for("every service rendered", Duration::from_secs(90), rendered);
    // A change to one of them is followed while they take turns.
    consul.register_service(r#"{"ID":"s7","Name":"svc-7","Address":"10.1.0.8","Port":81}"#);
    support::wait_for("the change followed", Duration::from_secs(60), || {
        p.read("out/dc.conf").contains("s7 81\n")
    });
    // The agent still answers others on this address.
    assert_eq!(consul.get("/v1/status/leader").status, 200);
    assert_eq!(run.stop(), Some(0), "{}", run.log());
}

/// Consul keeps a blocking query, and counts its connection against the client IP's 200, until
/// its wait ends, even after the client is gone. With 150 reads in flight, a rewire restarted
/// beside the 140 polls its predecessor left could open 60 connections for a minute (the
/// default `block_wait`): its template waited, and other clients on the address were refused.
#[test]
fn a_restart_with_many_services_renders_at_once_beside_its_predecessors_polls() {
    let Some(consul) = Consul::try_start() else {
        return;
    };
    const N: usize = 140;
    for i in 0..N {
        consul.register_service(&format!(
            r#"{{"ID":"s{i}","Name":"svc-{i}","Address":"10.2.0.{}","Port":80}}"#,
            i + 1
        ));
    }
    let p = consul_project(
        &consul,
        "{% for s in services() %}{% for i in service(name=s.name) %}{{ i.id }} {{ i.port }}\n{% endfor %}{% endfor %}",
    );
    let all_rendered = |port: u16| {
        let text = p.read("out/dc.conf");
        (0..N).all(|i| text.contains(&format!("s{i} {}\n", if i == 7 { port } else { 80 })))
    };
    let mut first = p.run();
    support::wait_for("every service rendered", Duration::from_secs(60), || {
        all_rendered(80)
    });
    assert_eq!(first.stop(), Some(0), "{}", first.log());

    // The restart: its predecessor's polls are still held by Consul (for up to 60 s).
    let mut second = p.run();
    consul.register_service(r#"{"ID":"s7","Name":"svc-7","Address":"10.2.0.8","Port":81}"#);
    support::wait_for(
        "the restarted rewire renders the change (well before the old polls end)",
        Duration::from_secs(30),
        || all_rendered(81),
    );
    // Another client on the address still gets answers: before the fix, every one was
    // refused until the old polls ended (up to a minute). A connection may be closed while
    // polls come and go near the agent's limit, so a few tries within 10 s.
    let addr = consul.http_addr();
    assert!(
        support::poll_until(Duration::from_secs(10), || {
            support::http::get(&addr, "/v1/status/leader")
                .timeout(Duration::from_secs(2))
                .try_send()
                .is_ok_and(|r| r.status == 200)
        }),
        "another client on 127.0.0.1 got no answer from the agent for 10 s"
    );
    assert_eq!(second.stop(), Some(0), "{}", second.log());
}
