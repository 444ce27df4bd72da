//! The consume-notification job kind: the events the Kafka consumer received, turned into
//! notifications.
//!
//! * `job` — the job: its queue, payload (the received events) and push;
//! * `notify` — the job's handler (one transaction per job; poison messages refused for good);
//! * `notifications` — the notifications table's SQL;
//! * `carried` — the jobs that carry given events, for operators' searches.

pub mod carried;
pub mod job;
pub mod notifications;
pub mod notify;
