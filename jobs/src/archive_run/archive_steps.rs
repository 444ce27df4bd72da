//! The archive workflow's job handlers (composed in the workflows crate): each run of a step
//! is a job attempt (`queue::JobAttempt`: span in the run's trace, outcome counted, backoff
//! on failure) with an `archive <step>` span of its own.

use std::{future::Future, sync::Arc};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use tracing::Instrument;
use ulid::Ulid;

use crate::{
    archive_run::archive::{self, ArchivePlan, ArchiveRun, Chunk, Summary, ARCHIVE_RUN},
    engine::{
        queue::{JobAttempt, QueueSettings},
        trace::TraceContext,
    },
};

pub struct ArchiveContext {
    pub pool: sqlx::MySqlPool,
    pub settings: QueueSettings,
}

type Ctx = Data<Arc<ArchiveContext>>;

/// Runs one step of the workflow as this job attempt.
async fn step<T>(
    name: &'static str,
    ctx: &ArchiveContext,
    (run_key, parent): (&str, &TraceContext),
    job: JobAttempt,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, BoxDynError> {
    job.run(&ctx.pool, &ctx.settings, parent, |job_span| {
        work.instrument(tracing::info_span!(
            parent: job_span,
            "archive.step",
            otel.name = format!("archive {name}"),
            "archive.step" = name,
            "archive.run_key" = run_key,
            "archive.orders" = tracing::field::Empty,
        ))
    })
    .await
}

/// Plan: the run's row and cutoff. A scheduled run starts a trace of its own, which every
/// chunk job and the summary join.
pub async fn plan(
    run: ArchiveRun,
    ctx: Ctx,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<ArchivePlan, BoxDynError> {
    let root = TraceContext::default();
    let work = async {
        let here = TraceContext::of_span(&tracing::Span::current()).unwrap_or_default();
        archive::plan(&ctx.pool, &run, here).await
    };
    let job = JobAttempt::new(ARCHIVE_RUN, &id, &attempt, &task);
    step("plan", &ctx, (&run.run_key, &root), job, work).await
}

/// Chunk: one chunk moved per job. `None` queues the next chunk job (apalis-workflow's
/// `repeat_until`); the plan itself, once nothing is left, goes on to the summary.
pub async fn chunk(
    plan: ArchivePlan,
    ctx: Ctx,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<Option<ArchivePlan>, BoxDynError> {
    let work = async {
        let moved = archive::move_chunk(&ctx.pool, &plan).await?;
        if let Chunk::Moved {
            orders,
            items,
            last_order_id,
            ..
        } = moved
        {
            tracing::debug!(orders, items, last_order_id, "archive chunk committed");
            tracing::Span::current().record("archive.orders", orders);
        }
        Ok(moved)
    };
    let job = JobAttempt::new(ARCHIVE_RUN, &id, &attempt, &task);
    let moved = step("chunk", &ctx, (&plan.run_key, &plan.trace), job, work).await?;
    Ok(match moved {
        // A short chunk was the last one: nothing eligible can appear behind it (only orders
        // older than the cutoff qualify), so the summary follows without an empty chunk job.
        Chunk::Moved { selected, .. } if selected >= plan.chunk_size as usize => None,
        _ => Some(plan),
    })
}

/// Summary: closes the run and returns its figures (also kept in its `archive_runs` row).
pub async fn summarize(
    plan: ArchivePlan,
    ctx: Ctx,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<Summary, BoxDynError> {
    let work = archive::finish(&ctx.pool, &plan);
    let job = JobAttempt::new(ARCHIVE_RUN, &id, &attempt, &task);
    step("summary", &ctx, (&plan.run_key, &plan.trace), job, work).await
}
