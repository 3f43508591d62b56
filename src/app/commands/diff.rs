//! `rewire diff`: render everything, write nothing, print a unified diff per destination
//! (exit like diff(1): 0 no change, 1 changes, 2 trouble).

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use super::{render_until_ready, select};
use crate::app::cli::{ColorChoice, DiffArgs};
use crate::app::{Failure, Outcome};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::files;
use crate::render::template::{Engine, Rendered, pending_reason};
use crate::store::Store;

pub async fn run(
    config: &Config,
    catalog: Arc<dyn Catalog>,
    args: &DiffArgs,
) -> Result<Outcome, Failure> {
    let templates = select(config, &args.templates, "diff")?;
    let engine = Arc::new(
        Engine::load(&config.templates, config.catalog.backend.name()).map_err(|errors| {
            Failure::TemplateProblems {
                command: "diff",
                errors,
            }
        })?,
    );
    // While the first render finds out what to fetch (nothing is read for broken templates).
    catalog.warm_up();
    let store = Store::new();
    let (results, last_error) =
        render_until_ready(&engine, &templates, catalog.as_ref(), &store, args.timeout).await;
    let color = match args.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let mut changed = false;
    // (template, why) for every template that could not be compared.
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for t in &templates {
        match &results[&t.name] {
            Rendered::Done { text, .. } => {
                let current = match files::read_current(&files::real_destination(&t.destination)) {
                    Ok(c) => c,
                    Err(e) => {
                        failed.push((t.name.clone(), e.to_string()));
                        continue;
                    }
                };
                let d =
                    files::unified_diff(&t.destination, current.as_deref(), text.as_bytes(), color);
                if !d.is_empty() {
                    changed = true;
                    // A closed pipe (`rewire diff | head`) is not an error.
                    if stdout.write_all(d.as_bytes()).is_err() {
                        break;
                    }
                }
            }
            Rendered::Pending {
                missing, waiting, ..
            } => failed.push((
                t.name.clone(),
                format!(
                    "cannot render after {}: {}",
                    humantime::format_duration(args.timeout),
                    pending_reason(missing, waiting, last_error.as_deref())
                ),
            )),
            Rendered::Failed { error, .. } => failed.push((t.name.clone(), error.clone())),
        }
    }
    let _ = stdout.flush();
    if !failed.is_empty() {
        Err(Failure::Diff(failed))
    } else if changed {
        Ok(Outcome::Findings(String::new()))
    } else {
        Ok(Outcome::Done)
    }
}
