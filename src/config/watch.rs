//! `[[watch]]`: a command to run when a service's healthy instances change.

use std::time::Duration;

use toml::Spanned;

use super::walker::{Tbl, Walker};
use super::{Wait, WatchConfig};

impl Walker<'_> {
    pub(super) fn watches(&mut self, root: &Tbl, default_wait: Wait) -> Vec<WatchConfig> {
        let mut out = Vec::new();
        for (i, t) in self.tables(root, "watch").into_iter().enumerate() {
            let service = self.required_string(&t, "service", "service = \"sales\"");
            let tag = self.string(&t, "tag").map(Spanned::into_inner);
            let on_change = self.required_command(
                &t,
                "on_change",
                Duration::from_secs(60),
                "[\"/usr/local/bin/refresh\"]",
            );
            let wait = self.wait(&t, "wait", default_wait);
            let when = self.when(&t, &format!("watch[{}]", i + 1), false);
            self.finish(&t, &["service", "tag", "on_change", "wait", "when"]);
            if let (Some(service), Some(on_change)) = (service, on_change) {
                out.push(WatchConfig {
                    service: service.into_inner(),
                    tag,
                    on_change,
                    wait,
                    when,
                });
            }
        }
        out
    }
}
