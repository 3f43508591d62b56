//! Everything about the config that touches the disk: reading the file, and checking that
//! what it names is there.
//!
//! [`parse_str`](super::parse_str) is pure, so tests run it on string literals; the walker
//! records what only the disk can answer as [`DiskCheck`]s, and [`load`] runs them after the
//! parse. Their problems join the others, in file order, so `rewire check` still lists every
//! problem at once.

use std::path::{Path, PathBuf};

use super::Config;
use super::error::{ConfigError, ConfigErrors};
use super::parse::{absolute, parse};
use super::walker::finish_sorted;

/// Something the config names that must exist on this machine, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskCheck {
    /// A `[[template]]` source file.
    TemplateSource {
        line: usize,
        col: usize,
        path: PathBuf,
    },
}

impl DiskCheck {
    /// The problem, when the disk says no.
    fn run(&self, file: &Path) -> Option<ConfigError> {
        match self {
            DiskCheck::TemplateSource { line, col, path } => {
                (!path.is_file()).then(|| ConfigError {
                    file: file.to_path_buf(),
                    line: *line,
                    col: *col,
                    what: format!("template source {} does not exist", path.display()),
                    hint: "paths are relative to the config file's directory".into(),
                })
            }
        }
    }
}

/// Reads and validates the config at `path`: the parse, then the checks on the disk.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let abs = absolute(path);
    let text = std::fs::read_to_string(&abs).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: abs.clone(),
            line: 0,
            col: 0,
            what: format!("cannot read the config: {e}"),
            hint: "pass the file with -c FILE or REWIRE_CONFIG; `rewire --help` shows an example"
                .into(),
        }])
    })?;
    let parsed = parse(&text, &abs, &|name| std::env::var(name).ok());
    let mut errors = parsed.errors;
    errors.extend(parsed.disk.iter().filter_map(|check| check.run(&abs)));
    match parsed.config {
        Some(c) if errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors(finish_sorted(errors))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_template_source_is_found_by_load_not_by_parse_str() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rewire.toml");
        let text = "[[template]]\nsource = \"nope.tera\"\ndestination = \"out\"\n";
        std::fs::write(&path, text).unwrap();
        assert!(super::super::parse_str(text, &path, &|_| None).is_ok());
        let errs = load(&path).unwrap_err().to_string();
        assert!(
            errs.contains(":2:10: template source") && errs.contains("nope.tera does not exist"),
            "{errs}"
        );
    }
}
