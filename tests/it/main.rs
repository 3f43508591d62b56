//! The integration tests, one binary: each module drives the real `rewire` binary or the
//! library against real components (Consul, etcd, nginx, haproxy, processes and signals).
//!
//! One binary so that `support/` (the harnesses) and `project` (the temp-dir builder) are
//! compiled once, and so that the compiler sees which helpers nothing uses.
//!
//! Run one module with `cargo test --test it consul::`, one test with its name.

mod attacks;
mod cli;
mod consul;
mod daemon;
mod datacenters;
mod election;
mod etcd;
mod examples;
mod haproxy_runtime;
mod hardening;
mod harness_selftest;
mod import;
mod jobs;
mod packaging;
mod project;
mod scale;
mod supervision;
mod support;
mod telemetry;
mod templates;
