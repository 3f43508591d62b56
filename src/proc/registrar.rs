//! Self-registration: each `[[service]]` announces this container in the catalog and keeps the
//! announcement honest with its health command.
//!
//! One task per service, owned by the [`Supervisor`](super::supervisor::Supervisor):
//!
//! - The health command runs every `interval` (with its timeout, in its own process group).
//!   Runs never overlap: one task runs them one after the other.
//! - The service is registered after the first passing run (or at once with `initial_status`),
//!   never before: peers must not route to a container that is still starting. Until then a
//!   failing check runs again after a tenth of `interval` (at least 100 ms): the first check
//!   often runs before the server listens, and waiting a whole interval would hold back every
//!   new backend by that much.
//! - A pass refreshes the TTL with the command's output as notes. A failure or a timeout marks
//!   the registration critical *at once* (ContainerPilot sent nothing and let the TTL lapse).
//! - Any TTL update error (Consul forgot the check, an etcd lease expired, someone deleted the
//!   dir catalog file) means "register again", right away.
//! - The address is resolved again on every run, so a container whose IP changed re-registers
//!   with the new one instead of advertising a stale address (ContainerPilot #264).
//! - Maintenance mode deregisters and pauses the health command; leaving it runs the health
//!   command at once and registers again on a pass.
//!
//! The task never deregisters on stop: the supervisor does that, after every registrar task has
//! finished, so that no heartbeat in flight can re-create an entry it just removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::catalog::{Catalog, CatalogError};
use crate::command::{self, Outcome};
use crate::config::{AddressSpec, ServiceConfig};
use crate::host::{self, AddressError};
use crate::model::{Registration, Status};
use crate::status::{Board, Jobs, ServiceStatus};

/// How long one catalog call may take before the registrar gives up on it for this round.
const CATALOG_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The shortest pause between health checks before the first registration.
const FIRST_PASS_RETRY_MIN: Duration = Duration::from_millis(100);

/// The pause after a failing check before the service was ever registered: a tenth of the
/// interval, at least [`FIRST_PASS_RETRY_MIN`], never more than the interval.
pub fn first_pass_retry(interval: Duration) -> Duration {
    (interval / 10).max(FIRST_PASS_RETRY_MIN).min(interval)
}

/// The registration id: the configured one, else `<name>-<hostname>-<port>`.
pub fn service_id(svc: &ServiceConfig) -> String {
    match &svc.id {
        Some(id) => id.clone(),
        None => {
            let host: String = host::hostname()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("{}-{}-{}", svc.name, host, svc.port)
        }
    }
}

/// The registration for a service at a given address and status.
pub fn registration(svc: &ServiceConfig, address: String, status: Status) -> Registration {
    Registration {
        id: service_id(svc),
        name: svc.name.clone(),
        address,
        port: svc.port,
        tags: svc.tags.clone(),
        meta: svc.meta.clone(),
        ttl: svc.ttl,
        deregister_after: svc.deregister_after,
        status,
    }
}

/// A running registrar task.
pub struct ServiceTask {
    pub config: ServiceConfig,
    pub id: String,
    stop: CancellationToken,
    handle: JoinHandle<Finished>,
}

/// What a registrar task leaves behind.
struct Finished {
    /// What it had registered when it stopped.
    registered: Option<Registration>,
    /// It registered at least once: peers may have routed here.
    ever: bool,
    /// When `rewire maintenance on` took it out of the catalog, if it is still out.
    out_since: Option<tokio::time::Instant>,
}

/// What a stopped registrar says: the registration to remove, and whether the service was
/// ever registered (a drain is pointless for one that never was).
pub struct Stopped {
    pub registration: Registration,
    pub ever_registered: bool,
    /// Out of the catalog since then (maintenance): peers have been draining since.
    pub out_since: Option<tokio::time::Instant>,
}

/// What a registrar task needs from the daemon.
#[derive(Clone)]
pub struct Context {
    pub catalog: Arc<dyn Catalog>,
    pub board: Arc<Board>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    pub env: BTreeMap<String, String>,
    pub maintenance: watch::Receiver<bool>,
    /// The supervisor's tasks: registrar tasks run here, so the stop sequence can wait for
    /// every one of them.
    pub tasks: TaskTracker,
    /// Where each health check's result goes (elections wait on it).
    pub health: super::health::Registry,
    /// The jobs' published state: a service with `job` reports that job's health.
    pub jobs: watch::Receiver<Arc<Jobs>>,
    /// `[main]` runs a process (`exec`): a service without `health` follows it. A `[main]`
    /// without `exec` (a sidecar: only hooks and the stop sequence) runs none to follow.
    pub main_runs: bool,
}

impl ServiceTask {
    /// Starts the registrar for one service. `after` is awaited first: the retirement of an
    /// older task with the same id, so its deregistration cannot remove the new registration.
    pub fn spawn(
        svc: ServiceConfig,
        ctx: Context,
        parent: &CancellationToken,
        after: Option<JoinHandle<()>>,
    ) -> ServiceTask {
        let stop = parent.child_token();
        let id = service_id(&svc);
        let span = info_span!("service", service = %svc.name, id = %id);
        let tasks = ctx.tasks.clone();
        let handle = tasks.spawn(
            {
                let svc = svc.clone();
                let stop = stop.clone();
                async move {
                    if let Some(h) = after {
                        let _ = h.await;
                    }
                    Registrar::new(svc, ctx).run(stop).await
                }
            }
            .instrument(span),
        );
        ServiceTask {
            config: svc,
            id,
            stop,
            handle,
        }
    }

    /// Stops the task (a health command in flight is killed) and returns what it had
    /// registered, or the registration its config describes when it had none, so the caller
    /// can deregister it.
    pub async fn finish(self) -> Stopped {
        self.stop.cancel();
        let fallback = registration(&self.config, String::new(), Status::Critical);
        let mut handle = self.handle;
        // When the task cannot say, it may have registered.
        let unknown = |registration| Stopped {
            registration,
            ever_registered: true,
            out_since: None,
        };
        match tokio::time::timeout(CATALOG_CALL_TIMEOUT, &mut handle).await {
            Ok(Ok(f)) => Stopped {
                registration: f.registered.unwrap_or(fallback),
                ever_registered: f.ever,
                out_since: f.out_since,
            },
            Ok(Err(e)) => {
                warn!(service = %self.config.name, error = %e, "registrar task failed");
                unknown(fallback)
            }
            Err(_) => {
                warn!(service = %self.config.name, "registrar task did not stop in time; aborting it");
                handle.abort();
                unknown(fallback)
            }
        }
    }
}

/// A `[[service]] job = ...`'s health: the job's last health check; without a health
/// command, passing while its process runs.
fn job_health(jobs: &Jobs, job: &str) -> (Status, String) {
    let Some(s) = jobs.get(job) else {
        return (Status::Critical, format!("job {job:?} is unknown"));
    };
    match (s.checked, s.healthy) {
        (true, Some(true)) => (Status::Passing, s.health_note.clone()),
        (true, Some(false)) => (Status::Critical, s.health_note.clone()),
        (true, None) => (
            Status::Critical,
            format!("job {job:?} has no health result yet ({})", s.state),
        ),
        (false, _) if s.pid.is_some() => (Status::Passing, format!("job {job:?} is running")),
        (false, _) => (Status::Critical, format!("job {job:?} is {}", s.state)),
    }
}

/// Removes a registration, logging the outcome. Never fails: the stop sequence goes on.
pub async fn deregister(catalog: &dyn Catalog, board: &Board, reg: &Registration) {
    match tokio::time::timeout(CATALOG_CALL_TIMEOUT, catalog.deregister(reg)).await {
        Ok(Ok(())) => info!(service = %reg.name, id = %reg.id, "deregistered"),
        Ok(Err(e)) => warn!(service = %reg.name, id = %reg.id, error = %e, "cannot deregister"),
        Err(_) => warn!(service = %reg.name, id = %reg.id, "deregistration timed out"),
    }
    board.update(|r| {
        if let Some(s) = r.services.get_mut(&reg.id) {
            s.registered = false;
            s.status = "deregistered".into();
        }
    });
}

struct Registrar {
    svc: ServiceConfig,
    ctx: Context,
    /// What the catalog holds for us, as far as we know.
    registered: Option<Registration>,
    /// The last status reported, to log changes only.
    last_status: Option<Status>,
    /// The last address problem logged, to log it once.
    last_address_error: Option<AddressError>,
    /// Whether the "only loopback" warning was said.
    warned_loopback: bool,
    /// Registration has failed since it last worked: said once at warn, then at debug, so an
    /// outage does not log a line per health interval.
    register_failing: bool,
    /// Registered at least once.
    ever_registered: bool,
    /// When maintenance deregistered it (cleared when it registers again).
    out_since: Option<tokio::time::Instant>,
}

impl Registrar {
    fn new(svc: ServiceConfig, ctx: Context) -> Registrar {
        Registrar {
            svc,
            ctx,
            registered: None,
            last_status: None,
            last_address_error: None,
            warned_loopback: false,
            register_failing: false,
            ever_registered: false,
            out_since: None,
        }
    }

    async fn run(mut self, stop: CancellationToken) -> Finished {
        let mut maintenance = self.ctx.maintenance.clone();
        let mut in_maintenance = *maintenance.borrow_and_update();
        self.board(|s| {
            s.status = "pending".into();
            s.detail = "waiting for the first passing health check".into();
        });
        if !in_maintenance {
            self.register_initial().await;
        }
        // The first tick fires at once, then one every `interval`. Checks run one after the
        // other in this task, so they never overlap; one that overruns its interval delays
        // the next tick (Delay) instead of causing a burst of catch-up checks.
        let mut ticker = tokio::time::interval(self.svc.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Without a health command the status follows a process (its job's, or main's): it
        // is reported as soon as that process exits or starts, not at the next tick (a main
        // crash-looping faster than `interval` stayed passing while down).
        let mut jobs = self.ctx.jobs.clone();
        let mut follows = self.svc.health.is_none();
        let mut last: Option<Status> = None;
        loop {
            if in_maintenance {
                self.enter_maintenance().await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = maintenance.changed() => {
                        if changed.is_err() {
                            // The daemon is going away; wait for the stop.
                            stop.cancelled().await;
                            break;
                        }
                        in_maintenance = *maintenance.borrow_and_update();
                        if !in_maintenance {
                            info!("maintenance off: checking health to register again");
                            self.register_initial().await;
                            ticker.reset_immediately();
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = maintenance.changed() => {
                    if changed.is_err() {
                        // The daemon is going away; wait for the stop.
                        stop.cancelled().await;
                        break;
                    }
                    in_maintenance = *maintenance.borrow_and_update();
                    continue;
                }
                changed = jobs.changed(), if follows => {
                    if changed.is_err() {
                        follows = false;
                        continue;
                    }
                    let (status, _) = self.followed_health(&jobs.borrow_and_update());
                    if last == Some(status) {
                        continue;
                    }
                }
                _ = ticker.tick() => {}
            }
            let (status, note) = match &self.svc.health {
                None => self.followed_health(&self.ctx.jobs.borrow()),
                Some(spec) => {
                    let outcome = tokio::select! {
                        // Dropping the run kills the health command.
                        _ = stop.cancelled() => break,
                        o = command::run(spec, &self.ctx.env, None) => o,
                    };
                    match outcome {
                        Ok(o) => {
                            let status = if o.success() {
                                Status::Passing
                            } else {
                                Status::Critical
                            };
                            (status, health_note(&o, spec.timeout))
                        }
                        Err(e) => (Status::Critical, e.to_string()),
                    }
                }
            };
            self.ctx.health.report(
                &super::health::service_key(&self.svc.name),
                status == Status::Passing,
            );
            self.report(status, &note).await;
            last = Some(status);
            if status != Status::Passing && self.registered.is_none() && !self.ever_registered {
                // Still starting: look again soon rather than a whole interval later.
                ticker.reset_after(first_pass_retry(self.svc.interval));
            }
        }
        self.ctx
            .health
            .clear(&super::health::service_key(&self.svc.name));
        Finished {
            registered: self.registered,
            ever: self.ever_registered,
            out_since: self.out_since,
        }
    }

    /// The status of a service without a health command: its job's, or main's when there is
    /// a main (passing while main runs: not before main started, nor while it waits for its
    /// `when` or crash-loops), else simply passing.
    fn followed_health(&self, jobs: &Jobs) -> (Status, String) {
        match &self.svc.job {
            Some(job) => job_health(jobs, job),
            None if self.ctx.main_runs && jobs.contains_key(crate::config::MAIN_JOB) => {
                job_health(jobs, crate::config::MAIN_JOB)
            }
            None => (Status::Passing, String::new()),
        }
    }

    /// With `initial_status` (or without a health command, a job and a main), registers
    /// before any check.
    async fn register_initial(&mut self) {
        let status = match (self.svc.initial_status, &self.svc.health) {
            (Some(s), _) => s,
            (None, None) if self.svc.job.is_none() && !self.ctx.main_runs => Status::Passing,
            (None, _) => return,
        };
        let Some(address) = self.address() else {
            return;
        };
        let reg = registration(&self.svc, address, status);
        self.register(reg, "").await;
    }

    async fn enter_maintenance(&mut self) {
        self.ctx
            .health
            .clear(&super::health::service_key(&self.svc.name));
        if let Some(reg) = self.registered.take() {
            info!("maintenance on: deregistering; health checks paused");
            deregister(self.ctx.catalog.as_ref(), &self.ctx.board, &reg).await;
            self.out_since = Some(tokio::time::Instant::now());
        }
        self.last_status = None;
        self.board(|s| {
            s.registered = false;
            s.status = "maintenance".into();
            s.detail = "deregistered by `rewire maintenance on`".into();
        });
    }

    /// Reports one health check result to the catalog.
    async fn report(&mut self, status: Status, note: &str) {
        if self.last_status != Some(status) {
            match status {
                Status::Passing => info!("health check passing"),
                // Before the first pass this is a service still starting: worth a note only.
                _ if self.registered.is_none() => {
                    info!(output = %note, "health check not passing yet; not registered")
                }
                _ => warn!(output = %note, "health check failing"),
            }
            self.last_status = Some(status);
        }
        let Some(address) = self.address() else {
            return;
        };
        let reg = registration(&self.svc, address, status);
        let current = match &self.registered {
            None if status != Status::Passing && self.svc.initial_status.is_none() => {
                // Never announced: a container that has not passed yet stays out of the catalog.
                self.board(|s| {
                    s.status = status.as_str().into();
                    s.detail = note.to_string();
                });
                return;
            }
            None => None,
            Some(r) if r.address != reg.address => {
                info!(old = %r.address, new = %reg.address, "address changed; registering again");
                None
            }
            Some(r) => Some(r.clone()),
        };
        match current {
            None => self.register(reg, note).await,
            Some(_) => {
                let r = tokio::time::timeout(
                    CATALOG_CALL_TIMEOUT,
                    self.ctx.catalog.update_ttl(&reg, status, note),
                )
                .await
                .unwrap_or_else(|_| Err(timeout_error(&reg)));
                self.ctx.metrics.ttl_update(&self.svc.name, r.is_ok());
                match r {
                    Ok(()) => {
                        debug!(status = status.as_str(), "TTL updated");
                        self.registered = Some(reg.clone());
                        self.out_since = None;
                        self.board_registered(&reg, note);
                    }
                    Err(e) => {
                        match &e {
                            CatalogError::NotRegistered { .. } => {
                                info!(error = %e, "registration lost; registering again")
                            }
                            _ => warn!(error = %e, "TTL update failed; registering again"),
                        }
                        self.register(reg, note).await;
                    }
                }
            }
        }
    }

    /// Registers (again) and sets the TTL with the note.
    async fn register(&mut self, reg: Registration, note: &str) {
        let catalog = self.ctx.catalog.clone();
        let result = tokio::time::timeout(CATALOG_CALL_TIMEOUT, async {
            catalog.register(&reg).await?;
            if !note.is_empty() || reg.status != Status::Passing {
                catalog.update_ttl(&reg, reg.status, note).await?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(timeout_error(&reg)));
        match result {
            Ok(()) => {
                self.register_failing = false;
                self.ever_registered = true;
                info!(address = %reg.address, port = reg.port, status = reg.status.as_str(), "registered");
                self.registered = Some(reg.clone());
                self.out_since = None;
                self.board_registered(&reg, note);
            }
            Err(e) => {
                if self.register_failing {
                    debug!(error = %e, "cannot register; trying again at the next check");
                } else {
                    warn!(error = %e, "cannot register; trying again at each check (said once until it works)");
                }
                self.register_failing = true;
                // Whatever the catalog holds now, the next round registers again.
                self.registered = None;
                self.board(|s| {
                    s.registered = false;
                    s.detail = format!("cannot register: {e}");
                });
            }
        }
    }

    fn address(&mut self) -> Option<String> {
        match host::resolve_address(&self.svc.address) {
            Ok(a) => {
                if self.last_address_error.take().is_some() {
                    info!(address = %a, "address resolved");
                }
                if self.svc.address == AddressSpec::Auto
                    && a == "127.0.0.1"
                    && !self.warned_loopback
                {
                    self.warned_loopback = true;
                    warn!(
                        "no non-loopback IPv4 address found; registering 127.0.0.1 (set `address` or `interface`)"
                    );
                }
                Some(a)
            }
            Err(e) => {
                if self.last_address_error.as_ref() != Some(&e) {
                    warn!(error = %e, "cannot resolve the service address; not registering");
                    self.last_address_error = Some(e.clone());
                }
                self.board(|s| s.detail = e.to_string());
                None
            }
        }
    }

    fn board_registered(&self, reg: &Registration, note: &str) {
        self.board(|s| {
            s.address = reg.address.clone();
            s.status = reg.status.as_str().into();
            s.registered = true;
            s.detail = note.to_string();
        });
    }

    fn board(&self, f: impl FnOnce(&mut ServiceStatus)) {
        let id = service_id(&self.svc);
        self.ctx.board.update(|r| {
            let s = r
                .services
                .entry(id.clone())
                .or_insert_with(|| ServiceStatus {
                    id: id.clone(),
                    name: self.svc.name.clone(),
                    port: self.svc.port,
                    ..ServiceStatus::default()
                });
            f(s);
        });
    }
}

fn timeout_error(reg: &Registration) -> CatalogError {
    CatalogError::Unreachable {
        backend: "catalog".into(),
        detail: format!(
            "no answer within {} for {}",
            humantime::format_duration(CATALOG_CALL_TIMEOUT),
            reg.id
        ),
    }
}

/// The note sent with a TTL update: the command's output, or how it failed.
fn health_note(o: &Outcome, timeout: Duration) -> String {
    if o.success() {
        o.output.clone()
    } else if o.output.is_empty() {
        format!("health check {}", o.describe(timeout))
    } else {
        format!("health check {}: {}", o.describe(timeout), o.output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u16) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            id: None,
            port,
            address: AddressSpec::Literal("10.1.2.3".into()),
            tags: vec![],
            meta: BTreeMap::new(),
            health: None,
            interval: Duration::from_secs(10),
            ttl: Duration::from_secs(25),
            initial_status: None,
            deregister_after: Duration::from_secs(600),
            job: None,
        }
    }

    #[test]
    fn a_failing_first_check_is_retried_after_a_tenth_of_the_interval() {
        let ms = Duration::from_millis;
        assert_eq!(first_pass_retry(ms(2_000)), ms(200));
        assert_eq!(
            first_pass_retry(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(first_pass_retry(ms(500)), ms(100), "at least 100 ms");
        assert_eq!(
            first_pass_retry(ms(50)),
            ms(50),
            "never more than the interval"
        );
    }

    #[test]
    fn default_id_is_name_host_port() {
        let id = service_id(&svc("web", 8080));
        assert!(id.starts_with("web-"), "{id}");
        assert!(id.ends_with("-8080"), "{id}");
        assert!(crate::model::check_name(&id).is_ok(), "{id}");
        let mut s = svc("web", 8080);
        s.id = Some("custom".into());
        assert_eq!(service_id(&s), "custom");
    }
}
