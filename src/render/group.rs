//! Templates that share a reload form one group: the reload runs once for every file the group
//! wrote, and if it fails every one of those files is put back, so nginx is never left with
//! half of a change.
//!
//! Used by the daemon's runner (one task per group) and by `rewire render --reload` (the
//! files one run wrote, grouped the same way), so both follow one rule.

use std::collections::BTreeMap;

use std::path::Path;
use std::time::Duration;

use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::haproxy;
use super::pipeline::{self, ReloadError, Reloaded};
use crate::config::{Reload, TemplateConfig, Wait};

/// Templates that share a reload (or one template on its own).
#[derive(Clone, Debug)]
pub struct Group {
    pub templates: Vec<TemplateConfig>,
    pub reload: Option<Reload>,
}

/// Splits templates into groups by their reload, in the order they first appear.
pub fn groups(templates: &[TemplateConfig]) -> Vec<Group> {
    by_reload(templates.iter().cloned(), |t| t.reload.as_ref())
        .into_iter()
        .map(|(reload, templates)| Group { templates, reload })
        .collect()
}

/// Splits `items` by the reload each names, in the order they first appear. Items without a
/// reload stay alone (there is nothing to share).
pub fn by_reload<T>(
    items: impl IntoIterator<Item = T>,
    reload: impl Fn(&T) -> Option<&Reload>,
) -> Vec<(Option<Reload>, Vec<T>)> {
    let mut out: Vec<(Option<Reload>, Vec<T>)> = Vec::new();
    for item in items {
        let r = reload(&item).cloned();
        if let Some(r) = &r
            && let Some((_, members)) = out
                .iter_mut()
                .find(|(gr, _)| gr.as_ref().is_some_and(|gr| gr.key() == r.key()))
        {
            members.push(item);
            continue;
        }
        out.push((r, vec![item]));
    }
    out
}

impl Group {
    /// A group settles as quickly as its quickest member asks.
    pub fn wait(&self) -> Wait {
        let min = self
            .templates
            .iter()
            .map(|t| t.wait.min)
            .min()
            .unwrap_or_default();
        let max = self
            .templates
            .iter()
            .map(|t| t.wait.max)
            .min()
            .unwrap_or_default();
        Wait {
            min,
            max: max.max(min),
        }
    }

    /// `a+b` for logs.
    pub fn name(&self) -> String {
        names(self.templates.iter())
    }
}

fn names<'t>(templates: impl Iterator<Item = &'t TemplateConfig>) -> String {
    templates
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join("+")
}

/// A file one round wrote: its template and what the destination held before (None: it did
/// not exist), kept so a failed reload can put it back.
#[derive(Debug)]
pub struct Written<'t> {
    pub template: &'t TemplateConfig,
    pub previous: Option<Vec<u8>>,
}

/// Runs `reload` once for every file in `written` (nothing to run without a reload). When it
/// fails, every one of them that had a previous version is restored before the error is
/// returned; the caller reports it per template.
///
/// A file that did not exist before is kept (see [`kept_after_failed_reload`]): it passed its
/// check, and removing it would leave the program with no config at all. That is the normal
/// case at start: nginx under `[main]` is not running yet, so `nginx -s reload` fails, and
/// deleting the first render would keep main from ever getting its config. The caller tries
/// the reload again later.
///
/// `confirm` is an HAProxy admin socket (a group with `runtime = { haproxy = ... }`): a
/// reload counts once a new worker answers there. HAProxy ignores a SIGUSR2 that arrives
/// during the previous reload, so a signal that changed nothing within a second is sent
/// again (three times at most); a master CLI reload confirms itself.
pub async fn reload_or_restore<'a, 't: 'a>(
    reload: Option<&Reload>,
    written: impl IntoIterator<Item = &'a Written<'t>> + Clone,
    main_pid: Option<Pid>,
    env: &BTreeMap<String, String>,
    confirm: Option<&Path>,
) -> Result<Reloaded, ReloadError> {
    let Some(r) = reload else {
        return Ok(Reloaded::Done);
    };
    let before = match (confirm, r) {
        (Some(socket), Reload::Signal { .. } | Reload::Command(_)) => {
            haproxy::runtime::worker_pid(socket)
                .await
                .map(|pid| (socket, pid))
        }
        _ => None,
    };
    let mut result = pipeline::reload(r, main_pid, env).await;
    if let (Ok(Reloaded::Done), Some((socket, pid))) = (&result, before) {
        result = confirm_new_worker(r, socket, pid, main_pid, env).await;
    }
    let templates = || names(written.clone().into_iter().map(|w| w.template));
    match &result {
        Ok(Reloaded::Done) => info!(templates = %templates(), "reloaded"),
        Ok(Reloaded::NotRunning(why)) => info!(
            templates = %templates(),
            "not reloaded: {why}; the program reads the new file when it starts"
        ),
        Err(e) => {
            error!(templates = %templates(), "{e}; restoring the previous files");
            for w in written {
                if kept_after_failed_reload(w) {
                    warn!(
                        template = %w.template.name,
                        dest = %w.template.destination.display(),
                        "kept: there was no previous file to restore, and this one passed its check"
                    );
                } else if let Err(re) = pipeline::restore(w.template, w.previous.as_deref()) {
                    error!(template = %w.template.name, error = %re, "cannot restore the previous file");
                }
            }
        }
    }
    result
}

/// How long a reloaded HAProxy has to show a new worker before the reload is sent again.
const NEW_WORKER_WITHIN: Duration = Duration::from_secs(1);
const RELOAD_SENDS: u32 = 3;

/// Waits for a worker other than `old` on `socket`, re-sending the reload when none comes.
async fn confirm_new_worker(
    r: &Reload,
    socket: &Path,
    old: u32,
    main_pid: Option<Pid>,
    env: &BTreeMap<String, String>,
) -> Result<Reloaded, ReloadError> {
    for sends in 1..=RELOAD_SENDS {
        if haproxy::runtime::new_worker(socket, old, NEW_WORKER_WITHIN * sends).await {
            return Ok(Reloaded::Done);
        }
        if sends == RELOAD_SENDS {
            break;
        }
        warn!(socket = %socket.display(), pid = old, "HAProxy did not reload (its worker is unchanged): sending the reload again");
        match pipeline::reload(r, main_pid, env).await {
            Ok(Reloaded::Done) => {}
            other => return other,
        }
    }
    Err(ReloadError::Unconfirmed {
        socket: socket.to_path_buf(),
        pid: old,
        sends: RELOAD_SENDS,
    })
}

/// Whether a failed reload leaves this file in place: it had no previous version (a restore
/// would delete it, leaving the program without a config).
pub fn kept_after_failed_reload(w: &Written) -> bool {
    w.previous.is_none()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{CheckMode, CommandSpec, DEFAULT_WAIT, Program, WriteMode};

    fn template(name: &str, reload: Option<&str>) -> TemplateConfig {
        TemplateConfig {
            name: name.into(),
            source: "/s".into(),
            destination: format!("/d/{name}").into(),
            perms: None,
            check: None,
            check_mode: CheckMode::Temp,
            reload: reload.map(|r| {
                Reload::Command(CommandSpec {
                    program: Program::Argv(vec![r.into()]),
                    timeout: Duration::from_secs(1),
                })
            }),
            wait: DEFAULT_WAIT,
            write: WriteMode::Atomic,
            backup: false,
            runtime: None,
            limits: crate::config::DEFAULT_RENDER_LIMITS,
        }
    }

    #[test]
    fn templates_sharing_a_reload_form_one_group() {
        let g = groups(&[
            template("a", Some("x")),
            template("b", None),
            template("c", Some("x")),
            template("d", None),
        ]);
        let names: Vec<String> = g.iter().map(|g| g.name()).collect();
        assert_eq!(names, ["a+c", "b", "d"]);
    }

    #[tokio::test]
    async fn a_failed_reload_restores_every_file_of_the_group_but_never_deletes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = template("a", None);
        a.destination = dir.path().join("a.conf");
        let mut b = template("b", None);
        b.destination = dir.path().join("b.conf");
        std::fs::write(&a.destination, "new a").unwrap();
        std::fs::write(&b.destination, "new b").unwrap();
        let written = [
            Written {
                template: &a,
                previous: Some(b"old a".to_vec()),
            },
            Written {
                template: &b,
                previous: None,
            },
        ];
        let failing = Reload::Command(CommandSpec {
            program: Program::Argv(vec!["false".into()]),
            timeout: Duration::from_secs(5),
        });
        let r = reload_or_restore(Some(&failing), &written, None, &BTreeMap::new(), None).await;
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(&a.destination).unwrap(), "old a");
        assert_eq!(
            std::fs::read_to_string(&b.destination).unwrap(),
            "new b",
            "a checked file without a predecessor is kept"
        );
    }
}
