//! Rows committed together share one publish-outbox job.
//!
//! A job costs the database about five commits whatever it carries (push, fetch, lock,
//! claim, acknowledge). One job per order made the publish side cost the database more than
//! the orders themselves (bench/: pipeline). Every outbox row is written naming the job meant
//! to carry it; rows committed in one transaction (a batch of orders) name the same one. The
//! committer hands the committed job id here instead of pushing; a task in each process
//! collects the jobs that arrive within `linger` of the first one (at most `max_rows` rows)
//! and pushes one job, under the first one's id. The rows of the others are handed to that
//! job first (`outbox::merge_jobs`), so every row still names the job that carries it: the
//! sweeper's lost-job rule and an operator's retry of a dead job (`carried::revive_for_jobs`)
//! work per row as before.
//!
//! Nothing here is needed for correctness: a row whose job is never pushed (a crash within
//! `linger`, a failed push) stays NEW and the sweeper gives it a job after its grace period.

use std::{future::Future, sync::Arc, time::Duration};

use sqlx::MySqlPool;
use tokio::{
    sync::{mpsc, Mutex},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    engine::{
        queue::{QueueSettings, Wake},
        trace::TraceContext,
    },
    publish_outbox::outbox::{self, Appended},
};

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// How long the first row of a job waits for others (`PUBLISH_LINGER_MS`; 0: no wait,
    /// only the rows already queued go along).
    pub linger: Duration,
    /// The most rows one job is given (`PUBLISH_BATCH_SIZE`, at least 1).
    pub max_rows: usize,
}

/// Committed outbox rows that name one (not yet pushed) publish job.
#[derive(Debug, Clone)]
pub struct Committed {
    pub job_id: String,
    pub rows: usize,
    /// The trace of the first row: the job's span continues it.
    pub trace: TraceContext,
}

impl From<Appended> for Committed {
    fn from(row: Appended) -> Self {
        Self {
            job_id: row.job_id,
            rows: 1,
            trace: row.trace,
        }
    }
}

enum Message {
    Rows(Committed),
    /// Push what is queued, then stop.
    Close,
}

/// The sending side; cheap to clone, one collecting task per process behind it.
#[derive(Clone)]
pub struct PublishBatcher {
    sender: mpsc::UnboundedSender<Message>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl PublishBatcher {
    /// Starts the collecting task on the current runtime; what it collects becomes one job,
    /// and wakes this process's publish worker.
    pub fn start(
        pool: MySqlPool,
        queue: QueueSettings,
        wake: Wake,
        settings: BatchSettings,
    ) -> Self {
        Self::with_push(settings, move |jobs| {
            let (pool, wake) = (pool.clone(), wake.clone());
            async move {
                push(&pool, &queue, jobs).await;
                wake.now();
            }
        })
    }

    /// The collecting task with what to do with each batch.
    fn with_push<F, Fut>(settings: BatchSettings, push: F) -> Self
    where
        F: FnMut(Vec<Committed>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(collect(received, settings, push));
        Self {
            sender,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Queues rows that were just committed for their publish job. Never waits.
    pub fn enqueue(&self, rows: impl Into<Committed>) {
        if let Err(mpsc::error::SendError(Message::Rows(rows))) =
            self.sender.send(Message::Rows(rows.into()))
        {
            tracing::warn!(
                job_id = rows.job_id,
                rows = rows.rows,
                "the publish batcher has stopped; the sweeper will give these rows a job"
            );
        }
    }

    /// Pushes every row queued so far and stops: at shutdown, after the last request.
    pub async fn close(&self) {
        let Some(task) = self.task.lock().await.take() else {
            return;
        };
        // The channel is first in, first out: every row queued before this is pushed first.
        if self.sender.send(Message::Close).is_ok() {
            let _ = task.await;
        }
    }
}

async fn collect<F, Fut>(
    mut received: mpsc::UnboundedReceiver<Message>,
    settings: BatchSettings,
    mut push: F,
) where
    F: FnMut(Vec<Committed>) -> Fut,
    Fut: Future<Output = ()>,
{
    let max_rows = settings.max_rows.max(1);
    while let Some(Message::Rows(first)) = received.recv().await {
        let until = Instant::now() + settings.linger;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        let mut closing = false;
        while rows < max_rows {
            let next = match received.try_recv() {
                Ok(message) => Some(message),
                Err(_) if settings.linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(until, received.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(Message::Rows(more)) => {
                    rows += more.rows;
                    jobs.push(more);
                }
                Some(Message::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
        push(jobs).await;
        if closing {
            return;
        }
    }
}

/// One job for the rows of `jobs`, under the first one's id; failures are left to the sweeper.
async fn push(pool: &MySqlPool, queue: &QueueSettings, jobs: Vec<Committed>) {
    let job_id = jobs[0].job_id.clone();
    let trace = jobs[0].trace.clone();
    let rows: usize = jobs.iter().map(|j| j.rows).sum();
    metrics::histogram!("publish_job_rows").record(rows as f64);
    let others: Vec<&str> = jobs[1..].iter().map(|j| j.job_id.as_str()).collect();
    if let Err(e) = outbox::merge_jobs(pool, &others, &job_id).await {
        tracing::warn!(error = %e, rows, "could not hand rows to their publish job; the sweeper will");
        return;
    }
    // No id list: the job carries the NEW rows that name it.
    if let Err(e) = super::job::push_publish(pool, queue, &job_id, Vec::new(), trace).await {
        tracing::warn!(error = %e, job_id, "could not enqueue publish-outbox; the sweeper will");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64) -> Appended {
        Appended {
            id,
            event_id: uuid::Uuid::now_v7(),
            job_id: format!("job-{id}"),
            trace: Default::default(),
        }
    }

    /// A batcher that records each push's jobs (by their number) instead of pushing.
    fn recording(
        settings: BatchSettings,
    ) -> (PublishBatcher, Arc<std::sync::Mutex<Vec<Vec<i64>>>>) {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batcher = PublishBatcher::with_push(settings, {
            let batches = batches.clone();
            move |jobs: Vec<Committed>| {
                batches.lock().unwrap().push(
                    jobs.iter()
                        .map(|j| j.job_id["job-".len()..].parse().unwrap())
                        .collect(),
                );
                std::future::ready(())
            }
        });
        (batcher, batches)
    }

    const LINGER: BatchSettings = BatchSettings {
        linger: Duration::from_millis(10),
        max_rows: 100,
    };

    // Paused time: the linger runs on tokio's virtual clock, so no test depends on timing.
    #[tokio::test(start_paused = true)]
    async fn rows_within_the_linger_share_a_job_and_a_later_one_gets_its_own() {
        let (batcher, batches) = recording(LINGER);
        batcher.enqueue(row(1));
        tokio::time::sleep(Duration::from_millis(3)).await;
        batcher.enqueue(row(2));
        batcher.enqueue(row(3));
        tokio::time::sleep(Duration::from_millis(50)).await;
        batcher.enqueue(row(4));
        batcher.close().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3], vec![4]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_holds_at_most_max_rows() {
        let (batcher, batches) = recording(BatchSettings {
            max_rows: 2,
            ..LINGER
        });
        for id in 1..=5 {
            batcher.enqueue(row(id));
        }
        batcher.close().await;
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![1, 2], vec![3, 4], vec![5]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_pushes_what_is_queued_without_waiting_out_the_linger() {
        let (batcher, batches) = recording(BatchSettings {
            linger: Duration::from_secs(3600),
            max_rows: 100,
        });
        batcher.enqueue(row(1));
        batcher.enqueue(row(2));
        let started = Instant::now();
        batcher.close().await;
        assert!(started.elapsed() < Duration::from_secs(3600));
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2]]);
        // After close a row is left to the sweeper; the batcher does not push it.
        batcher.enqueue(row(3));
        batcher.close().await;
        assert_eq!(batches.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn max_rows_counts_the_rows_of_each_committed_batch() {
        let (batcher, batches) = recording(BatchSettings {
            max_rows: 5,
            ..LINGER
        });
        let batch = |id: i64, rows| Committed {
            job_id: format!("job-{id}"),
            rows,
            trace: Default::default(),
        };
        batcher.enqueue(batch(1, 3));
        batcher.enqueue(batch(2, 3));
        batcher.enqueue(batch(3, 1));
        batcher.close().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2], vec![3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_linger_only_rows_already_queued_go_along() {
        let (batcher, batches) = recording(BatchSettings {
            linger: Duration::ZERO,
            max_rows: 100,
        });
        batcher.enqueue(row(1));
        batcher.enqueue(row(2));
        tokio::time::sleep(Duration::from_millis(1)).await;
        batcher.enqueue(row(3));
        batcher.close().await;
        assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2], vec![3]]);
    }
}
