//! HAProxy without reloads: server changes through the Runtime API, and reloads HAProxy
//! confirms.
//!
//! A reload starts a new worker and lets the old one finish: keep-alive connections close on
//! the way, and HAProxy 2.6 drops a SIGUSR2 that arrives while the previous reload is still
//! under way. Most catalog changes only add, remove or move servers, and HAProxy's Runtime API
//! does that in a millisecond on the running worker. So, for a template with
//! `runtime = { haproxy = "<admin socket>" }`, after the check passed and the file was
//! written:
//!
//! - [`cfg`] reads both configs into sections and `server` lines;
//! - [`plan`] compares what HAProxy runs with the new file and says which commands make the
//!   change, or why only a reload can (each rule of HAProxy 2.6's dynamic servers);
//! - [`runtime`] keeps what HAProxy runs, sends the commands through [`socket`], and deletes
//!   removed servers once no connection is attached;
//! - [`state`] reads HAProxy's answers and checks it agrees with the file after every round,
//!   repairing what differs;
//! - [`master`] reloads through the master CLI and confirms it, for
//!   `reload = { haproxy_master = "<master socket>" }`.
//!
//! The file is always written too: runtime changes are lost at the next reload, which then
//! reads them from the file. The pure parts (`cfg`, `plan`, `state`, `master`'s parser) are
//! tested on strings; the socket side against a real HAProxy in `tests/it/haproxy_runtime.rs`.

pub mod cfg;
pub mod master;
pub mod plan;
pub mod runtime;
pub mod socket;
pub mod state;
