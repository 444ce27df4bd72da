//! The daily archive schedule (apalis-cron). Every replica ticks; each tick queues the day's
//! archive-run job under an idempotency key made of the date, so the run is queued once
//! however many replicas tick (apalis-cron alone would run it once per replica).

use std::{str::FromStr, sync::Arc, time::Duration};

use apalis::prelude::{BoxDynError, Data, Monitor, WorkerBuilder};
use apalis_cron::{CronStream, Tick};
use chrono::{DateTime, Utc};
use orderflow_jobs::{
    archive::ArchiveRun,
    queue::{self, Pushed},
};
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

use crate::{supervise, Pipeline};

#[derive(Debug, Clone)]
pub struct ArchiveSchedule {
    /// Cron expression with seconds, in UTC (e.g. `0 0 3 * * *`: 03:00 every day).
    pub cron: String,
    pub older_than_days: u32,
    pub chunk_size: u32,
    /// Retention of PUBLISHED outbox rows and finished jobs.
    pub retention: Duration,
}

pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// The run key of a scheduled run: one per day.
pub fn daily_run_key(at: DateTime<Utc>) -> String {
    format!("archive-{}", at.format("%Y-%m-%d"))
}

struct TickContext {
    pipeline: Pipeline,
}

async fn on_tick(tick: Tick, ctx: Data<Arc<TickContext>>) -> Result<(), BoxDynError> {
    let p = &ctx.pipeline;
    let run = ArchiveRun {
        run_key: daily_run_key(tick.get_timestamp().with_timezone(&Utc)),
        older_than_days: p.archive.older_than_days,
        chunk_size: p.archive.chunk_size,
    };
    let key = run.run_key.clone();
    match queue::push_archive(&p.pool, &p.settings, run).await? {
        Pushed::Queued => tracing::info!(run_key = %key, "archive run queued"),
        Pushed::Duplicate => {
            tracing::debug!(run_key = %key, "archive run already queued by another replica")
        }
    }
    Ok(())
}

pub(crate) async fn run_schedule(p: Pipeline, stop: CancellationToken) {
    let schedule = match parse_schedule(&p.archive.cron) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "archive schedule disabled");
            return;
        }
    };
    let ctx = Arc::new(TickContext {
        pipeline: p.clone(),
    });
    supervise("archive-schedule", stop, move || {
        let (schedule, ctx) = (schedule.clone(), ctx.clone());
        Monitor::new().register(move |_| {
            WorkerBuilder::new(format!("cron-{}", Ulid::new()))
                .backend(CronStream::new(schedule.clone()))
                .data(ctx.clone())
                .build(on_tick)
        })
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn run_keys_are_one_per_day_and_fit_the_idempotency_column() {
        let a = Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 11, 26, 23, 59, 59).unwrap();
        assert_eq!(daily_run_key(a), daily_run_key(b));
        assert!(daily_run_key(a).len() <= 36);
    }

    #[test]
    fn schedules_are_validated() {
        assert!(parse_schedule("0 0 3 * * *").is_ok());
        assert!(parse_schedule("every day").is_err());
    }
}
