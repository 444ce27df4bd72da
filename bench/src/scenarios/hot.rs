//! hot: every client orders the same product at once, so every transaction queues on one
//! stock row (the guarded write). Refusals are counted by error code; only OUT_OF_STOCK is
//! acceptable, and only when the stock is really gone. The stock taken must equal the
//! orders created.

use std::time::Duration;

use serde::Serialize;

use super::{Batches, Ctx, Pick};
use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse},
    stats::{round, Recorder, Summary},
};

pub const ALLOWED_REFUSALS: &[&str] = &["OUT_OF_STOCK"];

#[derive(Debug, Clone, Serialize)]
pub struct HotResult {
    pub concurrency: usize,
    #[serde(flatten)]
    pub summary: Summary,
    pub stock_before: i64,
    pub stock_after: i64,
    /// Units taken == orders created, and OUT_OF_STOCK only once the stock was short.
    pub stock_exact: bool,
    /// Lost races during the run, and per order created: the contention's wasted work (the
    /// service: guarded writes that found the units taken since they were read; the
    /// compare-and-set ceiling: versions that changed under its write).
    pub lock_conflicts: Option<u64>,
    pub lock_conflicts_per_order: Option<f64>,
    pub cpu: CpuUse,
    /// Requests the service decided per batch (one transaction each), if it reports it.
    pub per_batch: Option<f64>,
}

/// Checks a hot run's bookkeeping and folds a violation into its error count.
pub fn finish(
    concurrency: usize,
    rec: &Recorder,
    elapsed: Duration,
    (stock_before, stock_after): (i64, i64),
    lock_conflicts: Option<u64>,
    cpu: CpuUse,
    allowed_refusals: &[&str],
) -> HotResult {
    let mut summary = rec.summary(elapsed, allowed_refusals);
    let taken = stock_before - stock_after;
    let out_of_stock = rec.refusals.get("OUT_OF_STOCK").copied().unwrap_or(0);
    // One unit per order: a refusal while units remained would also be a bug.
    let stock_exact = taken == rec.ok as i64 && (out_of_stock == 0 || stock_after == 0);
    if !stock_exact {
        summary.errors += 1;
        summary.error_samples.push(format!(
            "stock went {stock_before} -> {stock_after} for {} orders and {out_of_stock} OUT_OF_STOCK",
            rec.ok
        ));
    }
    HotResult {
        concurrency,
        summary,
        stock_before,
        stock_after,
        stock_exact,
        lock_conflicts,
        lock_conflicts_per_order: lock_conflicts
            .filter(|_| rec.ok > 0)
            .map(|n| round(n as f64 / rec.ok as f64, 2)),
        cpu,
        per_batch: None,
    }
}

pub async fn run(ctx: &Ctx, concurrency: usize, duration: Duration) -> anyhow::Result<HotResult> {
    const CONFLICTS: &str = "stock_lock_conflicts_total";
    let before = ctx.stock(ctx.hot_product).await?;
    let conflicts_before = ctx.api.counter(CONFLICTS).await;
    let batches = Batches::read(&ctx.api).await;
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let (rec, elapsed) = load::run(
        Spec::closed(concurrency, duration),
        ctx.order_op(Pick::Hot, None),
    )
    .await;
    let cpu = cpu.stop();
    let after = ctx.stock(ctx.hot_product).await?;
    let conflicts = match (conflicts_before, ctx.api.counter(CONFLICTS).await) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) as u64),
        _ => None,
    };
    let mut result = finish(
        concurrency,
        &rec,
        elapsed,
        (before, after),
        conflicts,
        cpu,
        ALLOWED_REFUSALS,
    );
    result.per_batch = batches.per_batch(&Batches::read(&ctx.api).await);
    Ok(result)
}
