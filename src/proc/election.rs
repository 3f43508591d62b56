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
//! then the ballot resigns (the catalog releases the lock for a successor). On SIGTERM the
//! daemon calls [`Elections::stop`] before deregistering anything, so the order of the issue
//! holds: on_demoted -> release -> deregister -> drain -> stop.
//!
//! Everyone publishes the election into the store as `Query::Election(name)` (the holder and
//! whether this process is it), so `leader()` and `is_leader()` are dependencies like
//! `service()`. `on_change` runs on every candidate when a new holder appears, never twice at
//! once, with the latest holder, and again after a failure (the app may not listen yet).
//!
//! Hooks get `REWIRE_ELECTION`, `REWIRE_CANDIDATE_ID` (this process's id),
//! `REWIRE_LEADER_ID`, `REWIRE_LEADER_ADDRESS`, `REWIRE_LEADER_PORT` and
//! `REWIRE_FENCING_TOKEN` (the holder's, which `on_elected` and `on_demoted` see as their own).
//! A frozen or partitioned process cannot demote its app in time: apps that write must check
//! the token.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::health::{self, Health};
use super::supervisor::run_hook;
use crate::catalog::election::{Ballot, BallotSpec, Sight};
use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, ElectionConfig, Gate, ServiceConfig};
use crate::model::{Data, ElectionView, Holder, LeaderValue, Query};
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
    configs: Vec<ElectionConfig>,
}

struct Running {
    name: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
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
            configs: config.elections.clone(),
        }
    }

    /// No elections.
    pub fn none() -> Elections {
        Elections {
            running: Vec::new(),
            configs: Vec::new(),
        }
    }

    /// SIGHUP: an unchanged set of elections keeps running (a holder stays the holder);
    /// otherwise every candidate steps down and the new ones start.
    pub async fn reconfigure(&mut self, config: &Config, ctx: &Context) {
        if config.elections == self.configs {
            return;
        }
        info!("[[election]] sections changed; stepping down and running again");
        let old_names: Vec<String> = self.configs.iter().map(|e| e.name.clone()).collect();
        std::mem::replace(self, Elections::none()).stop().await;
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

    /// Steps down everywhere (on_demoted, then release) and leaves; returns when done.
    pub async fn stop(self) {
        for r in &self.running {
            r.stop.cancel();
        }
        for r in self.running {
            // The candidate bounds its own steps; this only guards against a stuck hook.
            if tokio::time::timeout(RESIGN_TIMEOUT * 8, r.task)
                .await
                .is_err()
            {
                warn!(election = %r.name, "the election did not stop in time");
            }
        }
    }
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
    let span = info_span!("election", name = %e.name);
    let task = tokio::spawn(candidate.run(stop.clone()).instrument(span));
    Some(Running {
        name: e.name.clone(),
        stop,
        task,
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

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// rewire is stopping.
    Stop,
    /// The catalog says the term is over (another holder, an expired lease or session).
    Lost(String),
    /// No renewal succeeded before the local deadline.
    Deadline,
    /// The gate's health kept failing.
    Unhealthy,
    /// `on_elected` failed.
    HookFailed,
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Stop => "stepped down: rewire is stopping".into(),
            End::Lost(why) => format!("lost the election: {why}"),
            End::Deadline => "no renewal before the local deadline (ttl - margin)".into(),
            End::Unhealthy => {
                format!("stepped down: the health check failed {FAILURES_TO_RESIGN} times in a row")
            }
            End::HookFailed => "stepped down: on_elected failed".into(),
        }
    }

    /// How long to wait before running again: a candidate that stepped down for its own
    /// reasons leaves room for the others.
    fn cooldown(&self, ttl: Duration) -> Duration {
        match self {
            End::Unhealthy | End::HookFailed => ttl,
            _ => Duration::ZERO,
        }
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Candidate {
    cfg: ElectionConfig,
    ballot: Arc<dyn Ballot>,
    source: ValueSource,
    ctx: Context,
    status: ElectionStatus,
    /// What this candidate last put in the store.
    published: Option<ElectionView>,
}

/// This process's term.
struct Term {
    holder: Holder,
    promoted: bool,
}

impl Candidate {
    async fn run(mut self, stop: CancellationToken) {
        let (sight_tx, mut sight) = watch::channel(Sight::Unknown);
        let follow_stop = CancellationToken::new();
        let follower = {
            let ballot = self.ballot.clone();
            let stop = follow_stop.clone();
            tokio::spawn(async move { ballot.follow(sight_tx, stop).await }.in_current_span())
        };
        let (changes_tx, changes) = watch::channel::<Option<Holder>>(None);
        let on_change = self.cfg.on_change.clone().map(|spec| {
            tokio::spawn(
                run_on_change(spec, changes, self.hook_env(None), stop.clone()).in_current_span(),
            )
        });
        let mut health = self.ctx.health.subscribe();
        let mut not_before = Instant::now();
        let mut standby = tokio::time::interval(self.cfg.ttl / 3);
        standby.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut said_not_eligible: Option<String> = None;

        let mut last_seen = None;
        loop {
            let seen = sight.borrow_and_update().clone();
            if last_seen.as_ref() != Some(&seen) {
                debug!(?seen, "the catalog says");
                last_seen = Some(seen.clone());
            }
            self.publish(&seen, None);
            if let Some(h) = seen.holder() {
                changes_tx.send_if_modified(|c| {
                    let new = c.as_ref().is_none_or(|old| old.token != h.token);
                    if new {
                        *c = Some(h.clone());
                    }
                    new
                });
            }
            let eligible = self.eligible(&health.borrow_and_update());
            let vacant = seen == Sight::Vacant;
            match &eligible {
                Err(why) => {
                    if said_not_eligible.as_ref() != Some(why) {
                        info!(reason = %why, "not running for leader");
                        said_not_eligible = Some(why.clone());
                    }
                }
                Ok(()) => said_not_eligible = None,
            }
            self.show_role(&seen, eligible.as_ref().err());
            if vacant && eligible.is_ok() && Instant::now() >= not_before {
                match self.campaign(&stop).await {
                    Some((holder, started)) => {
                        let end = self
                            .hold(holder, started, &mut sight, &mut health, &changes_tx, &stop)
                            .await;
                        not_before = Instant::now() + end.cooldown(self.cfg.ttl);
                        if end == End::Stop {
                            break;
                        }
                        continue;
                    }
                    None => not_before = Instant::now() + RETRY,
                }
            }
            let retry_at = (vacant && eligible.is_ok()).then_some(not_before);
            tokio::select! {
                _ = stop.cancelled() => break,
                r = sight.changed() => if r.is_err() { break },
                r = health.changed() => if r.is_err() { stop.cancelled().await; break },
                _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {}
                _ = standby.tick() => {
                    if let Err(e) = self.ballot.standby().await {
                        debug!(error = %e, "standby failed");
                    }
                }
            }
        }

        // Stopping: the term (if any) has ended above; leave the catalog tidy.
        match tokio::time::timeout(RESIGN_TIMEOUT, self.ballot.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot remove the candidate's traces from the catalog")
            }
            Err(_) => warn!("leaving the election timed out"),
        }
        follow_stop.cancel();
        let _ = follower.await;
        if let Some(h) = on_change {
            let _ = h.await;
        }
        self.status.role = "stopped".into();
        self.show();
    }

    /// Whether this process may run for leader now.
    fn eligible(&self, health: &BTreeMap<String, Health>) -> Result<(), String> {
        match &self.cfg.gate {
            None => Ok(()),
            Some(Gate::Service(name)) => match health.get(&health::service_key(name)) {
                Some(h) if h.passing => Ok(()),
                Some(_) => Err(format!("service {name}'s health check is failing")),
                None => Err(format!("waiting for service {name}'s first health check")),
            },
        }
    }

    /// Tries once to take the election. On success: the holder and when the attempt began
    /// (the term's deadline counts from there).
    async fn campaign(&mut self, stop: &CancellationToken) -> Option<(Holder, Instant)> {
        let value = match self.source.resolve() {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "cannot publish a value; not running for leader");
                self.status.detail = format!("cannot publish a value: {e}");
                return None;
            }
        };
        let started = Instant::now();
        let attempt = tokio::time::timeout(self.cfg.ttl, self.ballot.campaign(&value));
        let result = tokio::select! {
            _ = stop.cancelled() => return None,
            r = attempt => r,
        };
        match result {
            Ok(Ok(Some(token))) => Some((Holder { value, token }, started)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                log_catalog_error("campaign", &e);
                None
            }
            Err(_) => {
                warn!(ttl = ?self.cfg.ttl, "running for leader took longer than the ttl");
                // Whatever it did, it must not hold a term nobody renews.
                let _ = tokio::time::timeout(RESIGN_TIMEOUT, self.ballot.resign()).await;
                None
            }
        }
    }

    /// Holds a term until it ends, then demotes: `is_leader` false, `on_demoted`, resign.
    async fn hold(
        &mut self,
        holder: Holder,
        started: Instant,
        sight: &mut watch::Receiver<Sight>,
        health: &mut watch::Receiver<BTreeMap<String, Health>>,
        changes: &watch::Sender<Option<Holder>>,
        stop: &CancellationToken,
    ) -> End {
        let token = holder.token;
        info!(token, id = %holder.value.id, "elected");
        self.status.terms += 1;
        self.status.role = "leader".into();
        self.status.holder = describe(&holder);
        self.status.token = Some(token);
        self.status.since = Some(SystemTime::now());
        self.status.detail.clear();
        self.show();
        changes.send_if_modified(|c| {
            let new = c.as_ref().is_none_or(|old| old.token != token);
            if new {
                *c = Some(holder.clone());
            }
            new
        });
        let mut term = Term {
            holder,
            promoted: self.cfg.on_elected.is_none(),
        };
        self.publish(&Sight::Unknown, Some(&term));

        let end = self.keep(&mut term, started, sight, health, stop).await;

        // Demote: templates first, then the app, then the catalog.
        term.promoted = false;
        self.publish(&sight.borrow().clone(), None);
        match &end {
            End::Stop => info!(token, "stepping down"),
            other => warn!(token, reason = %other.describe(), "demoted"),
        }
        if let Some(spec) = &self.cfg.on_demoted {
            run_hook("on_demoted", spec, &self.hook_env(Some(&term.holder))).await;
        }
        match tokio::time::timeout(RESIGN_TIMEOUT, self.ballot.resign()).await {
            Ok(Ok(())) => debug!(token, "released"),
            Ok(Err(e)) => debug!(token, error = %e, "cannot release; the catalog expires the term"),
            Err(_) => debug!(token, "releasing timed out; the catalog expires the term"),
        }
        self.status.role = "follower".into();
        self.status.detail = end.describe();
        self.show();
        end
    }

    /// The term's loop: renewals, the local deadline, the hook, health and the catalog.
    async fn keep(
        &mut self,
        term: &mut Term,
        started: Instant,
        sight: &mut watch::Receiver<Sight>,
        health: &mut watch::Receiver<BTreeMap<String, Health>>,
        stop: &CancellationToken,
    ) -> End {
        let ttl = self.cfg.ttl;
        let every = ttl / 3;
        let lease = ttl.saturating_sub(margin(ttl));
        let mut deadline = started + lease;
        let token = term.holder.token;

        let mut elected: Option<Pending<Option<u8>>> = self.cfg.on_elected.clone().map(|spec| {
            let env = self.hook_env(Some(&term.holder));
            Box::pin(async move { run_hook("on_elected", &spec, &env).await }) as Pending<_>
        });
        type Renewal = (
            Instant,
            Result<Result<bool, CatalogError>, tokio::time::error::Elapsed>,
        );
        let mut renewal: Option<Pending<Renewal>> = None;
        let renew = |ballot: Arc<dyn Ballot>| -> Pending<Renewal> {
            let sent = Instant::now();
            Box::pin(async move { (sent, tokio::time::timeout(every, ballot.renew()).await) })
        };
        let mut tick = tokio::time::interval_at(started + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return End::Stop,
                _ = tokio::time::sleep_until(deadline) => return End::Deadline,
                done = async { elected.as_mut().expect("guarded").await }, if elected.is_some() => {
                    elected = None;
                    if done != Some(0) {
                        return End::HookFailed;
                    }
                    term.promoted = true;
                    info!(token, "on_elected done; leader");
                    self.publish(&Sight::Unknown, Some(term));
                }
                (sent, result) = async { renewal.as_mut().expect("guarded").await }, if renewal.is_some() => {
                    renewal = None;
                    match result {
                        Ok(Ok(true)) => deadline = deadline.max(sent + lease),
                        Ok(Ok(false)) => return End::Lost("the catalog no longer holds this term".into()),
                        Ok(Err(e)) => log_catalog_error("renewal", &e),
                        Err(_) => warn!(timeout = ?every, "renewal timed out"),
                    }
                }
                _ = tick.tick() => {
                    if renewal.is_none() {
                        renewal = Some(renew(self.ballot.clone()));
                    }
                }
                r = sight.changed() => {
                    if r.is_err() {
                        return End::Stop;
                    }
                    let seen = sight.borrow_and_update().clone();
                    match &seen {
                        Sight::Held(h) if h.token > token => {
                            return End::Lost(format!("{} holds a newer term (token {})", h.value.id, h.token));
                        }
                        // Ours, seen from the catalog.
                        Sight::Held(h) if h.token == token => {}
                        // Gone, or someone else's: make sure at once.
                        Sight::Held(_) | Sight::Vacant => {
                            if renewal.is_none() {
                                renewal = Some(renew(self.ballot.clone()));
                            }
                        }
                        Sight::Unknown => {}
                    }
                }
                r = health.changed() => {
                    if r.is_err() {
                        return End::Stop;
                    }
                    if let Some(Gate::Service(name)) = &self.cfg.gate {
                        let failing = health
                            .borrow_and_update()
                            .get(&health::service_key(name))
                            .is_none_or(|h| h.failures >= FAILURES_TO_RESIGN);
                        if failing {
                            return End::Unhealthy;
                        }
                    }
                }
            }
        }
    }

    /// Puts the election's view in the store (for `leader()` and `is_leader()`), unless it is
    /// not known yet. `term`: this process holds the election.
    fn publish(&mut self, seen: &Sight, term: Option<&Term>) {
        let view = match (term, seen) {
            (Some(t), _) => ElectionView {
                holder: Some(t.holder.clone()),
                is_leader: t.promoted,
            },
            // Unknown (not read yet, or unreadable now): keep what templates have, except
            // that this process no longer leads (a holder cut off from the catalog demotes).
            (None, Sight::Unknown) => match &self.published {
                Some(v) if v.is_leader => ElectionView {
                    holder: v.holder.clone(),
                    is_leader: false,
                },
                _ => return,
            },
            (None, s) => ElectionView {
                holder: s.holder().cloned(),
                is_leader: false,
            },
        };
        if self.published.as_ref() == Some(&view) {
            return;
        }
        self.ctx.store.update(
            Query::Election(self.cfg.name.clone()),
            Data::Election(view.clone()),
        );
        self.published = Some(view);
    }

    fn show_role(&mut self, seen: &Sight, not_eligible: Option<&String>) {
        let (role, holder) = match seen {
            Sight::Unknown => ("unknown", None),
            Sight::Vacant => (
                if not_eligible.is_some() {
                    "waiting"
                } else {
                    "candidate"
                },
                None,
            ),
            Sight::Held(h) => ("follower", Some(h)),
        };
        let holder_text = holder.map(describe).unwrap_or_default();
        if self.status.holder != holder_text {
            self.status.since = holder.map(|_| SystemTime::now());
        }
        self.status.role = role.into();
        self.status.holder = holder_text;
        self.status.token = holder.map(|h| h.token);
        if let Some(why) = not_eligible {
            self.status.detail = why.clone();
        } else if self.status.detail.starts_with("waiting for")
            || self.status.detail.contains("health check is failing")
        {
            self.status.detail.clear();
        }
        self.show();
    }

    fn show(&self) {
        let s = self.status.clone();
        self.ctx.board.update(|r| {
            r.elections.insert(self.cfg.name.clone(), s);
        });
    }

    /// The environment of this election's hooks; `holder` fills the `REWIRE_LEADER_*` part.
    fn hook_env(&self, holder: Option<&Holder>) -> BTreeMap<String, String> {
        let mut env = self.ctx.env.clone();
        env.insert("REWIRE_ELECTION".into(), self.cfg.name.clone());
        env.insert("REWIRE_CANDIDATE_ID".into(), self.source.id.clone());
        if let Some(h) = holder {
            env.extend(leader_env(h));
        }
        env
    }
}

/// `REWIRE_LEADER_ID`, `_ADDRESS`, `_PORT` (empty without a port) and `REWIRE_FENCING_TOKEN`.
fn leader_env(h: &Holder) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("REWIRE_LEADER_ID".to_string(), h.value.id.clone()),
        ("REWIRE_LEADER_ADDRESS".to_string(), h.value.address.clone()),
        (
            "REWIRE_LEADER_PORT".to_string(),
            h.value.port.map(|p| p.to_string()).unwrap_or_default(),
        ),
        ("REWIRE_FENCING_TOKEN".to_string(), h.token.to_string()),
    ])
}

/// `id (address:port)`, the address bracketed when it is IPv6.
fn describe(h: &Holder) -> String {
    let a = &h.value.address;
    match h.value.port {
        Some(p) if a.contains(':') => format!("{} ([{a}]:{p})", h.value.id),
        Some(p) => format!("{} ({a}:{p})", h.value.id),
        None => format!("{} ({a})", h.value.id),
    }
}

fn log_catalog_error(what: &str, e: &CatalogError) {
    if e.is_transient() {
        debug!(error = %e, "{what} failed");
    } else {
        warn!(error = %e, "{what} failed");
    }
}

/// Runs `on_change` for each new holder: never twice at once, always with the latest. A run
/// that fails is tried again (0.5 s, doubling up to 10 s, with jitter) until it succeeds or
/// another holder appears: the app may not be listening yet when the first holder is seen.
async fn run_on_change(
    spec: crate::config::CommandSpec,
    mut changes: watch::Receiver<Option<Holder>>,
    env: BTreeMap<String, String>,
    stop: CancellationToken,
) {
    let mut done: Option<u64> = None;
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
            .expect("500ms <= 10s");
    let mut retry_at: Option<Instant> = None;
    loop {
        let latest = changes.borrow_and_update().clone();
        let due = retry_at.is_none_or(|at| Instant::now() >= at);
        if let Some(h) = latest.filter(|h| done != Some(h.token))
            && due
        {
            let mut env = env.clone();
            env.extend(leader_env(&h));
            info!(leader = %h.value.id, token = h.token, "new leader: running on_change");
            let ok = tokio::select! {
                _ = stop.cancelled() => return,
                r = run_hook("on_change", &spec, &env) => r == Some(0),
            };
            if ok {
                done = Some(h.token);
                retry_at = None;
                backoff.reset();
            } else {
                let delay = backoff.next_delay();
                warn!(retry_in = ?delay, "on_change failed; trying again");
                retry_at = Some(Instant::now() + delay);
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                // A new holder is tried at once.
                retry_at = None;
                backoff.reset();
            }
            _ = async { tokio::time::sleep_until(retry_at.expect("guarded")).await }, if retry_at.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::config::LeaderValueSpec;

    /// An in-memory catalog for one election: a lock, a token counter and a view of it.
    #[derive(Default)]
    struct Fake {
        holder: Mutex<Option<Holder>>,
        tokens: Mutex<u64>,
        seen: Mutex<Option<watch::Sender<Sight>>>,
        /// Renewals never answer (a partition).
        cut: AtomicBool,
        resigned: AtomicU32,
    }

    impl Fake {
        fn tell(&self) {
            let sight = match &*self.holder.lock().unwrap() {
                Some(h) => Sight::Held(h.clone()),
                None => Sight::Vacant,
            };
            if let Some(tx) = &*self.seen.lock().unwrap() {
                tx.send_replace(sight);
            }
        }
    }

    #[async_trait]
    impl Ballot for Fake {
        async fn campaign(&self, value: &LeaderValue) -> Result<Option<u64>, CatalogError> {
            let won = {
                let mut h = self.holder.lock().unwrap();
                if h.is_some() {
                    None
                } else {
                    let mut t = self.tokens.lock().unwrap();
                    *t += 1;
                    *h = Some(Holder {
                        value: value.clone(),
                        token: *t,
                    });
                    Some(*t)
                }
            };
            self.tell();
            Ok(won)
        }
        async fn renew(&self) -> Result<bool, CatalogError> {
            if self.cut.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(self.holder.lock().unwrap().is_some())
        }
        async fn resign(&self) -> Result<(), CatalogError> {
            self.resigned.fetch_add(1, Ordering::SeqCst);
            if !self.cut.load(Ordering::SeqCst) {
                *self.holder.lock().unwrap() = None;
                self.tell();
            }
            Ok(())
        }
        async fn follow(&self, sight: watch::Sender<Sight>, stop: CancellationToken) {
            *self.seen.lock().unwrap() = Some(sight);
            self.tell();
            stop.cancelled().await;
        }
    }

    fn election(gate: Option<Gate>) -> ElectionConfig {
        ElectionConfig {
            name: "primary".into(),
            ttl: Duration::from_secs(3),
            lock_delay: Duration::ZERO,
            value: LeaderValueSpec {
                id: Some("me".into()),
                address: Some(crate::config::AddressSpec::Literal("10.0.0.1".into())),
                port: Some(6379),
            },
            gate,
            on_elected: None,
            on_demoted: None,
            on_change: None,
        }
    }

    struct Harness {
        fake: Arc<Fake>,
        store: Arc<Store>,
        health: health::Registry,
        stop: CancellationToken,
        task: JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    fn start(cfg: ElectionConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(Fake::default());
        let store = Arc::new(Store::new());
        let health = health::Registry::default();
        let ctx = Context {
            catalog: Arc::new(crate::catalog::dir::DirCatalog::new(dir.path())),
            store: store.clone(),
            board: Arc::new(Board::new(1, "c".into(), "dir".into())),
            env: BTreeMap::new(),
            health: health.clone(),
        };
        let candidate = Candidate {
            source: ValueSource::new(&cfg, &[]),
            cfg,
            ballot: fake.clone(),
            ctx,
            status: ElectionStatus::default(),
            published: None,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(candidate.run(stop.clone()));
        Harness {
            fake,
            store,
            health,
            stop,
            task,
            _dir: dir,
        }
    }

    fn view(store: &Store) -> Option<ElectionView> {
        match &store
            .snapshot()
            .get(&Query::Election("primary".into()))?
            .data
        {
            Data::Election(v) => Some(v.clone()),
            _ => None,
        }
    }

    fn is_leader(store: &Store) -> bool {
        view(store).is_some_and(|v| v.is_leader)
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_cut_off_from_the_catalog_demotes_itself_before_its_ttl_ends() {
        let h = start(election(None));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(is_leader(&h.store), "{:?}", view(&h.store));
        assert_eq!(view(&h.store).unwrap().holder.unwrap().token, 1);
        // Renewals work for a while: the term goes on past one ttl.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(is_leader(&h.store));
        // Then the catalog stops answering. The last renewal was sent within ttl/3 before
        // the cut, so the deadline (ttl - margin after it) comes within ttl - margin.
        h.fake.cut.store(true, Ordering::SeqCst);
        // The follower cannot read either.
        if let Some(tx) = &*h.fake.seen.lock().unwrap() {
            tx.send_replace(Sight::Unknown);
        }
        let cut = Instant::now();
        while is_leader(&h.store) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = cut.elapsed();
        let ttl = Duration::from_secs(3);
        assert!(
            took <= ttl - margin(ttl) + Duration::from_millis(20),
            "{took:?}"
        );
        assert!(took >= ttl - margin(ttl) - ttl / 3, "{took:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            h.fake.resigned.load(Ordering::SeqCst) >= 1,
            "it tries to release"
        );
        h.stop.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_healthy_candidate_runs_and_a_failing_holder_steps_down() {
        let h = start(election(Some(Gate::Service("redis".into()))));
        let key = health::service_key("redis");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            view(&h.store),
            Some(ElectionView::default()),
            "vacant, and not run for before the first check"
        );
        h.health.report(&key, true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(is_leader(&h.store));
        // One failure is not enough; two in a row are.
        h.health.report(&key, false);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(is_leader(&h.store));
        h.health.report(&key, false);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!is_leader(&h.store));
        assert_eq!(view(&h.store).unwrap().holder, None, "released");
        // Healthy again: it waits a ttl before running, then wins a new, higher token.
        h.health.report(&key, true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!is_leader(&h.store));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let v = view(&h.store).unwrap();
        assert!(v.is_leader);
        assert_eq!(v.holder.unwrap().token, 2);
        h.stop.cancel();
        h.task.await.unwrap();
        assert!(
            h.fake.holder.lock().unwrap().is_none(),
            "stopping releases the election"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_term_seen_in_the_catalog_demotes_at_once() {
        let h = start(election(None));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(is_leader(&h.store));
        // Someone else holds a newer term (the old one expired while this process slept).
        *h.fake.holder.lock().unwrap() = Some(Holder {
            value: LeaderValue {
                id: "other".into(),
                address: "10.0.0.2".into(),
                port: None,
            },
            token: 9,
        });
        h.fake.cut.store(true, Ordering::SeqCst);
        h.fake.tell();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let v = view(&h.store).unwrap();
        assert!(!v.is_leader);
        assert_eq!(v.holder.unwrap().value.id, "other");
        h.stop.cancel();
        h.task.await.unwrap();
    }
}
