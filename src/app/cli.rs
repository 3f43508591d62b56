//! The command line (clap). `main.rs` parses it; `app::run` runs the chosen command.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "rewire",
    version,
    about = "Keeps an app wired to the services around it: watch a catalog, render configs, reload, register, supervise.",
    after_help = "Examples:\n  rewire check                     validate rewire.toml and its templates\n  rewire diff                      show what a render would change\n  rewire render                    render once and exit (preStart: the program reads the files when it starts)\n  rewire render --reload           render once and reload what changed (a signal to a program not running is skipped)\n  rewire run -c /etc/rewire.toml   the daemon\n\nExit status: 0 ok; 1 the command found problems (see each command); 2 usage error or unusable config."
)]
pub struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long,
        global = true,
        env = "REWIRE_CONFIG",
        default_value = "rewire.toml"
    )]
    pub config: PathBuf,

    /// Use this catalog instead of the config's: dir:PATH, consul://HOST:PORT, etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long, global = true, value_name = "URL")]
    pub catalog: Option<String>,

    /// Log level or filter (error, warn, info, debug, trace; or e.g. "rewire=debug") [default: $REWIRE_LOG, else info].
    #[arg(long, global = true, value_parser = super::logging::check_level)]
    pub log_level: Option<String>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: supervise, register, watch, render, reload, until a stop signal.
    #[command(
        after_help = "Example:\n  rewire run -c /etc/rewire/rewire.toml\n\nSIGHUP re-reads the config; SIGTERM/SIGINT stop (deregister first, then pre_stop, then main).\nExit status: main's status when supervising (128+N if it died of signal N), else 0."
    )]
    Run(RunArgs),

    /// Render once: wait for data, render, check, write, exit (for preStart).
    #[command(
        after_help = "Examples:\n  rewire render                      render every template\n  rewire render --template nginx     just one\n  rewire render --reload --timeout 30s\n\nExit status: 0 all written or unchanged; 1 any template failed (render error, check rejected, data still missing at the timeout); 2 usage or config error."
    )]
    Render(RenderArgs),

    /// Render everything, write nothing, print a unified diff per destination.
    #[command(
        after_help = "Examples:\n  rewire diff\n  rewire diff --template haproxy --color always | less -R\n\nExit status (like diff(1)): 0 no change; 1 changes; 2 error."
    )]
    Diff(DiffArgs),

    /// Validate the config and template syntax (no catalog needed).
    #[command(
        after_help = "Example:\n  rewire check -c /etc/rewire/rewire.toml\n\nExit status: 0 ok; 1 problems (all listed); 2 the config cannot be read."
    )]
    Check,

    /// Ask the running daemon for its state (registrations, watches, templates, main).
    #[command(
        after_help = "Examples (container health check):\n  rewire status\n  rewire status --socket /run/rewire.sock   (no config needed)\n\nExit status: 0 ok; 1 the daemon is unreachable."
    )]
    Status(StatusArgs),

    /// Deregister (on) or re-register (off) this container's services; main keeps running.
    #[command(
        after_help = "Examples:\n  rewire maintenance on\n  rewire maintenance off\n\nExit status: 0 ok; 1 the daemon is unreachable."
    )]
    Maintenance(MaintenanceArgs),

    /// Set one of the config's [[metric]]s in the running daemon (a counter adds, a gauge sets).
    #[command(
        after_help = "Examples:\n  rewire metric backups_total 1\n  rewire metric queue_depth 17 --socket /run/rewire.sock\n\nExit status: 0 ok; 1 the daemon is unreachable or refused (an undeclared name, a name starting with rewire_, a counter going down)."
    )]
    Metric(MetricArgs),

    /// Translate a ContainerPilot or consul-template setup into rewire.toml and Tera templates.
    #[command(
        after_help = "Examples:\n  rewire import containerpilot containerpilot.json --out rewire/\n  rewire import consul-template config.hcl            (prints rewire.toml)\n\nEach field without a rewire equivalent is listed on stderr with its location.\nExit status: 0 everything mapped; 1 something needs a person; 2 unreadable input, or a file in DIR exists (--force)."
    )]
    Import(crate::import::ImportArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  rewire completions bash > /etc/bash_completion.d/rewire\n  rewire completions zsh > \"${fpath[1]}/_rewire\"\n  rewire completions fish > ~/.config/fish/completions/rewire.fish"
    )]
    Completions(CompletionsArgs),

    /// Print the man page (roff) on stdout.
    #[command(after_help = "Example:\n  rewire man > /usr/local/share/man/man1/rewire.1")]
    Man,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Reap orphaned processes as a child subreaper (automatic when running as PID 1); what is
    /// left under rewire when it ends (a check's grandchildren) is killed.
    #[arg(long)]
    pub subreaper: bool,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Run each changed template's reload.
    #[arg(long)]
    pub reload: bool,
    /// Render only this template (by name; repeatable).
    #[arg(long = "template", value_name = "NAME")]
    pub templates: Vec<String>,
    /// How long to wait for catalog data.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Diff only this template (by name; repeatable).
    #[arg(long = "template", value_name = "NAME")]
    pub templates: Vec<String>,
    /// How long to wait for catalog data.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Colour: auto (when stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket; without it, read from the config's [control] socket.
    #[arg(long, env = "REWIRE_SOCKET", value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MaintenanceArgs {
    #[arg(value_enum)]
    pub state: OnOff,
    /// The daemon's control socket; without it, read from the config's [control] socket.
    #[arg(long, env = "REWIRE_SOCKET", value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MetricArgs {
    /// A name declared with [[metric]] in the daemon's config.
    pub name: String,
    /// The number: added to a counter, set on a gauge.
    #[arg(allow_negative_numbers = true)]
    pub value: f64,
    /// The daemon's control socket; without it, read from the config's [control] socket.
    #[arg(long, env = "REWIRE_SOCKET", value_name = "PATH")]
    pub socket: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

fn parse_duration(s: &str) -> Result<Duration, crate::config::DurationError> {
    crate::config::parse_duration(s)
}

/// The command line as `main` parses it: [`Cli`], with `--catalog` hidden from the help of the
/// commands that never open a catalog (`status`, `maintenance`, `import`, `completions`,
/// `man`); it stays global so `rewire --catalog URL render` keeps working.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let catalog = cmd
        .get_arguments()
        .find(|a| a.get_id() == "catalog")
        .cloned()
        .map(|a| a.hide(true));
    // A subcommand that defines an argument itself does not receive the global one.
    if let Some(catalog) = catalog {
        for name in ["status", "maintenance", "import", "completions", "man"] {
            cmd = cmd.mut_subcommand(name, |s| s.arg(catalog.clone()));
        }
    }
    cmd
}

/// Parses the process's arguments with [`command`]; exits (2) with clap's message on a usage
/// error, 0 after `--help` or `--version`.
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_offered_only_where_a_catalog_is_read() {
        let mut cmd = command();
        // As parsing does: global arguments reach the subcommands when the command is built.
        cmd.build();
        let help = |cmd: &mut clap::Command, sub: &str| {
            cmd.find_subcommand_mut(sub)
                .unwrap()
                .render_help()
                .to_string()
        };
        assert!(!help(&mut cmd, "status").contains("--catalog"));
        assert!(!help(&mut cmd, "maintenance").contains("--catalog"));
        assert!(help(&mut cmd, "render").contains("--catalog"));
        let cli = Cli::try_parse_from(["rewire", "--catalog", "dir:/x", "render"]).unwrap();
        assert_eq!(cli.catalog.as_deref(), Some("dir:/x"));
    }
}
