//! Group commit of POST /orders: the requests of a process queue here and a few lanes commit
//! them in batches (`batch`), one transaction per batch.
//!
//! A lane that finishes a batch takes everything queued meanwhile (up to `max_batch`), so the
//! batches grow with the load by themselves: one request alone is committed at once, as
//! before, and under load a commit serves many orders. `linger` can make a lane wait a little
//! for company, which trades latency for fewer commits; the default does not wait.
//!
//! A key is in at most one batch of this process at a time: a duplicate sent while the first
//! request is in flight waits for it here (up to `in_flight_wait`, then 409 IN_PROGRESS) and
//! is then decided like any retry, from what the first one stored. Across replicas the
//! database's UNIQUE key does the same (`batch::BatchError::KeyTaken`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_jobs::publish_batch::PublishBatcher;
use rand::Rng;
use sqlx::MySqlPool;
use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};
use tracing::Instrument;

use super::{
    batch::{self, BatchError, Decision, Outcome, Pending},
    create::CreateError,
};
use crate::{catalog::Cache, telemetry::names};

/// `ORDER_COMMIT_LANES`, `ORDER_BATCH_MAX`, `ORDER_BATCH_LINGER_US`, and the idempotency
/// settings the batches need.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    pub lanes: usize,
    pub max_batch: usize,
    pub linger: Duration,
    pub retention: Duration,
    pub in_flight_wait: Duration,
}

/// Attempts of a batch whose transaction was rolled back (deadlock, lock wait, a key
/// committed elsewhere meanwhile) before its requests are committed one by one.
const BATCH_ATTEMPTS: u32 = 3;

/// The order path's entry: cheap to clone.
#[derive(Clone)]
pub struct OrderCommitter {
    queue: mpsc::UnboundedSender<Job>,
    keys: Arc<InFlight>,
    in_flight_wait: Duration,
}

/// A request's outcome, with what its batch looked like (for its span).
#[derive(Debug)]
pub struct Committed {
    pub decision: Decision,
    pub batch_size: usize,
    pub attempts: u32,
}

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<Committed, CreateError>>,
    /// Released when the job is dropped: after its answer is sent, or with its lane.
    _key: KeyGuard,
}

/// What the lanes need.
struct Lanes {
    pool: MySqlPool,
    publisher: PublishBatcher,
    cache: Cache,
    settings: CommitSettings,
}

impl OrderCommitter {
    /// Starts the lanes on the current runtime. They stop when every clone of the committer
    /// is dropped and the queue is empty.
    pub fn start(
        pool: MySqlPool,
        publisher: PublishBatcher,
        cache: Cache,
        settings: CommitSettings,
    ) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        let received = Arc::new(tokio::sync::Mutex::new(received));
        let lanes = Arc::new(Lanes {
            pool,
            publisher,
            cache,
            settings,
        });
        for _ in 0..settings.lanes.max(1) {
            tokio::spawn(lane(received.clone(), lanes.clone()));
        }
        Self {
            queue,
            keys: Arc::default(),
            in_flight_wait: settings.in_flight_wait,
        }
    }

    /// Queues the request and waits for its batch.
    pub async fn submit(&self, pending: Pending) -> Result<Committed, CreateError> {
        let deadline = Instant::now() + self.in_flight_wait;
        let key = loop {
            match self.keys.claim(pending.user_id, &pending.key) {
                Ok(guard) => break guard,
                Err(mut first) => {
                    // The sender is dropped when the first request is done; nothing is sent.
                    let _ = tokio::time::timeout_at(deadline, first.changed())
                        .await
                        .map_err(|_| CreateError::KeyInProgress)?;
                }
            }
        };
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                pending,
                reply,
                _key: key,
            })
            .map_err(|_| CreateError::Stopped)?;
        answer.await.map_err(|_| CreateError::Stopped)?
    }
}

/// The keys of this process's requests in flight.
#[derive(Default)]
struct InFlight(Mutex<HashMap<(i64, String), watch::Receiver<()>>>);

struct KeyGuard {
    keys: Arc<InFlight>,
    key: (i64, String),
    /// Dropped after the key is released, which wakes the requests waiting for it.
    _done: watch::Sender<()>,
}

impl InFlight {
    /// The key for this request, or what to wait on while another request holds it.
    fn claim(self: &Arc<Self>, user_id: i64, key: &str) -> Result<KeyGuard, watch::Receiver<()>> {
        let mut keys = self.0.lock().expect("in-flight keys lock");
        let id = (user_id, key.to_owned());
        if let Some(first) = keys.get(&id) {
            return Err(first.clone());
        }
        let (done, waiting) = watch::channel(());
        keys.insert(id.clone(), waiting);
        Ok(KeyGuard {
            keys: self.clone(),
            key: id,
            _done: done,
        })
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.keys
            .0
            .lock()
            .expect("in-flight keys lock")
            .remove(&self.key);
    }
}

async fn lane(received: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>, lanes: Arc<Lanes>) {
    loop {
        let jobs = {
            let mut received = received.lock().await;
            match gather(
                &mut received,
                lanes.settings.max_batch,
                lanes.settings.linger,
            )
            .await
            {
                Some(jobs) => jobs,
                None => return,
            }
        };
        run(&lanes, jobs).await;
    }
}

/// The next batch: the first request to arrive, and what is queued behind it (waiting up to
/// `linger` for more) up to `max_batch`. `None` once the queue is closed and empty.
async fn gather(
    received: &mut mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    linger: Duration,
) -> Option<Vec<Job>> {
    let first = received.recv().await?;
    let until = Instant::now() + linger;
    let mut jobs = vec![first];
    while jobs.len() < max_batch.max(1) {
        let next = match received.try_recv() {
            Ok(job) => Some(job),
            Err(_) if linger.is_zero() => None,
            Err(_) => tokio::time::timeout_at(until, received.recv())
                .await
                .ok()
                .flatten(),
        };
        match next {
            Some(job) => jobs.push(job),
            None => break,
        }
    }
    Some(jobs)
}

async fn run(lanes: &Lanes, jobs: Vec<Job>) {
    let batch: Vec<&Pending> = jobs.iter().map(|j| &j.pending).collect();
    metrics::histogram!(names::ORDER_BATCH_SIZE).record(batch.len() as f64);
    let span = tracing::info_span!("orders.batch", orders = batch.len());
    let results = commit_each(lanes, &batch).instrument(span).await;
    for (job, result) in jobs.into_iter().zip(results) {
        // The client may have gone; its order stands either way.
        let _ = job.reply.send(result);
    }
}

/// Commits the batch; if it cannot be committed as a whole, each request on its own, so that
/// one request's failure is never another's.
async fn commit_each(lanes: &Lanes, batch: &[&Pending]) -> Vec<Result<Committed, CreateError>> {
    match commit(lanes, batch).await {
        Ok((outcome, attempts)) => {
            let size = batch.len();
            outcome
                .decisions
                .into_iter()
                .map(|decision| {
                    Ok(Committed {
                        decision,
                        batch_size: size,
                        attempts,
                    })
                })
                .collect()
        }
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, orders = batch.len(), "order batch failed; committing its orders one by one");
            metrics::counter!(names::ORDER_BATCH_SPLITS).increment(1);
            let mut results = Vec::with_capacity(batch.len());
            for one in batch {
                results.push(match commit(lanes, std::slice::from_ref(one)).await {
                    Ok((mut outcome, attempts)) => Ok(Committed {
                        decision: outcome.decisions.remove(0),
                        batch_size: 1,
                        attempts,
                    }),
                    Err(e) => Err(e.into()),
                });
            }
            results
        }
        Err(e) => vec![Err(e.into())],
    }
}

/// One batch, run again while its transaction is rolled back for a reason that can pass.
/// After a commit, the products' cached views are dropped and the events handed to their job
/// before anyone is answered, so a client that reads after its answer sees its order.
async fn commit(lanes: &Lanes, batch: &[&Pending]) -> Result<(Outcome, u32), BatchError> {
    let mut attempt = 1;
    loop {
        let result = {
            let mut conn = lanes.pool.acquire().await?;
            batch::commit(&mut conn, batch, lanes.settings.retention).await
        };
        match result {
            Ok(outcome) => {
                if !outcome.products.is_empty() {
                    lanes.cache.invalidate_products(&outcome.products).await;
                }
                if let Some(events) = &outcome.events {
                    lanes.publisher.enqueue(events.clone());
                }
                return Ok((outcome, attempt));
            }
            Err(e) if e.worth_repeating() && attempt < BATCH_ATTEMPTS => {
                metrics::counter!(names::ORDER_BATCH_RETRIES, "reason" => e.reason()).increment(1);
                tracing::debug!(error = %e, attempt, "order batch rolled back; running it again");
                attempt += 1;
                // Nothing is held now; a short random pause lets the other side finish.
                let pause = rand::thread_rng().gen_range(0..=2 * attempt as u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => return Err(e),
        }
    }
}
