//! `rewire run`: wires the tasks together and owns the stop sequence.
//!
//! Start: config (already valid) → templates parsed → signal handlers → `[telemetry]`
//! listener, jobs, and what operators look at (status board, control socket, probes: they
//! answer while the catalog is awaited) → catalog preflight → then the tasks: catalog watch,
//! one runner per template group, handlers and tasks, supervisor (registrations, main).
//! Everything is validated before anything binds or spawns.
//!
//! Tasks, by lifetime: the daemon's own (`Daemon::tasks`: catalog watch, wanted-set
//! collector, catalog health on the board, control socket, handler and task runs in flight),
//! each config generation's ([`Generation`]: runners, `[[watch]]` and `[[task]]` loops,
//! swapped on SIGHUP), and the supervisor's (registrars, main). All take a child of the one
//! root token.
//!
//! SIGHUP: see [`reload`].
//!
//! Stop (SIGTERM/SIGINT, or the configured stop signals): every election steps down
//! (on_demoted, release), then the supervisor runs its sequence
//! (deregister, drain, pre_stop, stop main, post_stop) while the runners keep the files
//! current; then a reload of files already in place gets [`STOP_GRACE`] to finish, the
//! root token is cancelled (a round still in progress is dropped, its check killed), every
//! task is awaited for at most [`TAIL`], and the process exits with main's
//! status, or 0. A second stop signal cuts the sequence short (main's group is killed at once)
//! and skips the wait. Nothing waits for a render thread, a command's output pipe or a blocking
//! read: `app::run` gives the runtime half a second to shut down, then the process exits.

mod reload;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::control::{self, Command};
use super::signals::{Incoming, Signals};
use super::{Failure, Outcome, Reloader};
use crate::catalog::{self, Catalog, CatalogError};
use crate::config::Config;
use crate::model::Query;
use crate::proc::election::{self, Elections};
use crate::proc::jobs::Jobs;
use crate::proc::supervisor::{Published, Supervisor};
use crate::proc::{Runs, tasks, watches};
use crate::proc::{health, registrar};
use crate::render::group;
use crate::render::runner::{self, Shared};
use crate::render::template::Engine;
use crate::status::{Board, Jobs as JobsState};
use crate::store::{Health, Store};
use crate::telemetry::{self, Settings, Sources, metrics::Metrics};
use crate::wanted::Wanted;

/// How long a config generation's tasks get to finish after a SIGHUP (a write, check and
/// reload in progress) before the new generation starts anyway.
const GRACE: Duration = Duration::from_secs(10);
/// At stop, how long a reload of files already in place gets to finish.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// At the end of the stop sequence, how long the remaining tasks get after they were cancelled.
const TAIL: Duration = Duration::from_millis(1500);

/// Runs the daemon until a stop signal, or until main exits for good.
pub async fn run(config: Config, reloader: Reloader) -> Result<Outcome, Failure> {
    let catalog = catalog::open(&config.catalog)?;
    let engine = Arc::new(
        Engine::load(&config.templates, config.catalog.backend.name())
            .map_err(Failure::Templates)?,
    );
    crate::render::pipeline::remove_leftovers(&config.templates);
    let mut signals = Signals::new(config.main.as_ref()).map_err(Failure::Signals)?;
    let listener =
        match &config.telemetry {
            Some(t) => Some(telemetry::http::bind(t.listen).await.map_err(|source| {
                Failure::Telemetry {
                    addr: t.listen,
                    source,
                }
            })?),
            None => None,
        };
    // The jobs start before the preflight: the catalog may be a Consul agent that one of
    // them runs. Templates and registrations start after it, as without jobs.
    let health = health::Registry::default();
    let jobs = Jobs::start(&config, crate::command::child_env(&config), health.clone());
    // What operators look at answers from now on, not only once the catalog did (a probe
    // that cannot connect for the 30 s a slow agent takes restarts the container).
    let early = Early::start(&config, &catalog, &jobs, listener);
    let catalog = tokio::select! {
        checked = preflight(catalog, !config.jobs.is_empty()) => match checked {
            Ok(c) => c,
            Err(e) => {
                jobs.stop(None).await;
                early.shut(&config);
                return Err(e.into());
            }
        },
        s = next_stop(&mut signals) => {
            info!(signal = %s, "stopping before the catalog answered");
            early.board.update(|r| r.stopping = true);
            jobs.stop(None).await;
            early.shut(&config);
            return Ok(Outcome::Relayed(0));
        }
    };
    let mut daemon = Daemon::start(config, catalog, engine, reloader, jobs, health, early);
    let exit = daemon.serve(&mut signals).await;
    let status = daemon.stop(exit, &mut signals).await;
    Ok(Outcome::Relayed(status))
}

/// Opens the configured catalog and asks it whether it can be used at all: a refusal (a bad
/// token) stops rewire; an unreachable catalog is retried while rewire runs.
async fn open_and_check(config: &Config) -> Result<Arc<dyn Catalog>, CatalogError> {
    preflight(catalog::open(&config.catalog)?, false).await
}

/// How long the preflight keeps asking an unreachable catalog when there are `[[job]]`s (the
/// catalog may be an agent a job is starting), before going on as without jobs.
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(30);

/// Asks the catalog whether it can be used at all. With `patient` (there are jobs), an
/// unreachable catalog is asked again for up to [`PREFLIGHT_PATIENCE`], so a bad token is
/// still refused when the agent comes up a moment after rewire.
async fn preflight(
    catalog: Arc<dyn Catalog>,
    patient: bool,
) -> Result<Arc<dyn Catalog>, CatalogError> {
    let deadline = tokio::time::Instant::now() + PREFLIGHT_PATIENCE;
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
            .expect("100ms <= 2s");
    loop {
        match catalog.preflight().await {
            Ok(()) => return Ok(catalog),
            Err(e @ CatalogError::Denied { .. }) | Err(e @ CatalogError::Unsupported(_)) => {
                return Err(e);
            }
            Err(e) if patient && tokio::time::Instant::now() < deadline => {
                debug!(error = %e, "catalog not reachable yet; a job may be starting it");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                warn!(error = %e, "catalog not reachable yet; starting anyway and retrying");
                return Ok(catalog);
            }
        }
    }
}

/// What is up before the catalog preflight: the status board, the metrics, `[telemetry]`'s
/// listener and the control socket, so that probes and `rewire status` answer while rewire
/// waits for its catalog (/health 200, /ready 503 with the templates not written yet).
struct Early {
    root: CancellationToken,
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    board: Arc<Board>,
    telemetry: watch::Sender<Settings>,
    control: mpsc::UnboundedReceiver<Command>,
}

impl Early {
    fn start(
        config: &Config,
        catalog: &Arc<dyn Catalog>,
        jobs: &Jobs,
        listener: Option<tokio::net::TcpListener>,
    ) -> Early {
        let root = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        metrics.declare(&config.metrics);
        metrics.declare_templates(&config.templates);
        let tasks = TaskTracker::new();
        let store = Arc::new(Store::new());
        let board = Arc::new(Board::new(
            std::process::id(),
            config.path.display().to_string(),
            catalog.describe(),
        ));
        board.attach_jobs(jobs.subscribe());
        let (telemetry, settings) = watch::channel(Settings::from_config(config));
        if let Some(listener) = listener {
            let sources = Sources {
                metrics: metrics.clone(),
                board: board.clone(),
                store: store.clone(),
                settings,
                started: std::time::SystemTime::now(),
            };
            telemetry::http::serve(listener, sources, root.clone(), &tasks);
        }
        let control = control::server::start(
            &config.control,
            board.clone(),
            metrics.clone(),
            root.clone(),
            &tasks,
        )
        .unwrap_or_else(|e| {
            warn!(socket = %config.control.socket.display(), error = %e, "control socket unavailable; `rewire status` will not reach this process");
            mpsc::unbounded_channel().1
        });
        Early {
            root,
            tasks,
            metrics,
            store,
            board,
            telemetry,
            control,
        }
    }

    /// rewire ends before the catalog answered: the listener stops and the socket goes.
    fn shut(self, config: &Config) {
        self.root.cancel();
        self.tasks.close();
        control::server::cleanup(&config.control.socket);
    }
}

/// Everything that lives as long as one config generation.
struct Generation {
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Generation {
    fn new(parent: &CancellationToken) -> Generation {
        Generation {
            stop: parent.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    async fn shut(self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(grace = ?GRACE, "tasks still running after the grace period");
        }
    }
}

/// The catalog and its watch task.
struct CatalogTask {
    catalog: Arc<dyn Catalog>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// What every config generation is wired to; lives as long as the daemon.
struct Parts {
    /// Parent of every task's token.
    root: CancellationToken,
    store: Arc<Store>,
    board: Arc<Board>,
    metrics: Arc<Metrics>,
    wanted: Wanted,
    main_pid: watch::Receiver<Option<Pid>>,
    writes_allowed: watch::Receiver<bool>,
    /// What `[[watch]]` handlers and `[[task]]`s keep across SIGHUP, and their runs in flight.
    watch_slots: watches::Slots,
    task_slots: tasks::Slots,
    runs: Runs,
    /// The jobs' published state: `[[task]]`s and `[[watch]]`es with a `when` wait on it.
    jobs: watch::Receiver<Arc<JobsState>>,
    /// Rounds with a file in place and its reload not done (the stop sequence waits).
    in_place: runner::InPlace,
}

impl Parts {
    /// Starts the runners, handlers and tasks of one config.
    fn spawn_generation(&self, config: &Config, engine: Arc<Engine>) -> Generation {
        let generation = Generation::new(&self.root);
        let shared = Shared {
            engine,
            store: self.store.clone(),
            wanted: self.wanted.clone(),
            board: self.board.clone(),
            metrics: self.metrics.clone(),
            env: crate::command::child_env(config),
            main_pid: self.main_pid.clone(),
            writes_allowed: self.writes_allowed.clone(),
            abort: self.root.clone(),
            in_place: self.in_place.clone(),
        };
        for group in group::groups(&config.templates) {
            generation.tracker.spawn(runner::run_group(
                group,
                shared.clone(),
                generation.stop.child_token(),
            ));
        }
        tasks::spawn_all(
            config,
            &generation.tracker,
            &generation.stop,
            &self.board,
            &self.metrics,
            &shared.env,
            (&self.runs, &self.task_slots, &self.jobs),
        );
        let handlers = watches::Context {
            store: self.store.clone(),
            wanted: self.wanted.clone(),
            board: self.board.clone(),
            metrics: self.metrics.clone(),
            env: shared.env,
            runs: self.runs.clone(),
            jobs: self.jobs.clone(),
        };
        watches::spawn_all(
            config,
            &generation.tracker,
            &generation.stop,
            &handlers,
            &self.watch_slots,
        );
        generation
    }
}

/// The running daemon.
struct Daemon {
    config: Config,
    reloader: Reloader,
    /// Tasks that live as long as the daemon; awaited at the end of the stop sequence.
    tasks: TaskTracker,
    parts: Parts,
    wanted_rx: watch::Receiver<BTreeSet<Query>>,
    catalog: CatalogTask,
    generation: Generation,
    supervisor: Supervisor,
    elections: Elections,
    /// What the elections are wired to (SIGHUP starts new ones with it).
    election_ctx: election::Context,
    maintenance: watch::Sender<bool>,
    control: mpsc::UnboundedReceiver<Command>,
    /// What the telemetry listener's probes read from the config.
    telemetry: watch::Sender<Settings>,
}

/// How a SIGHUP's reload ended.
enum Reloaded {
    /// Applied, or rejected (the running config stays).
    Done,
    /// Done, and another SIGHUP came meanwhile.
    Again,
    /// A stop signal came while elections stepped down.
    Stop(nix::sys::signal::Signal),
}

impl Daemon {
    fn start(
        config: Config,
        catalog: Arc<dyn Catalog>,
        engine: Arc<Engine>,
        reloader: Reloader,
        jobs: Jobs,
        health: health::Registry,
        early: Early,
    ) -> Daemon {
        let Early {
            root,
            tasks,
            metrics,
            store,
            board,
            telemetry,
            control,
        } = early;
        let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
        tasks.spawn(show_catalog_health(
            board.clone(),
            store.clone(),
            wanted_rx.clone(),
            root.clone(),
        ));
        let (wanted, collector) = Wanted::new(wanted_tx, store.clone());
        tasks.spawn(collector.run(root.clone()));
        let catalog = start_catalog(&tasks, catalog, wanted_rx.clone(), store.clone(), &root);
        let (main_pid_tx, main_pid) = watch::channel::<Option<Pid>>(None);
        let (writes_tx, writes_allowed) = watch::channel(false);
        let (maintenance, maintenance_rx) = watch::channel(false);
        let parts = Parts {
            runs: Runs::new(tasks.clone(), root.clone()),
            watch_slots: watches::Slots::default(),
            task_slots: tasks::Slots::default(),
            root,
            store,
            board,
            metrics,
            wanted,
            main_pid,
            writes_allowed,
            jobs: jobs.subscribe(),
            in_place: runner::InPlace::default(),
        };
        let generation = parts.spawn_generation(&config, engine);
        tasks.spawn(tell_systemd_when_ready(
            parts.board.clone(),
            config.templates.iter().map(|t| t.name.clone()).collect(),
            parts.root.clone(),
        ));
        info!(
            config = %config.path.display(),
            catalog = %catalog.catalog.describe(),
            templates = config.templates.len(),
            "rewire running"
        );
        for w in &config.warnings {
            warn!("{w}");
        }
        let supervisor = Supervisor::start(
            &config,
            registrar::Context {
                catalog: catalog.catalog.clone(),
                board: parts.board.clone(),
                env: crate::command::child_env(&config),
                maintenance: maintenance_rx,
                tasks: TaskTracker::new(),
                metrics: parts.metrics.clone(),
                health: health.clone(),
                jobs: jobs.subscribe(),
                main_runs: config.main.as_ref().is_some_and(|m| m.exec.is_some()),
            },
            Published {
                jobs,
                main_pid: main_pid_tx,
                writes_allowed: writes_tx,
            },
            parts.root.clone(),
        );
        let election_ctx = election::Context {
            catalog: catalog.catalog.clone(),
            store: parts.store.clone(),
            board: parts.board.clone(),
            env: crate::command::child_env(&config),
            health,
        };
        let elections = Elections::start(&config, &election_ctx);
        Daemon {
            config,
            reloader,
            tasks,
            parts,
            wanted_rx,
            catalog,
            generation,
            supervisor,
            elections,
            election_ctx,
            maintenance,
            control,
            telemetry,
        }
    }

    /// Serves signals and control requests until a stop signal (`None`) or until main exits
    /// for good (its status).
    async fn serve(&mut self, signals: &mut Signals) -> Option<u8> {
        loop {
            tokio::select! {
                sig = signals.next() => match sig {
                    Incoming::Stop(s) => {
                        info!(signal = %s, "stopping");
                        return None;
                    }
                    Incoming::Reload => loop {
                        match self.reload(signals).await {
                            Reloaded::Done => break,
                            Reloaded::Again => info!("applying the SIGHUP that came meanwhile"),
                            Reloaded::Stop(s) => {
                                info!(signal = %s, "stopping (the reload is abandoned)");
                                return None;
                            }
                        }
                    },
                    Incoming::Forward(s) => self.supervisor.forward(s),
                    Incoming::Ignored(_) | Incoming::IgnoredRealtime(_) => {}
                },
                Some(cmd) = self.control.recv() => match cmd {
                    Command::Maintenance(on) => {
                        info!(maintenance = on, "maintenance mode");
                        self.maintenance.send_replace(on);
                        self.parts.board.update(|r| r.maintenance = on);
                    }
                },
                status = self.supervisor.exited() => return Some(status),
            }
        }
    }

    /// SIGHUP: applies a new config by difference, or keeps the running one (see [`reload`]).
    /// Signals are answered while elections step down (on_demoted may take long): a stop
    /// signal abandons the reload and the stop begins at once (the step-down goes on beside
    /// it); another SIGHUP is applied after this one.
    async fn reload(&mut self, signals: &mut Signals) -> Reloaded {
        info!("SIGHUP: re-reading the config");
        let (new, engine) = match reload::read(&self.reloader) {
            Ok(read) => read,
            Err(e) => {
                error!("new config rejected, keeping the running one:\n{e}");
                self.note_rejected(&e.to_string());
                return Reloaded::Done;
            }
        };
        crate::render::pipeline::remove_leftovers(&new.templates);
        let changes = reload::Changes::between(&self.config, &new);
        if changes.catalog {
            match open_and_check(&new).await {
                Ok(c) => {
                    info!(catalog = %c.describe(), "catalog settings changed; reconnecting");
                    let label = c.describe();
                    self.parts.board.update(|r| r.catalog = label);
                    self.catalog.stop.cancel();
                    let _ = (&mut self.catalog.handle).await;
                    self.catalog = start_catalog(
                        &self.tasks,
                        c,
                        self.wanted_rx.clone(),
                        self.parts.store.clone(),
                        &self.parts.root,
                    );
                }
                Err(e) => {
                    error!(error = %e, "new config rejected, keeping the running one");
                    self.note_rejected(&e.to_string());
                    return Reloaded::Done;
                }
            }
        }
        // The old runners stop (a round in progress finishes) before the new ones start: two
        // generations must never write the same files.
        let old = std::mem::replace(&mut self.generation, Generation::new(&self.parts.root));
        old.shut().await;
        self.generation = self.parts.spawn_generation(&new, engine);
        self.supervisor.reconfigure(&new);
        self.election_ctx.env = crate::command::child_env(&new);
        let mut again = false;
        {
            let elections = async {
                if changes.catalog {
                    self.election_ctx.catalog = self.catalog.catalog.clone();
                    // A new catalog: the terms held in the old one end.
                    self.elections.step_down().await;
                }
                self.elections.reconfigure(&new, &self.election_ctx).await;
            };
            // Stepping down takes on_demoted's time: signals are still answered meanwhile.
            tokio::pin!(elections);
            loop {
                tokio::select! {
                    () = &mut elections => break,
                    sig = signals.next() => match sig {
                        Incoming::Stop(s) => return Reloaded::Stop(s),
                        Incoming::Forward(s) => self.supervisor.forward(s),
                        Incoming::Reload => again = true,
                        Incoming::Ignored(_) | Incoming::IgnoredRealtime(_) => {}
                    },
                }
            }
        }
        self.parts.metrics.declare(&new.metrics);
        self.parts.metrics.declare_templates(&new.templates);
        self.telemetry.send_replace(Settings::from_config(&new));
        if new.telemetry.as_ref().map(|t| t.listen)
            != self.config.telemetry.as_ref().map(|t| t.listen)
        {
            warn!("[telemetry] listen changed: it applies when rewire restarts");
        }
        if new.control != self.config.control {
            warn!(
                socket = %self.config.control.socket.display(),
                "[control] changed: it applies when rewire restarts; until then the daemon answers on this socket"
            );
        }
        self.parts.board.update(|r| {
            for name in &changes.dropped_templates {
                r.templates.remove(name);
            }
        });
        self.config = new;
        self.parts.board.update(|r| r.rejected_reload = None);
        info!("new config applied");
        if again {
            Reloaded::Again
        } else {
            Reloaded::Done
        }
    }

    /// Puts a rejected reload in the status report: when, and its first problem.
    fn note_rejected(&self, error: &str) {
        let first = error.lines().next().unwrap_or_default();
        let note = format!(
            "at {}, keeping the running config: {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            crate::model::one_line(first, 300)
        );
        self.parts.board.update(|r| r.rejected_reload = Some(note));
    }

    /// The stop sequence; returns the status rewire exits with. `exit` is main's status when
    /// main already exited on its own.
    async fn stop(self, exit: Option<u8>, signals: &mut Signals) -> u8 {
        super::systemd::notify("STOPPING=1");
        // Readiness goes first: a balancer that checks /ready stops sending here while the
        // services are deregistered and drained, which is what the drain is for.
        self.parts.board.update(|r| r.stopping = true);
        // The elections step down (on_demoted, then release) while the supervisor deregisters
        // and drains, so a successor is elected meanwhile; deregistration never waits for a
        // slow hook or a hung agent. Main and the jobs stop once the step-down is done. The
        // runners keep the files current all along. A second stop signal (an impatient
        // Ctrl-C) cuts the drain, the wait for the step-down and stop_timeout short.
        let hurry = CancellationToken::new();
        let stepped_down = CancellationToken::new();
        let status = {
            let elections = self.elections;
            if elections.is_empty() {
                // Nothing to wait for (and nothing to say about it).
                stepped_down.cancel();
            }
            elections.begin_stop();
            let step_down = elections.stop();
            let stopping = self
                .supervisor
                .stop(exit, hurry.clone(), stepped_down.clone());
            tokio::pin!(stopping);
            tokio::pin!(step_down);
            loop {
                tokio::select! {
                    status = &mut stopping => break status,
                    () = &mut step_down, if !stepped_down.is_cancelled() => stepped_down.cancel(),
                    sig = signals.next(), if !hurry.is_cancelled() => {
                        if let Incoming::Stop(s) = sig {
                            warn!(signal = %s, "second stop signal: skipping the drain and killing main now");
                            hurry.cancel();
                        }
                    }
                }
            }
        };
        // A reload of files already in place finishes first, for at most STOP_GRACE (a stop
        // signal cuts it short): killed, it left the new file unloaded, and a restarted rewire
        // found the same bytes there and reloaded nothing, so nginx kept its old config until
        // some other change came. No new round starts meanwhile.
        self.generation.stop.cancel();
        if !hurry.is_cancelled() {
            tokio::select! {
                r = tokio::time::timeout(STOP_GRACE, self.parts.in_place.settled()) => if r.is_err() {
                    warn!(grace = ?STOP_GRACE, "a reload still running after the grace period is killed; its files stay in place and are reloaded at the next change");
                },
                s = next_stop(signals) => {
                    warn!(signal = %s, "stop signal: killing the reload in progress");
                    hurry.cancel();
                }
            }
        }
        // Everything else stops now. Runners drop a round still in progress (a check in
        // flight is killed with its process group; a render thread is left to end at its
        // deadline), watches and handler runs end. Nothing in flight may hold the exit: the
        // wait is bounded, and a stop signal (a second one, or one arriving now) cuts it.
        self.parts.root.cancel();
        self.generation.tracker.close();
        self.tasks.close();
        let rest = async {
            self.generation.tracker.wait().await;
            self.tasks.wait().await;
        };
        if !hurry.is_cancelled() {
            tokio::select! {
                r = tokio::time::timeout(TAIL, rest) => if r.is_err() {
                    warn!(grace = ?TAIL, "tasks still running after the grace period; exiting anyway");
                },
                s = next_stop(signals) => warn!(signal = %s, "stop signal: exiting now"),
            }
        }
        control::server::cleanup(&self.config.control.socket);
        info!(status, "stopped");
        status
    }
}

/// Sends systemd `READY=1` once every template of the first config has been written (at once
/// without templates): a unit ordered after rewire then finds its files in place.
async fn tell_systemd_when_ready(
    board: Arc<Board>,
    templates: Vec<String>,
    stop: CancellationToken,
) {
    let mut ready = board.subscribe_ready();
    while !board.all_ready(&templates) {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = ready.changed() => if changed.is_err() { return },
        }
    }
    info!(templates = templates.len(), "every template written; ready");
    super::systemd::notify("READY=1");
}

/// The next stop signal (others are ignored while stopping).
async fn next_stop(signals: &mut Signals) -> nix::sys::signal::Signal {
    loop {
        if let Incoming::Stop(s) = signals.next().await {
            return s;
        }
    }
}

fn start_catalog(
    tasks: &TaskTracker,
    catalog: Arc<dyn Catalog>,
    wanted: watch::Receiver<BTreeSet<Query>>,
    store: Arc<Store>,
    root: &CancellationToken,
) -> CatalogTask {
    let stop = root.child_token();
    let (c, s) = (catalog.clone(), stop.clone());
    let handle = tasks.spawn(async move { c.watch(wanted, store, s).await });
    CatalogTask {
        catalog,
        stop,
        handle,
    }
}

/// Keeps `rewire status` saying whether the catalog is reachable.
async fn show_catalog_health(
    board: Arc<Board>,
    store: Arc<Store>,
    mut wanted: watch::Receiver<BTreeSet<Query>>,
    stop: CancellationToken,
) {
    let mut snaps = store.subscribe();
    loop {
        let nothing_watched = wanted.borrow_and_update().is_empty();
        let health = match &snaps.borrow_and_update().health {
            // Registration alone never reads the catalog: nothing to connect to.
            Health::Unknown if nothing_watched => {
                "not read (no template or watch uses it)".to_string()
            }
            Health::Unknown => "connecting".to_string(),
            Health::Healthy => "healthy".to_string(),
            Health::Unreachable(e) => format!("unreachable: {e}"),
        };
        board.update(|r| r.catalog_health = health);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = snaps.changed() => if r.is_err() { return },
            r = wanted.changed() => if r.is_err() { return },
        }
    }
}
