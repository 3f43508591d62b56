//! The one-shot commands: `render`, `diff` and `check` (and `import`, `completions`, `man`).
//!
//! `render` and `diff` share discovery ([`render_until_ready`]): render every template against
//! a store of their own, fetch whatever the renders found missing, and render again until
//! nothing is missing or the timeout passes. This is the one place a one-shot command reads
//! the catalog; the templates, as in the daemon, read only the store. `render` then goes
//! through the daemon's pipeline and reload groups; `diff` compares with what is on disk.

pub mod check;
pub mod diff;
pub mod import;
pub mod manual;
mod progress;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Failure;
use crate::catalog::Catalog;
use crate::config::{Config, TemplateConfig};
use crate::model::Query;
use crate::render::template::{Engine, LoadError, Rendered};
use crate::render::worker::Slot;
use crate::store::Store;

/// Picks the templates named on the command line (all when none is named).
fn select<'c>(
    config: &'c Config,
    names: &[String],
    command: &'static str,
) -> Result<Vec<&'c TemplateConfig>, Failure> {
    if names.is_empty() {
        return Ok(config.templates.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        // The exact name, else the name without its extension (`nginx` for `nginx.conf`, the
        // default name of templates/nginx.conf.tera) when that picks one template.
        let exact = config.templates.iter().find(|t| &t.name == n);
        let stem: Vec<&TemplateConfig> = config
            .templates
            .iter()
            .filter(|t| name_stem(&t.name) == n)
            .collect();
        match (exact, stem.as_slice()) {
            (Some(t), _) => out.push(t),
            (None, [t]) => out.push(*t),
            (None, [_, _, ..]) => {
                let names: Vec<&str> = stem.iter().map(|t| t.name.as_str()).collect();
                return Err(Failure::Usage {
                    command,
                    message: format!(
                        "{n:?} could mean any of: {}; give the whole name",
                        names.join(", ")
                    ),
                });
            }
            (None, []) => {
                let known: Vec<&str> = config.templates.iter().map(|t| t.name.as_str()).collect();
                return Err(Failure::Usage {
                    command,
                    message: format!(
                        "no template named {n:?}; the config has: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// A template name without its last extension: `nginx` for `nginx.conf`.
fn name_stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    }
}

/// Every template problem, then a summary naming the command.
pub(super) fn template_problems(command: &str, errors: &[LoadError]) -> String {
    let mut lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    lines.push(format!(
        "rewire {command}: {} template problem(s); nothing written",
        errors.len()
    ));
    lines.join("\n")
}

/// Renders `templates` until every query they use has data, or the deadline passes.
/// Returns each template's last render and the last catalog error seen, if any.
///
/// Each render is bounded by its template's limits and runs off the async worker (see
/// [`worker`](crate::render::worker)); one a limit stopped is not rendered again.
pub async fn render_until_ready(
    engine: &Arc<Engine>,
    templates: &[&TemplateConfig],
    catalog: &dyn Catalog,
    store: &Store,
    timeout: Duration,
) -> (BTreeMap<String, Rendered>, Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    let mut pause = Duration::from_millis(50);
    let mut slots: BTreeMap<String, Slot> = BTreeMap::new();
    let mut results: BTreeMap<String, Rendered> = BTreeMap::new();
    let progress = progress::Progress::start(catalog.describe(), timeout);
    let _shown = progress.guard();
    loop {
        let snap = store.snapshot();
        for t in templates {
            if let Some(Rendered::Failed { limit: Some(_), .. }) = results.get(&t.name) {
                continue;
            }
            let slot = slots.entry(t.name.clone()).or_default();
            let r = slot.render(engine, &t.name, t.limits, &snap).await;
            results.insert(t.name.clone(), r);
        }
        // Every dependency the snapshot lacks, including keys with a default (which do not
        // block a render but must show their real value when they exist).
        let mut to_fetch: BTreeSet<Query> = results
            .values()
            .flat_map(|r| r.deps().iter())
            .filter(|q| snap.get(q).is_none() && q.is_catalog())
            .cloned()
            .collect();
        let mut waiting_on_keys = false;
        for r in results.values() {
            if let Rendered::Pending { waiting, deps, .. } = r
                && !waiting.is_empty()
            {
                {
                    // A key that does not exist yet: ask again until it appears.
                    waiting_on_keys = true;
                    to_fetch.extend(deps.iter().filter(|q| matches!(q, Query::Key(_))).cloned());
                }
            }
        }
        if to_fetch.is_empty() || Instant::now() >= deadline {
            return (results, last_error);
        }
        let queries: Vec<Query> = to_fetch.into_iter().collect();
        progress.waiting_for(&queries, last_error.as_deref());
        let mut progressed = false;
        let mut refused = false;
        for (q, r) in catalog.fetch_many(&queries).await {
            match r {
                Ok(data) => {
                    progressed |= snap.get(&q).is_none();
                    store.update(q, data);
                }
                Err(e) => {
                    // A refused token or an unsupported query will not pass by waiting (as
                    // `rewire run` stops at once): say so now, not at the deadline.
                    refused |= !e.is_transient();
                    last_error = Some(e.to_string());
                }
            }
        }
        if refused {
            return (results, last_error);
        }
        if !progressed || waiting_on_keys {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}
