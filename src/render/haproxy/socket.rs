//! HAProxy's CLI over a unix socket: the Runtime API (an admin-level `stats socket`) and the
//! master CLI (`-S`) speak it alike.
//!
//! One connection per command, as `socat` does it: HAProxy answers and closes, so the answer
//! is everything read until EOF. A command is one line and never holds `;` (which separates
//! commands on the CLI): what reaches this module from a config passed
//! [`plan`](super::plan)'s checks, and the check is repeated here so no caller can send two
//! commands by accident. Every call has a deadline: a wedged HAProxy cannot stall a runner.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::plan::Target;
use super::state::{self, AnswerError, Info, Observed};

/// How long one command may take, connection to last byte.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot connect to HAProxy's socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("HAProxy's socket {} did not answer `{command}` within {}", path.display(), humantime::format_duration(COMMAND_TIMEOUT))]
    Timeout { path: PathBuf, command: String },
    #[error("HAProxy's socket {}: `{command}`: {source}", path.display())]
    Io {
        path: PathBuf,
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("HAProxy refused `{command}`: {}{}", answer.trim(), hint(answer))]
    Refused { command: String, answer: String },
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error("refusing to send {command:?}: a command is one line without `;`")]
    Unsafe { command: String },
}

impl CliError {
    /// Nobody listens: the file is missing, or HAProxy is between processes (a master
    /// re-executing itself refuses connections for a moment).
    /// Nobody accepts on the socket right now. A connection reset while connecting counts:
    /// HAProxy's master resets what waits in its backlog when it re-executes for a reload.
    pub fn not_listening(&self) -> bool {
        matches!(self, CliError::Connect { source, .. } if matches!(
            source.kind(),
            io::ErrorKind::NotFound
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
        ))
    }

    /// The socket file does not exist: HAProxy is not running (or runs without it).
    pub fn missing(&self) -> bool {
        matches!(self, CliError::Connect { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn hint(answer: &str) -> &'static str {
    if answer.contains("Permission denied") {
        " (the stats socket needs `level admin`)"
    } else {
        ""
    }
}

/// One of HAProxy's CLI sockets.
#[derive(Clone, Debug)]
pub struct Cli {
    path: PathBuf,
}

/// What `del server` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    /// Connections are still attached (requests in flight, pooled idle connections): try
    /// again later.
    Busy,
    /// HAProxy has no such server (any more).
    Gone,
}

impl Cli {
    pub fn new(path: &Path) -> Cli {
        Cli {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command and returns the whole answer.
    pub async fn ask(&self, command: &str) -> Result<String, CliError> {
        if command.contains(['\n', '\r', ';']) {
            return Err(CliError::Unsafe {
                command: command.to_string(),
            });
        }
        let io_err = |source| CliError::Io {
            path: self.path.clone(),
            command: command.to_string(),
            source,
        };
        let exchange = async {
            let mut s =
                UnixStream::connect(&self.path)
                    .await
                    .map_err(|source| CliError::Connect {
                        path: self.path.clone(),
                        source,
                    })?;
            s.write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io_err)?;
            // HAProxy answers once the client half-closes (the master CLI waits for it).
            s.shutdown().await.map_err(io_err)?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await.map_err(io_err)?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(CliError::Timeout {
                    path: self.path.clone(),
                    command: command.to_string(),
                })
            })
    }

    /// Sends a command whose success is an empty answer (`set server`, `enable health`).
    async fn quiet(&self, command: &str) -> Result<(), CliError> {
        let answer = self.ask(command).await?;
        if answer.trim().is_empty() {
            Ok(())
        } else {
            Err(CliError::Refused {
                command: command.to_string(),
                answer,
            })
        }
    }

    pub async fn info(&self) -> Result<Info, CliError> {
        Ok(state::parse_info(&self.ask("show info").await?))
    }

    /// Every backend and its servers.
    pub async fn observe(&self) -> Result<Observed, CliError> {
        let backends = state::parse_backends(&self.ask("show backend").await?);
        let servers = state::parse_servers_state(&self.ask("show servers state").await?)?;
        Ok(Observed { backends, servers })
    }

    /// `add server B/S ADDR:PORT OPTIONS...`: the server exists, in maintenance.
    pub async fn add_server(&self, backend: &str, t: &Target) -> Result<(), CliError> {
        let mut command = format!("add server {backend}/{} {}", t.name, t.addr);
        for o in &t.options {
            command.push(' ');
            command.push_str(o);
        }
        let answer = self.ask(&command).await?;
        if answer.trim_start().starts_with("New server registered") {
            Ok(())
        } else {
            Err(CliError::Refused { command, answer })
        }
    }

    pub async fn enable_health(&self, backend: &str, name: &str) -> Result<(), CliError> {
        self.quiet(&format!("enable health {backend}/{name}")).await
    }

    /// `set server B/S state ready|drain|maint`.
    pub async fn set_state(&self, backend: &str, name: &str, state: &str) -> Result<(), CliError> {
        self.quiet(&format!("set server {backend}/{name} state {state}"))
            .await
    }

    /// Marks the server's checks failed: up only after `rise` passing checks.
    pub async fn set_health_down(&self, backend: &str, name: &str) -> Result<(), CliError> {
        self.quiet(&format!("set server {backend}/{name} health down"))
            .await
    }

    pub async fn set_addr(
        &self,
        backend: &str,
        name: &str,
        addr: std::net::SocketAddr,
    ) -> Result<(), CliError> {
        let command = format!(
            "set server {backend}/{name} addr {} port {}",
            addr.ip(),
            addr.port()
        );
        let answer = self.ask(&command).await?;
        if answer.contains("changed from") || answer.contains("no need to change") {
            Ok(())
        } else {
            Err(CliError::Refused { command, answer })
        }
    }

    pub async fn set_weight(&self, backend: &str, name: &str, weight: u32) -> Result<(), CliError> {
        self.quiet(&format!("set server {backend}/{name} weight {weight}"))
            .await
    }

    /// `del server B/S` (the server must be in maintenance).
    pub async fn del_server(&self, backend: &str, name: &str) -> Result<Deleted, CliError> {
        let command = format!("del server {backend}/{name}");
        let answer = self.ask(&command).await?;
        let a = answer.trim();
        if a.starts_with("Server deleted") {
            Ok(Deleted::Done)
        } else if a.contains("still has connections attached") {
            Ok(Deleted::Busy)
        } else if a.starts_with("No such server") {
            Ok(Deleted::Gone)
        } else {
            Err(CliError::Refused { command, answer })
        }
    }
}
