//! Logs go to stderr (stdout is for `rewire diff` and `rewire status`), as text or JSON.
//!
//! `--log-level` is a level (`warn`) or a comma-separated list of `target=level` directives
//! with an optional default level (`warn,rewire::timing=trace`). It is parsed into
//! `tracing_subscriber`'s `Targets`, not `EnvFilter`: EnvFilter's span and field filters are
//! not something rewire's users need, and its regex machinery switched on the full-DFA build in
//! every `Regex::new` of the binary, so each `matching` test a template used cost a DFA
//! construction at start (0.9 M of the 5.2 M instructions a one-instance `rewire render` with
//! the bundled nginx template ran).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use super::cli::LogFormat;

/// `flag`: `--log-level`, already checked (a bad one is a usage error). Without it,
/// `REWIRE_LOG` from the environment: set by a deployment for every command, so an empty
/// value counts as unset and a bad one is warned about and replaced by info rather than stop
/// every command, `rewire status` health checks included.
pub fn init(flag: Option<&str>, format: LogFormat) {
    let from_env = std::env::var("REWIRE_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let level = flag.map(str::to_owned).or(from_env);
    let mut bad_level = None;
    let filter = match level.as_deref().map(parse_filter) {
        None => Targets::new().with_default(LevelFilter::INFO),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            bad_level = Some(format!(
                "invalid REWIRE_LOG {:?} ({e}); using info",
                level.unwrap_or_default()
            ));
            Targets::new().with_default(LevelFilter::INFO)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    // Said through the subscriber, so that JSON logs stay JSON lines.
    if let Some(w) = bad_level {
        tracing::warn!("{w}");
    }
}

/// `--log-level`'s value parser: a bad level is a usage error (exit 2), like every other bad
/// flag value, not a warning followed by info-level logs.
pub fn check_level(spec: &str) -> Result<String, String> {
    parse_filter(spec).map(|_| spec.to_string())
}

/// Parses `--log-level`. A word without `=` must be a level: `Targets` would take any other
/// word as a target name and show only that target's events, so a typo such as `warning`
/// would silence every log line.
fn parse_filter(spec: &str) -> Result<Targets, String> {
    let mut directives = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !part.contains('=') && part.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "{part:?} is not a level: use off, error, warn, info, debug or trace, \
                 or TARGET=LEVEL such as rewire=debug"
            ));
        }
        directives.push(part);
    }
    if directives.is_empty() {
        return Err("no level given".to_string());
    }
    // The file watcher library warns once per event it cannot match to a watch: a catalog
    // writer swapping directories for symlinks in a loop made 550 000 lines in 25 s. Its
    // errors still show; `notify=warn` in --log-level brings the rest back.
    let quiet_notify = "notify=error";
    if !directives.iter().any(|d| d.starts_with("notify")) {
        directives.insert(0, quiet_notify);
    }
    directives.join(",").parse().map_err(|e| format!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(spec: &str, target: &str, level: tracing::Level) -> bool {
        parse_filter(spec).unwrap().would_enable(target, &level)
    }

    #[test]
    fn the_file_watcher_library_says_only_errors_unless_asked() {
        use tracing::Level;
        assert!(!enabled("info", "notify::inotify", Level::WARN));
        assert!(enabled("info", "notify::inotify", Level::ERROR));
        assert!(enabled("info,notify=warn", "notify::inotify", Level::WARN));
        assert!(enabled("info", "rewire::catalog", Level::WARN));
    }

    #[test]
    fn a_level_applies_to_every_target() {
        use tracing::Level;
        assert!(enabled("warn", "rewire::render", Level::WARN));
        assert!(!enabled("warn", "rewire::render", Level::INFO));
        assert!(enabled("DEBUG", "hyper", Level::DEBUG));
        assert!(!enabled("off", "rewire", Level::ERROR));
    }

    #[test]
    fn target_directives_refine_the_default() {
        use tracing::Level;
        let spec = "warn, rewire::timing=trace";
        assert!(enabled(spec, "rewire::timing", Level::TRACE));
        assert!(!enabled(spec, "rewire::render", Level::INFO));
        assert!(enabled("rewire=debug", "rewire::catalog", Level::DEBUG));
        assert!(!enabled("rewire=debug", "hyper", Level::ERROR));
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused() {
        let e = parse_filter("warning").unwrap_err();
        assert!(e.contains("\"warning\" is not a level"), "{e}");
        assert!(parse_filter("").is_err());
        assert!(parse_filter("rewire=loud").is_err());
    }
}
