//! The publish pipeline's Kafka producer, replaced when it can no longer send.
//!
//! A librdkafka producer instance can die while the process lives on, two ways:
//!
//! * librdkafka raises a *fatal* error: the idempotent producer cannot keep its guarantees
//!   (no duplicates, order per partition) — a sequence number out of order, a producer id
//!   the broker no longer knows, authorization for it refused — and refuses every later
//!   send on that instance, forever. Its documented answer is a new instance.
//! * The broker *fences* the instance's producer id and epoch (ProducerFenced,
//!   InvalidProducerEpoch). A cut longer than the delivery timeout does it with tansu (issue
//!   29): the timed-out deliveries make the idempotent producer bump its epoch itself, as
//!   Kafka allows; tansu accepts only the epoch it handed out and refuses every later
//!   produce of that instance as fenced. librdkafka fails each batch with that error but
//!   keeps the instance, so every publish failed until the process restarted.
//!
//! Either way the instance is dead (ADR 0015), and a new one (a new producer id) is built.
//! The instance lives behind a lock. A batch of sends holds it (read) until every one of its
//! deliveries is reported; a dead instance (librdkafka's error callback, or a send that
//! finds it fatal or fenced) wakes a task that builds a new one and swaps it in (write). The
//! swap waits for every batch the old instance was sending, so what it had in flight is
//! settled before the new one sends anything: acknowledged rows are PUBLISHED, the others
//! failed and stay NEW under their job, which sends them again with the new instance, in
//! order (its claim is by id). Nothing goes out on both instances at once, so no event of an
//! order overtakes another of the same order across the swap.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use rdkafka::{
    client::ClientContext,
    error::{KafkaError, KafkaResult},
    message::ToBytes,
    producer::{future_producer::OwnedDeliveryResult, FutureProducer, FutureRecord, Producer},
    types::{RDKafkaErrorCode, RDKafkaRespErr},
    util::Timeout,
};
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};

use crate::kafka;

/// Whether a send's error says the broker refuses this instance's producer id and epoch,
/// whatever it would send: the instance is dead, a new one is not.
pub fn is_fenced(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
    )
}

/// One librdkafka producer instance, and whether it is known dead.
pub struct Instance {
    producer: FutureProducer<DeathWatch>,
    state: Arc<InstanceState>,
}

struct InstanceState {
    /// Why the instance is dead, once it is (the fatal error's details are read from
    /// librdkafka when the instance is replaced).
    dead: Mutex<Option<String>>,
    wake: Arc<Wake>,
}

impl InstanceState {
    fn declare_dead(&self, why: impl FnOnce() -> String) {
        lock(&self.dead).get_or_insert_with(why);
        self.wake.rebuild.notify_one();
    }
}

impl Instance {
    /// Why this instance cannot send any more, if it cannot.
    fn dead(&self) -> Option<String> {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            return Some(format!("librdkafka fatal error {code:?}: {reason}"));
        }
        lock(&self.state.dead).clone()
    }
}

/// The context of every instance: each error librdkafka reports is logged (informational:
/// it recovers from most by itself) and has the rebuild task look whether the instance is
/// dead. The error event of a fatal error carries the underlying code (e.g.
/// OutOfOrderSequenceNumber), not `Fatal`, and rdkafka does not pass on librdkafka's
/// "is fatal" flag; the instance itself says (`fatal_error`).
pub struct DeathWatch {
    state: Arc<InstanceState>,
}

impl ClientContext for DeathWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, reason, "kafka producer error");
        self.state.wake.rebuild.notify_one();
    }
}

#[derive(Default)]
struct Wake {
    /// An instance was declared dead (or the handle is gone: `closed`).
    rebuild: Notify,
    closed: AtomicBool,
}

/// What a rebuild replaced, for logs, the queue overview and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// Why the instance that was replaced could not send any more.
    pub error: String,
    /// How long the swap waited for the old instance's sends to be settled.
    pub drained_in: Duration,
}

/// Receives each rebuild (e.g. to record it where operators look).
pub type OnRebuild = Box<dyn Fn(&Rebuild) + Send + Sync>;

/// How to build an instance.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub bootstrap: String,
    /// `message.timeout.ms`: a delivery not acknowledged by then fails.
    pub delivery_timeout: Duration,
}

struct Shared {
    settings: ProducerSettings,
    current: Arc<RwLock<Instance>>,
    wake: Arc<Wake>,
    rebuilds: AtomicU64,
    last: Mutex<Option<Rebuild>>,
    on_rebuild: Mutex<Vec<OnRebuild>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.wake.closed.store(true, Ordering::SeqCst);
        self.wake.rebuild.notify_one();
    }
}

/// The producer handle the publish jobs share; cheap to clone.
#[derive(Clone)]
pub struct EventProducer {
    shared: Arc<Shared>,
}

/// Rebuilds of an instance that keeps dying are spaced out, doubling up to the maximum (a
/// broker that fences every new producer must not become a busy loop).
const REBUILD_SPACING: Duration = Duration::from_secs(1);
const REBUILD_SPACING_MAX: Duration = Duration::from_secs(60);
/// A rebuild this long after the previous one starts again from the shortest spacing.
const REBUILD_CALM: Duration = Duration::from_secs(300);

impl EventProducer {
    /// Builds the first instance and starts the task that replaces dead ones (on the current
    /// runtime; the task ends when the last handle is dropped).
    pub fn start(settings: ProducerSettings) -> KafkaResult<Self> {
        let wake = Arc::new(Wake::default());
        let first = create(&settings, &wake)?;
        let shared = Arc::new(Shared {
            settings,
            current: Arc::new(RwLock::new(first)),
            wake: wake.clone(),
            rebuilds: AtomicU64::new(0),
            last: Mutex::new(None),
            on_rebuild: Mutex::new(Vec::new()),
        });
        tokio::spawn(rebuild_loop(Arc::downgrade(&shared), wake));
        Ok(Self { shared })
    }

    /// The instance to send a batch with, held until the batch's deliveries are reported
    /// (drop the lease then): a rebuild waits for it.
    pub async fn lease(&self) -> Lease {
        Lease {
            instance: self.shared.current.clone().read_owned().await,
        }
    }

    /// Runs `f` after each rebuild.
    pub fn on_rebuild(&self, f: OnRebuild) {
        lock(&self.shared.on_rebuild).push(f);
    }

    /// How many times this handle's instance was replaced.
    pub fn rebuilds(&self) -> u64 {
        self.shared.rebuilds.load(Ordering::SeqCst)
    }

    pub fn last_rebuild(&self) -> Option<Rebuild> {
        lock(&self.shared.last).clone()
    }

    /// Raises a fatal error on the current instance, as librdkafka does when it cannot keep
    /// the idempotent producer's guarantees (librdkafka's own test hook): for tests of the
    /// rebuild, which no mock broker reaches by itself.
    pub async fn raise_fatal_error_for_test(&self, code: RDKafkaErrorCode, reason: &str) {
        let reason = std::ffi::CString::new(reason).unwrap_or_default();
        let Ok(code) = RDKafkaRespErr::try_from(code as i32) else {
            return;
        };
        let lease = self.lease().await;
        // SAFETY: the instance is alive for the lease; librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                lease.instance.producer.client().native_ptr(),
                code,
                reason.as_ptr(),
            );
        }
    }

    /// Waits (at most `timeout`, on a blocking thread) for the current instance's queued
    /// messages to be delivered: at shutdown.
    pub async fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        let lease = self.lease().await;
        tokio::task::spawn_blocking(move || lease.instance.producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A batch's hold on the current instance.
pub struct Lease {
    instance: OwnedRwLockReadGuard<Instance>,
}

impl Lease {
    /// Sends one record, waiting at most `queue_wait` for room in the producer's queue, and
    /// returns its delivery report. A failure that shows the instance dead (fenced by the
    /// broker, or fatal before librdkafka's error callback has run) has it replaced.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_wait: Duration,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let instance = &self.instance;
        let result = instance
            .producer
            .send(record, Timeout::After(queue_wait))
            .await;
        if let Err((e, _)) = &result {
            let fenced = e.rdkafka_error_code().is_some_and(is_fenced);
            if fenced || instance.producer.client().fatal_error().is_some() {
                instance.state.declare_dead(|| e.to_string());
            }
        }
        result
    }
}

fn create(settings: &ProducerSettings, wake: &Arc<Wake>) -> KafkaResult<Instance> {
    let state = Arc::new(InstanceState {
        dead: Mutex::new(None),
        wake: wake.clone(),
    });
    let producer = kafka::producer_config(&settings.bootstrap, settings.delivery_timeout)
        .create_with_context(DeathWatch {
            state: state.clone(),
        })?;
    Ok(Instance { producer, state })
}

async fn rebuild_loop(shared: Weak<Shared>, wake: Arc<Wake>) {
    let mut spacing = REBUILD_SPACING;
    let mut last_rebuild: Option<Instant> = None;
    loop {
        wake.rebuild.notified().await;
        if wake.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Woken by an error librdkafka gets over by itself, or for an instance already
        // replaced (a failed send of its last batch): nothing to do.
        if shared.current.read().await.dead().is_none() {
            continue;
        }
        if let Some(at) = last_rebuild {
            if at.elapsed() > REBUILD_CALM {
                spacing = REBUILD_SPACING;
            } else {
                let wait = spacing.saturating_sub(at.elapsed());
                spacing = (spacing * 2).min(REBUILD_SPACING_MAX);
                tokio::time::sleep(wait).await;
            }
        }
        let fresh = loop {
            match create(&shared.settings, &wake) {
                Ok(p) => break p,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build a new kafka producer; trying again");
                    tokio::time::sleep(spacing).await;
                }
            }
        };
        let started = Instant::now();
        // Waits for every batch the old instance is sending: their deliveries all reported,
        // its in-flight messages acknowledged or failed (at most the delivery timeout).
        let mut current = shared.current.write().await;
        let error = current.dead().unwrap_or_default();
        let old = std::mem::replace(&mut *current, fresh);
        drop(current);
        let rebuild = Rebuild {
            error,
            drained_in: started.elapsed(),
        };
        last_rebuild = Some(Instant::now());
        shared.rebuilds.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("kafka_client_rebuilds_total", "client" => "producer").increment(1);
        tracing::error!(
            error = %rebuild.error,
            drained_in_ms = rebuild.drained_in.as_millis() as u64,
            "the kafka producer could not send any more; replaced it with a new one, which \
             sends again what the old one had not got acknowledged"
        );
        *lock(&shared.last) = Some(rebuild.clone());
        for f in lock(&shared.on_rebuild).iter() {
            f(&rebuild);
        }
        // Dropping an instance purges and flushes it (blocking up to 500 ms).
        tokio::task::spawn_blocking(move || drop(old));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens there: these instances never reach a broker, which the swap does not
    /// need (librdkafka's own hook raises the fatal error).
    fn producer() -> EventProducer {
        EventProducer::start(ProducerSettings {
            bootstrap: "127.0.0.1:9".into(),
            delivery_timeout: Duration::from_secs(1),
        })
        .expect("a producer instance")
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{what} within 10 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_instance_is_replaced_only_after_the_batches_sending_with_it_are_done() {
        let p = producer();
        let batch = p.lease().await;
        p.raise_fatal_error_for_test(RDKafkaErrorCode::OutOfOrderSequenceNumber, "test")
            .await;
        // The replacement waits for the batch: it is queued for the lock (no new batch can
        // take the instance any more), and nothing is swapped yet.
        until("the replacement waits for the batch", || {
            p.shared.current.try_read().is_err()
        })
        .await;
        assert_eq!(p.rebuilds(), 0);
        assert!(
            batch.instance.dead().is_some(),
            "the batch's instance is dead"
        );
        drop(batch);
        until("the replacement", || p.rebuilds() == 1).await;
        let next = p.lease().await;
        assert!(next.instance.dead().is_none(), "a new instance");
        let rebuild = p.last_rebuild().expect("recorded");
        assert!(
            rebuild.error.contains("OutOfOrderSequenceNumber"),
            "{rebuild:?}"
        );
    }

    #[test]
    fn a_fenced_producer_is_dead_and_an_outage_is_not() {
        use RDKafkaErrorCode as C;
        for fenced in [C::ProducerFenced, C::InvalidProducerEpoch, C::Fenced] {
            assert!(is_fenced(fenced), "{fenced:?}");
        }
        for alive in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::UnknownTopic,
            C::QueueFull,
        ] {
            assert!(!is_fenced(alive), "{alive:?}");
        }
    }
}
