//! `rewire completions SHELL` and `rewire man`: generated from the clap definitions at run
//! time, so they always match the binary (packagers run them at build time).

use std::io::Write as _;

use crate::app::{Failure, Outcome};

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome, Failure> {
    let mut command = crate::app::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "rewire", &mut script);
    print(&script)
}

/// Writes `bytes` to stdout; a reader that went away (`rewire man | head`) is not a failure.
fn print(bytes: &[u8]) -> Result<Outcome, Failure> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::Stdout(e)),
        _ => Ok(Outcome::Done),
    }
}

/// Prints the man page: the command's, then each subcommand's name, synopsis, description and
/// options, in one page (`man rewire` shows everything).
pub fn man() -> Result<Outcome, Failure> {
    let command = crate::app::cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(Failure::Stdout)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("rewire-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).bin_name(name);
        let man = clap_mangen::Man::new(sub);
        man.render_name_section(&mut page)
            .map_err(Failure::Stdout)?;
        man.render_synopsis_section(&mut page)
            .map_err(Failure::Stdout)?;
        man.render_description_section(&mut page)
            .map_err(Failure::Stdout)?;
        man.render_options_section(&mut page)
            .map_err(Failure::Stdout)?;
        man.render_extra_section(&mut page)
            .map_err(Failure::Stdout)?;
    }
    print(&page)
}
