//! The signals `rewire run` listens for, and what each one means.
//!
//! Stop signals (`[main] stop_signals`, TERM and INT by default) start the stop sequence;
//! `forward_signals` (USR1 and USR2 by default) go to main; HUP re-reads the config unless it
//! is configured as a stop or forwarded signal. SIGTERM and SIGINT always stop rewire unless
//! they are forwarded: otherwise `docker stop` would hang until SIGKILL.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::MainConfig;

/// What an arriving signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Stop(Signal),
    Reload,
    Forward(Signal),
}

/// Which signals mean what, as configured (pure, so it is tested without signals).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Every signal to listen for, sorted.
    all: Vec<Signal>,
    stop: Vec<Signal>,
    forward: Vec<Signal>,
}

impl Plan {
    fn new(main: Option<&MainConfig>) -> Plan {
        let (mut stop, forward) = match main {
            Some(m) => (m.stop_signals.clone(), m.forward_signals.clone()),
            None => (vec![Signal::SIGTERM, Signal::SIGINT], Vec::new()),
        };
        let mut all: Vec<Signal> = stop.clone();
        all.push(Signal::SIGHUP);
        all.extend(forward.iter().copied());
        for s in [Signal::SIGTERM, Signal::SIGINT] {
            if !all.contains(&s) {
                all.push(s);
            }
            if !stop.contains(&s) && !forward.contains(&s) {
                stop.push(s);
            }
        }
        all.sort_by_key(|s| *s as i32);
        all.dedup();
        Plan { all, stop, forward }
    }

    fn meaning(&self, sig: Signal) -> Incoming {
        if self.stop.contains(&sig) {
            Incoming::Stop(sig)
        } else if self.forward.contains(&sig) {
            Incoming::Forward(sig)
        } else {
            Incoming::Reload
        }
    }
}

/// The signal streams, installed once at start (before anything is spawned).
pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    plan: Plan,
}

impl Signals {
    pub fn new(main: Option<&MainConfig>) -> std::io::Result<Signals> {
        let plan = Plan::new(main);
        let mut streams = Vec::new();
        for s in &plan.all {
            streams.push((*s, signal(SignalKind::from_raw(*s as i32))?));
        }
        Ok(Signals { streams, plan })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> Incoming {
        let futures = self.streams.iter_mut().map(|(sig, stream)| {
            let sig = *sig;
            Box::pin(async move {
                stream.recv().await;
                sig
            })
        });
        let (sig, _, _) = futures_util::future::select_all(futures).await;
        self.plan.meaning(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn term_and_int_stop_unless_forwarded_and_hup_reloads() {
        let plan = Plan::new(None);
        assert_eq!(
            plan.meaning(Signal::SIGTERM),
            Incoming::Stop(Signal::SIGTERM)
        );
        assert_eq!(plan.meaning(Signal::SIGHUP), Incoming::Reload);

        let text =
            "[main]\nexec = [\"x\"]\nstop_signals = [\"HUP\"]\nforward_signals = [\"INT\"]\n";
        let config =
            crate::config::parse_str(text, std::path::Path::new("/r.toml"), &|_| None).unwrap();
        let plan = Plan::new(config.main.as_ref());
        assert_eq!(plan.meaning(Signal::SIGHUP), Incoming::Stop(Signal::SIGHUP));
        assert_eq!(
            plan.meaning(Signal::SIGTERM),
            Incoming::Stop(Signal::SIGTERM)
        );
        assert_eq!(
            plan.meaning(Signal::SIGINT),
            Incoming::Forward(Signal::SIGINT)
        );
        assert!(plan.all.contains(&Signal::SIGTERM) && plan.all.contains(&Signal::SIGINT));
    }
}
