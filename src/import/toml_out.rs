//! Writes a [`Plan`] as rewire.toml: sections in the order the README describes them, each
//! with a comment naming where it came from, and every string quoted by one careful writer.
//!
//! Values copied from another tool's config are data: a `"`, a backslash, a newline or a
//! control character must come out as that same string, and a literal `${` must not turn
//! into interpolation (it is escaped as `$${` by the importers, which know which `${` they
//! produced themselves).

use std::fmt::Write;

use super::plan::{
    Command, Job, Main, Plan, Reload, Run, Service, Task, Template, Wait, Watch, When,
};

/// A TOML basic string.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        quote(k)
    }
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn command(c: &Command) -> String {
    match c {
        Command::Argv(argv) => list(argv),
        Command::Shell(s) => format!("{{ shell = {} }}", quote(s)),
    }
}

fn run(r: &Run) -> String {
    match (&r.command, &r.timeout) {
        (c, None) => command(c),
        (Command::Argv(argv), Some(t)) => {
            format!("{{ exec = {}, timeout = {} }}", list(argv), quote(t))
        }
        (Command::Shell(s), Some(t)) => {
            format!("{{ shell = {}, timeout = {} }}", quote(s), quote(t))
        }
    }
}

fn wait(w: &Wait) -> String {
    match &w.max {
        Some(max) => format!("{{ min = {}, max = {} }}", quote(&w.min), quote(max)),
        None => format!("{{ min = {} }}", quote(&w.min)),
    }
}

/// One section being written.
struct Section {
    lines: Vec<String>,
}

impl Section {
    fn new(header: &str, origin: &str) -> Section {
        let mut lines = Vec::new();
        if !origin.is_empty() {
            lines.push(format!("# {}", one_line(origin)));
        }
        lines.push(header.to_string());
        Section { lines }
    }

    fn put(&mut self, k: &str, v: String) {
        self.lines.push(format!("{} = {v}", key(k)));
    }

    fn opt(&mut self, k: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.put(k, quote(v));
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Renders the plan as rewire.toml text.
pub fn render(plan: &Plan) -> String {
    let mut sections: Vec<(Section, Option<String>)> = Vec::new();
    if let Some(c) = &plan.catalog {
        let mut s = Section::new("[catalog]", &c.origin);
        s.put("backend", quote("consul"));
        s.opt("address", &c.address);
        s.opt("token", &c.token);
        s.opt("datacenter", &c.datacenter);
        if c.stale {
            s.put("stale", "true".into());
        }
        sections.push((s, None));
        if !c.tls.is_empty() {
            let mut t = Section::new("[catalog.tls]", "");
            t.opt("ca", &c.tls.ca);
            t.opt("cert", &c.tls.cert);
            t.opt("key", &c.tls.key);
            t.opt("server_name", &c.tls.server_name);
            if let Some(v) = c.tls.verify {
                t.put("verify", v.to_string());
            }
            sections.push((t, None));
        }
    }
    if let Some(socket) = &plan.control_socket {
        let mut s = Section::new("[control]", "");
        s.put("socket", quote(socket));
        sections.push((s, None));
    }
    if let Some(listen) = &plan.telemetry_listen {
        let mut s = Section::new("[telemetry]", "");
        s.put("listen", quote(listen));
        sections.push((s, None));
    }
    for m in &plan.metrics {
        let mut s = Section::new("[[metric]]", "");
        s.put("name", quote(&m.name));
        s.put("type", quote(m.kind));
        s.opt("help", &m.help);
        sections.push((s, None));
    }
    if let Some(w) = &plan.default_wait {
        let mut s = Section::new("[defaults]", "");
        s.put("wait", wait(w));
        sections.push((s, None));
    }
    for j in &plan.jobs {
        sections.push((job(j), None));
    }
    if !plan.main.is_empty() {
        sections.push((main(&plan.main), None));
    }
    // rewire names a template after its source file; consul-template lets one source go to
    // several destinations, so the second and later get a name of their own.
    let mut names = std::collections::BTreeSet::new();
    for t in &plan.templates {
        let stem = default_name(&t.source);
        let mut name = stem.clone();
        let mut n = 1;
        while !names.insert(name.clone()) {
            n += 1;
            name = format!("{stem}-{n}");
        }
        let mut section = template(t);
        if name != stem {
            section.put("name", quote(&name));
        }
        sections.push((section, t.disabled.clone()));
    }
    for svc in &plan.services {
        sections.push((service(svc), None));
    }
    for w in &plan.watches {
        sections.push((watch(w), None));
    }
    for t in &plan.tasks {
        sections.push((task(t), None));
    }
    let mut out = String::new();
    for h in &plan.header {
        let _ = writeln!(out, "# {}", one_line(h));
    }
    for (section, disabled) in sections {
        if !out.is_empty() {
            out.push('\n');
        }
        match disabled {
            None => {
                for l in section.lines {
                    let _ = writeln!(out, "{l}");
                }
            }
            Some(why) => {
                let _ = writeln!(out, "# Left out: {}", one_line(&why));
                for l in section.lines {
                    if l.starts_with('#') {
                        let _ = writeln!(out, "{l}");
                    } else {
                        let _ = writeln!(out, "# {l}");
                    }
                }
            }
        }
    }
    out
}

fn main(m: &Main) -> Section {
    let mut s = Section::new("[main]", &m.origin);
    for (k, v) in [
        ("pre_start", &m.pre_start),
        ("exec", &m.exec),
        ("pre_stop", &m.pre_stop),
        ("post_stop", &m.post_stop),
    ] {
        if let Some(c) = v {
            s.put(k, command(c));
        }
    }
    s.opt("stop_timeout", &m.stop_timeout);
    s.opt("stop_signal", &m.stop_signal);
    if let Some(r) = m.restart {
        s.put("restart", quote(r));
    }
    if let Some(n) = m.restart_limit {
        s.put("restart_limit", n.to_string());
    }
    s.opt("wait_for_templates", &m.wait_for_templates);
    if let Some(w) = &m.when {
        s.put("when", when(w));
    }
    s
}

fn when(w: &When) -> String {
    match &w.timeout {
        Some(t) => format!(
            "{{ after = {}, is = {}, timeout = {} }}",
            quote(&w.after),
            quote(&w.is),
            quote(t)
        ),
        None => format!("{{ after = {}, is = {} }}", quote(&w.after), quote(&w.is)),
    }
}

fn job(j: &Job) -> Section {
    let mut s = Section::new("[[job]]", &j.origin);
    s.put("name", quote(&j.name));
    if let Some(c) = &j.exec {
        s.put("exec", command(c));
    }
    if let Some(r) = j.restart {
        s.put("restart", quote(r));
    }
    if let Some(n) = j.restart_limit {
        s.put("restart_limit", n.to_string());
    }
    s.opt("stop_timeout", &j.stop_timeout);
    if let Some(h) = &j.health {
        s.put("health", run(h));
    }
    s.opt("interval", &j.interval);
    if let Some(w) = &j.when {
        s.put("when", when(w));
    }
    if j.each {
        s.put("each", "true".into());
    }
    s
}

/// The name rewire gives a template without `name`: its source's file name without `.tera`.
fn default_name(source: &str) -> String {
    let file = source.rsplit('/').next().unwrap_or(source);
    file.strip_suffix(".tera").unwrap_or(file).to_string()
}

fn template(t: &Template) -> Section {
    let mut s = Section::new("[[template]]", &t.origin);
    s.put("source", quote(&t.source));
    s.put("destination", quote(&t.destination));
    s.opt("perms", &t.perms);
    match &t.reload {
        None => {}
        Some(Reload::Run(r)) => s.put("reload", run(r)),
        Some(Reload::SignalMain(sig)) => s.put(
            "reload",
            format!("{{ signal = {}, target = \"main\" }}", quote(sig)),
        ),
    }
    if let Some(w) = &t.wait {
        s.put("wait", wait(w));
    }
    if t.backup {
        s.put("backup", "true".into());
    }
    s
}

fn service(v: &Service) -> Section {
    let mut s = Section::new("[[service]]", &v.origin);
    s.put("name", quote(&v.name));
    match v.port.parse::<u16>() {
        Ok(p) => s.put("port", p.to_string()),
        Err(_) => s.put("port", quote(&v.port)),
    }
    if !v.tags.is_empty() {
        s.put("tags", list(&v.tags));
    }
    match v.interface.as_slice() {
        [] => {}
        [one] => s.put("interface", quote(one)),
        many => s.put("interface", list(many)),
    }
    s.opt("address", &v.address);
    if let Some(h) = &v.health {
        s.put("health", run(h));
    }
    s.opt("interval", &v.interval);
    s.opt("ttl", &v.ttl);
    s.opt("deregister_after", &v.deregister_after);
    s.opt("job", &v.job);
    s
}

fn watch(w: &Watch) -> Section {
    let mut s = Section::new("[[watch]]", &w.origin);
    s.put("service", quote(&w.service));
    s.opt("tag", &w.tag);
    s.put("on_change", run(&w.on_change));
    s
}

fn task(t: &Task) -> Section {
    let mut s = Section::new("[[task]]", &t.origin);
    s.opt("name", &t.name);
    s.put("every", quote(&t.every));
    s.put("exec", command(&t.exec));
    s.opt("timeout", &t.timeout);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::plan::Catalog;

    #[test]
    fn strings_round_trip_through_toml() {
        for s in [
            "plain",
            "with \"quotes\" and \\backslash\\",
            "line\nbreak\ttab\r",
            "bell\u{7} del\u{7f} nul\u{0}",
            "unicode: é ✓ 🚀",
            "'single' and $${literal}",
        ] {
            let text = format!("v = {}\n", quote(s));
            let parsed: toml::Table = toml::from_str(&text).unwrap();
            assert_eq!(parsed["v"].as_str(), Some(s), "{text}");
        }
    }

    #[test]
    fn plan_renders_sections_in_order_and_disabled_ones_as_comments() {
        let plan = Plan {
            header: vec!["imported".into()],
            catalog: Some(Catalog {
                address: Some("${CONSUL}:8500".into()),
                origin: "from consul".into(),
                ..Catalog::default()
            }),
            templates: vec![Template {
                source: "templates/a.tera".into(),
                destination: "/etc/a".into(),
                perms: Some("0644".into()),
                reload: Some(Reload::Run(Run {
                    command: Command::Shell("nginx -s reload".into()),
                    timeout: Some("30s".into()),
                })),
                wait: Some(Wait {
                    min: "2s".into(),
                    max: None,
                }),
                backup: true,
                origin: "template 1".into(),
                disabled: Some("source missing".into()),
            }],
            ..Plan::default()
        };
        let text = render(&plan);
        assert_eq!(
            text,
            "# imported\n\n# from consul\n[catalog]\nbackend = \"consul\"\naddress = \"${CONSUL}:8500\"\n\n# Left out: source missing\n# template 1\n# [[template]]\n# source = \"templates/a.tera\"\n# destination = \"/etc/a\"\n# perms = \"0644\"\n# reload = { shell = \"nginx -s reload\", timeout = \"30s\" }\n# wait = { min = \"2s\" }\n# backup = true\n"
        );
    }
}
