//! `[[task]]`: a command to run every so often (never overlapping itself); its timeout
//! defaults to its period.

use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker};
use super::{MetricConfig, TaskConfig};

impl Walker<'_> {
    pub(super) fn tasks(&mut self, root: &Tbl, metrics: &[MetricConfig]) -> Vec<TaskConfig> {
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
            self.warn_frantic(&t, "every", every);
            let timeout = self.positive_duration(&t, "timeout");
            let exec = self.required_command(
                &t,
                "exec",
                timeout.or(every).unwrap_or(Duration::from_secs(60)),
                "[\"/usr/local/bin/backup\"]",
            );
            let name = self.string(&t, "name").map(Spanned::into_inner);
            let metric = self.string(&t, "metric").and_then(|m| {
                if metrics.iter().any(|d| d.name == *m.get_ref()) {
                    Some(m.into_inner())
                } else {
                    self.error(
                        m.span(),
                        format!("`metric` {:?} is not declared", m.get_ref()),
                        "declare it: [[metric]] name = \"...\" type = \"gauge\"",
                    );
                    None
                }
            });
            let label = name.clone().unwrap_or_else(|| format!("task[{}]", i + 1));
            let when = self.when(&t, &label, false);
            self.finish(&t, &["every", "exec", "timeout", "name", "when", "metric"]);
            if let (Some(every), Some(mut exec)) = (every, exec) {
                if let Some(timeout) = timeout {
                    exec.timeout = timeout;
                }
                let name = name.unwrap_or_else(|| format!("task{}-{}", i + 1, exec.program.name()));
                out.push(TaskConfig {
                    name,
                    every,
                    exec,
                    metric,
                    when,
                });
            }
        }
        out
    }
}
