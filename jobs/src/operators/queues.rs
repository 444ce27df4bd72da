//! The queues at a glance: per queue, its jobs per state, the age of its oldest pending job,
//! the jobs done and dead in the last 5 and 60 minutes, whether it is paused, its live
//! workers, and the rebuilds of the Kafka client it works through. (apalis-board's own
//! overview queries fail on MariaDB; ADR 0004.)

use std::{collections::HashMap, time::Duration};

use serde::Serialize;
use sqlx::MySqlPool;

use super::job_query::{self, Counting, JobFilter, JobState, StatusFilter};
use crate::{
    engine::pause::{self, PauseState},
    kafka_clients::{self, ClientRebuilds},
    kinds::QUEUES,
};

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StateCounts {
    pub dead: i64,
    pub pending: i64,
    pub running: i64,
    pub done: i64,
    pub discarded: i64,
}

impl StateCounts {
    pub fn from_pairs(pairs: &[(JobState, i64)]) -> Self {
        let mut c = Self::default();
        for (state, n) in pairs {
            *c.slot(*state) += n;
        }
        c
    }

    fn slot(&mut self, state: JobState) -> &mut i64 {
        match state {
            JobState::Dead => &mut self.dead,
            JobState::Pending => &mut self.pending,
            JobState::Running => &mut self.running,
            JobState::Done => &mut self.done,
            JobState::Discarded => &mut self.discarded,
        }
    }
}

/// Jobs that finished within a window.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Finished {
    pub done_last_5m: i64,
    pub done_last_60m: i64,
    pub dead_last_5m: i64,
    pub dead_last_60m: i64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct QueueOverview {
    pub queue: String,
    #[serde(flatten)]
    pub pause: PauseState,
    pub counts: StateCounts,
    /// Seconds since the oldest pending job was due (None: nothing pending).
    pub oldest_pending_age_secs: Option<i64>,
    #[serde(flatten)]
    pub finished: Finished,
    /// Workers that heartbeated within the lease.
    pub live_workers: i64,
    /// The queues that work through a Kafka client (publish-outbox: the producer,
    /// consume-notification: the consumer): its rebuilds after fatal errors.
    pub kafka_client: Option<ClientRebuilds>,
}

/// Every queue of the engine, in `QUEUES` order.
pub async fn overview(
    pool: &MySqlPool,
    lease: Duration,
) -> Result<Vec<QueueOverview>, sqlx::Error> {
    overview_by(pool, lease, Counting::Exact).await
}

/// [`overview`], its counts per state made as `counting` says.
pub async fn overview_by(
    pool: &MySqlPool,
    lease: Duration,
    counting: Counting,
) -> Result<Vec<QueueOverview>, sqlx::Error> {
    let mut out = Vec::with_capacity(QUEUES.len());
    let states = pause::states(pool).await?;
    let oldest = oldest_pending(pool).await?;
    let finished = finished_recently(pool).await?;
    let workers = live_workers(pool, lease).await?;
    let mut rebuilds = kafka_clients::by_queue(pool).await?;
    for queue in QUEUES {
        let filter = JobFilter {
            status: StatusFilter::All,
            queue: Some(queue.to_owned()),
            ..JobFilter::default()
        };
        let counts = StateCounts::from_pairs(&job_query::counts_by(pool, &filter, counting).await?);
        out.push(QueueOverview {
            queue: queue.to_owned(),
            pause: states.get(queue).cloned().unwrap_or_default(),
            counts,
            oldest_pending_age_secs: oldest.get(queue).copied(),
            finished: finished.get(queue).cloned().unwrap_or_default(),
            live_workers: workers.get(queue).copied().unwrap_or(0),
            kafka_client: rebuilds.remove(queue),
        });
    }
    Ok(out)
}

/// Per queue, seconds since its oldest pending job was due.
pub async fn oldest_pending(pool: &MySqlPool) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, Option<i64>)> = sqlx::query_as(
        "SELECT job_type, TIMESTAMPDIFF(SECOND, MIN(run_at), CURRENT_TIMESTAMP) FROM jobs \
         WHERE status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts) \
         GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(q, age)| Some((q, age?.max(0))))
        .collect())
}

/// Per queue, jobs done and dead in the last 5 and 60 minutes (`done_at` is when apalis
/// acknowledged the last attempt; `ix_jobs_status_done` bounds the scan to the last hour).
async fn finished_recently(pool: &MySqlPool) -> Result<HashMap<String, Finished>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT job_type, \
         CAST(SUM(status = 'Done' AND done_at >= CURRENT_TIMESTAMP - INTERVAL 5 MINUTE) AS SIGNED), \
         CAST(SUM(status = 'Done') AS SIGNED), \
         CAST(SUM(status <> 'Done' AND done_at >= CURRENT_TIMESTAMP - INTERVAL 5 MINUTE) AS SIGNED), \
         CAST(SUM(status <> 'Done') AS SIGNED) \
         FROM jobs WHERE (status = 'Done' OR status = 'Killed' \
         OR (status = 'Failed' AND attempts >= max_attempts)) \
         AND done_at >= CURRENT_TIMESTAMP - INTERVAL 60 MINUTE GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(q, d5, d60, k5, k60)| {
            let f = Finished {
                done_last_5m: d5,
                done_last_60m: d60,
                dead_last_5m: k5,
                dead_last_60m: k60,
            };
            (q, f)
        })
        .collect())
}

/// Per queue, workers that heartbeated within `lease` (apalis registers a worker under its
/// queue's name; the reaper counts a worker silent for the lease as gone).
pub async fn live_workers(
    pool: &MySqlPool,
    lease: Duration,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT worker_type, COUNT(*) FROM workers \
         WHERE last_seen >= CURRENT_TIMESTAMP - INTERVAL ? SECOND GROUP BY worker_type",
    )
    .bind(lease.as_secs().max(1) as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}
