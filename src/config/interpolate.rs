//! `${VAR}`, `${VAR:-default}` and `${VAR-default}` inside string values of `rewire.toml`.
//!
//! As in the shell (and Docker Compose, and ContainerPilot's `default`): `:-` takes the
//! default when the variable is unset or empty, `-` only when it is unset.
//!
//! Interpolation runs on each parsed string, never on the raw file, so line:col in errors stay
//! right and a `$` inside a TOML comment means nothing. The variables come in as a parameter so
//! the rules are table-tested. Unlike vector, an unset `${VAR}` without a default is an error,
//! never a silent `""`: an empty token or address is worse than a refusal to start.

/// Why a string could not be interpolated (the walker adds where it is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("unclosed ${{ in {0:?}: write ${{VAR}}, or $${{ for a literal ${{")]
    Unclosed(String),
    #[error(
        "${{{0}}} is not a variable reference: names hold letters, digits and _ (write $${{ for a literal ${{)"
    )]
    NotAName(String),
    #[error(
        "environment variable {0} is not set: set it, or give a default with ${{{0}:-default}}"
    )]
    Unset(String),
}

/// Expands `${VAR}`, `${VAR:-default}`, `${VAR-default}` and the escape `$${` (a literal `${`).
/// A `$` not followed by `{` is kept as it is.
pub fn interpolate(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            out.push_str("${");
            rest = escaped;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(InterpolateError::Unclosed(input.to_string()));
        };
        let body = &body_start[..end];
        // (name, default, whether an empty value takes the default too)
        let (name, default, empty_too) = match body.split_once(":-") {
            Some((n, d)) => (n, Some(d), true),
            None => match body.split_once('-') {
                Some((n, d)) => (n, Some(d), false),
                None => (body, None, false),
            },
        };
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || name.as_bytes()[0].is_ascii_digit()
        {
            return Err(InterpolateError::NotAName(body.to_string()));
        }
        match (env(name), default) {
            (Some(v), Some(d)) if v.is_empty() && empty_too => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(InterpolateError::Unset(name.to_string()));
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/u".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            ("${HOME}/x", Ok("/home/u/x")),
            ("${MISSING:-d}", Ok("d")),
            ("${MISSING:-}", Ok("")),
            ("${EMPTY:-d}", Ok("d")),
            ("${EMPTY-d}", Ok("")),
            ("${MISSING-d}", Ok("d")),
            ("${HOME-d}", Ok("/home/u")),
            ("${HOME:-d}", Ok("/home/u")),
            ("$${HOME}", Ok("${HOME}")),
            ("cost $5", Ok("cost $5")),
            ("a$", Ok("a$")),
            ("${HOME}${HOME}", Ok("/home/u/home/u")),
            ("${MISSING}", Err("MISSING is not set")),
            ("${HOME", Err("unclosed")),
            ("${1X}", Err("not a variable")),
            ("${}", Err("not a variable")),
        ];
        for (input, want) in cases {
            let got = interpolate(input, &env);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "input {input:?}"),
                (Err(w), Err(g)) => assert!(g.to_string().contains(w), "input {input:?}: {g}"),
                _ => panic!("input {input:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
