//! The command line's side of the operators' actions (`orderflow jobs …`, `orderflow queues
//! …`): the same actions as the API, recorded in the action log as the CLI's.

use std::io::Write;

use anyhow::{bail, Context};
use orderflow_jobs::{
    kinds::QUEUES,
    operators::pause,
    operators::{
        action_log::Actor,
        job_query::{self, JobFilter},
        ops::{self, ActionError, BulkFilter, Confirm, Op, Selection, LIMIT},
        queues,
    },
};
use sqlx::MySqlPool;

use super::views;
use crate::{
    cli::{JobsCommand, QueuesCommand},
    config::Config,
};

/// The CLI as the action log names it: whoever runs it, with the database's credentials.
fn actor() -> Actor {
    Actor::Cli {
        os_user: std::env::var("USER").ok().filter(|u| !u.is_empty()),
    }
}

pub async fn jobs(
    pool: &MySqlPool,
    config: &Config,
    command: JobsCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        JobsCommand::Dead { queue, limit } => {
            let filter = JobFilter {
                queue,
                ..JobFilter::default()
            };
            let (jobs, total) = job_query::list(pool, &filter, limit, 0).await?;
            writeln!(out, "{total} dead job(s)")?;
            for j in jobs {
                writeln!(
                    out,
                    "{}\t{}\tattempts {}/{}\t{}",
                    j.id,
                    j.queue,
                    j.attempts,
                    j.max_attempts,
                    j.last_result.unwrap_or_default()
                )?;
            }
        }
        JobsCommand::Show { id } => {
            let Some(job) = views::job_detail(pool, config.trace_ui.as_ref(), &id).await? else {
                bail!("no job with id {id}");
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&job)?)?;
        }
        JobsCommand::Retry { id: Some(id), .. } => {
            ops::act(pool, Op::Retry, &id, &actor()).await?;
            writeln!(out, "job {id} re-queued")?;
        }
        JobsCommand::Retry {
            id: None,
            queue,
            expect,
            dry_run,
            ..
        } => {
            let selection = Selection::Filter(BulkFilter {
                queue,
                ..BulkFilter::default()
            });
            let confirm = Confirm {
                expected: expect,
                dry_run,
            };
            match ops::act_on_all(pool, Op::Retry, &selection, confirm, &actor()).await {
                Ok(o) if o.dry_run => writeln!(
                    out,
                    "{} dead job(s) match; nothing changed (dry run; at most {LIMIT} per action)",
                    o.matched
                )?,
                Ok(o) => writeln!(out, "{} dead job(s) re-queued", o.changed)?,
                Err(ActionError::ConfirmationRequired { matched }) => bail!(
                    "{matched} dead job(s) match; nothing was re-queued. Run again with \
                     --expect {matched} to re-queue all of them"
                ),
                Err(ActionError::CountChanged { expected, matched }) => bail!(
                    "{matched} dead job(s) match now, not the {expected} expected; nothing was \
                     re-queued"
                ),
                Err(ActionError::TooManyMatching { matched, limit }) => bail!(
                    "{matched} dead jobs match and one action re-queues at most {limit}; narrow \
                     it with --queue; nothing was re-queued"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        JobsCommand::Discard { id } => {
            let rows = ops::act(pool, Op::Discard, &id, &actor()).await?;
            writeln!(out, "job {id} discarded ({rows} outbox row(s) DISCARDED)")?;
        }
    }
    Ok(())
}

pub async fn queues(
    pool: &MySqlPool,
    config: &Config,
    command: Option<QueuesCommand>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (queue, paused) = match command {
        None => {
            let lease = config.events.queue.lease;
            for q in queues::overview(pool, lease).await? {
                write!(
                    out,
                    "{}\t{}\tpending {}\trunning {}\tdead {}\tdone {}\tdiscarded {}\tworkers {}",
                    q.queue,
                    if q.pause.paused { "PAUSED" } else { "running" },
                    q.counts.pending,
                    q.counts.running,
                    q.counts.dead,
                    q.counts.done,
                    q.counts.discarded,
                    q.live_workers
                )?;
                // The Kafka client the queue works through, replaced after fatal errors.
                if let Some(k) = &q.kafka_client {
                    write!(
                        out,
                        "\t{} rebuilds {} (60 min {})",
                        k.client, k.rebuilds_total, k.rebuilds_last_60m
                    )?;
                    if let Some(error) = &k.last_error {
                        write!(out, ", last: {error}")?;
                    }
                }
                writeln!(out)?;
            }
            return Ok(());
        }
        Some(QueuesCommand::Pause { queue }) => (queue, true),
        Some(QueuesCommand::Resume { queue }) => (queue, false),
    };
    let queue = QUEUES
        .into_iter()
        .find(|q| *q == queue)
        .with_context(|| format!("no queue {queue:?}; the queues are {}", QUEUES.join(", ")))?;
    let changed = pause::set_paused(pool, queue, paused, &actor()).await?;
    let state = if paused { "paused" } else { "running" };
    let note = if changed { "" } else { " (it already was)" };
    writeln!(out, "{queue} is {state}{note}")?;
    Ok(())
}
