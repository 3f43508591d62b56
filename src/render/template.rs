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
//! The functions are registered once; rendering borrows the engine, so templates render
//! concurrently on several threads without cloning Tera.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tera::{Context, Kwargs, State, Tera, TeraResult, Value};

use crate::config::TemplateConfig;
use crate::model::{Data, Instance, Query, Status};
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
    },
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
}

thread_local! {
    static CTX: RefCell<Option<RenderCtx>> = const { RefCell::new(None) };
}

impl Engine {
    /// Reads and parses every template (and the `*.tera` partials beside them).
    /// All problems are returned, each naming the file and line.
    pub fn load(templates: &[TemplateConfig]) -> Result<Engine, Vec<LoadError>> {
        let mut tera = Tera::default();
        tera.autoescape_on(Vec::<&'static str>::new());
        let dirs: BTreeSet<PathBuf> = templates
            .iter()
            .filter_map(|t| t.source.parent().map(Path::to_path_buf))
            .collect();
        let prefixes: Vec<String> = dirs.iter().map(|d| format!("{}/", d.display())).collect();
        tera.set_fallback_prefixes(prefixes)
            .expect("fallback prefixes are set before any template is added");
        register(&mut tera);

        let mut errors = Vec::new();
        let mut sources: BTreeMap<String, String> = BTreeMap::new();
        let mut names = BTreeMap::new();
        for t in templates {
            let key = t.source.display().to_string();
            names.insert(t.name.clone(), key.clone());
            if sources.contains_key(&key) {
                continue;
            }
            match std::fs::read_to_string(&t.source) {
                Ok(text) => {
                    sources.insert(key, text);
                }
                Err(e) => errors.push(LoadError {
                    source_path: t.source.clone(),
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        // Partials: `*.tera` files beside the templates, includable by their file name.
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
                        && p.is_file()
                })
                .collect();
            partials.sort();
            for p in partials {
                let key = p.display().to_string();
                if sources.contains_key(&key) {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(&p) {
                    sources.insert(key, text);
                }
            }
        }
        // Parse one by one to report every broken file, then all together so includes resolve.
        for (name, text) in &sources {
            let mut probe = Tera::default();
            register(&mut probe);
            if let Err(e) = probe.add_raw_template(name, text) {
                let message = tera_error_text(&e);
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
            errors.push(LoadError {
                source_path: templates
                    .first()
                    .map(|t| t.source.clone())
                    .unwrap_or_default(),
                message: tera_error_text(&e),
            });
        }
        if errors.is_empty() {
            Ok(Engine { tera, names })
        } else {
            Err(errors)
        }
    }

    /// Renders one template against a snapshot.
    pub fn render(&self, name: &str, snapshot: &Arc<Snapshot>) -> Rendered {
        let Some(tera_name) = self.names.get(name) else {
            return Rendered::Failed {
                deps: BTreeSet::new(),
                error: format!("no template named {name:?}"),
            };
        };
        CTX.with(|c| {
            *c.borrow_mut() = Some(RenderCtx {
                snapshot: snapshot.clone(),
                deps: BTreeSet::new(),
                missing: BTreeSet::new(),
                waiting: Vec::new(),
            })
        });
        let result = self.tera.render(tera_name, &Context::new());
        let ctx = CTX
            .with(|c| c.borrow_mut().take())
            .expect("render context was set above");
        if !ctx.missing.is_empty() || !ctx.waiting.is_empty() {
            return Rendered::Pending {
                deps: ctx.deps,
                missing: ctx.missing,
                waiting: ctx.waiting,
            };
        }
        match result {
            Ok(text) => Rendered::Done {
                text,
                deps: ctx.deps,
            },
            Err(e) => Rendered::Failed {
                deps: ctx.deps,
                error: tera_error_text(&e),
            },
        }
    }
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

fn register(tera: &mut Tera) {
    tera.register_function("service", fn_service);
    tera.register_function("services", fn_services);
    tera.register_function("key", fn_key);
    tera.register_function("keys", fn_keys);
    tera.register_function("env", fn_env);
    tera.register_filter("by_tag", filter_by_tag);
    tera.register_filter("nginx_quote", filter_nginx_quote);
    tera.register_filter("haproxy_quote", filter_haproxy_quote);
    tera.register_filter("addr_port", filter_addr_port);
    tera.register_filter("json_encode", tera_contrib::json::json_encode);
    tera.register_filter("b64_encode", tera_contrib::base64::b64_encode);
    tera.register_filter("b64_decode", tera_contrib::base64::b64_decode);
    tera.register_filter("urlencode", tera_contrib::urlencode::urlencode);
    tera.register_filter(
        "urlencode_strict",
        tera_contrib::urlencode::urlencode_strict,
    );
    tera.register_filter(
        "regex_replace",
        tera_contrib::regex::RegexReplace::default(),
    );
    tera.register_filter("striptags", tera_contrib::regex::striptags);
    tera.register_test("matching", tera_contrib::regex::Matching::default());
}

/// Looks a query up in the current snapshot, recording it as a dependency.
/// `blocking`: whether an unknown answer keeps the template from being written.
fn lookup(query: Query, blocking: bool) -> Option<Arc<Entry>> {
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

fn wait_for(reason: String) {
    CTX.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.waiting.push(reason);
        }
    });
}

/// The template view of an entry, converted once per entry and cached in its slot.
fn entry_value(entry: &Entry) -> &Value {
    let slot = entry.derived.get_or_init(|| {
        let previous = entry.take_previous();
        let value = match (
            &entry.data,
            previous
                .as_ref()
                .and_then(|p| Some((&p.data, cached_value(p)?))),
        ) {
            (Data::Instances(list), Some((Data::Instances(old), old_values))) => {
                instances_value_reusing(list, old, old_values)
            }
            _ => data_value(&entry.data),
        };
        Box::new(value)
    });
    slot.downcast_ref::<Value>()
        .expect("only the template engine fills an entry's derived slot, with a tera::Value")
}

/// An entry's converted value, if a render has converted it.
fn cached_value(entry: &Entry) -> Option<&Value> {
    entry.derived.get()?.downcast_ref::<Value>()
}

/// Converts instances, reusing the converted value of every instance unchanged since the
/// previous answer. Both lists are in template order (the store normalizes them) and an
/// instance's sort key is unique within a service, so one merge walk finds each instance's old
/// self. Backends that keep their instances (etcd's mirror, the dir tree) hand over the very
/// same `Arc`, which compares by address; Consul's fresh answers compare field by field.
fn instances_value_reusing(
    list: &[Arc<Instance>],
    old: &[Arc<Instance>],
    old_values: &Value,
) -> Value {
    let Some(old_values) = old_values.as_array().filter(|v| v.len() == old.len()) else {
        return data_value_of(list);
    };
    let mut j = 0;
    Value::from(
        list.iter()
            .map(|inst| {
                while j < old.len() && old[j].sort_key() < inst.sort_key() {
                    j += 1;
                }
                match old.get(j) {
                    Some(o) if Arc::ptr_eq(o, inst) || **o == **inst => old_values[j].clone(),
                    _ => instance_value(inst),
                }
            })
            .collect::<Vec<_>>(),
    )
}

fn data_value_of(list: &[Arc<Instance>]) -> Value {
    instances_value(list)
}

pub fn data_value(data: &Data) -> Value {
    match data {
        Data::Instances(list) => data_value_of(list),
        Data::Services(list) => Value::from(
            list.iter()
                .map(|s| {
                    let mut m = BTreeMap::new();
                    m.insert("name".to_string(), Value::from(s.name.as_str()));
                    m.insert(
                        "tags".to_string(),
                        Value::from(
                            s.tags
                                .iter()
                                .map(|t| Value::from(t.as_str()))
                                .collect::<Vec<_>>(),
                        ),
                    );
                    Value::from(m)
                })
                .collect::<Vec<_>>(),
        ),
        Data::Key(v) => Value::from(v.clone().unwrap_or_default()),
        Data::Keys(list) => Value::from(
            list.iter()
                .map(|kv| {
                    let mut m = BTreeMap::new();
                    m.insert("path".to_string(), Value::from(kv.path.as_str()));
                    m.insert("value".to_string(), Value::from(kv.value.as_str()));
                    Value::from(m)
                })
                .collect::<Vec<_>>(),
        ),
    }
}

/// Lists at least this long are converted on several threads (a fresh start with thousands of
/// instances; in the daemon a change converts only the instances that changed).
const PARALLEL_CONVERT: usize = 2048;

fn instances_value(list: &[Arc<Instance>]) -> Value {
    let threads = if list.len() < PARALLEL_CONVERT {
        1
    } else {
        // Not asked for small lists: it reads cgroup files.
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    if threads < 2 {
        return Value::from(list.iter().map(|i| instance_value(i)).collect::<Vec<_>>());
    }
    let chunk = list.len().div_ceil(threads);
    let values: Vec<Value> = std::thread::scope(|s| {
        let parts: Vec<_> = list
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(|i| instance_value(i)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    Value::from(values)
}

/// One instance as templates see it. This runs once per instance per change (10 000 times at
/// a fresh start), so it avoids allocations it can: static keys, short strings inline in the
/// value, one shared value for the common empty `meta` and `tags`.
fn instance_value(i: &Instance) -> Value {
    thread_local! {
        static EMPTY_MAP: Value = Value::from(tera::Map::new());
        static EMPTY_LIST: Value = Value::from(Vec::<Value>::new());
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    let mut m: indexmap::IndexMap<&'static str, Value> = indexmap::IndexMap::with_capacity(10);
    m.insert("address", Value::from(i.address.as_str()));
    m.insert(
        "addr_port",
        SCRATCH.with_borrow_mut(|s| {
            s.clear();
            write_addr_port(s, &i.address, u64::from(i.port));
            Value::from(s.as_str())
        }),
    );
    m.insert("id", Value::from(i.id.as_str()));
    let meta = if i.meta.is_empty() {
        EMPTY_MAP.with(Value::clone)
    } else {
        let meta: tera::Map = i
            .meta
            .iter()
            .map(|(k, v)| {
                (
                    tera::value::Key::String(Arc::from(k.as_str())),
                    Value::from(v.as_str()),
                )
            })
            .collect();
        Value::from(meta)
    };
    m.insert("meta", meta);
    m.insert("name", Value::from(i.name.as_str()));
    m.insert("node", Value::from(i.node.as_str()));
    m.insert("port", Value::from(i.port));
    m.insert("status", Value::from(i.status.as_str()));
    let tags = if i.tags.is_empty() {
        EMPTY_LIST.with(Value::clone)
    } else {
        Value::from(
            i.tags
                .iter()
                .map(|t| Value::from(t.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    m.insert("tags", tags);
    Value::from(m)
}

/// `status="passing"` (default), `"any"`, or a comma list such as `"passing,warning"`.
fn parse_status_filter(s: &str) -> TeraResult<Option<Vec<Status>>> {
    if s == "any" {
        return Ok(None);
    }
    s.split(',')
        .map(|p| {
            p.trim().parse::<Status>().map_err(|_| {
                tera::Error::message(format!(
                    "status={s:?}: use \"passing\" (the default), \"warning\", \"critical\", a list such as \"passing,warning\", or \"any\""
                ))
            })
        })
        .collect::<TeraResult<Vec<_>>>()
        .map(Some)
}

/// Refuses arguments a function does not take: `service(name="web", stauts="any")` would
/// otherwise render only passing instances without a word.
fn only(kwargs: &Kwargs, function: &str, known: &[&str]) -> TeraResult<()> {
    for (key, _) in kwargs.iter() {
        let key = key.as_str().unwrap_or("?");
        if !known.contains(&key) {
            return Err(tera::Error::message(format!(
                "{function}() has no argument `{key}`; it takes {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

fn fn_service(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "service", &["name", "tag", "status"])?;
    let name: String = kwargs.must_get("name")?;
    let tag: Option<String> = kwargs.get("tag")?;
    let status: Option<String> = kwargs.get("status")?;
    let statuses = parse_status_filter(status.as_deref().unwrap_or("passing"))?;
    let Some(entry) = lookup(Query::Service(name), true) else {
        return Ok(Value::from(Vec::<Value>::new()));
    };
    let Data::Instances(list) = &entry.data else {
        return Ok(Value::from(Vec::<Value>::new()));
    };
    let all = entry_value(&entry);
    let keep = |i: &Instance| {
        statuses.as_ref().is_none_or(|s| s.contains(&i.status))
            && tag.as_ref().is_none_or(|t| i.tags.contains(t))
    };
    if list.iter().all(|i| keep(i)) {
        // The common case (every instance healthy): hand out the cached list as it is.
        return Ok(all.clone());
    }
    let values = all.as_array().unwrap_or(&[]);
    Ok(Value::from(
        list.iter()
            .zip(values)
            .filter(|(i, _)| keep(i))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>(),
    ))
}

fn fn_services(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "services", &[])?;
    Ok(lookup(Query::Services, true)
        .map(|e| entry_value(&e).clone())
        .unwrap_or_else(|| Value::from(Vec::<Value>::new())))
}

fn fn_key(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "key", &["path", "default"])?;
    let path: String = kwargs.must_get("path")?;
    let default: Option<Value> = kwargs.get("default")?;
    let path = path.trim_matches('/').to_string();
    // A default stands in for a key the catalog says is absent, never for an answer that has
    // not come (catalog unreachable, still connecting): that would overwrite good data.
    match lookup(Query::Key(path.clone()), true) {
        Some(e) => match (&e.data, default) {
            (Data::Key(Some(v)), _) => Ok(Value::from(v.as_str())),
            (_, Some(d)) => Ok(d),
            (_, None) => {
                wait_for(format!(
                    "key {path:?} does not exist (give key() a default to render without it)"
                ));
                Ok(Value::from(""))
            }
        },
        None => Ok(default.unwrap_or_else(|| Value::from(""))),
    }
}

fn fn_keys(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "keys", &["prefix"])?;
    let prefix: String = kwargs.must_get("prefix")?;
    let prefix = prefix.trim_start_matches('/').to_string();
    let Some(entry) = lookup(Query::Keys(prefix.clone()), true) else {
        return Ok(Value::from(Vec::<Value>::new()));
    };
    let Data::Keys(list) = &entry.data else {
        return Ok(Value::from(Vec::<Value>::new()));
    };
    Ok(Value::from(
        list.iter()
            .map(|kv| {
                let mut m = BTreeMap::new();
                let rel = kv.path.strip_prefix(&prefix).unwrap_or(&kv.path);
                m.insert("key".to_string(), Value::from(rel.trim_start_matches('/')));
                m.insert("path".to_string(), Value::from(kv.path.as_str()));
                m.insert("value".to_string(), Value::from(kv.value.as_str()));
                Value::from(m)
            })
            .collect::<Vec<_>>(),
    ))
}

fn fn_env(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "env", &["name", "default"])?;
    let name: String = kwargs.must_get("name")?;
    let default: Option<Value> = kwargs.get("default")?;
    match (std::env::var(&name), default) {
        (Ok(v), _) => Ok(Value::from(v)),
        (Err(_), Some(d)) => Ok(d),
        (Err(_), None) => Err(tera::Error::message(format!(
            "environment variable {name} is not set: set it, or write env(name=\"{name}\", default=\"...\")"
        ))),
    }
}

fn filter_by_tag(list: Vec<Value>, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "by_tag", &["tag"])?;
    let tag: String = kwargs.must_get("tag")?;
    Ok(Value::from(
        list.into_iter()
            .filter(|v| {
                v.get_from_path("tags")
                    .and_then(|t| t.as_array())
                    .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag.as_str())))
            })
            .collect::<Vec<_>>(),
    ))
}

/// A double-quoted nginx string: backslash, double quote and control characters escaped.
pub fn nginx_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A single-quoted HAProxy string (nothing inside is interpreted); `'` becomes `'\''`.
pub fn haproxy_quote(s: &str) -> String {
    let cleaned: String = s.chars().filter(|c| !c.is_control()).collect();
    format!("'{}'", cleaned.replace('\'', r"'\''"))
}

fn filter_nginx_quote(v: &str, _: Kwargs, _: &State) -> Value {
    Value::safe_string(&nginx_quote(v))
}

fn filter_haproxy_quote(v: &str, _: Kwargs, _: &State) -> Value {
    Value::safe_string(&haproxy_quote(v))
}

/// `host:port`, with IPv6 addresses bracketed: `[::1]:8080`.
pub fn addr_port(addr: &str, port: u64) -> String {
    let mut out = String::with_capacity(addr.len() + 8);
    write_addr_port(&mut out, addr, port);
    out
}

/// `addr:port`, with an IPv6 address in brackets.
fn write_addr_port(out: &mut String, addr: &str, port: u64) {
    use std::fmt::Write;
    let _ = if addr.contains(':') && !addr.starts_with('[') {
        write!(out, "[{addr}]:{port}")
    } else {
        write!(out, "{addr}:{port}")
    };
}

/// `instance | addr_port`, or `"::1" | addr_port(port=80)`.
fn filter_addr_port(v: &Value, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "addr_port", &["port"])?;
    let port_kw: Option<u64> = kwargs.get("port")?;
    if let Some(addr) = v.as_str() {
        let port = port_kw.ok_or_else(|| {
            tera::Error::message(
                "addr_port on a string needs port=..., e.g. \"::1\" | addr_port(port=80)",
            )
        })?;
        return Ok(Value::from(addr_port(addr, port)));
    }
    if port_kw.is_none()
        && let Some(precomputed) = v
            .as_map()
            .and_then(|m| m.get(&tera::value::Key::from("addr_port")))
    {
        return Ok(precomputed.clone());
    }
    let addr = v
        .get_from_path("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| {
            tera::Error::message(
                "addr_port needs an instance (with address and port) or an address string",
            )
        })?;
    let port = port_kw
        .or_else(|| v.get_from_path("port").and_then(|p| p.as_u64()))
        .ok_or_else(|| tera::Error::message("addr_port: the instance has no port"))?;
    Ok(Value::from(addr_port(addr, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CheckMode, DEFAULT_WAIT, WriteMode};
    use crate::store::Store;

    pub(crate) fn engine_for(dir: &Path, files: &[(&str, &str)]) -> Result<Engine, Vec<LoadError>> {
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
            })
            .collect();
        Engine::load(&templates)
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
        // A misspelt argument or status is an error, not a silent default.
        for (t, want) in [
            (
                "{{ service(name=\"web\", stauts=\"any\") | length }}",
                "no argument `stauts`",
            ),
            (
                "{{ service(name=\"web\", status=\"bogus\") | length }}",
                "\"any\"",
            ),
        ] {
            let engine = engine_for(dir.path(), &[("u", t)]).unwrap();
            let Rendered::Failed { error, .. } = engine.render("u", &store.snapshot()) else {
                panic!("{t} rendered")
            };
            assert!(error.contains(want), "{error}");
        }
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
    fn quoting_filters() {
        assert_eq!(nginx_quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(haproxy_quote("it's"), r"'it'\''s'");
        assert_eq!(addr_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(addr_port("fe80::1", 80), "[fe80::1]:80");
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
