//! `rewire import`: prints or writes the translated setup; a finding that needs a person makes
//! the answer "no" (exit 1), an unreadable input is a failure (exit 2).

use crate::app::{Failure, Outcome};
use crate::import::{self, ImportArgs};

pub fn run(args: &ImportArgs) -> Result<Outcome, Failure> {
    let outcome = import::import(args).map_err(Failure::Import)?;
    if outcome.written.is_none() {
        print!("{}", outcome.config);
    }
    let report = outcome.report();
    if outcome.needs_person() {
        Ok(Outcome::Findings(report))
    } else {
        eprintln!("{report}");
        Ok(Outcome::Done)
    }
}
