//! Job payloads and handlers of orderflow, and the SQL they own. The engine and each job kind
//! have a module of their own:
//!
//! * `engine` — what every queue shares: queues and pushing, the storage workers run on, the
//!   job lease, operators' actions, the job span and metrics, database error classification;
//! * `publish_outbox` — the transactional outbox and the job that publishes it to Kafka;
//! * `consume_notification` — the job that turns received events into notifications;
//! * `archive_run` — the archive workflow's steps and their SQL;
//! * `retention` — the retention job: expired rows of every kind, purged in batches;
//! * `audit_run` — the scheduled invariant audit (its checks are the service's);
//! * `kafka` — producer, consumer and the embedded broker;
//! * `kafka_clients` — the Kafka clients' rebuilds after fatal errors, as operators see them;
//! * `sql_script` — statements sent together in one round trip (the order path's batches);
//! * `search` — the jobs an operator's search names (a job, an order or an event id), across
//!   the kinds;
//! * `event_selection` — an operator's action by order or event id: that order's rows and
//!   events in the dead jobs that carry them, split from their batch-mates.
//!
//! The modules inside them keep their short paths at the crate root (`orderflow_jobs::queue`,
//! `orderflow_jobs::outbox`, …), the paths the service, the workflows and the tests use.

pub mod archive_run;
pub mod audit_run;
pub mod consume_notification;
pub mod engine;
pub mod event_selection;
pub mod kafka;
pub mod kafka_clients;
pub mod publish_outbox;
pub mod retention;
pub mod search;
pub mod sql_script;

pub use archive_run::{archive, archive_steps};
pub use consume_notification::{notifications, notify};
pub use engine::{backend, ops, queue, reaper, sql_error, trace};
pub use publish_outbox::{outbox, producer, publish, publish_batch, reseed, retry_policy};

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
