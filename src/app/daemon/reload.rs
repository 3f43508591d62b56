//! SIGHUP: read the config and the templates again, and work out what the new config changes
//! for the running daemon before anything is touched.
//!
//! A new config that does not load (or whose templates do not parse) is rejected with the
//! same errors as `rewire check`, and the running one stays. A valid one is applied by
//! difference ([`Changes`]): the catalog watch is kept unless `[catalog]` changed, template
//! runners and handlers are swapped, registrations are reconciled by the supervisor (which
//! knows what it registered), and the main process is left alone.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::app::{LoadFailure, Reloader};
use crate::config::Config;
use crate::render::template::{Engine, LoadError};

/// Why a new config was not applied.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("{0}")]
    Load(LoadFailure),
    #[error("{}", crate::app::load_errors(.0))]
    Templates(Vec<LoadError>),
}

/// Reads the config the way the command line gave it, and parses its templates.
pub fn read(reloader: &Reloader) -> Result<(Config, Arc<Engine>), Rejected> {
    let new = reloader.load().map_err(Rejected::Load)?;
    let engine =
        Engine::load(&new.templates, new.catalog.backend.name()).map_err(Rejected::Templates)?;
    Ok((new, Arc::new(engine)))
}

/// What a new config changes for the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// `[catalog]` differs: open the new catalog (a config whose catalog is unusable is
    /// rejected) and restart the watch; the store keeps its data meanwhile.
    pub catalog: bool,
    /// Templates the new config no longer has: they leave the status report.
    pub dropped_templates: BTreeSet<String>,
}

impl Changes {
    pub fn between(old: &Config, new: &Config) -> Changes {
        Changes {
            catalog: old.catalog != new.catalog,
            dropped_templates: old
                .templates
                .iter()
                .filter(|t| !new.templates.iter().any(|n| n.name == t.name))
                .map(|t| t.name.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse_str(text, Path::new("/etc/rewire/rewire.toml"), &|_| None).unwrap()
    }

    #[test]
    fn only_what_differs_is_a_change() {
        let two = "[[template]]\nsource = \"a.tera\"\ndestination = \"a\"\n\n[[template]]\nsource = \"b.tera\"\ndestination = \"b\"\n";
        let old = config(two);
        let same = Changes::between(&old, &config(two));
        assert_eq!(
            same,
            Changes {
                catalog: false,
                dropped_templates: BTreeSet::new()
            }
        );
        let new = config(
            "[catalog]\nbackend = \"etcd\"\n\n[[template]]\nsource = \"a.tera\"\ndestination = \"a\"\n",
        );
        let c = Changes::between(&old, &new);
        assert!(c.catalog);
        assert_eq!(c.dropped_templates, BTreeSet::from(["b".to_string()]));
    }
}
