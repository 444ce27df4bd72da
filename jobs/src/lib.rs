//! Job payloads and handlers of orderflow, and the SQL they own, in three floors (each imports
//! only from the floors below it):
//!
//! 1. `engine` — what every queue shares: storages and pushing a job of any kind (`JobKind`),
//!    the storage workers run on, the job lease, one attempt of a job, the pause gate, the job
//!    span and metrics, database error classification. It names no job kind.
//! 2. The job kinds, each with its queue name, payload, push and handler in its own module:
//!    `publish_outbox` (the transactional outbox and the job that publishes it to Kafka),
//!    `consume_notification` (received events turned into notifications), `archive_run` (the
//!    archive workflow's steps and their SQL), `retention` (expired rows of every kind, purged
//!    in batches), `audit_run` (the scheduled invariant audit; its checks are the service's);
//!    beside them `kafka` (producer, consumer and the embedded broker) and `kafka_clients`
//!    (the Kafka clients' rebuilds after fatal errors, as operators see them).
//! 3. Across the kinds: `kinds` (every queue, listed once), `operators` (the job table as
//!    operators read and change it, and their action log), `search` (the jobs an operator's
//!    search names: a job, an order or an event id), `event_selection` (an operator's action by
//!    order or event id: that order's rows and events in the dead jobs that carry them, split
//!    from their batch-mates).
//!
//! Every module has one path: `orderflow_jobs::engine::queue`,
//! `orderflow_jobs::publish_outbox::outbox`, and so on.

pub mod archive_run;
pub mod audit_run;
pub mod consume_notification;
pub mod engine;
pub mod event_selection;
pub mod kafka;
pub mod kafka_clients;
pub mod kinds;
pub mod operators;
pub mod publish_outbox;
pub mod retention;
pub mod search;

/// Appends ` (?, ?, …)` binding `ids`, for `IN` lists.
pub(crate) fn push_id_list(q: &mut sqlx::QueryBuilder<'_, sqlx::MySql>, ids: &[i64]) {
    q.push(" (");
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    q.push(")");
}

pub(crate) use engine::sql_error::is_unique_violation;
