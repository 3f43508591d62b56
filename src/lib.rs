//! rewire keeps an app wired to the services around it.
//!
//! # Theory of operation
//!
//! Data flows one way:
//!
//! ```text
//! catalog (dir | consul | etcd)
//!   -> watchers (one per distinct query)      catalog::Catalog::watch
//!   -> store (latest data per query)          store::Store, published as Arc<Snapshot>
//!   -> runner: debounce -> render -> check -> atomic write -> reload
//! ```
//!
//! Templates never talk to the network: template functions read the current snapshot, and a
//! query the snapshot does not have yet is recorded as a dependency, fetched, and the template
//! rendered again. A template is written only once every query it uses has data.
//!
//! Tasks: one catalog watch task (the backend decides how many connections it needs), one
//! runner task per template, the registrar (one task per `[[service]]`), the supervisor
//! (main process and hooks), one task per `[[watch]]` and `[[task]]`, the control socket and
//! the signal handler. All take a child of one `CancellationToken`; the stop sequence lives in
//! `daemon::run`.

pub mod app;
pub mod backoff;
pub mod catalog;
pub mod command;
pub mod config;
pub mod debounce;
pub mod files;
pub mod host;
pub mod lock;
pub mod model;
pub mod proc;
pub mod render;
pub mod status;
pub mod store;
pub mod wanted;
