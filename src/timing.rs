//! Marks on the path from a catalog change to the file in place, for finding where the time
//! goes.
//!
//! Each stage (the answer received, decoded, the store updated, the runner woken, the render
//! done, the temp file written, its fsync, the rename, the directory fsync) emits one TRACE
//! event on the target `rewire::timing` with the stage's name and `mono_ns`, the monotonic
//! clock (`CLOCK_MONOTONIC`, which every process on the machine shares, so a benchmark can set
//! its own clock readings beside them). `benches/reaction.rs` runs rewire with
//! `REWIRE_LOG=warn,rewire::timing=trace --log-format json` and prints the median of each stage.
//!
//! At any other level a mark costs one relaxed atomic load (tracing's level check happens
//! before the fields, and so the clock, are evaluated).

/// The stages, in the order a change passes them.
pub mod stage {
    /// The catalog's answer or event is in rewire's hands (read off the socket or inotify).
    pub const RECEIVED: &str = "received";
    /// The answer is decoded into catalog data (Consul, etcd).
    pub const DECODED: &str = "decoded";
    /// A new snapshot is published.
    pub const STORE_UPDATED: &str = "store_updated";
    /// A template group saw a query it uses change and decided to render.
    pub const RUNNER_WOKEN: &str = "runner_woken";
    /// A template rendered.
    pub const RENDER_DONE: &str = "render_done";
    /// The temp file beside the destination holds the bytes.
    pub const TEMP_WRITTEN: &str = "temp_written";
    /// The temp file is fsynced.
    pub const FSYNC: &str = "fsync";
    /// The temp file is renamed over the destination: the change is visible.
    pub const RENAME: &str = "rename";
    /// The destination's directory is fsynced: the rename is durable.
    pub const DIR_FSYNC: &str = "dir_fsync";
}

/// Marks that a change reached `stage` (see the module docs).
#[inline]
pub fn mark(stage: &'static str) {
    tracing::trace!(target: "rewire::timing", stage, mono_ns = now_ns());
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
