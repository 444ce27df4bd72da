//! The consume-notification job kind: the events the Kafka consumer received, turned into
//! notifications.
//!
//! * `notify` — the job's handler (one transaction per job; poison messages refused for good);
//! * `notifications` — the notifications table's SQL.

pub mod notifications;
pub mod notify;
