//! Reloading HAProxy through its master CLI (`haproxy -W -S <socket>`), confirmed.
//!
//! A SIGUSR2 that reaches the master while it is still busy with the previous reload is
//! ignored (HAProxy 2.6, measured: two signals 50 ms apart reload once), and nothing tells
//! the sender: HAProxy then runs an older config than the file holds. The master CLI does
//! better: it refuses connections while the master re-executes itself, so a `reload` sent
//! once it answers is taken, and `show proc` counts reloads and failed reloads. So:
//!
//! 1. `show proc` (retried while the master is between processes): the counters before;
//! 2. `reload`;
//! 3. `show proc` again until the reload counter moves; a counter that answers unchanged a
//!    second later means the command was lost (a connection reset as the master went
//!    away): send it again, up to three times;
//! 4. a moved `[failed: N]` counter means HAProxy refused the new config and the old worker
//!    keeps the old one: the reload failed.
//!
//! A missing socket file means no HAProxy runs: nothing to reload, it reads the file when it
//! starts.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::socket::{Cli, CliError};

/// How long a reload may take to be confirmed.
const RELOAD_BUDGET: Duration = Duration::from_secs(30);
/// A `show proc` with an unchanged counter this long after `reload` means it was lost.
const LOST_AFTER: Duration = Duration::from_secs(1);
const SENDS: u32 = 3;
const POLL: Duration = Duration::from_millis(20);

/// The master's counters in `show proc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub reloads: u64,
    pub failed: u64,
}

/// Reads the master line of `show proc`:
/// `13540  master  9 [failed: 1]  0d00h02m53s  2.6.12-1+deb12u4`.
pub fn parse_show_proc(text: &str) -> Option<Counters> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let reloads = words.get(2)?.parse().ok()?;
    let failed = match (words.get(3), words.get(4)) {
        (Some(&"[failed:"), Some(n)) => n.trim_end_matches(']').parse().ok()?,
        _ => 0,
    };
    Some(Counters { reloads, failed })
}

/// What a master reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Confirmed: the master re-read the config after the command.
    Done { reloads: u64 },
    /// No master listens on the socket (the file is missing).
    NotRunning(String),
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("HAProxy's master answers `show proc` with no master line:\n{0}")]
    Unreadable(String),
    #[error(
        "HAProxy's master reports the reload failed (show proc: failed {failed}): it kept the previous config; HAProxy's log says why"
    )]
    Failed { failed: u64 },
    #[error(
        "HAProxy's master did not confirm the reload within {}",
        humantime::format_duration(RELOAD_BUDGET)
    )]
    Unconfirmed,
}

/// Reloads through the master CLI at `socket` and waits for HAProxy's confirmation.
pub async fn reload(socket: &Path) -> Result<Reloaded, MasterError> {
    let cli = Cli::new(socket);
    let deadline = Instant::now() + RELOAD_BUDGET;
    let before = match counters(&cli, deadline, false).await {
        Err(MasterError::Cli(e)) if e.missing() => {
            return Ok(Reloaded::NotRunning(format!(
                "no HAProxy master listens on {}",
                socket.display()
            )));
        }
        other => other?,
    };
    for send in 1..=SENDS {
        match cli.ask("reload").await {
            // The master closes the connection as it re-executes itself; a reset is fine.
            Ok(_) | Err(CliError::Io { .. }) => {}
            Err(e) if e.not_listening() => {}
            Err(e) => return Err(e.into()),
        }
        let sent = Instant::now();
        loop {
            let now = counters(&cli, deadline, true).await?;
            if now.reloads > before.reloads {
                if now.failed > before.failed {
                    return Err(MasterError::Failed { failed: now.failed });
                }
                debug!(
                    reloads = now.reloads,
                    sends = send,
                    "HAProxy's master confirmed the reload"
                );
                return Ok(Reloaded::Done {
                    reloads: now.reloads,
                });
            }
            if sent.elapsed() >= LOST_AFTER {
                if send < SENDS {
                    warn!(socket = %socket.display(), "HAProxy's master did not take the reload; sending it again");
                }
                break;
            }
            if Instant::now() >= deadline {
                return Err(MasterError::Unconfirmed);
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Err(MasterError::Unconfirmed)
}

/// `show proc`, retried while the master is between processes (until `deadline`). Before a
/// reload was sent, a missing socket means no master runs; after, it may be the master
/// re-executing itself, so that is retried too.
async fn counters(cli: &Cli, deadline: Instant, reloading: bool) -> Result<Counters, MasterError> {
    loop {
        match cli.ask("show proc").await {
            Ok(text) => {
                return parse_show_proc(&text).ok_or(MasterError::Unreadable(text));
            }
            Err(e) if e.missing() && (!reloading || Instant::now() >= deadline) => {
                return Err(e.into());
            }
            Err(e) if e.missing() => tokio::time::sleep(POLL).await,
            Err(e)
                if (e.not_listening() || matches!(e, CliError::Io { .. }))
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_proc_counters_are_read() {
        // Captured from HAProxy 2.6.12.
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n13540           master          9 [failed: 1]   0d00h02m53s     2.6.12-1+deb12u4\n# workers\n20837           worker          1               0d00h00m06s     2.6.12-1+deb12u4\n# programs\n\n";
        assert_eq!(
            parse_show_proc(text),
            Some(Counters {
                reloads: 9,
                failed: 1
            })
        );
        assert_eq!(
            parse_show_proc("1 master 4 0d00h00m01s 2.4.0"),
            Some(Counters {
                reloads: 4,
                failed: 0
            })
        );
        assert_eq!(parse_show_proc("Unknown command"), None);
    }
}
