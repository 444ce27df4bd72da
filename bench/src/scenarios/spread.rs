//! spread: POST /orders over the whole catalogue (1,000 products by default), each request
//! with a fresh Idempotency-Key. Little contention on any one stock row, so this is the
//! service's best case for new orders. Every answer must be 201.

use std::{sync::Arc, time::Duration};

use serde::Serialize;

use super::{Batches, Ctx, Keep, Pick, Settled};
use crate::{
    load::{self, Spec},
    machine::{CpuMeter, CpuUse, DbMeter, DbWork},
    stats::Summary,
};

#[derive(Debug, Clone, Serialize)]
pub struct SpreadResult {
    pub concurrency: usize,
    pub products: usize,
    #[serde(flatten)]
    pub summary: Summary,
    pub cpu: CpuUse,
    /// Requests the service decided per batch (one transaction each), if it reports it.
    pub per_batch: Option<f64>,
    pub db: DbWork,
}

/// Runs spread traffic for `duration`; returns the figures and up to `keep` committed keys.
pub async fn run(
    ctx: &Ctx,
    concurrency: usize,
    duration: Duration,
    keep: usize,
) -> (SpreadResult, Vec<Settled>) {
    let kept = Arc::new(Keep::new(keep));
    let batches = Batches::read(&ctx.api).await;
    let db = DbMeter::start(&ctx.pool).await;
    let cpu = CpuMeter::start(Some(ctx.service_pid));
    let (rec, elapsed) = load::run(
        Spec::closed(concurrency, duration),
        ctx.order_op(Pick::Spread, Some(kept.clone())),
    )
    .await;
    let cpu = cpu.stop();
    let db = db.stop(&ctx.pool, rec.ok).await;
    let result = SpreadResult {
        concurrency,
        products: ctx.products.len(),
        summary: rec.summary(elapsed, &[]),
        cpu,
        per_batch: batches.per_batch(&Batches::read(&ctx.api).await),
        db,
    };
    (result, kept.take())
}
