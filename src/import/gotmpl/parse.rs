//! Builds a tree from the lexed items: text, comments, actions and the control structures
//! (`if`/`else if`/`else`, `range ... else`, `with ... else`, `end`), each with its span so
//! the converter can quote the original when it cannot translate a part.

use std::ops::Range;

use super::SyntaxError;
use super::lex::{Item, Tok, Token, Trim};

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Text(Range<usize>),
    Comment {
        text: String,
        trim: Trim,
    },
    /// `{{ pipeline }}`, including declarations (`{{ $x := ... }}`).
    Action {
        pipe: Pipe,
        trim: Trim,
        span: Range<usize>,
    },
    /// `if` and `with`: one or more guarded branches, an optional else, then `end`.
    Cond {
        kind: CondKind,
        branches: Vec<Branch>,
        otherwise: Option<Else>,
        end_trim: Trim,
        span: Range<usize>,
    },
    Range {
        pipe: Pipe,
        trim: Trim,
        body: Vec<Node>,
        otherwise: Option<Else>,
        end_trim: Trim,
        span: Range<usize>,
    },
    /// `break` / `continue` inside a range.
    LoopControl {
        word: &'static str,
        trim: Trim,
    },
    /// A construct with no Tera translation (`define`, `template`, `block`): kept as a comment.
    Unsupported {
        what: String,
        trim: Trim,
        span: Range<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondKind {
    If,
    With,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// The kind of this branch's own guard: `{{ with }}...{{ else if }}` mixes them.
    pub kind: CondKind,
    pub pipe: Pipe,
    /// The trim markers of the tag opening this branch.
    pub trim: Trim,
    pub body: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Else {
    pub trim: Trim,
    pub body: Vec<Node>,
}

/// `[$a[, $b] (:= | =)] cmd | cmd | ...`
#[derive(Debug, Clone, PartialEq)]
pub struct Pipe {
    pub decl: Vec<String>,
    /// `=` (assign to an existing variable) rather than `:=`.
    pub assign: bool,
    pub cmds: Vec<Cmd>,
    pub span: Range<usize>,
}

/// One command: a function with arguments, or a single operand.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmd {
    pub args: Vec<Arg>,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub kind: ArgKind,
    pub span: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArgKind {
    /// `.` followed by fields (`.Name.x` is `Dot` with `["Name", "x"]`; `.` alone has none).
    Dot(Vec<String>),
    /// `$x.Field...`; `$` alone has an empty name.
    Var(String, Vec<String>),
    /// A function name, `true`/`false` or `nil`.
    Ident(String),
    Str(String),
    Char(char),
    Number(String),
    /// `( pipeline )` with optional fields after it.
    Sub(Box<Pipe>, Vec<String>),
}

/// Parses `src` (already lexed into `items`) into a tree.
pub fn parse(src: &str, items: Vec<Item>) -> Result<Vec<Node>, SyntaxError> {
    let mut p = Parser {
        src,
        items: items.into_iter().peekable(),
    };
    let (nodes, end) = p.list()?;
    match end {
        None => Ok(nodes),
        Some(stop) => Err(SyntaxError::at(
            src,
            stop.span.start,
            format!("unexpected {{{{ {} }}}} with nothing open", stop.word),
        )),
    }
}

/// The tag that ended a list: `end`, `else`, `else if ...`, `else with ...`.
struct Stop {
    word: &'static str,
    /// For `else if` / `else with`: the guard.
    guard: Option<(CondKind, Pipe)>,
    trim: Trim,
    span: Range<usize>,
}

struct Parser<'s> {
    src: &'s str,
    items: std::iter::Peekable<std::vec::IntoIter<Item>>,
}

impl Parser<'_> {
    fn err(&self, at: usize, what: impl Into<String>) -> SyntaxError {
        SyntaxError::at(self.src, at, what)
    }

    /// Reads nodes until EOF or a stop tag (`end`, `else`).
    fn list(&mut self) -> Result<(Vec<Node>, Option<Stop>), SyntaxError> {
        let mut nodes = Vec::new();
        while let Some(item) = self.items.next() {
            match item {
                Item::Text(r) => nodes.push(Node::Text(r)),
                Item::Comment { text, trim, .. } => nodes.push(Node::Comment { text, trim }),
                Item::Action { tokens, trim, span } => match self.action(tokens, trim, span)? {
                    Step::Node(n) => nodes.push(n),
                    Step::Stop(s) => return Ok((nodes, Some(s))),
                },
            }
        }
        Ok((nodes, None))
    }

    fn action(
        &mut self,
        tokens: Vec<Token>,
        trim: Trim,
        span: Range<usize>,
    ) -> Result<Step, SyntaxError> {
        let Some(first) = tokens.first() else {
            return Err(self.err(span.start, "missing value for command: the action is empty"));
        };
        let keyword = match &first.kind {
            Tok::Ident(w) => w.as_str(),
            _ => "",
        };
        let rest = &tokens[1..];
        match keyword {
            "end" => {
                self.no_more(rest, "end")?;
                Ok(Step::Stop(Stop {
                    word: "end",
                    guard: None,
                    trim,
                    span,
                }))
            }
            "else" => {
                let guard = match rest.first().map(|t| &t.kind) {
                    None => None,
                    Some(Tok::Ident(w)) if w == "if" || w == "with" => {
                        let kind = if w == "if" {
                            CondKind::If
                        } else {
                            CondKind::With
                        };
                        Some((kind, self.pipe(&rest[1..], rest[0].span.end, true)?))
                    }
                    Some(_) => {
                        return Err(self.err(
                            rest[0].span.start,
                            "unexpected token after `else`: write {{ else }}, {{ else if ... }} or {{ else with ... }}",
                        ));
                    }
                };
                Ok(Step::Stop(Stop {
                    word: "else",
                    guard,
                    trim,
                    span,
                }))
            }
            "if" | "with" => {
                let kind = if keyword == "if" {
                    CondKind::If
                } else {
                    CondKind::With
                };
                let pipe = self.pipe(rest, first.span.end, true)?;
                self.cond(kind, pipe, trim, span)
            }
            "range" => {
                let pipe = self.pipe(rest, first.span.end, true)?;
                let (body, stop) = self.list()?;
                let stop = self.expect_stop(stop, span.start, "range")?;
                let (otherwise, end) = if stop.word == "else" {
                    if stop.guard.is_some() {
                        return Err(self.err(
                            stop.span.start,
                            "{{ range }} takes a plain {{ else }}, not {{ else if }}",
                        ));
                    }
                    let (else_body, end) = self.list()?;
                    let end = self.expect_stop(end, span.start, "range")?;
                    if end.word != "end" {
                        return Err(self.err(
                            end.span.start,
                            "{{ range }} takes one {{ else }}: expected {{ end }}",
                        ));
                    }
                    (
                        Some(Else {
                            trim: stop.trim,
                            body: else_body,
                        }),
                        end,
                    )
                } else {
                    (None, stop)
                };
                Ok(Step::Node(Node::Range {
                    pipe,
                    trim,
                    body,
                    otherwise,
                    end_trim: end.trim,
                    span: span.start..end.span.end,
                }))
            }
            "break" | "continue" => {
                self.no_more(rest, keyword)?;
                Ok(Step::Node(Node::LoopControl {
                    word: if keyword == "break" {
                        "break"
                    } else {
                        "continue"
                    },
                    trim,
                }))
            }
            "define" | "block" => {
                // Skip to the matching end; the whole thing becomes a comment.
                let (_, stop) = self.list_skipping_elses()?;
                let end = self.expect_stop(stop, span.start, keyword)?;
                Ok(Step::Node(Node::Unsupported {
                    what: format!("{{{{ {keyword} }}}} (named templates)"),
                    trim: Trim {
                        left: trim.left,
                        right: end.trim.right,
                    },
                    span: span.start..end.span.end,
                }))
            }
            "template" => Ok(Step::Node(Node::Unsupported {
                what: "{{ template }} (named templates)".into(),
                trim,
                span,
            })),
            _ => {
                let pipe = self.pipe(&tokens, span.start, true)?;
                Ok(Step::Node(Node::Action { pipe, trim, span }))
            }
        }
    }

    /// `if`/`with` after its first guard: branches until `end`.
    fn cond(
        &mut self,
        kind: CondKind,
        first: Pipe,
        trim: Trim,
        span: Range<usize>,
    ) -> Result<Step, SyntaxError> {
        let mut branches = Vec::new();
        let mut guard = (kind, first, trim);
        let mut otherwise = None;
        let word = if kind == CondKind::If { "if" } else { "with" };
        let end = loop {
            let (body, stop) = self.list()?;
            branches.push(Branch {
                kind: guard.0,
                pipe: guard.1,
                trim: guard.2,
                body,
            });
            let mut stop = self.expect_stop(stop, span.start, word)?;
            if stop.word == "end" {
                break stop;
            }
            match stop.guard.take() {
                Some((k, pipe)) => guard = (k, pipe, stop.trim),
                None => {
                    let (body, end) = self.list()?;
                    let end = self.expect_stop(end, span.start, word)?;
                    if end.word != "end" {
                        return Err(self.err(
                            end.span.start,
                            format!("{{{{ else }}}} must be the last branch of {{{{ {word} }}}}: expected {{{{ end }}}}"),
                        ));
                    }
                    otherwise = Some(Else {
                        trim: stop.trim,
                        body,
                    });
                    break end;
                }
            }
        };
        Ok(Step::Node(Node::Cond {
            kind,
            branches,
            otherwise,
            end_trim: end.trim,
            span: span.start..end.span.end,
        }))
    }

    /// For `define`/`block` bodies: reads through `else` tags up to the closing `end`.
    fn list_skipping_elses(&mut self) -> Result<(Vec<Node>, Option<Stop>), SyntaxError> {
        loop {
            let (nodes, stop) = self.list()?;
            match stop {
                Some(s) if s.word == "else" => continue,
                other => return Ok((nodes, other)),
            }
        }
    }

    fn expect_stop(
        &self,
        stop: Option<Stop>,
        open: usize,
        word: &str,
    ) -> Result<Stop, SyntaxError> {
        stop.ok_or_else(|| {
            self.err(
                open,
                format!("{{{{ {word} }}}} is never closed: add {{{{ end }}}}"),
            )
        })
    }

    fn no_more(&self, rest: &[Token], word: &str) -> Result<(), SyntaxError> {
        match rest.first() {
            None => Ok(()),
            Some(t) => Err(self.err(t.span.start, format!("unexpected token after `{word}`"))),
        }
    }

    /// A pipeline from tokens; `allow_decl` permits `$x :=` at its start.
    fn pipe(&self, toks: &[Token], at: usize, allow_decl: bool) -> Result<Pipe, SyntaxError> {
        let mut decl = Vec::new();
        let mut assign = false;
        let mut i = 0;
        if allow_decl {
            // `$a :=`, `$a, $b :=`, `$a =`
            let mut j = 0;
            let mut names = Vec::new();
            while let Some(Token {
                kind: Tok::Var(name),
                ..
            }) = toks.get(j)
            {
                names.push(name.clone());
                j += 1;
                if matches!(toks.get(j).map(|t| &t.kind), Some(Tok::Comma)) {
                    j += 1;
                    continue;
                }
                break;
            }
            if !names.is_empty() {
                match toks.get(j).map(|t| &t.kind) {
                    Some(Tok::Declare) => {
                        decl = names;
                        i = j + 1;
                    }
                    Some(Tok::Assign) => {
                        decl = names;
                        assign = true;
                        i = j + 1;
                    }
                    _ => {}
                }
            }
        }
        let toks = &toks[i..];
        let start = toks.first().map_or(at, |t| t.span.start);
        let end = toks.last().map_or(at, |t| t.span.end);
        if toks.is_empty() {
            return Err(self.err(at, "missing value: the pipeline is empty"));
        }
        let mut cmds = Vec::new();
        let mut k = 0;
        loop {
            let (cmd, next) = self.cmd(toks, k)?;
            cmds.push(cmd);
            match toks.get(next).map(|t| &t.kind) {
                None => break,
                Some(Tok::Pipe) => {
                    if next + 1 >= toks.len() {
                        return Err(self.err(toks[next].span.start, "missing command after `|`"));
                    }
                    k = next + 1;
                }
                Some(_) => {
                    return Err(self.err(toks[next].span.start, "unexpected token in pipeline"));
                }
            }
        }
        Ok(Pipe {
            decl,
            assign,
            cmds,
            span: start..end,
        })
    }

    /// One command from `toks[k..]`: operands until `|`, `)` or the end.
    fn cmd(&self, toks: &[Token], mut k: usize) -> Result<(Cmd, usize), SyntaxError> {
        let start = toks[k].span.start;
        let mut args = Vec::new();
        while let Some(t) = toks.get(k) {
            match t.kind {
                Tok::Pipe | Tok::RParen => break,
                _ => {}
            }
            let (arg, next) = self.operand(toks, k)?;
            args.push(arg);
            k = next;
        }
        if args.is_empty() {
            let at = toks.get(k).map_or(start, |t| t.span.start);
            return Err(self.err(at, "empty command"));
        }
        let end = args.last().map_or(start, |a| a.span.end);
        Ok((
            Cmd {
                args,
                span: start..end,
            },
            k,
        ))
    }

    /// A term and the fields chained onto it without spaces.
    fn operand(&self, toks: &[Token], k: usize) -> Result<(Arg, usize), SyntaxError> {
        let t = &toks[k];
        let start = t.span.start;
        let (kind, mut next) = match &t.kind {
            Tok::Dot => (ArgKind::Dot(Vec::new()), k + 1),
            Tok::Field(f) => (ArgKind::Dot(vec![f.clone()]), k + 1),
            Tok::Var(v) => (ArgKind::Var(v.clone(), Vec::new()), k + 1),
            Tok::Ident(i) => (ArgKind::Ident(i.clone()), k + 1),
            Tok::Str(s) => (ArgKind::Str(s.clone()), k + 1),
            Tok::Char(c) => (ArgKind::Char(*c), k + 1),
            Tok::Number(n) => (ArgKind::Number(n.clone()), k + 1),
            Tok::LParen => {
                // Find the matching paren.
                let mut depth = 0usize;
                let mut close = None;
                for (j, tok) in toks.iter().enumerate().skip(k) {
                    match tok.kind {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth -= 1;
                            if depth == 0 {
                                close = Some(j);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let Some(close) = close else {
                    return Err(self.err(start, "unclosed left parenthesis"));
                };
                let inner = self.pipe(&toks[k + 1..close], t.span.end, true)?;
                (ArgKind::Sub(Box::new(inner), Vec::new()), close + 1)
            }
            Tok::Declare | Tok::Assign => {
                return Err(self.err(
                    start,
                    "unexpected `:=` or `=`: declare variables at the start of an action",
                ));
            }
            Tok::Comma => return Err(self.err(start, "unexpected `,`")),
            Tok::Pipe | Tok::RParen => return Err(self.err(start, "missing operand")),
        };
        let mut kind = kind;
        // Fields written right after the term: `.A.B`, `$x.A`, `(pipe).A`.
        while let Some(Token {
            kind: Tok::Field(f),
            spaced: false,
            ..
        }) = toks.get(next)
        {
            match &mut kind {
                ArgKind::Dot(fields) | ArgKind::Var(_, fields) | ArgKind::Sub(_, fields) => {
                    fields.push(f.clone());
                }
                // `scratch.Set`: a field of what the function returns (Go's chain node), read
                // as `(scratch).Set` so the function is named as what cannot be converted.
                ArgKind::Ident(name) if !matches!(name.as_str(), "true" | "false" | "nil") => {
                    let span = start..toks[next - 1].span.end;
                    let call = Arg {
                        kind: ArgKind::Ident(name.clone()),
                        span: span.clone(),
                    };
                    let pipe = Pipe {
                        decl: Vec::new(),
                        assign: false,
                        cmds: vec![Cmd {
                            args: vec![call],
                            span: span.clone(),
                        }],
                        span,
                    };
                    kind = ArgKind::Sub(Box::new(pipe), vec![f.clone()]);
                }
                _ => {
                    return Err(self.err(
                        toks[next].span.start,
                        format!("a field (.{f}) cannot follow this value"),
                    ));
                }
            }
            next += 1;
        }
        let end = toks[next - 1].span.end;
        Ok((
            Arg {
                kind,
                span: start..end,
            },
            next,
        ))
    }
}

enum Step {
    Node(Node),
    Stop(Stop),
}

#[cfg(test)]
mod tests {
    use super::super::lex::lex;
    use super::*;

    fn tree(src: &str) -> Vec<Node> {
        parse(src, lex(src, "{{", "}}").unwrap()).unwrap()
    }

    fn error(src: &str) -> SyntaxError {
        lex(src, "{{", "}}")
            .and_then(|items| parse(src, items))
            .expect_err("should not parse")
    }

    #[test]
    fn control_structures_nest() {
        let t = tree(
            "{{ range $i, $s := service \"web\" }}{{ if eq $s.Port 80 }}a{{ else if .X }}b{{ else }}c{{ end }}{{ else }}none{{ end }}",
        );
        let Node::Range {
            pipe,
            body,
            otherwise,
            ..
        } = &t[0]
        else {
            panic!("{t:?}")
        };
        assert_eq!(pipe.decl, vec!["i", "s"]);
        assert!(otherwise.is_some());
        let Node::Cond {
            branches,
            otherwise,
            ..
        } = &body[0]
        else {
            panic!()
        };
        assert_eq!(branches.len(), 2);
        assert!(otherwise.is_some());
    }

    #[test]
    fn pipelines_and_fields() {
        let t = tree("{{ (service \"web\").Len | len }}{{ $x.A.B }}");
        let Node::Action { pipe, .. } = &t[0] else {
            panic!()
        };
        assert_eq!(pipe.cmds.len(), 2);
        assert!(
            matches!(&pipe.cmds[0].args[0].kind, ArgKind::Sub(_, f) if f == &vec!["Len".to_string()])
        );
        let Node::Action { pipe, .. } = &t[1] else {
            panic!()
        };
        assert_eq!(
            pipe.cmds[0].args[0].kind,
            ArgKind::Var("x".into(), vec!["A".into(), "B".into()])
        );
    }

    #[test]
    fn structural_errors_have_positions() {
        let e = error("ok\n{{ if .X }}never closed");
        assert_eq!((e.line, e.col), (2, 1));
        assert!(e.what.contains("never closed"), "{e:?}");
        let e = error("{{ end }}");
        assert!(e.what.contains("nothing open"), "{e:?}");
        let e = error("{{ }}");
        assert!(e.what.contains("empty"), "{e:?}");
        let e = error("{{ range .X }}{{ else }}{{ else }}{{ end }}");
        assert!(e.what.contains("one {{ else }}"), "{e:?}");
    }
}
