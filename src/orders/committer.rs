//! Group commit of POST /orders: the requests of a process queue here and a few lanes commit
//! them in batches (`batch`), one transaction per batch.
//!
//! A lane that finishes a batch takes everything queued meanwhile (up to `max_batch`), so the
//! batches grow with the load by themselves: one request alone is committed at once, and
//! under load a commit serves many orders. `linger` can make a lane wait a little for
//! company, which trades latency for fewer commits; the default does not wait.
//!
//! Every request has a deadline, and an answer by then that never lies
//! (docs/adr/0018-order-admission.md): it is let into the queue only if it can expect to be
//! committed in time (`admission`); a request a lane has not taken when its deadline comes,
//! or whose client has gone, is given up — answered 503, never committed later — and only a
//! request already inside a batch whose outcome is not known by then is answered
//! `ORDER_OUTCOME_UNKNOWN`. A batch that failed for want of the database is refused whole,
//! never committed order by order (that is for one order's own failure), and a batch whose
//! COMMIT answer was lost is answered from what the database holds once its session is gone
//! (`lane`).
//!
//! A key is in at most one batch of this process at a time: a duplicate sent while the first
//! request is in flight waits for it here (up to `in_flight_wait` or its deadline, then 409
//! IN_PROGRESS) and is then decided like any retry, from what the first one stored. Across
//! replicas the database's UNIQUE key does the same (`batch::BatchError::KeyTaken`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use orderflow_jobs::publish_outbox::publish_batch::PublishBatcher;
use rand::Rng;
use tokio::{
    sync::{oneshot, watch, Notify},
    time::Instant,
};
use tracing::Instrument;

use super::{
    admission::{Admission, Limits, Refusal, Ticket},
    batch::{self, BatchError, Decision, InDoubt, Outcome, Pending},
    lane::{Held, LaneDb},
    outcome::CreateError,
};
use crate::{catalog::Cache, telemetry::names};

/// `ORDER_COMMIT_LANES`, `ORDER_BATCH_MAX`, `ORDER_BATCH_LINGER_US`, the admission limits,
/// and the idempotency settings the batches need.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    pub lanes: usize,
    pub max_batch: usize,
    pub linger: Duration,
    pub retention: Duration,
    pub in_flight_wait: Duration,
    /// `ORDER_DEADLINE_MS`: every order request is answered by then.
    pub deadline: Duration,
    /// `ORDER_QUEUE_MAX`: requests waiting for a lane, at most.
    pub queue_max: usize,
    /// `ORDER_QUEUE_MAX_WAIT_MS`: the longest expected wait a request is let in for.
    pub queue_max_wait: Duration,
}

impl CommitSettings {
    /// The bound on each lock a lane's session waits for: a third of the deadline, at least
    /// a second (the server counts whole seconds), at most the in-flight wait; so that a
    /// batch stopped by a lock learns it while its requests still wait for their answer.
    pub fn lock_wait(&self) -> Duration {
        (self.deadline / 3)
            .max(Duration::from_secs(1))
            .min(self.in_flight_wait.max(Duration::from_secs(1)))
    }
}

/// Attempts of a batch whose transaction was rolled back (deadlock, lock wait, a key
/// committed elsewhere meanwhile) before its requests are committed one by one.
const BATCH_ATTEMPTS: u32 = 3;

/// While the lanes are stalled and idle, how often one of them probes the database.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a lane answers a request: its decision, or why there is none.
type Answer = Result<Committed, CreateError>;

/// The order path's entry: cheap to clone. The lanes stop when every clone is dropped and
/// the queue is empty.
#[derive(Clone)]
pub struct OrderCommitter {
    shared: Arc<Shared>,
    _open: Arc<Open>,
}

/// A request's outcome, with what its batch looked like (for its span).
#[derive(Debug)]
pub struct Committed {
    pub decision: Decision,
    pub batch_size: usize,
    pub attempts: u32,
}

struct Shared {
    queue: Mutex<VecDeque<Job>>,
    /// A request was queued (or the committer closed).
    arrived: Notify,
    /// Held by the lane gathering a batch, so that lingering lanes do not split one.
    gathering: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    keys: Arc<InFlight>,
    admission: Admission,
    settings: CommitSettings,
}

/// Closes the committer when the last `OrderCommitter` goes.
struct Open(Arc<Shared>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.arrived.notify_one();
    }
}

/// A queued request and the handler waiting for it.
struct Job {
    pending: Pending,
    claim: Arc<Claim>,
    reply: oneshot::Sender<Answer>,
    deadline: Instant,
    queued_at: Instant,
}

/// The request's state, shared by its handler and the lanes, and its key: released when the
/// request is given up (a retry may start at once), else with the last of the two.
struct Claim {
    ticket: Ticket,
    key: Mutex<Option<KeyGuard>>,
}

impl Claim {
    /// Gives the request up if no lane has taken it: it will never be committed.
    fn give_up(&self) -> bool {
        let given_up = self.ticket.give_up();
        if given_up {
            self.key.lock().expect("claim lock").take();
        }
        given_up
    }
}

/// Gives the request up if its handler is dropped while it waits (the client went away, or
/// an outer timeout ended the request).
struct GiveUpOnDrop(Option<Arc<Claim>>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        if let Some(claim) = self.0.take() {
            if claim.give_up() {
                count_refusal(Refusal::ClientGone);
            }
        }
    }
}

fn count_refusal(reason: Refusal) {
    metrics::counter!(names::ORDER_ADMISSION_REFUSED, "reason" => reason.label()).increment(1);
}

/// What the lanes need.
struct Deps {
    db: LaneDb,
    publisher: PublishBatcher,
    cache: Cache,
    settings: CommitSettings,
}

impl OrderCommitter {
    /// Starts the lanes on the current runtime, with connections of their own to
    /// `database_url`.
    pub fn start(
        database_url: &str,
        publisher: PublishBatcher,
        cache: Cache,
        settings: CommitSettings,
    ) -> Result<Self, sqlx::Error> {
        let lanes = settings.lanes.max(1);
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            arrived: Notify::new(),
            gathering: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
            keys: Arc::default(),
            admission: Admission::new(Limits {
                lanes,
                queue_max: settings.queue_max,
                max_wait: settings.queue_max_wait,
                deadline: settings.deadline,
            }),
            settings,
        });
        let deps = Arc::new(Deps {
            db: LaneDb::new(database_url, lanes, settings.lock_wait())?,
            publisher,
            cache,
            settings,
        });
        for index in 0..lanes {
            let lane = Lane {
                index,
                deps: deps.clone(),
                held: None,
            };
            tokio::spawn(lane.serve(shared.clone()));
        }
        Ok(Self {
            _open: Arc::new(Open(shared.clone())),
            shared,
        })
    }

    /// Whether the lanes can commit orders within their deadline (readiness).
    pub fn ready(&self) -> bool {
        self.shared.admission.ready(Instant::now())
    }

    /// Requests waiting for a lane.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").len()
    }

    /// Queues the request and waits for its batch, until its deadline.
    pub async fn submit(&self, pending: Pending) -> Result<Committed, CreateError> {
        let shared = &self.shared;
        let start = Instant::now();
        let deadline = start + shared.settings.deadline;
        let key_wait = deadline.min(start + shared.settings.in_flight_wait);
        let key = loop {
            match shared.keys.claim(pending.user_id, &pending.key) {
                Ok(guard) => break guard,
                Err(mut first) => {
                    // The sender is dropped when the first request is done; nothing is sent.
                    let _ = tokio::time::timeout_at(key_wait, first.changed())
                        .await
                        .map_err(|_| CreateError::KeyInProgress)?;
                }
            }
        };
        let claim = Arc::new(Claim {
            ticket: Ticket::default(),
            key: Mutex::new(Some(key)),
        });
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = shared.queue.lock().expect("queue lock");
            let now = Instant::now();
            shared.prune(&mut queue, now);
            if let Err(refusal) = shared.admission.admit(queue.len(), now) {
                count_refusal(refusal);
                return Err(CreateError::NotDone(refusal));
            }
            queue.push_back(Job {
                pending,
                claim: claim.clone(),
                reply,
                deadline,
                queued_at: now,
            });
        }
        shared.arrived.notify_one();

        let mut watch = GiveUpOnDrop(Some(claim.clone()));
        let answered = tokio::time::timeout_at(deadline, answer).await;
        watch.0 = None;
        match answered {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CreateError::Stopped),
            Err(_) if claim.give_up() => {
                count_refusal(Refusal::Deadline);
                Err(CreateError::NotDone(Refusal::Deadline))
            }
            Err(_) => {
                // Inside a batch whose end is not known yet: it may commit.
                metrics::counter!(names::ORDER_OUTCOME_UNKNOWN).increment(1);
                Err(CreateError::OutcomeUnknown)
            }
        }
    }
}

impl Shared {
    /// Drops the requests at the front of the queue that were given up, and gives up those
    /// whose deadline has passed (the queue is in deadline order).
    fn prune(&self, queue: &mut VecDeque<Job>, now: Instant) {
        while let Some(front) = queue.front() {
            if front.claim.ticket.is_given_up() {
                queue.pop_front();
            } else if front.deadline <= now {
                let job = queue.pop_front().expect("front");
                refuse_for_deadline(job);
            } else {
                break;
            }
        }
    }

    /// The next request a lane can still commit in time, taken; those too close to their
    /// deadline are given up on the way.
    fn take_next(&self) -> Option<Job> {
        let mut queue = self.queue.lock().expect("queue lock");
        let now = Instant::now();
        let least = self.admission.least_time_left();
        while let Some(job) = queue.pop_front() {
            if job.deadline.saturating_duration_since(now) <= least {
                refuse_for_deadline(job);
            } else if job.claim.ticket.take() {
                return Some(job);
            }
        }
        None
    }
}

/// A queued request whose deadline leaves no time for its batch: not done.
fn refuse_for_deadline(job: Job) {
    if job.claim.give_up() {
        count_refusal(Refusal::Deadline);
        let _ = job.reply.send(Err(CreateError::NotDone(Refusal::Deadline)));
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

/// A lane: one batch at a time, on a connection of its own.
struct Lane {
    index: usize,
    deps: Arc<Deps>,
    held: Option<Held>,
}

/// What a batch's end says of the lanes.
#[derive(Clone, Copy)]
enum Progress {
    Committed,
    /// Nothing committed; `stall` when for want of the database, not for an order's sake.
    NotCommitted {
        stall: bool,
    },
}

/// A batch settled: each request's answer, in order.
struct Settled {
    answers: Vec<Result<Decision, CreateError>>,
    attempts: u32,
    progress: Progress,
}

/// Why a batch was not settled as a whole.
enum Failure {
    /// One order's own failure: the others may go through without it.
    PerOrder(BatchError),
    /// Nothing of it was committed, and nothing will be: the database could not be reached
    /// or could not commit in the batch's time.
    NotDone(BatchError),
}

impl Lane {
    async fn serve(mut self, shared: Arc<Shared>) {
        while let Some(jobs) = self.gather(&shared).await {
            self.run(&shared, jobs).await;
        }
    }

    /// The next batch: the first request to arrive, and what is queued behind it (waiting up
    /// to `linger` for more) up to `max_batch`. `None` once the committer is closed and the
    /// queue empty. While the lanes are stalled and nothing arrives, this lane probes.
    async fn gather(&mut self, shared: &Shared) -> Option<Vec<Job>> {
        let _turn = shared.gathering.lock().await;
        let first = loop {
            if let Some(job) = shared.take_next() {
                break job;
            }
            if shared.closed.load(Ordering::Acquire) {
                return None;
            }
            if shared.admission.is_stalled() {
                tokio::select! {
                    () = shared.arrived.notified() => {}
                    () = tokio::time::sleep(PROBE_EVERY) => self.probe(shared).await,
                }
            } else {
                shared.arrived.notified().await;
            }
        };
        let settings = &self.deps.settings;
        let until = Instant::now() + settings.linger;
        let mut jobs = vec![first];
        while jobs.len() < settings.max_batch.max(1) {
            if let Some(job) = shared.take_next() {
                jobs.push(job);
                continue;
            }
            if settings.linger.is_zero()
                || tokio::time::timeout_at(until, shared.arrived.notified())
                    .await
                    .is_err()
            {
                break;
            }
        }
        Some(jobs)
    }

    async fn probe(&mut self, shared: &Shared) {
        let until = Instant::now() + self.deps.settings.lock_wait() + PROBE_EVERY;
        let held = match self.held.take() {
            Some(held) => held,
            None => match self.deps.db.acquire(until).await {
                Ok(held) => held,
                Err(_) => return shared.admission.probed(false),
            },
        };
        let mut held = held;
        match self.deps.db.probe(&mut held, until).await {
            Ok(()) => {
                tracing::info!("order lanes can commit again");
                self.held = Some(held);
                shared.admission.probed(true);
            }
            Err(e) => {
                if matches!(e, sqlx::Error::Database(_)) {
                    self.held = Some(held);
                } else {
                    self.deps.db.discard(held);
                }
                shared.admission.probed(false);
            }
        }
    }

    async fn run(&mut self, shared: &Shared, jobs: Vec<Job>) {
        let started = Instant::now();
        for job in &jobs {
            metrics::histogram!(names::ORDER_QUEUE_WAIT)
                .record(started.duration_since(job.queued_at).as_secs_f64());
        }
        let until = jobs
            .iter()
            .map(|j| j.deadline)
            .min()
            .expect("a batch has a request");
        let batch: Vec<&Pending> = jobs.iter().map(|j| &j.pending).collect();
        metrics::histogram!(names::ORDER_BATCH_SIZE).record(batch.len() as f64);
        shared.admission.batch_started(self.index, started);
        let span = tracing::info_span!("orders.batch", orders = batch.len());
        let (answers, progress) = self.commit_each(&batch, until).instrument(span).await;
        match progress {
            Progress::Committed => {
                shared
                    .admission
                    .batch_committed(self.index, batch.len(), started.elapsed())
            }
            Progress::NotCommitted { stall } => shared.admission.batch_failed(self.index, stall),
        }
        for (job, answer) in jobs.into_iter().zip(answers) {
            // A handler past its deadline has answered already; the outcome stands.
            let _ = job.reply.send(answer);
        }
    }

    /// Commits the batch; if one order's own failure stops it, each request on its own, so
    /// that one request's failure is never another's.
    async fn commit_each(&mut self, batch: &[&Pending], until: Instant) -> (Vec<Answer>, Progress) {
        let size = batch.len();
        let with_batch = |settled: Settled, size: usize| -> Vec<Answer> {
            let attempts = settled.attempts;
            settled
                .answers
                .into_iter()
                .map(|a| {
                    a.map(|decision| Committed {
                        decision,
                        batch_size: size,
                        attempts,
                    })
                })
                .collect()
        };
        match self.commit(batch, until).await {
            Ok(settled) => {
                let progress = settled.progress;
                (with_batch(settled, size), progress)
            }
            Err(Failure::PerOrder(e)) if size > 1 => {
                tracing::warn!(error = %e, orders = size, "order batch failed; committing its orders one by one");
                metrics::counter!(names::ORDER_BATCH_SPLITS).increment(1);
                let mut answers = Vec::with_capacity(size);
                let mut progress = Progress::NotCommitted { stall: false };
                for one in batch {
                    match self.commit(std::slice::from_ref(one), until).await {
                        Ok(settled) => {
                            if matches!(settled.progress, Progress::Committed) {
                                progress = Progress::Committed;
                            }
                            answers.extend(with_batch(settled, 1));
                        }
                        Err(Failure::PerOrder(e)) => answers.push(Err(e.into())),
                        Err(Failure::NotDone(e)) => answers.push(Err(self.not_done(&e))),
                    }
                }
                (answers, progress)
            }
            Err(Failure::PerOrder(e)) => {
                (vec![Err(e.into())], Progress::NotCommitted { stall: false })
            }
            Err(Failure::NotDone(e)) => {
                let mut answers = vec![Err(self.not_done(&e))];
                answers.extend((1..size).map(|_| Err(CreateError::NotDone(Refusal::Unavailable))));
                (answers, Progress::NotCommitted { stall: true })
            }
        }
    }

    fn not_done(&self, e: &BatchError) -> CreateError {
        tracing::warn!(error = %e, "order batch not committed");
        metrics::counter!(names::ORDER_BATCH_FAILURES, "reason" => e.reason()).increment(1);
        CreateError::NotDone(Refusal::Unavailable)
    }

    /// One batch, run again while its transaction is rolled back for a reason that can pass
    /// and its time allows.
    async fn commit(&mut self, batch: &[&Pending], until: Instant) -> Result<Settled, Failure> {
        let settings = self.deps.settings;
        let mut attempt = 1;
        let mut reconnected = false;
        loop {
            let mut held = match self.held.take() {
                Some(held) => held,
                None => {
                    reconnected = true;
                    self.deps
                        .db
                        .acquire(until)
                        .await
                        .map_err(|e| Failure::NotDone(e.into()))?
                }
            };
            match batch::commit(&mut held.conn, batch, settings.retention, until).await {
                Ok(outcome) => {
                    self.held = Some(held);
                    self.after_commit(&outcome).await;
                    return Ok(Settled {
                        answers: outcome.decisions.into_iter().map(Ok).collect(),
                        attempts: attempt,
                        progress: Progress::Committed,
                    });
                }
                Err(BatchError::InDoubt(doubt)) => {
                    return Ok(self.resolve(held, batch, *doubt, until).await);
                }
                Err(e) if e.broke_connection() => {
                    self.deps.db.discard(held);
                    // A connection kept since an earlier batch may have died idle; nothing
                    // was committed, so the batch goes once more on a new one.
                    if !reconnected && Instant::now() < until {
                        reconnected = true;
                        continue;
                    }
                    return Err(Failure::NotDone(e));
                }
                Err(e) => {
                    self.held = Some(held);
                    let time_left = until.saturating_duration_since(Instant::now());
                    if e.worth_repeating() && attempt < BATCH_ATTEMPTS && !time_left.is_zero() {
                        metrics::counter!(names::ORDER_BATCH_RETRIES, "reason" => e.reason())
                            .increment(1);
                        tracing::debug!(error = %e, attempt, "order batch rolled back; running it again");
                        attempt += 1;
                        // Nothing is held now; a short random pause lets the other side finish.
                        let pause = rand::thread_rng().gen_range(0..=2 * attempt as u64);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        continue;
                    }
                    return Err(if e.is_per_order() {
                        Failure::PerOrder(e)
                    } else {
                        Failure::NotDone(e)
                    });
                }
            }
        }
    }

    /// After a commit, the products' cached views are dropped and the events handed to their
    /// job before anyone is answered, so a client that reads after its answer sees its order.
    async fn after_commit(&self, outcome: &Outcome) {
        if !outcome.products.is_empty() {
            self.deps.cache.invalidate_products(&outcome.products).await;
        }
        if let Some(events) = &outcome.events {
            self.deps.publisher.enqueue(events.clone());
        }
    }

    /// A batch whose COMMIT answer was lost: once its session is gone, what its keys hold
    /// says whether it committed. It did if a key holds the answer it was to store (the
    /// order's id is in it): the requests get their first answers, and the events their job.
    /// It did not otherwise: its requests are not done (or, for a key another request
    /// committed meanwhile, that request's answer). Not learnt in time, they are unknown.
    async fn resolve(
        &mut self,
        held: Held,
        batch: &[&Pending],
        doubt: InDoubt,
        until: Instant,
    ) -> Settled {
        metrics::counter!(names::ORDER_BATCH_FAILURES, "reason" => "in_doubt").increment(1);
        tracing::warn!(error = %doubt.error, orders = batch.len(), "order batch's commit answer lost; reading what committed");
        let keys: Vec<_> = doubt
            .claims
            .iter()
            .map(|&i| (batch[i].user_id, batch[i].key.as_str()))
            .collect();
        // Learning it may take longer than the requests wait: their handlers then answer
        // unknown, and what is learnt still gives the events their job.
        let learn_until = until.max(Instant::now()) + self.deps.settings.deadline;
        let records = match self.deps.db.kill_and_read(held, &keys, learn_until).await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "could not learn whether an order batch committed; its events wait for the sweeper");
                let mut answers: Vec<_> = doubt.outcome.decisions.into_iter().map(Ok).collect();
                for &i in &doubt.claims {
                    answers[i] = Err(CreateError::OutcomeUnknown);
                }
                return Settled {
                    answers,
                    attempts: 1,
                    progress: Progress::NotCommitted { stall: true },
                };
            }
        };
        let stored = |i: usize| records.get(&(batch[i].user_id, batch[i].key.clone()));
        let committed = doubt.claims.iter().any(|&i| {
            let ours = match &doubt.outcome.decisions[i] {
                Decision::Created { body, .. } | Decision::OutOfStock { body } => body,
                _ => return false,
            };
            stored(i).is_some_and(|s| s.response_body.as_deref() == Some(ours.as_str()))
        });
        if committed {
            tracing::info!(orders = batch.len(), "the order batch had committed");
            self.after_commit(&doubt.outcome).await;
            return Settled {
                answers: doubt.outcome.decisions.into_iter().map(Ok).collect(),
                attempts: 1,
                progress: Progress::Committed,
            };
        }
        let mut answers: Vec<_> = doubt.outcome.decisions.into_iter().map(Ok).collect();
        for &i in &doubt.claims {
            answers[i] = match stored(i) {
                Some(other) => Ok(Decision::Stored(other.clone())),
                None => Err(CreateError::NotDone(Refusal::Unavailable)),
            };
        }
        Settled {
            answers,
            attempts: 1,
            progress: Progress::NotCommitted { stall: true },
        }
    }
}
