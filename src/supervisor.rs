//! Placeholder (lead): being replaced by the supervision work.
use std::collections::BTreeMap;
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::status::Board;

pub struct Supervisor {}

impl Supervisor {
    pub fn start(
        _config: &Config,
        _catalog: Arc<dyn Catalog>,
        _board: Arc<Board>,
        _main_pid: watch::Sender<Option<Pid>>,
        _env: BTreeMap<String, String>,
        _maintenance: watch::Receiver<bool>,
        _root: CancellationToken,
    ) -> Supervisor {
        Supervisor {}
    }
    pub fn forward(&mut self, _sig: Signal) {}
    pub fn reconfigure(&mut self, _config: &Config) {}
    pub async fn exited(&mut self) -> u8 {
        std::future::pending().await
    }
    pub async fn stop(self, exit: Option<u8>) -> u8 {
        exit.unwrap_or(0)
    }
}
