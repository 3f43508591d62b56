//! `[[election]]`s: one holder at a time among the rewire processes sharing a catalog, with
//! the app told through hooks and templates.
//!
//! One task per election (`Candidate::run`). It follows who holds the election (the
//! backend's [`Ballot::follow`]), runs for it when nobody does and this process may (the gate's
//! health passes), and while it holds it:
//!
//! - renews every ttl/3, each renewal bounded by ttl/3;
//! - keeps a *local deadline*: the send time of the last successful renewal + ttl - margin.
//!   When the deadline passes the holder demotes itself, whatever it hears or does not hear
//!   from the catalog (a partition delivers nothing at all). The catalog's own expiry comes
//!   `margin` later at the earliest (it counts from when the renewal *arrived*), so the old
//!   holder has stopped before a successor can start;
//! - steps down (resigns) when the gate's health fails twice in a row or `on_elected` fails,
//!   and then waits a ttl before running again, so another candidate gets its turn;
//! - is demoted at once when the catalog shows a newer term, or a renewal says the term is
//!   gone.
//!
//! A term ends in this order: `is_leader` turns false (templates re-render), `on_demoted` runs,
//! then the ballot resigns (the catalog releases the lock for a successor); the term is
//! renewed until on_demoted ends. On SIGTERM the daemon calls [`Elections::stop`] beside the
//! deregistration and drain (a slow hook holds neither), and main stops once it returned.
//!
//! Everyone publishes the election into the store as `Query::Election(name)` (the holder and
//! whether this process is it), so `leader()` and `is_leader()` are dependencies like
//! `service()`. `on_change` runs on every candidate when a new holder appears, never twice at
//! once, with the latest holder, and again after a failure (the app may not listen yet).
//!
//! `candidate.rs` holds the candidate's loop and the term, `hooks.rs` the hooks' environment
//! and `on_change`.
//!
//! Hooks get `REWIRE_ELECTION`, `REWIRE_CANDIDATE_ID` (this process's id),
//! `REWIRE_LEADER_ID`, `REWIRE_LEADER_ADDRESS`, `REWIRE_LEADER_PORT` and
//! `REWIRE_FENCING_TOKEN` (the holder's, which `on_elected` and `on_demoted` see as their own).
//! A frozen or partitioned process cannot demote its app in time: apps that write must check
//! the token.

mod candidate;
mod hooks;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use self::candidate::Candidate;
use super::health;
use crate::catalog::Catalog;
use crate::catalog::election::BallotSpec;
use crate::config::{Config, ElectionConfig, Gate, ServiceConfig};
use crate::model::{LeaderValue, Query};
use crate::status::{Board, ElectionStatus};
use crate::store::Store;

/// While nobody holds the election, how often an eligible candidate tries again (Consul
/// refuses during its lock delay; a dir lock may be taken between two looks).
const RETRY: Duration = Duration::from_millis(250);
/// Consecutive failed health checks of the gate that make a holder step down.
const FAILURES_TO_RESIGN: u32 = 2;
/// How long resigning and leaving may take at the end.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// The safety margin between the holder's local deadline and the catalog's expiry.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(100))
}

/// The elections of this process.
pub struct Elections {
    running: Vec<Running>,
    /// Candidates told to step down whose task has not ended yet (a SIGHUP that changed the
    /// elections was interrupted by a stop signal while they stepped down): the stop waits
    /// for them too.
    leaving: Vec<Running>,
    configs: Vec<ElectionConfig>,
}

struct Running {
    name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// How long its step-down may take at most: `on_demoted`'s timeout, then resigning and
    /// leaving. The candidate bounds each step itself; this guards against a stuck task.
    bound: Duration,
}

/// What every candidate needs from the daemon.
#[derive(Clone)]
pub struct Context {
    pub catalog: Arc<dyn Catalog>,
    pub store: Arc<Store>,
    pub board: Arc<Board>,
    pub env: BTreeMap<String, String>,
    pub health: health::Registry,
}

impl Elections {
    /// Starts one candidate per `[[election]]`. One that cannot start (its value's address
    /// does not resolve, the backend refuses) is logged and shown in `rewire status`.
    pub fn start(config: &Config, ctx: &Context) -> Elections {
        let running = config
            .elections
            .iter()
            .filter_map(|e| start_one(e, &config.services, ctx))
            .collect();
        Elections {
            running,
            leaving: Vec::new(),
            configs: config.elections.clone(),
        }
    }

    /// No elections.
    pub fn none() -> Elections {
        Elections {
            running: Vec::new(),
            leaving: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// SIGHUP: an unchanged set of elections keeps running (a holder stays the holder);
    /// otherwise every candidate steps down and the new ones start. Dropped half-way (a stop
    /// signal came), the candidates still stepping down are waited for by [`Elections::stop`],
    /// and the new ones do not start.
    pub async fn reconfigure(&mut self, config: &Config, ctx: &Context) {
        if config.elections == self.configs {
            return;
        }
        info!("[[election]] sections changed; stepping down and running again");
        let old_names: Vec<String> = self.configs.iter().map(|e| e.name.clone()).collect();
        self.step_down().await;
        let names: Vec<String> = config.elections.iter().map(|e| e.name.clone()).collect();
        ctx.board
            .update(|r| r.elections.retain(|n, _| names.contains(n)));
        // Elections no longer run here have no view any more (templates using them wait).
        let gone: Vec<Query> = old_names
            .into_iter()
            .filter(|n| !names.contains(n))
            .map(Query::Election)
            .collect();
        ctx.store.forget(&gone);
        *self = Elections::start(config, ctx);
    }

    /// Every candidate steps down (on_demoted, then release) and leaves; returns when all
    /// have, and nothing runs any more. Cancel-safe: what is still stepping down stays in
    /// `leaving`.
    pub async fn step_down(&mut self) {
        self.begin_stop();
        self.leaving.append(&mut self.running);
        self.configs.clear();
        while let Some(r) = self.leaving.last_mut() {
            finish(r).await;
            self.leaving.pop();
        }
    }

    /// Whether no election runs (none configured, or none could start) and none is still
    /// stepping down.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.leaving.is_empty()
    }

    /// Tells every candidate to step down, at once (see [`Elections::stop`]): called before
    /// the rest of the stop sequence starts, so a candidate sees its stop before the health
    /// changes the deregistration brings, and steps down for that reason.
    pub fn begin_stop(&self) {
        for r in &self.running {
            r.stop.cancel();
        }
    }

    /// Steps down everywhere (on_demoted, then release) and leaves; returns when done.
    pub async fn stop(mut self) {
        self.begin_stop();
        // All at once: one slow on_demoted does not hold up the others.
        let all = self.running.iter_mut().chain(self.leaving.iter_mut());
        futures_util::future::join_all(all.map(finish)).await;
    }
}

/// Waits for a candidate told to stop to end, for at most its bound.
async fn finish(r: &mut Running) {
    if tokio::time::timeout(r.bound, &mut r.task).await.is_err() {
        warn!(election = %r.name, bound = ?r.bound, "the election did not stop in time");
        r.task.abort();
    }
}

/// How long a candidate's step-down may take at most (see [`Running::bound`]): `on_demoted`'s
/// timeout, resigning and leaving ([`RESIGN_TIMEOUT`] each), and as much again as a margin.
fn step_down_bound(e: &ElectionConfig) -> Duration {
    let hook = e.on_demoted.as_ref().map_or(Duration::ZERO, |h| h.timeout);
    hook + RESIGN_TIMEOUT * 4
}

fn start_one(e: &ElectionConfig, services: &[ServiceConfig], ctx: &Context) -> Option<Running> {
    let source = ValueSource::new(e, services);
    let spec = BallotSpec {
        name: e.name.clone(),
        candidate: source.id.clone(),
        ttl: e.ttl,
        lock_delay: e.lock_delay,
    };
    let ballot = match ctx.catalog.ballot(&spec) {
        Ok(b) => b,
        Err(err) => {
            error!(election = %e.name, error = %err, "cannot run this election");
            ctx.board.update(|r| {
                r.elections.insert(
                    e.name.clone(),
                    ElectionStatus {
                        role: "off".into(),
                        detail: err.to_string(),
                        ..ElectionStatus::default()
                    },
                );
            });
            return None;
        }
    };
    let stop = CancellationToken::new();
    let candidate = Candidate {
        cfg: e.clone(),
        ballot,
        source,
        ctx: ctx.clone(),
        status: ElectionStatus {
            role: "unknown".into(),
            ..ElectionStatus::default()
        },
        published: None,
    };
    let span = info_span!("election", election = %e.name);
    let task = tokio::spawn(candidate.run(stop.clone()).instrument(span));
    Some(Running {
        name: e.name.clone(),
        stop,
        task,
        bound: step_down_bound(e),
    })
}

/// Where this candidate's published value comes from: the gate's service (or the only
/// `[[service]]`), with `value` on top. The address is resolved at each campaign.
#[derive(Clone, Debug)]
struct ValueSource {
    id: String,
    address: crate::config::AddressSpec,
    port: Option<u16>,
}

impl ValueSource {
    fn new(e: &ElectionConfig, services: &[ServiceConfig]) -> ValueSource {
        let svc = match &e.gate {
            Some(Gate::Service(name)) => services.iter().find(|s| s.name == *name),
            // The service reporting the job's health, if any.
            Some(Gate::Job(job)) => services
                .iter()
                .find(|s| s.job.as_deref() == Some(job.as_str()))
                .or(if services.len() == 1 {
                    services.first()
                } else {
                    None
                }),
            None if services.len() == 1 => services.first(),
            None => None,
        };
        let id = e
            .value
            .id
            .clone()
            .or_else(|| svc.map(super::registrar::service_id))
            .unwrap_or_else(|| {
                crate::host::hostname()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect()
            });
        ValueSource {
            id,
            address: e
                .value
                .address
                .clone()
                .or_else(|| svc.map(|s| s.address.clone()))
                .unwrap_or(crate::config::AddressSpec::Auto),
            port: e.value.port.or(svc.map(|s| s.port)),
        }
    }

    fn resolve(&self) -> Result<LeaderValue, String> {
        let address = crate::host::resolve_address(&self.address).map_err(|e| e.to_string())?;
        let value = LeaderValue {
            id: self.id.clone(),
            address,
            port: self.port,
        };
        value.check().map_err(|e| e.to_string())?;
        Ok(value)
    }
}
