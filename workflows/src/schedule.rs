//! The schedules (apalis-cron): the daily archive run, the retention purge and the audit. Every replica
//! ticks; each tick queues its job under an idempotency key made of the tick (the day for the
//! archive run), so the job is queued once however many replicas tick (apalis-cron alone
//! would run it once per replica, apalis issue 281).

use std::{str::FromStr, sync::Arc};

use apalis::prelude::{BoxDynError, Data, Monitor, WorkerBuilder};
use apalis_cron::{CronStream, Tick};
use chrono::{DateTime, Utc};
use orderflow_jobs::{
    archive_run::archive::ArchiveRun,
    audit_run::{AuditTick, Auditor},
    engine::queue::Pushed,
    retention::{Expiring, Purge},
};
use tokio_util::sync::CancellationToken;

use crate::{supervise, Pipeline};

#[derive(Debug, Clone)]
pub struct ArchiveSchedule {
    /// Cron expression with seconds, in UTC (e.g. `0 0 3 * * *`: 03:00 every day).
    pub cron: String,
    pub older_than_days: u32,
    pub chunk_size: u32,
}

#[derive(Clone)]
pub struct RetentionSchedule {
    /// Cron expression with seconds, in UTC.
    pub cron: String,
    /// What each run purges (each kind knows its own retention).
    pub kinds: Vec<Arc<dyn Expiring>>,
}

/// The invariant audit's schedule (`AUDIT_CRON`), and the checks it runs.
#[derive(Clone)]
pub struct AuditSchedule {
    /// Cron expression with seconds, in UTC.
    pub cron: String,
    pub auditor: Arc<dyn Auditor>,
}

pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// The run key of a scheduled run: one per day.
pub fn daily_run_key(at: DateTime<Utc>) -> String {
    format!("archive-{}", at.format("%Y-%m-%d"))
}

fn tick_time(tick: &Tick) -> DateTime<Utc> {
    tick.get_timestamp().with_timezone(&Utc)
}

fn log_push(what: &'static str, key: &str, pushed: Pushed) {
    match pushed {
        Pushed::Queued => tracing::info!(key, "{what} queued"),
        Pushed::Duplicate => tracing::debug!(key, "{what} already queued by another replica"),
    }
}

async fn on_archive_tick(tick: Tick, p: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    let run = ArchiveRun {
        run_key: daily_run_key(tick_time(&tick)),
        older_than_days: p.archive.older_than_days,
        chunk_size: p.archive.chunk_size,
    };
    let key = run.run_key.clone();
    log_push(
        "archive run",
        &key,
        orderflow_jobs::archive_run::archive::push_archive(&p.pool, &p.settings, run).await?,
    );
    Ok(())
}

async fn on_retention_tick(tick: Tick, p: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    let purge = Purge {
        tick: tick_time(&tick).format("%Y%m%dT%H%M%S").to_string(),
    };
    let key = purge.key();
    log_push(
        "retention purge",
        &key,
        orderflow_jobs::retention::push_retention(&p.pool, &p.settings, purge).await?,
    );
    Ok(())
}

async fn on_audit_tick(tick: Tick, p: Data<Arc<Pipeline>>) -> Result<(), BoxDynError> {
    let audit = AuditTick {
        tick: tick_time(&tick).format("%Y%m%dT%H%M%S").to_string(),
    };
    let key = audit.key();
    log_push(
        "audit",
        &key,
        orderflow_jobs::audit_run::push_audit(&p.pool, &p.settings, audit).await?,
    );
    Ok(())
}

/// Ticks `expr` until `stop`, calling `on_tick` for each tick.
async fn run_schedule<F, Fut>(
    name: &'static str,
    expr: &str,
    p: Arc<Pipeline>,
    stop: CancellationToken,
    on_tick: F,
) where
    F: Fn(Tick, Data<Arc<Pipeline>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxDynError>> + Send + 'static,
{
    let schedule = match parse_schedule(expr) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(schedule = name, error = %e, "schedule disabled");
            return;
        }
    };
    supervise(name, "cron", None, stop, move |worker| {
        let (schedule, p, on_tick) = (schedule.clone(), p.clone(), on_tick.clone());
        Monitor::new().register(move |_| {
            WorkerBuilder::new(worker.clone())
                .backend(CronStream::new(schedule.clone()))
                .data(p.clone())
                .build(on_tick.clone())
        })
    })
    .await;
}

pub(crate) async fn run_schedules(p: Pipeline, stop: CancellationToken) {
    let p = Arc::new(p);
    tokio::join!(
        run_schedule(
            "archive-schedule",
            &p.archive.cron,
            p.clone(),
            stop.clone(),
            on_archive_tick,
        ),
        run_schedule(
            "retention-schedule",
            &p.retention.cron,
            p.clone(),
            stop.clone(),
            on_retention_tick,
        ),
        run_schedule(
            "audit-schedule",
            &p.audit.cron,
            p.clone(),
            stop,
            on_audit_tick
        ),
    );
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
