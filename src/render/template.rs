//! Tera templates with rewire's functions and filters, and dependency discovery.
//!
//! Templates never talk to the network. The functions (`service`, `services`, `key`, `keys`,
//! `env`) read the snapshot set for the current render through a thread-local; a query the
//! snapshot does not hold yet is recorded as missing and answered with a placeholder. After
//! the render, any missing query makes the result [`Rendered::Pending`] (never written: an
//! unknown answer is never rendered as empty), and the caller fetches or watches what was
//! missing and renders again. One pass collects every missing query, so a template that
//! needs ten services costs two renders, not eleven.
//!
//! Every render has a [`Budget`]: a deadline and a largest output (`render_timeout`,
//! `max_output`). Output goes through a writer that refuses bytes past the limit, and Tera's VM
//! (patched: `vendor/tera`) asks [`interrupt`] every 1024 instructions whether the deadline has
//! passed or its capture buffers grew past the limit, so even a loop that prints nothing stops.
//! Where the render runs (inline or on a thread of its own) is [`worker`](super::worker)'s
//! business.
//!
//! The functions are registered once; rendering borrows the engine, so templates render
//! concurrently on several threads without cloning Tera. The functions and filters live in
//! [`functions`](super::functions::register); turning store data into template values (once per
//! entry) in [`values`](super::values).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tera::{Context, Tera};

use super::functions;
use crate::config::{RenderLimits, TemplateConfig};
use crate::model::Query;
use crate::store::{Entry, Snapshot};

/// The result of one render.
#[derive(Debug, Clone)]
pub enum Rendered {
    Done {
        text: String,
        deps: BTreeSet<Query>,
    },
    /// Some data is not known yet (or a key without default does not exist).
    Pending {
        deps: BTreeSet<Query>,
        /// Queries the snapshot has no answer for yet.
        missing: BTreeSet<Query>,
        /// Human-readable reasons, e.g. "key app/db does not exist".
        waiting: Vec<String>,
    },
    Failed {
        deps: BTreeSet<Query>,
        error: String,
        /// Set when a limit stopped the render (the error says which and what to do).
        limit: Option<Limit>,
    },
}

/// The limit that stopped a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// It ran past its deadline (`render_timeout`).
    Time,
    /// Its output (or the text it captured) grew past `max_output`.
    Output,
}

/// What one render may spend.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The template's limits, for the error message.
    pub limits: RenderLimits,
    /// When to stop: `limits.timeout` after the start, or earlier for a render tried inline
    /// first (see [`worker`](super::worker)).
    pub deadline: Instant,
    /// The deadline is an inline time slice, not the template's own.
    pub slice: bool,
}

impl Budget {
    /// The whole of `limits`, from now.
    pub fn starting_now(limits: RenderLimits) -> Budget {
        Budget {
            limits,
            deadline: Instant::now() + limits.timeout,
            slice: false,
        }
    }

    /// A time slice of `slice` from now (at most the template's own timeout).
    pub fn slice(limits: RenderLimits, slice: std::time::Duration) -> Budget {
        Budget {
            limits,
            deadline: Instant::now() + slice.min(limits.timeout),
            slice: slice < limits.timeout,
        }
    }
}

impl Rendered {
    pub fn deps(&self) -> &BTreeSet<Query> {
        match self {
            Rendered::Done { deps, .. }
            | Rendered::Pending { deps, .. }
            | Rendered::Failed { deps, .. } => deps,
        }
    }
}

/// Why a pending template was not written, for the user.
pub fn pending_reason(
    missing: &BTreeSet<Query>,
    waiting: &[String],
    last_error: Option<&str>,
) -> String {
    let mut parts: Vec<String> = waiting.to_vec();
    if !missing.is_empty() {
        let qs: Vec<String> = missing.iter().map(|q| q.to_string()).collect();
        parts.push(format!("no data yet for {}", qs.join(", ")));
    }
    if let Some(e) = last_error {
        parts.push(format!("last catalog error: {e}"));
    }
    parts.join("; ")
}

/// The largest template or partial read.
const MAX_TEMPLATE: u64 = 16 << 20;

/// Reads a template named in the config (any path the config's author chose), refusing a FIFO
/// or device without blocking on it.
fn read_template(path: &Path) -> Result<String, String> {
    let bytes = crate::confined::read_path(path, MAX_TEMPLATE).map_err(|e| match e {
        crate::confined::Refused::NotFound => "cannot read: no such file".to_string(),
        other => format!("cannot read: {other}"),
    })?;
    String::from_utf8(bytes).map_err(|_| "cannot read: not UTF-8 text".to_string())
}

/// Reads a partial beside a template: a regular file inside `dir` (symlinks that stay inside
/// are followed). `Ok(None)`: a directory or gone, not a partial.
fn read_partial(dir: &Path, path: &Path) -> Result<Option<String>, String> {
    use crate::confined::{Refused, open_dir, read_beneath};
    use std::os::fd::AsFd;
    let Some(name) = path.file_name() else {
        return Ok(None);
    };
    let d = open_dir(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let mut buf = Vec::new();
    match read_beneath(d.as_fd(), Path::new(name), MAX_TEMPLATE, &mut buf) {
        Ok(()) => String::from_utf8(buf)
            .map(Some)
            .map_err(|_| "partial is not UTF-8 text".to_string()),
        Err(Refused::NotFound) | Err(Refused::NotRegular("a directory")) => Ok(None),
        Err(Refused::Escapes(_)) => Err(format!(
            "refused: a symlink leads out of the template directory {}; partials are read only from inside it",
            dir.display()
        )),
        Err(e) => Err(format!("refused: {e}")),
    }
}

/// `message`, then where: ` --> FILE:LINE:COL`, the line and a caret (as Tera shows its own
/// errors).
fn located(file: &str, text: &str, offset: usize, message: &str) -> String {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let width = line.to_string().len();
    format!(
        "{message}\n{pad} --> {file}:{line}:{col}\n{pad} |\n{line} | {line_text}\n{pad} | {caret}^",
        pad = " ".repeat(width),
        caret = " ".repeat(col - 1),
    )
}

/// A template that failed to load (syntax error, unreadable file).
#[derive(Debug, Clone, thiserror::Error)]
#[error("template {source_path}: {message}")]
pub struct LoadError {
    pub source_path: PathBuf,
    pub message: String,
}

/// Every configured template, parsed once.
pub struct Engine {
    tera: Tera,
    /// template name → Tera name (the source path).
    names: BTreeMap<String, String>,
}

struct RenderCtx {
    snapshot: Arc<Snapshot>,
    deps: BTreeSet<Query>,
    missing: BTreeSet<Query>,
    waiting: Vec<String>,
    budget: Budget,
    /// Set by [`interrupt`] when it stopped the render.
    stopped: Option<Limit>,
}

thread_local! {
    static CTX: RefCell<Option<RenderCtx>> = const { RefCell::new(None) };
}

impl Engine {
    /// Reads and parses every template (and the `*.tera` partials beside them).
    /// All problems are returned, each naming the file and line. `backend` is the catalog's
    /// name (`Backend::name`): on any but `"consul"`, `nodes()`, `datacenters()` and `dc=`
    /// are problems too.
    pub fn load(templates: &[TemplateConfig], backend: &str) -> Result<Engine, Vec<LoadError>> {
        let mut tera = Tera::default();
        tera.autoescape_on(Vec::<&'static str>::new());
        let dirs: BTreeSet<PathBuf> = templates
            .iter()
            .filter_map(|t| t.source.parent().map(Path::to_path_buf))
            .collect();
        let prefixes: Vec<String> = dirs.iter().map(|d| format!("{}/", d.display())).collect();
        tera.set_fallback_prefixes(prefixes)
            .expect("fallback prefixes are set before any template is added");
        tera.set_interrupt(Some(interrupt));
        functions::register(&mut tera);

        let mut errors = Vec::new();
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        let mut names = BTreeMap::new();
        for t in templates {
            let key = t.source.display().to_string();
            names.insert(t.name.clone(), key.clone());
            if sources.contains_key(&key) {
                continue;
            }
            match read_template(&t.source) {
                Ok(text) => {
                    sources.insert(key, text);
                }
                Err(message) => errors.push(LoadError {
                    source_path: t.source.clone(),
                    message,
                }),
            }
        }
        // Partials: `*.tera` files beside the templates, includable by their file name. Only
        // regular files inside the directory: a partial linked to a file elsewhere (say,
        // /etc/shadow) would put that file into a config.
        for dir in &dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut partials: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "tera")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            partials.sort();
            for p in partials {
                let key = p.display().to_string();
                if sources.contains_key(&key) {
                    continue;
                }
                match read_partial(dir, &p) {
                    Ok(Some(text)) => {
                        sources.insert(key, text);
                    }
                    Ok(None) => {}
                    Err(message) => errors.push(LoadError {
                        source_path: p.clone(),
                        message,
                    }),
                }
            }
        }
        // Parse one by one to report every broken file, then all together so includes resolve.
        for (name, text) in &sources {
            for m in functions::misspelt_arguments(text) {
                errors.push(LoadError {
                    source_path: PathBuf::from(name),
                    message: located(name, text, m.offset, &m.message()),
                });
            }
            if backend != "consul" {
                for (offset, message) in functions::consul_only_calls(text, backend) {
                    errors.push(LoadError {
                        source_path: PathBuf::from(name),
                        message: located(name, text, offset, &message),
                    });
                }
            }
            let mut probe = Tera::default();
            functions::register(&mut probe);
            if let Err(e) = probe.add_raw_template(name, text) {
                let mut message = tera_error_text(&e);
                if looks_like_go_template(text) {
                    message.push_str(
                        "\n  hint: this looks like a consul-template (Go) template; `rewire import \
                         consul-template` converts one, and docs/migrating.md gives each \
                         function's Tera form",
                    );
                }
                // Missing includes are fine alone; the full set below decides.
                if !message.contains("not found") && !message.contains("Unknown template") {
                    errors.push(LoadError {
                        source_path: PathBuf::from(name),
                        message,
                    });
                }
            }
        }
        if errors.is_empty()
            && let Err(e) =
                tera.add_raw_templates(sources.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        {
            let mut message = tera_error_text(&e);
            if message.contains("Unknown template") {
                message.push_str(
                    "\n  hint: an include names a `*.tera` file in the template's own directory, \
                     by file name ({% include \"_upstreams.tera\" %}); subdirectories are not read",
                );
            }
            errors.push(LoadError {
                source_path: templates
                    .first()
                    .map(|t| t.source.clone())
                    .unwrap_or_default(),
                message,
            });
        }
        if errors.is_empty() {
            return Ok(Engine { tera, names });
        }
        // A broken `*.tera` file beside the templates that none of them includes must not stop
        // them all: without it, the rest must load (a template that includes it fails with
        // "not found", and then the partial's own errors are what the user needs to see).
        let configured: BTreeSet<&String> = names.values().collect();
        let broken: BTreeSet<String> = errors
            .iter()
            .map(|e| e.source_path.display().to_string())
            .collect();
        if broken.iter().all(|b| !configured.contains(b))
            && tera
                .add_raw_templates(
                    sources
                        .iter()
                        .filter(|(k, _)| !broken.contains(*k))
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                )
                .is_ok()
        {
            for e in &errors {
                tracing::warn!(
                    file = %e.source_path.display(),
                    "a *.tera file beside the templates has errors; no template includes it, so it is left out: {}",
                    e.message
                );
            }
            return Ok(Engine { tera, names });
        }
        Err(errors)
    }

    /// Renders one template against a snapshot with the default limits (tests, benchmarks).
    pub fn render(&self, name: &str, snapshot: &Arc<Snapshot>) -> Rendered {
        let budget = Budget::starting_now(crate::config::DEFAULT_RENDER_LIMITS);
        self.render_within(name, snapshot, budget)
    }

    /// Renders one template against a snapshot, stopping at the budget's deadline or when the
    /// output passes its size (then [`Rendered::Failed`] with `limit` set).
    pub fn render_within(&self, name: &str, snapshot: &Arc<Snapshot>, budget: Budget) -> Rendered {
        let Some(tera_name) = self.names.get(name) else {
            return Rendered::Failed {
                deps: BTreeSet::new(),
                error: format!("no template named {name:?}"),
                limit: None,
            };
        };
        CTX.with(|c| {
            *c.borrow_mut() = Some(RenderCtx {
                snapshot: snapshot.clone(),
                deps: BTreeSet::new(),
                missing: BTreeSet::new(),
                waiting: Vec::new(),
                budget,
                stopped: None,
            })
        });
        let mut out = Bounded {
            bytes: Vec::new(),
            max: budget.limits.max_output,
            over: false,
        };
        let result = self.tera.render_to(tera_name, &Context::new(), &mut out);
        let ctx = CTX
            .with(|c| c.borrow_mut().take())
            .expect("render context was set above");
        let stopped = if out.over {
            Some(Limit::Output)
        } else {
            ctx.stopped
        };
        if let Some(limit) = stopped {
            return Rendered::Failed {
                deps: ctx.deps,
                error: stopped_text(limit, &budget),
                limit: Some(limit),
            };
        }
        if !ctx.missing.is_empty() || !ctx.waiting.is_empty() {
            return Rendered::Pending {
                deps: ctx.deps,
                missing: ctx.missing,
                waiting: ctx.waiting,
            };
        }
        match result.and_then(|()| String::from_utf8(out.bytes).map_err(tera::Error::from)) {
            Ok(text) => Rendered::Done {
                text,
                deps: ctx.deps,
            },
            Err(e) => Rendered::Failed {
                deps: ctx.deps,
                error: tera_error_text(&e),
                limit: None,
            },
        }
    }
}

/// The error for a render a limit stopped: which limit, and what to do about it.
fn stopped_text(limit: Limit, budget: &Budget) -> String {
    match limit {
        Limit::Time if !budget.slice => format!(
            "render stopped after {} (render_timeout): a loop that never ends, or more work than one render should do? Fix the template, or raise render_timeout for it",
            humantime::format_duration(budget.limits.timeout)
        ),
        Limit::Time => "render stopped at its inline time slice".to_string(),
        Limit::Output => format!(
            "render stopped: its output passed {} bytes (max_output): a loop that prints without end? Fix the template, or raise max_output for it",
            budget.limits.max_output
        ),
    }
}

/// The writer a render prints into: refuses bytes past `max` (Tera then stops with an I/O
/// error, which [`Engine::render_within`] reports as the limit).
struct Bounded {
    bytes: Vec<u8>,
    max: u64,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.max {
            self.over = true;
            return Err(std::io::Error::other("max_output reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tera's VM asks this every 1024 instructions (vendor/tera): stop when the render's deadline
/// has passed, or when text captured by `{% set %}` blocks (which never reaches the writer)
/// grew past the output limit. Renders outside [`Engine::render_within`] are never stopped.
fn interrupt(captured: usize) -> bool {
    CTX.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return false;
        };
        let Some(ctx) = c.as_mut() else {
            return false;
        };
        let limit = if captured as u64 > ctx.budget.limits.max_output {
            Limit::Output
        } else if Instant::now() >= ctx.budget.deadline {
            Limit::Time
        } else {
            return false;
        };
        ctx.stopped = Some(limit);
        true
    })
}

/// Tera's error with its causes, as one text (the report names the file and line).
pub fn tera_error_text(e: &tera::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    text
}

/// Looks a query up in the current snapshot, recording it as a dependency.
/// `blocking`: whether an unknown answer keeps the template from being written.
pub(super) fn lookup(query: Query, blocking: bool) -> Option<Arc<Entry>> {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        let ctx = c.as_mut()?;
        ctx.deps.insert(query.clone());
        let found = ctx.snapshot.get(&query).cloned();
        if found.is_none() && blocking {
            ctx.missing.insert(query);
        }
        found
    })
}

pub(super) fn wait_for(reason: String) {
    CTX.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.waiting.push(reason);
        }
    });
}

/// Whether a template that Tera refused holds Go template actions (`{{ range ... }}`,
/// `{{ end }}`, `{{ .Address }}`, `{{ keyOrDefault ... }}`): someone migrating from
/// consul-template then needs a pointer to the converter more than Tera's parse error.
fn looks_like_go_template(text: &str) -> bool {
    const GO: [&str; 12] = [
        "range ",
        "end",
        "with ",
        "else",
        ".",
        "key ",
        "keyOrDefault ",
        "service ",
        "printf ",
        "ls ",
        "tree ",
        "env ",
    ];
    text.match_indices("{{").any(|(i, _)| {
        let action = text[i + 2..].trim_start_matches('-').trim_start();
        GO.iter().any(|g| {
            action.starts_with(g)
                && (!matches!(*g, "end" | "else")
                    || action[g.len()..].trim_start().starts_with(['}', '-']))
        })
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{CheckMode, DEFAULT_WAIT, WriteMode};
    use crate::model::{Data, Instance, Status};
    use crate::store::Store;

    pub(crate) fn engine_for(dir: &Path, files: &[(&str, &str)]) -> Result<Engine, Vec<LoadError>> {
        engine_on(dir, files, "dir")
    }

    fn engine_on(
        dir: &Path,
        files: &[(&str, &str)],
        backend: &str,
    ) -> Result<Engine, Vec<LoadError>> {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let templates: Vec<TemplateConfig> = files
            .iter()
            .filter(|(n, _)| !n.starts_with('_'))
            .map(|(n, _)| TemplateConfig {
                name: n.to_string(),
                source: dir.join(n),
                destination: dir.join(format!("{n}.out")),
                perms: None,
                check: None,
                check_mode: CheckMode::Temp,
                reload: None,
                wait: DEFAULT_WAIT,
                write: WriteMode::Atomic,
                backup: false,
                runtime: None,
                limits: crate::config::DEFAULT_RENDER_LIMITS,
            })
            .collect();
        Engine::load(&templates, backend)
    }

    fn arcs(list: Vec<Instance>) -> Vec<Arc<Instance>> {
        list.into_iter().map(Arc::new).collect()
    }

    fn inst(id: &str, addr: &str, port: u16, tags: &[&str], status: Status) -> Instance {
        Instance {
            id: id.into(),
            name: "web".into(),
            node: "n1".into(),
            address: addr.into(),
            port,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: BTreeMap::new(),
            status,
        }
    }

    #[test]
    fn discovers_every_missing_query_in_one_pass_then_renders() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[(
                "t",
                "{% for s in service(name=\"web\") %}{{ s | addr_port }};{% endfor %}{{ key(path=\"app/x\") }}|{{ key(path=\"app/y\", default=\"dy\") }}",
            )],
        )
        .unwrap();
        let store = Store::new();
        let Rendered::Pending { missing, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(
            missing,
            BTreeSet::from([
                Query::Service("web".into()),
                Query::Key("app/x".into()),
                Query::Key("app/y".into())
            ])
        );
        store.update(
            Query::Service("web".into()),
            Data::Instances(arcs(vec![
                inst("b", "::1", 81, &[], Status::Passing),
                inst("a", "10.0.0.1", 80, &[], Status::Passing),
                inst("c", "10.0.0.2", 80, &[], Status::Critical),
            ])),
        );
        store.update(Query::Key("app/x".into()), Data::Key(Some("X".into())));
        store.update(Query::Key("app/y".into()), Data::Key(None));
        let Rendered::Done { text, deps } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "10.0.0.1:80;[::1]:81;X|dy");
        assert!(deps.contains(&Query::Key("app/y".into())));
    }

    const REMOTE: &str = "{% for s in service(name=\"web\", dc=\"east\") %}{{ s.address }};{% endfor %}\n\
        {% for n in nodes() %}{{ n.node }}={{ n.tagged_addresses.wan }};{% endfor %}\n\
        {{ datacenters() | join(sep=\",\") }}|{{ key(path=\"a\", dc=\"\") }}";

    #[test]
    fn datacenters_and_nodes_are_refused_on_other_catalogs_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let errors = match engine_on(dir.path(), &[("t", REMOTE)], "etcd") {
            Err(errors) => errors,
            Ok(_) => panic!("etcd cannot answer dc= or nodes()"),
        };
        let text: Vec<String> = errors.iter().map(|e| e.message.clone()).collect();
        assert_eq!(errors.len(), 4, "{text:#?}");
        assert!(
            text[0].contains(":1:") && text[0].contains("service(dc=...)"),
            "{text:#?}"
        );
        assert!(
            text[0].contains("etcd catalog has no datacenters"),
            "{text:#?}"
        );
        assert!(
            text[1].contains(":2:") && text[1].contains("nodes()"),
            "{text:#?}"
        );
        assert!(
            text[2].contains(":3:") && text[2].contains("datacenters()"),
            "{text:#?}"
        );
        assert!(
            text[3].contains(":3:") && text[3].contains("key(dc=...)"),
            "{text:#?}"
        );
        assert!(engine_on(dir.path(), &[("t", REMOTE)], "consul").is_ok());
    }

    #[test]
    fn a_datacenter_is_part_of_the_query_and_nodes_and_datacenters_render() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_on(dir.path(), &[("t", REMOTE)], "consul").unwrap();
        let store = Store::new();
        let Rendered::Pending { missing, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        let east = Query::Service("web".into()).in_datacenter(Some("east".into()));
        // dc="" is the catalog's own datacenter: a plain key query.
        assert_eq!(
            missing,
            BTreeSet::from([
                east.clone(),
                Query::Nodes,
                Query::Datacenters,
                Query::Key("a".into())
            ])
        );
        // The local service's answer does not answer the remote one.
        store.update(
            Query::Service("web".into()),
            Data::Instances(arcs(vec![inst("l", "10.0.0.1", 80, &[], Status::Passing)])),
        );
        store.update(
            east,
            Data::Instances(arcs(vec![inst("r", "10.9.0.1", 80, &[], Status::Passing)])),
        );
        let node = crate::model::Node {
            id: "n-1".into(),
            name: "n1".into(),
            address: "10.0.0.9".into(),
            datacenter: "dc1".into(),
            tagged_addresses: BTreeMap::from([("wan".into(), "1.2.3.4".into())]),
            meta: BTreeMap::new(),
        };
        store.update(Query::Nodes, Data::Nodes(vec![node]));
        store.update(
            Query::Datacenters,
            Data::Datacenters(vec!["dc1".into(), "east".into()]),
        );
        store.update(Query::Key("a".into()), Data::Key(Some("A".into())));
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "10.9.0.1;\nn1=1.2.3.4;\ndc1,east|A");
    }

    #[test]
    fn missing_key_without_default_blocks_render() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(dir.path(), &[("t", "{{ key(path=\"a\") }}")]).unwrap();
        let store = Store::new();
        store.update(Query::Key("a".into()), Data::Key(None));
        let Rendered::Pending {
            waiting, missing, ..
        } = engine.render("t", &store.snapshot())
        else {
            panic!()
        };
        assert!(missing.is_empty());
        assert!(waiting[0].contains("key \"a\" does not exist"));
    }

    #[test]
    fn a_key_default_stands_in_only_for_an_absent_key_not_for_no_answer() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[("t", "mode={{ key(path=\"a\", default=\"x\") }}")],
        )
        .unwrap();
        let store = Store::new();
        // The catalog has not answered (unreachable, connecting): not written.
        let Rendered::Pending { missing, .. } = engine.render("t", &store.snapshot()) else {
            panic!("rendered without an answer")
        };
        assert!(missing.contains(&Query::Key("a".into())));
        store.update(Query::Key("a".into()), Data::Key(None));
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "mode=x");
        store.update(Query::Key("a".into()), Data::Key(Some("real".into())));
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "mode=real");
    }

    #[test]
    fn status_and_tag_filters() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[(
                "t",
                "{{ service(name=\"web\") | length }} {{ service(name=\"web\", status=\"any\") | length }} {{ service(name=\"web\", tag=\"v2\") | length }} {{ service(name=\"web\", status=\"any\") | by_tag(tag=\"v2\") | length }} {{ service(name=\"web\", status=\"passing,critical\") | length }}",
            )],
        )
        .unwrap();
        let store = Store::new();
        store.update(
            Query::Service("web".into()),
            Data::Instances(arcs(vec![
                inst("a", "10.0.0.1", 80, &["v2"], Status::Passing),
                inst("b", "10.0.0.2", 80, &["v1"], Status::Passing),
                inst("c", "10.0.0.3", 80, &["v2"], Status::Critical),
                inst("d", "10.0.0.4", 80, &[], Status::Warning),
            ])),
        );
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "2 4 1 2 3");
        // A misspelt argument is refused when the template loads, with its place.
        let errs = engine_for(
            dir.path(),
            &[("u", "{{ service(name=\"web\", stauts=\"any\") | length }}")],
        )
        .err()
        .expect("a misspelt argument is refused at load");
        assert!(
            errs[0]
                .message
                .contains("no argument `stauts`; did you mean `status`?")
        );
        assert!(errs[0].message.contains("/u:1:24"), "{}", errs[0].message);
        // A bad status value is a render error, not a silent default.
        let t = "{{ service(name=\"web\", status=\"bogus\") | length }}";
        let engine = engine_for(dir.path(), &[("u", t)]).unwrap();
        let Rendered::Failed { error, .. } = engine.render("u", &store.snapshot()) else {
            panic!("{t} rendered")
        };
        assert!(error.contains("\"any\""), "{error}");
        // So is a service name no catalog can hold, such as consul-template's "web|any".
        let t = "{{ service(name=\"web|any\") | length }}";
        let engine = engine_for(dir.path(), &[("u", t)]).unwrap();
        let Rendered::Failed { error, .. } = engine.render("u", &store.snapshot()) else {
            panic!("{t} rendered")
        };
        assert!(
            error.contains("service(name=\"web\", status=\"any\")"),
            "{error}"
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line_for_every_template() {
        let dir = tempfile::tempdir().unwrap();
        let errs = engine_for(
            dir.path(),
            &[("a", "ok\n{% if %}"), ("b", "{{ x"), ("c", "fine")],
        )
        .err()
        .expect("broken templates are rejected");
        assert_eq!(errs.len(), 2, "{errs:?}");
        let a = errs[0].to_string();
        assert!(
            a.contains(&dir.path().join("a").display().to_string()),
            "{a}"
        );
        assert!(a.contains(":2:"), "{a}");
    }

    #[test]
    fn a_broken_partial_stops_only_the_templates_that_include_it() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[("_broken.tera", "{% if %}"), ("main", "fine")],
        )
        .expect("main does not include the broken file");
        let Rendered::Done { text, .. } = engine.render("main", &Store::new().snapshot()) else {
            panic!()
        };
        assert_eq!(text, "fine");
        let dir = tempfile::tempdir().unwrap();
        let errs = engine_for(
            dir.path(),
            &[
                ("_broken.tera", "{% if %}"),
                ("main", "{% include \"_broken.tera\" %}"),
            ],
        )
        .err()
        .expect("main includes it");
        assert!(errs[0].to_string().contains("_broken.tera:1:"), "{errs:?}");
    }

    #[test]
    fn partials_are_included_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[
                ("_up.tera", "[{{ key(path=\"k\", default=\"d\") }}]"),
                ("main", "{% include \"_up.tera\" %}"),
            ],
        )
        .unwrap();
        let store = Store::new();
        store.update(Query::Key("k".into()), Data::Key(None));
        let Rendered::Done { text, .. } = engine.render("main", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "[d]");
    }

    #[test]
    fn go_template_actions_are_recognised() {
        for go in [
            "{{ range service \"web\" }}x{{ end }}",
            "{{- .Address }}",
            "{{ keyOrDefault \"a\" \"b\" }}",
            "{{ if x }}{{ else }}{{ end }}",
        ] {
            assert!(looks_like_go_template(go), "{go}");
        }
        for tera in [
            "{{ service(name=\"web\") | length }}",
            "{% for s in x %}{{ s.address }}{% endfor %}",
            "{{ endpoint }}{{ elsewhere }}",
        ] {
            assert!(!looks_like_go_template(tera), "{tera}");
        }
    }

    #[test]
    fn an_include_of_a_subdirectory_gets_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let Err(errors) = engine_for(dir.path(), &[("main", "{% include \"sub/p.tera\" %}")])
        else {
            panic!("an unknown include loaded")
        };
        let text: String = errors.iter().map(|e| e.message.clone()).collect();
        assert!(
            text.contains("Unknown template") && text.contains("subdirectories are not read"),
            "{text}"
        );
    }

    #[test]
    fn identical_data_renders_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(
            dir.path(),
            &[("t", "{% for s in service(name=\"web\") %}{{ s.id }}{% for k, v in s.meta %}{{k}}={{v}},{% endfor %};{% endfor %}")],
        )
        .unwrap();
        let mk = |order: &[usize]| {
            let mut list: Vec<Instance> = (0..20)
                .map(|n| {
                    let mut i = inst(
                        &format!("i{n}"),
                        &format!("10.0.0.{n}"),
                        80,
                        &[],
                        Status::Passing,
                    );
                    i.meta = (0..5).map(|m| (format!("k{m}"), format!("v{m}"))).collect();
                    i
                })
                .collect();
            list = order.iter().map(|&n| list[n].clone()).collect();
            let store = Store::new();
            store.update(Query::Service("web".into()), Data::Instances(arcs(list)));
            match engine.render("t", &store.snapshot()) {
                Rendered::Done { text, .. } => text,
                other => panic!("{other:?}"),
            }
        };
        let forward: Vec<usize> = (0..20).collect();
        let backward: Vec<usize> = (0..20).rev().collect();
        assert_eq!(mk(&forward), mk(&backward));
    }

    #[test]
    fn unchanged_instances_keep_their_converted_values_across_changes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_for(dir.path(), &[("t", "{% for s in service(name=\"web\") %}{{ s | addr_port }} {{ s.status }};{% endfor %}")]).unwrap();
        let store = Store::new();
        let q = Query::Service("web".into());
        let list = vec![
            inst("a", "10.0.0.1", 80, &[], Status::Passing),
            inst("b", "10.0.0.2", 80, &[], Status::Passing),
        ];
        store.update(q.clone(), Data::Instances(arcs(list.clone())));
        assert!(matches!(
            engine.render("t", &store.snapshot()),
            Rendered::Done { .. }
        ));
        let mut changed = list.clone();
        changed[1].status = Status::Warning;
        changed.push(inst("c", "10.0.0.3", 80, &[], Status::Passing));
        store.update(q.clone(), Data::Instances(arcs(changed.clone())));
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        // b is now warning (filtered out), c is new: reused and fresh values mix correctly.
        assert_eq!(text, "10.0.0.1:80 passing;10.0.0.3:80 passing;");
        // a moves behind c (a new port sorts it last): the walk must not hand out a stale value.
        let mut moved = changed.clone();
        moved[0].address = "10.0.0.9".into();
        store.update(q.clone(), Data::Instances(arcs(moved)));
        let Rendered::Done { text, .. } = engine.render("t", &store.snapshot()) else {
            panic!()
        };
        assert_eq!(text, "10.0.0.3:80 passing;10.0.0.9:80 passing;");
        let snap = store.snapshot();
        let e = snap.get(&q).unwrap();
        assert!(
            e.take_previous().is_none(),
            "the previous link is dropped after conversion"
        );
    }
}
