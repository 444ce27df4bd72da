//! Rows committed together share one publish-outbox job.
//!
//! A job costs the database about five commits whatever it carries (push, fetch, lock,
//! claim, acknowledge). One job per order made the publish side cost the database more than
//! the orders themselves (bench/: pipeline). The order path hands its committed row here
//! instead of pushing; a task in each process collects the rows that arrive within `linger`
//! of the first one (at most `max_rows`) and pushes them as one job, under the job id the
//! first row was written with. The other rows are handed to that job first
//! (`outbox::assign_job`), so every row still names the job that carries it: the sweeper's
//! lost-job rule and an operator's retry of a dead job (`outbox::revive_for_job`) work per
//! row as before.
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
    outbox::{self, Appended},
    queue::{self, QueueSettings, Wake},
};

#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// How long the first row of a job waits for others (`PUBLISH_LINGER_MS`; 0: no wait,
    /// only the rows already queued go along).
    pub linger: Duration,
    /// The most rows one job is given (`PUBLISH_BATCH_SIZE`, at least 1).
    pub max_rows: usize,
}

enum Message {
    Row(Appended),
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
    /// Starts the collecting task on the current runtime; each batch becomes one job, and
    /// wakes this process's publish worker.
    pub fn start(
        pool: MySqlPool,
        queue: QueueSettings,
        wake: Wake,
        settings: BatchSettings,
    ) -> Self {
        Self::with_push(settings, move |rows| {
            let (pool, wake) = (pool.clone(), wake.clone());
            async move {
                push(&pool, &queue, rows).await;
                wake.now();
            }
        })
    }

    /// The collecting task with what to do with each batch.
    fn with_push<F, Fut>(settings: BatchSettings, push: F) -> Self
    where
        F: FnMut(Vec<Appended>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sender, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(collect(received, settings, push));
        Self {
            sender,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Queues a row that was just committed for its publish job. Never waits.
    pub fn enqueue(&self, row: Appended) {
        if let Err(mpsc::error::SendError(Message::Row(row))) = self.sender.send(Message::Row(row))
        {
            tracing::warn!(
                outbox_id = row.id,
                "the publish batcher has stopped; the sweeper will give this row a job"
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
    F: FnMut(Vec<Appended>) -> Fut,
    Fut: Future<Output = ()>,
{
    let max_rows = settings.max_rows.max(1);
    while let Some(Message::Row(first)) = received.recv().await {
        let until = Instant::now() + settings.linger;
        let mut rows = vec![first];
        let mut closing = false;
        while rows.len() < max_rows {
            let next = match received.try_recv() {
                Ok(message) => Some(message),
                Err(_) if settings.linger.is_zero() => None,
                Err(_) => tokio::time::timeout_at(until, received.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(Message::Row(row)) => rows.push(row),
                Some(Message::Close) => {
                    closing = true;
                    break;
                }
                None => break,
            }
        }
        push(rows).await;
        if closing {
            return;
        }
    }
}

/// One job for `rows`, named by the first row's job id; failures are left to the sweeper.
async fn push(pool: &MySqlPool, queue: &QueueSettings, rows: Vec<Appended>) {
    let job_id = rows[0].job_id.clone();
    let trace = rows[0].trace.clone();
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    metrics::histogram!("publish_job_rows").record(ids.len() as f64);
    if let Err(e) = outbox::assign_job(pool, &ids[1..], &job_id).await {
        tracing::warn!(error = %e, rows = ids.len(), "could not hand rows to their publish job; the sweeper will");
        return;
    }
    if let Err(e) = queue::push_publish(pool, queue, &job_id, ids, trace).await {
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

    /// A batcher that records the ids of each batch instead of pushing jobs.
    fn recording(
        settings: BatchSettings,
    ) -> (PublishBatcher, Arc<std::sync::Mutex<Vec<Vec<i64>>>>) {
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batcher = PublishBatcher::with_push(settings, {
            let batches = batches.clone();
            move |rows: Vec<Appended>| {
                batches
                    .lock()
                    .unwrap()
                    .push(rows.iter().map(|r| r.id).collect());
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
