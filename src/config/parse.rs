//! Reads `rewire.toml` into a [`Config`], listing every problem at once.
//!
//! serde derive stops at the first error, so this walks the spanned TOML tree by hand: each
//! table is read key by key, every value is checked and turned into its type, unknown keys are
//! reported with the accepted ones, and every problem carries file:line:col and what to do.
//! Parsing is pure: [`parse_str`] takes text, a path and the environment; [`load`] only adds
//! the file read.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::*;
use crate::model::{check_address, check_name};

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub what: String,
    pub hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // About the whole file (it cannot be read): no position to give.
            write!(f, "{}: {}", self.file.display(), self.what)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.what
            )?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "\n{n} problem{} in the config",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let abs = absolute(path);
    let text = std::fs::read_to_string(&abs).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: abs.clone(),
            line: 0,
            col: 0,
            what: format!("cannot read the config: {e}"),
            hint: "pass the file with -c FILE or REWIRE_CONFIG; `rewire --help` shows an example"
                .into(),
        }])
    })?;
    parse_str(&text, &abs, &|name| std::env::var(name).ok())
}

/// Parses config text. `path` names the file in errors and anchors relative paths.
pub fn parse_str(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let path = absolute(path);
    let mut w = Walker {
        src: text,
        file: &path,
        dir: path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        env,
        errors: Vec::new(),
    };
    let (root, parse_errors) = DeTable::parse_recoverable(text);
    for e in parse_errors {
        let span = e.span().unwrap_or(0..0);
        w.error(
            span,
            format!("invalid TOML: {}", e.message().trim()),
            "fix the syntax at this spot",
        );
    }
    if !w.errors.is_empty() {
        return Err(ConfigErrors(w.errors));
    }
    let root_span = root.span();
    let root = Tbl::new(root.get_ref(), root_span, "");
    let config = w.config(&root, &path);
    w.finish(&root, ROOT_KEYS);
    match config {
        Some(c) if w.errors.is_empty() => Ok(c),
        _ => {
            w.errors.sort_by_key(|e| (e.line, e.col));
            w.errors.dedup();
            Err(ConfigErrors(w.errors))
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        normalize(path)
    } else {
        normalize(
            &std::env::current_dir()
                .unwrap_or_else(|_| PathBuf::from("/"))
                .join(path),
        )
    }
}

/// Removes `.` and resolves `..` lexically (no symlinks followed), so equal paths compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

const ROOT_KEYS: &[&str] = &[
    "catalog", "control", "defaults", "template", "service", "watch", "task", "main",
];

type Val<'i> = Spanned<DeValue<'i>>;

/// A table being read: remembers which keys were used so the rest can be reported.
struct Tbl<'a, 'i> {
    map: &'a DeTable<'i>,
    span: Range<usize>,
    /// Dotted name for messages, e.g. `catalog.tls` or `template[2]`.
    name: String,
    used: std::cell::RefCell<HashSet<String>>,
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn new(map: &'a DeTable<'i>, span: Range<usize>, name: &str) -> Self {
        Tbl {
            map,
            span,
            name: name.to_string(),
            used: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.used.borrow_mut().insert(key.to_string());
        self.map.get(key)
    }

    fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.map
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.span())
    }

    fn section(&self) -> String {
        if self.name.is_empty() {
            "the top level".to_string()
        } else {
            format!("[{}]", self.name)
        }
    }
}

struct Walker<'s> {
    src: &'s str,
    file: &'s Path,
    dir: PathBuf,
    env: &'s dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

impl Walker<'_> {
    fn error(&mut self, span: Range<usize>, what: impl Into<String>, hint: impl Into<String>) {
        let (line, col) = line_col(self.src, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            what: what.into(),
            hint: hint.into(),
        });
    }

    /// Reports keys of `t` that nobody read.
    fn finish(&mut self, t: &Tbl, known: &[&str]) {
        let used = t.used.borrow().clone();
        for (k, _) in t.map.iter() {
            if used.contains(k.get_ref().as_ref()) {
                continue;
            }
            let key = k.get_ref().to_string();
            let hint = match suggest(&key, known) {
                Some(s) => format!(
                    "did you mean `{s}`? {} accepts: {}",
                    t.section(),
                    known.join(", ")
                ),
                None => format!("{} accepts: {}", t.section(), known.join(", ")),
            };
            self.error(
                k.span(),
                format!("unknown key `{key}` in {}", t.section()),
                hint,
            );
        }
    }

    // ---- typed getters: each reports its own problems and returns None on error or absence

    fn table<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Option<Tbl<'a, 'i>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(map) => Some(Tbl::new(map, v.span(), &join(&t.name, key))),
            other => {
                self.type_error(v.span(), t, key, "a table", other);
                None
            }
        }
    }

    fn tables<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Vec<Tbl<'a, 'i>> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::Table(map) => out.push(Tbl::new(
                            map,
                            item.span(),
                            &format!("{}[{}]", join(&t.name, key), i + 1),
                        )),
                        other => self.type_error(item.span(), t, key, "a table", other),
                    }
                }
                out
            }
            DeValue::Table(map) => {
                self.error(
                    v.span(),
                    format!("`{key}` must be a list of tables"),
                    format!("write [[{key}]] (double brackets), one block per {key}"),
                );
                let _ = map;
                Vec::new()
            }
            other => {
                self.type_error(v.span(), t, key, "a list of tables ([[...]])", other);
                Vec::new()
            }
        }
    }

    fn string(&mut self, t: &Tbl, key: &str) -> Option<Spanned<String>> {
        let v = t.get(key)?;
        self.string_value(v, t, key)
    }

    fn string_value(&mut self, v: &Val, t: &Tbl, key: &str) -> Option<Spanned<String>> {
        match v.get_ref() {
            DeValue::String(s) => match super::interpolate(s, self.env) {
                Ok(s) => Some(Spanned::new(v.span(), s)),
                Err(e) => {
                    self.error(v.span(), format!("`{key}`: {e}"), "");
                    None
                }
            },
            other => {
                self.type_error(v.span(), t, key, "a string", other);
                None
            }
        }
    }

    fn required_string(&mut self, t: &Tbl, key: &str, hint: &str) -> Option<Spanned<String>> {
        if t.map.get(key).is_none() {
            self.error(
                t.span.clone(),
                format!("{} needs `{key}`", t.section()),
                hint,
            );
            return None;
        }
        self.string(t, key)
    }

    fn strings(&mut self, t: &Tbl, key: &str) -> Option<Vec<String>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(v.span(), t, key, "a list of strings", v.get_ref());
            return None;
        };
        self.string_items(items, t, key)
    }

    fn string_items(&mut self, items: &DeArray, t: &Tbl, key: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        let mut ok = true;
        for item in items.iter() {
            match self.string_value(item, t, key) {
                Some(s) => out.push(s.into_inner()),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn string_map(&mut self, t: &Tbl, key: &str) -> Option<BTreeMap<String, String>> {
        let sub = self.table(t, key)?;
        let mut out = BTreeMap::new();
        for (k, v) in sub.map.iter() {
            sub.used.borrow_mut().insert(k.get_ref().to_string());
            if let Some(s) = self.string_value(v, &sub, k.get_ref()) {
                out.insert(k.get_ref().to_string(), s.into_inner());
            }
        }
        Some(out)
    }

    fn boolean(&mut self, t: &Tbl, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.type_error(v.span(), t, key, "true or false", other);
                None
            }
        }
    }

    fn integer(&mut self, t: &Tbl, key: &str) -> Option<Spanned<i64>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Spanned::new(v.span(), n)),
                Err(_) => {
                    self.error(v.span(), format!("`{key}` is out of range"), "");
                    None
                }
            },
            DeValue::String(s) if s.contains("${") => {
                // `port = "${PORT}"`: a number from the environment.
                let s = self.string_value(v, t, key)?;
                match s.get_ref().trim().parse::<i64>() {
                    Ok(n) => Some(Spanned::new(v.span(), n)),
                    Err(_) => {
                        self.error(
                            v.span(),
                            format!("`{key}` became {:?}, which is not a number", s.get_ref()),
                            "set the variable to a whole number",
                        );
                        None
                    }
                }
            }
            other => {
                self.type_error(v.span(), t, key, "a whole number", other);
                None
            }
        }
    }

    fn duration(&mut self, t: &Tbl, key: &str) -> Option<Duration> {
        let s = self.string(t, key)?;
        match parse_duration(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    s.span(),
                    format!("`{key}`: {e}"),
                    "write a number with a unit: \"250ms\", \"10s\", \"5m\", \"1h\" (or \"1m30s\")",
                );
                None
            }
        }
    }

    fn path(&mut self, t: &Tbl, key: &str) -> Option<PathBuf> {
        let s = self.string(t, key)?;
        if s.get_ref().is_empty() {
            self.error(s.span(), format!("`{key}` is empty"), "give a path");
            return None;
        }
        Some(normalize(&self.dir.join(s.get_ref())))
    }

    fn signal(&mut self, t: &Tbl, key: &str) -> Option<Signal> {
        let s = self.string(t, key)?;
        self.signal_str(&s, key)
    }

    fn signal_str(&mut self, s: &Spanned<String>, key: &str) -> Option<Signal> {
        match parse_signal(s.get_ref()) {
            Ok(sig) => Some(sig),
            Err(e) => {
                self.error(
                    s.span(),
                    format!("`{key}`: {e}"),
                    "use a name such as \"HUP\", \"TERM\", \"QUIT\", \"USR1\"",
                );
                None
            }
        }
    }

    fn signals(&mut self, t: &Tbl, key: &str) -> Option<Vec<Signal>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(v.span(), t, key, "a list of signal names", v.get_ref());
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let s = self.string_value(item, t, key)?;
            out.push(self.signal_str(&s, key)?);
        }
        Some(out)
    }

    /// A command: `["argv", ...]`, `{ exec = [...], timeout = "30s" }` or
    /// `{ shell = "...", timeout = "30s" }`.
    fn command(&mut self, t: &Tbl, key: &str, default_timeout: Duration) -> Option<CommandSpec> {
        let v = t.get(key)?;
        self.command_value(v, t, key, default_timeout)
    }

    fn command_value(
        &mut self,
        v: &Val,
        t: &Tbl,
        key: &str,
        default_timeout: Duration,
    ) -> Option<CommandSpec> {
        match v.get_ref() {
            // `pre_stop = []` reads as "no hook", as in DESIGN.md's sketch.
            DeValue::Array(items) if items.is_empty() => None,
            DeValue::Array(items) => {
                let argv = self.string_items(items, t, key)?;
                self.argv_ok(&argv, v.span(), key)?;
                Some(CommandSpec {
                    program: Program::Argv(argv),
                    timeout: default_timeout,
                })
            }
            DeValue::Table(map) => {
                let sub = Tbl::new(map, v.span(), &join(&t.name, key));
                let timeout = self.duration(&sub, "timeout").unwrap_or(default_timeout);
                let exec = self.strings(&sub, "exec");
                let shell = self.string(&sub, "shell");
                self.finish(&sub, &["exec", "shell", "timeout"]);
                let program = match (exec, shell) {
                    (Some(argv), None) => {
                        self.argv_ok(&argv, v.span(), key)?;
                        Program::Argv(argv)
                    }
                    (None, Some(script)) => {
                        if script.get_ref().trim().is_empty() {
                            self.error(script.span(), format!("`{key}.shell` is empty"), "");
                            return None;
                        }
                        Program::Shell(script.into_inner())
                    }
                    (Some(_), Some(_)) => {
                        self.error(
                            v.span(),
                            format!("`{key}` has both `exec` and `shell`"),
                            "keep one: exec = [\"prog\", \"arg\"] (no shell) or shell = \"...\"",
                        );
                        return None;
                    }
                    (None, None) => {
                        self.error(
                            v.span(),
                            format!("`{key}` needs `exec` or `shell`"),
                            "e.g. { exec = [\"nginx\", \"-s\", \"reload\"], timeout = \"30s\" }",
                        );
                        return None;
                    }
                };
                Some(CommandSpec { program, timeout })
            }
            DeValue::String(s) => {
                self.error(
                    v.span(),
                    format!("`{key}` is a string ({s:?}); commands are argv arrays"),
                    format!(
                        "write {key} = [\"prog\", \"arg\"], or {key} = {{ shell = \"...\" }} if you really want a shell"
                    ),
                );
                None
            }
            other => {
                self.type_error(v.span(), t, key, "an argv array", other);
                None
            }
        }
    }

    fn argv_ok(&mut self, argv: &[String], span: Range<usize>, key: &str) -> Option<()> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            self.error(
                span,
                format!("`{key}` is an empty command"),
                "give the program and its arguments, e.g. [\"nginx\", \"-s\", \"reload\"]",
            );
            return None;
        }
        Some(())
    }

    fn wait(&mut self, t: &Tbl, key: &str, default: Wait) -> Wait {
        let Some(v) = t.get(key) else {
            return default;
        };
        let (min, max) = match v.get_ref() {
            DeValue::String(_) => {
                let Some(s) = self.string_value(v, t, key) else {
                    return default;
                };
                // "2s" or "2s:10s", as consul-template's -wait.
                let (min_s, max_s) = match s.get_ref().split_once(':') {
                    Some((a, b)) => (a.to_string(), Some(b.to_string())),
                    None => (s.get_ref().clone(), None),
                };
                let min = parse_duration(&min_s);
                let max = max_s.map(|m| parse_duration(&m)).transpose();
                match (min, max) {
                    (Ok(min), Ok(max)) => (min, max),
                    (Err(e), _) | (_, Err(e)) => {
                        self.error(
                            v.span(),
                            format!("`{key}`: {e}"),
                            "write wait = { min = \"2s\", max = \"10s\" } or wait = \"2s:10s\"",
                        );
                        return default;
                    }
                }
            }
            DeValue::Table(map) => {
                let sub = Tbl::new(map, v.span(), &join(&t.name, key));
                let min = self.duration(&sub, "min");
                let max = self.duration(&sub, "max");
                self.finish(&sub, &["min", "max"]);
                match min {
                    Some(min) => (min, max),
                    None => {
                        if sub.map.get("min").is_none() {
                            self.error(
                                v.span(),
                                format!("`{key}` needs `min`"),
                                "write wait = { min = \"2s\", max = \"10s\" }",
                            );
                        }
                        return default;
                    }
                }
            }
            other => {
                self.type_error(v.span(), t, key, "a table { min, max }", other);
                return default;
            }
        };
        let max = max.unwrap_or(min * 4);
        if max < min {
            self.error(
                v.span(),
                format!(
                    "`{key}`: max ({}) is less than min ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(min)
                ),
                "max bounds the delay under constant change: make it at least min",
            );
            return default;
        }
        Wait { min, max }
    }

    fn type_error(&mut self, span: Range<usize>, t: &Tbl, key: &str, want: &str, got: &DeValue) {
        self.error(
            span,
            format!(
                "`{key}` in {} must be {want}, not {}",
                t.section(),
                got.type_str()
            ),
            "",
        );
    }

    // ---- sections

    fn config(&mut self, root: &Tbl, path: &Path) -> Option<Config> {
        let catalog = self.catalog(root);
        let control = self.control(root);
        let defaults = self.defaults(root);
        let main = root.get("main").and_then(|_| self.main(root));
        let templates = self.templates(root, defaults.wait, main.as_ref());
        let services = self.services(root, catalog.deregister_after);
        let watches = self.watches(root, defaults.wait);
        let tasks = self.tasks(root);
        Some(Config {
            path: path.to_path_buf(),
            catalog,
            control,
            defaults,
            templates,
            services,
            watches,
            tasks,
            main,
        })
    }

    fn catalog(&mut self, root: &Tbl) -> CatalogConfig {
        let default = default_catalog(&self.dir);
        let Some(t) = self.table(root, "catalog") else {
            return default;
        };
        let backend_name = self.string(&t, "backend");
        let block_wait = self
            .duration(&t, "block_wait")
            .unwrap_or(default.block_wait);
        if block_wait > Duration::from_secs(600) || block_wait < Duration::from_secs(1) {
            let span = t.key_span("block_wait").unwrap_or(t.span.clone());
            self.error(
                span,
                "`block_wait` must be between 1s and 10m",
                "Consul caps blocking queries at 10 minutes; 60s is a good value",
            );
        }
        let retry = match self.table(&t, "retry") {
            Some(r) => {
                let base = self.duration(&r, "base").unwrap_or(default.retry.base);
                let max = self.duration(&r, "max").unwrap_or(default.retry.max);
                if let Err(e) = crate::backoff::Backoff::new(base, max) {
                    self.error(
                        r.span.clone(),
                        format!("`retry`: {e}"),
                        "e.g. retry = { base = \"250ms\", max = \"30s\" }",
                    );
                }
                self.finish(&r, &["base", "max"]);
                Retry { base, max }
            }
            None => default.retry.clone(),
        };
        let deregister_after = self
            .duration(&t, "deregister_after")
            .unwrap_or(default.deregister_after);
        let tls = match self.table(&t, "tls") {
            Some(tt) => {
                let tls = TlsSettings {
                    ca: self.path(&tt, "ca"),
                    cert: self.path(&tt, "cert"),
                    key: self.path(&tt, "key"),
                    server_name: self.string(&tt, "server_name").map(Spanned::into_inner),
                    verify: self.boolean(&tt, "verify"),
                };
                if tls.cert.is_some() != tls.key.is_some() {
                    self.error(tt.span.clone(), "[catalog.tls] needs both `cert` and `key` for a client certificate, or neither", "");
                }
                self.finish(&tt, &["ca", "cert", "key", "server_name", "verify"]);
                tls
            }
            None => TlsSettings::default(),
        };
        let name = backend_name
            .as_ref()
            .map(|s| s.get_ref().as_str())
            .unwrap_or("dir");
        let (backend, keys): (Backend, &[&str]) = match name {
            "dir" => {
                let path = self
                    .path(&t, "path")
                    .unwrap_or_else(|| self.dir.join("catalog"));
                (Backend::Dir(DirSettings { path }), DIR_KEYS)
            }
            "consul" => {
                let settings = ConsulSettings {
                    address: self.string(&t, "address").map(Spanned::into_inner),
                    token: self
                        .string(&t, "token")
                        .map(|s| Secret::new(s.into_inner()))
                        .filter(|s| !s.expose().is_empty()),
                    token_file: self.path(&t, "token_file"),
                    datacenter: self.string(&t, "datacenter").map(Spanned::into_inner),
                    stale: self.boolean(&t, "stale").unwrap_or(false),
                    tls,
                };
                (Backend::Consul(settings), CONSUL_KEYS)
            }
            "etcd" => {
                let endpoints = self.strings(&t, "endpoints").unwrap_or_default();
                let prefix = self
                    .string(&t, "prefix")
                    .map(Spanned::into_inner)
                    .unwrap_or_else(|| "/rewire".into());
                let settings = EtcdSettings {
                    endpoints,
                    prefix: prefix.trim_end_matches('/').to_string(),
                    username: self.string(&t, "username").map(Spanned::into_inner),
                    password: self
                        .string(&t, "password")
                        .map(|s| Secret::new(s.into_inner())),
                    tls,
                };
                if settings.username.is_some() != settings.password.is_some() {
                    self.error(
                        t.span.clone(),
                        "[catalog] needs both `username` and `password`, or neither",
                        "",
                    );
                }
                (Backend::Etcd(settings), ETCD_KEYS)
            }
            other => {
                let span = backend_name
                    .as_ref()
                    .map(|s| s.span())
                    .unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!("unknown catalog backend {other:?}"),
                    "use backend = \"dir\", \"consul\" or \"etcd\"",
                );
                (default.backend.clone(), ALL_CATALOG_KEYS)
            }
        };
        if matches!(backend, Backend::Dir(_)) && t.map.get("tls").is_some() {
            let span = t.key_span("tls").unwrap_or(t.span.clone());
            self.error(
                span,
                "[catalog.tls] does not apply to the dir backend",
                "remove it, or set backend = \"consul\" or \"etcd\"",
            );
        }
        self.finish(&t, keys);
        CatalogConfig {
            backend,
            block_wait,
            retry,
            deregister_after,
        }
    }

    fn control(&mut self, root: &Tbl) -> ControlConfig {
        let Some(t) = self.table(root, "control") else {
            return ControlConfig {
                socket: default_socket(),
            };
        };
        let socket = self.path(&t, "socket").unwrap_or_else(default_socket);
        self.finish(&t, &["socket"]);
        ControlConfig { socket }
    }

    fn defaults(&mut self, root: &Tbl) -> Defaults {
        let Some(t) = self.table(root, "defaults") else {
            return Defaults { wait: DEFAULT_WAIT };
        };
        let wait = self.wait(&t, "wait", DEFAULT_WAIT);
        self.finish(&t, &["wait"]);
        Defaults { wait }
    }

    fn templates(
        &mut self,
        root: &Tbl,
        default_wait: Wait,
        main: Option<&MainConfig>,
    ) -> Vec<TemplateConfig> {
        let mut out: Vec<TemplateConfig> = Vec::new();
        let mut dests: Vec<(PathBuf, Range<usize>)> = Vec::new();
        for t in self.tables(root, "template") {
            let source_s =
                self.required_string(&t, "source", "source = \"templates/nginx.conf.tera\"");
            let dest_s =
                self.required_string(&t, "destination", "destination = \"/etc/nginx/nginx.conf\"");
            let source = source_s
                .as_ref()
                .map(|s| normalize(&self.dir.join(s.get_ref())));
            let destination = dest_s
                .as_ref()
                .map(|s| normalize(&self.dir.join(s.get_ref())));
            if let (Some(s), Some(src)) = (&source_s, &source)
                && !src.is_file()
            {
                self.error(
                    s.span(),
                    format!("template source {} does not exist", src.display()),
                    "paths are relative to the config file's directory",
                );
            }
            let name = self
                .string(&t, "name")
                .map(Spanned::into_inner)
                .or_else(|| {
                    source.as_ref().and_then(|s| {
                        s.file_name().map(|n| {
                            let n = n.to_string_lossy();
                            n.strip_suffix(".tera").unwrap_or(&n).to_string()
                        })
                    })
                });
            let perms = self.perms(&t);
            let check_mode = match self.string(&t, "check_mode") {
                None => CheckMode::Temp,
                Some(s) => match s.get_ref().as_str() {
                    "temp" => CheckMode::Temp,
                    "swap" => CheckMode::Swap,
                    other => {
                        self.error(s.span(), format!("unknown check_mode {other:?}"), "use \"temp\" (check the rendered file before it replaces the destination) or \"swap\" (put it in place, check the whole config, restore on failure)");
                        CheckMode::Temp
                    }
                },
            };
            let check = self.command(&t, "check", Duration::from_secs(30));
            if let Some(c) = &check
                && check_mode == CheckMode::Temp
                && !c.program.mentions_file()
            {
                let span = t.key_span("check").unwrap_or(t.span.clone());
                self.error(
                    span,
                    "`check` does not mention {file}, so it would not check the new file",
                    "add {file} where the command takes the config (e.g. [\"nginx\", \"-t\", \"-c\", \"{file}\"]), or set check_mode = \"swap\" to check the real config after swapping",
                );
            }
            let reload = self.reload(&t, main);
            let wait = self.wait(&t, "wait", default_wait);
            let write = match self.string(&t, "write") {
                None => WriteMode::Atomic,
                Some(s) => match s.get_ref().as_str() {
                    "atomic" => WriteMode::Atomic,
                    "in-place" => WriteMode::InPlace,
                    other => {
                        self.error(s.span(), format!("unknown write mode {other:?}"), "use \"atomic\" (default: temp file + rename) or \"in-place\" (for bind-mounted files that cannot be renamed over)");
                        WriteMode::Atomic
                    }
                },
            };
            let backup = self.boolean(&t, "backup").unwrap_or(false);
            self.finish(&t, TEMPLATE_KEYS);
            if let (Some(d), Some(ds)) = (&destination, &dest_s) {
                if let Some((_, first)) = dests.iter().find(|(p, _)| p == d) {
                    let (line, _) = line_col(self.src, first.start);
                    self.error(
                        ds.span(),
                        format!("destination {} is already written by the template at line {line}", d.display()),
                        "two templates cannot write one file: merge them, or render one into the other with {% include %}",
                    );
                }
                dests.push((d.clone(), ds.span()));
            }
            let (Some(source), Some(destination), Some(name)) = (source, destination, name) else {
                continue;
            };
            if out.iter().any(|o| o.name == name) {
                self.error(
                    t.span.clone(),
                    format!("two templates are named {name:?}"),
                    "give one of them `name = \"...\"` (used by `rewire render --template NAME`)",
                );
            }
            out.push(TemplateConfig {
                name,
                source,
                destination,
                perms,
                check,
                check_mode,
                reload,
                wait,
                write,
                backup,
            });
        }
        out
    }

    fn perms(&mut self, t: &Tbl) -> Option<u32> {
        let v = t.get("perms")?;
        let hint = "write the mode as an octal string, e.g. perms = \"0644\"";
        let parsed = match v.get_ref() {
            DeValue::String(_) => {
                let s = self.string_value(v, t, "perms")?;
                u32::from_str_radix(s.get_ref().trim_start_matches("0o"), 8).ok()
            }
            DeValue::Integer(i) if i.radix() == 8 => u32::from_str_radix(i.as_str(), 8).ok(),
            DeValue::Integer(_) => {
                self.error(
                    v.span(),
                    "`perms` is a decimal number, which is almost never what is meant",
                    hint,
                );
                return None;
            }
            other => {
                self.type_error(v.span(), t, "perms", "an octal string", other);
                return None;
            }
        };
        match parsed {
            Some(m) if m <= 0o7777 => Some(m),
            _ => {
                self.error(v.span(), "`perms` is not a file mode", hint);
                None
            }
        }
    }

    fn reload(&mut self, t: &Tbl, main: Option<&MainConfig>) -> Option<Reload> {
        let v = t.get("reload")?;
        if let DeValue::Table(map) = v.get_ref()
            && map.get("signal").is_some()
        {
            let sub = Tbl::new(map, v.span(), &join(&t.name, "reload"));
            let signal = self.signal(&sub, "signal");
            let pidfile = self.path(&sub, "pidfile");
            let target = self.string(&sub, "target");
            self.finish(&sub, &["signal", "pidfile", "target"]);
            let target = match (pidfile, target) {
                (Some(p), None) => SignalTarget::Pidfile(p),
                (None, Some(tg)) if tg.get_ref() == "main" => {
                    if main.is_none_or(|m| m.exec.is_none()) {
                        self.error(tg.span(), "reload target \"main\" needs a [main] section with `exec`", "add [main] exec = [...], or signal a pidfile: { signal = \"HUP\", pidfile = \"/run/nginx.pid\" }");
                    }
                    SignalTarget::Main
                }
                (None, Some(tg)) => {
                    self.error(
                        tg.span(),
                        format!("unknown reload target {:?}", tg.get_ref()),
                        "use target = \"main\" (the supervised process) or pidfile = \"...\"",
                    );
                    return None;
                }
                _ => {
                    self.error(
                        v.span(),
                        "a signal reload needs exactly one of `pidfile` or `target = \"main\"`",
                        "e.g. reload = { signal = \"HUP\", pidfile = \"/run/nginx.pid\" }",
                    );
                    return None;
                }
            };
            return Some(Reload::Signal {
                signal: signal?,
                target,
            });
        }
        self.command_value(v, t, "reload", Duration::from_secs(30))
            .map(Reload::Command)
    }

    fn services(&mut self, root: &Tbl, default_deregister: Duration) -> Vec<ServiceConfig> {
        let mut out: Vec<ServiceConfig> = Vec::new();
        for t in self.tables(root, "service") {
            let name = self.required_string(&t, "name", "name = \"web\"");
            if let Some(n) = &name
                && let Err(e) = check_name(n.get_ref())
            {
                self.error(n.span(), format!("service name {e}"), "");
            }
            let port = match self.integer(&t, "port") {
                Some(p) => match u16::try_from(*p.get_ref()) {
                    Ok(v) if v > 0 => Some(v),
                    _ => {
                        self.error(
                            p.span(),
                            format!("port {} is outside 1-65535", p.get_ref()),
                            "",
                        );
                        None
                    }
                },
                None => {
                    if t.map.get("port").is_none() {
                        self.error(
                            t.span.clone(),
                            format!("{} needs `port`", t.section()),
                            "port = 8080",
                        );
                    }
                    None
                }
            };
            let id = self.string(&t, "id");
            if let Some(i) = &id
                && let Err(e) = check_name(i.get_ref())
            {
                self.error(i.span(), format!("service id {e}"), "");
            }
            let address = self.string(&t, "address");
            let interface = self.string(&t, "interface");
            let address = match (address, interface) {
                (Some(a), None) => {
                    if let Err(e) = check_address(a.get_ref()) {
                        self.error(a.span(), e.to_string(), "give an IP address or a hostname; for an interface name write interface = \"eth0\"");
                    }
                    AddressSpec::Literal(a.into_inner())
                }
                (None, Some(i)) => AddressSpec::Interface(i.into_inner()),
                (None, None) => AddressSpec::Auto,
                (Some(a), Some(_)) => {
                    self.error(a.span(), "`address` and `interface` both given", "keep one");
                    AddressSpec::Auto
                }
            };
            let tags = self.strings(&t, "tags").unwrap_or_default();
            let meta = self.string_map(&t, "meta").unwrap_or_default();
            let interval = self
                .duration(&t, "interval")
                .unwrap_or(Duration::from_secs(10));
            let health = self.command(&t, "health", interval);
            let ttl = self.duration(&t, "ttl").unwrap_or(interval * 5 / 2);
            if ttl <= interval {
                let span = t.key_span("ttl").unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!(
                        "`ttl` ({}) must be longer than `interval` ({})",
                        humantime::format_duration(ttl),
                        humantime::format_duration(interval)
                    ),
                    "a pass must arrive before the TTL runs out: use ttl of about 2-3 x interval",
                );
            }
            let initial_status = match self.string(&t, "initial_status") {
                Some(s) => match s.get_ref().parse::<Status>() {
                    Ok(st) => Some(st),
                    Err(e) => {
                        self.error(s.span(), e.to_string(), "");
                        None
                    }
                },
                None => None,
            };
            let deregister_after = self
                .duration(&t, "deregister_after")
                .unwrap_or(default_deregister);
            self.finish(&t, SERVICE_KEYS);
            let (Some(name), Some(port)) = (name, port) else {
                continue;
            };
            out.push(ServiceConfig {
                name: name.into_inner(),
                id: id.map(Spanned::into_inner),
                port,
                address,
                tags,
                meta,
                health,
                interval,
                ttl,
                initial_status,
                deregister_after,
            });
        }
        out
    }

    fn watches(&mut self, root: &Tbl, default_wait: Wait) -> Vec<WatchConfig> {
        let mut out = Vec::new();
        for t in self.tables(root, "watch") {
            let service = self.required_string(&t, "service", "service = \"sales\"");
            let tag = self.string(&t, "tag").map(Spanned::into_inner);
            let on_change = self.command(&t, "on_change", Duration::from_secs(60));
            if t.map.get("on_change").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `on_change`", t.section()),
                    "on_change = [\"/usr/local/bin/refresh\"]",
                );
            }
            let wait = self.wait(&t, "wait", default_wait);
            self.finish(&t, &["service", "tag", "on_change", "wait"]);
            if let (Some(service), Some(on_change)) = (service, on_change) {
                out.push(WatchConfig {
                    service: service.into_inner(),
                    tag,
                    on_change,
                    wait,
                });
            }
        }
        out
    }

    fn tasks(&mut self, root: &Tbl) -> Vec<TaskConfig> {
        let mut out = Vec::new();
        for (i, t) in self.tables(root, "task").into_iter().enumerate() {
            let every = self.duration(&t, "every");
            if t.map.get("every").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `every`", t.section()),
                    "every = \"5m\"",
                );
            }
            if every.is_some_and(|e| e.is_zero()) {
                let span = t.key_span("every").unwrap_or(t.span.clone());
                self.error(span, "`every` must be more than 0", "");
            }
            let timeout = self.duration(&t, "timeout");
            let exec = self.command(
                &t,
                "exec",
                timeout.or(every).unwrap_or(Duration::from_secs(60)),
            );
            if t.map.get("exec").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `exec`", t.section()),
                    "exec = [\"/usr/local/bin/backup\"]",
                );
            }
            let name = self.string(&t, "name").map(Spanned::into_inner);
            self.finish(&t, &["every", "exec", "timeout", "name"]);
            if let (Some(every), Some(mut exec)) = (every, exec) {
                if let Some(timeout) = timeout {
                    exec.timeout = timeout;
                }
                let name = name.unwrap_or_else(|| format!("task{}-{}", i + 1, exec.program.name()));
                out.push(TaskConfig { name, every, exec });
            }
        }
        out
    }

    fn main(&mut self, root: &Tbl) -> Option<MainConfig> {
        let t = self.table(root, "main")?;
        let hook_timeout = Duration::from_secs(600);
        let pre_start = self.command(&t, "pre_start", hook_timeout);
        let exec = self.command(&t, "exec", Duration::MAX).map(|c| c.program);
        let pre_stop = self.command(&t, "pre_stop", Duration::from_secs(60));
        let post_stop = self.command(&t, "post_stop", Duration::from_secs(60));
        let stop_timeout = self
            .duration(&t, "stop_timeout")
            .unwrap_or(Duration::from_secs(10));
        let stop_signals = self
            .signals(&t, "stop_signals")
            .unwrap_or_else(|| vec![Signal::SIGTERM, Signal::SIGINT]);
        let stop_signal = self.signal(&t, "stop_signal").unwrap_or(Signal::SIGTERM);
        let drain = self.duration(&t, "drain").unwrap_or(Duration::ZERO);
        let forward_signals = self
            .signals(&t, "forward_signals")
            .unwrap_or_else(|| vec![Signal::SIGUSR1, Signal::SIGUSR2]);
        for s in &forward_signals {
            if stop_signals.contains(s) {
                let span = t.key_span("forward_signals").unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!("{s} is both forwarded and a stop signal"),
                    "remove it from one of forward_signals and stop_signals",
                );
            }
        }
        for s in stop_signals.iter().chain(&forward_signals) {
            if matches!(s, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGCHLD) {
                self.error(
                    t.span.clone(),
                    format!("{s} cannot be caught or forwarded"),
                    "",
                );
            }
        }
        let restart = match self.string(&t, "restart") {
            None => Restart::Never,
            Some(s) => match s.get_ref().as_str() {
                "never" => Restart::Never,
                "on-failure" => Restart::OnFailure,
                "always" => Restart::Always,
                other => {
                    self.error(
                        s.span(),
                        format!("unknown restart policy {other:?}"),
                        "use \"never\", \"on-failure\" or \"always\"",
                    );
                    Restart::Never
                }
            },
        };
        let wait_for_templates = self
            .duration(&t, "wait_for_templates")
            .unwrap_or(Duration::from_secs(60));
        self.finish(&t, MAIN_KEYS);
        Some(MainConfig {
            pre_start,
            exec,
            pre_stop,
            post_stop,
            stop_timeout,
            stop_signals,
            stop_signal,
            drain,
            forward_signals,
            restart,
            wait_for_templates,
        })
    }
}

const DIR_KEYS: &[&str] = &["backend", "path", "block_wait", "retry", "deregister_after"];
const CONSUL_KEYS: &[&str] = &[
    "backend",
    "address",
    "token",
    "token_file",
    "datacenter",
    "stale",
    "block_wait",
    "retry",
    "deregister_after",
    "tls",
];
const ETCD_KEYS: &[&str] = &[
    "backend",
    "endpoints",
    "prefix",
    "username",
    "password",
    "block_wait",
    "retry",
    "deregister_after",
    "tls",
];
const ALL_CATALOG_KEYS: &[&str] = &[
    "backend",
    "path",
    "address",
    "token",
    "token_file",
    "datacenter",
    "stale",
    "endpoints",
    "prefix",
    "username",
    "password",
    "block_wait",
    "retry",
    "deregister_after",
    "tls",
];
const TEMPLATE_KEYS: &[&str] = &[
    "name",
    "source",
    "destination",
    "perms",
    "check",
    "check_mode",
    "reload",
    "wait",
    "write",
    "backup",
];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "id",
    "port",
    "address",
    "interface",
    "tags",
    "meta",
    "health",
    "interval",
    "ttl",
    "initial_status",
    "deregister_after",
];
const MAIN_KEYS: &[&str] = &[
    "pre_start",
    "exec",
    "pre_stop",
    "post_stop",
    "stop_timeout",
    "stop_signals",
    "stop_signal",
    "drain",
    "forward_signals",
    "restart",
    "wait_for_templates",
];

/// Used when neither `[defaults] wait` nor a template's `wait` is set: long enough to fold a
/// rolling deploy's burst into one reload, short enough that a newcomer sees the file follow.
pub const DEFAULT_WAIT: Wait = Wait {
    min: Duration::from_millis(500),
    max: Duration::from_secs(2),
};

fn default_catalog(dir: &Path) -> CatalogConfig {
    CatalogConfig {
        backend: Backend::Dir(DirSettings {
            path: dir.join("catalog"),
        }),
        block_wait: Duration::from_secs(60),
        retry: Retry {
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        },
        deregister_after: Duration::from_secs(600),
    }
}

/// `$XDG_RUNTIME_DIR/rewire.sock`, `/run/rewire.sock` as root, else `/tmp/rewire-<uid>.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("rewire.sock");
    }
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        PathBuf::from("/run/rewire.sock")
    } else {
        PathBuf::from(format!("/tmp/rewire-{uid}.sock"))
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|nl| before[nl + 1..].chars().count() + 1)
        .unwrap_or(before.chars().count() + 1);
    (line, col)
}

fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Strict durations: one or more `<number><unit>` with units ms, s, m, h, d (e.g. "1m30s").
/// "10 sec" or "10" are refused rather than guessed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?} is not a duration"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if rest.starts_with(char::is_whitespace) {
            return Err(format!("{s:?} has a space between the number and its unit"));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(format!("{s:?} has no unit")),
            other => return Err(format!("{s:?} has an unknown unit {other:?}")),
        };
        total += Duration::from_secs_f64(number * scale);
    }
    Ok(total)
}

pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| format!("unknown signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, Path::new("/etc/rewire/rewire.toml"), &env)
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .expect_err("config should be rejected")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn empty_config_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.catalog.backend,
            Backend::Dir(DirSettings {
                path: "/etc/rewire/catalog".into()
            })
        );
        assert_eq!(c.defaults.wait, DEFAULT_WAIT);
        assert!(c.main.is_none());
    }

    #[test]
    fn durations_are_strict() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 sec").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn all_problems_are_listed_with_locations() {
        let errs = errors(
            "[catalog]\nbackend = \"dir\"\nblok_wait = \"10s\"\n\n[defaults]\nwait = { min = \"10 sec\" }\n\n[[template]]\nsource = 5\n",
        );
        assert_eq!(errs.len(), 4, "{errs:#?}");
        assert!(errs[0].starts_with("/etc/rewire/rewire.toml:3:1: unknown key `blok_wait`"));
        assert!(errs[0].contains("did you mean `block_wait`"));
        assert!(errs[1].starts_with("/etc/rewire/rewire.toml:6:16: `min`"));
        assert!(errs[1].contains("hint: write a number with a unit"));
        assert!(errs.iter().any(|e| e.contains("needs `destination`")));
        assert!(
            errs.iter()
                .any(|e| e.contains(":9:10: `source` in [template[1]] must be a string"))
        );
    }

    #[test]
    fn interpolation_inside_strings_and_numbers() {
        let c = parse(
            "[catalog]\nbackend = \"consul\"\ntoken = \"${TOKEN}\"\naddress = \"http://${HOST:-127.0.0.1}:8500\"\n[[service]]\nname = \"web\"\nport = \"${PORT}\"\n",
        )
        .unwrap();
        let Backend::Consul(s) = &c.catalog.backend else {
            panic!()
        };
        assert_eq!(s.token.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(format!("{:?}", s.token), "Some(<redacted>)");
        assert_eq!(s.address.as_deref(), Some("http://127.0.0.1:8500"));
        assert_eq!(c.services[0].port, 8080);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let c = parse_str(
            "[[template]]\nsource = \"a.tera\"\ndestination = \"out.conf\"\nperms = \"${MODE:-0640}\"\n",
            &dir.path().join("rewire.toml"),
            &env,
        )
        .unwrap();
        assert_eq!(c.templates[0].perms, Some(0o640));
        let errs = errors("[catalog]\nbackend = \"consul\"\ntoken = \"${NOPE}\"\n");
        assert!(
            errs[0].contains(":3:9:") && errs[0].contains("NOPE is not set"),
            "{errs:?}"
        );
    }

    #[test]
    fn check_must_mention_file_and_destinations_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let text = "[[template]]\nsource = \"a.tera\"\ndestination = \"out.conf\"\ncheck = [\"nginx\", \"-t\"]\n\n[[template]]\nname = \"b\"\nsource = \"a.tera\"\ndestination = \"./out.conf\"\n";
        let errs: Vec<String> = parse_str(text, &dir.path().join("rewire.toml"), &env)
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs[0].contains(":4:1:") && errs[0].contains("{file}"));
        assert!(
            errs[1].contains(":9:15:")
                && errs[1].contains("already written by the template at line 3")
        );
    }

    #[test]
    fn commands_are_argv_or_explicit_shell() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tera"), "x").unwrap();
        let cfg = |reload: &str| {
            format!("[[template]]\nsource = \"a.tera\"\ndestination = \"out\"\nreload = {reload}\n")
        };
        let path = dir.path().join("rewire.toml");
        let c = parse_str(&cfg("[\"nginx\", \"-s\", \"reload\"]"), &path, &env).unwrap();
        assert_eq!(
            c.templates[0].reload,
            Some(Reload::Command(CommandSpec {
                program: Program::Argv(vec!["nginx".into(), "-s".into(), "reload".into()]),
                timeout: Duration::from_secs(30)
            }))
        );
        let c = parse_str(
            &cfg("{ shell = \"kill -HUP $(cat /run/x.pid)\", timeout = \"5s\" }"),
            &path,
            &env,
        )
        .unwrap();
        assert!(
            matches!(&c.templates[0].reload, Some(Reload::Command(CommandSpec { program: Program::Shell(_), timeout })) if *timeout == Duration::from_secs(5))
        );
        let c = parse_str(
            &cfg("{ signal = \"hup\", pidfile = \"/run/nginx.pid\" }"),
            &path,
            &env,
        )
        .unwrap();
        assert_eq!(
            c.templates[0].reload,
            Some(Reload::Signal {
                signal: Signal::SIGHUP,
                target: SignalTarget::Pidfile("/run/nginx.pid".into())
            })
        );
        let e = parse_str(&cfg("\"nginx -s reload\""), &path, &env).unwrap_err();
        assert!(e.to_string().contains("commands are argv arrays"));
        let e =
            parse_str(&cfg("{ signal = \"HUP\", target = \"main\" }"), &path, &env).unwrap_err();
        assert!(e.to_string().contains("needs a [main] section"));
    }

    #[test]
    fn wait_max_defaults_to_four_times_min() {
        let c = parse("[defaults]\nwait = { min = \"2s\" }\n").unwrap();
        assert_eq!(c.defaults.wait.max, Duration::from_secs(8));
        let c = parse("[defaults]\nwait = \"1s:3s\"\n").unwrap();
        assert_eq!(
            c.defaults.wait,
            Wait {
                min: Duration::from_secs(1),
                max: Duration::from_secs(3)
            }
        );
        assert!(
            errors("[defaults]\nwait = { min = \"5s\", max = \"1s\" }\n")[0]
                .contains("less than min")
        );
    }

    #[test]
    fn design_sketch_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/nginx.conf.tera"), "x").unwrap();
        let text = include_str!("../../tests/data/design-sketch.toml");
        let c = parse_str(text, &dir.path().join("rewire.toml"), &|_| None).unwrap();
        assert_eq!(c.templates[0].name, "nginx.conf");
        assert_eq!(c.services[0].ttl, Duration::from_secs(25));
        let m = c.main.unwrap();
        assert_eq!(m.stop_signals, vec![Signal::SIGTERM, Signal::SIGINT]);
        assert_eq!(c.tasks[0].exec.timeout, Duration::from_secs(60));
    }
}
