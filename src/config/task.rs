//! `[[task]]`: a command to run every so often (never overlapping itself); its timeout
//! defaults to its period.

use std::time::Duration;

use toml::Spanned;

use super::TaskConfig;
use super::walker::{Tbl, Walker};

impl Walker<'_> {
    pub(super) fn tasks(&mut self, root: &Tbl) -> Vec<TaskConfig> {
        let mut out = Vec::new();
        for (i, t) in self.tables(root, "task").into_iter().enumerate() {
            let every = self.duration(&t, "every");
            if t.map.get("every").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `every`", t.section()),
                    "every = \"5m\"",
                );
            }
            if every.is_some_and(|e| e.is_zero()) {
                let span = t.key_span("every").unwrap_or(t.span.clone());
                self.error(span, "`every` must be more than 0", "");
            }
            let timeout = self.duration(&t, "timeout");
            let exec = self.command(
                &t,
                "exec",
                timeout.or(every).unwrap_or(Duration::from_secs(60)),
            );
            if t.map.get("exec").is_none() {
                self.error(
                    t.span.clone(),
                    format!("{} needs `exec`", t.section()),
                    "exec = [\"/usr/local/bin/backup\"]",
                );
            }
            let name = self.string(&t, "name").map(Spanned::into_inner);
            let label = name.clone().unwrap_or_else(|| format!("task[{}]", i + 1));
            let when = self.when(&t, &label, false);
            self.finish(&t, &["every", "exec", "timeout", "name", "when"]);
            if let (Some(every), Some(mut exec)) = (every, exec) {
                if let Some(timeout) = timeout {
                    exec.timeout = timeout;
                }
                let name = name.unwrap_or_else(|| format!("task{}-{}", i + 1, exec.program.name()));
                out.push(TaskConfig {
                    name,
                    every,
                    exec,
                    when,
                });
            }
        }
        out
    }
}
