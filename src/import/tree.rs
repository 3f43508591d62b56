//! One tree for every input format: HCL (consul-template), JSON and JSON5 (ContainerPilot,
//! consul-template's JSON configs), with the position of each value where the reader gives one.
//!
//! The importers walk this tree, so they do not care which parser read the file. HCL values
//! keep their byte span in the original file; the JSON readers keep none, so findings there
//! name the JSON path (`jobs[1].when`) instead.

use std::ops::Range;

use hcl_edit::Span;
use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Body, Structure};
use hcl_edit::template::Element;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Byte span in the original file, when known.
    pub span: Option<Range<usize>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    /// A number as written (`0644` stays octal-looking).
    Num(String),
    Bool(bool),
    Null,
    List(Vec<Node>),
    /// Keys in file order; a key repeats for repeated HCL blocks.
    Map(Vec<(String, Node)>),
    /// An HCL expression with no plain value (a function call, a variable, ...).
    Expr(String),
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Str(_) => "a string",
            Value::Num(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Null => "null",
            Value::List(_) => "a list",
            Value::Map(_) => "an object",
            Value::Expr(_) => "an expression",
        }
    }
}

/// HCL input the parser could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadError {
    pub line: usize,
    pub col: usize,
    pub what: String,
}

/// Reads HCL. consul-template configs are HCL1 and the parser reads HCL2: `${` and `%{`
/// inside strings are escaped first (HCL1 keeps them literally; HCL2 would evaluate them),
/// and spans are mapped back to the original text.
pub fn read_hcl(src: &str) -> Result<Node, ReadError> {
    let (escaped, inserted) = escape_templates(src);
    let body = hcl_edit::parser::parse_body(&escaped).map_err(|e| {
        let loc = e.location();
        let back = unshift(&inserted, loc.offset());
        let (line, col) = super::gotmpl::line_col(src, back);
        ReadError {
            line,
            col,
            what: format!(
                "{} (consul-template reads HCL1; this reader takes the HCL2 subset of it: put each attribute of a block on its own line)",
                e.message()
            ),
        }
    })?;
    let r = Reader {
        src,
        inserted: &inserted,
    };
    Ok(Node {
        value: r.body(&body),
        span: Some(0..0),
    })
}

/// Maps an offset in the escaped text back to the original.
fn unshift(inserted: &[usize], offset: usize) -> usize {
    offset - inserted.partition_point(|&i| i < offset)
}

/// Turns hcl-edit's tree into ours, with spans in the original text.
struct Reader<'a> {
    src: &'a str,
    inserted: &'a [usize],
}

impl Reader<'_> {
    fn fix(&self, span: Option<Range<usize>>) -> Option<Range<usize>> {
        span.map(|r| unshift(self.inserted, r.start)..unshift(self.inserted, r.end))
    }

    fn body(&self, body: &Body) -> Value {
        let mut entries = Vec::new();
        for s in body.iter() {
            match s {
                Structure::Attribute(a) => {
                    entries.push((a.key.as_str().to_string(), self.expr(&a.value)));
                }
                Structure::Block(b) => {
                    let mut value = self.body(&b.body);
                    // `vault "x" { }`: labels are kept as a `_labels` entry for messages.
                    if !b.labels.is_empty()
                        && let Value::Map(m) = &mut value
                    {
                        let labels = b
                            .labels
                            .iter()
                            .map(|l| Node {
                                value: Value::Str(l.as_str().to_string()),
                                span: self.fix(l.span()),
                            })
                            .collect();
                        m.insert(
                            0,
                            (
                                "_labels".to_string(),
                                Node {
                                    value: Value::List(labels),
                                    span: self.fix(b.span()),
                                },
                            ),
                        );
                    }
                    entries.push((
                        b.ident.as_str().to_string(),
                        Node {
                            value,
                            span: self.fix(b.ident.span()),
                        },
                    ));
                }
            }
        }
        Value::Map(entries)
    }

    fn expr(&self, e: &Expression) -> Node {
        let span = self.fix(e.span());
        let value = match e {
            Expression::Null(_) => Value::Null,
            Expression::Bool(b) => Value::Bool(*b.value()),
            // As written: HCL1 read `0644` as octal, HCL2 as 644.
            Expression::Number(n) => Value::Num(
                span.as_ref()
                    .and_then(|r| self.src.get(r.clone()))
                    .map_or_else(|| n.value().to_string(), |raw| raw.trim().to_string()),
            ),
            Expression::String(s) => Value::Str(s.value().to_string()),
            Expression::Array(a) => Value::List(a.iter().map(|e| self.expr(e)).collect()),
            Expression::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            ObjectKey::Ident(i) => i.as_str().to_string(),
                            ObjectKey::Expression(e) => match &e {
                                Expression::String(s) => s.value().to_string(),
                                _ => format!("{e}"),
                            },
                        };
                        (key, self.expr(v.expr()))
                    })
                    .collect(),
            ),
            Expression::HeredocTemplate(h) => {
                let mut text = String::new();
                for el in h.template.iter() {
                    match el {
                        Element::Literal(l) => text.push_str(l.value()),
                        other => text.push_str(&format!("{other:?}")),
                    }
                }
                Value::Str(text)
            }
            Expression::StringTemplate(t) => Value::Str(t.to_string()),
            Expression::Parenthesis(p) => return self.expr(p.inner()),
            other => Value::Expr(format!("{other}")),
        };
        Node { value, span }
    }
}

/// Doubles `$` before `{` and `%` before `{` inside strings and heredocs, so HCL2 reads them
/// as the literal text HCL1 saw. Returns the new text and the original offsets where a
/// character was inserted.
fn escape_templates(src: &str) -> (String, Vec<usize>) {
    #[derive(PartialEq)]
    enum St {
        Code,
        Str,
        LineComment,
        BlockComment,
        Heredoc,
    }
    let mut out = String::with_capacity(src.len() + 16);
    let mut inserted = Vec::new();
    let mut st = St::Code;
    let mut heredoc_end = String::new();
    let b = src.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        match st {
            St::Code => {
                if c == b'"' {
                    st = St::Str;
                } else if c == b'#' || (c == b'/' && b.get(i + 1) == Some(&b'/')) {
                    st = St::LineComment;
                } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
                    st = St::BlockComment;
                } else if c == b'<' && b.get(i + 1) == Some(&b'<') {
                    let rest = &src[i + 2..];
                    let rest = rest.strip_prefix('-').unwrap_or(rest);
                    let id: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !id.is_empty() {
                        heredoc_end = id;
                        st = St::Heredoc;
                        // Copy through the end of the marker line.
                        let nl = src[i..].find('\n').map_or(src.len(), |n| i + n + 1);
                        out.push_str(&src[i..nl]);
                        i = nl;
                        line_start = true;
                        continue;
                    }
                }
            }
            St::Str => {
                if c == b'\\' {
                    // Copy the escape and the escaped character as they are.
                    let len = src[i + 1..].chars().next().map_or(0, char::len_utf8);
                    out.push_str(&src[i..i + 1 + len]);
                    i += 1 + len;
                    continue;
                }
                if c == b'"' || c == b'\n' {
                    st = St::Code;
                } else if (c == b'$' || c == b'%') && b.get(i + 1) == Some(&b'{') {
                    out.push(c as char);
                    inserted.push(i);
                }
            }
            St::Heredoc => {
                if line_start {
                    let line_end = src[i..].find('\n').map_or(src.len(), |n| i + n);
                    if src[i..line_end].trim() == heredoc_end {
                        st = St::Code;
                    }
                }
                if st == St::Heredoc && (c == b'$' || c == b'%') && b.get(i + 1) == Some(&b'{') {
                    out.push(c as char);
                    inserted.push(i);
                }
            }
            St::LineComment => {
                if c == b'\n' {
                    st = St::Code;
                }
            }
            St::BlockComment => {
                if c == b'*' && b.get(i + 1) == Some(&b'/') {
                    out.push_str("*/");
                    i += 2;
                    st = St::Code;
                    continue;
                }
            }
        }
        line_start = c == b'\n';
        let len = src[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&src[i..i + len]);
        i += len;
    }
    (out, inserted)
}

/// Reads JSON or JSON5 (JSON is a subset). Positions are not kept.
pub fn read_json5(src: &str) -> Result<Node, ReadError> {
    let v: serde_json::Value = json5::from_str(src).map_err(|e| {
        let (line, col) = e.position().map_or((0, 0), |p| (p.line + 1, p.column + 1));
        ReadError {
            line,
            col,
            what: e.to_string(),
        }
    })?;
    Ok(from_json(&v))
}

fn from_json(v: &serde_json::Value) -> Node {
    use serde_json::Value as J;
    let value = match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => Value::Num(n.to_string()),
        J::String(s) => Value::Str(s.clone()),
        J::Array(a) => Value::List(a.iter().map(from_json).collect()),
        J::Object(o) => Value::Map(o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
    };
    Node { value, span: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(n: &Node) -> &[(String, Node)] {
        match &n.value {
            Value::Map(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hcl1_strings_keep_dollar_braces_and_positions() {
        let src = "consul {\n  address = \"127.0.0.1:8500\"\n}\n\ntemplate {\n  command = \"echo ${HOME:-/root} %{x}\"\n  perms = 0644\n  wait = \"2s:10s\"\n}\n";
        let root = read_hcl(src).unwrap();
        let m = map(&root);
        assert_eq!(m[0].0, "consul");
        let t = map(&m[1].1);
        assert_eq!(t[0].1.value, Value::Str("echo ${HOME:-/root} %{x}".into()));
        assert_eq!(t[1].1.value, Value::Num("0644".into()));
        let span = t[2].1.span.clone().unwrap();
        assert_eq!(&src[span.clone()], "\"2s:10s\"");
        assert_eq!(super::super::gotmpl::line_col(src, span.start), (8, 10));
    }

    #[test]
    fn heredocs_and_comments() {
        let src = "# ${not} a string\ntemplate {\n  contents = <<EOF\n{{ key \"a\" }} ${x}\nEOF\n  destination = \"/tmp/out\" // ${y}\n}\n";
        let root = read_hcl(src).unwrap();
        let t = map(&map(&root)[0].1);
        assert_eq!(t[0].1.value, Value::Str("{{ key \"a\" }} ${x}\n".into()));
        assert_eq!(t[1].1.value, Value::Str("/tmp/out".into()));
    }

    #[test]
    fn unreadable_hcl_names_the_original_position() {
        let e = read_hcl("x = \"${a}\"\nwait { min = \"1s\" max = \"2s\" }\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
    }

    #[test]
    fn json5_reads_comments_and_trailing_commas() {
        let n = read_json5("{ // c\n jobs: [{name: 'a',},], }").unwrap();
        assert_eq!(map(&n)[0].0, "jobs");
        let e = read_json5("{\n  \"a\": }").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
