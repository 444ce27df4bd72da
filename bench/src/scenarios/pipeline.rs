//! pipeline: a sustained order rate (by default what spread reached) for a while,
//! with the outbox backlog (rows still NEW) sampled every second. Afterwards, from the
//! database: commit → Kafka acknowledgement (outbox published_at − created_at) and commit →
//! notification (notifications.created_at − orders.created_at) for the run's orders. A
//! pipeline that keeps up shows a flat backlog and lags that do not grow with time.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::MySqlPool;

use super::{drain, Ctx, Drain, Pick};
use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    stats::{round, Spread, Summary},
};

/// After the load stops, how long the backlog may take to clear before we read the lags.
const DRAIN_BOUND: Duration = Duration::from_secs(300);
/// Load before the measured run, not measured: a service just started gets its consumer
/// group assignment a second or two after it is ready, which `bench all` never sees (the
/// other scenarios run first) and `bench pipeline` alone would count as lag.
const WARM_UP: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct PipelineResult {
    pub offered_rate: f64,
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    /// (second since start, rows with status NEW), sampled every second.
    pub backlog: Vec<(u64, i64)>,
    pub backlog_max: i64,
    pub backlog_mean: f64,
    /// Backlog when the offered load stopped.
    pub backlog_at_end: i64,
    pub drain_after: Drain,
    pub orders: i64,
    pub published: i64,
    pub notified: i64,
    /// publish-outbox jobs pushed from the start of the load to the end of the drain (rows
    /// committed together share one, ADR 0011; the sweeper's count too).
    pub publish_jobs: i64,
    /// Commit (outbox row written) → Kafka acknowledged (row marked PUBLISHED).
    pub commit_to_kafka_ack: Spread,
    /// Order created → its notification row written.
    pub commit_to_notification: Spread,
    pub cpu: CpuUse,
}

async fn backlog(pool: &MySqlPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW'")
            .fetch_one(pool)
            .await?,
    )
}

async fn publish_jobs(pool: &MySqlPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE job_type = 'publish-outbox'")
            .fetch_one(pool)
            .await?,
    )
}

async fn max_order_id(pool: &MySqlPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM orders")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn run(
    ctx: &Ctx,
    rate: f64,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<PipelineResult> {
    anyhow::ensure!(rate > 0.0, "pipeline needs a positive rate");
    let warm_up = Spec {
        rate: Some(rate),
        ..Spec::closed(concurrency, WARM_UP)
    };
    load::run(warm_up, ctx.order_op(Pick::Spread, None)).await;
    drain(&ctx.pool, DRAIN_BOUND).await?;
    let first_id = max_order_id(&ctx.pool).await?;
    let jobs_before = publish_jobs(&ctx.pool).await?;

    // Backlog sampler: once a second until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let pool = ctx.pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(n) = backlog(&pool).await {
                    samples.push((started.elapsed().as_secs(), n));
                }
            }
            samples
        })
    };

    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let spec = Spec {
        rate: Some(rate),
        ..Spec::closed(concurrency, duration)
    };
    let (rec, elapsed) = load::run(spec, ctx.order_op(Pick::Spread, None)).await;
    let cpu = cpu.stop();
    let backlog_at_end = backlog(&ctx.pool).await?;
    let last_id = max_order_id(&ctx.pool).await?;
    let drain_after = drain(&ctx.pool, DRAIN_BOUND).await?;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await?;

    // Lags of this run's orders only (ids are increasing: the run's are after first_id).
    let kafka: Vec<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, created_at, published_at) FROM outbox_events \
         WHERE event_type = 'ORDER_CREATED' AND aggregate_id > ? AND aggregate_id <= ? \
         AND published_at IS NOT NULL",
    )
    .bind(first_id)
    .bind(last_id)
    .fetch_all(&ctx.pool)
    .await?;
    let notified: Vec<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(MICROSECOND, o.created_at, n.created_at) \
         FROM notifications n JOIN orders o ON o.id = n.order_id \
         WHERE n.type = 'ORDER_CREATED' AND n.order_id > ? AND n.order_id <= ?",
    )
    .bind(first_id)
    .bind(last_id)
    .fetch_all(&ctx.pool)
    .await?;
    let publish_jobs = publish_jobs(&ctx.pool).await? - jobs_before;
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE id > ? AND id <= ?")
        .bind(first_id)
        .bind(last_id)
        .fetch_one(&ctx.pool)
        .await?;

    // The backlog while the load ran (the drain afterwards is reported on its own).
    let loaded: Vec<i64> = samples
        .iter()
        .filter(|(t, _)| *t <= elapsed.as_secs())
        .map(|(_, n)| *n)
        .collect();
    let backlog_mean = if loaded.is_empty() {
        0.0
    } else {
        round(loaded.iter().sum::<i64>() as f64 / loaded.len() as f64, 1)
    };
    let mut summary = rec.summary(elapsed, &[]);
    // Once drained, every order must have been published and notified exactly once.
    let (published, notified_count) = (kafka.len() as i64, notified.len() as i64);
    if drain_after.drained && (published != orders || notified_count != orders) {
        summary.errors += 1;
        summary.error_samples.push(format!(
            "{orders} orders, {published} published, {notified_count} notified after the drain"
        ));
    }
    Ok(PipelineResult {
        offered_rate: round(rate, 1),
        concurrency,
        summary,
        backlog_max: loaded.iter().copied().max().unwrap_or(0),
        backlog_mean,
        backlog: samples,
        backlog_at_end,
        drain_after,
        orders,
        published,
        notified: notified_count,
        publish_jobs,
        commit_to_kafka_ack: Spread::of_micros(kafka),
        commit_to_notification: Spread::of_micros(notified),
        cpu,
    })
}
