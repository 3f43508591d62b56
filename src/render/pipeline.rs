//! The steps after a render, shared by `rewire render` and `rewire run`:
//! compare → check → write, then reload, and restore when a reload fails.
//!
//! One function per step keeps the one-shot path and the daemon identical: the daemon only
//! adds debounce, remembering rejected bytes, and running shared reloads once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::haproxy;
use crate::command::{self, Outcome};
use crate::config::{CheckMode, CommandSpec, Reload, SignalTarget, TemplateConfig, WriteMode};
use crate::files;

/// What `apply` did.
#[derive(Debug)]
pub enum Applied {
    /// The destination already held these bytes: nothing written, nothing to reload.
    Unchanged,
    /// Written; `previous` is what was there before (None: the file did not exist), kept for
    /// a rollback if the reload fails.
    Written { previous: Option<Vec<u8>> },
    /// The config was replaced (SIGHUP) while the check ran: nothing was put in place, and the
    /// new config's runner writes the file.
    Abandoned,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("check {program} rejected the new {dest}: it {how}{}", indent_output(.output))]
    Rejected {
        program: String,
        dest: PathBuf,
        how: String,
        output: String,
    },
    #[error("{0}")]
    CheckSpawn(#[from] command::SpawnError),
    #[error("cannot write {dest}: {source}")]
    Write {
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reload {program} {how}{}", indent_output(.output))]
    Failed {
        program: String,
        how: String,
        output: String,
    },
    #[error("{0}")]
    Spawn(#[from] command::SpawnError),
    #[error("cannot signal {what}: {detail}")]
    Signal { what: String, detail: String },
    #[error(
        "{what} (pid {pid}) started no new child within {}s after {signal}: it kept its previous config (its error log says why)",
        CONFIRM_TIMEOUT.as_secs()
    )]
    NoNewChild {
        what: String,
        pid: i32,
        signal: nix::sys::signal::Signal,
    },
    #[error("reload through {}: {source}", socket.display())]
    HaproxyMaster {
        socket: PathBuf,
        #[source]
        source: haproxy::master::MasterError,
    },
    #[error("HAProxy did not reload: the worker answering on {} is still pid {pid} after {sends} signal(s)", socket.display())]
    Unconfirmed {
        socket: PathBuf,
        pid: u32,
        sends: u32,
    },
}

fn indent_output(output: &str) -> String {
    if output.trim().is_empty() {
        return String::new();
    }
    let body: Vec<String> = output.lines().map(|l| format!("    {l}")).collect();
    format!(":\n{}", body.join("\n"))
}

/// Checks and writes one rendered template. Returns `Unchanged` without touching anything
/// when the destination already holds `bytes`.
///
/// `replaced` is cancelled when a new config takes over: a check still running then does
/// not lead to a write, so the old config's output can never land after the new one's.
pub async fn apply(
    t: &TemplateConfig,
    bytes: &[u8],
    env: &BTreeMap<String, String>,
    replaced: Option<&CancellationToken>,
) -> Result<Applied, ApplyError> {
    let dest = files::real_destination(&t.destination);
    let write_err = |source| ApplyError::Write {
        dest: t.destination.clone(),
        source,
    };
    let (previous, old_file) = match files::open_current(&dest).map_err(write_err)? {
        Some((bytes, file)) => (Some(bytes), Some(file)),
        None => (None, None),
    };
    if previous.as_deref() == Some(bytes) && perms_ok(t, &dest) {
        return Ok(Applied::Unchanged);
    }
    let in_place = t.write == WriteMode::InPlace;
    let checked_on_temp = t.check.is_some() && t.check_mode == CheckMode::Temp;
    // In-place writes exist for files that cannot be renamed over (bind mounts), often in a
    // directory rewire may not write (a read-only root): a temp file only for a check, and
    // in the system's temp directory when the destination's refuses it.
    let staged = if !in_place {
        Some(files::stage(&dest, bytes, t.perms).map_err(write_err)?)
    } else if checked_on_temp {
        Some(
            files::stage(&dest, bytes, t.perms)
                .or_else(|e| {
                    let name = dest.file_name().unwrap_or(dest.as_os_str());
                    files::stage(&std::env::temp_dir().join(name), bytes, t.perms).map_err(|_| e)
                })
                .map_err(write_err)?,
        )
    } else {
        None
    };
    match (t.check_mode, &t.check) {
        (CheckMode::Temp, Some(check)) => {
            let temp = staged.as_ref().expect("staged for the check").path();
            run_check(check, temp, &t.destination, env).await?;
            if replaced.is_some_and(CancellationToken::is_cancelled) {
                // Dropping `staged` removes the temp file; what is in place stays.
                return Ok(Applied::Abandoned);
            }
        }
        (CheckMode::Swap, Some(check)) => {
            // The check needs the file in place (a fragment checked as part of the real
            // config): swap, check, and put the old file back if it fails.
            commit(t, staged, bytes, &dest).map_err(write_err)?;
            if let Err(e) = run_check(check, &dest, &t.destination, env).await {
                if let Err(re) = restore(t, previous.as_deref()) {
                    warn!(template = %t.name, error = %re, "cannot restore the previous file after a failed check");
                }
                return Err(e);
            }
            backup(t, previous.as_deref());
            return Ok(Applied::Written { previous });
        }
        (_, None) => {}
    }
    commit(t, staged, bytes, &dest).map_err(write_err)?;
    close_later(old_file);
    backup(t, previous.as_deref());
    Ok(Applied::Written { previous })
}

/// Closes the replaced file on a blocking thread: the last close frees its inode, which is
/// work nobody needs to wait for (see [`files::open_current`]). Deliberately detached: a close
/// cannot fail in a way anyone could act on, and the runtime's shutdown waits for the blocking
/// pool anyway.
fn close_later(file: Option<std::fs::File>) {
    if let Some(f) = file {
        tokio::task::spawn_blocking(move || drop(f));
    }
}

/// An existing file whose mode differs from `perms` is rewritten even with equal bytes.
fn perms_ok(t: &TemplateConfig, dest: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match t.perms {
        None => true,
        Some(p) => std::fs::metadata(dest).is_ok_and(|m| m.permissions().mode() & 0o7777 == p),
    }
}

fn commit(
    t: &TemplateConfig,
    staged: Option<files::Staged>,
    bytes: &[u8],
    dest: &std::path::Path,
) -> std::io::Result<()> {
    match t.write {
        WriteMode::Atomic => staged.expect("an atomic write is staged").commit(),
        WriteMode::InPlace => {
            drop(staged);
            files::write_in_place(dest, bytes, t.perms)
        }
    }
}

fn backup(t: &TemplateConfig, previous: Option<&[u8]>) {
    if !t.backup {
        return;
    }
    if let Some(old) = previous
        && let Err(e) = files::write_atomic(&backup_path(t), old, t.perms)
    {
        warn!(template = %t.name, error = %e, "cannot write the backup file");
    }
}

fn backup_path(t: &TemplateConfig) -> PathBuf {
    let mut name = t.destination.as_os_str().to_os_string();
    name.push(".bak");
    PathBuf::from(name)
}

/// Removes the temp files an earlier rewire left beside the templates' destinations (killed
/// during a write or a check); files a running rewire holds are left alone (see
/// [`files::remove_leftovers`]). Called at start by `rewire run` and `rewire render`.
pub fn remove_leftovers(templates: &[TemplateConfig]) {
    for t in templates {
        let mut places = vec![t.destination.clone()];
        if t.backup {
            places.push(backup_path(t));
        }
        for place in places {
            match files::remove_leftovers(&place) {
                Ok(removed) => {
                    for file in removed {
                        info!(template = %t.name, file = %file.display(), "removed a temp file an earlier run left behind");
                    }
                }
                Err(e) => {
                    warn!(template = %t.name, dest = %place.display(), error = %e, "cannot look for leftover temp files");
                }
            }
        }
    }
}

async fn run_check(
    check: &CommandSpec,
    file: &std::path::Path,
    dest: &std::path::Path,
    env: &BTreeMap<String, String>,
) -> Result<(), ApplyError> {
    let spec = CommandSpec {
        program: check.program.with_file(file),
        timeout: check.timeout,
    };
    // Named as configured ("{file}", not the temp path), so the error reads the same each time.
    let outcome = command::run(&spec, env, None)
        .await
        .map_err(|e| command::SpawnError {
            program: check.program.to_string(),
            source: e.source,
        })?;
    if outcome.success() {
        return Ok(());
    }
    Err(ApplyError::Rejected {
        program: check.program.name(),
        dest: dest.to_path_buf(),
        how: outcome.describe(check.timeout),
        output: outcome.output,
    })
}

/// Puts the previous content back (atomically), or removes a file that did not exist before.
pub fn restore(t: &TemplateConfig, previous: Option<&[u8]>) -> std::io::Result<()> {
    match previous {
        Some(old) => match t.write {
            WriteMode::Atomic => files::write_atomic(&t.destination, old, t.perms),
            WriteMode::InPlace => files::write_in_place(&t.destination, old, t.perms),
        },
        None => match std::fs::remove_file(files::real_destination(&t.destination)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Done,
    /// The program to signal is not running (no pidfile, an empty one, a pid that is gone, or
    /// main not started yet). It reads the new file when it starts: nothing to reload, nothing
    /// to roll back. This is the normal state in preStart and while the program restarts.
    NotRunning(String),
}

/// Runs a reload: a command, a signal to a pidfile's process or to the supervised main, or
/// HAProxy's master CLI.
pub async fn reload(
    r: &Reload,
    main_pid: Option<Pid>,
    env: &BTreeMap<String, String>,
) -> Result<Reloaded, ReloadError> {
    match r {
        Reload::HaproxyMaster { socket } => match haproxy::master::reload(socket).await {
            Ok(haproxy::master::Reloaded::Done { .. }) => Ok(Reloaded::Done),
            Ok(haproxy::master::Reloaded::NotRunning(why)) => Ok(Reloaded::NotRunning(why)),
            Err(source) => Err(ReloadError::HaproxyMaster {
                socket: socket.clone(),
                source,
            }),
        },
        Reload::Command(spec) => {
            let outcome: Outcome = command::run(spec, env, None).await?;
            if outcome.success() {
                if !outcome.output.is_empty() {
                    info!(command = %spec.program.name(), output = %outcome.output, "reload output");
                }
                Ok(Reloaded::Done)
            } else {
                Err(ReloadError::Failed {
                    program: spec.program.name(),
                    how: outcome.describe(spec.timeout),
                    output: outcome.output,
                })
            }
        }
        Reload::Signal {
            signal,
            target,
            confirm,
        } => {
            let (pid, what) = match target {
                SignalTarget::Pidfile(path) => match read_pidfile(path)? {
                    Some(pid) => (pid, format!("the process in {}", path.display())),
                    None => {
                        return Ok(Reloaded::NotRunning(format!(
                            "{} is missing or empty",
                            path.display()
                        )));
                    }
                },
                // Main not started yet (it waits for its templates) or gone.
                SignalTarget::Main => match main_pid {
                    None => {
                        return Ok(Reloaded::NotRunning(
                            "the main process has not started".to_string(),
                        ));
                    }
                    Some(pid) => (pid, "the main process".to_string()),
                },
            };
            let before = if *confirm {
                crate::procfs::children(pid.as_raw())
            } else {
                Vec::new()
            };
            match kill(pid, *signal) {
                Ok(()) if *confirm => confirm_new_child(pid, &before, *signal, what).await,
                Ok(()) => Ok(Reloaded::Done),
                Err(nix::errno::Errno::ESRCH) => {
                    Ok(Reloaded::NotRunning(format!("{what} (pid {pid}) is gone")))
                }
                Err(e) => Err(ReloadError::Signal {
                    what,
                    detail: format!("kill({pid}, {signal}): {e}"),
                }),
            }
        }
    }
}

/// How long a `confirm = "new_child"` reload waits for the new child.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// After the signal: waits for `pid` to have a child not in `before` (nginx's new workers).
/// None by [`CONFIRM_TIMEOUT`] is a failed reload: the program kept its previous config, so
/// the previous files go back and the reload is tried again, as for a failed command.
async fn confirm_new_child(
    pid: Pid,
    before: &[i32],
    signal: nix::sys::signal::Signal,
    what: String,
) -> Result<Reloaded, ReloadError> {
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    loop {
        if crate::procfs::children(pid.as_raw())
            .iter()
            .any(|c| !before.contains(c))
        {
            return Ok(Reloaded::Done);
        }
        if kill(pid, None) == Err(nix::errno::Errno::ESRCH) {
            return Ok(Reloaded::NotRunning(format!("{what} (pid {pid}) is gone")));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ReloadError::NoNewChild {
                what,
                pid: pid.as_raw(),
                signal,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The pid in a pidfile; None when the file is missing or empty (the program is not running,
/// or is starting: `nginx -t` and a starting nginx leave it empty for a moment).
fn read_pidfile(path: &std::path::Path) -> Result<Option<Pid>, ReloadError> {
    let err = |detail: String| ReloadError::Signal {
        what: format!("the process in {}", path.display()),
        detail,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot read the pidfile: {e}"))),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let pid: i32 = text.trim().parse().map_err(|_| {
        err(format!(
            "the pidfile holds {:?}, not a process id",
            text.trim()
        ))
    })?;
    if pid <= 1 {
        return Err(err(format!("refusing to signal pid {pid}")));
    }
    Ok(Some(Pid::from_raw(pid)))
}
