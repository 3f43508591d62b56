//! One candidate: follow the election, run for it, hold a term, step down.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::hooks::{leader_env, run_on_change};
use super::{Context, FAILURES_TO_RESIGN, RESIGN_TIMEOUT, RETRY, ValueSource, margin};
use crate::catalog::CatalogError;
use crate::catalog::election::{Ballot, Sight};
use crate::config::{ElectionConfig, Gate};
use crate::model::{Data, ElectionView, Holder, Query};
use crate::proc::health::{self, Health};
use crate::proc::supervisor::run_hook;
use crate::status::ElectionStatus;

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

pub(super) struct Candidate {
    pub(super) cfg: ElectionConfig,
    pub(super) ballot: Arc<dyn Ballot>,
    pub(super) source: ValueSource,
    pub(super) ctx: Context,
    pub(super) status: ElectionStatus,
    /// What this candidate last put in the store.
    pub(super) published: Option<ElectionView>,
}

/// This process's term.
struct Term {
    holder: Holder,
    promoted: bool,
}

impl Candidate {
    pub(super) async fn run(mut self, stop: CancellationToken) {
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
        let Some((key, what)) = gate_key(self.cfg.gate.as_ref()) else {
            return Ok(());
        };
        match health.get(&key) {
            Some(h) if h.passing => Ok(()),
            Some(_) => Err(format!("{what}'s health check is failing")),
            None => Err(format!("waiting for {what}'s first health check")),
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
        if result.as_ref().is_ok_and(|r| r.is_ok())
            && self.status.detail.starts_with(CAMPAIGN_FAILED)
        {
            self.status.detail.clear();
        }
        match result {
            Ok(Ok(Some(token))) => Some((Holder { value, token }, started)),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                // Retried every RETRY (250 ms): said once at warn (a file in the catalog that
                // must be removed, say), and shown in `rewire status` until it passes.
                let detail = format!("{CAMPAIGN_FAILED}: {e}");
                if self.status.detail == detail {
                    debug!(error = %e, "campaign failed again");
                } else {
                    warn!(error = %e, "cannot run for leader; retrying");
                    self.status.detail = detail;
                    self.show();
                }
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
        self.status.role = "stepping down".into();
        self.show();
        if let Some(spec) = &self.cfg.on_demoted {
            let env = self.hook_env(Some(&term.holder));
            let hook = run_hook("on_demoted", spec, &env);
            // on_demoted runs before the release, so the term is kept (renewed) while it runs:
            // left to expire, a successor was elected seconds into a slow on_demoted on etcd
            // and Consul. Not when the term is already gone (lost, or no renewal got through).
            if matches!(end, End::Lost(_) | End::Deadline) {
                hook.await;
            } else {
                tokio::select! {
                    _ = hook => {}
                    () = renew_while_demoting(self.ballot.clone(), self.cfg.ttl) => {}
                }
            }
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
                    if let Some((key, _)) = gate_key(self.cfg.gate.as_ref()) {
                        let failing = health
                            .borrow_and_update()
                            .get(&key)
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

/// The health registry's key for a gate, and how to name it in messages.
fn gate_key(gate: Option<&Gate>) -> Option<(String, String)> {
    match gate? {
        Gate::Service(name) => Some((health::service_key(name), format!("service {name}"))),
        Gate::Job(name) => Some((health::job_key(name), format!("job {name}"))),
    }
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

/// The start of `rewire status`'s detail while campaigns fail.
const CAMPAIGN_FAILED: &str = "cannot run for leader";

fn log_catalog_error(what: &str, e: &CatalogError) {
    if e.is_transient() {
        debug!(error = %e, "{what} failed");
    } else {
        warn!(error = %e, "{what} failed");
    }
}

/// Renews the term every third of `ttl` while `on_demoted` runs; never returns. A renewal
/// that fails ends the renewing (the catalog expires the term), not the hook.
async fn renew_while_demoting(ballot: Arc<dyn Ballot>, ttl: Duration) {
    let every = ttl / 3;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match tokio::time::timeout(every, ballot.renew()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                debug!("the term ended while on_demoted ran");
                break;
            }
            Ok(Err(e)) => {
                debug!(error = %e, "renewal during on_demoted failed; the catalog expires the term");
                break;
            }
            Err(_) => {
                debug!("renewal during on_demoted timed out; the catalog expires the term");
                break;
            }
        }
    }
    std::future::pending::<()>().await
}
