//! `rewire run`: wires the tasks together and owns the stop sequence.
//!
//! Start: config (already valid) → catalog preflight → templates parsed → catalog watch →
//! one runner per template group → registrar, watches, tasks, supervisor → control socket.
//! Everything is validated before anything binds or spawns.
//!
//! SIGHUP re-reads rewire.toml and the templates. An invalid file is rejected with the same
//! errors as `rewire check`, and the running config stays. A valid one is applied by
//! difference: the catalog watch is kept unless `[catalog]` changed (the new runners find
//! their data in the store at once), runners are swapped, and the main process is left alone.
//!
//! Stop (SIGTERM/SIGINT, or the configured stop signals): cancel one token; runners finish the
//! write in flight; the supervisor runs its sequence (deregister, drain, pre_stop, stop main,
//! post_stop); then the process exits with main's status, or 0.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::commands as oneshot;
use super::control;
use crate::catalog::{self, Catalog, CatalogError};
use crate::config::{self, Config};
use crate::model::Query;
use crate::proc::{supervisor, watches};
use crate::render::group;
use crate::render::runner::{self, Shared};
use crate::render::template::Engine;
use crate::status::Board;
use crate::store::Store;
use crate::wanted::Wanted;

/// How long tasks get to finish after a stop before rewire exits anyway.
const GRACE: Duration = Duration::from_secs(10);

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

struct CatalogTask {
    catalog: Arc<dyn Catalog>,
    settings: config::CatalogConfig,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

fn start_catalog(
    catalog: Arc<dyn Catalog>,
    settings: config::CatalogConfig,
    wanted: watch::Receiver<BTreeSet<Query>>,
    store: Arc<Store>,
    root: &CancellationToken,
) -> CatalogTask {
    let stop = root.child_token();
    let c = catalog.clone();
    let s = stop.clone();
    let handle = tokio::spawn(async move { c.watch(wanted, store, s).await });
    CatalogTask {
        catalog,
        settings,
        stop,
        handle,
    }
}

async fn open_and_check(config: &Config) -> Result<Arc<dyn Catalog>, CatalogError> {
    let catalog = catalog::open(&config.catalog)?;
    match catalog.preflight().await {
        Ok(()) => Ok(catalog),
        Err(e @ CatalogError::Denied { .. }) | Err(e @ CatalogError::Unsupported(_)) => Err(e),
        Err(e) => {
            warn!(error = %e, "catalog not reachable yet; starting anyway and retrying");
            Ok(catalog)
        }
    }
}

pub async fn run(
    mut config: Config,
    config_path: PathBuf,
    catalog_override: Option<String>,
    subreaper: bool,
) -> u8 {
    let _ = subreaper;
    let catalog = match open_and_check(&config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rewire: {e}");
            return oneshot::ERROR;
        }
    };
    let engine = match Engine::load(&config.templates) {
        Ok(e) => Arc::new(e),
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return oneshot::ERROR;
        }
    };
    let mut signals = match Signals::new(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rewire: cannot install signal handlers: {e}");
            return oneshot::ERROR;
        }
    };

    let root = CancellationToken::new();
    let store = Arc::new(Store::new());
    let board = Arc::new(Board::new(
        std::process::id(),
        config.path.display().to_string(),
        catalog.describe(),
    ));
    let (wanted_tx, wanted_rx) = watch::channel(BTreeSet::new());
    {
        // `rewire status` shows whether the catalog is reachable.
        let (board, mut snaps, stop) = (board.clone(), store.subscribe(), root.clone());
        let mut wanted = wanted_rx.clone();
        tokio::spawn(async move {
            loop {
                let nothing_watched = wanted.borrow_and_update().is_empty();
                let health = match &snaps.borrow_and_update().health {
                    // Registration alone never reads the catalog: nothing to connect to.
                    crate::store::Health::Unknown if nothing_watched => {
                        "not read (no template or watch uses it)".to_string()
                    }
                    crate::store::Health::Unknown => "connecting".to_string(),
                    crate::store::Health::Healthy => "healthy".to_string(),
                    crate::store::Health::Unreachable(e) => format!("unreachable: {e}"),
                };
                board.update(|r| r.catalog_health = health);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = snaps.changed() => if r.is_err() { return },
                    r = wanted.changed() => if r.is_err() { return },
                }
            }
        });
    }
    let (wanted, collector) = Wanted::new(wanted_tx, store.clone());
    let wanted_task = tokio::spawn(collector.run(root.clone()));
    let mut cat = start_catalog(
        catalog,
        config.catalog.clone(),
        wanted_rx.clone(),
        store.clone(),
        &root,
    );
    let (main_pid_tx, main_pid_rx) = watch::channel::<Option<Pid>>(None);
    let env = crate::command::child_env(&config);
    let control_cmds = control::start(&config.control.socket, board.clone(), root.clone());
    let (maint_tx, maint_rx) = watch::channel(false);
    let mut control_rx = control_cmds.unwrap_or_else(|e| {
        warn!(socket = %config.control.socket.display(), error = %e, "control socket unavailable; `rewire status` will not reach this process");
        mpsc::unbounded_channel().1
    });

    // What watches and tasks keep across SIGHUP (last handler input, runs in flight).
    let watch_state = watches::State::new();
    let spawn_generation = |config: &Config, engine: Arc<Engine>| {
        let generation = Generation::new(&root);
        let shared = Shared {
            engine,
            store: store.clone(),
            wanted: wanted.clone(),
            board: board.clone(),
            env: crate::command::child_env(config),
            main_pid: main_pid_rx.clone(),
        };
        for group in group::groups(&config.templates) {
            generation.tracker.spawn(runner::run_group(
                group,
                shared.clone(),
                generation.stop.child_token(),
            ));
        }
        let handlers = watches::Context {
            store: store.clone(),
            wanted: wanted.clone(),
            board: board.clone(),
            env: shared.env.clone(),
        };
        watches::spawn_all(
            config,
            &generation.tracker,
            &generation.stop,
            &handlers,
            &watch_state,
        );
        generation
    };
    let mut generation = spawn_generation(&config, engine);
    info!(
        config = %config.path.display(),
        catalog = %cat.catalog.describe(),
        templates = config.templates.len(),
        "rewire running"
    );

    let mut sup = supervisor::Supervisor::start(
        &config,
        cat.catalog.clone(),
        board.clone(),
        main_pid_tx,
        env.clone(),
        maint_rx.clone(),
        root.clone(),
    );

    let exit = loop {
        tokio::select! {
            sig = signals.next() => match sig {
                Incoming::Stop(s) => {
                    info!(signal = %s, "stopping");
                    break None;
                }
                Incoming::Reload => {
                    info!("SIGHUP: re-reading the config");
                    match reload_config(&config_path, catalog_override.as_deref()) {
                        Err(text) => error!("new config rejected, keeping the running one:\n{text}"),
                        Ok((new, engine)) => {
                            if new.catalog != config.catalog {
                                match open_and_check(&new).await {
                                    Ok(c) => {
                                        info!(catalog = %c.describe(), "catalog settings changed; reconnecting");
                                        let label = c.describe();
                                        board.update(|r| r.catalog = label);
                                        cat.stop.cancel();
                                        let _ = (&mut cat.handle).await;
                                        cat = start_catalog(c, new.catalog.clone(), wanted_rx.clone(), store.clone(), &root);
                                    }
                                    Err(e) => {
                                        error!(error = %e, "new config rejected, keeping the running one");
                                        continue;
                                    }
                                }
                            }
                            let _ = &cat.settings;
                            // The old runners stop (a round in progress finishes) before the
                            // new ones start: two generations must never write the same files.
                            let old = std::mem::replace(&mut generation, Generation::new(&root));
                            old.shut().await;
                            generation = spawn_generation(&new, engine);
                            sup.reconfigure(&new);
                            // Templates the new config dropped leave the status report.
                            board.update(|r| {
                                r.templates
                                    .retain(|name, _| new.templates.iter().any(|t| t.name == *name))
                            });
                            config = new;
                            info!("new config applied");
                        }
                    }
                }
                Incoming::Forward(s) => sup.forward(s),
            },
            cmd = control_rx.recv() => {
                if let Some(cmd) = cmd {
                    match cmd {
                        control::Command::Maintenance(on) => {
                            info!(maintenance = on, "maintenance mode");
                            maint_tx.send_replace(on);
                            board.update(|r| r.maintenance = on);
                        }
                    }
                }
            }
            code = sup.exited() => {
                break Some(code);
            }
        }
    };

    // Stop sequence: the supervisor first (deregister, drain, pre_stop, main, post_stop),
    // while the runners keep the files current; then everything else.
    // A second stop signal (an impatient Ctrl-C) cuts the drain and stop_timeout short.
    let hurry = CancellationToken::new();
    let code = {
        let stopping = sup.stop(exit, hurry.clone());
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                code = &mut stopping => break code,
                sig = signals.next(), if !hurry.is_cancelled() => {
                    if let Incoming::Stop(s) = sig {
                        warn!(signal = %s, "second stop signal: skipping the drain and killing main now");
                        hurry.cancel();
                    }
                }
            }
        }
    };
    generation.shut().await;
    root.cancel();
    cat.stop.cancel();
    let _ = tokio::time::timeout(GRACE, cat.handle).await;
    let _ = wanted_task.await;
    control::cleanup(&config.control.socket);
    info!(status = code, "stopped");
    code
}

fn reload_config(
    path: &std::path::Path,
    catalog_override: Option<&str>,
) -> Result<(Config, Arc<Engine>), String> {
    let mut new = config::load(path).map_err(|e| e.to_string())?;
    if let Some(url) = catalog_override {
        config::override_catalog(&mut new, url).map_err(|e| e.to_string())?;
    }
    let engine = Engine::load(&new.templates).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok((new, Arc::new(engine)))
}

enum Incoming {
    Stop(Signal),
    Reload,
    Forward(Signal),
}

/// The signals rewire listens for, as configured.
struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    stop: Vec<Signal>,
    forward: Vec<Signal>,
}

impl Signals {
    fn new(config: &Config) -> std::io::Result<Signals> {
        let (stop, forward) = match &config.main {
            Some(m) => (m.stop_signals.clone(), m.forward_signals.clone()),
            None => (vec![Signal::SIGTERM, Signal::SIGINT], Vec::new()),
        };
        let mut all: Vec<Signal> = stop.clone();
        all.push(Signal::SIGHUP);
        all.extend(forward.iter().copied());
        // SIGTERM and SIGINT always stop rewire, even when the config names other stop signals:
        // otherwise `docker stop` would hang until SIGKILL.
        for s in [Signal::SIGTERM, Signal::SIGINT] {
            if !all.contains(&s) {
                all.push(s);
            }
        }
        let mut stop = stop;
        for s in [Signal::SIGTERM, Signal::SIGINT] {
            if !stop.contains(&s) && !forward.contains(&s) {
                stop.push(s);
            }
        }
        all.sort_by_key(|s| *s as i32);
        all.dedup();
        let mut streams = Vec::new();
        for s in all {
            streams.push((s, signal(SignalKind::from_raw(s as i32))?));
        }
        Ok(Signals {
            streams,
            stop,
            forward,
        })
    }

    async fn next(&mut self) -> Incoming {
        let futures = self.streams.iter_mut().map(|(sig, stream)| {
            let sig = *sig;
            Box::pin(async move {
                stream.recv().await;
                sig
            })
        });
        let (sig, _, _) = futures_select_all(futures).await;
        if self.stop.contains(&sig) {
            Incoming::Stop(sig)
        } else if self.forward.contains(&sig) {
            Incoming::Forward(sig)
        } else {
            Incoming::Reload
        }
    }
}

async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> (F::Output, usize, Vec<F>) {
    futures_util::future::select_all(futures).await
}
