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

pub mod backoff;
pub mod catalog;
pub mod config;
pub mod store;
pub mod command;
pub mod output;
pub mod template;
