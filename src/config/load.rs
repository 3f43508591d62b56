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
                let (what, hint) = match std::fs::metadata(path) {
                    Ok(m) if m.is_file() => return None,
                    Ok(m) if m.is_dir() => (
                        "is a directory",
                        "name the template file itself (its *.tera partials beside it load too)",
                    ),
                    Ok(_) => ("is not a regular file", "name a template file"),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (
                        "cannot be read (permission denied)",
                        "make it and its directory readable by rewire's user",
                    ),
                    Err(_) => (
                        "does not exist",
                        "paths are relative to the config file's directory",
                    ),
                };
                Some(ConfigError {
                    file: file.to_path_buf(),
                    line: *line,
                    col: *col,
                    what: format!("template source {} {what}", path.display()),
                    hint: hint.into(),
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
        // A directory is named as one.
        std::fs::create_dir(dir.path().join("nope.tera")).unwrap();
        let errs = load(&path).unwrap_err().to_string();
        assert!(errs.contains("nope.tera is a directory"), "{errs}");
    }
}
