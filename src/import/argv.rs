//! Splits a ContainerPilot command string into argv.
//!
//! ContainerPilot itself split on single spaces, so `-template "a:b:nginx -s reload"` reached
//! consul-template in three broken pieces. Configs were written as if quotes grouped words, so
//! that is how they are read here: whitespace separates, single quotes keep everything,
//! double quotes keep everything but `\"` and `\\`, a backslash outside quotes escapes the
//! next character. No shell ran these commands, so shell syntax (pipes, `&&`, `$VAR`) was
//! passed through as words; it is flagged so a person can choose `{ shell = ... }`.

/// The words of a command and whether it holds shell syntax outside quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub argv: Vec<String>,
    pub shell_syntax: bool,
}

/// Splits `s`; an unterminated quote is an error.
pub fn split(s: &str) -> Result<Split, String> {
    let mut argv = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut shell_syntax = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    argv.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') if matches!(chars.peek(), Some('"' | '\\')) => {
                            word.extend(chars.next());
                        }
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            c => {
                // `${VAR}` is rewire's own interpolation (the importer wrote it); `$${` is
                // a literal `${` and, like `$VAR`, was never expanded by ContainerPilot.
                let interpolation = c == '$' && chars.peek() == Some(&'{') && !word.ends_with('$');
                if matches!(c, '|' | '&' | ';' | '<' | '>' | '$' | '`' | '*' | '?')
                    && !interpolation
                {
                    shell_syntax = true;
                }
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        argv.push(word);
    }
    Ok(Split { argv, shell_syntax })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split(s).unwrap().argv
    }

    #[test]
    fn quotes_keep_words_together() {
        assert_eq!(
            words("consul-template -once -template \"/a.ctmpl:/b:nginx -s reload\""),
            vec![
                "consul-template",
                "-once",
                "-template",
                "/a.ctmpl:/b:nginx -s reload"
            ]
        );
        assert_eq!(
            words("  /usr/bin/curl  --fail -s 'http://x/a b'  "),
            vec!["/usr/bin/curl", "--fail", "-s", "http://x/a b"]
        );
        assert_eq!(
            words(r#"echo "a \"b\" c\\" d\ e"#),
            vec!["echo", "a \"b\" c\\", "d e"]
        );
        assert_eq!(words("x ''"), vec!["x", ""]);
        assert!(words("").is_empty());
    }

    #[test]
    fn shell_syntax_outside_quotes_is_flagged() {
        assert!(split("a && b").unwrap().shell_syntax);
        assert!(split("echo $HOME").unwrap().shell_syntax);
        assert!(
            !split("consul-template -consul ${CONSUL}:8500")
                .unwrap()
                .shell_syntax
        );
        assert!(split("echo $${HOME}").unwrap().shell_syntax);
        assert!(!split("echo '$HOME' \"a|b\"").unwrap().shell_syntax);
        assert!(split("echo 'open").is_err());
    }
}
