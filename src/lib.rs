//! rewire keeps an app wired to the services around it.
//!
//! # Theory of operation
//!
//! Data flows one way:
//!
//! ```text
//! catalog (dir | consul | etcd)
//!   -> watchers (one per distinct query)      catalog::Catalog::watch
//!   -> store (latest data per query)          store::Store, published as Arc<Snapshot>
//!   -> runner: debounce -> render -> check -> atomic write -> reload
//! ```
//!
//! Templates never talk to the network: template functions read the current snapshot, and a
//! query the snapshot does not have yet is recorded as a dependency, fetched, and the template
//! rendered again. A template is written only once every query it uses has data.
//!
//! Tasks: one catalog watch task (the backend decides how many connections it needs), one
//! runner task per template, the registrar (one task per `[[service]]`), the supervisor
//! (main process and hooks), one task per `[[watch]]` and `[[task]]`, the control socket and
//! the signal handler. All take a child of one `CancellationToken`; the stop sequence lives in
//! `daemon::run`.

pub mod backoff;
pub mod catalog;
pub mod cli;
pub mod command;
pub mod config;
pub mod control;
pub mod daemon;
pub mod debounce;
pub mod import;
pub mod init;
pub mod logging;
pub mod oneshot;
pub mod output;
pub mod pipeline;
pub mod registrar;
pub mod runner;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod template;
pub mod watches;

use std::collections::BTreeMap;
use std::process::ExitCode;

use cli::{Cli, Command};
use config::Config;

/// Runs one command; returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    logging::init(&cli.log_level, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rewire: cannot start the async runtime: {e}");
            return ExitCode::from(oneshot::ERROR);
        }
    };
    ExitCode::from(runtime.block_on(dispatch(cli)))
}

async fn dispatch(cli: Cli) -> u8 {
    // Talking to a running daemon needs only its socket: no config to load when it is given.
    match &cli.command {
        Command::Status(cli::StatusArgs {
            json,
            socket: Some(socket),
        }) => return control::status_command(socket, None, *json).await,
        Command::Maintenance(cli::MaintenanceArgs {
            state,
            socket: Some(socket),
        }) => return control::maintenance_command(socket, None, *state == cli::OnOff::On).await,
        Command::Import(args) => return import::command(args),
        _ => {}
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let env = child_env(&config);
    match &cli.command {
        Command::Check => oneshot::check(&config),
        Command::Render(args) => match open_catalog(&config).await {
            Ok(cat) => oneshot::render(&config, cat, args, &env).await,
            Err(code) => code,
        },
        Command::Diff(args) => match open_catalog(&config).await {
            Ok(cat) => oneshot::diff(&config, cat, args).await,
            Err(code) => code,
        },
        Command::Run(args) => {
            daemon::run(
                config,
                cli.config.clone(),
                cli.catalog.clone(),
                args.subreaper,
            )
            .await
        }
        Command::Status(args) => {
            control::status_command(&config.control.socket, Some(&config.path), args.json).await
        }
        Command::Import(args) => import::command(args),
        Command::Maintenance(args) => {
            control::maintenance_command(
                &config.control.socket,
                Some(&config.path),
                args.state == cli::OnOff::On,
            )
            .await
        }
    }
}

/// Loads the config and applies `--catalog`. Prints every problem; `check` exits 1 on an
/// invalid config (finding problems is its job), every other command 2.
fn load_config(cli: &Cli) -> Result<Config, u8> {
    let mut config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            let unreadable = errors.0.iter().any(|e| e.line == 0);
            return Err(if matches!(cli.command, Command::Check) && !unreadable {
                oneshot::PROBLEMS
            } else {
                oneshot::ERROR
            });
        }
    };
    if let Some(url) = &cli.catalog
        && let Err(e) = config::override_catalog(&mut config, url)
    {
        eprintln!("rewire: --catalog {url}: {e}");
        return Err(oneshot::ERROR);
    }
    Ok(config)
}

async fn open_catalog(config: &Config) -> Result<std::sync::Arc<dyn catalog::Catalog>, u8> {
    match catalog::open(&config.catalog) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("rewire: {e}");
            Err(oneshot::ERROR)
        }
    }
}

/// The environment every child process gets on top of rewire's own.
pub fn child_env(config: &Config) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "REWIRE_CONFIG".to_string(),
        config.path.display().to_string(),
    );
    env.insert("REWIRE_PID".to_string(), std::process::id().to_string());
    env.extend(registrar::address_env(&config.services));
    env
}
