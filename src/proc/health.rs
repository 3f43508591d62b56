//! The last health results of this process's own services, for whoever must wait on them.
//!
//! The registrar reports each `[[service]]`'s health command here after every run, and each
//! `[[job]]` its own; an `[[election]]` reads it to decide whether this process may run for
//! leader, or must resign. Keys name the source (`service:<name>`, `job:<name>`). Published on a `watch` channel: readers see the latest state and wake on change.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

/// One source's health as its checks said it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The last check passed; `false` before the first check too.
    pub passing: bool,
    /// Failed checks in a row (0 after a pass).
    pub failures: u32,
    /// Checks run so far (none: the source has not said anything yet).
    pub checks: u64,
}

/// Where health is reported and read. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    tx: Arc<watch::Sender<BTreeMap<String, Health>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            tx: Arc::new(watch::channel(BTreeMap::new()).0),
        }
    }
}

/// The key of a `[[service]]`'s health.
pub fn service_key(name: &str) -> String {
    format!("service:{name}")
}

/// The key of a `[[job]]`'s health command.
pub fn job_key(name: &str) -> String {
    format!("job:{name}")
}

impl Registry {
    /// Records one check's result.
    pub fn report(&self, key: &str, passing: bool) {
        self.tx.send_modify(|all| {
            let h = all.entry(key.to_string()).or_default();
            h.passing = passing;
            h.failures = if passing { 0 } else { h.failures + 1 };
            h.checks += 1;
        });
    }

    /// Forgets a source (maintenance mode, a service removed by SIGHUP): it counts as not
    /// checked, so nothing waiting on it may go ahead.
    pub fn clear(&self, key: &str) {
        self.tx.send_if_modified(|all| all.remove(key).is_some());
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, Health>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_in_a_row_and_a_pass_resets_them() {
        let r = Registry::default();
        let rx = r.subscribe();
        let k = service_key("redis");
        r.report(&k, false);
        r.report(&k, false);
        assert_eq!(rx.borrow()[&k].failures, 2);
        r.report(&k, true);
        assert_eq!(
            rx.borrow()[&k],
            Health {
                passing: true,
                failures: 0,
                checks: 3
            }
        );
        r.clear(&k);
        assert!(!rx.borrow().contains_key(&k));
    }
}
