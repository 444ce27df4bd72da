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

use std::{sync::Arc, time::Duration};

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
    /// Starts the collecting task on the current runtime.
    pub fn start(
        pool: MySqlPool,
        queue: QueueSettings,
        wake: Wake,
        settings: BatchSettings,
    ) -> Self {
        let (sender, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(collect(received, pool, queue, wake, settings));
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

async fn collect(
    mut received: mpsc::UnboundedReceiver<Message>,
    pool: MySqlPool,
    queue: QueueSettings,
    wake: Wake,
    settings: BatchSettings,
) {
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
        push(&pool, &queue, rows).await;
        wake.now();
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
