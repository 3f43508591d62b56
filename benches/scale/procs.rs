//! The processes a scale run starts, and the guarantee that none outlives it.
//!
//! Every `rewire run` is spawned in its own process group, with `PR_SET_PDEATHSIG(SIGKILL)` so
//! a bench killed outright takes its direct children along. rewire starts its main (nginx,
//! HAProxy, a backend server) in yet another process group, so killing a rewire's group is not
//! enough: [`Procs::kill_tree`] walks `/proc` for every descendant and kills their process
//! groups too. [`Procs`] does that for everything it started when dropped, so a panic, an early
//! return or the end of a run all leave nothing behind; the bench calls
//! [`kill_all_descendants`] when it is interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

/// Processes started by one run, killed (with their trees) on drop.
#[derive(Default)]
pub struct Procs {
    children: Mutex<BTreeMap<u32, Tracked>>,
}

struct Tracked {
    name: String,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Procs {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`, in a new process
    /// group. Spawn from a thread that lives as long as the run: the parent-death signal fires
    /// when the spawning thread exits.
    pub fn spawn(&self, name: &str, mut cmd: Command, log: &Path) -> io::Result<u32> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl, sigemptyset and pthread_sigmask are async-signal-safe and touch only
        // the child's own stack.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The bench blocks INT/TERM/HUP in its own threads (a thread takes them):
                // the child must get them, or rewire never sees its SIGTERM.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        self.lock().insert(
            pid,
            Tracked {
                name: name.to_string(),
                child,
                exited: None,
            },
        );
        Ok(pid)
    }

    /// Sends `signal` to one process (not its group).
    pub fn signal(&self, pid: u32, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The exit status of a process this run started, once it has exited (reaps it).
    pub fn exited(&self, pid: u32) -> Option<ExitStatus> {
        let mut children = self.lock();
        let t = children.get_mut(&pid)?;
        if t.exited.is_none() {
            t.exited = t.child.try_wait().ok().flatten();
        }
        t.exited
    }

    /// SIGKILLs `pid`, every descendant and every process group among them (rewire's main runs
    /// in a group of its own), then reaps `pid` when this run started it.
    pub fn kill_tree(&self, pid: u32) {
        sigkill_tree(pid);
        let mut children = self.lock();
        if let Some(t) = children.get_mut(&pid)
            && t.exited.is_none()
        {
            t.exited = t.child.wait().ok();
        }
    }

    /// Kills every process this run started, with their trees.
    pub fn kill_all(&self) {
        let pids: Vec<u32> = self.lock().keys().copied().collect();
        for pid in pids {
            self.kill_tree(pid);
        }
    }

    /// Names of started processes that exited on their own, with their status (for error
    /// reports).
    pub fn exits(&self) -> Vec<(String, ExitStatus)> {
        let pids: Vec<u32> = self.lock().keys().copied().collect();
        pids.into_iter()
            .filter_map(|p| {
                let status = self.exited(p)?;
                Some((self.lock().get(&p)?.name.clone(), status))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Tracked>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// SIGKILLs every process this one started, with their trees (for an interrupted run, where no
/// [`Procs`] gets dropped).
pub fn kill_all_descendants() {
    sigkill_tree(std::process::id());
}

/// SIGKILLs the descendants of `root` and their process groups, and `root` itself unless it is
/// this process.
fn sigkill_tree(root: u32) {
    let me = std::process::id();
    let own_group = process_group(me).unwrap_or(0);
    for _ in 0..2 {
        // Twice: a process forked while the first pass was killing is caught by the second.
        let tree: Vec<u32> = descendants(root).into_iter().filter(|&p| p != me).collect();
        let groups: BTreeSet<u32> = tree
            .iter()
            .filter_map(|&p| process_group(p))
            .filter(|&g| g != own_group && g > 1)
            .collect();
        for g in groups {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(-(g as libc::pid_t), libc::SIGKILL) };
        }
        for p in tree {
            // SAFETY: as above.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// `pid` and all its descendants, from the parent links in `/proc/*/stat`.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(pp) = stat_field(p, 1) {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

fn process_group(pid: u32) -> Option<u32> {
    stat_field(pid, 2)
}

/// Field `n` after the command name in `/proc/PID/stat` (0 = state, 1 = ppid, 2 = pgrp).
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n)?.parse().ok()
}
