//! From store snapshots to files in place.
//!
//! [`template`] renders against a snapshot and discovers what is missing ([`functions`] and
//! [`values`] are its Tera side); [`runner`] is the daemon's loop per template group;
//! [`pipeline`] the steps after a render (compare, check, write, reload, restore), shared with
//! `rewire render`, as is [`group`] (reload once per group, roll back together).
//! [`haproxy`] updates HAProxy through its Runtime API instead of reloading it, where it can.
//!
//! This side reads the store only: it never imports a catalog, so templates cannot reach the
//! network.

pub mod functions;
pub mod group;
pub mod haproxy;
pub mod pipeline;
mod regexes;
pub mod removals;
pub mod runner;
pub mod runtimes;
pub mod template;
pub mod values;
pub mod worker;
