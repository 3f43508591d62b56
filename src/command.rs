//! Running child commands: check, reload, health, on_change, hooks, tasks.
//!
//! Every command is an argv array unless the user wrote `shell = "..."`, runs in its own
//! process group with a timeout (on timeout the whole group is killed, so a `sh -c` wrapper
//! cannot leave its children behind), and has its output captured so that an `nginx -t`
//! failure reaches the log and the error in nginx's own words.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

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

/// Runs a command to completion (or timeout), feeding `stdin` if given.
pub async fn run(
    spec: &CommandSpec,
    env: &BTreeMap<String, String>,
    stdin: Option<&[u8]>,
) -> Result<Outcome, SpawnError> {
    let started = tokio::time::Instant::now();
    let mut cmd = build(&spec.program, env);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    // One pipe for both streams keeps the order the program wrote them in.
    let (reader, writer) = std::io::pipe().map_err(|e| SpawnError {
        program: spec.program.to_string(),
        source: e,
    })?;
    let writer2 = writer.try_clone().map_err(|e| SpawnError {
        program: spec.program.to_string(),
        source: e,
    })?;
    cmd.stdout(writer);
    cmd.stderr(writer2);
    let mut child = cmd.spawn().map_err(|e| SpawnError {
        program: spec.program.to_string(),
        source: e,
    })?;
    // Drop our copies of the write end (held by `cmd`) so EOF arrives when the group exits.
    drop(cmd);
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));

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

    // Blocking reads of the pipe, on the blocking pool. Awaited below for at most 2 s; after
    // that the read is deliberately left to finish on its own (children of the command still
    // hold the pipe open; they are killed, and the read ends when the pipe closes).
    let read_output = tokio::task::spawn_blocking(move || read_limited(reader));

    let waited = tokio::select! {
        waited = tokio::time::timeout(spec.timeout, child.wait()) => waited,
        () = feed => unreachable!("feeding the input never ends by itself"),
    };
    let status = match waited {
        Ok(Ok(status)) => exit_status(status),
        Ok(Err(e)) => {
            return Err(SpawnError {
                program: spec.program.to_string(),
                source: e,
            });
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = child.wait().await;
            RunStatus::TimedOut
        }
    };
    // Children of the command that outlive it keep the pipe open: don't wait for them long.
    let output = match tokio::time::timeout(Duration::from_secs(2), read_output).await {
        Ok(Ok(s)) => s,
        _ => {
            if let Some(pgid) = pgid {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            String::from(
                "(output not collected: the command left children holding its output open)",
            )
        }
    };
    Ok(Outcome {
        status,
        output,
        elapsed: started.elapsed(),
    })
}

fn read_limited(mut reader: std::io::PipeReader) -> String {
    use std::io::Read;
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut dropped = false;
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > OUTPUT_LIMIT * 2 {
                    let cut = kept.len() - OUTPUT_LIMIT;
                    kept.drain(..cut);
                    dropped = true;
                }
            }
        }
    }
    if kept.len() > OUTPUT_LIMIT {
        let cut = kept.len() - OUTPUT_LIMIT;
        kept.drain(..cut);
        dropped = true;
    }
    let text = String::from_utf8_lossy(&kept).trim_end().to_string();
    if dropped {
        format!("(earlier output cut)\n{text}")
    } else {
        text
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
