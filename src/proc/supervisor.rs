//! The container's lifecycle: registrations, `pre_start` → main → `pre_stop` / `post_stop`.
//!
//! Verbs follow systemctl: start, reconfigure, stop (signal, grace, kill).
//!
//! Start: one registrar task per `[[service]]` (see [`registrar`](super::registrar::ServiceTask)); in
//! parallel the main task runs `pre_start` to completion (a non-zero exit ends rewire with
//! that status), allows the template runners to write (`writes_allowed`: a `pre_start` of
//! `rewire render` writes the same files, and must not race with them), waits until every
//! template was written once (or `wait_for_templates` passed), then starts `exec`. Main inherits rewire's stdout and stderr (nginx logs there), gets
//! `/dev/null` as stdin and runs in its own process group, so a Ctrl-C on the terminal reaches
//! rewire only and the stop sequence decides what main gets. Its PID is published for
//! `reload = { signal = "HUP", target = "main" }` and for forwarded signals. When it exits, the
//! restart policy decides: `never`, `on-failure` (non-zero or killed) or `always`, with a capped
//! exponential backoff (reset after main ran for a minute).
//!
//! Signals: the daemon owns the signal streams. Stop signals (TERM and INT by default) call
//! [`Supervisor::stop`]; `forward_signals` (USR1 and USR2 by default; not WINCH, which nginx
//! reads as "stop the workers") reach main's PID through [`Supervisor::forward`]; HUP re-reads
//! the config and never reaches main unless configured.
//!
//! Main is also the node `main` of the job graph ([`jobs`](super::jobs)): its `when` gates
//! `pre_start` and the process, and it publishes `started`, `exited`, `succeeded`, `failed`.
//!
//! Stop, in this order (a tested guarantee): no more restarts (of main or any job); deregister
//! every service (peers stop routing here; at most 2 s, a catalog that does not answer is
//! down); wait `drain` (skipped when no service was ever registered: no peer routes here);
//! then the job graph in reverse, main's turn being: `pre_stop`; `stop_signal` to main's PID;
//! SIGKILL to its process group after `stop_timeout`; `post_stop`. Exit with main's status
//! (128+N when signal N killed it), 0 without main. When main exited on its own, the
//! registrations go and `post_stop` runs, but there is nothing to drain or stop. Each step is
//! bounded (hooks by their `timeout`), so the whole takes at most drain + `pre_stop`'s and
//! `post_stop`'s timeouts + `stop_timeout` + a few seconds, and with `[[job]]`s the sum of the
//! turns along the longest dependency chain (see [`jobs`](super::jobs)); a second stop signal
//! cuts it to the kill of every group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::jobs::restarts::{Next, Restarts};
use super::jobs::{Bus, Jobs, MainTurn, bus};
use super::leftovers;
use super::registrar::{self, ServiceTask};
use crate::command::{self, RunStatus};
use crate::config::{CommandSpec, Config, Event, JobConfig, MAIN_JOB, MainConfig, Program};
use crate::status::{Board, MainStatus};

/// Exit status when a hook or main could not be started at all (as a shell says it).
pub const CANNOT_START: u8 = 127;
/// Exit status when `pre_start` timed out (as timeout(1) says it).
pub const TIMED_OUT: u8 = 124;

/// Exit status when main never starts because the job its `when` waits for is done for good.
pub const DEPENDENCY_GONE: u8 = 1;

/// After SIGKILL, how long to wait for main to be gone before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the stop sequence waits for the catalog to confirm the deregistrations.
const DEREGISTER_GRACE: Duration = Duration::from_secs(2);
/// How long the stop sequence waits for its own tasks at the end.
const TASKS_GRACE: Duration = Duration::from_secs(1);

/// The exit status rewire uses for a finished command: its code, or 128+N for signal N.
pub fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Exited(c) => (c & 0xff) as u8,
        RunStatus::Signalled(s) => 128u8.saturating_add((s & 0x7f) as u8),
        RunStatus::TimedOut => TIMED_OUT,
    }
}

/// What the supervisor tells the rest of the daemon, and the jobs it drives.
pub struct Published {
    /// The `[[job]]`s, started before the catalog preflight; main is a node of their graph,
    /// and the stop sequence stops them all.
    pub jobs: Jobs,
    /// Main's pid while it runs (signal reloads, forwarded signals).
    pub main_pid: watch::Sender<Option<Pid>>,
    /// True once `pre_start` has exited (at once without one): the template runners write
    /// only from then on.
    pub writes_allowed: watch::Sender<bool>,
}

pub struct Supervisor {
    services: Vec<ServiceTask>,
    /// Deregistrations of services a SIGHUP removed, still in flight.
    retired: Vec<JoinHandle<()>>,
    ctx: registrar::Context,
    /// Parent of every registrar task's token.
    root: CancellationToken,
    main_cfg: Option<MainConfig>,
    main: Option<MainHandle>,
    /// `[[job]]`s and main's node in the graph; taken by the stop sequence.
    jobs: Option<Jobs>,
    /// The `[[job]]`s as started (a SIGHUP does not restart them).
    job_cfgs: Vec<JobConfig>,
}

/// The main task, seen from the supervisor.
struct MainHandle {
    /// Cancelled at the start of the stop sequence: no (re)start from then on.
    stopping: CancellationToken,
    pid: watch::Receiver<Option<Pid>>,
    /// Main's final status, once it exited for good (or `pre_start` failed).
    exit: watch::Receiver<Option<u8>>,
    /// Set once main was started (`post_stop` runs only after a main that ran).
    ran: Arc<AtomicBool>,
    /// The pid of main's last start (0 before the first): its process group's id, for what
    /// main leaves there when it exits on its own.
    last_pid: Arc<AtomicI32>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Starts the registrars and main; `ctx` is what the registrars share (its `tasks` is
    /// this supervisor's tracker).
    pub fn start(
        config: &Config,
        ctx: registrar::Context,
        published: Published,
        root: CancellationToken,
    ) -> Supervisor {
        let board = ctx.board.clone();
        let env = ctx.env.clone();
        let Published {
            jobs,
            main_pid,
            writes_allowed,
        } = published;
        if config.main.as_ref().is_none_or(|m| m.pre_start.is_none()) {
            writes_allowed.send_replace(true);
        }
        let services = config
            .services
            .iter()
            .map(|svc| ServiceTask::spawn(svc.clone(), ctx.clone(), &root, None))
            .collect();
        let main = config.main.as_ref().map(|m| {
            let stopping = CancellationToken::new();
            let pid = main_pid.subscribe();
            let (exit_tx, exit) = watch::channel(None);
            let ran = Arc::new(AtomicBool::new(false));
            let last_pid = Arc::new(AtomicI32::new(0));
            let templates: Vec<String> = config.templates.iter().map(|t| t.name.clone()).collect();
            let task = ctx.tasks.spawn(
                MainTask {
                    cfg: m.clone(),
                    templates,
                    board: board.clone(),
                    env: env.clone(),
                    pid: main_pid,
                    exit: exit_tx,
                    ran: ran.clone(),
                    last_pid: last_pid.clone(),
                    stopping: stopping.clone(),
                    writes_allowed,
                    bus: jobs.bus().clone(),
                }
                .run()
                .instrument(info_span!("main")),
            );
            MainHandle {
                stopping,
                pid,
                exit,
                ran,
                last_pid,
                task,
            }
        });
        Supervisor {
            services,
            retired: Vec::new(),
            ctx,
            root,
            main_cfg: config.main.clone(),
            main,
            job_cfgs: jobs.configs(),
            jobs: Some(jobs),
        }
    }

    /// Passes a signal on to main, if it is running.
    pub fn forward(&mut self, sig: Signal) {
        match self.main_pid() {
            Some(pid) => match kill(pid, sig) {
                Ok(()) => info!(signal = %sig, pid = pid.as_raw(), "forwarded to main"),
                Err(e) => {
                    warn!(signal = %sig, pid = pid.as_raw(), error = %e, "cannot forward to main")
                }
            },
            None => info!(signal = %sig, "main is not running; signal dropped"),
        }
    }

    /// Applies a new (valid) config: registrations are reconciled (unchanged ones are left
    /// alone, removed ones deregistered, changed ones replaced), the stop sequence takes the
    /// new `[main]` settings. The main process is not restarted.
    pub fn reconfigure(&mut self, config: &Config) {
        // New registrar tasks and the hooks see the new services' addresses.
        self.ctx.env = crate::command::child_env(config);
        let mut old = std::mem::take(&mut self.services);
        let mut next = Vec::new();
        for svc in &config.services {
            if let Some(pos) = old.iter().position(|t| t.config == *svc) {
                next.push(old.remove(pos));
                continue;
            }
            let id = registrar::service_id(svc);
            // A changed service with the same id: the old registration must be gone before
            // the new task registers, or its deregistration would remove the new entry.
            let after = old
                .iter()
                .position(|t| t.id == id)
                .map(|pos| self.retire(old.remove(pos)));
            info!(service = %svc.name, id = %id, "registration added or changed");
            next.push(ServiceTask::spawn(
                svc.clone(),
                self.ctx.clone(),
                &self.root,
                after,
            ));
        }
        for t in old {
            info!(service = %t.config.name, id = %t.id, "registration removed from the config");
            let h = self.retire(t);
            self.retired.push(h);
        }
        self.services = next;
        let ids: Vec<String> = self.services.iter().map(|t| t.id.clone()).collect();
        self.ctx
            .board
            .update(|r| r.services.retain(|id, _| ids.contains(id)));

        let exec_of = |m: &Option<MainConfig>| m.as_ref().and_then(|m| m.exec.clone());
        if exec_of(&self.main_cfg) != exec_of(&config.main) {
            warn!(
                "[main] exec changed; the main process is not restarted by a reload: restart rewire to apply it"
            );
        }
        if self.job_cfgs != config.jobs {
            warn!(
                "[[job]]s changed; running jobs are not restarted by a reload: restart rewire to apply it"
            );
        }
        if self.main_cfg.is_some() && config.main.is_some() {
            self.main_cfg = config.main.clone();
        }
    }

    fn retire(&self, task: ServiceTask) -> JoinHandle<()> {
        let catalog = self.ctx.catalog.clone();
        let board = self.ctx.board.clone();
        self.ctx.tasks.spawn(async move {
            let reg = task.finish().await.registration;
            registrar::deregister(catalog.as_ref(), &board, &reg).await;
            board.update(|r| {
                r.services.remove(&reg.id);
            });
        })
    }

    /// Resolves when main has exited for good (or `pre_start` failed) with the status rewire
    /// should exit with. Pending forever when there is no main process.
    pub async fn exited(&mut self) -> u8 {
        let Some(m) = self.main.as_mut() else {
            return std::future::pending().await;
        };
        match m.exit.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(0),
            // The main task ended without a status: there was no `exec` to run.
            Err(_) => std::future::pending().await,
        }
    }

    fn main_pid(&self) -> Option<Pid> {
        self.main.as_ref().and_then(|m| *m.pid.borrow())
    }

    /// The stop sequence; returns the status rewire exits with. `exit` is main's status when
    /// main already exited on its own.
    /// `hurry` (a second stop signal) cuts short the drain and `pre_stop`, kills main's process
    /// group without waiting for `stop_timeout`, and skips `post_stop`: the caller is told "get
    /// out now". The deregistration (bounded by DEREGISTER_GRACE) finishes all the same.
    /// `stepped_down` is cancelled once the elections have stepped down: main and the jobs
    /// are not stopped before that (or before `hurry`).
    pub async fn stop(
        mut self,
        exit: Option<u8>,
        hurry: CancellationToken,
        stepped_down: CancellationToken,
    ) -> u8 {
        if let Some(m) = &self.main {
            m.stopping.cancel();
        }
        if let Some(j) = &self.jobs {
            // No job starts or restarts from now on (stop hooks aside).
            j.halt();
        }
        self.set_main_state("stopping");

        // 1. Deregister first, so peers stop routing here before anything else happens.
        // Every registrar task stops first, so no heartbeat in flight re-creates an entry. A
        // catalog that does not answer within DEREGISTER_GRACE is down: the entries expire
        // with their TTL, and the stop goes on (it is bounded, see the module docs).
        let tasks = std::mem::take(&mut self.services);
        let retired = std::mem::take(&mut self.retired);
        let catalog = self.ctx.catalog.clone();
        let board = self.ctx.board.clone();
        let deregistration = async {
            let stopped =
                futures_util::future::join_all(tasks.into_iter().map(ServiceTask::finish)).await;
            futures_util::future::join_all(
                stopped
                    .iter()
                    .map(|s| registrar::deregister(catalog.as_ref(), &board, &s.registration)),
            )
            .await;
            for h in retired {
                let _ = h.await;
            }
            // No peer routes to services that were never registered: nothing to drain.
            // (Without any [[service]] the drain is the user's own pause and stays.)
            let needed = stopped.is_empty() || stopped.iter().any(|s| s.ever_registered);
            // Every service that was registered is out since `rewire maintenance on`: peers
            // have been draining since the last of them went.
            let routed = stopped.iter().filter(|s| s.ever_registered);
            let out_since = if routed.clone().all(|s| s.out_since.is_some()) {
                routed.filter_map(|s| s.out_since).max()
            } else {
                None
            };
            (needed, out_since)
        };
        // A deregistration that was not confirmed drains anyway: peers may still route here.
        // A second stop signal does not cut it short: it is bounded by DEREGISTER_GRACE
        // already, and without it peers keep routing to a container that is gone for up to a
        // TTL (a passing check, refreshed a moment ago).
        let (drain_needed, out_since) = tokio::time::timeout(DEREGISTER_GRACE, deregistration)
            .await
            .unwrap_or_else(|_| {
                warn!(grace = ?DEREGISTER_GRACE, "the catalog did not confirm every deregistration in time; going on (the entries expire with their TTL)");
                (true, None)
            });

        let cfg = self.main_cfg.clone();
        // 2. Drain: peers notice the deregistration and finish their requests.
        if exit.is_none()
            && let Some(cfg) = &cfg
            && !cfg.drain.is_zero()
        {
            // Whole milliseconds: the log line says "2s 345ms", not nanoseconds.
            let left = out_since.map_or(cfg.drain, |t| {
                let left = cfg.drain.saturating_sub(t.elapsed());
                Duration::from_millis(left.as_millis() as u64)
            });
            if !drain_needed {
                info!("no service was ever registered: skipping the drain");
            } else if left.is_zero() {
                info!(
                    "every service has been out of the catalog (maintenance) for longer than the drain: skipping it"
                );
            } else {
                info!(drain = %humantime::format_duration(left), "draining");
                tokio::select! {
                    _ = tokio::time::sleep(left) => {}
                    _ = hurry.cancelled() => {}
                }
            }
        }

        // The elections step down meanwhile (on_demoted may need main running): main and the
        // jobs stop once that is done, or at a second stop signal.
        if !stepped_down.is_cancelled() {
            let before = if self.main.is_some() {
                " before stopping main"
            } else {
                ""
            };
            info!("waiting for the elections to step down (on_demoted, release){before}");
            tokio::select! {
                _ = stepped_down.cancelled() => {}
                _ = hurry.cancelled() => {}
            }
        }

        // 3. The jobs, the graph in reverse: main's turn comes once every job waiting for
        // one of its events has stopped, and before the jobs it waits for (its Consul agent).
        let mut code = exit;
        let main = self.main.take();
        let env = self.ctx.env.clone();
        {
            let main_turn: Option<MainTurn<'_>> = match (main, &cfg) {
                (Some(m), Some(cfg)) => {
                    Some(Box::pin(main_turn(m, cfg, &env, exit, &hurry, &mut code)))
                }
                _ => None,
            };
            if let Some(jobs) = self.jobs.take() {
                let jobs_hurry = jobs.hurry_token();
                let stopping = jobs.stop(main_turn);
                tokio::pin!(stopping);
                tokio::select! {
                    _ = &mut stopping => {}
                    _ = hurry.cancelled() => {
                        jobs_hurry.cancel();
                        stopping.await;
                    }
                }
            } else if let Some(turn) = main_turn {
                turn.await;
            }
        }
        self.set_main_state("stopped");
        // Every task this supervisor started has been awaited above (registrars, retirements,
        // main), or given up on with a warning; the tracker confirms it, briefly.
        self.ctx.tasks.close();
        if tokio::time::timeout(TASKS_GRACE, self.ctx.tasks.wait())
            .await
            .is_err()
        {
            warn!("supervisor tasks still running at the end of the stop sequence");
        }
        code.unwrap_or(0)
    }

    fn set_main_state(&self, state: &str) {
        if self.main_cfg.is_some() {
            self.ctx.board.update(|r| {
                if let Some(m) = r.main.as_mut() {
                    m.state = state.to_string();
                }
            });
        }
    }
}

/// Main's turn in the stop sequence: `pre_stop`, `stop_signal` (SIGKILL to its group after
/// `stop_timeout`), wait for the main task, `post_stop`. When main already exited on its own
/// (`exit`), only `post_stop` is left. Writes main's final status to `code`.
async fn main_turn(
    mut m: MainHandle,
    cfg: &MainConfig,
    env: &BTreeMap<String, String>,
    exit: Option<u8>,
    hurry: &CancellationToken,
    code: &mut Option<u8>,
) {
    if exit.is_none() {
        // pre_stop, while main still runs; not when it never ran (stopped during `pre_start`
        // or while waiting for its `when`): a hook meant for the running app ("nginx -s quit",
        // "leave the cluster") has nothing to act on, as post_stop has nothing to clean up.
        if let Some(hook) = &cfg.pre_stop
            && !hurry.is_cancelled()
        {
            if !m.ran.load(Ordering::Acquire) {
                info!("pre_stop skipped: main never started");
            } else {
                tokio::select! {
                    _ = run_hook("pre_stop", hook, env) => {}
                    _ = hurry.cancelled() => warn!("pre_stop cut short"),
                }
            }
        }
        stop_main(&mut m, cfg, hurry).await;
    }
    // What main's last run left in its process group (a shell wrapper's background children)
    // goes too, as after a stop signal: also when main exited on its own (ending rewire), or
    // rewire stops while main waits to restart. Without PID 1 or --subreaper nothing else
    // would stop it. (Nothing to do when the group is empty, the usual case.)
    leftovers::stop_last_run(
        &m.last_pid,
        cfg.stop_signal,
        "main",
        hurry,
        cfg.stop_timeout,
    )
    .await;
    // Main is gone (or never started): wait for its task, e.g. a pre_start being killed.
    if let Some(c) = *m.exit.borrow() {
        *code = Some(c);
    }
    if tokio::time::timeout(KILL_GRACE, m.task).await.is_err() {
        warn!("the main task did not finish");
    }
    if let Some(c) = *m.exit.borrow() {
        *code = Some(c);
    }
    // post_stop, unless a second stop signal asked to be gone now, or main never ran (stopped
    // during `pre_start` or while waiting for its `when`): there is nothing to clean up after.
    if let Some(hook) = &cfg.post_stop {
        if !m.ran.load(Ordering::Acquire) {
            info!("post_stop skipped: main never started");
        } else if hurry.is_cancelled() {
            warn!("post_stop skipped (second stop signal)");
        } else {
            tokio::select! {
                _ = run_hook("post_stop", hook, env) => {}
                _ = hurry.cancelled() => warn!("post_stop cut short (second stop signal)"),
            }
        }
    }
}

async fn stop_main(m: &mut MainHandle, cfg: &MainConfig, hurry: &CancellationToken) {
    // A stop signal may come while main is being started: the run loop checked `stopping`
    // just before, and its pid is not published yet. Wait for that start to settle (the pid
    // shows up, or main's task ends because it saw `stopping`); returning at once left the
    // main it started a moment later unsignalled, and rewire exited 0 instead of main's 143.
    let settle = tokio::time::Instant::now() + START_SETTLE;
    let pid = loop {
        if let Some(pid) = *m.pid.borrow() {
            break pid;
        }
        if m.task.is_finished() || tokio::time::Instant::now() >= settle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    info!(pid = pid.as_raw(), signal = %cfg.stop_signal, "stopping main");
    if let Err(e) = kill(pid, cfg.stop_signal) {
        warn!(pid = pid.as_raw(), error = %e, "cannot signal main");
    }
    let deadline = tokio::time::Instant::now() + cfg.stop_timeout;
    let exited = tokio::select! {
        r = tokio::time::timeout_at(deadline, m.exit.wait_for(Option::is_some)) => r.is_ok(),
        _ = hurry.cancelled() => false,
    };
    if exited {
        leftovers::stop(pid, cfg.stop_signal, "main", hurry, deadline).await;
        return;
    }
    if hurry.is_cancelled() {
        warn!(
            pid = pid.as_raw(),
            "killing main's process group now (second stop signal)"
        );
    } else {
        warn!(
            pid = pid.as_raw(),
            stop_timeout = %humantime::format_duration(cfg.stop_timeout),
            "main did not stop in time; killing its process group"
        );
    }
    // Main leads its own process group (it was started with pgid 0), so the group id is
    // its pid; the group goes, workers included.
    if let Err(e) = killpg(pid, Signal::SIGKILL) {
        debug!(error = %e, "killpg");
        let _ = kill(pid, Signal::SIGKILL);
    }
    if tokio::time::timeout(KILL_GRACE, m.exit.wait_for(Option::is_some))
        .await
        .is_err()
    {
        error!(pid = pid.as_raw(), "main is still there after SIGKILL");
    }
}

/// How long the stop sequence waits for a start of main already under way (see `stop_main`).
const START_SETTLE: Duration = Duration::from_secs(2);

/// Runs a hook to completion, its output going to the log under its name.
pub(super) async fn run_hook(
    what: &str,
    spec: &CommandSpec,
    env: &BTreeMap<String, String>,
) -> Option<u8> {
    info!(hook = what, command = %spec.program.name(), "running");
    match command::run(spec, env, None).await {
        Ok(o) => {
            if !o.output.is_empty() {
                info!(hook = what, command = %spec.program.name(), output = %o.output, "hook output");
            }
            if o.success() {
                Some(0)
            } else {
                warn!(hook = what, command = %spec.program.name(), "{}", o.describe(spec.timeout));
                Some(exit_code(o.status))
            }
        }
        Err(e) => {
            error!(hook = what, "{e}");
            None
        }
    }
}

/// Owns `pre_start` and the main process.
struct MainTask {
    cfg: MainConfig,
    templates: Vec<String>,
    board: Arc<Board>,
    env: BTreeMap<String, String>,
    pid: watch::Sender<Option<Pid>>,
    exit: watch::Sender<Option<u8>>,
    ran: Arc<AtomicBool>,
    last_pid: Arc<AtomicI32>,
    stopping: CancellationToken,
    /// Set once `pre_start` has exited successfully (at once when there is none).
    writes_allowed: watch::Sender<bool>,
    /// Main's node in the job graph: its `when`, its events.
    bus: Bus,
}

impl MainTask {
    async fn run(self) {
        self.state("starting", None);
        if !self.wait_for_when().await {
            return;
        }
        if let Some(pre) = &self.cfg.pre_start {
            self.state("pre_start", None);
            let outcome = tokio::select! {
                // Dropping the run kills pre_start.
                _ = self.stopping.cancelled() => {
                    info!("stopped during pre_start");
                    return;
                }
                o = run_hook("pre_start", pre, &self.env) => o,
            };
            match outcome {
                Some(0) => {
                    info!("pre_start done");
                    self.writes_allowed.send_replace(true);
                }
                Some(code) => {
                    error!(status = code, "pre_start failed; not starting main");
                    self.finish(code, "pre_start failed");
                    return;
                }
                None => {
                    self.finish(CANNOT_START, "pre_start could not be started");
                    return;
                }
            }
        }
        let Some(exec) = self.cfg.exec.clone() else {
            self.board.update(|r| r.main = None);
            return;
        };
        if !self.wait_for_templates().await {
            return;
        }
        let mut restarts = Restarts::new(self.cfg.restart, self.cfg.restart_limit);
        loop {
            if self.stopping.is_cancelled() {
                return;
            }
            let started = Instant::now();
            let code = self.run_once(&exec).await;
            if self.stopping.is_cancelled() {
                self.finish(code, "exited");
                return;
            }
            let delay = match restarts.after_exit(code == 0, started) {
                Next::Restart(delay) => delay,
                Next::Done => {
                    self.finish(code, "exited");
                    return;
                }
                Next::GaveUp(n) => {
                    error!(
                        status = code,
                        "main failed {n} restarts in a row; giving up (restart_limit)"
                    );
                    self.finish(code, "gave up after restart_limit restarts");
                    return;
                }
            };
            // A restart is decided: say so before the cleanup below, which may take up to
            // stop_timeout (/health fails only for a main that ended for good).
            self.board.update(|r| {
                if let Some(m) = r.main.as_mut() {
                    m.state = "restarting".into();
                }
            });
            // What the run that ended left in its group goes first: a worker still holding
            // the port would make every restart fail ("address in use"), and would outlive
            // rewire.
            leftovers::stop_last_run(
                &self.last_pid,
                self.cfg.stop_signal,
                "main",
                &self.stopping,
                self.cfg.stop_timeout,
            )
            .await;
            let total = restarts.total;
            info!(status = code, delay = ?delay, restarts = total, "restarting main");
            self.board.update(|r| {
                if let Some(m) = r.main.as_mut() {
                    m.state = "restarting".into();
                    m.restarts = total;
                }
            });
            self.bus.update(MAIN_JOB, |s| {
                s.state = "restarting".into();
                s.restarts = total;
            });
            tokio::select! {
                _ = self.stopping.cancelled() => {
                    self.finish(code, "exited");
                    return;
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Waits for `[main] when`. False when main must not start: rewire is stopping, the wait
    /// timed out (main then finishes with [`TIMED_OUT`], naming what it waited for), or the job
    /// it waits for is done for good without the event (its `restart_limit` reached, its own
    /// `when` timed out): main then finishes with [`DEPENDENCY_GONE`], so that the container
    /// ends and its scheduler can start it again, rather than wait forever looking alive.
    async fn wait_for_when(&self) -> bool {
        let Some(when) = &self.cfg.when else {
            self.bus.update(MAIN_JOB, |s| s.state = "starting".into());
            return true;
        };
        self.state(&format!("waiting for {when}"), None);
        self.bus.update(MAIN_JOB, |s| {
            s.state = "waiting".into();
            s.waits_for = Some(when.to_string());
        });
        let mut rx = self.bus.subscribe();
        // Some(true): fired; Some(false): the source is done for good; None: timed out.
        let wait = async {
            let fired = bus::occurred_unless_dead(&mut rx, when, 0);
            match when.timeout {
                Some(t) => tokio::time::timeout(t, fired)
                    .await
                    .ok()
                    .map(|n| n.is_some()),
                None => Some(fired.await.is_some()),
            }
        };
        let fired = tokio::select! {
            _ = self.stopping.cancelled() => return false,
            fired = wait => fired,
        };
        self.bus.update(MAIN_JOB, |s| s.waits_for = None);
        if fired == Some(true) {
            info!(after = %when.after, event = %when.is, "starting main: the event it waits for happened");
            return true;
        }
        let (code, why) = if fired == Some(false) {
            if self.stopping.is_cancelled() {
                return false;
            }
            let state = self
                .bus
                .snapshot()
                .get(&when.after)
                .map(|s| s.state.clone())
                .unwrap_or_default();
            let why = format!("{:?} is done for good ({state})", when.after);
            error!("main waits for {when}, but {why}; not starting main");
            (DEPENDENCY_GONE, why)
        } else {
            let why = bus::timed_out(when);
            error!("{why}; not starting main");
            (TIMED_OUT, why)
        };
        self.bus.update(MAIN_JOB, |s| {
            s.state = format!("failed: {why}");
            s.last_exit = Some(why.clone());
        });
        self.bus.emit(MAIN_JOB, Event::Failed);
        self.finish(code, &format!("failed: {why}"));
        false
    }

    /// Starts main once and waits for it to exit; returns its status.
    async fn run_once(&self, exec: &Program) -> u8 {
        let mut cmd = command::build(exec, &self.env);
        cmd.stdin(std::process::Stdio::null());
        // Should rewire die without its stop sequence (SIGKILL), main gets its stop signal, so
        // it takes its own workers down.
        let mut child = match command::spawn(cmd, self.cfg.stop_signal).await {
            Ok(c) => c,
            Err(e) => {
                error!(program = %exec.name(), error = %e, "cannot start main");
                self.bus.update(MAIN_JOB, |s| {
                    s.state = "failed".into();
                    s.last_exit = Some(format!("cannot start: {e}"));
                });
                self.bus.emit(MAIN_JOB, Event::Failed);
                self.board.update(|r| {
                    if let Some(m) = r.main.as_mut() {
                        m.last_exit = Some(format!("cannot start: {e}"));
                    }
                });
                return CANNOT_START;
            }
        };
        let pid = child.id().map(|p| Pid::from_raw(p as i32));
        let pid_num = pid.map(Pid::as_raw).unwrap_or_default();
        info!(pid = pid_num, program = %exec.name(), "main started");
        self.ran.store(true, Ordering::Release);
        if let Some(pid) = pid {
            self.last_pid.store(pid.as_raw(), Ordering::Release);
        }
        self.pid.send_replace(pid);
        self.state("running", pid);
        self.bus.update(MAIN_JOB, |s| {
            s.state = "running".into();
            s.pid = pid.map(Pid::as_raw);
        });
        self.bus.emit(MAIN_JOB, Event::Started);
        let status = child.wait().await;
        self.pid.send_replace(None);
        let (code, how) = match status {
            Ok(st) => {
                let rs = command::exit_status(st);
                let how = match rs {
                    RunStatus::Exited(c) => format!("exited with status {c}"),
                    RunStatus::Signalled(s) => format!(
                        "killed by signal {}",
                        Signal::try_from(s)
                            .map(|s| s.to_string())
                            .unwrap_or(s.to_string())
                    ),
                    RunStatus::TimedOut => "timed out".to_string(),
                };
                (exit_code(rs), how)
            }
            Err(e) => (1, format!("cannot wait for it: {e}")),
        };
        if code == 0 {
            info!(pid = pid_num, "main {how}");
        } else {
            warn!(pid = pid_num, "main {how}");
        }
        self.bus.update(MAIN_JOB, |s| {
            s.state = if code == 0 { "exited" } else { "failed" }.into();
            s.pid = None;
            s.last_exit = Some(how.clone());
        });
        self.bus.emit(MAIN_JOB, Event::Exited);
        self.bus.emit(
            MAIN_JOB,
            if code == 0 {
                Event::Succeeded
            } else {
                Event::Failed
            },
        );
        self.board.update(|r| {
            if let Some(m) = r.main.as_mut() {
                m.state = "exited".into();
                m.pid = None;
                m.last_exit = Some(how);
                m.last_exit_code = Some(i32::from(code));
            }
        });
        code
    }

    /// Waits until every template was written once, or `wait_for_templates` passed. Returns
    /// false when rewire is stopping.
    async fn wait_for_templates(&self) -> bool {
        if self.templates.is_empty() {
            return true;
        }
        self.state("waiting for templates", None);
        let mut ready = self.board.subscribe_ready();
        let deadline = tokio::time::sleep(self.cfg.wait_for_templates);
        tokio::pin!(deadline);
        loop {
            if self.board.all_ready(&self.templates) {
                info!("every template written; starting main");
                return true;
            }
            tokio::select! {
                _ = self.stopping.cancelled() => return false,
                _ = &mut deadline => {
                    let report = self.board.report();
                    let missing: Vec<&str> = self
                        .templates
                        .iter()
                        .filter(|n| !report.templates.get(*n).is_some_and(|t| t.ready))
                        .map(String::as_str)
                        .collect();
                    warn!(
                        waited = %humantime::format_duration(self.cfg.wait_for_templates),
                        missing = ?missing,
                        "starting main although not every template was written"
                    );
                    return true;
                }
                changed = ready.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                }
            }
        }
    }

    fn state(&self, state: &str, pid: Option<Pid>) {
        self.board.update(|r| {
            let m = r.main.get_or_insert_with(MainStatus::default);
            m.state = state.to_string();
            m.pid = pid.map(|p| p.as_raw());
        });
    }

    fn finish(&self, code: u8, what: &str) {
        self.board.update(|r| {
            let m = r.main.get_or_insert_with(MainStatus::default);
            m.state = what.to_string();
            m.pid = None;
        });
        self.exit.send_replace(Some(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(RunStatus::Exited(0)), 0);
        assert_eq!(exit_code(RunStatus::Exited(42)), 42);
        assert_eq!(exit_code(RunStatus::Signalled(15)), 143);
        assert_eq!(exit_code(RunStatus::Signalled(9)), 137);
        assert_eq!(exit_code(RunStatus::TimedOut), TIMED_OUT);
    }
}
