//! The outbox sweeper: NEW rows whose publish job is gone (never pushed because the process
//! died right after the commit, or finished without publishing them) get a new job, in
//! batches. It also refreshes the gauges that say whether the pipeline keeps up.

use orderflow_jobs::{ops, outbox, queue};
use tokio_util::sync::CancellationToken;

use crate::Pipeline;

const BATCH: u32 = 100;

/// One pass; returns how many rows were re-enqueued.
pub async fn sweep_once(p: &Pipeline) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut total = 0;
    loop {
        let ids = outbox::orphaned(&p.pool, p.sweep_grace, BATCH).await?;
        if ids.is_empty() {
            return Ok(total);
        }
        let job_id = queue::new_job_id();
        outbox::assign_job(&p.pool, &ids, &job_id).await?;
        queue::push_publish(
            &p.pool,
            &p.settings,
            &job_id,
            ids.clone(),
            Default::default(),
        )
        .await?;
        p.publish_wake.now();
        tracing::info!(rows = ids.len(), job_id = %job_id, "re-enqueued outbox rows whose job was lost");
        total += ids.len();
        if ids.len() < BATCH as usize {
            return Ok(total);
        }
    }
}

async fn refresh_gauges(p: &Pipeline) {
    if let Ok(n) = outbox::backlog(&p.pool).await {
        metrics::gauge!("outbox_backlog").set(n as f64);
    }
    if let Ok(counts) = ops::dead_counts(&p.pool).await {
        for (queue, n) in counts {
            metrics::gauge!("jobs_dead", "queue" => queue).set(n as f64);
        }
    }
}

pub async fn sweep_loop(p: Pipeline, stop: CancellationToken) {
    loop {
        if let Err(e) = sweep_once(&p).await {
            tracing::warn!(error = %e, "outbox sweep failed; will retry");
        }
        refresh_gauges(&p).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(p.sweep_interval) => {}
        }
    }
}
