//! rewire keeps an app wired to the services around it.
//!
//! # Theory of operation
//!
//! Data flows one way:
//!
//! ```text
//! catalog (dir | consul | etcd)              catalog::Catalog::watch, for the wanted set
//!   -> store (latest data per query)          store::Store, published as Arc<Snapshot>
//!   -> runner per template group              render::runner: debounce -> render ->
//!                                             check -> atomic write -> reload (render::group)
//!   -> files in place, programs reloaded
//! ```
//!
//! Templates never talk to the network: template functions read the current snapshot, and a
//! query the snapshot does not have yet is recorded as missing; the group's [`wanted::Owner`]
//! adds it to the wanted set, the catalog fetches it, and the template renders again. A
//! template is written only once every query it uses has data.
//!
//! Beside the data flow, [`proc`] runs what the container needs: the supervisor (registrations
//! with TTL health, `pre_start`, main, the stop sequence), the jobs (`[[job]]`s and main as one
//! graph ordered by events, published as an immutable snapshot like the store's, started before
//! the catalog preflight, stopped in reverse), `[[watch]]` handlers and `[[task]]`s,
//! `[[election]]` candidates, and, as PID 1, the reaper (forked before the runtime exists).
//!
//! Elections: each backend offers a [`catalog::election::Ballot`] (dir flock, Consul session
//! lock, etcd lease + transaction) beside its watch code; [`proc::election`] runs the term
//! (renewals, the local deadline, hooks, the gate service's health from [`proc::health`]) and
//! publishes `Query::Election(name)` into the store like any answer, so `leader()` and
//! `is_leader()` are template dependencies. Those queries never reach the catalog's watch set.
//!
//! # Layout
//!
//! - [`app`]: the edge. The command line, logging, the daemon (`rewire run`: start, SIGHUP
//!   reload, stop sequence), the one-shot commands, the control socket, and the one place that
//!   picks an exit status. Nothing else imports it.
//! - [`model`]: the words everyone shares (queries, answers, instances, registrations, the
//!   checks on them). Imports nothing of the crate.
//! - [`config`]: `rewire.toml` into typed settings. Imports only the model and the backoff rules.
//! - [`catalog`]: the `Catalog` trait and its backends (dir, consul, etcd), which never import
//!   each other; they share `record` and the HTTP client builder.
//! - [`store`] and [`wanted`]: the latest data per query, and the set of queries to keep current.
//! - [`render`]: templates, the runner, the pipeline and reload groups. Reads the store, never
//!   the catalog.
//! - [`proc`]: supervisor, registrar, handlers, tasks, PID 1. Never the template engine.
//! - [`telemetry`]: the metrics (a handle the daemon passes down; no global registry), the
//!   state read at scrape time, and the `[telemetry]` HTTP listener (`/metrics`, `/health`,
//!   `/ready`, `/status`). Reads the board, the store and the metrics; nothing reads it back.
//! - Shared leaves: [`command`] (child processes), [`files`] (atomic files, diffs), [`confined`]
//!   (reading files others may write: regular files inside one directory, capped), [`debounce`],
//!   [`backoff`], [`status`] (the status board), [`host`] (hostname, addresses), [`lock`],
//!   [`alloc`] (the allocator: a bump region for the one-shot commands).
//!
//! # Tasks and shutdown
//!
//! One catalog watch task (the backend decides how many connections it needs), the wanted-set
//! collector, one runner task per template group, one task per `[[watch]]` and `[[task]]` (and
//! their runs), the supervisor's (one registrar per `[[service]]`, main), one per `[[job]]`
//! (spawned before the preflight, awaited at its turn in the stop sequence), one per
//! `[[election]]` (and its follower), the control socket, and with `[telemetry]` the HTTP
//! listener (its accept loop and one task per connection). The stop sequence steps every
//! election down (on_demoted, release) before the supervisor deregisters.
//! Each runs on a `TaskTracker` and takes a child of one `CancellationToken`; the stop sequence
//! lives in `app::daemon` and waits for every tracker, for a bounded time, before the process
//! exits. Nothing else holds the exit: renders run on detached threads of their own
//! ([`render::worker`]), a child command's output pipe is read asynchronously and a dropped
//! run kills the command's process group ([`command`]), and the runtime gets half a second to
//! shut down. Every child is spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so it
//! dies with rewire even on `kill -9`.

pub mod alloc;
pub mod app;
pub mod backoff;
pub mod catalog;
pub mod command;
pub mod config;
pub mod confined;
pub mod debounce;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod import;
pub mod lock;
pub mod model;
pub mod parallel;
pub mod prefix_sort;
pub mod proc;
pub mod procfs;
pub mod render;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod timing;
pub mod wanted;
