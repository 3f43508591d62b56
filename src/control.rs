//! Placeholder (lead): being replaced by the supervision work.
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::status::Board;

pub enum Command {
    Maintenance(bool),
}

pub fn start(
    _socket: &Path,
    _board: Arc<Board>,
    _stop: CancellationToken,
) -> std::io::Result<mpsc::UnboundedReceiver<Command>> {
    Err(std::io::Error::other("not built yet"))
}

pub fn cleanup(_socket: &Path) {}
