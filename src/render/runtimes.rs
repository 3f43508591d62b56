//! A group's runtime APIs: which of a round's written files the running program takes
//! without a reload, and when the group reloads instead.
//!
//! Per round, after every template was checked and written: each written template with a
//! `runtime` gets a plan ([`haproxy::runtime::Runtime::plan`]). The group skips its reload
//! only when every file it wrote has a runtime plan (a template without `runtime` changed:
//! reload; one plan says reload: reload, since a reload re-reads every file of the group
//! anyway). Then the plans are applied; a refused command falls back to the reload. After
//! the round, every runtime is checked against its file and repaired (or, failing that, the
//! group reloads once more).
//!
//! A file that did not change still matters at start: rewire does not know what HAProxy runs
//! until HAProxy agrees with the file on disk; if it runs something else, the group reloads.

use std::collections::BTreeMap;
use std::path::Path;

use tokio::time::Instant;
use tracing::{info, warn};

use super::group::Group;
use super::haproxy::plan::Plan;
use super::haproxy::runtime::{Adopted, Runtime, Verified};
use super::pipeline::{ReloadError, Reloaded};
use crate::files;

/// The runtimes of one group's templates, by template name.
#[derive(Default)]
pub struct Runtimes {
    by_template: BTreeMap<String, Runtime>,
    /// Destinations, to read what a reload made HAProxy load.
    destinations: BTreeMap<String, std::path::PathBuf>,
}

/// A round's written file with a runtime: template, what the file held before, what now.
pub struct WrittenFile<'a> {
    pub template: &'a str,
    pub previous: Option<&'a [u8]>,
    pub new: &'a [u8],
}

/// What the round decided.
#[derive(Debug, Default)]
pub struct Decision {
    /// Templates updated through their runtime, with the changes made (possibly none: only
    /// comments changed).
    pub applied: BTreeMap<String, Vec<String>>,
    /// Why the group must reload (per template; "" for the group as a whole), if it must.
    pub reload: Option<BTreeMap<String, String>>,
}

impl Runtimes {
    pub fn new(group: &Group) -> Runtimes {
        let mut r = Runtimes::default();
        for t in &group.templates {
            if let Some(api) = &t.runtime {
                r.by_template
                    .insert(t.name.clone(), Runtime::new(api.haproxy_socket()));
                r.destinations.insert(t.name.clone(), t.destination.clone());
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.by_template.is_empty()
    }

    pub fn has(&self, template: &str) -> bool {
        self.by_template.contains_key(template)
    }

    /// The admin socket a reload of this group is confirmed on.
    pub fn confirm_socket(&self) -> Option<&Path> {
        self.by_template.values().next().map(Runtime::socket)
    }

    /// Decides the round's path and applies the runtime plans when no reload is needed.
    /// `unchanged` are the group's runtime templates whose file held the render already;
    /// `others_written` says a template without a runtime wrote its file.
    pub async fn round(
        &mut self,
        written: &[WrittenFile<'_>],
        unchanged: &[(&str, &[u8])],
        others_written: bool,
    ) -> Decision {
        let mut decision = Decision::default();
        let mut reload: BTreeMap<String, String> = BTreeMap::new();
        for (name, bytes) in unchanged {
            let Some(rt) = self.by_template.get_mut(*name) else {
                continue;
            };
            if rt.knows_loaded() {
                continue;
            }
            match rt.adopt_file(bytes).await {
                Adopted::Yes => {
                    info!(template = %name, "HAProxy runs the file on disk; server changes go through its Runtime API")
                }
                // Not running yet: it reads the file when it starts.
                Adopted::Unreachable(_) => {}
                Adopted::Disagrees(why) => {
                    reload.insert(name.to_string(), why);
                }
            }
        }
        let mut plans = Vec::new();
        for w in written {
            let Some(rt) = self.by_template.get_mut(w.template) else {
                continue;
            };
            match rt.plan(w.previous, w.new).await {
                Plan::Runtime(changes) => plans.push((w, changes)),
                Plan::Reload(why) => {
                    reload.insert(w.template.to_string(), why);
                }
            }
        }
        if others_written {
            reload.insert(
                String::new(),
                "a template of the group without a runtime changed".into(),
            );
        }
        if reload.is_empty() {
            for (w, changes) in &plans {
                let rt = self
                    .by_template
                    .get_mut(w.template)
                    .expect("plans are made for runtime templates");
                match rt.apply(changes, w.new).await {
                    Ok(()) => {
                        decision.applied.insert(
                            w.template.to_string(),
                            changes.iter().map(ToString::to_string).collect(),
                        );
                    }
                    Err(e) => {
                        warn!(template = %w.template, "{e}; reloading instead");
                        reload.insert(w.template.to_string(), e.to_string());
                        break;
                    }
                }
            }
        }
        if !reload.is_empty() {
            // A reload re-reads every file: what was applied at runtime is moot.
            for (w, _) in &plans {
                if !reload.contains_key(w.template) {
                    reload.insert(
                        w.template.to_string(),
                        "the group reloads for another template".into(),
                    );
                }
            }
            decision.applied.clear();
            decision.reload = Some(reload);
        }
        decision
    }

    /// After the group's reload: what HAProxy runs now is the files on disk (confirmed), or
    /// unknown.
    pub fn after_reload(&mut self, result: &Result<Reloaded, ReloadError>) {
        for (name, rt) in &mut self.by_template {
            match result {
                Ok(Reloaded::Done) => {
                    let dest = &self.destinations[name];
                    let file = std::fs::read(files::real_destination(dest)).ok();
                    rt.reloaded(file.as_deref());
                }
                Ok(Reloaded::NotRunning(_)) | Err(_) => rt.forget(),
            }
        }
    }

    /// Checks every runtime against its file, repairing what the Runtime API can. Returns why
    /// the group must reload, if it must.
    pub async fn verify(&mut self) -> Option<String> {
        for (name, rt) in &mut self.by_template {
            match rt.verify().await {
                Ok(Verified::Agrees) | Ok(Verified::Unknown(_)) => {}
                Ok(Verified::Repaired(changes)) => {
                    info!(template = %name, changes = %changes.join(", "), "HAProxy repaired through its Runtime API");
                }
                Err(why) => {
                    warn!(template = %name, "HAProxy differs from the file and only a reload can repair it: {why}");
                    return Some(why);
                }
            }
        }
        None
    }

    /// When a starting server or one on its way out should be looked at again.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_template
            .values()
            .filter_map(Runtime::next_due)
            .min()
    }

    /// Readies new servers whose first check finished; deletes servers on their way out
    /// whose connections ended.
    pub async fn housekeeping(&mut self) {
        let now = Instant::now();
        for rt in self.by_template.values_mut() {
            if rt.next_due().is_some_and(|at| at <= now) {
                rt.housekeeping().await;
            }
        }
    }

    /// Servers waiting for deletion, per template (for `rewire status`).
    pub fn leaving(&self, template: &str) -> Vec<String> {
        self.by_template
            .get(template)
            .map(|rt| rt.leaving().collect())
            .unwrap_or_default()
    }
}
