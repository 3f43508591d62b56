//! Typed values: durations, sizes, signals, commands, waits, file modes and enum strings.
//!
//! Strings from the config become types here, once, so nothing downstream parses a duration
//! or a signal name again. The plain parsers ([`parse_duration`], [`parse_signal`]) are
//! public (the command line uses them too); the walker methods add the location and a hint.

use std::ops::Range;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::Spanned;
use toml::de::DeValue;

use super::walker::{Tbl, Val, Walker, join};
use super::{CommandSpec, Program, Wait};

/// A duration rewire refuses rather than guesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?} is not a duration")]
    NotADuration(String),
    #[error("{0:?} has a space between the number and its unit")]
    Space(String),
    #[error("{0:?} has no unit")]
    NoUnit(String),
    #[error("{value:?} has an unknown unit {unit:?}")]
    UnknownUnit { value: String, unit: String },
    #[error("{0:?} is too long: rewire takes durations up to 100 years")]
    TooLong(String),
}

/// A size rewire refuses rather than guesses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size")]
    NotASize(String),
    #[error("{0:?} has no unit")]
    NoUnit(String),
    #[error("{value:?} has an unknown unit {unit:?}")]
    UnknownUnit { value: String, unit: String },
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// A signal name nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

/// The longest duration rewire takes: far beyond any real timeout or TTL, and short enough
/// that adding it to the current time can never overflow a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Strict durations: one or more `<number><unit>` with units ms, s, m, h, d (e.g. "1m30s").
/// "10 sec" or "10" are refused rather than guessed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(DurationError::Empty);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotADuration(s.to_string()));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::NotADuration(s.to_string()))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        if rest.starts_with(char::is_whitespace) {
            return Err(DurationError::Space(s.to_string()));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(DurationError::NoUnit(s.to_string())),
            other => {
                return Err(DurationError::UnknownUnit {
                    value: s.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        // A number too large for a Duration (found by fuzzing: "3044...4s" with 130 digits)
        // is refused, not a panic.
        total = Duration::try_from_secs_f64(number * scale)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(|| DurationError::TooLong(s.to_string()))?;
    }
    Ok(total)
}

/// Sizes: a number with a unit, binary (`KiB`, `MiB`, `GiB`) or decimal (`kB`, `MB`, `GB`), or
/// `B` for bytes: "16MiB", "1.5MiB", "512KiB", "4096B". A space before the unit is allowed
/// ("16 MiB"); a bare number is refused (bytes or megabytes?); a TOML integer means bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..split]
        .parse()
        .map_err(|_| SizeError::NotASize(s.to_string()))?;
    let unit = text[split..].trim_start();
    let scale: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "" => return Err(SizeError::NoUnit(s.to_string())),
        other => {
            return Err(SizeError::UnknownUnit {
                value: s.to_string(),
                unit: other.to_string(),
            });
        }
    };
    let bytes = number * scale as f64;
    if bytes >= u64::MAX as f64 {
        return Err(SizeError::TooLarge(s.to_string()));
    }
    Ok(bytes.round() as u64)
}

/// A signal by name, with or without `SIG`, in any case: `"hup"`, `"SIGTERM"`.
pub fn parse_signal(s: &str) -> Result<Signal, UnknownSignal> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| UnknownSignal(s.to_string()))
}

impl Walker<'_> {
    pub(super) fn duration(&mut self, t: &Tbl, key: &str) -> Option<Duration> {
        if let Some(v) = t.get(key)
            && let DeValue::Integer(n) = v.get_ref()
        {
            // `stop_timeout = 10`: say which unit to write rather than only "not a string".
            self.error(
                v.span(),
                format!("`{key}` in {} is a bare number", t.section()),
                format!("write it with a unit: {key} = \"{n}s\" (or \"{n}ms\", \"{n}m\")"),
            );
            return None;
        }
        let s = self.string(t, key)?;
        match parse_duration(s.get_ref()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    s.span(),
                    format!("`{key}`: {e}"),
                    "write a number with a unit: \"250ms\", \"10s\", \"5m\", \"1h\" (or \"1m30s\")",
                );
                None
            }
        }
    }

    /// A size within `range`: a string with a unit ("16MiB", see [`parse_size`]) or a whole
    /// number of bytes; else an error and `None`.
    pub(super) fn size(
        &mut self,
        t: &Tbl,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let hint = "write a number with a unit: \"512KiB\", \"16MiB\", \"1GiB\" (or a whole number of bytes)";
        let v = t.get(key)?;
        let n = match v.get_ref() {
            DeValue::Integer(_) => {
                let n = self.integer(t, key)?;
                match u64::try_from(*n.get_ref()) {
                    Ok(n) => n,
                    Err(_) => {
                        self.error(n.span(), format!("`{key}` is negative"), hint);
                        return None;
                    }
                }
            }
            DeValue::String(_) => {
                let s = self.string_value(v, t, key)?;
                match parse_size(s.get_ref()) {
                    Ok(n) => n,
                    Err(e) => {
                        self.error(s.span(), format!("`{key}`: {e}"), hint);
                        return None;
                    }
                }
            }
            other => {
                self.type_error(v.span(), t, key, "a size such as \"16MiB\"", other);
                return None;
            }
        };
        if !range.contains(&n) {
            self.error(
                v.span(),
                format!(
                    "`{key}` must be between {} and {}",
                    show_size(*range.start()),
                    show_size(*range.end())
                ),
                hint,
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn signal(&mut self, t: &Tbl, key: &str) -> Option<Signal> {
        let s = self.string(t, key)?;
        self.signal_str(&s, key)
    }

    pub(super) fn signal_str(&mut self, s: &Spanned<String>, key: &str) -> Option<Signal> {
        match parse_signal(s.get_ref()) {
            Ok(sig) => Some(sig),
            Err(e) => {
                self.error(
                    s.span(),
                    format!("`{key}`: {e}"),
                    "use a name such as \"HUP\", \"TERM\", \"QUIT\", \"USR1\"",
                );
                None
            }
        }
    }

    pub(super) fn signals(&mut self, t: &Tbl, key: &str) -> Option<Vec<Signal>> {
        let v = t.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.type_error(v.span(), t, key, "a list of signal names", v.get_ref());
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let s = self.string_value(item, t, key)?;
            out.push(self.signal_str(&s, key)?);
        }
        Some(out)
    }

    /// A command: `["argv", ...]`, `{ exec = [...], timeout = "30s" }` or
    /// `{ shell = "...", timeout = "30s" }`.
    pub(super) fn command(
        &mut self,
        t: &Tbl,
        key: &str,
        default_timeout: Duration,
    ) -> Option<CommandSpec> {
        let v = t.get(key)?;
        self.command_value(v, t, key, default_timeout)
    }

    /// A command the section cannot do without: missing, or given as `[]`, is an error.
    pub(super) fn required_command(
        &mut self,
        t: &Tbl,
        key: &str,
        default_timeout: Duration,
        example: &str,
    ) -> Option<CommandSpec> {
        match t.get(key) {
            None => {
                self.error(
                    t.span.clone(),
                    format!("{} needs `{key}`", t.section()),
                    format!("{key} = {example}"),
                );
                None
            }
            Some(v) if matches!(v.get_ref(), DeValue::Array(items) if items.is_empty()) => {
                self.error(
                    v.span(),
                    format!(
                        "`{key}` is an empty command; {} cannot do without it",
                        t.section()
                    ),
                    format!("{key} = {example}"),
                );
                None
            }
            Some(v) => self.command_value(v, t, key, default_timeout),
        }
    }

    /// A duration that must be more than zero (a timeout of 0 would fail every run).
    pub(super) fn positive_duration(&mut self, t: &Tbl, key: &str) -> Option<Duration> {
        let d = self.duration(t, key)?;
        if d.is_zero() {
            let span = t.key_span(key).unwrap_or(t.span.clone());
            self.error(span, format!("`{key}` must be more than 0"), "");
            return None;
        }
        Some(d)
    }

    /// Warns about a period that runs a command more than ten times a second: `every = "1ms"`
    /// typed for "1m" forks hundreds of processes a second and floods the log.
    pub(super) fn warn_frantic(&mut self, t: &Tbl, key: &str, every: Option<Duration>) {
        let Some(d) = every.filter(|d| !d.is_zero() && *d < Duration::from_millis(100)) else {
            return;
        };
        let span = t.key_span(key).unwrap_or(t.span.clone());
        let shown = humantime::format_duration(d).to_string();
        let hint = match shown.strip_suffix("ms") {
            Some(n) => format!("did you mean \"{n}m\" (minutes)?"),
            None => "a command run this often costs a process each time".to_string(),
        };
        self.warn(
            span,
            format!("`{key}` = {shown} runs the command more than ten times a second"),
            hint,
        );
    }

    pub(super) fn command_value(
        &mut self,
        v: &Val,
        t: &Tbl,
        key: &str,
        default_timeout: Duration,
    ) -> Option<CommandSpec> {
        match v.get_ref() {
            // `pre_stop = []` reads as "no hook", as in the design sketch (tests/data/design-sketch.toml).
            DeValue::Array(items) if items.is_empty() => None,
            DeValue::Array(items) => {
                let argv = self.string_items(items, t, key)?;
                self.argv_ok(&argv, v.span(), key)?;
                Some(CommandSpec {
                    program: Program::Argv(argv),
                    timeout: default_timeout,
                })
            }
            DeValue::Table(map) => {
                let sub = Tbl::new(map, v.span(), &join(&t.name, key));
                let timeout = self
                    .positive_duration(&sub, "timeout")
                    .unwrap_or(default_timeout);
                let exec = self.strings(&sub, "exec");
                let shell = self.string(&sub, "shell");
                self.finish(&sub, &["exec", "shell", "timeout"]);
                let program = match (exec, shell) {
                    (Some(argv), None) => {
                        self.argv_ok(&argv, v.span(), key)?;
                        Program::Argv(argv)
                    }
                    (None, Some(script)) => {
                        if script.get_ref().trim().is_empty() {
                            self.error(script.span(), format!("`{key}.shell` is empty"), "");
                            return None;
                        }
                        Program::Shell(script.into_inner())
                    }
                    (Some(_), Some(_)) => {
                        self.error(
                            v.span(),
                            format!("`{key}` has both `exec` and `shell`"),
                            "keep one: exec = [\"prog\", \"arg\"] (no shell) or shell = \"...\"",
                        );
                        return None;
                    }
                    (None, None) => {
                        self.error(
                            v.span(),
                            format!("`{key}` needs `exec` or `shell`"),
                            "e.g. { exec = [\"nginx\", \"-s\", \"reload\"], timeout = \"30s\" }",
                        );
                        return None;
                    }
                };
                Some(CommandSpec { program, timeout })
            }
            DeValue::String(s) => {
                self.error(
                    v.span(),
                    format!("`{key}` is a string ({s:?}); commands are argv arrays"),
                    format!(
                        "write {key} = [\"prog\", \"arg\"], or {key} = {{ shell = \"...\" }} if you really want a shell"
                    ),
                );
                None
            }
            other => {
                self.type_error(v.span(), t, key, "an argv array", other);
                None
            }
        }
    }

    pub(super) fn argv_ok(&mut self, argv: &[String], span: Range<usize>, key: &str) -> Option<()> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            self.error(
                span,
                format!("`{key}` is an empty command"),
                "give the program and its arguments, e.g. [\"nginx\", \"-s\", \"reload\"]",
            );
            return None;
        }
        Some(())
    }

    pub(super) fn wait(&mut self, t: &Tbl, key: &str, default: Wait) -> Wait {
        let Some(v) = t.get(key) else {
            return default;
        };
        let (min, max) = match v.get_ref() {
            DeValue::String(_) => {
                let Some(s) = self.string_value(v, t, key) else {
                    return default;
                };
                // "2s" or "2s:10s", as consul-template's -wait.
                let (min_s, max_s) = match s.get_ref().split_once(':') {
                    Some((a, b)) => (a.to_string(), Some(b.to_string())),
                    None => (s.get_ref().clone(), None),
                };
                let min = parse_duration(&min_s);
                let max = max_s.map(|m| parse_duration(&m)).transpose();
                match (min, max) {
                    (Ok(min), Ok(max)) => (min, max),
                    (Err(e), _) | (_, Err(e)) => {
                        self.error(
                            v.span(),
                            format!("`{key}`: {e}"),
                            "write wait = { min = \"2s\", max = \"10s\" } or wait = \"2s:10s\"",
                        );
                        return default;
                    }
                }
            }
            DeValue::Table(map) => {
                let sub = Tbl::new(map, v.span(), &join(&t.name, key));
                let min = self.duration(&sub, "min");
                let max = self.duration(&sub, "max");
                self.finish(&sub, &["min", "max"]);
                match min {
                    Some(min) => (min, max),
                    None => {
                        if sub.map.get("min").is_none() {
                            self.error(
                                v.span(),
                                format!("`{key}` needs `min`"),
                                "write wait = { min = \"2s\", max = \"10s\" }",
                            );
                        }
                        return default;
                    }
                }
            }
            other => {
                self.type_error(v.span(), t, key, "a table { min, max }", other);
                return default;
            }
        };
        let max = max.unwrap_or(min * 4);
        if max < min {
            self.error(
                v.span(),
                format!(
                    "`{key}`: max ({}) is less than min ({})",
                    humantime::format_duration(max),
                    humantime::format_duration(min)
                ),
                "max bounds the delay under constant change: make it at least min",
            );
            return default;
        }
        Wait { min, max }
    }

    pub(super) fn perms(&mut self, t: &Tbl) -> Option<u32> {
        let v = t.get("perms")?;
        let hint = "write the mode as an octal string, e.g. perms = \"0644\"";
        let parsed = match v.get_ref() {
            DeValue::String(_) => {
                let s = self.string_value(v, t, "perms")?;
                u32::from_str_radix(s.get_ref().trim_start_matches("0o"), 8).ok()
            }
            DeValue::Integer(i) if i.radix() == 8 => u32::from_str_radix(i.as_str(), 8).ok(),
            DeValue::Integer(_) => {
                self.error(
                    v.span(),
                    "`perms` is a decimal number, which is almost never what is meant",
                    hint,
                );
                return None;
            }
            other => {
                self.type_error(v.span(), t, "perms", "an octal string", other);
                return None;
            }
        };
        match parsed {
            Some(m) if m <= 0o7777 => Some(m),
            _ => {
                self.error(v.span(), "`perms` is not a file mode", hint);
                None
            }
        }
    }

    /// An enum written as a string: one of `options` (value, meaning), else an error naming
    /// `what` with `hint`, and `default`. Absent: `default`.
    pub(super) fn choice<T: Copy>(
        &mut self,
        t: &Tbl,
        key: &str,
        options: &[(&str, T)],
        default: T,
        what: &str,
        hint: &str,
    ) -> T {
        let Some(s) = self.string(t, key) else {
            return default;
        };
        match options
            .iter()
            .find(|(name, _)| *name == s.get_ref().as_str())
        {
            Some((_, value)) => *value,
            None => {
                self.error(s.span(), format!("unknown {what} {:?}", s.get_ref()), hint);
                default
            }
        }
    }
}

/// A size for messages: whole KiB/MiB/GiB when it is one, else bytes.
pub fn show_size(n: u64) -> String {
    for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= scale && n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_whole_units() {
        assert_eq!(show_size(1 << 20), "1MiB");
        assert_eq!(show_size(1000), "1000B");
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn durations_are_strict() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 sec").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        // Found by fuzzing: a number too large for a Duration panicked.
        let huge = format!("3{}s", "4".repeat(130));
        assert_eq!(
            parse_duration(&huge),
            Err(DurationError::TooLong(huge.clone()))
        );
        assert!(matches!(
            parse_duration("18446744073709551615s1s"),
            Err(DurationError::TooLong(_))
        ));
        assert!(parse_duration("36500d").is_ok());
        assert!(matches!(
            parse_duration("36501d"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn duration_errors_repeat_the_input() {
        assert_eq!(
            parse_duration("10 sec").unwrap_err().to_string(),
            "\"10 sec\" has a space between the number and its unit"
        );
        assert_eq!(
            parse_duration("5y").unwrap_err().to_string(),
            "\"5y\" has an unknown unit \"y\""
        );
    }

    #[test]
    fn sizes_take_binary_and_decimal_units_and_refuse_bare_numbers() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(
            parse_size("16").unwrap_err().to_string(),
            "\"16\" has no unit"
        );
        assert_eq!(
            parse_size("16mb").unwrap_err().to_string(),
            "\"16mb\" has an unknown unit \"mb\""
        );
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn signals_take_any_case_with_or_without_sig() {
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(
            parse_signal("NOPE").unwrap_err().to_string(),
            "unknown signal \"NOPE\""
        );
    }
}
