//! rewire's template functions and filters, registered on every engine.
//!
//! Functions (`service`, `services`, `key`, `keys`, `nodes`, `datacenters`, `env`, `leader`,
//! `is_leader`) read the store snapshot of the current render (see
//! [`template`](super::template)), never the network; a query without an answer yet is
//! recorded as missing and answered with a placeholder. `nodes`, `datacenters` and a `dc=`
//! argument only work on Consul: the engine refuses them at load time on other catalogs
//! ([`consul_only_calls`]). Filters beyond Tera's core come from `tera-contrib` plus rewire's
//! own quoting and `addr_port`; `matching` and `regex_replace` are tera-contrib's with a cache
//! that stays warm ([`regexes`](super::regexes)). Every function and filter refuses arguments
//! it does not take, so a typo is an error, not a silent default.
//!
//! Catalog data is never trusted, so the filters that put it into a config refuse what could
//! change the config's structure: the quoting filters fail on a newline or any other control
//! character (a new line is a new directive), `addr_port` on an address that is neither an IP
//! nor a hostname. The tests `port`, `listen_address` and `file_path` check a KV setting before
//! a template uses it (`{% if v is not port %}{{ throw(...) }}{% endif %}`).

use std::collections::BTreeMap;

use tera::{Kwargs, State, Tera, TeraResult, Value};

use super::template::{lookup, wait_for};
use super::values::{addr_port, entry_value, holder_value, instance_field};
use crate::model::{Data, ElectionView, Instance, Query, Status};

pub(super) fn register(tera: &mut Tera) {
    tera.register_function("service", fn_service);
    tera.register_function("services", fn_services);
    tera.register_function("key", fn_key);
    tera.register_function("keys", fn_keys);
    tera.register_function("nodes", fn_nodes);
    tera.register_function("datacenters", fn_datacenters);
    tera.register_function("env", fn_env);
    tera.register_function("throw", fn_throw);
    tera.register_function("leader", fn_leader);
    tera.register_function("is_leader", fn_is_leader);
    tera.register_filter("by_tag", filter_by_tag);
    tera.register_filter("nginx_quote", filter_nginx_quote);
    tera.register_filter("haproxy_quote", filter_haproxy_quote);
    tera.register_filter("config_name", filter_config_name);
    tera.register_filter("addr_port", filter_addr_port);
    tera.register_filter("json_encode", tera_contrib::json::json_encode);
    tera.register_filter("b64_encode", tera_contrib::base64::b64_encode);
    tera.register_filter("b64_decode", tera_contrib::base64::b64_decode);
    tera.register_filter("urlencode", tera_contrib::urlencode::urlencode);
    tera.register_filter(
        "urlencode_strict",
        tera_contrib::urlencode::urlencode_strict,
    );
    tera.register_filter("regex_replace", super::regexes::RegexReplace::default());
    tera.register_filter("striptags", tera_contrib::regex::striptags);
    tera.register_test("matching", super::regexes::Matching::default());
    tera.register_test("port", test_port);
    tera.register_test("listen_address", test_listen_address);
    tera.register_test("file_path", test_file_path);
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

/// The arguments each of rewire's functions, filters and tests takes: what `only` enforces at
/// render time and what [`misspelt_arguments`] checks at load time.
pub(super) const ARGUMENTS: &[(&str, &[&str])] = &[
    ("service", &["name", "tag", "status", "dc", "query"]),
    ("services", &["dc"]),
    ("key", &["path", "default", "dc"]),
    ("keys", &["prefix", "dc"]),
    ("nodes", &["dc"]),
    ("datacenters", &[]),
    ("env", &["name", "default"]),
    ("throw", &["message"]),
    ("by_tag", &["tag"]),
    ("port", &[]),
    ("listen_address", &[]),
    ("file_path", &["suffix"]),
    ("addr_port", &["port"]),
    ("leader", &["name"]),
    ("is_leader", &["name"]),
    ("matching", &["pat"]),
    ("regex_replace", &["pattern", "rep"]),
];

fn arguments_of(function: &str) -> &'static [&'static str] {
    ARGUMENTS
        .iter()
        .find(|(f, _)| *f == function)
        .map_or(&[], |(_, args)| args)
}

/// A call of one of rewire's functions with an argument it does not take, found in the text.
#[derive(Debug, PartialEq, Eq)]
pub struct MisspeltArgument {
    /// Byte offset of the argument's name in the template text.
    pub offset: usize,
    pub function: &'static str,
    pub argument: String,
}

impl MisspeltArgument {
    /// `service() has no argument `nam`; did you mean `name`? It takes name, tag, status`.
    pub fn message(&self) -> String {
        let known = arguments_of(self.function);
        let suggestion = known
            .iter()
            .map(|k| (strsim::levenshtein(&self.argument, k), *k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3))
            .min()
            .map(|(_, k)| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        let takes = if known.is_empty() {
            "it takes no arguments".to_string()
        } else {
            format!("it takes {}", known.join(", "))
        };
        format!(
            "{}() has no argument `{}`{suggestion} ({takes})",
            self.function, self.argument
        )
    }
}

/// Finds calls of rewire's functions, filters and tests with an argument they do not take,
/// by reading the template text (Tera's syntax tree is private). Only the insides of `{{ }}`
/// and `{% %}` are read; strings are skipped. A render would report the same at run time, but
/// only once data arrives: this catches `service(nam="web")` in `rewire check` and on SIGHUP.
pub fn misspelt_arguments(text: &str) -> Vec<MisspeltArgument> {
    let mut out = Vec::new();
    for call in calls(text) {
        let known = arguments_of(call.function);
        for (offset, argument) in call.arguments {
            if !known.contains(&argument.as_str()) {
                out.push(MisspeltArgument {
                    offset,
                    function: call.function,
                    argument,
                });
            }
        }
    }
    out
}

/// Calls in the text that only Consul can answer, as (byte offset, message): found at load
/// time like [`misspelt_arguments`], so `rewire check` says it before anything runs.
pub fn consul_only_calls(text: &str, backend: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for call in calls(text) {
        if matches!(call.function, "nodes" | "datacenters") {
            out.push((
                call.offset,
                format!(
                    "{}() lists Consul's {}: the {backend} catalog has none \
                     (set [catalog] backend = \"consul\" or drop the call)",
                    call.function, call.function
                ),
            ));
        }
        for (offset, argument) in &call.arguments {
            if argument == "dc" {
                out.push((
                    *offset,
                    format!(
                        "{}(dc=...) reads another Consul datacenter: the {backend} catalog has no \
                         datacenters (set [catalog] backend = \"consul\" or drop dc=)",
                        call.function
                    ),
                ));
            }
        }
    }
    out
}

/// One call of one of rewire's functions, filters or tests, as read from the text.
struct Call {
    /// Byte offset of the function's name.
    offset: usize,
    function: &'static str,
    /// Each named argument: its byte offset and name.
    arguments: Vec<(usize, String)>,
}

/// Every call of a function named in [`ARGUMENTS`], found by reading the template text
/// (Tera's syntax tree is private). Only the insides of `{{ }}` and `{% %}` are read; strings
/// are skipped.
fn calls(text: &str) -> Vec<Call> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        // The start of a tag: `{{` or `{%` (comments `{# #}` are skipped whole).
        if b[i] == b'{' && b[i + 1] == b'#' {
            i = text[i..].find("#}").map_or(b.len(), |e| i + e + 2);
            continue;
        }
        if !(b[i] == b'{' && (b[i + 1] == b'{' || b[i + 1] == b'%')) {
            i += 1;
            continue;
        }
        let close = if b[i + 1] == b'{' { "}}" } else { "%}" };
        let start = i + 2;
        let end = find_outside_strings(text, start, close).unwrap_or(b.len());
        scan_tag(text, start, end, &mut out);
        i = end + 2;
    }
    out
}

/// The first `needle` at or after `from` that is not inside a string literal.
fn find_outside_strings(text: &str, from: usize, needle: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i = text[i + 1..]
                    .find(q as char)
                    .map_or(b.len(), |e| i + 1 + e + 1);
            }
            // Bytes, not `text[i..]`: `i` steps through multi-byte characters one byte at a
            // time (a tag holding `ڌ` made the slice panic; found by fuzzing).
            _ if b[i..].starts_with(needle.as_bytes()) => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Scans `text[start..end]` (one tag) for `name(` calls of known functions.
fn scan_tag(text: &str, start: usize, end: usize, out: &mut Vec<Call>) {
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = start;
    while i < end {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i = text[i + 1..end]
                    .find(q as char)
                    .map_or(end, |e| i + 1 + e + 1);
            }
            c if ident(c) && (i == start || !ident(b[i - 1])) => {
                let word_end = (i..end).find(|&j| !ident(b[j])).unwrap_or(end);
                let word = &text[i..word_end];
                let after = text[word_end..end].trim_start();
                let preceded_by_dot = text[start..i].trim_end().ends_with('.');
                if after.starts_with('(')
                    && !preceded_by_dot
                    && let Some((function, _)) = ARGUMENTS.iter().find(|(f, _)| *f == word)
                {
                    let open = end - after.len();
                    out.push(Call {
                        offset: i,
                        function,
                        arguments: call_arguments(text, open + 1, end),
                    });
                }
                i = word_end;
            }
            _ => i += 1,
        }
    }
}

/// Reads the arguments of one call starting after its `(`: each `name =` at depth 1.
fn call_arguments(text: &str, from: usize, end: usize) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut depth = 1;
    let mut i = from;
    // Only at the start of an argument (after `(` or `,`) can a name be one.
    let mut at_argument = true;
    while i < end && depth > 0 {
        match b[i] {
            q @ (b'"' | b'\'' | b'`') => {
                i = text[i + 1..end]
                    .find(q as char)
                    .map_or(end, |e| i + 1 + e + 1);
                at_argument = false;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b',' if depth == 1 => {
                at_argument = true;
                i += 1;
                continue;
            }
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            c if ident(c) && depth == 1 && at_argument => {
                let word_end = (i..end).find(|&j| !ident(b[j])).unwrap_or(end);
                let rest = text[word_end..end].trim_start();
                if rest.starts_with('=') && !rest.starts_with("==") {
                    out.push((i, text[i..word_end].to_string()));
                }
                at_argument = false;
                i = word_end;
                continue;
            }
            _ => {}
        }
        at_argument = false;
        i += 1;
    }
    out
}

/// Refuses arguments one of rewire's functions (listed in [`ARGUMENTS`]) does not take:
/// `service(name="web", stauts="any")` would otherwise render only passing instances without
/// a word. The table is searched only when there are arguments: `addr_port` runs once per
/// instance rendered, mostly without any.
fn only(kwargs: &Kwargs, function: &str) -> TeraResult<()> {
    if kwargs.iter().next().is_none() {
        return Ok(());
    }
    only_these(kwargs, function, arguments_of(function))
}

/// Refuses arguments other than `known`.
fn only_these(kwargs: &Kwargs, function: &str, known: &[&str]) -> TeraResult<()> {
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

/// `dc="dc2"`: the query goes to that Consul datacenter; missing or `""`: the catalog's own.
fn datacenter(kwargs: &Kwargs) -> TeraResult<Option<String>> {
    let dc: Option<String> = kwargs.get("dc")?;
    Ok(dc.filter(|d| !d.is_empty()))
}

/// consul-template's service query, `[TAG.]NAME[@DC][|STATUS,...]`, read the way
/// consul-template reads it: the name is what follows the last dot (a service name with a dot
/// cannot be asked for this way there either). `service(query=...)` reads it at render time,
/// and `rewire import` splits a literal one the same way.
#[derive(Debug, PartialEq)]
pub(crate) struct CtQuery<'a> {
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub dc: Option<&'a str>,
    pub status: Option<&'a str>,
}

pub(crate) fn parse_ct_query(q: &str) -> Result<CtQuery<'_>, String> {
    let (rest, status) = match q.split_once('|') {
        Some((r, f)) => (r, Some(f)),
        None => (q, None),
    };
    if rest.contains('~') {
        return Err("`~node` (nearness ordering) has no rewire equivalent".into());
    }
    let (rest, dc) = match rest.split_once('@') {
        Some((r, dc)) => (r, Some(dc).filter(|d| !d.is_empty())),
        None => (rest, None),
    };
    let (tag, name) = match rest.rsplit_once('.') {
        Some((t, n)) => (Some(t).filter(|t| !t.is_empty()), n),
        None => (None, rest),
    };
    Ok(CtQuery {
        name,
        tag,
        dc,
        status,
    })
}

fn fn_service(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "service")?;
    // `query`: a consul-template query string built at render time (what `rewire import`
    // writes for `service (printf "web@%s" .)`); it holds the tag, dc and status too.
    let ct: Option<String> = kwargs.get("query")?;
    let parsed = match &ct {
        Some(q) => {
            for other in ["name", "tag", "status", "dc"] {
                if kwargs.get::<Value>(other)?.is_some() {
                    return Err(tera::Error::message(format!(
                        "service(): `query` holds the name, tag, dc and status; give `{other}` there, or use `name` instead of `query`"
                    )));
                }
            }
            Some(
                parse_ct_query(q)
                    .map_err(|e| tera::Error::message(format!("service(query={q:?}): {e}")))?,
            )
        }
        None => None,
    };
    let name: String = match &parsed {
        Some(p) => p.name.to_string(),
        None => kwargs.must_get("name")?,
    };
    // A name no catalog can hold would only ever render an empty list, silently.
    if let Err(e) = crate::model::check_name(&name) {
        let hint = match name.split_once('|') {
            // consul-template's "web|passing" is the default here.
            Some((svc, "passing")) => {
                format!(" (consul-template's \"{svc}|passing\" is service(name=\"{svc}\") here)")
            }
            Some((svc, filter)) => format!(
                " (consul-template's \"{svc}|{filter}\" is service(name=\"{svc}\", status=\"{filter}\") here)"
            ),
            None => String::new(),
        };
        let arg = match &ct {
            Some(q) => format!("query={q:?}"),
            None => "name=...".to_string(),
        };
        return Err(tera::Error::message(format!(
            "service({arg}): the name {e}{hint}"
        )));
    }
    let (tag, status, dc) = match &parsed {
        Some(p) => (
            p.tag.map(str::to_string),
            p.status.map(str::to_string),
            p.dc.map(str::to_string),
        ),
        None => (
            kwargs.get("tag")?,
            kwargs.get("status")?,
            datacenter(&kwargs)?,
        ),
    };
    let statuses = parse_status_filter(status.as_deref().unwrap_or("passing"))?;
    let query = Query::Service(name).in_datacenter(dc);
    let Some(entry) = lookup(query, true) else {
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
    only(&kwargs, "services")?;
    list_of(Query::Services.in_datacenter(datacenter(&kwargs)?))
}

/// The answer to a query that is a plain list (services, nodes, datacenters), empty until it
/// comes.
fn list_of(query: Query) -> TeraResult<Value> {
    Ok(lookup(query, true)
        .map(|e| entry_value(&e).clone())
        .unwrap_or_else(|| Value::from(Vec::<Value>::new())))
}

/// `nodes(dc="dc2")`: every node of the datacenter (Consul only), by name: `name`, `address`,
/// `id`, `datacenter`, `tagged_addresses`, `meta`.
fn fn_nodes(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "nodes")?;
    list_of(Query::Nodes.in_datacenter(datacenter(&kwargs)?))
}

/// `datacenters()`: the names of every datacenter the Consul agent knows, sorted.
fn fn_datacenters(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "datacenters")?;
    list_of(Query::Datacenters)
}

fn fn_key(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "key")?;
    let path: String = kwargs.must_get("path")?;
    let default: Option<Value> = kwargs.get("default")?;
    let path = path.trim_matches('/').to_string();
    let query = Query::Key(path.clone()).in_datacenter(datacenter(&kwargs)?);
    // A default stands in for a key the catalog says is absent, never for an answer that has
    // not come (catalog unreachable, still connecting): that would overwrite good data.
    match lookup(query, true) {
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
    only(&kwargs, "keys")?;
    let prefix: String = kwargs.must_get("prefix")?;
    let prefix = prefix.trim_start_matches('/').to_string();
    let query = Query::Keys(prefix.clone()).in_datacenter(datacenter(&kwargs)?);
    let Some(entry) = lookup(query, true) else {
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

/// The view of one `[[election]]` of this config. Until the election has seen the catalog's
/// answer, the template waits (unknown is never rendered as "no leader").
fn election_view(kwargs: &Kwargs, function: &str) -> TeraResult<Option<ElectionView>> {
    only(kwargs, function)?;
    let name: String = kwargs.must_get("name")?;
    Ok(
        lookup(Query::Election(name), true).and_then(|e| match &e.data {
            Data::Election(v) => Some(v.clone()),
            _ => None,
        }),
    )
}

/// `leader(name="primary")`: the holder's published value (`id`, `address`, `port`,
/// `addr_port`, `token`), or none while nobody holds the election.
fn fn_leader(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    Ok(election_view(&kwargs, "leader")?
        .and_then(|v| v.holder.as_ref().map(holder_value))
        .unwrap_or_else(Value::none))
}

/// `is_leader(name="primary")`: whether this process holds the election (and its
/// `on_elected` hook succeeded).
fn fn_is_leader(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    Ok(Value::from(
        election_view(&kwargs, "is_leader")?.is_some_and(|v| v.is_leader),
    ))
}

fn fn_env(kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "env")?;
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

/// The longest `throw` message kept, in characters.
const THROW_MAX: usize = 300;

/// `throw(message=...)`: Tera's own, but the message is made fit for one log line
/// ([`crate::model::one_line`]): templates name the bad catalog value in it (the shipped ones
/// do), and a value with a newline would otherwise forge lines in rewire's log, or a 1 MiB
/// one write a megabyte per render into the log and `rewire status`.
fn fn_throw(kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    only(&kwargs, "throw")?;
    let message: String = kwargs.must_get("message")?;
    Err(tera::Error::message(crate::model::one_line(
        &message, THROW_MAX,
    )))
}

fn filter_by_tag(list: Vec<Value>, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "by_tag")?;
    let tag: String = kwargs.must_get("tag")?;
    Ok(Value::from(
        list.into_iter()
            .filter(|v| {
                v.as_map()
                    .and_then(|m| instance_field(m, "tags"))
                    .and_then(|t| t.as_array())
                    .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag.as_str())))
            })
            .collect::<Vec<_>>(),
    ))
}

/// A value holding a control character, which no quoting makes harmless in every config
/// (a newline ends a directive in nginx and HAProxy alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{filter}: the value holds a control character ({found:?}), which could start a new directive: refused ({value:?})"
)]
pub struct ControlChar {
    filter: &'static str,
    found: char,
    value: String,
}

fn no_control(filter: &'static str, s: &str) -> Result<(), ControlChar> {
    match s.chars().find(|c| c.is_control() && *c != '\t') {
        Some(found) => Err(ControlChar {
            filter,
            found,
            value: s.chars().take(80).collect(),
        }),
        None => Ok(()),
    }
}

/// A double-quoted nginx string: backslash, double quote and tab escaped; any other control
/// character is refused. (nginx still expands `$variables` inside quotes in directives that
/// take variables: check such values with a test such as `file_path` first.)
pub fn nginx_quote(s: &str) -> Result<String, ControlChar> {
    no_control("nginx_quote", s)?;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// A single-quoted HAProxy string (nothing inside is interpreted); `'` becomes `'\''`; a
/// control character other than tab is refused.
pub fn haproxy_quote(s: &str) -> Result<String, ControlChar> {
    no_control("haproxy_quote", s)?;
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

fn filter_nginx_quote(v: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    nginx_quote(v)
        .map(|q| Value::safe_string(&q))
        .map_err(|e| tera::Error::message(e.to_string()))
}

fn filter_haproxy_quote(v: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    haproxy_quote(v)
        .map(|q| Value::safe_string(&q))
        .map_err(|e| tera::Error::message(e.to_string()))
}

/// A catalog name as an nginx upstream or a HAProxy backend or server name: lowercase letters,
/// digits, `-` and `.` stay as they are; everything else is escaped with `_` (`_` itself
/// becomes `__`, an uppercase letter `_` and the letter in lowercase, `:` `_1`, `@` `_2`, any
/// other character `_0`, its code point in hex and `_`).
///
/// Different names never give the same result, even for nginx, which compares upstream names
/// without case. Replacing characters does not have that property (`my.svc` and `my_svc`,
/// `Web` and `web` would collide), and one duplicate upstream or server name makes the whole
/// file fail its check, so one odd registration would stop every update.
pub fn config_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '.' => out.push(c),
            '_' => out.push_str("__"),
            'A'..='Z' => {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            }
            ':' => out.push_str("_1"),
            '@' => out.push_str("_2"),
            c => out.push_str(&format!("_0{:x}_", u32::from(c))),
        }
    }
    out
}

fn filter_config_name(v: &str, _: Kwargs, _: &State) -> TeraResult<Value> {
    Ok(Value::safe_string(&config_name(v)))
}

/// The text of a test's operand: a string, or a number written as one.
fn operand(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.as_i64().map(|n| n.to_string()))
}

/// `v is port`: a port number, 1-65535 (digits only).
pub fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p))
}

/// `v is listen_address`: `PORT`, `ADDR:PORT`, `[IPv6]:PORT` or `*:PORT`, where ADDR is an
/// IPv4 address or a hostname.
pub fn is_listen_address(s: &str) -> bool {
    let Some((addr, port)) = s.rsplit_once(':') else {
        return is_port(s);
    };
    if !is_port(port) {
        return false;
    }
    if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    addr == "*" || (!addr.contains(':') && crate::model::check_address(addr).is_ok())
}

/// `v is file_path` (or `file_path(suffix=".pid")`): an absolute path of letters, digits and
/// `. _ - /`, without `..` (so no quoting, variable or directory walk is needed), ending in
/// `suffix` when given. A catalog value naming a file that a root process writes (a pid file, a
/// log, a socket) must not be able to name /etc/shadow: the suffix narrows it to its kind.
pub fn is_file_path(s: &str, suffix: Option<&str>) -> bool {
    s.starts_with('/')
        && s.len() <= 4096
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !s.split('/').any(|c| c == "..")
        && !s.ends_with('/')
        && suffix.is_none_or(|x| s.len() > x.len() + 1 && s.ends_with(x))
}

fn test_port(v: &Value, kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    only(&kwargs, "port")?;
    Ok(operand(v).is_some_and(|s| is_port(&s)))
}

fn test_listen_address(v: &Value, kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    only(&kwargs, "listen_address")?;
    Ok(operand(v).is_some_and(|s| is_listen_address(&s)))
}

fn test_file_path(v: &Value, kwargs: Kwargs, _: &State) -> TeraResult<bool> {
    only(&kwargs, "file_path")?;
    let suffix: Option<String> = kwargs.get("suffix")?;
    Ok(v.as_str()
        .is_some_and(|s| is_file_path(s, suffix.as_deref())))
}

/// `instance | addr_port`, or `"::1" | addr_port(port=80)`. An address string is checked
/// (an IP or a hostname) and a port must be 1-65535: a KV value cannot smuggle `; ...` in.
fn filter_addr_port(v: &Value, kwargs: Kwargs, _: &State) -> TeraResult<Value> {
    only(&kwargs, "addr_port")?;
    let port_kw: Option<u64> = kwargs.get("port")?;
    if let Some(p) = port_kw
        && !(1..=65535).contains(&p)
    {
        return Err(tera::Error::message(format!(
            "addr_port: port {p} is outside 1-65535"
        )));
    }
    if let Some(addr) = v.as_str() {
        let port = port_kw.ok_or_else(|| {
            tera::Error::message(
                "addr_port on a string needs port=..., e.g. \"::1\" | addr_port(port=80)",
            )
        })?;
        crate::model::check_address(addr)
            .map_err(|e| tera::Error::message(format!("addr_port: {e}")))?;
        return Ok(Value::from(addr_port(addr, port)));
    }
    if port_kw.is_none()
        && let Some(precomputed) = v.as_map().and_then(|m| instance_field(m, "addr_port"))
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

    #[test]
    fn misspelt_arguments_of_rewires_functions_are_found_in_the_text() {
        let more = "{{ leader(nme=\"x\") }}{{ is_leader(name=\"x\") }}{% if \"a\" is matching(pattern=\"a\") %}{% endif %}{{ \"a\" | regex_replace(patern=\"a\", rep=\"\") }}{{ \"a\" | regex_replace(pattern=\"a\", rep=\"\") }}";
        let found: Vec<(String, &str)> = misspelt_arguments(more)
            .into_iter()
            .map(|m| (m.argument, m.function))
            .collect();
        assert_eq!(
            found,
            [
                ("nme".to_string(), "leader"),
                ("pattern".to_string(), "matching"),
                ("patern".to_string(), "regex_replace"),
            ]
        );
        let text = "{{ service(nam=\"web\") }}\n{% for s in service(name=\"a\", stauts=\"any\") | by_tag(tga=\"x\") %}{% endfor %}\n";
        let found: Vec<(String, &str)> = misspelt_arguments(text)
            .into_iter()
            .map(|m| (m.argument, m.function))
            .collect();
        assert_eq!(
            found,
            [
                ("nam".to_string(), "service"),
                ("stauts".to_string(), "service"),
                ("tga".to_string(), "by_tag"),
            ]
        );
        let m = &misspelt_arguments(text)[0];
        assert_eq!(&text[m.offset..m.offset + 3], "nam");
        assert_eq!(
            m.message(),
            "service() has no argument `nam`; did you mean `name`? (it takes name, tag, status, dc, query)"
        );
    }

    /// At render time too (arguments the text scan cannot see, such as those of a function
    /// called from an included file): a wrong name is refused, none or a known one passes.
    #[test]
    fn a_consul_template_query_is_split_as_consul_template_splits_it() {
        let q = parse_ct_query("v1.2.web@dc2|passing,warning").unwrap();
        assert_eq!(
            q,
            CtQuery {
                name: "web",
                tag: Some("v1.2"),
                dc: Some("dc2"),
                status: Some("passing,warning"),
            }
        );
        let q = parse_ct_query("web").unwrap();
        assert_eq!((q.name, q.tag, q.dc, q.status), ("web", None, None, None));
        assert!(parse_ct_query("web~node1").is_err());
    }

    #[test]
    fn only_refuses_arguments_a_function_does_not_take() {
        assert!(only(&Kwargs::default(), "addr_port").is_ok());
        assert!(only(&Kwargs::from([("port", Value::from(80))]), "addr_port").is_ok());
        let err = only(&Kwargs::from([("prot", Value::from(80))]), "addr_port").unwrap_err();
        assert!(
            err.to_string()
                .contains("addr_port() has no argument `prot`; it takes port"),
            "{err}"
        );
        let err = only_these(
            &Kwargs::from([("nme", Value::from("a"))]),
            "leader",
            &["name"],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("leader() has no argument `nme`; it takes name"),
            "{err}"
        );
    }

    #[test]
    fn correct_calls_strings_comments_and_other_functions_are_left_alone() {
        for text in [
            "{{ service(name=\"web\", tag=\"v2\", status=\"any\") | length }}",
            "{{ key(path=\"a\", default=\"service(nam=1)\") }}",
            "{# service(nam=\"x\") #}text service(nam=x)",
            "{{ range(end=3) }}{{ x.service(nam=1) }}",
            "{% if service(name=\"a\") | length == 0 %}{% endif %}",
            "{{ s | addr_port(port=80) }}{% if v is file_path(suffix=\".pid\") %}{% endif %}",
            "{{ env(name=\"A\", default=key(path=\"b\", default=\"c\")) }}",
        ] {
            assert_eq!(misspelt_arguments(text), [], "{text}");
        }
    }

    #[test]
    fn the_template_reference_names_every_function_filter_and_test() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let doc = std::fs::read_to_string(root.join("docs/templates.md")).unwrap();
        let src = include_str!("functions.rs");
        // Only `register`'s body: the registrations.
        let src = &src[src.find("pub(super) fn register(").unwrap()..];
        let src = &src[..src.find("\n}\n").unwrap()];
        let mut missing = Vec::new();
        for kind in ["register_function(", "register_filter(", "register_test("] {
            for (i, _) in src.match_indices(kind) {
                // The name may be on the next line (rustfmt).
                let Some(name) = src[i + kind.len()..].trim_start().strip_prefix('"') else {
                    continue;
                };
                let name = &name[..name.find('"').unwrap()];
                if !doc.contains(&format!("`{name}")) {
                    missing.push(name.to_string());
                }
            }
        }
        assert!(missing.is_empty(), "docs/templates.md lacks {missing:?}");
    }

    use super::*;

    #[test]
    fn tags_holding_multi_byte_characters_are_scanned_without_a_panic() {
        // Found by fuzzing: the scan for a tag's end stepped into the middle of `ڌ`.
        assert!(
            misspelt_arguments("{{ ڌ }}{% if é %}{{ service(nam=\"ڌ\") }}{% endif %}").len() == 1
        );
        assert!(consul_only_calls("{{ ڌ nodes() }}", "dir").len() == 1);
    }

    #[test]
    fn config_names_keep_plain_names_and_never_collide() {
        assert_eq!(config_name("web"), "web");
        assert_eq!(config_name("my-svc.v2"), "my-svc.v2");
        let names = [
            "my_svc",
            "my.svc",
            "my-svc",
            "Web",
            "web",
            "_web",
            "x@1",
            "x_1",
            "x_21",
            "x:1",
            "x_11",
            "a b",
            "a_020_",
            "é",
            "vm:web-1",
            "vm_1web-1",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let c = config_name(n);
            assert!(
                c.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'-' | b'.' | b'_')),
                "{n:?} -> {c:?}"
            );
            // Compared without case, as nginx compares upstream names.
            assert!(
                seen.insert(c.to_ascii_lowercase()),
                "{n:?} -> {c:?} collides"
            );
        }
    }

    #[test]
    fn quoting_filters() {
        assert_eq!(nginx_quote(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert_eq!(haproxy_quote("it's").unwrap(), r"'it'\''s'");
        assert_eq!(addr_port("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(addr_port("fe80::1", 80), "[fe80::1]:80");
    }

    #[test]
    fn quoting_refuses_what_would_start_a_new_directive() {
        let pid = "/run/nginx.pid\nload_module /tmp/evil.so";
        let e = nginx_quote(pid).unwrap_err().to_string();
        assert!(
            e.contains("nginx_quote") && e.contains("control character"),
            "{e}"
        );
        assert!(haproxy_quote("x\r\nhttp-request return").is_err());
        assert!(nginx_quote("nul\0").is_err());
        assert_eq!(nginx_quote("a\tb").unwrap(), r#""a\tb""#);
    }

    #[test]
    fn setting_checks_accept_the_documented_forms_only() {
        for ok in [
            "80",
            "65535",
            "127.0.0.1:8080",
            "*:80",
            "[::1]:80",
            "web.local:443",
        ] {
            assert!(is_listen_address(ok), "{ok}");
        }
        for bad in [
            "0",
            "65536",
            "80; location /leak/ { alias /etc/; autoindex on; } #",
            ":80\n    http-request return status 200 file /etc/shadow",
            "::1:80",
            "[::1]",
            "a b:80",
            "127.0.0.1:80 ssl",
            "unix:8080",
            "Unix:8080",
            "",
        ] {
            assert!(!is_listen_address(bad), "{bad:?}");
        }
        assert!(is_port("443") && !is_port("+80") && !is_port("080000"));
        assert!(is_file_path("/run/nginx.pid", Some(".pid")));
        assert!(is_file_path("/var/log/nginx/access.log", Some(".log")));
        for bad in [
            "/etc/shadow",
            "/run/../etc/x.pid",
            "run/nginx.pid",
            "/run/nginx.pid\nload_module /x.so",
            "/run/$host.pid",
            "/run/\"x\".pid",
            "/.pid",
        ] {
            assert!(!is_file_path(bad, Some(".pid")), "{bad:?}");
        }
    }
}
