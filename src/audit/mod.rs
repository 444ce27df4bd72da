//! `orderflow audit`: checks the invariants of the whole history, live and archived, and says
//! which rows break them (docs/adr/0017-audit.md).
//!
//! Every read is one bounded chunk in primary-key order (keyset pagination), all inside one
//! read-only REPEATABLE READ transaction: a consistent snapshot, so an order the archive moves
//! while the audit runs is seen exactly once, and plain snapshot reads take no row locks, so
//! the orders committing meanwhile never wait for the audit. One check group per file, each
//! owning its SQL: `orders` (events, units and live-or-archived, one pass over the orders),
//! `stock`, `pipeline` (outbox rows, their jobs and notifications), `idempotency`, `jobs`.

mod idempotency;
mod jobs;
mod orders;
mod pipeline;
mod progress;
mod report;
mod stock;

use std::{sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use sqlx::{Executor, MySqlConnection, MySqlPool};

pub use progress::{Progress, Silent, Terminal};
pub use report::{Check, Finding, Kind, Report};

use crate::config::Config;

/// How the audit reads, and the grace periods of its time-bound checks.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rows per read.
    pub chunk: u32,
    /// A PUBLISHED event older than this has its notification.
    pub notification_grace: Duration,
    /// A NEW outbox row older than this has a live publish job (the sweeper's grace plus one
    /// sweep interval: the sweeper had its chance).
    pub sweep_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            chunk: config.audit.chunk_size,
            notification_grace: config.audit.notification_grace,
            sweep_grace: config.events.sweep_grace + config.events.sweep_interval,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("reading the history: {0}")]
    Db(#[from] sqlx::Error),
}

/// The reads of one audit: the snapshot's connection, the settings, and the rows read so far.
pub(crate) struct Scan<'a> {
    conn: &'a mut MySqlConnection,
    settings: Settings,
    progress: &'a mut dyn Progress,
    rows: u64,
}

impl Scan<'_> {
    /// Counts `n` rows read in `stage`.
    fn read(&mut self, stage: &'static str, n: usize) {
        self.rows += n as u64;
        self.progress.advance(stage, self.rows);
    }

    fn chunk(&self) -> i64 {
        i64::from(self.settings.chunk)
    }
}

/// Runs every check and returns the report.
pub async fn run(
    pool: &MySqlPool,
    settings: Settings,
    progress: &mut dyn Progress,
) -> Result<Report, AuditError> {
    let started = std::time::Instant::now();
    let mut conn = pool.acquire().await?;
    // The pool's sessions read committed; this one transaction reads one snapshot.
    // Plain text statements (no prepare): MariaDB cannot prepare every transaction statement.
    (&mut *conn)
        .execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    (&mut *conn)
        .execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await?;
    let mut scan = Scan {
        conn: &mut conn,
        settings,
        progress,
        rows: 0,
    };
    let checks = match scan_all(&mut scan).await {
        Ok(checks) => checks,
        Err(e) => {
            // Never pool a connection left inside a transaction.
            drop(conn.detach());
            return Err(e.into());
        }
    };
    let rows = scan.rows;
    scan.progress.finish(rows);
    (&mut *conn).execute("COMMIT").await?;
    Ok(Report {
        checks,
        rows,
        elapsed: started.elapsed(),
    })
}

async fn scan_all(scan: &mut Scan<'_>) -> Result<Vec<Check>, sqlx::Error> {
    let orders = orders::scan(scan).await?;
    let stock = stock::scan(scan, &orders.units).await?;
    let pipeline = pipeline::scan(scan).await?;
    let idempotency = idempotency::scan(scan).await?;
    let dead_jobs = jobs::scan(scan).await?;
    Ok(vec![
        orders.created,
        orders.cancelled,
        stock,
        pipeline.notified,
        pipeline.unqueued,
        orders.live_and_archived,
        idempotency,
        pipeline.dead_rows,
        dead_jobs,
    ])
}

/// Publishes a report as `audit_violations{check}` (invariants) and `audit_listed{check}`
/// (what is listed, not failed).
pub fn export(report: &Report) {
    for check in &report.checks {
        match check.kind {
            Kind::Invariant => {
                metrics::gauge!("audit_violations", "check" => check.name).set(check.count as f64)
            }
            Kind::Listing => {
                metrics::gauge!("audit_listed", "check" => check.name).set(check.count as f64)
            }
        }
    }
    metrics::gauge!("audit_rows_read").set(report.rows as f64);
}

/// The audit as the job engine's scheduled `audit` job runs it.
pub struct ScheduledAudit(pub Settings);

impl orderflow_jobs::audit_run::Auditor for ScheduledAudit {
    fn audit<'a>(
        &'a self,
        pool: &'a MySqlPool,
    ) -> BoxFuture<'a, Result<u64, Box<dyn std::error::Error + Send + Sync>>> {
        Box::pin(async move {
            let report = run(pool, self.0, &mut Silent).await?;
            export(&report);
            let violations = report.violations();
            if violations > 0 {
                tracing::warn!(
                    violations,
                    failed = %report.failed_checks().join(","),
                    "audit: invariants do not hold; run `orderflow audit` for the ids"
                );
            } else {
                tracing::info!(rows = report.rows, "audit: every invariant holds");
            }
            Ok(violations)
        })
    }
}

/// The auditor handed to the workflows.
pub fn scheduled(config: &Config) -> Arc<dyn orderflow_jobs::audit_run::Auditor> {
    Arc::new(ScheduledAudit(Settings::from_config(config)))
}
