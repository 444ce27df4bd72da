//! The job storage workers run on: apalis-mysql's, with a heartbeat that only keeps the
//! worker's row alive and a fetch loop that survives a failed fetch.
//!
//! apalis-mysql rc.8's heartbeat also runs its orphan re-enqueue, an `UPDATE jobs … WHERE id
//! IN (SELECT … FROM jobs JOIN workers …)` that never matches (it compares a TIMESTAMP with a
//! Unix time, see `reaper`) but reads every Queued and Running job under locks. Under load it
//! deadlocked with fetches and acknowledgements, and apalis ends a worker whose heartbeat
//! fails: in the pipeline bench a worker ended every few seconds, and each restart stalled
//! its queue (notification p99 12 s). Our reaper does that job without the locks.
//!
//! apalis-mysql's fetch stream ends at its first failed fetch, and the worker ends with it.
//! A fetch (`SELECT … FOR UPDATE SKIP LOCKED`, then `UPDATE`) still loses an occasional
//! deadlock to the pushes beside it under load (seen in bench/: `1213 Deadlock found`, a
//! restart each time, its jobs released). InnoDB rolled that fetch back whole, so nothing
//! was taken: [`fetch_loop`] fetches again at the next poll tick instead. A fetch whose
//! COMMIT may have taken effect (its answer lost with the connection) names the jobs it
//! marked (`fetch`); the loop gives back those still queued under the worker before it
//! fetches again.
//!
//! A paused queue (`pause`) is not fetched from: the loop waits at the queue's gate before
//! each fetch, and fetches at once when the queue resumes.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{atomic::AtomicUsize, Arc},
    task::{Context, Poll},
};

use apalis_codec::json::JsonCodec;
use apalis_core::{
    backend::{
        codec::Codec,
        poll_strategy::{PollContext, PollStrategyExt},
        queue::Queue,
        Backend, BackendExt, TaskStream,
    },
    worker::context::WorkerContext,
};
use apalis_mysql::{
    queries::keep_alive::{initial_heartbeat, keep_alive_stream},
    CompactType, MySqlContext, MySqlTask,
};
use futures_util::{
    stream::{self, BoxStream},
    FutureExt, Sink, Stream, StreamExt,
};
use ulid::Ulid;

use super::{
    fetch::{self, FetchFailed, InDoubt},
    pause::QueueGate,
};
use crate::engine::{
    queue::{self, QueueSettings, Storage, Wake},
    sql_error,
};

/// A worker's storage, its queue's gate, its local wake, and how many poll intervals it
/// waits at most while its queue stays empty.
pub struct WorkerStorage<T>(pub Storage<T>, pub QueueGate, Option<Wake>, u32);

impl<T> Clone for WorkerStorage<T> {
    fn clone(&self) -> Self {
        WorkerStorage(self.0.clone(), self.1.clone(), self.2.clone(), self.3)
    }
}

/// What lets a waiting fetch loop fetch again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// A poll interval passed.
    Interval,
    /// This process pushed a job to the queue.
    Wake,
}

/// When a fetch loop fetches again after an empty fetch: at a wake at once; otherwise after
/// 1, 2, 4 … poll intervals as the queue stays empty, up to `max_idle` intervals. A queue
/// nobody uses then costs each replica a fetch per `max_idle` intervals instead of one per
/// interval (replicas × queues × 10 a second at 100 ms), while a job pushed by this
/// process is fetched at its wake and one another replica pushed within `max_idle`.
pub struct Pace {
    ticks: Pin<Box<dyn Stream<Item = Tick> + Send>>,
    max_idle: u32,
    empty_fetches: u32,
}

impl Pace {
    pub fn new(ticks: Pin<Box<dyn Stream<Item = Tick> + Send>>, max_idle: u32) -> Self {
        Pace {
            ticks,
            max_idle: max_idle.max(1),
            empty_fetches: 0,
        }
    }

    /// Every interval, whatever the queue holds.
    #[cfg(test)]
    pub fn every(ticks: Pin<Box<dyn Stream<Item = ()> + Send>>) -> Self {
        Pace::new(Box::pin(ticks.map(|()| Tick::Interval)), 1)
    }

    fn fetched(&mut self, found: bool) {
        self.empty_fetches = if found {
            0
        } else {
            self.empty_fetches.saturating_add(1)
        };
    }

    /// Waits for the next fetch; None when the ticks have ended (the worker is stopping).
    async fn next(&mut self) -> Option<()> {
        let intervals = 1u32
            .checked_shl(self.empty_fetches.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(self.max_idle);
        let mut passed = 0;
        while passed < intervals {
            match self.ticks.next().await? {
                Tick::Wake => {
                    self.empty_fetches = 0;
                    return Some(());
                }
                Tick::Interval => passed += 1,
            }
        }
        Some(())
    }
}

impl<T> WorkerStorage<T> {
    /// Registers the worker (as apalis-mysql does), then fetches in a [`fetch_loop`] paced by
    /// the storage's poll strategy.
    fn fetches(self, worker: &WorkerContext) -> TaskStream<MySqlTask<CompactType>, sqlx::Error> {
        let (pool, config, worker) = (
            self.0.pool().clone(),
            self.0.config().clone(),
            worker.clone(),
        );
        let register = stream::once(
            initial_heartbeat(pool.clone(), config.clone(), worker.clone(), "MySqlStorage")
                .map(|_| Ok(None)),
        );
        let interval = config
            .poll_strategy()
            .clone()
            .build_stream(&PollContext::new(
                worker.clone(),
                Arc::new(AtomicUsize::new(0)),
            ))
            .map(|()| Tick::Interval);
        let ticks: Pin<Box<dyn Stream<Item = Tick> + Send>> = match self.2 {
            Some(wake) => Box::pin(stream::select(interval, wake.ticks().map(|()| Tick::Wake))),
            None => Box::pin(interval),
        };
        let idle_ticks = self.3;
        let queue = config.queue().to_string();
        let buffer = config.buffer_size();
        let fetcher = {
            let (pool, queue, worker) = (pool.clone(), queue.clone(), worker.name().to_owned());
            move || {
                let (pool, queue, worker) = (pool.clone(), queue.clone(), worker.clone());
                async move { fetch::fetch(&pool, &queue, buffer, &worker).await }
            }
        };
        let release = move |doubt: InDoubt| {
            let pool = pool.clone();
            async move { fetch::release_in_doubt(&pool, &doubt).await }
        };
        register
            .chain(fetch_loop(
                queue,
                Pace::new(ticks, idle_ticks),
                self.1,
                fetcher,
                release,
            ))
            .boxed()
    }
}

/// Fetches while there are jobs, and after an empty fetch waits as `pace` says (the poll
/// interval, longer while the queue stays empty, or a local push's wake). A fetch that
/// failed for a transient reason (deadlock victim, lock wait timeout, busy pool, dropped
/// connection) is repeated at the next tick; any other error ends the stream, as apalis'
/// own does (the worker's supervisor then gives back every job the worker held). When the
/// failed fetch names jobs in doubt (its COMMIT may have taken effect), `release` gives
/// back those it did take before anything else is fetched, at each tick until the database
/// answers: no fetch of this worker can have taken one of them meanwhile, so what `release`
/// finds queued under the worker is exactly what the failed fetch took.
/// No fetch is made while `gate` is closed (the queue is paused); once it opens, at once.
pub fn fetch_loop<J, F, Fut, R, RFut>(
    queue: String,
    pace: Pace,
    gate: QueueGate,
    fetch: F,
    release: R,
) -> impl Stream<Item = Result<Option<J>, sqlx::Error>> + Send + 'static
where
    J: Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<J>, FetchFailed>> + Send + 'static,
    R: FnMut(InDoubt) -> RFut + Send + 'static,
    RFut: Future<Output = Result<u64, sqlx::Error>> + Send + 'static,
{
    struct State<J, F, R> {
        queue: String,
        pace: Pace,
        gate: QueueGate,
        fetch: F,
        release: R,
        in_doubt: Option<InDoubt>,
        fetched: VecDeque<J>,
        wait: bool,
        ended: bool,
    }
    let state = State {
        queue,
        pace,
        gate,
        fetch,
        release,
        in_doubt: None,
        fetched: VecDeque::new(),
        wait: false,
        ended: false,
    };
    stream::unfold(state, |mut s| async move {
        loop {
            if let Some(job) = s.fetched.pop_front() {
                return Some((Ok(Some(job)), s));
            }
            if s.ended {
                return None;
            }
            if s.wait {
                s.pace.next().await?;
            }
            if let Some(doubt) = s.in_doubt.clone() {
                match (s.release)(doubt).await {
                    Ok(released) => {
                        if released > 0 {
                            tracing::warn!(queue = %s.queue, jobs = released, "a failed fetch had taken jobs (its commit's answer was lost); gave them back");
                            metrics::counter!("job_fetch_released_total", "queue" => s.queue.clone())
                                .increment(released);
                        }
                        s.in_doubt = None;
                    }
                    Err(e) => {
                        tracing::warn!(queue = %s.queue, error = %e, "could not give back the jobs of a failed fetch yet; trying again at the next poll");
                        s.wait = true;
                        continue;
                    }
                }
            }
            if s.gate.is_paused() {
                s.gate.opened().await;
            }
            match (s.fetch)().await {
                Ok(jobs) => {
                    s.wait = jobs.is_empty();
                    s.pace.fetched(!jobs.is_empty());
                    s.fetched.extend(jobs);
                }
                Err(FetchFailed { error, in_doubt }) if sql_error::is_transient(&error) => {
                    tracing::warn!(queue = %s.queue, error = %error, "job fetch failed; fetching again at the next poll");
                    metrics::counter!("job_fetch_retries_total", "queue" => s.queue.clone())
                        .increment(1);
                    s.in_doubt = in_doubt;
                    s.wait = true;
                }
                Err(FetchFailed { error, .. }) => {
                    s.ended = true;
                    return Some((Err(error), s));
                }
            }
        }
    })
}

impl<T> Backend for WorkerStorage<T>
where
    Storage<T>: Backend<Args = T, IdType = Ulid, Context = MySqlContext, Error = sqlx::Error>,
    T: Send + Unpin + 'static,
    JsonCodec<CompactType>: Codec<T, Compact = CompactType>,
    <JsonCodec<CompactType> as Codec<T>>::Error: std::error::Error + Send + Sync + 'static,
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
        let pool = self.0.pool().clone();
        let queue = self.0.config().queue().to_string();
        let worker_name = worker.name().to_owned();
        self.fetches(worker)
            .then(move |fetched| {
                let (pool, queue, worker_name) = (pool.clone(), queue.clone(), worker_name.clone());
                async move {
                    let Some(task) = fetched? else {
                        return Ok(None);
                    };
                    let id = task.parts.task_id.as_ref().map(ToString::to_string);
                    match task.try_map(|args| JsonCodec::<CompactType>::decode(&args)) {
                        Ok(task) => Ok(Some(task)),
                        // A payload this release cannot read (an older or newer one wrote it,
                        // or it is corrupt) would end the worker, and be fetched first again
                        // after each restart: it is dead at once instead, with its error, and
                        // the queue moves on.
                        Err(e) => {
                            if let Some(id) = id {
                                bury_undecodable(&pool, &queue, &id, &worker_name, &e.to_string())
                                    .await?;
                            }
                            Ok(None)
                        }
                    }
                }
            })
            .boxed()
    }
}

/// A job whose payload does not decode: dead (`Killed`, its error as its result), with the
/// attempt in the history, so that an operator sees it and the queue does not fetch it again.
async fn bury_undecodable(
    pool: &sqlx::MySqlPool,
    queue: &str,
    id: &str,
    worker: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let error = format!("the job's payload does not decode: {error}");
    tracing::error!(queue, job_id = id, %error, "job is dead: its payload does not decode");
    metrics::counter!("job_undecodable_total", "queue" => queue.to_owned()).increment(1);
    let now = chrono::Utc::now();
    sqlx::query(
        "UPDATE jobs SET status = 'Killed', attempts = attempts + 1, last_result = ?, \
         done_at = CURRENT_TIMESTAMP WHERE id = ?",
    )
    .bind(serde_json::json!({ "Err": error }).to_string())
    .bind(id)
    .execute(pool)
    .await?;
    let attempt: Option<i32> = sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let failed = super::attempts::FailedAttempt {
        job_id: id.to_owned(),
        queue: queue.to_owned(),
        attempt: attempt.unwrap_or(1).max(1) as usize,
        started_at: now,
        finished_at: now,
        outcome: super::attempts::FailedOutcome::Dead,
        error,
        worker: Some(worker.to_owned()),
        trace_id: None,
    };
    if let Err(e) = super::attempts::record(pool, &failed).await {
        tracing::warn!(job_id = id, error = %e, "could not record the undecodable job's attempt");
    }
    Ok(())
}

impl<T> BackendExt for WorkerStorage<T>
where
    WorkerStorage<T>: Backend<Args = T, IdType = Ulid, Context = MySqlContext, Error = sqlx::Error>,
    JsonCodec<CompactType>: Codec<T, Compact = CompactType>,
{
    type Codec = JsonCodec<CompactType>;
    type Compact = CompactType;
    type CompactStream = TaskStream<MySqlTask<CompactType>, sqlx::Error>;

    fn get_queue(&self) -> Queue {
        self.0.config().queue().clone()
    }

    fn poll_compact(self, worker: &WorkerContext) -> Self::CompactStream {
        self.fetches(worker)
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

/// A worker's storage: it polls every `poll_interval` after an empty fetch, or when woken,
/// never while `gate` is closed (the queue is paused), and its heartbeat only keeps the
/// worker alive (this module).
pub fn worker_storage<T>(
    pool: &sqlx::MySqlPool,
    queue: &str,
    settings: &QueueSettings,
    wake: Option<&Wake>,
    gate: QueueGate,
) -> WorkerStorage<T> {
    WorkerStorage(
        apalis_mysql::MySqlStorage::new_with_config(pool, &queue::config(queue, settings)),
        gate,
        wake.cloned(),
        settings.idle_poll_intervals(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{atomic::Ordering, Mutex};

    use super::*;

    type Script = Arc<Mutex<VecDeque<Result<Vec<u32>, FetchFailed>>>>;
    type Ready<T> = futures_util::future::Ready<T>;

    /// A fetch that answers from a script, then fails for good (which ends the loop).
    fn scripted(
        answers: Vec<Result<Vec<u32>, sqlx::Error>>,
    ) -> (
        Script,
        impl FnMut() -> Ready<Result<Vec<u32>, FetchFailed>> + Send + 'static,
    ) {
        scripted_doubts(
            answers
                .into_iter()
                .map(|a| a.map_err(FetchFailed::from))
                .collect(),
        )
    }

    fn scripted_doubts(
        answers: Vec<Result<Vec<u32>, FetchFailed>>,
    ) -> (
        Script,
        impl FnMut() -> Ready<Result<Vec<u32>, FetchFailed>> + Send + 'static,
    ) {
        let script: Script = Arc::new(Mutex::new(answers.into()));
        let fetch =
            {
                let script = script.clone();
                move || {
                    let next = script.lock().unwrap().pop_front();
                    futures_util::future::ready(next.unwrap_or_else(|| {
                        Err(sqlx::Error::Protocol("script ended".into()).into())
                    }))
                }
            };
        (script, fetch)
    }

    /// For loops whose fetches never leave anything in doubt.
    fn no_release(_: InDoubt) -> Ready<Result<u64, sqlx::Error>> {
        panic!("nothing was in doubt")
    }

    /// A loop on an open queue whose fetches never leave anything in doubt.
    fn open_loop<F>(
        ticks: Pin<Box<dyn Stream<Item = ()> + Send>>,
        fetch: F,
    ) -> impl Stream<Item = Result<Option<u32>, sqlx::Error>> + Send + 'static
    where
        F: FnMut() -> Ready<Result<Vec<u32>, FetchFailed>> + Send + 'static,
    {
        fetch_loop(
            "q".into(),
            Pace::every(ticks),
            QueueGate::always_open(),
            fetch,
            no_release,
        )
    }

    fn counted_ticks() -> (Arc<AtomicUsize>, Pin<Box<dyn Stream<Item = ()> + Send>>) {
        let count = Arc::new(AtomicUsize::new(0));
        let ticks = stream::repeat(()).map({
            let count = count.clone();
            move |()| {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        (count, Box::pin(ticks))
    }

    #[tokio::test]
    async fn a_transient_fetch_failure_is_fetched_again_at_the_next_tick() {
        let (script, fetch) = scripted(vec![
            Ok(vec![]),
            Err(sqlx::Error::PoolTimedOut),
            Ok(vec![1, 2]),
            Ok(vec![3]),
            Ok(vec![]),
        ]);
        let (ticks_taken, ticks) = counted_ticks();
        let items: Vec<_> = open_loop(ticks, fetch).collect().await;

        let jobs: Vec<u32> = items
            .iter()
            .filter_map(|i| i.as_ref().ok().copied().flatten())
            .collect();
        assert_eq!(
            jobs,
            vec![1, 2, 3],
            "every fetched job is handed on, in order"
        );
        assert_eq!(
            items.len(),
            4,
            "the jobs, then the one error that ends the loop"
        );
        assert!(matches!(items[3], Err(sqlx::Error::Protocol(_))));
        // A wait after the empty fetch, after the failure and after the last empty fetch;
        // none between fetches that found jobs.
        assert_eq!(ticks_taken.load(Ordering::SeqCst), 3);
        assert!(script.lock().unwrap().is_empty());
    }

    /// Ticks from a script, counting those taken.
    fn scripted_ticks(
        ticks: Vec<Tick>,
    ) -> (Arc<AtomicUsize>, Pin<Box<dyn Stream<Item = Tick> + Send>>) {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = stream::iter(ticks).map({
            let count = count.clone();
            move |t| {
                count.fetch_add(1, Ordering::SeqCst);
                t
            }
        });
        (count, Box::pin(counted))
    }

    #[tokio::test]
    async fn an_empty_queue_is_fetched_after_one_two_four_intervals_up_to_the_most() {
        let (taken, ticks) = scripted_ticks(vec![Tick::Interval; 64]);
        let mut pace = Pace::new(ticks, 4);
        let mut waited = Vec::new();
        for _ in 0..5 {
            pace.fetched(false);
            let before = taken.load(Ordering::SeqCst);
            pace.next().await.unwrap();
            waited.push(taken.load(Ordering::SeqCst) - before);
        }
        assert_eq!(waited, [1, 2, 4, 4, 4]);
        // A fetch that finds jobs starts over.
        pace.fetched(true);
        pace.fetched(false);
        let before = taken.load(Ordering::SeqCst);
        pace.next().await.unwrap();
        assert_eq!(taken.load(Ordering::SeqCst) - before, 1);
    }

    #[tokio::test]
    async fn a_wake_fetches_at_once_and_starts_the_idle_wait_over() {
        use Tick::{Interval, Wake};
        let (taken, ticks) = scripted_ticks(vec![Interval, Wake, Interval, Interval]);
        let mut pace = Pace::new(ticks, 8);
        for _ in 0..3 {
            pace.fetched(false);
        }
        // Four intervals due; the wake after the first ends the wait.
        pace.next().await.unwrap();
        assert_eq!(taken.load(Ordering::SeqCst), 2);
        pace.fetched(false);
        pace.next().await.unwrap();
        assert_eq!(
            taken.load(Ordering::SeqCst),
            3,
            "one interval after the wake"
        );
        assert_eq!(pace.next().await, Some(()));
        assert_eq!(pace.next().await, None, "the ticks ended");
    }

    #[tokio::test]
    async fn an_error_that_is_not_transient_ends_the_loop_at_once() {
        let (script, fetch) = scripted(vec![Err(sqlx::Error::PoolClosed), Ok(vec![7])]);
        let (ticks_taken, ticks) = counted_ticks();
        let items: Vec<_> = open_loop(ticks, fetch).collect().await;

        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Err(sqlx::Error::PoolClosed)));
        assert_eq!(ticks_taken.load(Ordering::SeqCst), 0);
        assert_eq!(script.lock().unwrap().len(), 1, "nothing fetched after it");
    }

    #[tokio::test]
    async fn nothing_is_fetched_while_the_queue_is_paused_and_at_once_when_it_resumes() {
        let (script, fetch) = scripted(vec![Ok(vec![1])]);
        let (switch, gate) = QueueGate::switched(true);
        let (ticks_taken, ticks) = counted_ticks();
        let run = tokio::spawn(
            fetch_loop("q".into(), Pace::every(ticks), gate, fetch, no_release).collect::<Vec<_>>(),
        );
        tokio::task::yield_now().await;
        assert_eq!(script.lock().unwrap().len(), 1, "no fetch while paused");
        switch.send_replace(false);
        let items = run.await.unwrap();
        assert_eq!(
            items.len(),
            2,
            "the job, then the error that ends the script"
        );
        assert!(matches!(items[0], Ok(Some(1))));
        assert_eq!(
            ticks_taken.load(Ordering::SeqCst),
            0,
            "no tick waited for after resuming"
        );
    }

    #[tokio::test]
    async fn the_loop_ends_when_its_poll_schedule_does() {
        let (_, fetch) = scripted(vec![Ok(vec![])]);
        let items: Vec<Result<Option<u32>, _>> =
            open_loop(Box::pin(stream::empty()), fetch).collect().await;
        assert!(items.is_empty());
    }

    #[tokio::test]
    async fn jobs_a_failed_fetch_may_have_taken_are_given_back_before_the_next_fetch() {
        let doubt = InDoubt {
            worker: "w1".into(),
            ids: vec!["a".into(), "b".into()],
        };
        let lost_commit = FetchFailed {
            error: sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into()),
            in_doubt: Some(doubt.clone()),
        };
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (_, fetch) = scripted_doubts(vec![Err(lost_commit), Ok(vec![5])]);
        let fetch = {
            let (log, mut fetch) = (log.clone(), fetch);
            move || {
                log.lock().unwrap().push("fetch".into());
                fetch()
            }
        };
        // The database is still unreachable at the first try, then answers: two released.
        let answers = Arc::new(Mutex::new(VecDeque::from([
            Err(sqlx::Error::PoolTimedOut),
            Ok(2),
        ])));
        let release = {
            let log = log.clone();
            move |d: InDoubt| {
                assert_eq!(d, doubt);
                log.lock().unwrap().push("release".into());
                futures_util::future::ready(answers.lock().unwrap().pop_front().unwrap())
            }
        };
        let (ticks_taken, ticks) = counted_ticks();
        let items: Vec<_> = fetch_loop(
            "q".into(),
            Pace::every(ticks),
            QueueGate::always_open(),
            fetch,
            release,
        )
        .collect()
        .await;

        assert!(matches!(items[0], Ok(Some(5))), "{items:?}");
        assert_eq!(
            *log.lock().unwrap(),
            ["fetch", "release", "release", "fetch", "fetch"],
            "no fetch until the doubtful one's jobs are given back"
        );
        // After the failure and after the failed release; none after a fetch that found jobs.
        assert_eq!(ticks_taken.load(Ordering::SeqCst), 2);
    }
}
