//! The outbox sweeper: NEW rows whose publish job is gone (never pushed because the process
//! died right after the commit, or finished without publishing them) get a new job, in
//! batches. (The gauges that say whether the pipeline keeps up are read at each scrape:
//! `orderflow_jobs::operators::gauges`.)

use orderflow_jobs::{engine::queue, publish_outbox::outbox};
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
        orderflow_jobs::publish_outbox::job::push_publish(
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

pub async fn sweep_loop(p: Pipeline, stop: CancellationToken) {
    loop {
        if let Err(e) = sweep_once(&p).await {
            tracing::warn!(error = %e, "outbox sweep failed; will retry");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(p.sweep_interval) => {}
        }
    }
}
