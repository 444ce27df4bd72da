//! The archive workflow's job handlers (composed in the workflows crate): each run of a step
//! gets a job span in the run's trace, its outcome counted, and, when it failed with
//! attempts left, its next attempt pushed out by the backoff.

use std::{future::Future, sync::Arc, time::Instant};

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use tracing::Instrument;
use ulid::Ulid;

use crate::{
    archive::{self, ArchivePlan, ArchiveRun, Chunk, Summary},
    queue::{self, QueueSettings, ARCHIVE_RUN},
    trace::{self, Outcome, TraceContext},
};

pub struct ArchiveContext {
    pub pool: sqlx::MySqlPool,
    pub settings: QueueSettings,
}

type Ctx = Data<Arc<ArchiveContext>>;

/// The job a step runs as.
struct Job {
    id: String,
    attempt: usize,
    max_attempts: i32,
}

impl Job {
    fn new(id: TaskId<Ulid>, attempt: Attempt, task: &MySqlContext) -> Self {
        Job {
            id: id.to_string(),
            attempt: attempt.current(),
            max_attempts: task.max_attempts(),
        }
    }
}

/// Runs one step of the workflow as a job.
async fn step<T>(
    name: &'static str,
    ctx: &ArchiveContext,
    (run_key, parent): (&str, &TraceContext),
    Job {
        id,
        attempt,
        max_attempts,
    }: Job,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, BoxDynError> {
    let job = trace::job_span(ARCHIVE_RUN, &id, attempt, parent);
    let started = Instant::now();
    let inner = tracing::info_span!(
        parent: &job,
        "archive.step",
        otel.name = format!("archive {name}"),
        "archive.step" = name,
        "archive.run_key" = run_key,
        "archive.orders" = tracing::field::Empty,
    );
    let result = work.instrument(inner).instrument(job.clone()).await;
    let outcome = match &result {
        Ok(_) => Outcome::Done,
        Err(_) if queue::is_last_attempt(attempt, max_attempts) => Outcome::Dead,
        Err(e) => {
            tracing::warn!(parent: &job, error = %e, step = name, run_key, "archive step failed; will retry");
            queue::retry_later(&ctx.pool, &ctx.settings, &id, attempt).await?;
            Outcome::Retry
        }
    };
    trace::finish_job(&job, ARCHIVE_RUN, started, outcome);
    Ok(result?)
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
    let job = Job::new(id, attempt, &task);
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
    let job = Job::new(id, attempt, &task);
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
    let job = Job::new(id, attempt, &task);
    step("summary", &ctx, (&plan.run_key, &plan.trace), job, work).await
}
