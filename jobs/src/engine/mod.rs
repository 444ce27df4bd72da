//! The job engine, the ground floor of this crate: what every queue shares, whatever its jobs
//! do. apalis on MySQL with the parts apalis-mysql rc.8 lacks or gets wrong on MariaDB
//! (docs/adr/0004-job-engine.md):
//!
//! * `queue` — the queue settings, storages, pushing a job of any kind (`JobKind`), and one
//!   attempt of a job (`JobAttempt`: its span, outcome and backoff);
//! * `backend` — the storage workers run on (keep-alive-only heartbeat, a fetch loop that
//!   survives a failed fetch), and `fetch`, the fetch itself, which names the jobs a failed
//!   fetch may have taken all the same;
//! * `reaper` — the job lease;
//! * `lost_acks` — jobs left `Running` by a lost acknowledgement, under a live worker;
//! * `attempts` — the history of failed attempts, recorded by a layer around every worker;
//! * `pause` — the gate a paused queue's workers wait at, and the pause state they follow;
//! * `trace` — the trace context that follows a job across processes, the span every job
//!   run gets, and the per-queue job metrics;
//! * `sql_error` — which database errors are worth trying again.
//!
//! It imports nothing else of this crate: the job kinds (`publish_outbox`,
//! `consume_notification`, `archive_run`, `retention`, `audit_run`) build on it through
//! `JobKind`, and the operators' side (`crate::operators`) on both.

pub mod attempts;
pub mod backend;
pub mod fetch;
pub mod lost_acks;
pub mod pause;
pub mod queue;
pub mod reaper;
pub mod sql_error;
pub mod trace;
