//! Running child commands: check, reload, health, on_change, hooks, tasks.
//!
//! Every command is an argv array unless the user wrote `shell = "..."`, runs in its own
//! process group with a timeout (on timeout the whole group is killed, so a `sh -c` wrapper
//! cannot leave its children behind), and has its output captured so that an `nginx -t`
//! failure reaches the log and the error in nginx's own words.
//!
//! Nothing about a command may hold rewire: a run that is dropped (the daemon stops, a SIGHUP
//! abandons a round) kills the command's whole process group; the output pipe is read
//! asynchronously and given up on 2 s after the command ended (children that keep it open are
//! killed with the group), so no thread ever blocks on it.
//!
//! Children die with rewire: every one is started from one spawner thread that lives as long as
//! the process, with `PR_SET_PDEATHSIG` (the kernel sends that signal when the thread that
//! forked the child exits, not the process: a child forked from a tokio worker or blocking
//! thread would be killed whenever that thread retired). Commands get SIGKILL, main gets its
//! `stop_signal` so it can take its own workers down. Grandchildren (what a `sh -c` started)
//! are not covered by this: as PID 1 or with `rewire run --subreaper` the reaper kills
//! whatever is left when rewire ends (see `proc::init`).

use std::collections::BTreeMap;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::config::{CommandSpec, Config, Program};

/// How much of a command's output is kept.
const OUTPUT_LIMIT: usize = 16 * 1024;

/// What became of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: RunStatus,
    /// stdout and stderr, interleaved as they arrived, trimmed to the last 16 KiB.
    pub output: String,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Exited(i32),
    Signalled(i32),
    TimedOut,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status == RunStatus::Exited(0)
    }

    /// A one-line description: "exited with 1", "killed by signal 9", "timed out after 30s".
    pub fn describe(&self, timeout: Duration) -> String {
        match self.status {
            RunStatus::Exited(c) => format!("exited with status {c}"),
            RunStatus::Signalled(s) => format!("was killed by signal {s}"),
            RunStatus::TimedOut => format!(
                "timed out after {} and was killed",
                humantime::format_duration(timeout)
            ),
        }
    }
}

/// A command could not be started at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program}: {source}")]
pub struct SpawnError {
    pub program: String,
    #[source]
    pub source: std::io::Error,
}

/// The environment every child process gets on top of rewire's own: `REWIRE_CONFIG` (so
/// `pre_start = ["rewire", "render"]` renders the daemon's config), `REWIRE_SOCKET` (so
/// `rewire status` and `rewire maintenance` in a child reach this daemon), `REWIRE_PID` and
/// `REWIRE_<SERVICE>_IP` for each `[[service]]` whose address resolves now.
pub fn child_env(config: &Config) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "REWIRE_CONFIG".to_string(),
        config.path.display().to_string(),
    );
    env.insert(
        "REWIRE_SOCKET".to_string(),
        config.control.socket.display().to_string(),
    );
    env.insert("REWIRE_PID".to_string(), std::process::id().to_string());
    env.extend(crate::host::address_env(&config.services));
    env
}

/// Builds a `tokio::process::Command` for a program, in its own process group.
pub fn build(program: &Program, env: &BTreeMap<String, String>) -> Command {
    let mut cmd = match program {
        Program::Argv(argv) => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        Program::Shell(script) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
    };
    cmd.envs(env);
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    cmd
}

/// A request to the spawner thread: the command, the runtime to register the child with, and
/// where to send it.
type SpawnRequest = (
    Command,
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<io::Result<Delivery>>,
);

/// A child on its way from the spawner thread to its caller. Dropped undelivered (the caller
/// stopped waiting: a round dropped at a stop signal, say), its process group is killed:
/// nobody else holds it, and only the child itself would die with rewire (its death signal),
/// not the `sleep` its `sh -c` started.
struct Delivery(Option<Child>);

impl Delivery {
    fn take(mut self) -> Child {
        self.0.take().expect("a child is delivered once")
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(id) = self.0.as_ref().and_then(Child::id) {
            let pid = Pid::from_raw(id as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
    }
}

/// The spawner thread's queue. Process-wide on purpose: `PR_SET_PDEATHSIG` is about the thread
/// that forks, so there must be one that lives as long as the process (see the module docs).
static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            for (mut cmd, runtime, reply) in rx {
                // The child is registered with the caller's runtime (its reaper, its pipes).
                let _entered = runtime.enter();
                let spawned =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()))
                        .unwrap_or_else(|_| Err(io::Error::other("spawning panicked")));
                // Our copies of the child's pipe ends close before anyone reads from them.
                drop(cmd);
                // Not received (the caller is gone): dropping it kills the child's group.
                let _ = reply.send(spawned.map(|c| Delivery(Some(c))));
            }
        })?;
    // Another caller may have won the race: its thread serves everyone, and ours ends when
    // `tx` is dropped here.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Starts `cmd` from the spawner thread, so that it gets `death_signal` when rewire dies (and
/// not when some worker thread retires). Must be called inside a tokio runtime.
pub async fn spawn(mut cmd: Command, death_signal: Signal) -> io::Result<Child> {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // async-signal-safe functions (prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(death_signal)?;
            if nix::unistd::getppid() != parent {
                // rewire died before the death signal was armed: nobody would stop this child.
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || io::Error::other("the spawner thread is gone");
    spawner()?
        .send((cmd, tokio::runtime::Handle::current(), reply))
        .map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?.map(Delivery::take)
}

/// Kills a command's process group when dropped, unless disarmed: a run that is abandoned (the
/// daemon stops, a round is dropped) takes its `sh -c` children with it.
struct GroupKill(Option<Pid>);

impl GroupKill {
    fn now(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.now();
    }
}

/// How long the output is read after the command ended (children may hold the pipe open).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(2);
/// After SIGKILL, how long to wait for the command to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Runs a command to completion (or timeout), feeding `stdin` if given.
pub async fn run(
    spec: &CommandSpec,
    env: &BTreeMap<String, String>,
    stdin: Option<&[u8]>,
) -> Result<Outcome, SpawnError> {
    let started = tokio::time::Instant::now();
    let spawn_error = |source| SpawnError {
        program: spec.program.to_string(),
        source,
    };
    let mut cmd = build(&spec.program, env);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    // One pipe for both streams keeps the order the program wrote them in.
    let (reader, writer) = std::io::pipe().map_err(spawn_error)?;
    let writer2 = writer.try_clone().map_err(spawn_error)?;
    let reader =
        tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()).map_err(spawn_error)?;
    cmd.stdout(writer);
    cmd.stderr(writer2);
    // `spawn` consumes the command, and with it our copies of the write end: EOF arrives when
    // the group exits.
    let mut child = spawn(cmd, Signal::SIGKILL).await.map_err(spawn_error)?;
    let mut group = GroupKill(child.id().map(|id| Pid::from_raw(id as i32)));

    // The input is written while the command runs, beside the wait rather than before it: a
    // command that reads nothing must not block the wait, and the write ends with the command.
    let pipe = child.stdin.take();
    let feed = async move {
        if let (Some(bytes), Some(mut pipe)) = (stdin, pipe) {
            let _ = pipe.write_all(bytes).await;
            let _ = pipe.shutdown().await;
            // `pipe` is dropped here: the command sees the end of its input.
        }
        std::future::pending::<()>().await
    };
    tokio::pin!(feed);

    let mut kept = Kept::default();
    let mut eof = false;
    let status = {
        let read = read_into(reader, &mut kept);
        tokio::pin!(read);
        let deadline = started + spec.timeout;
        let waited = loop {
            tokio::select! {
                () = &mut read, if !eof => eof = true,
                waited = child.wait() => break Some(waited),
                _ = tokio::time::sleep_until(deadline) => break None,
                () = &mut feed => unreachable!("feeding the input never ends by itself"),
            }
        };
        let status = match waited {
            Some(Ok(status)) => exit_status(status),
            Some(Err(e)) => return Err(spawn_error(e)),
            None => {
                group.now();
                let _ = tokio::time::timeout(KILL_WAIT, child.wait()).await;
                RunStatus::TimedOut
            }
        };
        // Children of the command that outlive it keep the pipe open: don't wait for them long.
        if !eof
            && tokio::time::timeout(OUTPUT_AFTER_EXIT, &mut read)
                .await
                .is_ok()
        {
            eof = true;
        }
        status
    };
    if eof && status != RunStatus::TimedOut {
        // Ended on its own and everything it started closed the output: leave the group be
        // (a program it started in the background is the user's business).
        group.disarm();
    } else {
        group.now();
        group.disarm();
        if !eof {
            kept.note(
                "(output cut: the command left children holding its output open; they were killed)",
            );
        }
    }
    Ok(Outcome {
        status,
        output: kept.text(),
        elapsed: started.elapsed(),
    })
}

/// The last [`OUTPUT_LIMIT`] bytes of a command's output.
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    dropped: bool,
    note: Option<&'static str>,
}

impl Kept {
    fn push(&mut self, buf: &[u8]) {
        self.bytes.extend_from_slice(buf);
        if self.bytes.len() > OUTPUT_LIMIT * 2 {
            let cut = self.bytes.len() - OUTPUT_LIMIT;
            self.bytes.drain(..cut);
            self.dropped = true;
        }
    }

    fn note(&mut self, note: &'static str) {
        self.note = Some(note);
    }

    fn text(mut self) -> String {
        if self.bytes.len() > OUTPUT_LIMIT {
            let cut = self.bytes.len() - OUTPUT_LIMIT;
            self.bytes.drain(..cut);
            self.dropped = true;
        }
        let mut text = String::from_utf8_lossy(&self.bytes).trim_end().to_string();
        if self.dropped {
            text = format!("(earlier output cut)\n{text}");
        }
        if let Some(note) = self.note {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(note);
        }
        text
    }
}

/// Reads the pipe to its end (or an error) into `kept`.
async fn read_into(mut reader: tokio::net::unix::pipe::Receiver, kept: &mut Kept) {
    // On the heap: an array here made every future that runs a command (a template group's
    // runner, a job, the registrar, the supervisor) 8 KB bigger, in the task and in the stack
    // frames that build and poll it.
    let mut buf = vec![0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => kept.push(&buf[..n]),
        }
    }
}

pub fn exit_status(status: ExitStatus) -> RunStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => RunStatus::Exited(c),
        (None, Some(s)) => RunStatus::Signalled(s),
        (None, None) => RunStatus::Exited(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            program: Program::Argv(argv.iter().map(|s| s.to_string()).collect()),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// A caller that stops waiting for its child (the future dropped once the spawner has
    /// started it) leaves nothing running: the `sleep` its shell started is killed with the
    /// group. It outlived rewire before (a check started just as a stop signal came).
    #[tokio::test(flavor = "current_thread")]
    async fn a_child_whose_caller_stopped_waiting_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleep.pid");
        let mut cmd = build(
            &Program::Argv(vec![
                "sh".into(),
                "-c".into(),
                format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
            ]),
            &BTreeMap::new(),
        );
        cmd.stdin(Stdio::null());
        let mut spawning = Box::pin(spawn(cmd, Signal::SIGKILL));
        // One poll sends the request; the future is never polled again.
        assert!(futures_util::poll!(&mut spawning).is_pending());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let sleep: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(spawning);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(sleep) {
            if std::time::Instant::now() > deadline {
                let _ = nix::sys::signal::kill(Pid::from_raw(sleep), Signal::SIGKILL);
                panic!("the sleep of an abandoned child is still running");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn captures_output_and_status() {
        let o = run(
            &spec(&["sh", "-c", "echo out; echo err >&2; exit 3"], 5000),
            &BTreeMap::new(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(o.status, RunStatus::Exited(3));
        assert_eq!(o.output, "out\nerr");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let o = run(&spec(&["sh", "-c", &script], 200), &BTreeMap::new(), None)
            .await
            .unwrap();
        assert_eq!(o.status, RunStatus::TimedOut);
        assert!(o.elapsed < Duration::from_secs(5));
        // The grandchild was in the same group and died with it: give it time to have
        // touched the file had it survived.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !marker.exists(),
            "a child of the timed-out command survived"
        );
    }

    /// True once `pid` is gone (or a zombie nobody reaped yet).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    async fn wait_gone(pid: i32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gone(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {pid} is still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_run_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let s = spec(&["sh", "-c", &script], 60_000);
        let env = BTreeMap::new();
        let abandoned = tokio::time::timeout(Duration::from_millis(500), run(&s, &env, None)).await;
        assert!(abandoned.is_err(), "the run ended by itself");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn children_holding_the_output_open_are_killed_and_do_not_hold_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 300 & echo $! > {}; echo done", pidfile.display());
        let o = run(
            &spec(&["sh", "-c", &script], 60_000),
            &BTreeMap::new(),
            None,
        )
        .await
        .unwrap();
        assert!(o.success());
        assert!(o.elapsed < Duration::from_secs(5), "{:?}", o.elapsed);
        assert!(o.output.starts_with("done\n(output cut"), "{}", o.output);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_gone(pid).await;
    }

    #[tokio::test]
    async fn stdin_and_env_reach_the_command() {
        let mut env = BTreeMap::new();
        env.insert("REWIRE_TEST".to_string(), "yes".to_string());
        let o = run(
            &spec(&["sh", "-c", "cat; echo $REWIRE_TEST"], 5000),
            &env,
            Some(b"hello\n"),
        )
        .await
        .unwrap();
        assert!(o.success());
        assert_eq!(o.output, "hello\nyes");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let e = run(&spec(&["/nonexistent/prog"], 1000), &BTreeMap::new(), None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/prog"));
    }
}
