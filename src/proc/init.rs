//! PID 1 duties: reap every orphan, pass signals on. Settled before the async runtime exists.
//!
//! In a container rewire is often PID 1: orphans (a daemon's double-forked helper, a health
//! check's grandchild) are re-parented to it and stay zombies until it waits for them. But a
//! `waitpid(-1)` inside the tokio process would steal the exit statuses of tokio's own children
//! (main, hooks, checks), which tokio collects by pid. So, as ContainerPilot and tini do, rewire
//! forks first, while the process still has one thread:
//!
//! - the **parent** stays PID 1 (or the child subreaper, with `run --subreaper`). It blocks
//!   every catchable signal and takes them one at a time with `sigwait`: SIGCHLD means "reap
//!   everything that exited" (`waitpid(-1, WNOHANG)` until nothing is left); any other signal
//!   is forwarded to the worker. When the worker exits, the parent exits with its status
//!   (128+N if signal N killed it). It runs no other code: no runtime, no logging.
//!   Before it exits it kills whatever is left under it (orphans re-parented to it: a check's
//!   `sleep` whose `sh` died with rewire, the workers of a main that was SIGKILLed), so nothing
//!   rewire started outlives it. As PID 1 the kernel would do that anyway when it exits; as a
//!   subreaper (`run --subreaper`) only this makes it so.
//! - the **child** (the worker) restores the signal mask and becomes the real rewire. It dies
//!   with SIGTERM if the parent is killed, so it stops gracefully rather than run unsupervised.
//!   It leads a process group of its own: a signal to the reaper's group (Ctrl-C in a
//!   terminal, `kill -INT -PGID`) reached it twice, directly and forwarded, and the second
//!   copy counted as a second stop signal (main SIGKILLed, pre_stop and post_stop skipped).
//!
//! Signals forwarded: everything catchable except SIGCHLD and the ones a fault raises (SIGSEGV,
//! SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS, SIGABRT): TERM, INT, HUP, QUIT, USR1, USR2, WINCH,
//! ALRM, PIPE, CONT, TSTP, TTIN, TTOU, URG, XCPU, XFSZ, VTALRM, PROF, IO, PWR, STKFLT. The worker
//! decides what they mean (stop, reload, forward to main, or nothing).

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

/// Which side of the fork this process is on.
pub enum Fork {
    /// The reaper; holds the worker's pid.
    Parent(Pid),
    /// The worker: go on and be rewire.
    Child,
}

/// Whether rewire must fork a reaper: it is PID 1, or `--subreaper` was asked for.
pub fn needed(subreaper: bool) -> bool {
    subreaper || getpid().as_raw() == 1
}

/// Signals that must stay deliverable the ordinary way (a fault kills the faulting process).
const NOT_FORWARDED: &[Signal] = &[
    Signal::SIGCHLD,
    Signal::SIGKILL,
    Signal::SIGSTOP,
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGTRAP,
    Signal::SIGSYS,
    Signal::SIGABRT,
];

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in Signal::iterator() {
        if !NOT_FORWARDED.contains(&s) {
            set.add(s);
        }
    }
    set
}

/// The signals the parent waits for: the forwarded ones, SIGCHLD, and the real-time ones,
/// which it swallows (rewire uses none, and a reaper that is not PID 1 would die of one).
fn waited() -> SigSet {
    let mut set = forwarded();
    set.add(Signal::SIGCHLD);
    let mut raw = *set.as_ref();
    for n in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: adds a valid signal number to an initialized set.
        unsafe { libc::sigaddset(&mut raw, n) };
    }
    // SAFETY: `raw` was made from a valid SigSet by sigaddset only.
    unsafe { SigSet::from_sigset_t_unchecked(raw) }
}

/// `sigwait` on `set`, by number (nix's own wait cannot return a real-time signal).
fn wait_number(set: &SigSet) -> Option<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: sigwait reads the set and writes one int.
    let r = unsafe { libc::sigwait(set.as_ref(), &mut n) };
    (r == 0).then_some(n)
}

/// Becomes a child subreaper when asked (PID 1 already is one), then forks the worker.
///
/// Must be called while the process has a single thread: before the tokio runtime, before
/// logging or anything else that may start threads.
pub fn fork_worker(subreaper: bool) -> std::io::Result<Fork> {
    if subreaper && getpid().as_raw() != 1 {
        nix::sys::prctl::set_child_subreaper(true)?;
    }
    // Block the signals before forking: one arriving between the fork and the parent's first
    // sigwait stays pending instead of killing the parent (or being lost, as PID 1).
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited()), Some(&mut old))?;
    let parent = getpid();
    // SAFETY: the process is single-threaded here (the caller's contract: no runtime, no
    // logging threads yet), so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(e.into())
        }
        Ok(ForkResult::Parent { child }) => Ok(Fork::Parent(child)),
        Ok(ForkResult::Child) => {
            // Out of the reaper's process group before any signal can reach us (they are
            // still blocked): group signals now come only through the reaper, once.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
            // If the reaper dies (it can be SIGKILLed when it is not PID 1), stop gracefully.
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            if getppid() != parent {
                // The parent died before pdeathsig was armed.
                let _ = kill(getpid(), Signal::SIGTERM);
            }
            Ok(Fork::Child)
        }
    }
}

/// The parent's whole life: reap, forward, and return the worker's status (the caller exits
/// with it).
pub fn reap_and_forward(worker: Pid) -> u8 {
    let set = waited();
    loop {
        // A real-time signal is swallowed (see `waited`).
        let Some(Ok(sig)) = wait_number(&set).map(Signal::try_from) else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            // The worker may just have exited; ESRCH then, and SIGCHLD comes next.
            let _ = kill(worker, sig);
            continue;
        }
        if let Some(code) = reap_all(worker) {
            kill_orphans();
            return code;
        }
    }
}

/// How long the reaper keeps killing and reaping what is left after the worker exited.
const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Kills (SIGKILL) and reaps every process left under the reaper once the worker is gone.
/// Repeats, since a killed process's own children are re-parented here in turn.
fn kill_orphans() {
    let me = getpid();
    let deadline = std::time::Instant::now() + ORPHAN_GRACE;
    loop {
        let left = children_of(me);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return;
        }
        for pid in left {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

/// The processes whose parent is `parent` (zombies excluded: they are reaped).
fn children_of(parent: Pid) -> Vec<Pid> {
    crate::procfs::children(parent.as_raw())
        .into_iter()
        .map(Pid::from_raw)
        .collect()
}

/// Waits for every child that has exited. Returns the worker's exit status if it was one.
fn reap_all(worker: Pid) -> Option<u8> {
    let mut worker_status = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return worker_status,
            Ok(WaitStatus::Exited(pid, code)) if pid == worker => {
                worker_status = Some((code & 0xff) as u8);
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == worker => {
                worker_status = Some(128u8.saturating_add(sig as i32 as u8));
            }
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(_) => return worker_status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_signals_cover_the_stop_and_reload_ones_but_not_faults() {
        let f = forwarded();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGQUIT,
            Signal::SIGWINCH,
        ] {
            assert!(f.contains(s), "{s} not forwarded");
        }
        for s in [Signal::SIGCHLD, Signal::SIGSEGV, Signal::SIGKILL] {
            assert!(!f.contains(s), "{s} forwarded");
        }
    }
}
