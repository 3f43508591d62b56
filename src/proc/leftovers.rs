//! What a run leaves in its process group.
//!
//! Main and every job lead their own process group, so what they start (a shell wrapper's
//! children, workers, a daemon that forked away) stays in it. Nothing announces that the
//! group emptied (its members are not rewire's children, once their parent is gone), so the
//! stop polls it. Without this, such processes would outlive rewire, reparented to init.
//!
//! A run that ended on its own, with no restart after it, may have left something on purpose
//! (a command that daemonizes): that keeps running while rewire does, and goes at the job's
//! turn in the stop sequence. Until then its group id could be reused once the group empties,
//! so the group is [`Left::snapshot`]ted when the run ends and signalled at the stop only
//! while one of the processes seen then is still in it.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the stop looks whether a process group has emptied.
const POLL: Duration = Duration::from_millis(50);

/// After main (or a job: `what`) exited: what it left in its process group gets `signal`,
/// and SIGKILL at `deadline` (at once when `hurry` is cancelled).
pub(super) async fn stop(
    pgid: Pid,
    signal: Signal,
    what: &str,
    hurry: &CancellationToken,
    deadline: tokio::time::Instant,
) {
    let empty = || killpg(pgid, None).is_err();
    if empty() {
        return;
    }
    info!(pgid = pgid.as_raw(), %signal, "{what} exited; stopping what it left in its process group");
    let _ = killpg(pgid, signal);
    while !empty() {
        if hurry.is_cancelled() || tokio::time::Instant::now() >= deadline {
            warn!(
                pgid = pgid.as_raw(),
                "{what}'s process group did not empty in time; killing it"
            );
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = hurry.cancelled() => {}
        }
    }
}

/// [`stop`] for the group of the last run started as `last_pid` (0: none yet), with
/// `stop_timeout` from now: right after a run that ended on its own, before a restart.
pub(super) async fn stop_last_run(
    last_pid: &AtomicI32,
    signal: Signal,
    what: &str,
    cut: &CancellationToken,
    stop_timeout: Duration,
) {
    let pgid = last_pid.load(Ordering::Acquire);
    if pgid > 0 {
        let deadline = tokio::time::Instant::now() + stop_timeout;
        stop(Pid::from_raw(pgid), signal, what, cut, deadline).await;
    }
}

/// A process group a finished run left processes in, as it was when the run ended.
#[derive(Debug)]
pub(super) struct Left {
    pub pgid: Pid,
    /// The latest start time (clock ticks after boot) of the members seen then.
    newest: u64,
}

impl Left {
    /// The group `pgid` if it still has members (zombies aside), with their pids.
    pub fn snapshot(pgid: Pid) -> Option<(Left, Vec<i32>)> {
        let members = members(pgid);
        let newest = members.iter().map(|&(_, start)| start).max()?;
        let pids = members.into_iter().map(|(pid, _)| pid).collect();
        Some((Left { pgid, newest }, pids))
    }

    /// Whether the group still holds a process seen at the snapshot, or started before it: a
    /// group that emptied and whose id was reused for another group holds only newer ones.
    pub fn still_there(&self) -> bool {
        members(self.pgid)
            .iter()
            .any(|&(_, start)| start <= self.newest)
    }
}

/// The live members of process group `pgid`: (pid, start time in clock ticks).
fn members(pgid: Pid) -> Vec<(i32, u64)> {
    crate::procfs::all()
        .filter(|s| s.live() && s.pgrp == pgid.as_raw())
        .map(|s| (s.pid, s.start))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_seen_while_a_member_lives_and_not_after() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pid::from_raw(child.id() as i32);
        let (left, pids) = Left::snapshot(pgid).expect("the group has its leader");
        assert_eq!(pids, vec![pgid.as_raw()]);
        assert!(left.still_there());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!left.still_there());
        assert!(Left::snapshot(pgid).is_none());
    }

    #[test]
    fn a_group_holding_only_newer_processes_is_not_the_one_seen() {
        let left = Left {
            pgid: nix::unistd::getpgrp(),
            newest: 0,
        };
        // This process started after boot (tick 0): a group whose members are all newer
        // than the snapshot is another one.
        assert!(!left.still_there());
    }
}
