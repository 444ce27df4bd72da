//! The gauges operators alert on that describe the database's state rather than one
//! process's work: the outbox (backlog, oldest NEW row, DEAD and DISCARDED rows) and, per
//! queue, dead jobs, the oldest due job, how long it has been paused, and its live workers
//! (observability/rules/orderflow-alerts.yml).
//!
//! They are read when Prometheus scrapes (`refresh`, from the actuator), by every process
//! whatever its role: an API replica still says "no live worker" when every worker replica
//! is gone, the figures are as fresh as the scrape, and the cost is a few indexed reads per
//! scrape per replica instead of a timer per replica. Every queue is set on each read, 0
//! included: a gauge left at its last value would keep its alert firing for ever.

use std::time::Duration;

use sqlx::MySqlPool;

use super::{ops, queues};
use crate::{engine::pause, kinds::QUEUES, publish_outbox::outbox};

/// Reads the state and sets every gauge. On an error the gauges keep their last values (the
/// caller logs it; an unreachable database has alerts of its own).
pub async fn refresh(pool: &MySqlPool, lease: Duration) -> Result<(), sqlx::Error> {
    let rows = outbox::unpublished(pool).await?;
    metrics::gauge!("outbox_backlog").set(rows.new as f64);
    metrics::gauge!("outbox_oldest_new_age_seconds").set(rows.oldest_new_age_secs as f64);
    metrics::gauge!("outbox_rows", "status" => "DEAD").set(rows.dead as f64);
    metrics::gauge!("outbox_rows", "status" => "DISCARDED").set(rows.discarded as f64);

    let dead: std::collections::HashMap<String, i64> =
        ops::dead_counts(pool).await?.into_iter().collect();
    let oldest = queues::oldest_pending(pool).await?;
    let paused = pause::paused_for(pool).await?;
    let workers = queues::live_workers(pool, lease).await?;
    for queue in QUEUES {
        let of = |m: &std::collections::HashMap<String, i64>| m.get(queue).copied().unwrap_or(0);
        metrics::gauge!("jobs_dead", "queue" => queue).set(of(&dead) as f64);
        metrics::gauge!("jobs_oldest_pending_age_seconds", "queue" => queue)
            .set(of(&oldest) as f64);
        metrics::gauge!("jobs_queue_paused_seconds", "queue" => queue).set(of(&paused) as f64);
        metrics::gauge!("jobs_live_workers", "queue" => queue).set(of(&workers) as f64);
    }
    Ok(())
}
