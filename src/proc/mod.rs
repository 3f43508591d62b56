//! Processes rewire runs for the container: supervisor, registrar, handlers, tasks, PID 1.

pub mod init;
pub mod registrar;
pub mod supervisor;
pub mod watches;
