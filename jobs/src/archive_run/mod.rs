//! The archive-run job kind: finished orders move to the archive tables, chunk by chunk, as a
//! workflow of jobs (plan → chunks → summary) composed in the workflows crate.
//!
//! * `archive` — the run's SQL and its steps' work;
//! * `archive_steps` — the steps' job handlers.

pub mod archive;
pub mod archive_steps;
