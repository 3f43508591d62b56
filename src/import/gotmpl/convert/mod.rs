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

mod expr;
mod functions;
mod nodes;

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
    /// `nodes` and one of them.
    Nodes,
    Node,
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
            Kind::Nodes => Kind::Node,
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
            Kind::Nodes => "node",
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

    /// What Go's fmt prints for it (an action, `%v`, `%s`): a list of strings as `[a b]`;
    /// `Err` for a map or a list of records, whose Go form Tera has no equivalent for.
    fn printed(&self) -> Result<Val, &'static str> {
        match self.kind {
            Kind::Strings => Ok(Val::new(
                format!("\"[\" ~ ({} | join(sep=\" \")) ~ \"]\"", self.receiver()),
                Prec::Op,
                Kind::Str,
            )),
            Kind::Meta | Kind::Instances | Kind::Services | Kind::Nodes | Kind::Pairs => {
                Err("printing a whole list or map: Go's formatting of it has no Tera equivalent")
            }
            _ => Ok(self.clone()),
        }
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
        // A node's (`range nodes`): its name is `node` as on instances.
        "Meta" => ("meta", Kind::Meta),
        "Datacenter" => ("datacenter", Kind::Str),
        "TaggedAddresses" => ("tagged_addresses", Kind::Meta),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn conv(src: &str) -> Converted {
        convert(src, &Options::default()).unwrap()
    }

    pub(super) fn text(src: &str) -> String {
        let c = conv(src);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        c.text
    }

    /// Converts, checks the result parses as Tera, and returns text and problems.
    pub(super) fn checked(src: &str) -> Converted {
        let c = conv(src);
        if let Err(e) = super::super::check_tera(&c.text) {
            panic!("not valid Tera: {e}\n{}", c.text);
        }
        c
    }

    #[test]
    fn trim_markers_go_on_the_outer_tags() {
        assert_eq!(
            text("a\n{{- range $i, $t := service \"web\" -}}\n  x{{ $i }}\n{{- end }}"),
            "a\n{%- for t in service(name=\"web\") | sort(attribute=\"id\") | sort(attribute=\"node\") %}{% set i = loop.index0 -%}\n  x{{ i }}\n{%- endfor %}"
        );
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
}
