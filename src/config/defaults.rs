//! `[defaults]`: what every template and watch gets unless it says otherwise (the wait).

use super::walker::{Tbl, Walker};
use super::{DEFAULT_WAIT, Defaults};

impl Walker<'_> {
    pub(super) fn defaults(&mut self, root: &Tbl) -> Defaults {
        let Some(t) = self.table(root, "defaults") else {
            return Defaults { wait: DEFAULT_WAIT };
        };
        let wait = self.wait(&t, "wait", DEFAULT_WAIT);
        self.finish(&t, &["wait"]);
        Defaults { wait }
    }
}
