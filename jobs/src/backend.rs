//! The job storage workers run on: apalis-mysql's, with a heartbeat that only keeps the
//! worker's row alive.
//!
//! apalis-mysql rc.8's heartbeat also runs its orphan re-enqueue, an `UPDATE jobs … WHERE id
//! IN (SELECT … FROM jobs JOIN workers …)` that never matches (it compares a TIMESTAMP with a
//! Unix time, see `reaper`) but reads every Queued and Running job under locks. Under load it
//! deadlocked with fetches and acknowledgements, and apalis ends a worker whose heartbeat
//! fails: in the pipeline bench a worker ended every few seconds, and each restart stalled
//! its queue (notification p99 12 s). Our reaper does that job without the locks.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use apalis_core::{
    backend::{queue::Queue, Backend, BackendExt},
    worker::context::WorkerContext,
};
use apalis_mysql::{queries::keep_alive::keep_alive_stream, MySqlContext, MySqlTask};
use futures_util::{stream::BoxStream, Sink, StreamExt};
use ulid::Ulid;

use crate::queue::Storage;

pub struct WorkerStorage<T>(pub Storage<T>);

impl<T> Clone for WorkerStorage<T> {
    fn clone(&self) -> Self {
        WorkerStorage(self.0.clone())
    }
}

impl<T> Backend for WorkerStorage<T>
where
    Storage<T>: Backend<Args = T, IdType = Ulid, Context = MySqlContext, Error = sqlx::Error>,
{
    type Args = T;
    type IdType = Ulid;
    type Context = MySqlContext;
    type Error = sqlx::Error;
    type Stream = <Storage<T> as Backend>::Stream;
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
        self.0.poll(worker)
    }
}

impl<T> BackendExt for WorkerStorage<T>
where
    Storage<T>: BackendExt<Args = T, IdType = Ulid, Context = MySqlContext, Error = sqlx::Error>,
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
