//! Reading an input tree key by key, so that every key nobody read can be reported with
//! its location (the same habit as rewire's own config parser).

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;

use super::plan::{Finding, Location, Wait};
use super::tree::{Node, Value};

/// The file being imported and what was found in it.
pub struct Ctx<'a> {
    pub file: &'a Path,
    pub src: &'a str,
    pub findings: Vec<Finding>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Ctx<'a> {
        Ctx {
            file,
            src,
            findings: Vec::new(),
        }
    }

    /// Where `node` is: its line and column when the reader kept its span, else `path`.
    pub fn at(&self, node: &Node, path: &str) -> Location {
        match &node.span {
            Some(span) if !(span.start == 0 && span.end == 0) => {
                let (line, col) = super::gotmpl::line_col(self.src, span.start);
                Location::Pos {
                    file: self.file.to_path_buf(),
                    line,
                    col,
                }
            }
            _ => Location::Path {
                file: self.file.to_path_buf(),
                path: path.to_string(),
            },
        }
    }

    /// Something a person has to act on.
    pub fn unmapped(&mut self, node: &Node, path: &str, what: impl Into<String>) {
        self.push(node, path, what.into(), true);
    }

    /// A remark about a mapping that is faithful, or close enough to say so.
    pub fn note(&mut self, node: &Node, path: &str, what: impl Into<String>) {
        self.push(node, path, what.into(), false);
    }

    fn push(&mut self, node: &Node, path: &str, what: String, needs_person: bool) {
        let at = self.at(node, path);
        // A line:col does not say which field; a JSON path already does.
        let what = match &at {
            Location::Pos { .. } if !path.is_empty() => format!("{path}: {what}"),
            _ => what,
        };
        self.findings.push(Finding {
            at,
            what,
            needs_person,
        });
    }

    /// Reports every key of `obj` that was not read.
    pub fn rest(&mut self, obj: &Obj, why: &str) {
        for (k, n) in obj.unused() {
            let path = obj.child(k);
            self.unmapped(n, &path, why.to_string());
        }
    }

    pub fn string(&mut self, obj: &Obj, key: &str) -> Option<String> {
        let n = obj.get(key)?;
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            Value::Num(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                let what = format!("expected a string, found {}", n.type_name());
                self.unmapped(n, &obj.child(key), what);
                None
            }
        }
    }

    pub fn boolean(&mut self, obj: &Obj, key: &str) -> Option<bool> {
        let n = obj.get(key)?;
        match &n.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" || s == "false" => Some(s == "true"),
            _ => {
                let what = format!("expected true or false, found {}", n.type_name());
                self.unmapped(n, &obj.child(key), what);
                None
            }
        }
    }

    pub fn strings(&mut self, obj: &Obj, key: &str) -> Option<Vec<String>> {
        let n = obj.get(key)?;
        match &n.value {
            Value::Str(s) => Some(vec![s.clone()]),
            Value::List(items) => {
                let mut out = Vec::new();
                for i in items {
                    match &i.value {
                        Value::Str(s) | Value::Num(s) => out.push(s.clone()),
                        _ => {
                            let what = format!("expected strings, found {}", i.type_name());
                            self.unmapped(i, &obj.child(key), what);
                            return None;
                        }
                    }
                }
                Some(out)
            }
            _ => {
                let what = format!("expected a list of strings, found {}", n.type_name());
                self.unmapped(n, &obj.child(key), what);
                None
            }
        }
    }

    /// A Go duration (`"1m30s"`) or a number of seconds, as rewire writes it.
    pub fn duration(&mut self, obj: &Obj, key: &str) -> Option<String> {
        let n = obj.get(key)?;
        let path = obj.child(key);
        let text = match &n.value {
            Value::Num(s) => format!("{s}s"),
            Value::Str(s) if s.starts_with("${") && s.ends_with('}') => format!("{s}s"),
            Value::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{s}s")
            }
            Value::Str(s) => s.clone(),
            _ => {
                let what = format!("expected a duration, found {}", n.type_name());
                self.unmapped(n, &path, what);
                return None;
            }
        };
        match go_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.unmapped(n, &path, e);
                None
            }
        }
    }

    /// `"5s:10s"` or `{ min, max }` (consul-template's wait).
    pub fn wait(&mut self, obj: &Obj, key: &str) -> Option<Wait> {
        let n = obj.get(key)?;
        let path = obj.child(key);
        match &n.value {
            Value::Str(s) => {
                let (min, max) = match s.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (s.as_str(), None),
                };
                let min = go_duration(min);
                let max = max.map(go_duration).transpose();
                match (min, max) {
                    (Ok(min), Ok(max)) => Some(Wait { min, max }),
                    (Err(e), _) | (_, Err(e)) => {
                        self.unmapped(n, &path, e);
                        None
                    }
                }
            }
            Value::Map(_) => {
                let w = Obj::new(n, &path)?;
                let min = self.duration(&w, "min");
                let max = self.duration(&w, "max");
                self.rest(&w, "not a wait setting (min, max)");
                Some(Wait { min: min?, max })
            }
            _ => {
                let what = format!(
                    "expected \"min:max\" or {{ min, max }}, found {}",
                    n.type_name()
                );
                self.unmapped(n, &path, what);
                None
            }
        }
    }
}

/// Go's duration syntax, checked against rewire's (which has no `us`/`ns`).
pub fn go_duration(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.contains("${") {
        return Ok(s.to_string());
    }
    match crate::config::parse_duration(s) {
        Ok(_) => Ok(s.to_string()),
        Err(e) => Err(format!(
            "{e}: rewire takes durations such as \"250ms\", \"10s\", \"1m30s\""
        )),
    }
}

/// An object being read; remembers which keys were taken.
pub struct Obj<'a> {
    entries: &'a [(String, Node)],
    path: String,
    used: RefCell<HashSet<String>>,
}

impl<'a> Obj<'a> {
    /// The object at `node`, or `None` when it is not one.
    pub fn new(node: &'a Node, path: &str) -> Option<Obj<'a>> {
        match &node.value {
            Value::Map(entries) => Some(Obj {
                entries,
                path: path.to_string(),
                used: RefCell::new(HashSet::new()),
            }),
            _ => None,
        }
    }

    /// The path of a child key, for messages.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// The last value under `key` (marks it read).
    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.used.borrow_mut().insert(key.to_string());
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n)
    }

    /// Every value under `key`: repeated HCL blocks, or the items of a list.
    pub fn all(&self, key: &str) -> Vec<&'a Node> {
        self.used.borrow_mut().insert(key.to_string());
        let mut out = Vec::new();
        for (k, n) in self.entries {
            if k != key {
                continue;
            }
            match &n.value {
                Value::List(items) => out.extend(items.iter()),
                _ => out.push(n),
            }
        }
        out
    }

    pub fn unused(&self) -> Vec<(&'a str, &'a Node)> {
        let used = self.used.borrow();
        self.entries
            .iter()
            .filter(|(k, _)| !used.contains(k) && k != "_labels")
            .map(|(k, n)| (k.as_str(), n))
            .collect()
    }
}
