//! Splits a Go text/template into text, comments and actions, and an action into tokens.
//!
//! It follows Go's `text/template/parse/lex.go` for the parts consul-template templates use:
//! configurable delimiters, `{{-`/`-}}` trim markers (the dash must touch whitespace, so
//! `{{-3}}` is the number -3), `{{/* comments */}}`, strings with Go escapes, raw strings,
//! fields (`.Name`), variables (`$x`), pipes and parentheses. Every token keeps its byte span,
//! so problems can name the line and column of the original.

use std::ops::Range;

use super::SyntaxError;

/// One piece of the template.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Text(Range<usize>),
    Comment {
        text: String,
        trim: Trim,
        span: Range<usize>,
    },
    Action {
        tokens: Vec<Token>,
        trim: Trim,
        /// The whole action, delimiters included.
        span: Range<usize>,
    },
}

/// Whitespace trimming requested by `{{-` (left) and `-}}` (right).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trim {
    pub left: bool,
    pub right: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: Tok,
    pub span: Range<usize>,
    /// Whether whitespace separates this token from the previous one: `$x.Name` is one
    /// operand, `$x .Name` two.
    pub spaced: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A function name or keyword (`range`, `if`, `true`, `nil`, ...).
    Ident(String),
    /// `.Name` (the leading dot removed).
    Field(String),
    /// `.` alone.
    Dot,
    /// `$name`, or `$` alone (empty name).
    Var(String),
    /// A quoted or raw string, unescaped.
    Str(String),
    /// A character constant, as its value.
    Char(char),
    /// A number as written.
    Number(String),
    Pipe,
    LParen,
    RParen,
    Comma,
    /// `:=`
    Declare,
    /// `=`
    Assign,
}

/// Splits `src` into items using the given delimiters.
pub fn lex(src: &str, left: &str, right: &str) -> Result<Vec<Item>, SyntaxError> {
    let mut items = Vec::new();
    let mut pos = 0;
    while pos < src.len() {
        let Some(found) = src[pos..].find(left) else {
            items.push(Item::Text(pos..src.len()));
            break;
        };
        let start = pos + found;
        if start > pos {
            items.push(Item::Text(pos..start));
        }
        let (item, end) = lex_action(src, start, left, right)?;
        items.push(item);
        pos = end;
    }
    Ok(items)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Lexes one action starting at `start` (where `left` begins); returns it and the offset
/// just past its right delimiter.
fn lex_action(
    src: &str,
    start: usize,
    left: &str,
    right: &str,
) -> Result<(Item, usize), SyntaxError> {
    let bytes = src.as_bytes();
    let mut pos = start + left.len();
    let mut trim = Trim::default();
    if bytes.get(pos) == Some(&b'-') && bytes.get(pos + 1).copied().is_some_and(is_space) {
        trim.left = true;
        pos += 2;
    }
    // A comment must follow the delimiter (and trim marker) directly.
    if src[pos..].starts_with("/*") {
        let Some(close) = src[pos + 2..].find("*/") else {
            return Err(SyntaxError::at(src, start, "unclosed comment"));
        };
        let text = src[pos + 2..pos + 2 + close].to_string();
        let mut after = pos + 2 + close + 2;
        if src[after..].starts_with(" -") && src[after + 2..].starts_with(right) {
            trim.right = true;
            after += 2;
        }
        if !src[after..].starts_with(right) {
            return Err(SyntaxError::at(
                src,
                start,
                format!("comment ends without `{right}` right after `*/`"),
            ));
        }
        let end = after + right.len();
        return Ok((
            Item::Comment {
                text,
                trim,
                span: start..end,
            },
            end,
        ));
    }
    let mut tokens = Vec::new();
    let mut spaced = true;
    let mut paren_depth = 0usize;
    loop {
        // The right delimiter, possibly with its trim marker (" -}}").
        if let Some(end) = right_delim_at(src, pos, right) {
            if paren_depth > 0 {
                return Err(SyntaxError::at(src, pos, "unclosed left parenthesis"));
            }
            trim.right = end.1;
            return Ok((
                Item::Action {
                    tokens,
                    trim,
                    span: start..end.0,
                },
                end.0,
            ));
        }
        let Some(&b) = bytes.get(pos) else {
            return Err(SyntaxError::at(
                src,
                start,
                format!("unclosed action: no `{right}` before the end of the file"),
            ));
        };
        if is_space(b) {
            pos += 1;
            spaced = true;
            continue;
        }
        if src[pos..].starts_with(left) {
            return Err(SyntaxError::at(
                src,
                start,
                format!("unclosed action: `{left}` opened again at this action before `{right}`"),
            ));
        }
        let tok_start = pos;
        let kind = match b {
            b'|' => {
                pos += 1;
                Tok::Pipe
            }
            b'(' => {
                pos += 1;
                paren_depth += 1;
                Tok::LParen
            }
            b')' => {
                pos += 1;
                if paren_depth == 0 {
                    return Err(SyntaxError::at(src, tok_start, "unexpected right paren"));
                }
                paren_depth -= 1;
                Tok::RParen
            }
            b',' => {
                pos += 1;
                Tok::Comma
            }
            b':' if bytes.get(pos + 1) == Some(&b'=') => {
                pos += 2;
                Tok::Declare
            }
            b'=' => {
                pos += 1;
                Tok::Assign
            }
            b'"' => {
                let (s, end) = quoted(src, pos)?;
                pos = end;
                Tok::Str(s)
            }
            b'`' => {
                let Some(close) = src[pos + 1..].find('`') else {
                    return Err(SyntaxError::at(src, pos, "unterminated raw string"));
                };
                let s = src[pos + 1..pos + 1 + close].to_string();
                pos += close + 2;
                Tok::Str(s)
            }
            b'\'' => {
                let (c, end) = char_constant(src, pos)?;
                pos = end;
                Tok::Char(c)
            }
            b'$' => {
                let end = ident_end(src, pos + 1);
                let name = src[pos + 1..end].to_string();
                pos = end;
                Tok::Var(name)
            }
            b'.' if bytes.get(pos + 1).is_some_and(|c| c.is_ascii_digit()) => {
                let end = number_end(src, pos);
                let n = src[pos..end].to_string();
                pos = end;
                Tok::Number(n)
            }
            b'.' => {
                let end = ident_end(src, pos + 1);
                if end == pos + 1 {
                    pos += 1;
                    Tok::Dot
                } else {
                    let name = src[pos + 1..end].to_string();
                    pos = end;
                    Tok::Field(name)
                }
            }
            b'0'..=b'9' | b'+' | b'-' => {
                let end = number_end(src, pos);
                if end == pos || (end == pos + 1 && matches!(b, b'+' | b'-')) {
                    return Err(SyntaxError::at(
                        src,
                        pos,
                        format!("unexpected `{}` in action", b as char),
                    ));
                }
                let n = src[pos..end].to_string();
                pos = end;
                Tok::Number(n)
            }
            // A non-ASCII byte starts an identifier only when its character is a letter
            // (found by fuzzing: an unassigned code point made no progress, looping forever).
            _ if (b == b'_' || b.is_ascii_alphabetic() || b >= 0x80)
                && ident_end(src, pos) > pos =>
            {
                let end = ident_end(src, pos);
                let name = src[pos..end].to_string();
                pos = end;
                Tok::Ident(name)
            }
            _ => {
                let c = src[pos..].chars().next().unwrap_or('?');
                return Err(SyntaxError::at(
                    src,
                    pos,
                    format!("unexpected `{c}` in action"),
                ));
            }
        };
        tokens.push(Token {
            kind,
            span: tok_start..pos,
            spaced,
        });
        spaced = false;
    }
}

/// If the right delimiter (optionally preceded by the " -" trim marker) starts at `pos`,
/// returns the offset past it and whether it trims.
fn right_delim_at(src: &str, pos: usize, right: &str) -> Option<(usize, bool)> {
    let rest = &src[pos..];
    if rest.starts_with(right) {
        return Some((pos + right.len(), false));
    }
    // " -}}": the marker needs whitespace before the dash; `pos` sits on that whitespace.
    let b = rest.as_bytes();
    if b.first().copied().is_some_and(is_space)
        && b.get(1) == Some(&b'-')
        && rest[2..].starts_with(right)
    {
        return Some((pos + 2 + right.len(), true));
    }
    None
}

fn ident_end(src: &str, from: usize) -> usize {
    src[from..]
        .char_indices()
        .find(|&(_, c)| !(c == '_' || c.is_alphanumeric()))
        .map_or(src.len(), |(i, _)| from + i)
}

fn number_end(src: &str, from: usize) -> usize {
    let b = src.as_bytes();
    let mut i = from;
    if matches!(b.get(i), Some(b'+' | b'-')) {
        i += 1;
    }
    while let Some(&c) = b.get(i) {
        let exponent_sign = matches!(c, b'+' | b'-')
            && i > from
            && matches!(b[i - 1], b'e' | b'E' | b'p' | b'P')
            && !src[from..i].starts_with("0x");
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// A double-quoted Go string starting at `start`: its value and the offset past it.
fn quoted(src: &str, start: usize) -> Result<(String, usize), SyntaxError> {
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, start + 1 + i + 1)),
            '\n' => break,
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'x' | 'u' | 'U' => {
                        let len = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String =
                            (0..len).filter_map(|_| chars.next()).map(|p| p.1).collect();
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(ch) if hex.len() == len => out.push(ch),
                            _ => {
                                return Err(SyntaxError::at(
                                    src,
                                    start + 1 + i,
                                    format!("bad escape \\{e}{hex} in string"),
                                ));
                            }
                        }
                    }
                    other => {
                        return Err(SyntaxError::at(
                            src,
                            start + 1 + i,
                            format!("unknown escape \\{other} in string"),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(SyntaxError::at(src, start, "unterminated quoted string"))
}

fn char_constant(src: &str, start: usize) -> Result<(char, usize), SyntaxError> {
    let rest = &src[start + 1..];
    let mut chars = rest.char_indices();
    let c = match chars.next() {
        Some((_, '\\')) => match chars.next() {
            Some((_, 'n')) => '\n',
            Some((_, 't')) => '\t',
            Some((_, '\\')) => '\\',
            Some((_, '\'')) => '\'',
            _ => {
                return Err(SyntaxError::at(
                    src,
                    start,
                    "unsupported character constant",
                ));
            }
        },
        Some((_, c)) => c,
        None => {
            return Err(SyntaxError::at(
                src,
                start,
                "unterminated character constant",
            ));
        }
    };
    match chars.next() {
        Some((i, '\'')) => Ok((c, start + 1 + i + 1)),
        _ => Err(SyntaxError::at(
            src,
            start,
            "unterminated character constant",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<Tok> {
        match &lex(src, "{{", "}}").unwrap()[0] {
            Item::Action { tokens, .. } => tokens.iter().map(|t| t.kind.clone()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn actions_split_into_tokens() {
        assert_eq!(
            kinds(r#"{{ range $i, $s := service "web|any" }}"#),
            vec![
                Tok::Ident("range".into()),
                Tok::Var("i".into()),
                Tok::Comma,
                Tok::Var("s".into()),
                Tok::Declare,
                Tok::Ident("service".into()),
                Tok::Str("web|any".into()),
            ]
        );
        assert_eq!(
            kinds("{{ .ServiceMeta.version | printf `%s` }}"),
            vec![
                Tok::Field("ServiceMeta".into()),
                Tok::Field("version".into()),
                Tok::Pipe,
                Tok::Ident("printf".into()),
                Tok::Str("%s".into()),
            ]
        );
        assert_eq!(kinds("{{-3}}"), vec![Tok::Number("-3".into())]);
        assert_eq!(
            kinds(r#"{{ "a\tb\"}}" }}"#),
            vec![Tok::Str("a\tb\"}}".into())]
        );
    }

    #[test]
    fn trim_markers_need_whitespace() {
        let items = lex("a {{- .X -}} b", "{{", "}}").unwrap();
        let Item::Action { trim, .. } = &items[1] else {
            panic!()
        };
        assert_eq!(
            *trim,
            Trim {
                left: true,
                right: true
            }
        );
        let items = lex("{{- /* note */ -}}", "{{", "}}").unwrap();
        assert!(matches!(
            &items[0],
            Item::Comment { text, trim: Trim { left: true, right: true }, .. } if text == " note "
        ));
    }

    #[test]
    fn custom_delimiters() {
        let items = lex("{{ literal }} [[ .Name ]]", "[[", "]]").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Item::Text(0..14));
    }

    #[test]
    fn unclosed_action_names_its_start() {
        let e = lex("line one\n  {{ range service \"web\" \n", "{{", "}}").unwrap_err();
        assert_eq!((e.line, e.col), (2, 3));
        assert!(e.what.contains("unclosed action"), "{e:?}");
        let e = lex("{{ \"abc }}", "{{", "}}").unwrap_err();
        assert!(e.what.contains("unterminated quoted string"), "{e:?}");
    }

    #[test]
    fn a_character_that_is_no_letter_is_an_error_not_a_hang() {
        // The fuzzer's input, minimised: U+0382 is not assigned, so not alphabetic.
        let e = lex("{{ range services \u{382}}", "{{", "}}").unwrap_err();
        assert!(e.what.contains("unexpected"), "{e:?}");
        assert_eq!(kinds("{{ .Ñame }}"), vec![Tok::Field("Ñame".into())]);
    }
}
