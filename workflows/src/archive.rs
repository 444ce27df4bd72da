//! The archive run as an apalis-workflow on the `archive-run` queue:
//!
//! ```text
//! plan ──▶ chunk ──▶ chunk ──▶ … ──▶ summary
//!          (one job per chunk: `repeat_until` queues the next while a full chunk moved)
//! ```
//!
//! Each step is a job of its own in the job table, so a run's progress, failures and retries
//! are visible per chunk, and a dead chunk job is retried by operators like any other.
//! The fan-out combinators (`filter_map`, DAG fan-in) are not used: their collector waits
//! through `wait_for`, whose `CAST(? AS JSON)` MariaDB rejects (docs/adr/0007-archive.md).

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_workflow::Workflow;
use orderflow_jobs::{
    archive_run::{
        archive::{ArchiveRun, ARCHIVE_RUN},
        archive_steps::{self, ArchiveContext},
    },
    engine::{
        attempts::AttemptHistoryLayer,
        backend::{self, WorkerStorage},
        pause::Pauses,
        queue::QueueSettings,
    },
};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::supervise;

fn monitor(
    name: String,
    ctx: Arc<ArchiveContext>,
    pauses: Pauses,
    shutdown_timeout: Duration,
) -> Monitor {
    Monitor::new()
        .register(move |_| {
            let workflow =
                Workflow::<ArchiveRun, ArchiveRun, WorkerStorage<Vec<u8>>>::new(ARCHIVE_RUN)
                    .and_then(archive_steps::plan)
                    .repeat_until(archive_steps::chunk)
                    .and_then(archive_steps::summarize);
            // One job at a time per replica: chunks are meant to trickle, not to compete with
            // orders for the database.
            WorkerBuilder::new(name.clone())
                .backend(backend::worker_storage::<Vec<u8>>(
                    &ctx.pool,
                    ARCHIVE_RUN,
                    &ctx.settings,
                    None,
                    pauses.gate(ARCHIVE_RUN),
                ))
                .layer(AttemptHistoryLayer::new(&ctx.pool, ARCHIVE_RUN))
                .concurrency(1)
                .data(ctx.clone())
                .build(workflow)
        })
        .shutdown_timeout(shutdown_timeout)
}

/// Runs the archive workflow's worker until `stop` (restarting it if it ends on its own);
/// it does not fetch while operators have the queue paused (`pauses`, kept fresh by the
/// caller).
pub async fn run_archive_worker(
    pool: MySqlPool,
    settings: QueueSettings,
    shutdown_timeout: Duration,
    pauses: Pauses,
    stop: CancellationToken,
) {
    let ctx = Arc::new(ArchiveContext {
        pool: pool.clone(),
        settings,
    });
    supervise(ARCHIVE_RUN, "archive", Some(pool), stop, move |name| {
        monitor(name, ctx.clone(), pauses.clone(), shutdown_timeout)
    })
    .await;
}
