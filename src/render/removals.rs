//! Noticing a destination deleted (or moved away) by hand, so the runner writes it again at
//! once instead of at the next catalog change.
//!
//! One inotify watch per destination directory (not the file: a watch on the file would follow
//! the inode that rewire's own rename replaces). Only a removal or a rename *away from* a
//! destination counts; rewire's own writes rename *onto* it, so they never wake the runner.
//! A directory that does not exist yet is watched once a render has created it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::debug;

pub struct Removals {
    watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::UnboundedReceiver<PathBuf>,
    dests: Vec<PathBuf>,
    watched: HashSet<PathBuf>,
}

impl Removals {
    /// Follows `dests`. Without inotify (limits reached) it never reports anything: the file is
    /// then written again at the next change, as before.
    pub fn new(dests: Vec<PathBuf>) -> Removals {
        let (tx, rx) = mpsc::unbounded_channel();
        let wanted: HashSet<PathBuf> = dests.iter().cloned().collect();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let gone: &[PathBuf] = match event.kind {
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    &event.paths
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => &event.paths[..1],
                _ => &[],
            };
            for path in gone.iter().filter(|p| wanted.contains(*p)) {
                let _ = tx.send(path.clone());
            }
        })
        .map_err(|e| debug!(error = %e, "cannot watch destinations for removal"))
        .ok();
        let mut removals = Removals {
            watcher,
            rx,
            dests,
            watched: HashSet::new(),
        };
        // Nothing was written yet: a missing destination is the first render's job.
        let _ = removals.watch_dirs();
        removals
    }

    /// Watches every destination directory that exists and is not watched yet. True when a
    /// destination in a directory watched just now is already missing (removed between the
    /// write that created the directory and this watch): the caller writes it again.
    pub fn watch_dirs(&mut self) -> bool {
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        let mut missed = false;
        for dir in self.dests.iter().filter_map(|d| d.parent()) {
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.to_path_buf());
                    missed |= self
                        .dests
                        .iter()
                        .any(|d| d.parent() == Some(dir) && missing(d));
                }
                Err(e) => {
                    debug!(dir = %dir.display(), error = %e, "cannot watch a destination directory")
                }
            }
        }
        missed
    }

    /// The next destination removed; pending forever without a watcher.
    pub async fn removed(&mut self) -> PathBuf {
        match self.rx.recv().await {
            Some(p) => p,
            None => std::future::pending().await,
        }
    }
}

/// Whether `path` still exists (a removal event may come from a file already written again).
pub fn missing(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err()
}
