//! The one-shot commands: `render`, `diff` and `check`.
//!
//! `render` and `diff` share discovery: render every template against the store, fetch
//! whatever the renders found missing, and render again until nothing is missing or the
//! timeout passes. They then go through the same pipeline as the daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::cli::{ColorChoice, DiffArgs, RenderArgs};
use crate::catalog::Catalog;
use crate::config::{Config, TemplateConfig};
use crate::files;
use crate::model::Query;
use crate::render::group::{self, Written};
use crate::render::pipeline::{self, Applied};
use crate::render::template::{self, Engine, Rendered};
use crate::store::Store;

/// Exit statuses.
pub const OK: u8 = 0;
pub const PROBLEMS: u8 = 1;
pub const ERROR: u8 = 2;

/// Picks the templates named on the command line (all when none is named).
pub fn select<'c>(config: &'c Config, names: &[String]) -> Result<Vec<&'c TemplateConfig>, String> {
    if names.is_empty() {
        return Ok(config.templates.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        match config.templates.iter().find(|t| &t.name == n) {
            Some(t) => out.push(t),
            None => {
                let known: Vec<&str> = config.templates.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "no template named {n:?}; the config has: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
    }
    Ok(out)
}

/// Renders `templates` until every query they use has data, or the deadline passes.
/// Returns each template's last render and the last catalog error seen, if any.
pub async fn render_until_ready(
    engine: &Engine,
    templates: &[&TemplateConfig],
    catalog: &dyn Catalog,
    store: &Store,
    timeout: Duration,
) -> (BTreeMap<String, Rendered>, Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    let mut pause = Duration::from_millis(50);
    loop {
        let snap = store.snapshot();
        let results: BTreeMap<String, Rendered> = templates
            .iter()
            .map(|t| (t.name.clone(), engine.render(&t.name, &snap)))
            .collect();
        // Every dependency the snapshot lacks, including keys with a default (which do not
        // block a render but must show their real value when they exist).
        let mut to_fetch: BTreeSet<Query> = results
            .values()
            .flat_map(|r| r.deps().iter())
            .filter(|q| snap.get(q).is_none())
            .cloned()
            .collect();
        let mut waiting_on_keys = false;
        for r in results.values() {
            if let Rendered::Pending { waiting, deps, .. } = r
                && !waiting.is_empty()
            {
                {
                    // A key that does not exist yet: ask again until it appears.
                    waiting_on_keys = true;
                    to_fetch.extend(deps.iter().filter(|q| matches!(q, Query::Key(_))).cloned());
                }
            }
        }
        if to_fetch.is_empty() || Instant::now() >= deadline {
            return (results, last_error);
        }
        let queries: Vec<Query> = to_fetch.into_iter().collect();
        let mut progressed = false;
        for (q, r) in catalog.fetch_many(&queries).await {
            match r {
                Ok(data) => {
                    progressed |= snap.get(&q).is_none();
                    store.update(q, data);
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if !progressed || waiting_on_keys {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Picks the named templates and parses every template, printing what is wrong. A bad name
/// is a usage error (2); broken templates exit with `load_failure`.
fn prepare<'c>(
    config: &'c Config,
    names: &[String],
    command: &str,
    load_failure: u8,
) -> Result<(Vec<&'c TemplateConfig>, Engine), u8> {
    let templates = select(config, names).map_err(|e| {
        eprintln!("rewire {command}: {e}");
        ERROR
    })?;
    let engine = Engine::load(&config.templates).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!(
            "rewire {command}: {} template problem(s); nothing written",
            errors.len()
        );
        load_failure
    })?;
    Ok((templates, engine))
}

pub async fn render(
    config: &Config,
    catalog: Arc<dyn Catalog>,
    args: &RenderArgs,
    env: &BTreeMap<String, String>,
) -> u8 {
    let (templates, engine) = match prepare(config, &args.templates, "render", PROBLEMS) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = Store::new();
    let (results, last_error) =
        render_until_ready(&engine, &templates, catalog.as_ref(), &store, args.timeout).await;

    let mut failures: Vec<(String, String)> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    for t in &templates {
        match &results[&t.name] {
            Rendered::Done { text, .. } => match pipeline::apply(t, text.as_bytes(), env).await {
                Ok(Applied::Unchanged) => {
                    info!(template = %t.name, dest = %t.destination.display(), "unchanged");
                }
                Ok(Applied::Written { previous }) => {
                    info!(template = %t.name, dest = %t.destination.display(), bytes = text.len(), "written");
                    written.push(Written {
                        template: t,
                        previous,
                    });
                }
                Err(e) => failures.push((t.name.clone(), e.to_string())),
            },
            Rendered::Pending {
                missing, waiting, ..
            } => failures.push((
                t.name.clone(),
                format!(
                    "not written after {}: {}",
                    humantime::format_duration(args.timeout),
                    template::pending_reason(missing, waiting, last_error.as_deref())
                ),
            )),
            Rendered::Failed { error, .. } => failures.push((t.name.clone(), error.clone())),
        }
    }

    if args.reload {
        // Templates sharing a reload run it once; if it fails, all of them are rolled back.
        for (reload, group) in group::by_reload(written, |w| w.template.reload.as_ref()) {
            if reload.is_none() {
                continue;
            }
            if let Err(e) = group::reload_or_restore(reload.as_ref(), &group, None, env).await {
                for w in &group {
                    failures.push((
                        w.template.name.clone(),
                        format!("{e}; the previous file was restored"),
                    ));
                }
            }
        }
    }

    if failures.is_empty() {
        return OK;
    }
    for (name, why) in &failures {
        error!(template = %name, "{why}");
    }
    eprintln!(
        "rewire render: {} of {} template(s) failed:",
        failures.len(),
        templates.len()
    );
    for (name, why) in &failures {
        eprintln!("  {name}: {}", why.replace('\n', "\n    "));
    }
    PROBLEMS
}

pub async fn diff(config: &Config, catalog: Arc<dyn Catalog>, args: &DiffArgs) -> u8 {
    let (templates, engine) = match prepare(config, &args.templates, "diff", ERROR) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = Store::new();
    let (results, last_error) =
        render_until_ready(&engine, &templates, catalog.as_ref(), &store, args.timeout).await;
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let mut changed = false;
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for t in &templates {
        match &results[&t.name] {
            Rendered::Done { text, .. } => {
                let current = match files::read_current(&files::real_destination(&t.destination)) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("rewire diff: {}: {e}", t.name);
                        failed = true;
                        continue;
                    }
                };
                let d =
                    files::unified_diff(&t.destination, current.as_deref(), text.as_bytes(), color);
                if !d.is_empty() {
                    changed = true;
                    // A closed pipe (`rewire diff | head`) is not an error.
                    if stdout.write_all(d.as_bytes()).is_err() {
                        return if failed { ERROR } else { PROBLEMS };
                    }
                }
            }
            Rendered::Pending {
                missing, waiting, ..
            } => {
                failed = true;
                eprintln!(
                    "rewire diff: {}: cannot render after {}: {}",
                    t.name,
                    humantime::format_duration(args.timeout),
                    template::pending_reason(missing, waiting, last_error.as_deref())
                );
            }
            Rendered::Failed { error, .. } => {
                failed = true;
                eprintln!("rewire diff: {}: {error}", t.name);
            }
        }
    }
    let _ = stdout.flush();
    if failed {
        ERROR
    } else if changed {
        PROBLEMS
    } else {
        OK
    }
}

/// `rewire check`: the config is already parsed; check the templates' syntax.
/// Every program the config runs as an argv (a shell command is the shell's business), with
/// where it is configured.
fn programs(config: &Config) -> Vec<(String, String)> {
    fn spec(c: Option<&CommandSpec>) -> Option<&Program> {
        c.map(|c| &c.program)
    }
    use crate::config::{CommandSpec, Program, Reload};
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
    if let Some(m) = &config.main {
        add("main pre_start".into(), spec(m.pre_start.as_ref()));
        add("main exec".into(), m.exec.as_ref());
        add("main pre_stop".into(), spec(m.pre_stop.as_ref()));
        add("main post_stop".into(), spec(m.post_stop.as_ref()));
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

pub fn check(config: &Config) -> u8 {
    match Engine::load(&config.templates) {
        Ok(_) => {
            println!(
                "{}: ok ({} template(s), {} service(s), {} watch(es), {} task(s){})",
                config.path.display(),
                config.templates.len(),
                config.services.len(),
                config.watches.len(),
                config.tasks.len(),
                if config.main.is_some() { ", main" } else { "" }
            );
            for t in &config.templates {
                if let Some(dir) = t.destination.parent()
                    && !dir.exists()
                {
                    warn!(template = %t.name, dir = %dir.display(), "the destination directory does not exist yet; it will be created");
                }
            }
            for (what, program) in programs(config) {
                if !program_exists(&program) {
                    warn!(
                        "{what}: {program:?} is not found here (not in PATH, or not executable); \
                         it must exist where rewire runs"
                    );
                }
            }
            OK
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) in the templates", errors.len());
            PROBLEMS
        }
    }
}
