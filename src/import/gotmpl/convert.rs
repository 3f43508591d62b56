//! Translates the parsed Go template to Tera 2.
//!
//! Go's `.` (dot) becomes a named Tera variable: `range service "web"` binds each instance to
//! `s`, `with` binds its value to `w1`, and fields follow consul-template's names (`.Address`
//! is `s.address`, `.ServiceMeta.v` is `s.meta.v`). Pipelines are desugared the way Go runs
//! them (`x | f a` is `f a x`) before each function is mapped. consul-template sorts a
//! service's instances by node, then ID, and rewire by (address, port, id), so every converted
//! `service(...)` is followed by two stable sorts, ID first, then node, to keep the order and
//! with it the rendered bytes.
//!
//! A part with no translation is written as a Tera comment quoting the original line and
//! reported; the rest of the template still converts. Trim markers (`{{-`, `-}}`) carry over
//! to the Tera tags, on the first and last tag when one Go action becomes several.

use std::fmt::Write;

use super::SyntaxError;
use super::lex::{self, Trim};
use super::line_col;
use super::parse::{self, Arg, ArgKind, Branch, Cmd, CondKind, Else, Node, Pipe};

/// How to read the template.
#[derive(Debug, Clone)]
pub struct Options {
    pub left_delimiter: String,
    pub right_delimiter: String,
    /// consul-template's `error_on_missing_key`: a missing meta key is an error rather
    /// than empty.
    pub error_on_missing_key: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            left_delimiter: "{{".into(),
            right_delimiter: "}}".into(),
            error_on_missing_key: false,
        }
    }
}

/// The Tera text and what a person should look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    pub text: String,
    pub problems: Vec<Problem>,
}

/// Something in the template that did not translate exactly, at its position in the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub what: String,
    /// False for remarks about a faithful translation; true when the output differs from
    /// what consul-template would render, or does not render yet.
    pub needs_person: bool,
}

/// Converts a Go template to Tera. Only an unreadable template is an error; parts that do not
/// translate become comments listed in [`Converted::problems`].
pub fn convert(src: &str, opts: &Options) -> Result<Converted, SyntaxError> {
    let items = lex::lex(src, &opts.left_delimiter, &opts.right_delimiter)?;
    let nodes = parse::parse(src, items)?;
    let mut c = Conv {
        src,
        opts,
        out: String::with_capacity(src.len() + src.len() / 4),
        problems: Vec::new(),
        scopes: vec![Scope::default()],
        with_count: 0,
    };
    c.nodes(&nodes);
    Ok(Converted {
        text: c.out,
        problems: c.problems,
    })
}

/// Why a part could not be translated, and where.
struct Fail {
    at: usize,
    why: String,
}

fn fail<T>(at: usize, why: impl Into<String>) -> Result<T, Fail> {
    Err(Fail {
        at,
        why: why.into(),
    })
}

/// What a value is, as far as the converter can tell: it decides field names, whether a
/// range walks a map or a list, and the element kind of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Instances,
    Instance,
    Services,
    Service,
    Pairs,
    Pair,
    /// A map of strings (`.ServiceMeta`).
    Meta,
    /// A list of strings (`.Tags`).
    Strings,
    Str,
    Num,
    Bool,
    Any,
}

impl Kind {
    fn element(self) -> Kind {
        match self {
            Kind::Instances => Kind::Instance,
            Kind::Services => Kind::Service,
            Kind::Pairs => Kind::Pair,
            Kind::Strings | Kind::Meta => Kind::Str,
            _ => Kind::Any,
        }
    }

    /// A loop variable name for ranging over this kind without `$x :=`.
    fn loop_name(self) -> &'static str {
        match self {
            Kind::Instances => "s",
            Kind::Services => "svc",
            Kind::Pairs => "kv",
            Kind::Strings => "tag",
            Kind::Meta => "v",
            _ => "item",
        }
    }
}

/// How tightly an expression binds, to decide parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    /// A name, path, literal or call.
    Atom,
    /// Ends in a filter.
    Filter,
    /// A binary or unary operation.
    Op,
}

#[derive(Debug, Clone)]
struct Val {
    s: String,
    prec: Prec,
    kind: Kind,
    /// The string value, when the Go argument was a string literal.
    lit: Option<String>,
}

impl Val {
    fn new(s: impl Into<String>, prec: Prec, kind: Kind) -> Val {
        Val {
            s: s.into(),
            prec,
            kind,
            lit: None,
        }
    }

    /// As an operand of a binary operator.
    fn operand(&self) -> String {
        if self.prec == Prec::Atom {
            self.s.clone()
        } else {
            format!("({})", self.s)
        }
    }

    /// As the input of a filter.
    fn receiver(&self) -> String {
        if self.prec == Prec::Op {
            format!("({})", self.s)
        } else {
            self.s.clone()
        }
    }

    fn filter(&self, f: &str, kind: Kind) -> Val {
        Val::new(format!("{} | {f}", self.receiver()), Prec::Filter, kind)
    }
}

#[derive(Debug, Default)]
struct Scope {
    /// What `.` means here; `None` at the top, where consul-template's data is empty.
    dot: Option<Val>,
    /// Go variable name -> (Tera name, kind).
    vars: Vec<(String, String, Kind)>,
    /// Opened by a `{% for %}` (Tera's `set` is local to the loop there).
    is_loop: bool,
}

struct Conv<'s> {
    src: &'s str,
    opts: &'s Options,
    out: String,
    problems: Vec<Problem>,
    scopes: Vec<Scope>,
    with_count: usize,
}

const RESERVED: &[&str] = &[
    "true", "True", "false", "False", "loop", "self", "and", "or", "not", "is", "in", "continue",
    "break", "none", "None", "null", "if", "else", "for", "set",
];

/// Appended to every converted `service(...)`: consul-template's order (node, then ID).
const SORTED: &str = " | sort(attribute=\"id\") | sort(attribute=\"node\")";

/// Drops the sorting where order cannot matter (a truth test, a count).
fn unsorted(v: Val) -> Val {
    match v.s.strip_suffix(SORTED) {
        Some(call) if v.kind == Kind::Instances && !call.contains(" | ") => {
            Val::new(call, Prec::Atom, Kind::Instances)
        }
        _ => v,
    }
}

/// A Tera string literal.
fn tera_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn str_val(s: &str) -> Val {
    Val {
        s: tera_str(s),
        prec: Prec::Atom,
        kind: Kind::Str,
        lit: Some(s.to_string()),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A consul-template field and its rewire name and kind.
fn field(name: &str) -> Result<(&'static str, Kind), &'static str> {
    Ok(match name {
        "Address" => ("address", Kind::Str),
        "Port" => ("port", Kind::Num),
        "ID" => ("id", Kind::Str),
        "Name" => ("name", Kind::Str),
        "Tags" => ("tags", Kind::Strings),
        "Node" => ("node", Kind::Str),
        "ServiceMeta" => ("meta", Kind::Meta),
        "Status" => ("status", Kind::Str),
        "Key" => ("key", Kind::Str),
        "Value" => ("value", Kind::Str),
        "Path" => ("path", Kind::Str),
        "NodeAddress" | "NodeID" | "NodeMeta" | "NodeTaggedAddresses" | "NodeDatacenter" => {
            return Err("rewire's instances carry no node details beyond `node`");
        }
        "ServiceTaggedAddresses" | "Weights" | "Checks" | "Namespace" | "Partition" => {
            return Err("rewire's instances do not carry this field");
        }
        "Flags" | "Session" | "LockIndex" | "CreateIndex" | "ModifyIndex" => {
            return Err("rewire's key/value pairs carry key, path and value only");
        }
        _ => return Err("no such field in consul-template's data"),
    })
}

impl Conv<'_> {
    fn pos(&self, at: usize) -> (usize, usize) {
        line_col(self.src, at)
    }

    fn problem(&mut self, at: usize, what: impl Into<String>, needs_person: bool) {
        let (line, col) = self.pos(at);
        self.problems.push(Problem {
            line,
            col,
            what: what.into(),
            needs_person,
        });
    }

    // ---- output

    /// Writes Tera tags for one Go action: the left trim marker goes on the first, the right
    /// one on the last, so whitespace is removed exactly where Go removed it.
    fn tags(&mut self, trim: Trim, parts: &[String]) {
        for (i, p) in parts.iter().enumerate() {
            let l = if i == 0 && trim.left { "-" } else { "" };
            let r = if i + 1 == parts.len() && trim.right {
                "-"
            } else {
                ""
            };
            let _ = write!(self.out, "{{%{l} {p} {r}%}}");
        }
    }

    fn print(&mut self, trim: Trim, expr: &str) {
        let l = if trim.left { "-" } else { "" };
        let r = if trim.right { "-" } else { "" };
        let _ = write!(self.out, "{{{{{l} {expr} {r}}}}}");
    }

    /// Template text, with Tera's own delimiters escaped (they can appear in the text when the
    /// Go template used other delimiters, and `{#`/`{%` appear in shell or nginx text).
    fn text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(i) = ["{{", "{%", "{#"].iter().filter_map(|d| rest.find(d)).min() {
            self.out.push_str(&rest[..i]);
            let _ = write!(self.out, "{{{{ {} }}}}", tera_str(&rest[i..i + 2]));
            rest = &rest[i + 2..];
        }
        self.out.push_str(rest);
    }

    /// Leaves an untranslatable part as a comment quoting it, and reports it.
    fn comment_out(&mut self, trim: Trim, span: std::ops::Range<usize>, f: Fail) {
        let (line, _) = self.pos(span.start);
        let original = self.src[span].replace("#}", "# }");
        let l = if trim.left { "-" } else { "" };
        let r = if trim.right { "-" } else { "" };
        let _ = write!(
            self.out,
            "{{#{l} rewire import: line {line} not converted ({}): {original} {r}#}}",
            f.why.replace("#}", "# }")
        );
        self.problem(
            f.at,
            format!("not converted, left as a comment: {}", f.why),
            true,
        );
    }

    // ---- scopes

    fn dot(&self) -> Option<&Val> {
        self.scopes.iter().rev().find_map(|s| s.dot.as_ref())
    }

    fn lookup(&self, go: &str) -> Option<(usize, &str, Kind)> {
        self.scopes.iter().enumerate().rev().find_map(|(i, s)| {
            s.vars
                .iter()
                .rev()
                .find(|(g, _, _)| g == go)
                .map(|(_, t, k)| (i, t.as_str(), *k))
        })
    }

    fn name_taken(&self, name: &str) -> bool {
        RESERVED.contains(&name)
            || self
                .scopes
                .iter()
                .any(|s| s.vars.iter().any(|(_, t, _)| t == name))
    }

    /// A fresh Tera name based on `base`.
    fn fresh(&self, base: &str) -> String {
        let mut clean: String = base
            .chars()
            .map(|c| {
                if c == '_' || c.is_ascii_alphanumeric() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
            clean.insert(0, 'v');
        }
        if !self.name_taken(&clean) {
            return clean;
        }
        (2..)
            .map(|n| format!("{clean}{n}"))
            .find(|n| !self.name_taken(n))
            .expect("some numbered name is free")
    }

    fn declare(&mut self, go: &str, kind: Kind) -> String {
        let name = self.fresh(go);
        self.scopes
            .last_mut()
            .expect("the top scope is never popped")
            .vars
            .push((go.to_string(), name.clone(), kind));
        name
    }

    fn scoped(&mut self, scope: Scope, body: &[Node]) {
        self.scopes.push(scope);
        self.nodes(body);
        self.scopes.pop();
    }

    // ---- nodes

    fn nodes(&mut self, nodes: &[Node]) {
        for n in nodes {
            self.node(n);
        }
    }

    fn node(&mut self, node: &Node) {
        match node {
            Node::Text(r) => {
                let src = self.src;
                self.text(&src[r.clone()]);
            }
            Node::Comment { text, trim } => {
                let l = if trim.left { "-" } else { "" };
                let r = if trim.right { "-" } else { "" };
                let _ = write!(self.out, "{{#{l}{}{r}#}}", text.replace("#}", "# }"));
            }
            Node::Action { pipe, trim, span } => {
                if let Err(f) = self.action(pipe, *trim) {
                    self.comment_out(*trim, span.clone(), f);
                }
            }
            Node::Cond {
                branches,
                otherwise,
                end_trim,
                span,
                ..
            } => self.cond(branches, otherwise.as_ref(), *end_trim, span.clone()),
            Node::Range {
                pipe,
                trim,
                body,
                otherwise,
                end_trim,
                span,
            } => self.range(
                pipe,
                *trim,
                body,
                otherwise.as_ref(),
                *end_trim,
                span.clone(),
            ),
            Node::LoopControl { word, trim } => self.tags(*trim, &[word.to_string()]),
            Node::Unsupported { what, trim, span } => {
                let f = Fail {
                    at: span.start,
                    why: format!(
                        "{what} have no Tera translation here; use {{% include %}} or a Tera macro"
                    ),
                };
                self.comment_out(*trim, span.clone(), f);
            }
        }
    }

    fn action(&mut self, pipe: &Pipe, trim: Trim) -> Result<(), Fail> {
        let val = self.pipe(pipe)?;
        if pipe.decl.is_empty() {
            let printed = match val.kind {
                // Go prints a list as [a b].
                Kind::Strings => format!("\"[\" ~ ({} | join(sep=\" \")) ~ \"]\"", val.receiver()),
                Kind::Meta | Kind::Instances | Kind::Services | Kind::Pairs => {
                    return fail(
                        pipe.span.start,
                        "printing a whole list or map: Go's formatting of it has no Tera equivalent",
                    );
                }
                _ => val.s.clone(),
            };
            self.print(trim, &printed);
            return Ok(());
        }
        if pipe.decl.len() != 1 {
            return fail(
                pipe.span.start,
                "two variables are declared only in a range",
            );
        }
        let go = &pipe.decl[0];
        if pipe.assign {
            let Some((depth, name, _)) = self.lookup(go) else {
                return fail(
                    pipe.span.start,
                    format!("${go} is assigned before it is declared"),
                );
            };
            let name = name.to_string();
            // Tera's `set` inside a loop is local to the loop; Go's `=` changes the outer
            // variable. `set_global` reaches the top level only.
            let crosses_loop = self.scopes[depth + 1..].iter().any(|s| s.is_loop);
            let word = match (crosses_loop, depth) {
                (false, _) => "set",
                (true, 0) => "set_global",
                (true, _) => {
                    return fail(
                        pipe.span.start,
                        format!(
                            "${go} belongs to an outer loop; Tera cannot assign it from an inner one"
                        ),
                    );
                }
            };
            self.tags(trim, &[format!("{word} {name} = {}", val.s)]);
        } else {
            let name = self.declare(go, val.kind);
            self.tags(trim, &[format!("set {name} = {}", val.s)]);
        }
        Ok(())
    }

    fn cond(
        &mut self,
        branches: &[Branch],
        otherwise: Option<&Else>,
        end_trim: Trim,
        span: std::ops::Range<usize>,
    ) {
        // Translate every guard first: if one fails, the whole block stays as it was.
        let mut guards = Vec::new();
        for b in branches {
            match self.pipe(&b.pipe) {
                Ok(v) if b.kind == CondKind::If => guards.push(unsorted(v)),
                Ok(v) => guards.push(v),
                Err(f) => {
                    let trim = Trim {
                        left: branches[0].trim.left,
                        right: end_trim.right,
                    };
                    self.comment_out(trim, span, f);
                    return;
                }
            }
        }
        let mut open_ifs = 1;
        for (i, (b, guard)) in branches.iter().zip(guards).enumerate() {
            let mut parts = Vec::new();
            if i > 0 && b.kind == CondKind::With {
                parts.push("else".to_string());
                open_ifs += 1;
            }
            let mut scope = Scope::default();
            match b.kind {
                CondKind::If if b.pipe.decl.is_empty() => {
                    let word = if i == 0 { "if" } else { "elif" };
                    parts.push(format!("{word} {}", guard.s));
                }
                CondKind::If => {
                    // `if $x := pipeline`: declare, then test.
                    let name = self.declare(&b.pipe.decl[0], guard.kind);
                    if i > 0 {
                        parts.push("else".into());
                        open_ifs += 1;
                    }
                    parts.push(format!("set {name} = {}", guard.s));
                    parts.push(format!("if {name}"));
                }
                CondKind::With => {
                    self.with_count += 1;
                    let name = match b.pipe.decl.first() {
                        Some(go) => self.declare(go, guard.kind),
                        None => self.fresh(&format!("w{}", self.with_count)),
                    };
                    parts.push(format!("set {name} = {}", guard.s));
                    parts.push(format!("if {name}"));
                    scope.dot = Some(Val::new(name, Prec::Atom, guard.kind));
                }
            }
            self.tags(b.trim, &parts);
            self.scoped(scope, &b.body);
        }
        if let Some(e) = otherwise {
            self.tags(e.trim, &["else".to_string()]);
            self.scoped(Scope::default(), &e.body);
        }
        self.tags(end_trim, &vec!["endif".to_string(); open_ifs]);
    }

    fn range(
        &mut self,
        pipe: &Pipe,
        trim: Trim,
        body: &[Node],
        otherwise: Option<&Else>,
        end_trim: Trim,
        span: std::ops::Range<usize>,
    ) {
        let val = match self.pipe(pipe) {
            Ok(v) => v,
            Err(f) => {
                let t = Trim {
                    left: trim.left,
                    right: end_trim.right,
                };
                self.comment_out(t, span, f);
                return;
            }
        };
        let mut scope = Scope {
            is_loop: true,
            ..Scope::default()
        };
        self.scopes.push(Scope {
            is_loop: true,
            ..Scope::default()
        });
        let elem_kind = val.kind.element();
        let is_map = val.kind == Kind::Meta;
        let mut parts = Vec::new();
        let (index, elem) = match pipe.decl.as_slice() {
            [] => (None, None),
            [e] => (None, Some(e.as_str())),
            [i, e, ..] => (Some(i.as_str()), Some(e.as_str())),
        };
        let elem_name = match elem {
            Some(go) => self.declare(go, elem_kind),
            None => {
                let n = self.fresh(val.kind.loop_name());
                // Reserve it so inner loops pick another name.
                self.scopes.last_mut().expect("pushed above").vars.push((
                    String::new(),
                    n.clone(),
                    elem_kind,
                ));
                n
            }
        };
        if is_map {
            let key = match index {
                Some(go) => self.declare(go, Kind::Str),
                None => self.fresh("_k"),
            };
            parts.push(format!("for {key}, {elem_name} in {}", val.s));
        } else {
            parts.push(format!("for {elem_name} in {}", val.s));
            if let Some(go) = index {
                let i = self.declare(go, Kind::Num);
                parts.push(format!("set {i} = loop.index0"));
            }
        }
        let declared = self.scopes.pop().expect("pushed above");
        scope.vars = declared.vars;
        scope.dot = Some(Val::new(elem_name, Prec::Atom, elem_kind));
        self.tags(trim, &parts);
        self.scoped(scope, body);
        if let Some(e) = otherwise {
            self.tags(e.trim, &["else".to_string()]);
            self.scoped(Scope::default(), &e.body);
        }
        self.tags(end_trim, &["endfor".to_string()]);
    }

    // ---- expressions

    fn pipe(&mut self, pipe: &Pipe) -> Result<Val, Fail> {
        let mut acc: Option<Val> = None;
        for cmd in &pipe.cmds {
            acc = Some(self.cmd(cmd, acc)?);
        }
        acc.ok_or(Fail {
            at: pipe.span.start,
            why: "empty pipeline".into(),
        })
    }

    fn cmd(&mut self, cmd: &Cmd, piped: Option<Val>) -> Result<Val, Fail> {
        let first = &cmd.args[0];
        if let ArgKind::Ident(name) = &first.kind
            && !matches!(name.as_str(), "true" | "false" | "nil")
        {
            let mut args = Vec::new();
            for a in &cmd.args[1..] {
                args.push((self.operand(a)?, a.span.start));
            }
            if let Some(p) = piped {
                args.push((p, first.span.start));
            }
            return self.call(name, args, first.span.start);
        }
        if cmd.args.len() > 1 || piped.is_some() {
            return fail(
                first.span.start,
                "an argument given to a value that is not a function",
            );
        }
        self.operand(first)
    }

    fn operand(&mut self, arg: &Arg) -> Result<Val, Fail> {
        let at = arg.span.start;
        match &arg.kind {
            ArgKind::Dot(fields) => {
                let Some(dot) = self.dot().cloned() else {
                    return fail(
                        at,
                        "`.` is empty at the top of a consul-template template (there is no data); use it inside range or with",
                    );
                };
                self.fields(dot, fields, at)
            }
            ArgKind::Var(name, fields) => {
                if name.is_empty() {
                    return fail(at, "`$` (the template's data) is empty in consul-template");
                }
                let Some((_, tera, kind)) = self.lookup(name) else {
                    return fail(at, format!("${name} is not declared"));
                };
                let v = Val::new(tera, Prec::Atom, kind);
                self.fields(v, fields, at)
            }
            ArgKind::Ident(w) => match w.as_str() {
                "true" | "false" => Ok(Val::new(w.clone(), Prec::Atom, Kind::Bool)),
                "nil" => fail(at, "nil has no Tera equivalent"),
                other => self.call(other, Vec::new(), at),
            },
            ArgKind::Str(s) => Ok(str_val(s)),
            ArgKind::Char(c) => Ok(Val::new(u32::from(*c).to_string(), Prec::Atom, Kind::Num)),
            ArgKind::Number(n) => {
                let clean = n.replace('_', "");
                let parsed = if let Some(hex) = clean.strip_prefix("0x") {
                    i64::from_str_radix(hex, 16).ok().map(|v| v.to_string())
                } else if clean.parse::<i64>().is_ok() || clean.parse::<f64>().is_ok() {
                    Some(clean.trim_start_matches('+').to_string())
                } else {
                    None
                };
                match parsed {
                    Some(p) => Ok(Val::new(p, Prec::Atom, Kind::Num)),
                    None => fail(at, format!("the number {n} has no Tera form")),
                }
            }
            ArgKind::Sub(pipe, fields) => {
                let v = self.pipe(pipe)?;
                if fields.is_empty() {
                    return Ok(v);
                }
                if v.prec != Prec::Atom || v.s.starts_with('(') {
                    return fail(
                        at,
                        "a field of a parenthesized pipeline: Tera reads fields of names only; assign it to a variable first",
                    );
                }
                self.fields(v, fields, at)
            }
        }
    }

    /// Applies `.Field.sub` to a value.
    fn fields(&mut self, mut v: Val, fields: &[String], at: usize) -> Result<Val, Fail> {
        let mut in_meta = false;
        for f in fields {
            if v.prec != Prec::Atom {
                return fail(at, format!("field .{f} of a computed value"));
            }
            if v.kind == Kind::Meta {
                let access = if is_ident(f) {
                    format!("{}.{f}", v.s)
                } else {
                    format!("{}[{}]", v.s, tera_str(f))
                };
                v = Val::new(access, Prec::Atom, Kind::Str);
                in_meta = true;
                continue;
            }
            match v.kind {
                Kind::Instance | Kind::Service | Kind::Pair | Kind::Any => {}
                _ => return fail(at, format!("field .{f} of a value that has no fields")),
            }
            match field(f) {
                Ok((name, kind)) => v = Val::new(format!("{}.{name}", v.s), Prec::Atom, kind),
                Err(why) => return fail(at, format!("field .{f}: {why}")),
            }
        }
        if in_meta && !self.opts.error_on_missing_key {
            // Go renders a missing map key as nothing useful; an empty string is what a
            // template author expects (error_on_missing_key = true keeps Tera's error).
            v = v.filter("default(value=\"\")", Kind::Str);
        }
        Ok(v)
    }

    fn call(&mut self, name: &str, args: Vec<(Val, usize)>, at: usize) -> Result<Val, Fail> {
        let n = args.len();
        let want = |count: std::ops::RangeInclusive<usize>| -> Result<(), Fail> {
            if count.contains(&n) {
                Ok(())
            } else {
                fail(
                    at,
                    format!(
                        "{name} takes {} argument(s), got {n}",
                        if count.start() == count.end() {
                            count.start().to_string()
                        } else {
                            format!("{} to {}", count.start(), count.end())
                        }
                    ),
                )
            }
        };
        let a = |i: usize| args[i].0.clone();
        match name {
            "service" => {
                want(1..=2)?;
                self.service(&args, at)
            }
            "services" => {
                want(0..=1)?;
                match args.first().map(|(v, _)| v.lit.clone()) {
                    None => Ok(Val::new("services()", Prec::Atom, Kind::Services)),
                    Some(Some(dc)) if dc.is_empty() => {
                        Ok(Val::new("services()", Prec::Atom, Kind::Services))
                    }
                    Some(Some(dc)) => {
                        let dc = dc.trim_start_matches('@');
                        self.needs_dc(at, "services");
                        Ok(Val::new(
                            format!("services(dc={})", tera_str(dc)),
                            Prec::Atom,
                            Kind::Services,
                        ))
                    }
                    Some(None) => fail(at, "services with a computed datacenter"),
                }
            }
            "key" | "keyOrDefault" => {
                want(if name == "key" { 1..=1 } else { 2..=2 })?;
                let path = self.kv_path(&a(0), at, name)?;
                if name == "key" {
                    Ok(Val::new(format!("key({path})"), Prec::Atom, Kind::Str))
                } else {
                    // consul-template also uses the default for a key that exists but is
                    // empty; `default(boolean=true)` does the same.
                    let d = a(1);
                    Ok(Val::new(
                        format!(
                            "key({path}, default={}) | default(value={}, boolean=true)",
                            d.s, d.s
                        ),
                        Prec::Filter,
                        Kind::Str,
                    ))
                }
            }
            "ls" | "safeLs" | "tree" | "safeTree" => {
                want(1..=1)?;
                let path = self
                    .kv_path(&a(0), at, name)?
                    .replacen("path=", "prefix=", 1);
                if name.starts_with("safe") {
                    self.problem(
                        at,
                        format!("{name}: rewire renders an empty list for a missing prefix instead of refusing to render; check the template can take that"),
                        true,
                    );
                }
                if matches!(name, "ls" | "safeLs") {
                    // Top-level keys only, as consul-template's ls.
                    Ok(Val::new(
                        format!("[kv for kv in keys({path}) if kv.key and \"/\" not in kv.key]"),
                        Prec::Atom,
                        Kind::Pairs,
                    ))
                } else {
                    Ok(Val::new(format!("keys({path})"), Prec::Atom, Kind::Pairs))
                }
            }
            "env" => {
                want(1..=1)?;
                // consul-template renders an unset variable as "".
                Ok(Val::new(
                    format!("env(name={}, default=\"\")", a(0).s),
                    Prec::Atom,
                    Kind::Str,
                ))
            }
            "eq" => {
                if n < 2 {
                    return fail(at, "eq takes at least 2 arguments");
                }
                let first = a(0).operand();
                let alts: Vec<String> = args[1..]
                    .iter()
                    .map(|(v, _)| format!("{first} == {}", v.operand()))
                    .collect();
                Ok(Val::new(alts.join(" or "), Prec::Op, Kind::Bool))
            }
            "ne" | "lt" | "le" | "gt" | "ge" => {
                want(2..=2)?;
                let op = match name {
                    "ne" => "!=",
                    "lt" => "<",
                    "le" => "<=",
                    "gt" => ">",
                    _ => ">=",
                };
                Ok(Val::new(
                    format!("{} {op} {}", a(0).operand(), a(1).operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "and" | "or" => {
                if n < 1 {
                    return fail(at, format!("{name} takes at least 1 argument"));
                }
                let parts: Vec<String> = args.iter().map(|(v, _)| v.operand()).collect();
                let kind = if args.iter().all(|(v, _)| v.kind == Kind::Bool) {
                    Kind::Bool
                } else {
                    Kind::Any
                };
                Ok(Val::new(parts.join(&format!(" {name} ")), Prec::Op, kind))
            }
            "not" => {
                want(1..=1)?;
                Ok(Val::new(
                    format!("not {}", a(0).operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "printf" => {
                if n < 1 {
                    return fail(at, "printf takes a format");
                }
                self.printf(&args, at)
            }
            "print" => {
                want(1..=1)?;
                Ok(a(0))
            }
            "contains" | "in" => {
                want(2..=2)?;
                // contains NEEDLE HAYSTACK (pipe-friendly); in HAYSTACK NEEDLE.
                let (needle, hay) = if name == "contains" {
                    (a(0), a(1))
                } else {
                    (a(1), a(0))
                };
                Ok(Val::new(
                    format!("{} in {}", needle.operand(), hay.operand()),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "join" => {
                want(2..=2)?;
                Ok(a(1).filter(&format!("join(sep={})", a(0).s), Kind::Str))
            }
            "split" => {
                want(2..=2)?;
                Ok(a(1).filter(&format!("split(pat={})", a(0).s), Kind::Strings))
            }
            "replaceAll" => {
                want(3..=3)?;
                Ok(a(2).filter(
                    &format!("replace(from={}, to={})", a(0).s, a(1).s),
                    Kind::Str,
                ))
            }
            "regexReplaceAll" => {
                want(3..=3)?;
                Ok(a(2).filter(
                    &format!("regex_replace(pattern={}, rep={})", a(0).s, a(1).s),
                    Kind::Str,
                ))
            }
            "regexMatch" => {
                want(2..=2)?;
                Ok(Val::new(
                    format!("{} is matching(pat={})", a(1).receiver(), a(0).s),
                    Prec::Op,
                    Kind::Bool,
                ))
            }
            "toLower" | "toUpper" | "toTitle" | "trimSpace" => {
                want(1..=1)?;
                let f = match name {
                    "toLower" => "lower",
                    "toUpper" => "upper",
                    "toTitle" => "title",
                    _ => "trim",
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "len" => {
                want(1..=1)?;
                Ok(unsorted(a(0)).filter("length", Kind::Num))
            }
            "toJSON" | "toJSONPretty" => {
                want(1..=1)?;
                let f = if name == "toJSON" {
                    "json_encode"
                } else {
                    "json_encode(pretty=true)"
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "base64Encode" | "base64Decode" => {
                want(1..=1)?;
                let f = if name == "base64Encode" {
                    "b64_encode"
                } else {
                    "b64_decode"
                };
                Ok(a(0).filter(f, Kind::Str))
            }
            "index" => {
                if n < 2 {
                    return fail(at, "index takes a collection and at least one index");
                }
                let mut v = a(0);
                let was_meta = v.kind == Kind::Meta;
                for (k, _) in &args[1..] {
                    if v.prec != Prec::Atom {
                        return fail(
                            at,
                            "index of a computed value; assign it to a variable first",
                        );
                    }
                    v = Val::new(format!("{}[{}]", v.s, k.s), Prec::Atom, v.kind.element());
                }
                if was_meta {
                    // Go's index of a missing map key is the zero value.
                    v = v.filter("default(value=\"\")", Kind::Str);
                }
                Ok(v)
            }
            "add" | "subtract" | "multiply" | "modulo" => {
                want(2..=2)?;
                // consul-template's math takes the pipe-friendly order: `subtract B A` is A - B.
                let op = match name {
                    "add" => "+",
                    "subtract" => "-",
                    "multiply" => "*",
                    _ => "%",
                };
                Ok(Val::new(
                    format!("{} {op} {}", a(1).operand(), a(0).operand()),
                    Prec::Op,
                    Kind::Num,
                ))
            }
            "loop" => {
                want(1..=2)?;
                let call = if n == 1 {
                    format!("range(end={})", a(0).s)
                } else {
                    format!("range(start={}, end={})", a(0).s, a(1).s)
                };
                Ok(Val::new(call, Prec::Atom, Kind::Any))
            }
            "node" | "nodes" | "datacenters" => fail(
                at,
                format!(
                    "{name}: rewire has no {name}() function yet (planned with Consul's node and datacenter queries)"
                ),
            ),
            "byTag" | "byKey" | "byMeta" | "explode" | "explodeMap" | "parseJSON" | "parseInt"
            | "parseBool" | "parseFloat" | "parseUint" | "timestamp" | "file" | "plugin"
            | "secret" | "secrets" | "scratch" | "executeTemplate" | "connect" | "caRoots"
            | "caLeaf" | "keyExists" | "containsAll" | "containsAny" | "containsNone"
            | "containsNotAll" | "divide" | "minimum" | "maximum" | "sockaddr" | "writeToFile"
            | "mergeMap" | "toYAML" | "toTOML" | "indent" | "trim" | "trimPrefix"
            | "trimSuffix" | "spew_dump" | "spew_sdump" | "spew_printf" | "md5sum"
            | "sha256Hex" | "html" | "js" | "urlquery" | "slice" | "call" | "pkiCert"
            | "nomadService" | "nomadServices" | "nomadVar" | "nomadVarList" | "nomadVarExists" => {
                fail(
                    at,
                    format!(
                        "{name} has no translation to rewire's Tera functions yet; rewrite this part by hand"
                    ),
                )
            }
            other if other.starts_with("sprig_") => fail(
                at,
                format!(
                    "{other}: Sprig functions are not translated; most have a Tera filter of a similar name"
                ),
            ),
            other => fail(
                at,
                format!("unknown function `{other}` (consul-template does not define it either)"),
            ),
        }
    }

    fn needs_dc(&mut self, at: usize, function: &str) {
        self.problem(
            at,
            format!("uses another datacenter: converted to {function}(dc=...), which rewire does not offer yet"),
            true,
        );
    }

    /// `path="..."` (and `dc=...`) for a key query such as `"app/db@dc2"`.
    fn kv_path(&mut self, v: &Val, at: usize, function: &str) -> Result<String, Fail> {
        match &v.lit {
            Some(lit) => match lit.split_once('@') {
                Some((p, dc)) => {
                    self.needs_dc(at, if function == "key" { "key" } else { "keys" });
                    Ok(format!("path={}, dc={}", tera_str(p), tera_str(dc)))
                }
                None => Ok(format!("path={}", tera_str(lit))),
            },
            None => Ok(format!("path={}", v.s)),
        }
    }

    fn service(&mut self, args: &[(Val, usize)], at: usize) -> Result<Val, Fail> {
        let mut kwargs = Vec::new();
        let query = &args[0].0;
        let status_arg = args.get(1).map(|(v, _)| v.lit.clone());
        match &query.lit {
            Some(q) => {
                let (rest, filter) = match q.split_once('|') {
                    Some((r, f)) => (r, Some(f.to_string())),
                    None => (q.as_str(), None),
                };
                let filter = match (filter, status_arg) {
                    (f, None) => f,
                    (None, Some(Some(s))) => Some(s),
                    (Some(_), Some(_)) => {
                        return fail(at, "two status filters (in the query and as an argument)");
                    }
                    (None, Some(None)) => return fail(at, "a computed status filter"),
                };
                if rest.contains('~') {
                    return fail(at, "`~node` (nearness ordering) has no rewire equivalent");
                }
                let (rest, dc) = match rest.split_once('@') {
                    Some((r, dc)) => (r, Some(dc)),
                    None => (rest, None),
                };
                let (tag, name) = match rest.rsplit_once('.') {
                    Some((t, n)) => (Some(t), n),
                    None => (None, rest),
                };
                if name.is_empty() {
                    return fail(at, format!("service query {q:?} has no service name"));
                }
                kwargs.push(format!("name={}", tera_str(name)));
                if let Some(t) = tag {
                    kwargs.push(format!("tag={}", tera_str(t)));
                }
                if let Some(f) = filter {
                    let mut states: Vec<&str> = f
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect();
                    states.sort_unstable();
                    states.dedup();
                    for s in &states {
                        if !matches!(*s, "passing" | "warning" | "critical" | "any") {
                            return fail(
                                at,
                                format!(
                                    "status filter {s:?}: rewire knows passing, warning, critical and any"
                                ),
                            );
                        }
                    }
                    if states != ["passing"] && !states.is_empty() {
                        kwargs.push(format!("status={}", tera_str(&states.join(","))));
                    }
                }
                if let Some(dc) = dc {
                    self.needs_dc(at, "service");
                    kwargs.push(format!("dc={}", tera_str(dc)));
                }
            }
            // A computed name, such as `.Name` inside `range services`.
            None => {
                kwargs.push(format!("name={}", query.s));
                match status_arg {
                    None => {}
                    Some(Some(s)) if s == "passing" => {}
                    Some(Some(s)) => kwargs.push(format!("status={}", tera_str(&s))),
                    Some(None) => return fail(at, "a computed status filter"),
                }
            }
        }
        Ok(Val::new(
            format!("service({}){SORTED}", kwargs.join(", ")),
            Prec::Filter,
            Kind::Instances,
        ))
    }

    /// `printf` with %s, %d and %v becomes string concatenation.
    fn printf(&mut self, args: &[(Val, usize)], at: usize) -> Result<Val, Fail> {
        let Some(format) = args[0].0.lit.clone() else {
            return fail(at, "printf with a computed format");
        };
        let mut parts: Vec<String> = Vec::new();
        let mut literal = String::new();
        let mut next = 1;
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => literal.push('%'),
                Some('s' | 'd' | 'v') => {
                    let Some((v, _)) = args.get(next) else {
                        return fail(at, "printf has more verbs than arguments");
                    };
                    next += 1;
                    if !literal.is_empty() {
                        parts.push(tera_str(&literal));
                        literal.clear();
                    }
                    parts.push(v.operand());
                }
                Some(other) => {
                    return fail(
                        at,
                        format!(
                            "printf verb %{other}: only %s, %d and %v translate (write a Tera filter for the rest)"
                        ),
                    );
                }
                None => return fail(at, "printf format ends with %"),
            }
        }
        if next != args.len() {
            return fail(at, "printf has more arguments than verbs");
        }
        if !literal.is_empty() {
            parts.push(tera_str(&literal));
        }
        Ok(match parts.len() {
            0 => str_val(""),
            1 if args.len() == 1 => str_val(&format.replace("%%", "%")),
            1 => Val::new(format!("{} ~ \"\"", parts[0]), Prec::Op, Kind::Str),
            _ => Val::new(parts.join(" ~ "), Prec::Op, Kind::Str),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(src: &str) -> Converted {
        convert(src, &Options::default()).unwrap()
    }

    fn text(src: &str) -> String {
        let c = conv(src);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.text
    }

    #[test]
    fn service_ranges_keep_consul_templates_order_and_fields() {
        assert_eq!(
            text("{{ range service \"web\" }}server {{ .Address }}:{{ .Port }};\n{{ end }}"),
            "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}server {{ s.address }}:{{ s.port }};\n{% endfor %}"
        );
        assert_eq!(
            text(
                "{{ range $i, $s := service \"v2.web|passing,warning\" }}{{ $i }}={{ $s.ID }}{{ end }}"
            ),
            "{% for s in service(name=\"web\", tag=\"v2\", status=\"passing,warning\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set i = loop.index0 %}{{ i }}={{ s.id }}{% endfor %}"
        );
        // The two-argument form, and a computed name inside `range services`.
        assert_eq!(
            text(
                "{{ range services }}{{ range service .Name \"any\" }}{{ .Node }}{{ end }}{{ end }}"
            ),
            "{% for svc in services() %}{% for s in service(name=svc.name, status=\"any\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.node }}{% endfor %}{% endfor %}"
        );
    }

    #[test]
    fn trim_markers_go_on_the_outer_tags() {
        assert_eq!(
            text("a\n{{- range $i, $t := service \"web\" -}}\n  x{{ $i }}\n{{- end }}"),
            "a\n{%- for t in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set i = loop.index0 -%}\n  x{{ i }}\n{%- endfor %}"
        );
    }

    /// Converts, checks the result parses as Tera, and returns text and problems.
    fn checked(src: &str) -> Converted {
        let c = conv(src);
        if let Err(e) = super::super::check_tera(&c.text) {
            panic!("not valid Tera: {e}\n{}", c.text);
        }
        c
    }

    #[test]
    fn if_else_if_else_and_comparisons() {
        let c = checked(
            "{{ range service \"web\" }}{{ if and (eq .Port 80 443) (ne .Node \"n1\") }}a{{ else if not (gt .Port 1000) }}b{{ else }}c{{ end }}{{ end }}",
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert!(
            c.text.contains("{% if (s.port == 80 or s.port == 443) and (s.node != \"n1\") %}a{% elif not (s.port > 1000) %}b{% else %}c{% endif %}"),
            "{}",
            c.text
        );
    }

    #[test]
    fn with_binds_dot_and_else_with_nests() {
        let c = checked(
            "{{ with $v := key \"app/v\" }}v={{ $v }}{{ else with env \"V\" }}e={{ . }}{{ else }}none{{ end }}",
        );
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(
            c.text,
            "{% set v = key(path=\"app/v\") %}{% if v %}v={{ v }}{% else %}{% set w2 = env(name=\"V\", default=\"\") %}{% if w2 %}e={{ w2 }}{% else %}none{% endif %}{% endif %}"
        );
    }

    #[test]
    fn functions_map_to_tera_forms() {
        let cases = [
            (
                "{{ keyOrDefault \"app/x\" \"d\" }}",
                "{{ key(path=\"app/x\", default=\"d\") | default(value=\"d\", boolean=true) }}",
            ),
            (
                "{{ range ls \"app\" }}{{ .Key }}={{ .Value }}{{ end }}",
                "{% for kv in [kv for kv in keys(prefix=\"app\") if kv.key and \"/\" not in kv.key] %}{{ kv.key }}={{ kv.value }}{% endfor %}",
            ),
            (
                "{{ range tree \"app\" }}{{ .Key }}{{ end }}",
                "{% for kv in keys(prefix=\"app\") %}{{ kv.key }}{% endfor %}",
            ),
            (
                "{{ printf \"%s:%d\" \"a\" 80 }}",
                "{{ \"a\" ~ \":\" ~ 80 }}",
            ),
            (
                "{{ \"A b\" | toLower | trimSpace }}",
                "{{ \"A b\" | lower | trim }}",
            ),
            (
                "{{ range service \"web\" }}{{ join \",\" .Tags }}{{ if .Tags | contains \"x\" }}!{{ end }}{{ .Tags }}{{ end }}",
                "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.tags | join(sep=\",\") }}{% if \"x\" in s.tags %}!{% endif %}{{ \"[\" ~ (s.tags | join(sep=\" \")) ~ \"]\" }}{% endfor %}",
            ),
            (
                "{{ range service \"web\" }}{{ .ServiceMeta.version }}{{ index .ServiceMeta \"x-y\" }}{{ end }}",
                "{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{{ s.meta.version | default(value=\"\") }}{{ s.meta[\"x-y\"] | default(value=\"\") }}{% endfor %}",
            ),
            (
                "{{ range $k, $v := (index (service \"web\") 0).ServiceMeta }}{{ $k }}{{ end }}",
                "",
            ),
            (
                "{{ $n := len (service \"web\") }}{{ if gt $n 0 }}{{ $n }}{{ end }}",
                "{% set n = service(name=\"web\") | length %}{% if n > 0 %}{{ n }}{% endif %}",
            ),
            (
                "{{/* note */}}{{- /* trimmed */ -}}",
                "{# note #}{#- trimmed -#}",
            ),
            ("{{ 5 | subtract 2 }}", "{{ 5 - 2 }}"),
        ];
        for (go, want) in cases {
            let c = checked(go);
            if want.is_empty() {
                continue;
            }
            assert!(c.problems.is_empty(), "{go}: {:?}", c.problems);
            assert_eq!(c.text, want, "{go}");
        }
    }

    #[test]
    fn tera_delimiters_in_text_are_escaped() {
        let c = checked("echo ${#list[@]} {% raw %} [[ .X ]]");
        assert_eq!(
            c.text,
            "echo ${{ \"{#\" }}list[@]} {{ \"{%\" }} raw %} [[ .X ]]"
        );
        let c = convert(
            "{{ literal }} [[ range service \"web\" ]][[ .Port ]][[ end ]]",
            &Options {
                left_delimiter: "[[".into(),
                right_delimiter: "]]".into(),
                error_on_missing_key: true,
            },
        )
        .unwrap();
        assert!(
            c.text.starts_with("{{ \"{{\" }} literal }} {% for s in"),
            "{}",
            c.text
        );
        assert!(super::super::check_tera(&c.text).is_ok());
    }

    #[test]
    fn unknown_function_is_a_comment_naming_its_line() {
        let c = checked(
            "upstream x {\n  {{ range service \"web\" | byTag }}\n  {{ end }}\n  {{ frobnicate 1 }}\n}\n",
        );
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert_eq!((c.problems[0].line, c.problems[0].col), (2, 28));
        assert!(c.problems[0].what.contains("byTag"), "{:?}", c.problems[0]);
        assert_eq!((c.problems[1].line, c.problems[1].col), (4, 6));
        assert!(c.problems[1].what.contains("unknown function `frobnicate`"));
        assert!(c.problems.iter().all(|p| p.needs_person));
        assert!(
            c.text
                .contains("{# rewire import: line 2 not converted (byTag has no translation"),
            "{}",
            c.text
        );
        assert!(
            c.text
                .contains("{# rewire import: line 4 not converted (unknown function `frobnicate`")
        );
    }

    #[test]
    fn other_datacenters_convert_but_need_a_person() {
        let c =
            checked("{{ range service \"web@dc2\" }}{{ .Address }}{{ end }}{{ key \"a/b@dc2\" }}");
        assert!(
            c.text.contains("service(name=\"web\", dc=\"dc2\")"),
            "{}",
            c.text
        );
        assert!(
            c.text.contains("key(path=\"a/b\", dc=\"dc2\")"),
            "{}",
            c.text
        );
        assert_eq!(c.problems.len(), 2);
        assert!(c.problems[0].what.contains("service(dc=...)"));
    }

    #[test]
    fn dot_at_the_top_and_missing_end_are_reported() {
        let c = checked("{{ .Address }}");
        assert!(
            c.problems[0].what.contains("`.` is empty"),
            "{:?}",
            c.problems
        );
        let e = convert("a\n{{ range service \"web\" }}\n", &Options::default()).unwrap_err();
        assert_eq!((e.line, e.col), (2, 1));
        assert!(e.what.contains("never closed"));
        let e = convert("{{ range service \"web\" }\n{{ end }}", &Options::default()).unwrap_err();
        assert_eq!((e.line, e.col), (1, 24));
        assert!(e.what.contains("unexpected `}`"), "{e}");
    }

    #[test]
    fn assignment_inside_a_loop_reaches_the_top_level() {
        let c =
            checked("{{ $n := 0 }}{{ range service \"web\" }}{{ $n = add $n 1 }}{{ end }}{{ $n }}");
        assert_eq!(
            c.text,
            "{% set n = 0 %}{% for s in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set_global n = 1 + n %}{% endfor %}{{ n }}"
        );
    }
}
