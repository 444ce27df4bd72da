//! The job storage workers run on: apalis-mysql's, with a heartbeat that only keeps the
//! worker's row alive.
//!
//! apalis-mysql rc.8's heartbeat also runs its orphan re-enqueue, an `UPDATE jobs … WHERE id
//! IN (SELECT … FROM jobs JOIN workers …)` that never matches (it compares a TIMESTAMP with a
//! Unix time, see `reaper`) but reads every Queued and Running job under locks. Under load it
//! deadlocked with fetches and acknowledgements, and apalis ends a worker whose heartbeat
//! fails: in the pipeline bench a worker ended every few seconds, and each restart stalled
//! its queue (notification p99 12 s). Our reaper does that job without the locks.
//!
//! Its fetch stream also ends at the first failed fetch, and the worker with it. A fetch
//! (`SELECT … FOR UPDATE SKIP LOCKED`, then `UPDATE` of the rows it took) can be chosen as an
//! InnoDB deadlock victim against acknowledgements of the same queue: at 384 orders/s that
//! ended a worker every few seconds, and Kafka p99 reached 3.4 s while it came back. Such a
//! fetch took nothing (its transaction rolled back), so the stream here simply fetches again.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{codec::Codec, queue::Queue, Backend, BackendExt, TaskStream},
    worker::context::WorkerContext,
};
use apalis_mysql::{
    fetcher::MySqlPollFetcher, queries::keep_alive::keep_alive_stream, Config, MySqlContext,
    MySqlTask,
};
use futures_util::{stream::BoxStream, Sink, StreamExt};
use sqlx::MySqlPool;
use ulid::Ulid;

use crate::queue::Storage;

/// The pause before fetching again after a fetch lost a lock race.
const REFETCH_PAUSE: Duration = Duration::from_millis(20);

/// A fetch that InnoDB rolled back to break a deadlock (1213) or that waited too long for a
/// lock (1205): it took no job, and trying again is the remedy.
fn lost_lock_race(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .is_some_and(|my| matches!(my.number(), 1205 | 1213))
}

/// apalis-mysql's fetcher alone, decoding as its storage does (without the worker
/// registration its storage's stream starts with: the worker is registered already).
fn fetcher<T>(
    pool: &MySqlPool,
    config: &Config,
    worker: &WorkerContext,
) -> TaskStream<MySqlTask<T>, sqlx::Error>
where
    T: Send + 'static,
    JsonCodec<Vec<u8>>: Codec<T, Compact = Vec<u8>>,
    <JsonCodec<Vec<u8>> as Codec<T>>::Error: std::error::Error + Send + Sync + 'static,
{
    MySqlPollFetcher::<Vec<u8>, JsonCodec<Vec<u8>>>::new(pool, config, worker)
        .map(|item| {
            let Some(task) = item? else {
                return Ok(None);
            };
            task.try_map(|compact| JsonCodec::<Vec<u8>>::decode(&compact))
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(e.into()))
        })
        .boxed()
}

pub struct WorkerStorage<T>(pub Storage<T>);

impl<T> Clone for WorkerStorage<T> {
    fn clone(&self) -> Self {
        WorkerStorage(self.0.clone())
    }
}

impl<T> Backend for WorkerStorage<T>
where
    T: Send + 'static,
    Storage<T>: Backend<
        Args = T,
        IdType = Ulid,
        Context = MySqlContext,
        Error = sqlx::Error,
        Stream = TaskStream<MySqlTask<T>, sqlx::Error>,
    >,
    JsonCodec<Vec<u8>>: Codec<T, Compact = Vec<u8>>,
    <JsonCodec<Vec<u8>> as Codec<T>>::Error: std::error::Error + Send + Sync + 'static,
{
    type Args = T;
    type IdType = Ulid;
    type Context = MySqlContext;
    type Error = sqlx::Error;
    type Stream = TaskStream<MySqlTask<T>, sqlx::Error>;
    type Beat = BoxStream<'static, Result<(), sqlx::Error>>;
    type Layer = <Storage<T> as Backend>::Layer;

    fn heartbeat(&self, worker: &WorkerContext) -> Self::Beat {
        keep_alive_stream(
            self.0.pool().clone(),
            self.0.config().clone(),
            worker.clone(),
        )
        .boxed()
    }

    fn middleware(&self) -> Self::Layer {
        self.0.middleware()
    }

    fn poll(self, worker: &WorkerContext) -> Self::Stream {
        let (pool, config, worker) = (
            self.0.pool().clone(),
            self.0.config().clone(),
            worker.clone(),
        );
        let first = self.0.poll(&worker);
        futures_util::stream::unfold(Some(first), move |inner| {
            let (pool, config, worker) = (pool.clone(), config.clone(), worker.clone());
            async move {
                let mut inner = inner?;
                loop {
                    match inner.next().await {
                        Some(Err(e)) if lost_lock_race(&e) => {
                            tracing::debug!(queue = %config.queue(), error = %e, "a job fetch lost a lock race; fetching again");
                            metrics::counter!("job_fetch_retries_total", "queue" => config.queue().to_string()).increment(1);
                            tokio::time::sleep(REFETCH_PAUSE).await;
                            inner = fetcher(&pool, &config, &worker);
                        }
                        Some(item) => return Some((item, Some(inner))),
                        None => return None,
                    }
                }
            }
        })
        .boxed()
    }
}

impl<T> BackendExt for WorkerStorage<T>
where
    T: Send + 'static,
    Storage<T>: BackendExt<
        Args = T,
        IdType = Ulid,
        Context = MySqlContext,
        Error = sqlx::Error,
        Stream = TaskStream<MySqlTask<T>, sqlx::Error>,
    >,
    JsonCodec<Vec<u8>>: Codec<T, Compact = Vec<u8>>,
    <JsonCodec<Vec<u8>> as Codec<T>>::Error: std::error::Error + Send + Sync + 'static,
{
    type Codec = <Storage<T> as BackendExt>::Codec;
    type Compact = <Storage<T> as BackendExt>::Compact;
    type CompactStream = <Storage<T> as BackendExt>::CompactStream;

    fn get_queue(&self) -> Queue {
        self.0.get_queue()
    }

    fn poll_compact(self, worker: &WorkerContext) -> Self::CompactStream {
        self.0.poll_compact(worker)
    }
}

/// Workflow steps push their successors through the worker's own storage.
impl<T> Sink<MySqlTask<Vec<u8>>> for WorkerStorage<T>
where
    Storage<T>: Sink<MySqlTask<Vec<u8>>, Error = sqlx::Error> + Unpin,
{
    type Error = sqlx::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: MySqlTask<Vec<u8>>) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().0).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }
}
