//! archive: 100,000 finished (COMPLETED, 400 days old) orders with two items each are
//! inserted straight into the tables, then `orderflow archive run` moves them while spread
//! traffic runs. Reports the archive's orders/s and the order p99 during the run against a
//! baseline of the same traffic without it.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::QueryBuilder;

use super::{drain, Ctx, Drain, Pick};
use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    service::Service,
    stats::{round, Summary},
};

/// Rows per INSERT statement when seeding (well under the 65,535 placeholders allowed).
const SEED_BATCH: usize = 1000;
/// Order ids per INSERT … SELECT of their items.
const ITEM_BATCH: i64 = 10_000;
/// The seeded orders are this old; the archive is asked for orders older than OLDER_THAN.
const AGE_DAYS: i64 = 400;
const OLDER_THAN_DAYS: u32 = 30;
/// The archive run with traffic may not take longer than this.
const RUN_BOUND: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveResult {
    pub seeded_orders: u64,
    pub seed_seconds: f64,
    /// Spread traffic alone, for the comparison.
    pub baseline: Summary,
    pub drain_after_baseline: Drain,
    /// Spread traffic while the archive ran.
    pub during: Summary,
    /// What `orderflow archive run` printed.
    pub archive_summary: serde_json::Value,
    /// The command's wall time, process start included.
    pub archive_wall_seconds: f64,
    /// Orders archived per second of the run's own duration.
    pub archive_orders_per_sec: f64,
    /// p99 during ÷ p99 baseline.
    pub p99_during_vs_baseline: f64,
    pub cpu_during: CpuUse,
}

/// Inserts `n` old COMPLETED orders with two items each; returns the seconds it took.
async fn seed(ctx: &Ctx, n: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let products = &ctx.products;
    let first = products[0];
    let count = products.len() as i64;
    // Item product ids are computed in SQL as first + (order id mod count): the prepared
    // products must be one contiguous id range (they are, on a fresh database).
    if count < 2
        || products
            .iter()
            .enumerate()
            .any(|(i, p)| *p != first + i as i64)
    {
        bail!("archive seeding needs at least two products with contiguous ids");
    }
    let old = chrono::Utc::now() - chrono::Duration::days(AGE_DAYS);
    let first_order: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM orders")
        .fetch_one(&ctx.pool)
        .await?;
    let mut left = n as usize;
    while left > 0 {
        let batch = left.min(SEED_BATCH);
        let mut q = QueryBuilder::new(
            "INSERT INTO orders (user_id, status, total_amount, created_at, updated_at) ",
        );
        q.push_values(0..batch, |mut row, i| {
            let at = old + chrono::Duration::seconds(i as i64);
            row.push_bind(ctx.users[i % ctx.users.len()].id)
                .push("'COMPLETED'")
                .push_bind(200i64)
                .push_bind(at)
                .push_bind(at);
        });
        q.build().execute(&ctx.pool).await?;
        left -= batch;
    }
    let last_order: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM orders")
        .fetch_one(&ctx.pool)
        .await?;
    let mut from = first_order + 1;
    while from <= last_order {
        let to = (from + ITEM_BATCH - 1).min(last_order);
        for shift in [0i64, 1] {
            sqlx::query(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price) \
                 SELECT o.id, p.id, 1, p.price FROM orders o \
                 JOIN products p ON p.id = ? + MOD(o.id + ?, ?) \
                 WHERE o.id BETWEEN ? AND ? AND o.status = 'COMPLETED'",
            )
            .bind(first)
            .bind(shift)
            .bind(count)
            .bind(from)
            .bind(to)
            .execute(&ctx.pool)
            .await?;
        }
        from = to + 1;
    }
    Ok(round(started.elapsed().as_secs_f64(), 1))
}

pub async fn run(
    ctx: &Ctx,
    service: &Service,
    orders: u64,
    concurrency: usize,
    baseline_duration: Duration,
) -> anyhow::Result<ArchiveResult> {
    // Baseline first, on the same tables before they grow by the seeded rows.
    let (rec, elapsed) = load::run(
        Spec::closed(concurrency, baseline_duration),
        ctx.order_op(Pick::Spread, None),
    )
    .await;
    let baseline = rec.summary(elapsed, &[]);
    let drain_after_baseline = drain(&ctx.pool, Duration::from_secs(300)).await?;

    let seed_seconds = seed(ctx, orders).await.context("seeding old orders")?;

    // Traffic and the archive start together; the traffic stops when the archive is done.
    let stop = Arc::new(AtomicBool::new(false));
    let spec = Spec {
        stop: Some(stop.clone()),
        ..Spec::closed(concurrency, RUN_BOUND)
    };
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let traffic = tokio::spawn(load::run(spec, ctx.order_op(Pick::Spread, None)));
    let archived = service.archive_run(OLDER_THAN_DAYS).await;
    stop.store(true, Ordering::Relaxed);
    let (rec, elapsed) = traffic.await?;
    let cpu_during = cpu.stop();
    let (summary, wall) = archived?;

    let archived_orders = summary["orders"].as_i64().unwrap_or(0);
    let run_ms = summary["durationMs"].as_u64().unwrap_or(0).max(1);
    let mut during = rec.summary(elapsed, &[]);
    // Everything seeded must have moved, and nothing else.
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM orders WHERE status = 'COMPLETED' AND updated_at < CURRENT_TIMESTAMP(6) - INTERVAL 30 DAY",
    )
    .fetch_one(&ctx.pool)
    .await?;
    if archived_orders != orders as i64 || left != 0 {
        during.errors += 1;
        during.error_samples.push(format!(
            "archive moved {archived_orders} of {orders} seeded orders; {left} eligible left"
        ));
    }
    Ok(ArchiveResult {
        seeded_orders: orders,
        seed_seconds,
        p99_during_vs_baseline: round(during.p99_ms / baseline.p99_ms.max(0.001), 2),
        baseline,
        drain_after_baseline,
        during,
        archive_orders_per_sec: round(archived_orders as f64 * 1000.0 / run_ms as f64, 0),
        archive_summary: summary,
        archive_wall_seconds: round(wall.as_secs_f64(), 2),
        cpu_during,
    })
}
