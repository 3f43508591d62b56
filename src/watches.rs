//! Placeholder (lead): being replaced by the supervision work.
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::runner::Shared;

pub fn spawn_all(
    _config: &Config,
    _tracker: &TaskTracker,
    _stop: &CancellationToken,
    _shared: &Shared,
    _catalog: Arc<dyn Catalog>,
    _maintenance: watch::Receiver<bool>,
) {
}
