//! The client's side of the control socket: `rewire status` and `rewire maintenance`.
//!
//! Both exit 1 when no daemon answers (a container health check reads that as "unhealthy"),
//! so they return an [`Outcome`] rather than failing.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::trust::{self, Untrusted};
use super::{Answer, IO_TIMEOUT, Request, text};
use crate::app::Outcome;
use crate::status::Report;

/// Why a client request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no rewire daemon answers on {socket}: {source}\n  hint: is `rewire run` running? Give its socket with --socket PATH \
         (or REWIRE_SOCKET), or its config with -c FILE ([control] socket); without either, rewire reads \
         ./rewire.toml (or REWIRE_CONFIG), and without one of those asks the default socket, the one above"
    )]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing the control socket: {0}")]
    Untrusted(#[from] Untrusted),
    #[error("the daemon on {socket} said: {message}")]
    Refused { socket: PathBuf, message: String },
    #[error("the daemon on {socket} answered without its status")]
    NoStatus { socket: PathBuf },
    #[error(
        "the daemon on {socket} runs {running}, not {expected}: give each daemon its own [control] socket, \
         or pass --socket to talk to this one anyway"
    )]
    OtherConfig {
        socket: PathBuf,
        running: String,
        expected: PathBuf,
    },
}

/// Sends one request and returns the answer (its `ok` already checked). The socket, its
/// directory and the process answering must belong to root or to this user ([`trust`]).
pub async fn request(socket: &Path, req: Request) -> Result<Answer, ClientError> {
    let unreachable = |source: std::io::Error| ClientError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    };
    trust::check_socket(socket)?;
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        // The daemon's uid, as the kernel saw it at listen(): no file trick changes it.
        let daemon = stream.peer_cred()?.uid();
        if !trust::trusted(daemon) {
            return Ok(Err(Untrusted::Peer {
                socket: socket.to_path_buf(),
                uid: daemon,
            }));
        }
        let mut line = req.to_line();
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await?;
        serde_json::from_str::<Answer>(&answer)
            .map(Ok)
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unreadable answer: {e}"),
                )
            })
    };
    let answer = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 5s",
            ))
        })?
        .map_err(unreachable)??;
    if answer.ok == Some(true) {
        Ok(answer)
    } else {
        Err(ClientError::Refused {
            socket: socket.to_path_buf(),
            message: answer
                .error
                .unwrap_or_else(|| "an unknown error".to_string()),
        })
    }
}

/// Asks for the daemon's status. With `expected` (the config this command was given), a daemon
/// running another config is an error: two daemons left on the default socket would otherwise
/// answer (and take `maintenance on`) for each other.
async fn daemon_status(socket: &Path, expected: Option<&Path>) -> Result<Report, ClientError> {
    let answer = request(socket, Request::Status).await?;
    let status = answer.status.ok_or_else(|| ClientError::NoStatus {
        socket: socket.to_path_buf(),
    })?;
    if let Some(expected) = expected
        && Path::new(&status.config) != expected
    {
        return Err(ClientError::OtherConfig {
            socket: socket.to_path_buf(),
            running: status.config,
            expected: expected.to_path_buf(),
        });
    }
    Ok(status)
}

/// `rewire status [--json]`: prints the report; 1 when the daemon is unreachable.
pub async fn status(socket: &Path, expected: Option<&Path>, as_json: bool) -> Outcome {
    match daemon_status(socket, expected).await {
        Ok(report) => {
            if as_json {
                // Through a JSON value, whose keys are sorted: the output keeps one order.
                let value = serde_json::to_value(&report).expect("a report always serializes");
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("a JSON value always serializes")
                );
            } else {
                print!("{}", text::status(&report));
            }
            Outcome::Done
        }
        Err(e) => Outcome::Findings(format!("rewire: {e}")),
    }
}

/// `rewire metric NAME VALUE`: 1 when the daemon is unreachable or refuses (an undeclared
/// name, a `rewire_` name, a counter asked to go down).
pub async fn metric(socket: &Path, expected: Option<&Path>, name: &str, value: f64) -> Outcome {
    if expected.is_some()
        && let Err(e) = daemon_status(socket, expected).await
    {
        return Outcome::Findings(format!("rewire: {e}"));
    }
    let req = Request::Metric {
        name: name.to_string(),
        value,
    };
    match request(socket, req).await {
        Ok(_) => Outcome::Done,
        Err(e) => Outcome::Findings(format!("rewire: {e}")),
    }
}

/// `rewire maintenance on|off`: 1 when the daemon is unreachable.
pub async fn maintenance(socket: &Path, expected: Option<&Path>, on: bool) -> Outcome {
    if expected.is_some()
        && let Err(e) = daemon_status(socket, expected).await
    {
        return Outcome::Findings(format!("rewire: {e}"));
    }
    match request(socket, Request::Maintenance { on }).await {
        Ok(_) => {
            println!(
                "maintenance {}: {}",
                if on { "on" } else { "off" },
                if on {
                    "services deregistered; main keeps running"
                } else {
                    "services register again once their health checks pass"
                }
            );
            Outcome::Done
        }
        Err(e) => Outcome::Findings(format!("rewire: {e}")),
    }
}
