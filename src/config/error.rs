//! The problems a config file can have, each with file:line:col and a hint.
//!
//! `rewire check` and every other command print these as they are: the text is an interface
//! (tests assert it end to end), so every message repeats the input and names the fix.

use std::fmt;
use std::path::PathBuf;

/// One problem in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub what: String,
    pub hint: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // About the whole file (it cannot be read): no position to give.
            write!(f, "{}: {}", self.file.display(), self.what)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.what
            )?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "\n{n} problem{} in the config",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Whether the file itself could not be read (no position to give): not a problem *in* the
    /// config, so even `rewire check` treats it as a usage error.
    pub fn unreadable(&self) -> bool {
        self.0.iter().any(|e| e.line == 0)
    }
}
