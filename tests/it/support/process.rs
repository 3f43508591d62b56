//! Daemon processes: spawned with output to a log file, in their own process group, with
//! `PR_SET_PDEATHSIG(SIGKILL)` (from a long-lived spawner thread, since the signal fires when the
//! spawning *thread* exits), killed by process group on drop.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub const SIGHUP: i32 = Signal::SIGHUP as i32;
pub const SIGKILL: i32 = Signal::SIGKILL as i32;
pub const SIGUSR1: i32 = Signal::SIGUSR1 as i32;
pub const SIGUSR2: i32 = Signal::SIGUSR2 as i32;
pub const SIGTERM: i32 = Signal::SIGTERM as i32;

/// Sends `sig` to `pid` (a negative pid signals the process group `-pid`; signal 0 only
/// checks that the process exists).
pub fn signal(pid: i32, sig: i32) -> io::Result<()> {
    let sig = match sig {
        0 => None,
        n => Some(Signal::try_from(n)?),
    };
    Ok(nix::sys::signal::kill(Pid::from_raw(pid), sig)?)
}

/// True when the process exists (signal 0 succeeds; zombies count as existing).
pub fn pid_alive(pid: u32) -> bool {
    signal(pid as i32, 0).is_ok()
}

/// True when the process exists and is not a zombie (a zombie still answers signal 0).
pub fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != "Z")
}

/// The state ("R", "S", "Z", ...) and parent pid of `pid`, from /proc/PID/stat.
fn stat(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces/parens, so split after the last ')'
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.to_string();
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from a process-lifetime thread so that `PR_SET_PDEATHSIG` only fires when the
/// whole test process dies, and in a new process group (so workers can be killed with it).
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("support-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the support spawner thread");
        tx
    });
    let parent = Pid::from_raw(std::process::id() as i32);
    cmd.process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid) and does not
    // allocate (an errno is all an error carries).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                // The test process died before exec: nothing would kill this child.
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// Runs a short command to completion; returns (success, stdout+stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => {
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), s)
        }
        Err(e) => (false, format!("could not run {cmd:?}: {e}")),
    }
}

/// Last `n` lines of a (log) file, or a note that it could not be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// A spawned daemon whose stdout/stderr go (appended) to a log file. Killed with its whole
/// process group (SIGKILL) on drop.
pub struct Daemon {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    cmdline: String,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `cmd` (stdin null, stdout+stderr appended to `log`).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> io::Result<Daemon> {
        let file: File = OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let cmdline = format!("{cmd:?}");
        let child = spawn(cmd)?;
        Ok(Daemon {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log: log.to_path_buf(),
            cmdline,
            status: None,
        })
    }

    /// [`Daemon::spawn`], then waits until `ready()`. `Err(report)` when it cannot be spawned,
    /// exits first or is not ready within `timeout` (the daemon is killed then).
    pub fn start(
        name: &str,
        cmd: Command,
        log: &Path,
        timeout: Duration,
        ready: impl FnMut() -> bool,
    ) -> Result<Daemon, String> {
        let program = cmd.get_program().to_owned();
        let mut daemon = Daemon::spawn(name, cmd, log)
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        daemon.wait_ready(timeout, ready)?;
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Exit status if the process has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.status = child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Sends `sig` to the daemon's main process.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        signal(self.pid as i32, sig)
    }

    /// Sends `sig` to the daemon's whole process group.
    pub fn signal_group(&self, sig: i32) -> io::Result<()> {
        signal(-(self.pid as i32), sig)
    }

    /// SIGKILLs the whole process group and reaps the main process. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.signal_group(SIGKILL);
            let _ = child.kill();
            if let Ok(st) = child.wait() {
                self.status.get_or_insert(st);
            }
            // Group members (nginx/haproxy workers) may outlive the leader for a moment.
            let _ = self.signal_group(SIGKILL);
        }
    }

    /// Last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// A failure report: what happened, exit status, command line and the last 40 log lines.
    pub fn report(&mut self, what: &str) -> String {
        let status = match self.exited() {
            Some(st) => format!("exited: {st}"),
            None => "still running".to_string(),
        };
        format!(
            "{} (pid {}) {what}; {status}\ncommand: {}\n--- last 40 lines of {} ---\n{}\n--- end of log ---",
            self.name,
            self.pid,
            self.cmdline,
            self.log.display(),
            self.log_tail(40)
        )
    }

    /// Polls until `ready()` is true. `Err(report)` if the process exits first or `timeout` passes.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited().is_some() {
                return Err(self.report("exited before becoming ready"));
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.report(&format!("not ready within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temp dir for a harness (`rewire-test-<what>-<pid>-XXXX` under $TMPDIR).
pub fn temp_dir(what: &str) -> tempfile::TempDir {
    sweep_stale_once();
    tempfile::Builder::new()
        .prefix(&format!("rewire-test-{what}-{}-", std::process::id()))
        .tempdir()
        .expect("create a temp dir")
}

/// A directory under /dev/shm (falls back to $TMPDIR when /dev/shm is not writable), removed
/// on drop.
pub struct ShmDir(tempfile::TempDir);

impl ShmDir {
    pub fn new(what: &str) -> ShmDir {
        sweep_stale_once();
        let b = tempfile::Builder::new()
            .prefix(&format!("rewire-test-{what}-{}-", std::process::id()))
            .tempdir_in("/dev/shm");
        ShmDir(b.unwrap_or_else(|_| temp_dir(what)))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// Once per test process: cleans up after test processes that died without running their
/// destructors (Ctrl-C, SIGKILL). Their direct children died with them (PDEATHSIG), but nginx
/// workers survive their master and temp dirs stay. For every `rewire-test-*-<pid>-*` dir in
/// $TMPDIR and /dev/shm whose `<pid>` is gone: SIGKILL processes whose cwd is inside it (the
/// harnesses run daemons there), then remove it.
fn sweep_stale_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for base in [std::env::temp_dir(), PathBuf::from("/dev/shm")] {
            let Ok(rd) = std::fs::read_dir(&base) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("rewire-test-") else {
                    continue;
                };
                let mut parts = rest.rsplitn(3, '-');
                let (_rand, pid) = (
                    parts.next(),
                    parts.next().and_then(|p| p.parse::<u32>().ok()),
                );
                let Some(pid) = pid else { continue };
                if pid == std::process::id() || pid_alive(pid) {
                    continue;
                }
                let dir = e.path();
                kill_processes_in(&dir);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    });
}

/// SIGKILLs every process whose current directory is `dir` or below it.
fn kill_processes_in(dir: &Path) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            let _ = signal(pid, SIGKILL);
        }
    }
}

/// Live (non-zombie) PIDs whose parent is `pid` (from /proc/*/stat), sorted.
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if stat(child).is_some_and(|(state, ppid)| ppid == pid && state != "Z") {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}
