//! Jobs whose acknowledgement was lost. apalis acknowledges an attempt with `UPDATE jobs …
//! WHERE id = ? AND lock_by = ?`; when that fails (a busy pool, a dropped connection), the
//! job stays `Running` under a worker that is alive and heartbeating, so the lease reaper
//! never takes it, and the outbox sweeper ignores `Running` jobs: it waited for a restart.
//!
//! The attempt-history layer notes each attempt of this process as it starts and ends
//! ([`LostAcks`]); every tick, the jobs whose attempt ended more than [`GRACE`] ago and that
//! are still `Running` under the same worker (and not running again here) are put back in
//! their queue, as the reaper does for a dead worker's. Running a job again is safe: every
//! handler is idempotent (ADR 0004).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::{MySqlPool, QueryBuilder};

/// How long after its attempt ended a job may still be `Running` (its acknowledgement in
/// flight) before it counts as lost.
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Ledger {
    running: HashMap<String, usize>,
    /// job id → (worker, when its attempt ended)
    ended: HashMap<String, (String, Instant)>,
}

/// This process's attempts, as the attempt-history layer sees them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct LostAcks(Arc<Mutex<Ledger>>);

impl LostAcks {
    pub fn started(&self, job_id: &str) {
        if let Ok(mut l) = self.0.lock() {
            *l.running.entry(job_id.to_owned()).or_default() += 1;
            l.ended.remove(job_id);
        }
    }

    pub fn ended(&self, job_id: &str, worker: Option<&str>) {
        if let Ok(mut l) = self.0.lock() {
            if let Some(n) = l.running.get_mut(job_id) {
                *n -= 1;
                if *n == 0 {
                    l.running.remove(job_id);
                }
            }
            if let Some(worker) = worker {
                l.ended
                    .insert(job_id.to_owned(), (worker.to_owned(), Instant::now()));
            }
        }
    }

    /// The attempts that ended before `grace` ago and are not running again, taken out of
    /// the ledger.
    fn take_settled(&self, grace: Duration) -> Vec<(String, String)> {
        let Ok(mut l) = self.0.lock() else {
            return Vec::new();
        };
        let running: HashSet<String> = l.running.keys().cloned().collect();
        let due: Vec<String> = l
            .ended
            .iter()
            .filter(|(id, (_, at))| at.elapsed() >= grace && !running.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        due.into_iter()
            .filter_map(|id| l.ended.remove(&id).map(|(worker, _)| (id, worker)))
            .collect()
    }

    /// Puts back in their queue the jobs whose attempt ended here more than `grace` ago but
    /// that are still `Running` under the worker that ran it. Returns how many.
    pub async fn release_lost(
        &self,
        pool: &MySqlPool,
        grace: Duration,
    ) -> Result<u64, sqlx::Error> {
        let settled = self.take_settled(grace);
        if settled.is_empty() {
            return Ok(0);
        }
        let mut released = 0;
        for chunk in settled.chunks(500) {
            let mut q = QueryBuilder::new(
                "SELECT id, lock_by FROM jobs WHERE status = 'Running' AND id IN (",
            );
            let mut list = q.separated(", ");
            for (id, _) in chunk {
                list.push_bind(id.as_str());
            }
            q.push(")");
            let stuck: Vec<(String, Option<String>)> = q.build_query_as().fetch_all(pool).await?;
            for (id, lock_by) in stuck {
                let Some(worker) = chunk.iter().find(|(j, _)| *j == id).map(|(_, w)| w) else {
                    continue;
                };
                if lock_by.as_deref() != Some(worker.as_str()) {
                    continue;
                }
                let why =
                    format!("interrupted: the acknowledgement of its attempt on {worker} was lost");
                released += super::reaper::release_job(pool, worker, &id, &why).await?;
            }
        }
        Ok(released)
    }
}

/// Runs [`LostAcks::release_lost`] every `every` until `stop`.
pub async fn release_loop(
    acks: LostAcks,
    pool: MySqlPool,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        match acks.release_lost(&pool, GRACE).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "re-queued jobs whose acknowledgement was lost"),
            Err(e) => {
                tracing::warn!(error = %e, "could not look for lost acknowledgements; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ended_attempts_not_running_again_are_due() {
        let acks = LostAcks::default();
        acks.started("a");
        acks.ended("a", Some("w1"));
        acks.started("b");
        acks.started("c");
        acks.ended("c", Some("w1"));
        acks.started("c"); // its next attempt runs here now
        let due = acks.take_settled(Duration::ZERO);
        assert_eq!(due, vec![("a".to_owned(), "w1".to_owned())]);
        assert!(acks.take_settled(Duration::ZERO).is_empty(), "taken once");
    }
}
