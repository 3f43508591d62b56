//! `{{ .VAR }}` placeholders: replaced by markers before JSON parsing (they may sit outside
//! a string), then expanded to `${VAR}` / `${VAR:-x}` in every string of the parsed tree.

use super::*;

/// Private-use characters marking where a placeholder was (they cannot occur in a config).
pub(super) const OPEN: char = '\u{E000}';
pub(super) const CLOSE: char = '\u{E001}';

pub(super) struct Var {
    name: String,
    default: Option<String>,
}

/// Rewrites the config's Go template actions as markers that survive JSON parsing.
pub(super) fn replace_placeholders(ctx: &mut Ctx) -> Result<(String, Vec<Var>), Unreadable> {
    let src = ctx.src;
    let pieces = gotmpl::placeholders(src).map_err(|e| Unreadable {
        line: e.line,
        col: e.col,
        what: format!("cannot read the config's template syntax: {}", e.what),
    })?;
    let mut out = String::with_capacity(src.len());
    let mut vars = Vec::new();
    let mut scan = JsonScan::default();
    for piece in pieces {
        match piece {
            Piece::Text(r) => {
                scan.feed(&src[r.clone()]);
                out.push_str(&src[r]);
            }
            Piece::Var {
                name,
                default,
                span,
            } => {
                let (line, col) = gotmpl::line_col(src, span.start);
                let marker = format!("{OPEN}{}{CLOSE}", vars.len());
                let shown = match &default {
                    Some(d) => format!("${{{name}:-{d}}}"),
                    None => format!("${{{name}}}"),
                };
                if scan.in_string() {
                    out.push_str(&marker);
                } else {
                    out.push('"');
                    out.push_str(&marker);
                    out.push('"');
                    ctx.findings.push(Finding {
                        at: Location::Pos {
                            file: ctx.file.to_path_buf(),
                            line,
                            col,
                        },
                        what: format!(
                            "{} outside a JSON string is read as the string \"{shown}\" (rewire reads numbers from ${{VAR}} strings)",
                            &src[span]
                        ),
                        needs_person: false,
                    });
                }
                vars.push(Var { name, default });
            }
            Piece::Other { span } => {
                let (line, col) = gotmpl::line_col(src, span.start);
                if !scan.in_string() {
                    return Err(Unreadable {
                        line,
                        col,
                        what: format!(
                            "template logic {} outside a JSON string: render the config first (the environment it needs is the container's) and import the result",
                            &src[span]
                        ),
                    });
                }
                ctx.findings.push(Finding {
                    at: Location::Pos {
                        file: ctx.file.to_path_buf(),
                        line,
                        col,
                    },
                    what: format!(
                        "{} is Go template logic; only {{{{ .VAR }}}} and {{{{ .VAR | default \"x\" }}}} become ${{VAR}}: kept as text, rewrite it",
                        &src[span.clone()]
                    ),
                    needs_person: true,
                });
                // Kept as text inside the string: escape it for that string's quotes.
                let quote = scan.quote.unwrap_or('"');
                let mut kept = String::new();
                for c in src[span].chars() {
                    if c == '\\' || c == quote {
                        kept.push('\\');
                    }
                    kept.push(c);
                }
                out.push_str(&kept);
            }
        }
    }
    Ok((out, vars))
}

/// Tracks whether a position in JSON5 text is inside a string.
#[derive(Default)]
pub(super) struct JsonScan {
    quote: Option<char>,
    escaped: bool,
    line_comment: bool,
    block_comment: bool,
    last: char,
}

impl JsonScan {
    fn in_string(&self) -> bool {
        self.quote.is_some()
    }

    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if let Some(q) = self.quote {
                if self.escaped {
                    self.escaped = false;
                } else if c == '\\' {
                    self.escaped = true;
                } else if c == q {
                    self.quote = None;
                }
            } else if self.line_comment {
                if c == '\n' {
                    self.line_comment = false;
                }
            } else if self.block_comment {
                if self.last == '*' && c == '/' {
                    self.block_comment = false;
                }
            } else if c == '"' || c == '\'' {
                self.quote = Some(c);
            } else if self.last == '/' && c == '/' {
                self.line_comment = true;
            } else if self.last == '/' && c == '*' {
                self.block_comment = true;
            }
            self.last = c;
        }
    }
}

/// Replaces markers in every string by `${VAR}` / `${VAR:-x}`, escaping a literal `${`.
pub(super) fn expand(ctx: &mut Ctx, node: &mut Node, vars: &[Var], path: &str) {
    match &mut node.value {
        Value::Str(s) => {
            let (text, bad) = expand_str(s, vars);
            *s = text;
            if let Some(d) = bad {
                let n = node.clone();
                ctx.unmapped(&n, path, format!("the default {d:?} holds a `}}`, which ${{VAR:-default}} cannot carry; the variable is used without it"));
            }
        }
        Value::List(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(ctx, item, vars, &format!("{path}[{i}]"));
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                expand(ctx, v, vars, &p);
            }
        }
        _ => {}
    }
}

pub(super) fn expand_str(s: &str, vars: &[Var]) -> (String, Option<String>) {
    let mut out = String::with_capacity(s.len());
    let mut bad = None;
    let mut rest = s;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start].replace("${", "$${"));
        let after = &rest[start + OPEN.len_utf8()..];
        let Some(end) = after.find(CLOSE) else {
            out.push_str(after);
            return (out, bad);
        };
        let var = after[..end].parse::<usize>().ok().and_then(|i| vars.get(i));
        match var {
            Some(Var {
                name,
                default: Some(d),
            }) if !d.contains('}') => out.push_str(&format!("${{{name}:-{d}}}")),
            Some(Var { name, default }) => {
                if let Some(d) = default {
                    bad = Some(d.clone());
                }
                out.push_str(&format!("${{{name}}}"));
            }
            None => {}
        }
        rest = &after[end + CLOSE.len_utf8()..];
    }
    out.push_str(&rest.replace("${", "$${"));
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_become_interpolation_and_literal_dollars_are_escaped() {
        let vars = vec![
            Var {
                name: "CONSUL".into(),
                default: None,
            },
            Var {
                name: "PORT".into(),
                default: Some("80".into()),
            },
        ];
        let s = format!("http://{OPEN}0{CLOSE}:{OPEN}1{CLOSE}/${{x}}");
        assert_eq!(
            expand_str(&s, &vars).0,
            "http://${CONSUL}:${PORT:-80}/$${x}"
        );
    }

    #[test]
    fn json_scan_knows_strings_and_comments() {
        let mut s = JsonScan::default();
        s.feed("{ \"a\": \"x\\\"");
        assert!(s.in_string());
        s.feed("\", // \"\n b: '");
        assert!(s.in_string());
        s.feed("' /* \" */ ");
        assert!(!s.in_string());
    }
}
