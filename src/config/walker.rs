//! The spanned walker: reads one TOML table key by key and reports every problem.
//!
//! serde derive stops at the first error, so the file is parsed into toml's spanned tree and
//! walked by hand. [`Tbl`] remembers which keys were read, so [`Walker::finish`] can report
//! the rest with the accepted keys and a did-you-mean. The getters here read plain TOML types
//! (strings, with `${VAR}` interpolation; numbers; tables; paths); [`values`](super::values)
//! adds the typed ones (durations, signals, commands, modes). Each getter reports its own
//! problems and returns `None` on error or absence, so a section reader goes on and finds the
//! next problem too.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::error::ConfigError;
use super::interpolate::interpolate;
use super::load::DiskCheck;
use super::parse::normalize;

pub(super) type Val<'i> = Spanned<DeValue<'i>>;

/// A table being read: remembers which keys were used so the rest can be reported.
pub(super) struct Tbl<'a, 'i> {
    pub(super) map: &'a DeTable<'i>,
    pub(super) span: Range<usize>,
    /// Dotted name for messages, e.g. `catalog.tls` or `template[2]`.
    pub(super) name: String,
    pub(super) used: std::cell::RefCell<HashSet<String>>,
}

impl<'a, 'i> Tbl<'a, 'i> {
    pub(super) fn new(map: &'a DeTable<'i>, span: Range<usize>, name: &str) -> Self {
        Tbl {
            map,
            span,
            name: name.to_string(),
            used: Default::default(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Val<'i>> {
        self.used.borrow_mut().insert(key.to_string());
        self.map.get(key)
    }

    pub(super) fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.map
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.span())
    }

    pub(super) fn section(&self) -> String {
        if self.name.is_empty() {
            "the top level".to_string()
        } else {
            format!("[{}]", self.name)
        }
    }
}

/// Walks one config file, collecting every problem.
pub(super) struct Walker<'s> {
    pub(super) src: &'s str,
    pub(super) file: &'s Path,
    pub(super) dir: PathBuf,
    pub(super) env: &'s dyn Fn(&str) -> Option<String>,
    pub(super) errors: Vec<ConfigError>,
    /// Allowed, but probably a mistake (see [`Config::warnings`](super::Config::warnings)).
    pub(super) warnings: Vec<ConfigError>,
    /// What only the disk can confirm, checked by [`load`](super::load::load), not here.
    pub(super) disk: Vec<DiskCheck>,
    /// Every `when` read so far, for the graph checks at the end.
    pub(super) whens: Vec<super::job::WhenRef>,
    /// Every `[[service]] job = ...` read so far.
    pub(super) service_jobs: Vec<super::job::ServiceJobRef>,
}

impl Walker<'_> {
    pub(super) fn error(
        &mut self,
        span: Range<usize>,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let e = self.located(span, what.into(), hint.into());
        self.errors.push(e);
    }

    /// Notes something allowed but probably wrong; the config is still valid.
    pub(super) fn warn(
        &mut self,
        span: Range<usize>,
        what: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let w = self.located(span, what.into(), hint.into());
        self.warnings.push(w);
    }

    fn located(&self, span: Range<usize>, what: String, hint: String) -> ConfigError {
        let (line, col) = line_col(self.src, span.start);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            what,
            hint,
        }
    }

    /// Reports keys of `t` that nobody read.
    pub(super) fn finish(&mut self, t: &Tbl, known: &[&str]) {
        let used = t.used.borrow().clone();
        for (k, _) in t.map.iter() {
            // A key the section accepts but did not read was skipped for a reason already
            // reported (e.g. `path` under an unknown backend): "unknown key `path`, did you
            // mean `path`?" would only confuse.
            if used.contains(k.get_ref().as_ref()) || known.contains(&k.get_ref().as_ref()) {
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

    pub(super) fn table<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Option<Tbl<'a, 'i>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(map) => Some(Tbl::new(map, v.span(), &join(&t.name, key))),
            other => {
                self.type_error(v.span(), t, key, "a table", other);
                None
            }
        }
    }

    pub(super) fn tables<'a, 'i>(&mut self, t: &Tbl<'a, 'i>, key: &str) -> Vec<Tbl<'a, 'i>> {
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

    pub(super) fn string(&mut self, t: &Tbl, key: &str) -> Option<Spanned<String>> {
        let v = t.get(key)?;
        self.string_value(v, t, key)
    }

    pub(super) fn string_value(&mut self, v: &Val, t: &Tbl, key: &str) -> Option<Spanned<String>> {
        match v.get_ref() {
            DeValue::String(s) => match interpolate(s, self.env) {
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

    pub(super) fn required_string(
        &mut self,
        t: &Tbl,
        key: &str,
        hint: &str,
    ) -> Option<Spanned<String>> {
        if t.map.get(key).is_none() {
            // A misspelt `key` is reported once, by `finish` ("unknown key `destinaton`, did
            // you mean `destination`?"), not also as missing.
            let misspelt = t
                .map
                .iter()
                .any(|(k, _)| suggest(k.get_ref(), &[key]).is_some());
            if misspelt {
                return None;
            }
            self.error(
                t.span.clone(),
                format!("{} needs `{key}`", t.section()),
                hint,
            );
            return None;
        }
        self.string(t, key)
    }

    /// `interface`: one name, or names to try in order (ContainerPilot's fallback lists).
    pub(super) fn interfaces(&mut self, t: &Tbl, key: &str) -> Option<Vec<String>> {
        let v = t.get(key)?;
        let names = match v.get_ref() {
            DeValue::Array(items) => self.string_items(items, t, key)?,
            _ => vec![self.string_value(v, t, key)?.into_inner()],
        };
        if names.is_empty() {
            self.error(
                v.span(),
                format!("`{key}` is an empty list"),
                "name an interface, such as \"eth0\", or several to try in order: [\"eth1\", \"eth0\"]",
            );
            return None;
        }
        Some(names)
    }

    pub(super) fn strings(&mut self, t: &Tbl, key: &str) -> Option<Vec<String>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(v.span(), t, key, "a list of strings", v.get_ref());
            return None;
        };
        self.string_items(items, t, key)
    }

    pub(super) fn string_items(
        &mut self,
        items: &DeArray,
        t: &Tbl,
        key: &str,
    ) -> Option<Vec<String>> {
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

    pub(super) fn string_map(&mut self, t: &Tbl, key: &str) -> Option<BTreeMap<String, String>> {
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

    pub(super) fn boolean(&mut self, t: &Tbl, key: &str) -> Option<bool> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.type_error(v.span(), t, key, "true or false", other);
                None
            }
        }
    }

    pub(super) fn integer(&mut self, t: &Tbl, key: &str) -> Option<Spanned<i64>> {
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

    pub(super) fn path(&mut self, t: &Tbl, key: &str) -> Option<PathBuf> {
        let s = self.string(t, key)?;
        if s.get_ref().is_empty() {
            self.error(s.span(), format!("`{key}` is empty"), "give a path");
            return None;
        }
        Some(normalize(&self.dir.join(s.get_ref())))
    }

    pub(super) fn type_error(
        &mut self,
        span: Range<usize>,
        t: &Tbl,
        key: &str,
        want: &str,
        got: &DeValue,
    ) {
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
}

pub(super) fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|nl| before[nl + 1..].chars().count() + 1)
        .unwrap_or(before.chars().count() + 1);
    (line, col)
}

/// The known key closest to a mistyped one, if it is close enough to be what was meant.
pub(super) fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// Every problem once, in file order.
pub(super) fn finish_sorted(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.line, e.col));
    errors.dedup();
    errors
}
