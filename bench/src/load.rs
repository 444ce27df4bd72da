//! The load driver: N client tasks issue requests back to back (closed loop) or on a fixed
//! schedule (open loop, for a sustained rate) until a deadline or a stop signal. Each task
//! records into its own histogram; they are merged when the run ends.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::stats::{Outcome, Recorder};

#[derive(Debug, Clone)]
pub struct Spec {
    pub concurrency: usize,
    /// Upper bound on the run; `stop` may end it earlier.
    pub duration: Duration,
    /// Requests per second across all tasks; `None` sends as fast as answers come back.
    pub rate: Option<f64>,
    pub stop: Option<Arc<AtomicBool>>,
}

impl Spec {
    pub fn closed(concurrency: usize, duration: Duration) -> Self {
        Self {
            concurrency,
            duration,
            rate: None,
            stop: None,
        }
    }
}

/// Which request to make: the task's index and a run-wide sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub worker: usize,
    pub seq: u64,
}

/// Runs `op` under `spec`; returns what was recorded and the run's wall time.
pub async fn run<F, Fut>(spec: Spec, op: F) -> (Recorder, Duration)
where
    F: Fn(Slot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let deadline = start + spec.duration;
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for worker in 0..spec.concurrency.max(1) {
        let op = op.clone();
        let next = next.clone();
        let stop = spec.stop.clone();
        let rate = spec.rate;
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            loop {
                if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    break;
                }
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if let Some(rate) = rate {
                    // Open loop: request `seq` is due at start + seq/rate, whoever sends it.
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                } else if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let sent = Instant::now();
                let outcome = op(Slot { worker, seq }).await;
                rec.record(sent.elapsed(), outcome);
            }
            rec
        }));
    }
    let mut total = Recorder::default();
    for t in tasks {
        total.merge(t.await.expect("load task panicked"));
    }
    (total, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_loop_sends_about_rate_times_duration() {
        let spec = Spec {
            concurrency: 4,
            duration: Duration::from_millis(500),
            rate: Some(100.0),
            stop: None,
        };
        let (rec, _) = run(spec, |_| async { Outcome::Ok }).await;
        assert_eq!(rec.ok, 50);
    }

    #[tokio::test]
    async fn stop_ends_a_closed_loop() {
        let stop = Arc::new(AtomicBool::new(false));
        let spec = Spec {
            stop: Some(stop.clone()),
            ..Spec::closed(2, Duration::from_secs(60))
        };
        let handle = tokio::spawn(run(spec, |_| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Outcome::Ok
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        let (rec, elapsed) = handle.await.unwrap();
        assert!(rec.ok > 0);
        assert!(elapsed < Duration::from_secs(10));
    }
}
