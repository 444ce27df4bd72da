//! The audit on the job engine: each tick of the audit schedule (`AUDIT_CRON`) queues one
//! `audit` job, keyed by the tick so that replicas ticking together queue it once. The checks
//! and their SQL belong to the service (`orderflow::audit`), which supplies them as an
//! [`Auditor`], as the retention job's kinds are supplied by their owners.

use std::sync::Arc;

use apalis::prelude::{Attempt, BoxDynError, Data, TaskId};
use apalis_mysql::MySqlContext;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;
use ulid::Ulid;

use crate::engine::{
    queue::{self, JobAttempt, JobKind, Pushed, QueueSettings},
    trace::TraceContext,
};

/// The scheduled invariant audit (`AUDIT_CRON`).
pub const AUDIT: &str = "audit";

/// Runs every check of the audit, publishes its metrics, and returns the violations found
/// (a violation is a finding, not a failure of the job: the job fails only when it cannot
/// read).
pub trait Auditor: Send + Sync {
    fn audit<'a>(&'a self, pool: &'a MySqlPool) -> BoxFuture<'a, Result<u64, BoxDynError>>;
}

/// The payload of an audit job: the tick that queued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTick {
    pub tick: String,
}

/// One job per tick (the tick is its idempotency key), however many replicas tick.
impl JobKind for AuditTick {
    const QUEUE: &'static str = AUDIT;

    fn idempotency_key(&self) -> Option<String> {
        Some(self.key())
    }
}

/// Queues the audit of one schedule tick.
pub async fn push_audit(
    pool: &MySqlPool,
    settings: &QueueSettings,
    tick: AuditTick,
) -> Result<Pushed, BoxDynError> {
    queue::push(pool, settings, tick).await
}

impl AuditTick {
    /// The job's idempotency key: one job per tick, however many replicas tick.
    pub fn key(&self) -> String {
        format!("audit-{}", self.tick)
    }
}

pub struct AuditContext {
    pub pool: MySqlPool,
    pub settings: QueueSettings,
    pub auditor: Arc<dyn Auditor>,
}

/// The handler of the `audit` queue.
pub async fn handle(
    job: AuditTick,
    ctx: Data<Arc<AuditContext>>,
    id: TaskId<Ulid>,
    attempt: Attempt,
    task: MySqlContext,
) -> Result<u64, BoxDynError> {
    let run = JobAttempt::new(AUDIT, &id, &attempt, &task);
    let violations = run
        .run(&ctx.pool, &ctx.settings, &TraceContext::default(), |_| {
            ctx.auditor.audit(&ctx.pool)
        })
        .await?;
    tracing::debug!(tick = %job.tick, violations, "audit job done");
    Ok(violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_job_per_tick_and_the_key_fits_the_column() {
        let tick = AuditTick {
            tick: "20261130T201700".into(),
        };
        assert_eq!(tick.key(), "audit-20261130T201700");
        assert!(tick.key().len() <= 36);
    }
}
