//! The signals `rewire run` listens for, and what each one means.
//!
//! Stop signals (`[main] stop_signals`, TERM and INT by default) start the stop sequence;
//! `forward_signals` (USR1 and USR2 by default) go to main; HUP re-reads the config unless it
//! is configured as a stop or forwarded signal. SIGTERM, SIGINT and SIGQUIT always stop rewire
//! unless they are forwarded: otherwise `docker stop` would hang until SIGKILL (QUIT is the
//! `STOPSIGNAL` of the official nginx image), and a rewire killed outright leaves its
//! registrations behind.
//!
//! Every other signal whose default action ends the process (USR1 and USR2 when not forwarded,
//! ALRM, PWR, IO, the real-time signals, ...) or stops it (TSTP, TTIN, TTOU) is caught and
//! ignored with a warning: a stray `kill -USR1` from a log rotation, or one the PID 1 reaper
//! passes on, must not end rewire without its stop sequence, and a stopped rewire supervises
//! nothing and leaves a later SIGTERM pending (`docker stop` then ends in SIGKILL, without
//! deregistering). A Ctrl-Z in `docker run -it` is one way to send TSTP. Faults (SEGV, BUS, ABRT, TRAP, SYS, ...) keep their default:
//! sent by hand they are a request to dump core.

use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::MainConfig;

/// What an arriving signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    Stop(Signal),
    Reload,
    Forward(Signal),
    /// Caught only so that it does not kill rewire (see the module docs).
    Ignored(Signal),
    /// A real-time signal (by number), caught for the same reason.
    IgnoredRealtime(i32),
}

/// Signals that always stop rewire unless forwarded.
const ALWAYS_STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Signals whose default action ends or stops the process and that nothing in rewire raises
/// itself (faults such as SEGV and ABRT keep their default: they mean rewire itself is broken).
const WOULD_KILL: [Signal; 13] = [
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGSTKFLT,
    Signal::SIGTSTP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
];

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
        for s in ALWAYS_STOP {
            if !all.contains(&s) {
                all.push(s);
            }
            if !stop.contains(&s) && !forward.contains(&s) {
                stop.push(s);
            }
        }
        all.extend(WOULD_KILL);
        all.sort_by_key(|s| *s as i32);
        all.dedup();
        Plan { all, stop, forward }
    }

    fn meaning(&self, sig: Signal) -> Incoming {
        if self.stop.contains(&sig) {
            Incoming::Stop(sig)
        } else if self.forward.contains(&sig) {
            Incoming::Forward(sig)
        } else if sig == Signal::SIGHUP {
            Incoming::Reload
        } else {
            Incoming::Ignored(sig)
        }
    }
}

/// The signal streams, installed once at start (before anything is spawned).
pub struct Signals {
    /// By number: the named signals of the plan, then the real-time ones.
    streams: Vec<(i32, tokio::signal::unix::Signal)>,
    plan: Plan,
}

impl Signals {
    pub fn new(main: Option<&MainConfig>) -> std::io::Result<Signals> {
        let plan = Plan::new(main);
        let mut streams = Vec::new();
        for s in &plan.all {
            streams.push((*s as i32, signal(SignalKind::from_raw(*s as i32))?));
        }
        // Real-time signals end a process by default too (`docker kill -s RTMIN` ...): caught
        // and ignored like the others. Best effort: tokio has no slot for SIGRTMAX itself,
        // which gets a handler that does nothing (a handler, unlike SIG_IGN, is not inherited
        // by the programs rewire starts).
        for n in libc::SIGRTMIN()..libc::SIGRTMAX() {
            if let Ok(stream) = signal(SignalKind::from_raw(n)) {
                streams.push((n, stream));
            }
        }
        catch_and_drop(libc::SIGRTMAX());
        Ok(Signals { streams, plan })
    }

    /// Waits for the next signal. An ignored one is logged here.
    pub async fn next(&mut self) -> Incoming {
        let futures = self.streams.iter_mut().map(|(n, stream)| {
            let n = *n;
            Box::pin(async move {
                stream.recv().await;
                n
            })
        });
        let (n, _, _) = futures_util::future::select_all(futures).await;
        let Ok(sig) = Signal::try_from(n) else {
            let rt = n - libc::SIGRTMIN();
            tracing::warn!(signal = %format!("SIGRTMIN+{rt}"), "ignored: rewire does not use real-time signals");
            return Incoming::IgnoredRealtime(n);
        };
        let meaning = self.plan.meaning(sig);
        if let Incoming::Ignored(s) = meaning {
            tracing::warn!(signal = %s, "ignored: it is neither a stop signal nor forwarded (see [main] stop_signals and forward_signals)");
        }
        meaning
    }
}

/// Installs a handler that does nothing for signal `n`.
fn catch_and_drop(n: i32) {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a zeroed sigaction with a handler that touches nothing (async-signal-safe) and an
    // empty mask; sigaction only reads it.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(n, &action, std::ptr::null_mut());
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

    #[test]
    fn quit_stops_and_other_deadly_signals_are_caught_and_ignored() {
        let plan = Plan::new(None);
        assert_eq!(
            plan.meaning(Signal::SIGQUIT),
            Incoming::Stop(Signal::SIGQUIT)
        );
        for s in [
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGALRM,
            Signal::SIGPWR,
            Signal::SIGTSTP,
            Signal::SIGTTIN,
            Signal::SIGTTOU,
        ] {
            assert!(plan.all.contains(&s), "{s} is not caught");
            assert_eq!(plan.meaning(s), Incoming::Ignored(s));
        }
        // Forwarded, USR1 goes to main; QUIT forwarded is no longer a stop signal.
        let text = "[main]\nexec = [\"x\"]\nforward_signals = [\"USR1\", \"QUIT\"]\n";
        let config =
            crate::config::parse_str(text, std::path::Path::new("/r.toml"), &|_| None).unwrap();
        let plan = Plan::new(config.main.as_ref());
        assert_eq!(
            plan.meaning(Signal::SIGUSR1),
            Incoming::Forward(Signal::SIGUSR1)
        );
        assert_eq!(
            plan.meaning(Signal::SIGQUIT),
            Incoming::Forward(Signal::SIGQUIT)
        );
        assert_eq!(
            plan.meaning(Signal::SIGUSR2),
            Incoming::Ignored(Signal::SIGUSR2)
        );
    }
}
