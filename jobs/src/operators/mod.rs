//! The operators' side of the job table, above the engine and the job kinds: the jobs as
//! operators read them, their actions on dead jobs (one, or many at once in one transaction;
//! a job split so that an action on one order's events leaves the others'), the queues at a
//! glance, pausing a queue, the gauges they alert on, and the log of every action.
//!
//! * `job_query` — the job table as operators read and filter it;
//! * `ops`, `bulk`, `split` — retry and discard, one job or many, and a job split in two;
//! * `queues` — the queues at a glance (counts, pause state, Kafka client rebuilds);
//! * `pause` — pausing and resuming a queue (the gate itself is the engine's);
//! * `gauges` — the database's state as the gauges operators alert on, read at each scrape;
//! * `action_log` — the log of every operator's action, written in the action's transaction.

pub mod action_log;
pub mod bulk;
pub mod gauges;
pub mod job_query;
pub mod ops;
pub mod pause;
pub mod queues;
pub(crate) mod split;
