//! The edge: the command line, logging, and the one place that turns how a command ended into
//! an exit status.
//!
//! Every command returns `Result<Outcome, Failure>`. [`exit_status`] alone maps that to the
//! process's status (docs/architecture.md, "Exit statuses"): 0 done; 1 the command's answer is "no"
//! (changes, problems, templates not written, no daemon); main's status (or 128+N) passed
//! through; 2 for a usage error, an unusable config or an internal error. `main` prints the
//! one [`report`] and exits; nothing below this module picks an exit status or prints an error
//! for the user to read (a command's product, such as a diff or a status, goes to stdout).
//!
//! Nothing else in the crate imports this module: it is where the parts are wired together.

pub mod cli;
mod commands;
pub(crate) mod control;
mod daemon;
mod logging;
mod signals;
pub mod systemd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use self::cli::{Cli, Command, MaintenanceArgs, MetricArgs, OnOff, StatusArgs};
use crate::catalog::{self, Catalog, CatalogError};
use crate::config::{self, Config, ConfigErrors};
use crate::model::CatalogUrlError;
use crate::render::template::LoadError;

/// How a command ended, when it did its job.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 1: the command's answer is "no": `diff` found changes, `check` found problems,
    /// `render` left templates unwritten, `status` found no daemon. The report (may be
    /// empty) goes to stderr.
    Findings(String),
    /// The status of the process rewire stands in for, passed through as it is: main's when
    /// `run` supervises one (128+N when signal N killed it; 0 on a clean stop without one),
    /// the worker's in the PID 1 reaper.
    Relayed(u8),
}

/// Why a command could not do its job (exit 2). The text is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("rewire: cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("rewire: cannot start the reaper process: {0}")]
    Reaper(std::io::Error),
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("rewire: --catalog {url}: {source}")]
    CatalogUrl {
        url: String,
        source: CatalogUrlError,
    },
    #[error("rewire: {0}")]
    Catalog(#[from] CatalogError),
    /// Templates that do not parse, at the daemon's start.
    #[error("{}", load_errors(.0))]
    Templates(Vec<LoadError>),
    /// Templates that do not parse, for a command that reports them with a summary.
    #[error("{}", commands::template_problems(.command, .errors))]
    TemplateProblems {
        command: &'static str,
        errors: Vec<LoadError>,
    },
    /// A usage error found after parsing the command line (e.g. an unknown template name).
    #[error("rewire {command}: {message}")]
    Usage {
        command: &'static str,
        message: String,
    },
    /// `rewire diff` could not render or read some templates: (template, why) each.
    #[error("{}", diff_failures(.0))]
    Diff(Vec<(String, String)>),
    #[error("rewire: cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("rewire: [telemetry] listen {addr}: {source}")]
    Telemetry {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("rewire import: {0}")]
    Import(crate::import::ImportError),
    #[error("rewire: cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

fn load_errors(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn diff_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(name, why)| format!("rewire diff: {name}: {why}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The process's exit status for how a command ended. The only place that chooses one.
pub fn exit_status(result: &Result<Outcome, Failure>) -> ExitCode {
    ExitCode::from(match result {
        Ok(Outcome::Done) => 0,
        Ok(Outcome::Findings(_)) => 1,
        Ok(Outcome::Relayed(status)) => *status,
        Err(_) => 2,
    })
}

/// What `main` prints on stderr before it exits, if anything.
pub fn report(result: &Result<Outcome, Failure>) -> Option<String> {
    match result {
        Err(failure) => Some(failure.to_string()),
        Ok(Outcome::Findings(report)) if !report.is_empty() => Some(report.clone()),
        Ok(_) => None,
    }
}

/// Sets up logging and the async runtime (after any PID 1 fork: see `main.rs`), and runs the
/// command.
///
/// Once the command is done, the runtime gets [`RUNTIME_SHUTDOWN`] to drop what is left:
/// dropping it outright would wait for every blocking task, and one may be stuck for good
/// (a read that never returns). The process exits after that whatever remains; render threads
/// are detached and end with it.
pub fn run(cli: Cli) -> Result<Outcome, Failure> {
    logging::init(cli.log_level.as_deref(), cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::Runtime)?;
    // Boxed: passed by value, the future (every command's, inline) was copied on this
    // frame several times, 57 KB of main-thread stack that stayed resident in the daemon.
    let result = runtime.block_on(Box::pin(dispatch(cli)));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// How long the runtime gets to shut down after the command ended.
const RUNTIME_SHUTDOWN: Duration = Duration::from_millis(500);

async fn dispatch(cli: Cli) -> Result<Outcome, Failure> {
    // Talking to a running daemon needs only its socket: no config to load when it is given.
    match &cli.command {
        Command::Status(StatusArgs {
            json,
            socket: Some(socket),
        }) => return Ok(control::client::status(socket, None, *json).await),
        Command::Maintenance(MaintenanceArgs {
            state,
            socket: Some(socket),
        }) => return Ok(control::client::maintenance(socket, None, *state == OnOff::On).await),
        Command::Metric(MetricArgs {
            name,
            value,
            socket: Some(socket),
        }) => return Ok(control::client::metric(socket, None, name, *value).await),
        // Import reads another tool's files: no rewire.toml involved.
        Command::Import(args) => return commands::import::run(args),
        Command::Completions(args) => return commands::manual::completions(args.shell),
        Command::Man => return commands::manual::man(),
        _ => {}
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        // `status` and `maintenance` need only the socket: without a readable config, ask the
        // default one (the unreachable message names --socket and the path it tried). With an
        // invalid but readable one (a half-done edit during an incident), ask the socket it
        // names, saying why the rest was not read.
        Err(Failure::Config(errors))
            if matches!(cli.command, Command::Status(_) | Command::Maintenance(_)) =>
        {
            let socket = socket_named_in(&cli.config).unwrap_or_else(config::default_socket);
            if !errors.unreadable() {
                eprintln!(
                    "rewire: {} has {} problem(s) (`rewire check` lists them); asking the daemon on {} anyway",
                    cli.config.display(),
                    errors.0.len(),
                    socket.display()
                );
            }
            return match &cli.command {
                Command::Status(args) => {
                    Ok(control::client::status(&socket, None, args.json).await)
                }
                Command::Maintenance(args) => {
                    Ok(control::client::maintenance(&socket, None, args.state == OnOff::On).await)
                }
                _ => Err(Failure::Config(errors)),
            };
        }
        // Finding problems is `check`'s job: an invalid (but readable) config is its answer.
        Err(Failure::Config(errors)) if matches!(cli.command, Command::Check) => {
            return if errors.unreadable() {
                Err(Failure::Config(errors))
            } else {
                // The templates are found through the config: say they were not looked at
                // yet, rather than let the list pass for every problem there is.
                Ok(Outcome::Findings(format!(
                    "{errors} (templates are checked once it has none)"
                )))
            };
        }
        Err(failure) => return Err(failure),
    };
    match &cli.command {
        Command::Check => Ok(commands::check::run(&config)),
        Command::Render(args) => {
            commands::render::run(&config, open_checked(&config).await?, args).await
        }
        Command::Diff(args) => {
            commands::diff::run(&config, open_checked(&config).await?, args).await
        }
        Command::Run(_) => daemon::run(config, Reloader::new(&cli)).await,
        Command::Import(args) => commands::import::run(args),
        Command::Completions(args) => commands::manual::completions(args.shell),
        Command::Man => commands::manual::man(),
        Command::Status(args) => {
            Ok(
                control::client::status(&config.control.socket, Some(&config.path), args.json)
                    .await,
            )
        }
        Command::Metric(args) => Ok(control::client::metric(
            &config.control.socket,
            Some(&config.path),
            &args.name,
            args.value,
        )
        .await),
        Command::Maintenance(args) => Ok(control::client::maintenance(
            &config.control.socket,
            Some(&config.path),
            args.state == OnOff::On,
        )
        .await),
    }
}

/// Loads the config and applies `--catalog`.
fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Reloader::new(cli).load().map_err(|e| match e {
        LoadFailure::Config(errors) => Failure::Config(errors),
        LoadFailure::CatalogUrl { url, source } => Failure::CatalogUrl { url, source },
    })
}

/// `[control] socket` read from a config that does not validate as a whole: the raw TOML,
/// `${VAR}` expanded, relative to the file's directory. `None` when even that fails.
fn socket_named_in(path: &std::path::Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let raw = table.get("control")?.get("socket")?.as_str()?;
    let socket = config::interpolate(raw, &|name| std::env::var(name).ok()).ok()?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    Some(dir.join(socket))
}

fn open_catalog(config: &Config) -> Result<Arc<dyn Catalog>, Failure> {
    Ok(catalog::open(&config.catalog)?)
}

/// Opens the catalog for `render` or `diff` and asks it first whether it can be used, as
/// `rewire run` does: a Consul agent with ACLs answers a health query without a usable token
/// with an empty list, not an error, and the render would write every service empty over a
/// good file. A refusal stops the command; an unreachable catalog is left to the command's
/// own waiting.
async fn open_checked(config: &Config) -> Result<Arc<dyn Catalog>, Failure> {
    let catalog = open_catalog(config)?;
    match catalog.preflight().await {
        Err(e @ (CatalogError::Denied { .. } | CatalogError::Unsupported(_))) => Err(e.into()),
        _ => Ok(catalog),
    }
}

/// How to read the config again, as the command line gave it (SIGHUP reads it the same way).
#[derive(Clone, Debug)]
pub(crate) struct Reloader {
    path: PathBuf,
    catalog: Option<String>,
}

/// Why the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadFailure {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("--catalog {url}: {source}")]
    CatalogUrl {
        url: String,
        source: CatalogUrlError,
    },
}

impl Reloader {
    fn new(cli: &Cli) -> Reloader {
        Reloader {
            path: cli.config.clone(),
            catalog: cli.catalog.clone(),
        }
    }

    /// Reads and validates the config, then applies `--catalog`.
    pub(crate) fn load(&self) -> Result<Config, LoadFailure> {
        let mut config = config::load(&self.path).map_err(LoadFailure::Config)?;
        if let Some(url) = &self.catalog {
            config::override_catalog(&mut config, url).map_err(|source| {
                LoadFailure::CatalogUrl {
                    url: url.clone(),
                    source,
                }
            })?;
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_follow_the_cli_contract() {
        let code = |r: Result<Outcome, Failure>| format!("{:?}", exit_status(&r));
        assert_eq!(code(Ok(Outcome::Done)), format!("{:?}", ExitCode::from(0)));
        assert_eq!(
            code(Ok(Outcome::Findings(String::new()))),
            format!("{:?}", ExitCode::from(1))
        );
        assert_eq!(
            code(Ok(Outcome::Relayed(143))),
            format!("{:?}", ExitCode::from(143))
        );
        assert_eq!(
            code(Err(Failure::Usage {
                command: "render",
                message: "x".into()
            })),
            format!("{:?}", ExitCode::from(2))
        );
    }

    #[test]
    fn only_failures_and_non_empty_findings_are_reported() {
        assert_eq!(report(&Ok(Outcome::Done)), None);
        assert_eq!(report(&Ok(Outcome::Findings(String::new()))), None);
        assert_eq!(
            report(&Ok(Outcome::Findings("2 problems".into()))).as_deref(),
            Some("2 problems")
        );
        let diff = Failure::Diff(vec![("web".into(), "boom".into())]);
        assert_eq!(
            report(&Err(diff)).as_deref(),
            Some("rewire diff: web: boom")
        );
    }
}
