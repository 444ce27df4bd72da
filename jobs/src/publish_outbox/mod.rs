//! The publish-outbox job kind: the transactional outbox table and the job that drains it.
//!
//! * `job` — the job: its queue, payload and push;
//! * `outbox` — the table's SQL: appended by the order transaction, claimed and marked by the
//!   job, swept for rows whose job was lost;
//! * `producer` — the Kafka producer the jobs share, rebuilt after a fatal error;
//! * `publish` — the job's handler: NEW rows → Kafka → PUBLISHED (or DEAD);
//! * `retry_policy` — which failures are retried, for how long, and which are DEAD at once;
//! * `publish_batch` — rows committed together get one publish-outbox job;
//! * `carried` — the rows as operators see and change them;
//! * `reseed` — a fresh embedded broker given again what the last one may have lost.

pub mod carried;
pub mod job;
pub mod outbox;
pub mod producer;
pub mod publish;
pub mod publish_batch;
pub mod reseed;
pub mod retry_policy;
