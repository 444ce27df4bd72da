//! Job payloads and handlers of orderflow, and the SQL they own:
//!
//! * `outbox` — the transactional outbox table (appended by the order transaction, drained by
//!   publish-outbox);
//! * `publish` — the publish-outbox job: NEW rows → Kafka → PUBLISHED (or DEAD);
//!   `publish_batch` — rows committed together get one publish-outbox job;
//! * `notifications` and `notify` — the consume-notification job and the table it fills;
//! * `queue` — apalis storages and pushing jobs; `backend` — the storage workers run on; `ops` — operators' dead-job actions;
//!   `reaper` — the job lease apalis-mysql rc.8 lacks;
//! * `kafka` — producer, consumer and the embedded broker; `trace` — the trace context that
//!   follows an order across these hops, and the span every job run gets;
//! * `archive` and `archive_steps` — the archive workflow's steps (plan, chunk, summary) and
//!   their SQL: finished orders to the archive tables, chunk by chunk;
//! * `retention` — the retention job: expired rows of every kind, purged in batches;
//! * `sql_error` — which database errors are worth trying again.

pub mod archive;
pub mod archive_steps;
pub mod backend;
pub mod kafka;
pub mod notifications;
pub mod notify;
pub mod ops;
pub mod outbox;
pub mod publish;
pub mod publish_batch;
pub mod queue;
pub mod reaper;
pub mod retention;
pub mod sql_error;
pub mod trace;

/// Appends ` (?, ?, …)` binding `ids`, for `IN` lists.
pub(crate) fn push_id_list(q: &mut sqlx::QueryBuilder<'_, sqlx::MySql>, ids: &[i64]) {
    q.push(" (");
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    q.push(")");
}

pub(crate) use sql_error::is_unique_violation;
