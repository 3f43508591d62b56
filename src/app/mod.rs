//! The edge: the command line, logging, and running the chosen command.

pub mod cli;
pub mod commands;
pub mod control;
pub mod daemon;
pub mod logging;

use std::process::ExitCode;

use self::cli::{Cli, Command};
use crate::catalog;
use crate::command;
use crate::config::{self, Config};

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
            return ExitCode::from(commands::ERROR);
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
        _ => {}
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let env = command::child_env(&config);
    match &cli.command {
        Command::Check => commands::check(&config),
        Command::Render(args) => match open_catalog(&config).await {
            Ok(cat) => commands::render(&config, cat, args, &env).await,
            Err(code) => code,
        },
        Command::Diff(args) => match open_catalog(&config).await {
            Ok(cat) => commands::diff(&config, cat, args).await,
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
                commands::PROBLEMS
            } else {
                commands::ERROR
            });
        }
    };
    if let Some(url) = &cli.catalog
        && let Err(e) = config::override_catalog(&mut config, url)
    {
        eprintln!("rewire: --catalog {url}: {e}");
        return Err(commands::ERROR);
    }
    Ok(config)
}

async fn open_catalog(config: &Config) -> Result<std::sync::Arc<dyn catalog::Catalog>, u8> {
    match catalog::open(&config.catalog) {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!("rewire: {e}");
            Err(commands::ERROR)
        }
    }
}
