//! Who may wait for a lane, and for how long (docs/adr/0018-order-admission.md).
//!
//! Every order request has a deadline. It is let in only if the lanes can be expected to
//! commit it well within that deadline: the queue is bounded by a count, and by its
//! expected wait — what is queued, divided by the rate the lanes have been committing at —
//! against a target far below the deadline (the standing queue CoDel keeps short, measured
//! here before a request joins it rather than after). A request that would wait too long is
//! refused at once with `Retry-After`: under overload the lanes keep committing at full speed
//! for the requests they let in, instead of committing for clients that gave up.
//!
//! The lanes are also watched for a stall: a batch that fails for want of the database (a
//! lock it cannot get in its time, a connection that fails or stops answering) marks them
//! stalled until a batch or a probe commits again, and lanes all busy for longer than the
//! wait target without finishing count as stalled for new requests. A stalled replica
//! refuses orders at once and reports not ready, so traffic moves elsewhere.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering},
        Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

/// Why an order was answered "not done" (503 with `Retry-After`; nothing stored, the key
/// free). The label of `order_admission_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue holds `ORDER_QUEUE_MAX` requests already.
    QueueFull,
    /// The queue's expected wait is over `ORDER_QUEUE_MAX_WAIT_MS`, or the lanes cannot
    /// commit (stalled).
    TooLongWait,
    /// The request's deadline came before a lane took it.
    Deadline,
    /// The client went away before a lane took it.
    ClientGone,
    /// Its batch failed for want of the database, before its COMMIT was sent.
    Unavailable,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::TooLongWait => "too_long_wait",
            Refusal::Deadline => "deadline",
            Refusal::ClientGone => "client_gone",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The message of the 503 answer.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::QueueFull | Refusal::TooLongWait => {
                "the service cannot take this order in time; nothing was stored, retry later"
            }
            Refusal::Deadline => {
                "the order could not be started before its deadline; nothing was stored, retry later"
            }
            Refusal::ClientGone => "the client went away before the order was started",
            Refusal::Unavailable => {
                "the database could not commit the order; nothing was stored, retry later"
            }
        }
    }
}

/// The state of a request between its handler and the lanes. Exactly one side moves it out
/// of `QUEUED`: a lane that takes it into a batch, or the handler (deadline, client gone)
/// or a lane (deadline) that gives it up. Once given up, no lane ever commits it.
#[derive(Debug, Default)]
pub struct Ticket(AtomicU8);

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const GIVEN_UP: u8 = 2;

impl Ticket {
    /// A lane takes the request into its batch; false if it was given up.
    pub fn take(&self) -> bool {
        self.move_from_queued(TAKEN)
    }

    /// The request will not be committed; false if a lane took it already.
    pub fn give_up(&self) -> bool {
        self.move_from_queued(GIVEN_UP)
    }

    pub fn is_given_up(&self) -> bool {
        self.0.load(Ordering::Acquire) == GIVEN_UP
    }

    fn move_from_queued(&self, to: u8) -> bool {
        self.0
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// `ORDER_QUEUE_MAX`, `ORDER_QUEUE_MAX_WAIT_MS`, `ORDER_DEADLINE_MS` and the lanes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub lanes: usize,
    pub queue_max: usize,
    pub max_wait: Duration,
    pub deadline: Duration,
}

/// Each batch's weight on the running averages.
const SMOOTHING: f64 = 0.2;

/// Running averages of the batches the lanes finished.
#[derive(Debug, Default, Clone, Copy)]
struct Meter {
    /// Orders per batch and seconds per batch; `None` until a batch has finished.
    averages: Option<(f64, f64)>,
}

impl Meter {
    fn record(&mut self, size: usize, took: Duration) {
        let (size, secs) = (size as f64, took.as_secs_f64().max(1e-6));
        self.averages = Some(match self.averages {
            None => (size, secs),
            Some((s, d)) => (s + SMOOTHING * (size - s), d + SMOOTHING * (secs - d)),
        });
    }

    /// Orders per second of all the lanes together, while each takes what is queued.
    fn rate(&self, lanes: usize) -> Option<f64> {
        self.averages.map(|(size, secs)| lanes as f64 * size / secs)
    }

    fn batch_time(&self) -> Option<Duration> {
        self.averages.map(|(_, secs)| Duration::from_secs_f64(secs))
    }
}

pub struct Admission {
    limits: Limits,
    meter: Mutex<Meter>,
    stalled: AtomicBool,
    /// Per lane: when its running batch started (µs after `epoch`, +1), 0 while idle.
    busy_since: Vec<AtomicU64>,
    epoch: Instant,
}

impl Admission {
    pub fn new(limits: Limits) -> Self {
        Self {
            busy_since: (0..limits.lanes.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
            limits,
            meter: Mutex::default(),
            stalled: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    /// Whether a request may join a queue of `queued`, at `now`.
    pub fn admit(&self, queued: usize, now: Instant) -> Result<(), Refusal> {
        if queued >= self.limits.queue_max {
            return Err(Refusal::QueueFull);
        }
        if self.cannot_commit(now, self.limits.max_wait) {
            return Err(Refusal::TooLongWait);
        }
        match self.expected_wait(queued) {
            Some(wait) if wait > self.limits.max_wait => Err(Refusal::TooLongWait),
            _ => Ok(()),
        }
    }

    /// How long a request joining a queue of `queued` can expect to wait for a lane; `None`
    /// before any batch has been measured.
    pub fn expected_wait(&self, queued: usize) -> Option<Duration> {
        let rate = self
            .meter
            .lock()
            .expect("meter lock")
            .rate(self.limits.lanes)?;
        Some(Duration::from_secs_f64(queued as f64 / rate))
    }

    /// Whether the lanes can commit within the deadline: the readiness of the order path.
    pub fn ready(&self, now: Instant) -> bool {
        !self.cannot_commit(now, self.limits.deadline)
    }

    /// Stalled, or every lane busy with a batch that started more than `longer_than` ago.
    fn cannot_commit(&self, now: Instant, longer_than: Duration) -> bool {
        if self.stalled.load(Ordering::Acquire) {
            return true;
        }
        // No batch started before the epoch: then none has run that long.
        let Some(cutoff) = now.checked_sub(longer_than).filter(|t| *t > self.epoch) else {
            return false;
        };
        let cutoff = self.micros(cutoff);
        self.busy_since.iter().all(|b| {
            let since = b.load(Ordering::Acquire);
            since != 0 && since <= cutoff
        })
    }

    pub fn is_stalled(&self) -> bool {
        self.stalled.load(Ordering::Acquire)
    }

    /// A request this close to its deadline cannot be committed in time: about one batch.
    pub fn least_time_left(&self) -> Duration {
        self.meter
            .lock()
            .expect("meter lock")
            .batch_time()
            .unwrap_or_default()
    }

    pub fn batch_started(&self, lane: usize, now: Instant) {
        self.busy_since[lane].store(self.micros(now), Ordering::Release);
    }

    /// The lane's batch committed `size` orders in `took`: the lanes commit.
    pub fn batch_committed(&self, lane: usize, size: usize, took: Duration) {
        self.meter.lock().expect("meter lock").record(size, took);
        self.busy_since[lane].store(0, Ordering::Release);
        self.stalled.store(false, Ordering::Release);
    }

    /// The lane's batch ended without committing; `stall` when for want of the database.
    pub fn batch_failed(&self, lane: usize, stall: bool) {
        self.busy_since[lane].store(0, Ordering::Release);
        if stall {
            self.stalled.store(true, Ordering::Release);
        }
    }

    /// A probe transaction committed (or not) while the lanes were idle.
    pub fn probed(&self, committed: bool) {
        self.stalled.store(!committed, Ordering::Release);
    }

    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            lanes: 2,
            queue_max: 100,
            max_wait: Duration::from_millis(500),
            deadline: Duration::from_secs(3),
        }
    }

    #[test]
    fn a_ticket_is_taken_or_given_up_never_both() {
        let t = Ticket::default();
        assert!(t.take());
        assert!(!t.give_up(), "a taken request cannot be given up");
        let t = Ticket::default();
        assert!(t.give_up());
        assert!(t.is_given_up());
        assert!(!t.take(), "a given-up request is never taken");
    }

    #[test]
    fn before_any_batch_only_the_count_bounds_the_queue() {
        let a = Admission::new(limits());
        let now = Instant::now();
        assert_eq!(a.admit(99, now), Ok(()));
        assert_eq!(a.admit(100, now), Err(Refusal::QueueFull));
        assert_eq!(a.expected_wait(50), None);
    }

    #[test]
    fn the_expected_wait_is_the_queue_over_the_measured_rate() {
        let a = Admission::new(limits());
        // Batches of 10 orders in 100 ms on 2 lanes: 200 orders/s.
        a.batch_started(0, Instant::now());
        a.batch_committed(0, 10, Duration::from_millis(100));
        let wait = a.expected_wait(50).unwrap();
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-9, "{wait:?}");
        let now = Instant::now();
        assert_eq!(a.admit(99, now), Ok(()), "0.495 s of wait is within 0.5 s");
        a.batch_committed(0, 10, Duration::from_millis(100));
        let wait = a.expected_wait(101).unwrap();
        assert!(wait > Duration::from_millis(500));
    }

    #[test]
    fn a_longer_wait_than_the_target_is_refused_before_the_count_is_reached() {
        let a = Admission::new(Limits {
            queue_max: 1000,
            ..limits()
        });
        a.batch_started(0, Instant::now());
        a.batch_committed(0, 10, Duration::from_millis(100));
        let now = Instant::now();
        assert_eq!(a.admit(100, now), Ok(()));
        assert_eq!(a.admit(101, now), Err(Refusal::TooLongWait));
    }

    #[test]
    fn the_averages_follow_the_batches() {
        let mut m = Meter::default();
        m.record(1, Duration::from_millis(10));
        m.record(11, Duration::from_millis(60));
        let (size, secs) = m.averages.unwrap();
        assert!((size - 3.0).abs() < 1e-9);
        assert!((secs - 0.02).abs() < 1e-9);
        assert!((m.rate(4).unwrap() - 600.0).abs() < 1e-6);
    }

    #[test]
    fn a_stalled_commit_path_refuses_and_is_not_ready_until_it_commits_again() {
        let a = Admission::new(limits());
        let now = Instant::now();
        a.batch_started(1, now);
        a.batch_failed(1, true);
        assert!(a.is_stalled());
        assert_eq!(a.admit(0, now), Err(Refusal::TooLongWait));
        assert!(!a.ready(now));
        a.probed(false);
        assert!(!a.ready(now));
        a.probed(true);
        assert!(a.ready(now));
        assert_eq!(a.admit(0, now), Ok(()));
        a.batch_failed(0, false);
        assert!(a.ready(now), "an order's own failure is not a stall");
    }

    #[test]
    fn lanes_all_busy_past_the_target_refuse_new_requests_and_past_the_deadline_are_not_ready() {
        let a = Admission::new(limits());
        let start = Instant::now();
        a.batch_started(0, start);
        let later = start + Duration::from_millis(600);
        assert_eq!(a.admit(0, later), Ok(()), "one lane is still free");
        a.batch_started(1, start);
        assert_eq!(a.admit(0, later), Err(Refusal::TooLongWait));
        assert!(a.ready(later), "within the deadline");
        assert!(!a.ready(start + Duration::from_secs(4)));
        a.batch_committed(1, 1, Duration::from_millis(10));
        assert_eq!(a.admit(0, later), Ok(()));
    }
}
