//! Go text/template, the language of consul-template's `.ctmpl` files and of ContainerPilot's
//! config placeholders, read with a real lexer and parser and translated to Tera 2.
//!
//! Regex rewriting breaks on the first nested pipeline or a `}}` inside a string; a tree
//! does not, and it knows the line of every construct, so what cannot be translated is left
//! as a Tera comment quoting the original and listed with its position.

mod convert;
mod lex;
mod parse;

pub use convert::{Converted, Options, Problem, convert};

/// A template the parser cannot read (unclosed action, `end` without an opening, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {what}")]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub what: String,
}

impl SyntaxError {
    fn at(src: &str, offset: usize, what: impl Into<String>) -> SyntaxError {
        let (line, col) = line_col(src, offset);
        SyntaxError {
            line,
            col,
            what: what.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, col)
}

/// One piece of a ContainerPilot config read as a template: text to keep, or a placeholder.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(std::ops::Range<usize>),
    /// `{{ .VAR }}`, `{{ env "VAR" }}`, optionally `| default "x"`.
    Var {
        name: String,
        default: Option<String>,
        span: std::ops::Range<usize>,
    },
    /// Any other action (logic, functions): kept out, reported.
    Other {
        span: std::ops::Range<usize>,
    },
}

/// Splits a ContainerPilot config (a Go template over the environment) into text and
/// placeholders. Comments are dropped; trim markers are honoured on the text around them.
pub fn placeholders(src: &str) -> Result<Vec<Piece>, SyntaxError> {
    use lex::{Item, Tok};
    let items = lex::lex(src, "{{", "}}")?;
    let mut out = Vec::new();
    let mut trim_next = false;
    for item in &items {
        let trim_prev = |out: &mut Vec<Piece>| {
            if let Some(Piece::Text(r)) = out.last_mut() {
                let kept = src[r.clone()]
                    .trim_end_matches([' ', '\t', '\r', '\n'])
                    .len();
                r.end = r.start + kept;
            }
        };
        match item {
            Item::Text(r) => {
                let mut r = r.clone();
                if trim_next {
                    let skipped = src[r.clone()].len()
                        - src[r.clone()]
                            .trim_start_matches([' ', '\t', '\r', '\n'])
                            .len();
                    r.start += skipped;
                }
                out.push(Piece::Text(r));
                trim_next = false;
            }
            Item::Comment { trim, .. } => {
                if trim.left {
                    trim_prev(&mut out);
                }
                trim_next = trim.right;
            }
            Item::Action { tokens, trim, span } => {
                if trim.left {
                    trim_prev(&mut out);
                }
                trim_next = trim.right;
                let kinds: Vec<&Tok> = tokens.iter().map(|t| &t.kind).collect();
                let var = match kinds.as_slice() {
                    [Tok::Field(n)] => Some((n.clone(), None)),
                    [Tok::Ident(f), Tok::Str(n)] if f == "env" => Some((n.clone(), None)),
                    [Tok::Field(n), Tok::Pipe, Tok::Ident(d), v] if d == "default" => {
                        literal(v).map(|v| (n.clone(), Some(v)))
                    }
                    [Tok::Ident(f), Tok::Str(n), Tok::Pipe, Tok::Ident(d), v]
                        if f == "env" && d == "default" =>
                    {
                        literal(v).map(|v| (n.clone(), Some(v)))
                    }
                    _ => None,
                };
                out.push(match var {
                    Some((name, default)) => Piece::Var {
                        name,
                        default,
                        span: span.clone(),
                    },
                    None => Piece::Other { span: span.clone() },
                });
            }
        }
    }
    Ok(out)
}

/// A string or number default, as text.
fn literal(t: &lex::Tok) -> Option<String> {
    match t {
        lex::Tok::Str(s) | lex::Tok::Number(s) => Some(s.clone()),
        _ => None,
    }
}

/// Checks that converted text parses as Tera with the functions and filters the converter
/// emits (rewire registers them; here they are stand-ins that only need to exist).
pub fn check_tera(text: &str) -> Result<(), String> {
    use tera::{Kwargs, State, Value};
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::<&'static str>::new());
    for f in [
        "service",
        "services",
        "key",
        "keys",
        "env",
        "nodes",
        "datacenters",
    ] {
        tera.register_function(f, |_: Kwargs, _: &State| Value::none());
    }
    for f in ["regex_replace", "json_encode", "b64_encode", "b64_decode"] {
        tera.register_filter(f, |v: Value, _: Kwargs, _: &State| v);
    }
    tera.register_test("matching", |_: Value, _: Kwargs, _: &State| true);
    tera.add_raw_template("converted", text)
        .map(|_| ())
        .map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
}
