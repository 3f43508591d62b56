//! From store snapshots to files in place: templates, the per-group runner, the pipeline.

pub mod functions;
pub mod group;
pub mod pipeline;
pub mod runner;
pub mod template;
pub mod values;
