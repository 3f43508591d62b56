//! `[main]`: the supervised main process, its hooks, and which signals stop or reach it.
//!
//! Signals that cannot be caught (KILL, STOP) or that rewire needs (CHLD) are refused, as is
//! a signal that would both stop rewire and be forwarded.
//!
//! `drain` defaults to [`SERVICE_DRAIN`] when the config registers a `[[service]]`: a front
//! needs its quiescence (`wait.max`, 2 s by default), a check and a reload to stop routing to
//! a backend that deregistered, and stopping the backend sooner fails the requests sent to it
//! meanwhile. An explicit `drain = "0s"` beside a `[[service]]` is allowed but warned about.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::MainConfig;
use super::walker::{Tbl, Walker};

/// The drain when the config registers a `[[service]]` and does not say: a front with rewire's
/// default wait (500 ms, at most 2 s) plus a check and a reload stops routing here within
/// about 2.5 s.
pub const SERVICE_DRAIN: Duration = Duration::from_secs(3);

impl Walker<'_> {
    pub(super) fn main(&mut self, root: &Tbl) -> Option<MainConfig> {
        let t = self.table(root, "main")?;
        let hook_timeout = Duration::from_secs(600);
        let pre_start = self.command(&t, "pre_start", hook_timeout);
        let exec = self.command(&t, "exec", Duration::MAX).map(|c| c.program);
        let pre_stop = self.command(&t, "pre_stop", Duration::from_secs(60));
        let post_stop = self.command(&t, "post_stop", Duration::from_secs(60));
        let stop_timeout = self
            .duration(&t, "stop_timeout")
            .unwrap_or(Duration::from_secs(10));
        // Each list's default leaves out what the other one names when written: only both
        // written out can conflict (`forward_signals = ["INT"]` alone makes INT forwarded).
        let written_stop = self.signals(&t, "stop_signals");
        let written_forward = self.signals(&t, "forward_signals");
        let stop_signals = written_stop.unwrap_or_else(|| {
            [Signal::SIGTERM, Signal::SIGINT]
                .into_iter()
                .filter(|s| !written_forward.as_ref().is_some_and(|f| f.contains(s)))
                .collect()
        });
        let stop_signal = self.signal(&t, "stop_signal").unwrap_or(Signal::SIGTERM);
        let registers = root.map.get("service").is_some();
        let drain = match self.duration(&t, "drain") {
            Some(d) => {
                if d.is_zero()
                    && registers
                    && let Some(span) = t.key_span("drain")
                {
                    self.warn(
                        span,
                        "drain = \"0s\" stops main as soon as the [[service]] is deregistered, before fronts stop routing to it",
                        "a backend's drain should be at least the front's wait.max + its check + its reload + ~0.5 s (3s with rewire's defaults); remove the line for that default",
                    );
                }
                d
            }
            None if registers => SERVICE_DRAIN,
            None => Duration::ZERO,
        };
        // The default forwards USR1 and USR2, less those made stop signals.
        let forward_signals = written_forward.unwrap_or_else(|| {
            [Signal::SIGUSR1, Signal::SIGUSR2]
                .into_iter()
                .filter(|s| !stop_signals.contains(s))
                .collect()
        });
        for s in &forward_signals {
            if stop_signals.contains(s) {
                let span = t.key_span("forward_signals").unwrap_or(t.span.clone());
                self.error(
                    span,
                    format!("{s} is both forwarded and a stop signal"),
                    "remove it from one of forward_signals and stop_signals",
                );
            }
        }
        for s in stop_signals.iter().chain(&forward_signals) {
            if matches!(s, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGCHLD) {
                let key = if stop_signals.contains(s) {
                    "stop_signals"
                } else {
                    "forward_signals"
                };
                self.error(
                    t.key_span(key).unwrap_or(t.span.clone()),
                    format!("{s} cannot be caught or forwarded"),
                    "",
                );
            }
        }
        let restart = self.restart(&t);
        let restart_limit = self.restart_limit(&t);
        let when = self.when(&t, super::MAIN_JOB, true);
        // "forever": main never starts before every template was written (consul-template's
        // exec mode).
        let wait_for_templates = match t.get("wait_for_templates").map(|v| v.get_ref()) {
            Some(toml::de::DeValue::String(s)) if s == "forever" => Duration::MAX,
            _ => self
                .duration(&t, "wait_for_templates")
                .unwrap_or(Duration::from_secs(60)),
        };
        self.finish(&t, MAIN_KEYS);
        Some(MainConfig {
            pre_start,
            exec,
            pre_stop,
            post_stop,
            stop_timeout,
            stop_signals,
            stop_signal,
            drain,
            forward_signals,
            restart,
            restart_limit,
            wait_for_templates,
            when,
        })
    }
}

const MAIN_KEYS: &[&str] = &[
    "pre_start",
    "exec",
    "pre_stop",
    "post_stop",
    "stop_timeout",
    "stop_signals",
    "stop_signal",
    "drain",
    "forward_signals",
    "restart_limit",
    "restart",
    "wait_for_templates",
    "when",
];
