//! The job engine: what every queue shares, whatever its jobs do. apalis on MySQL with the
//! parts apalis-mysql rc.8 lacks or gets wrong on MariaDB (docs/adr/0004-job-engine.md):
//!
//! * `queue` — the queues, their settings, storages, pushing, and one attempt of a job
//!   (`JobAttempt`: its span, outcome and backoff);
//! * `backend` — the storage workers run on (keep-alive-only heartbeat, a fetch loop that
//!   survives a failed fetch), and `fetch`, the fetch itself, which names the jobs a failed
//!   fetch may have taken all the same;
//! * `reaper` — the job lease;
//! * `lost_acks` — jobs left `Running` by a lost acknowledgement, under a live worker;
//! * `attempts` — the history of failed attempts, recorded by a layer around every worker;
//! * `job_query`, `ops`, `bulk`, `split`, `queues`, `pause`, `audit` — the operators' side:
//!   the job table as they read it, their actions on dead jobs (one, or many at once in one
//!   transaction; a job split so that an action on one order's events leaves the others'),
//!   the queues at a glance, pausing a queue, and the log of every action;
//! * `gauges` — the database's state as the gauges operators alert on, read at each scrape;
//! * `trace` — the trace context that follows a job across processes, the span every job
//!   run gets, and the per-queue job metrics;
//! * `sql_error` — which database errors are worth trying again.
//!
//! The job kinds (`publish_outbox`, `consume_notification`, `archive_run`, `retention`) build
//! on this module; it names them only where an operator's action on a job must also change
//! the rows that job carries (a publish job's outbox rows), or takes one order's part of it
//! (`crate::event_selection`).

pub mod attempts;
pub mod audit;
pub mod backend;
pub mod bulk;
pub mod fetch;
pub mod gauges;
pub mod job_query;
pub mod lost_acks;
pub mod ops;
pub mod pause;
pub mod queue;
pub mod queues;
pub mod reaper;
pub(crate) mod split;
pub mod sql_error;
pub mod trace;
