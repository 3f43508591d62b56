//! `rewire check`: validate the config and the templates' syntax without a catalog, and warn
//! about what would not work on this machine (a program not in PATH, a missing directory).

use tracing::warn;

use crate::app::Outcome;
use crate::config::{CommandSpec, Config, Program, Reload};
use crate::render::template::Engine;

/// Every program the config runs as an argv (a shell command is the shell's business), with
/// where it is configured.
fn programs(config: &Config) -> Vec<(String, String)> {
    fn spec(c: Option<&CommandSpec>) -> Option<&Program> {
        c.map(|c| &c.program)
    }
    let mut out = Vec::new();
    let mut add = |what: String, p: Option<&Program>| {
        if let Some(Program::Argv(argv)) = p
            && let Some(first) = argv.first()
        {
            out.push((what, first.clone()));
        }
    };
    for t in &config.templates {
        add(format!("template {} check", t.name), spec(t.check.as_ref()));
        if let Some(Reload::Command(c)) = &t.reload {
            add(format!("template {} reload", t.name), Some(&c.program));
        }
    }
    for s in &config.services {
        add(
            format!("service {} health", s.name),
            spec(s.health.as_ref()),
        );
    }
    for w in &config.watches {
        add(
            format!("watch {} on_change", w.service),
            Some(&w.on_change.program),
        );
    }
    for t in &config.tasks {
        add(format!("task {}", t.name), Some(&t.exec.program));
    }
    for j in &config.jobs {
        add(format!("job {} exec", j.name), Some(&j.exec));
        add(
            format!("job {} health", j.name),
            j.health.as_ref().map(|h| &h.check.program),
        );
    }
    if let Some(m) = &config.main {
        add("main pre_start".into(), spec(m.pre_start.as_ref()));
        add("main exec".into(), m.exec.as_ref());
        add("main pre_stop".into(), spec(m.pre_stop.as_ref()));
        add("main post_stop".into(), spec(m.post_stop.as_ref()));
    }
    for e in &config.elections {
        add(
            format!("election {} on_elected", e.name),
            spec(e.on_elected.as_ref()),
        );
        add(
            format!("election {} on_demoted", e.name),
            spec(e.on_demoted.as_ref()),
        );
        add(
            format!("election {} on_change", e.name),
            spec(e.on_change.as_ref()),
        );
    }
    out
}

/// Whether `program` would start: a path (relative to where rewire runs) or a name in PATH.
fn program_exists(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return runnable(std::path::Path::new(program));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| runnable(&d.join(program))))
}

/// `rewire check`: the config is already parsed (its problems are reported before this
/// runs); check the templates' syntax and warn about what will not work here.
pub fn run(config: &Config) -> Outcome {
    // The catalog's settings as `run` would take them (an address that is no URL, a port out
    // of range, a CA file that is not there), without contacting it: a config that passes
    // `check` must not stop `run` at start.
    let catalog = crate::catalog::open(&config.catalog)
        .err()
        .map(|e| format!("{}: [catalog]: {e}", config.path.display()));
    match Engine::load(&config.templates, config.catalog.backend.name()) {
        Ok(_) if catalog.is_some() => Outcome::Findings(format!(
            "{}\n1 problem in the catalog settings",
            catalog.unwrap_or_default()
        )),
        Ok(_) => {
            println!(
                "{}: ok ({} template(s), {} service(s), {} watch(es), {} task(s){}{})",
                config.path.display(),
                config.templates.len(),
                config.services.len(),
                config.watches.len(),
                config.tasks.len(),
                match config.jobs.len() {
                    0 => String::new(),
                    n => format!(", {n} job(s)"),
                },
                if config.main.is_some() { ", main" } else { "" }
            );
            warn_about(config);
            Outcome::Done
        }
        Err(errors) => {
            // What will not work here is said whatever the templates' state.
            warn_about(config);
            let mut lines: Vec<String> = catalog.into_iter().collect();
            lines.extend(errors.iter().map(|e| e.to_string()));
            // One error from the engine may hold several problems, each with its position.
            let problems: usize = errors
                .iter()
                .map(|e| {
                    e.to_string()
                        .lines()
                        .filter(|l| l.trim_start().starts_with("--> "))
                        .count()
                        .max(1)
                })
                .sum();
            lines.push(format!("{problems} problem(s) in the templates"));
            Outcome::Findings(lines.join("\n"))
        }
    }
}

/// Warnings about what is allowed but will not work here (or probably not as meant): the
/// config's own warnings, directories that do not exist yet, programs not found, a relative
/// program, a control group or an interface this machine does not have.
fn warn_about(config: &Config) {
    for w in &config.warnings {
        warn!("{w}");
    }
    for t in &config.templates {
        if let Some(dir) = t.destination.parent()
            && !dir.exists()
        {
            warn!(template = %t.name, dir = %dir.display(), "the destination directory does not exist yet; it will be created");
        }
    }
    if let crate::config::Backend::Dir(d) = &config.catalog.backend
        && !d.path.is_dir()
    {
        warn!(
            path = %d.path.display(),
            "the dir catalog's directory does not exist: render and run will wait for it \
             (create it with services/ and kv/ inside, or set [catalog] path)"
        );
    }
    for (what, program) in programs(config) {
        if !program_exists(&program) {
            warn!(
                "{what}: {program:?} is not found here (not in PATH, or not executable); \
                 it must exist where rewire runs"
            );
        } else if program.contains('/') && !program.starts_with('/') {
            warn!(
                "{what}: {program:?} is a relative path: commands are found and run from \
                 rewire's working directory, not the config's (under systemd that is / \
                 unless WorkingDirectory= is set); an absolute path works from anywhere"
            );
        }
    }
    if let Some(group) = &config.control.group
        && matches!(nix::unistd::Group::from_name(group), Ok(None))
    {
        warn!(
            "[control] group {group:?} does not exist here: rewire run will not open its \
             control socket (status, maintenance) until it does; create it (groupadd) or \
             name another"
        );
    }
    for s in &config.services {
        if let crate::config::AddressSpec::Interface(names) = &s.address
            && std::path::Path::new("/sys/class/net").is_dir()
            && !names
                .iter()
                .any(|n| n == crate::host::ANY_IPV4 || crate::host::interface_exists(n))
        {
            let which = match names.as_slice() {
                [one] => format!("interface {one:?} does not exist"),
                _ => format!("none of the interfaces {names:?} exists"),
            };
            warn!(
                service = %s.name,
                "{which} here (see `ip link`): the service registers only where one does"
            );
        }
    }
}
