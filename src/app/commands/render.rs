//! `rewire render`: wait for data, render, check, write, and with `--reload` reload what
//! changed, group by group as the daemon does (see [`group`]).

use std::sync::Arc;

use tracing::info;

use super::{render_until_ready, select, template_problems};
use crate::app::cli::RenderArgs;
use crate::app::{Failure, Outcome};
use crate::catalog::Catalog;
use crate::command;
use crate::config::Config;
use crate::render::group::{self, Written};
use crate::render::pipeline::{self, Applied};
use crate::render::template::{Engine, Rendered, pending_reason};
use crate::store::Store;

/// `rewire render`: 0 when every template was written or unchanged, 1 (with the list) when
/// any was not.
pub async fn run(
    config: &Config,
    catalog: Arc<dyn Catalog>,
    args: &RenderArgs,
) -> Result<Outcome, Failure> {
    let templates = select(config, &args.templates, "render")?;
    // Broken templates are this command's findings (exit 1), not a usage error.
    let engine = match Engine::load(&config.templates, config.catalog.backend.name()) {
        Ok(e) => Arc::new(e),
        Err(errors) => return Ok(Outcome::Findings(template_problems("render", &errors))),
    };
    // While the first render finds out what to fetch (nothing is read for broken templates).
    catalog.warm_up();
    pipeline::remove_leftovers(&config.templates);
    let env = &command::child_env(config);
    let store = Store::new();
    let started = std::time::Instant::now();
    let (results, last_error) =
        render_until_ready(&engine, &templates, catalog.as_ref(), &store, args.timeout).await;
    // Before the timeout only when the catalog refused outright (waiting would not help).
    let waited = if started.elapsed() >= args.timeout {
        format!(" after {}", humantime::format_duration(args.timeout))
    } else {
        String::new()
    };

    let mut failures: Vec<(String, String)> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    for t in &templates {
        match &results[&t.name] {
            Rendered::Done { text, .. } => {
                match pipeline::apply(t, text.as_bytes(), env, None).await {
                    // No config replaces this one's (the `None` above).
                    Ok(Applied::Unchanged | Applied::Abandoned) => {
                        info!(template = %t.name, dest = %t.destination.display(), "unchanged");
                    }
                    Ok(Applied::Written { previous }) => {
                        info!(template = %t.name, dest = %t.destination.display(), bytes = text.len(), "written");
                        written.push(Written {
                            template: t,
                            previous,
                        });
                    }
                    Err(e) => failures.push((t.name.clone(), e.to_string())),
                }
            }
            Rendered::Pending {
                missing, waiting, ..
            } => failures.push((
                t.name.clone(),
                format!(
                    "not written{waited}: {}",
                    pending_reason(missing, waiting, last_error.as_deref())
                ),
            )),
            Rendered::Failed { error, .. } => failures.push((t.name.clone(), error.clone())),
        }
    }

    if args.reload {
        // Templates sharing a reload run it once; if it fails, all of them are rolled back.
        for (reload, group) in group::by_reload(written, |w| w.template.reload.as_ref()) {
            if reload.is_none() {
                continue;
            }
            // A group with an HAProxy runtime confirms its reload there, as the daemon does.
            let confirm = group
                .iter()
                .find_map(|w| w.template.runtime.as_ref())
                .map(|r| r.haproxy_socket().to_path_buf());
            if let Err(e) =
                group::reload_or_restore(reload.as_ref(), &group, None, env, confirm.as_deref())
                    .await
            {
                for w in &group {
                    let what = if group::kept_after_failed_reload(w) {
                        "the new file was kept (there was no previous one)"
                    } else {
                        "the previous file was restored"
                    };
                    failures.push((w.template.name.clone(), format!("{e}; {what}")));
                }
            }
        }
    }

    // The process exits next: the catalog data is left to the exit rather than freed piece by
    // piece (with 10 000 instances, their template values and the catalog's own copy that is
    // ~4 ms, and glibc then trims its arenas for ~3 ms more, of a ~100 ms command).
    std::mem::forget(results);
    std::mem::forget(store);
    std::mem::forget(catalog);

    if failures.is_empty() {
        return Ok(Outcome::Done);
    }
    // The report below is the one account of each failure (a log line too would say it twice).
    let mut report = format!(
        "rewire render: {} of {} template(s) failed:",
        failures.len(),
        templates.len()
    );
    for (name, why) in &failures {
        report.push_str(&format!("\n  {name}: {}", why.replace('\n', "\n    ")));
    }
    Ok(Outcome::Findings(report))
}
