//! Wires orderflow's jobs into a running pipeline:
//!
//! ```text
//! order commit ──push──▶ publish-outbox worker ──▶ Kafka ORDER_* ──▶ consumer group
//!      ▲ (sweeper re-enqueues lost rows)                               │ push, then commit offset
//!      └ outbox_events (NEW → PUBLISHED | DEAD)      notifications ◀── consume-notification worker
//! ```
//!
//! plus the job reaper (the lease apalis-mysql rc.8 lacks) and the schedules (apalis-cron) of
//! the archive workflow and of the retention job. (The gauges operators watch are read at
//! each scrape: `orderflow_jobs::operators::gauges`.)

mod archive;
mod consumer;
mod schedule;
mod sweeper;

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use orderflow_jobs::{
    audit_run::{self, AuditContext, AuditTick, AUDIT},
    consume_notification::{
        job::{ConsumeNotification, CONSUME_NOTIFICATION},
        notify::{self, NotifyContext},
    },
    engine::{
        attempts::AttemptHistoryLayer,
        backend,
        lost_acks::{self, LostAcks},
        pause::Pauses,
        queue::{QueueSettings, Wake},
        reaper,
    },
    publish_outbox::{
        job::{PublishOutbox, PUBLISH_OUTBOX},
        producer::EventProducer,
        publish::{self, PublishContext},
        retry_policy::RetryPolicy,
    },
    retention::{self, Purge, RetentionContext, RETENTION},
};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

pub use archive::run_archive_worker;
pub use consumer::{consume_events, ConsumerFatalForTest};
pub use schedule::{
    daily_run_key, parse_schedule, ArchiveSchedule, AuditSchedule, RetentionSchedule,
};
pub use sweeper::sweep_once;

#[derive(Clone)]
pub struct Pipeline {
    pub pool: MySqlPool,
    pub producer: EventProducer,
    pub bootstrap: String,
    pub topic_prefix: String,
    pub consumer_group: String,
    /// Static group membership (e.g. the pod name of a StatefulSet), if configured.
    pub consumer_instance_id: Option<String>,
    pub settings: QueueSettings,
    pub concurrency: usize,
    /// Rows of the backlog a publish job carries along with its own.
    pub publish_batch: u32,
    /// How old another job's row must be before a publish job carries it.
    pub publish_backlog_age: Duration,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub shutdown_timeout: Duration,
    /// How long transient publish failures are retried.
    pub publish_retry: RetryPolicy,
    /// How long a publish job's claim on the rows it sends lasts (see `PublishContext`).
    pub publish_claim_lease: Duration,
    pub archive: ArchiveSchedule,
    pub retention: RetentionSchedule,
    pub audit: AuditSchedule,
    /// Wake the local publish-outbox worker (orders committed by this process's API).
    pub publish_wake: Wake,
    /// Wake the local consume-notification worker (messages this process's consumer stored).
    pub notify_wake: Wake,
    /// The queues operators paused, as this process last read them.
    pub pauses: Pauses,
    /// Raises a fatal error on the consumer (tests of its replacement).
    pub consumer_fatal_for_test: ConsumerFatalForTest,
}

/// The pause before restarting a worker that ended on its own: short the first time (a
/// deadlocked heartbeat, which apalis ends the worker for), doubling while it keeps ending
/// soon after each start (a database outage must not become a busy loop).
const RESTART_DELAY: Duration = Duration::from_millis(250);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Runs one queue's worker until `stop`, starting it again whenever it ends on its own, e.g.
/// on a fetch or heartbeat error. `make` builds the worker under the name it is given (a
/// fresh one per start: names are `workers.id`, which jobs' `lock_by` points at); with a
/// `pool`, the jobs the ended worker held go straight back to the queue.
pub(crate) async fn supervise(
    queue: &'static str,
    prefix: &'static str,
    pool: Option<MySqlPool>,
    stop: CancellationToken,
    make: impl Fn(String) -> Monitor,
) {
    let mut delay = RESTART_DELAY;
    loop {
        let name = format!("{prefix}-{}", Ulid::new());
        let started = std::time::Instant::now();
        let signal = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok(())
            }
        };
        // A monitor with a shutdown timeout returns Ok whatever its worker ended with: the
        // only place apalis shows a worker's error is its restart callback. We restart here
        // (a fresh name, its jobs released), so the callback only records why.
        let ended_by: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        let monitor = make(name.clone()).should_restart({
            let ended_by = ended_by.clone();
            move |_, error, _| {
                if let Ok(mut slot) = ended_by.lock() {
                    *slot = Some(error.to_string());
                }
                false
            }
        });
        let result = monitor.run_with_signal(signal).await;
        if stop.is_cancelled() {
            return;
        }
        let error = match result {
            Err(e) => Some(e.to_string()),
            Ok(()) => ended_by.lock().ok().and_then(|mut slot| slot.take()),
        };
        match error {
            None => tracing::warn!(queue, worker = %name, "job worker ended; restarting"),
            Some(error) => {
                tracing::warn!(queue, worker = %name, %error, "job worker failed; restarting")
            }
        }
        if let Some(pool) = &pool {
            match reaper::release_worker(pool, &name).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(queue, worker = %name, jobs = n, "re-queued the ended worker's jobs")
                }
                Err(e) => {
                    // Most likely the database is what ended the worker. Its jobs are still
                    // nobody's: keep trying, so that they run as soon as it is back instead
                    // of after the lease (JOB_LEASE_SECS).
                    tracing::warn!(queue, error = %e, "could not re-queue the ended worker's jobs yet; retrying");
                    tokio::spawn(release_when_possible(
                        pool.clone(),
                        queue,
                        name.clone(),
                        stop.clone(),
                    ));
                }
            }
        }
        delay = if started.elapsed() >= STABLE_AFTER {
            RESTART_DELAY
        } else {
            (delay * 2).min(RESTART_DELAY_MAX)
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Re-queues the jobs of an ended worker of this process once the database lets it, trying
/// again every `RESTART_DELAY` doubling up to `RESTART_DELAY_MAX`; gives up at `stop` (the
/// lease then covers them, for the next process).
async fn release_when_possible(
    pool: MySqlPool,
    queue: &'static str,
    worker: String,
    stop: CancellationToken,
) {
    let mut delay = RESTART_DELAY;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        match reaper::release_worker(&pool, &worker).await {
            Ok(n) => {
                tracing::info!(queue, worker = %worker, jobs = n, "re-queued the ended worker's jobs");
                return;
            }
            Err(e) => {
                tracing::debug!(queue, worker = %worker, error = %e, "still cannot re-queue the ended worker's jobs");
                delay = (delay * 2).min(RESTART_DELAY_MAX);
            }
        }
    }
}

/// Runs every part of the pipeline until `stop` is cancelled, then drains: workers finish
/// their current jobs (up to `shutdown_timeout`), the consumer commits what it handed over,
/// and the producer flushes.
pub async fn run(p: Pipeline, stop: CancellationToken) {
    let publish_ctx = Arc::new(PublishContext {
        pool: p.pool.clone(),
        producer: p.producer.clone(),
        topic_prefix: p.topic_prefix.clone(),
        settings: p.settings,
        backlog_batch: p.publish_batch,
        backlog_age: p.publish_backlog_age,
        retry: p.publish_retry,
        claim_lease: p.publish_claim_lease,
    });
    let notify_ctx = Arc::new(NotifyContext {
        pool: p.pool.clone(),
        settings: p.settings,
    });

    tracing::info!(queues = ?orderflow_jobs::kinds::QUEUES, bootstrap = %p.bootstrap, "event pipeline starting");
    let acks = LostAcks::default();
    let background = vec![
        tokio::spawn({
            let stop = stop.clone();
            lost_acks::release_loop(
                acks.clone(),
                p.pool.clone(),
                p.settings.keep_alive,
                async move { stop.cancelled().await },
            )
        }),
        tokio::spawn({
            let stop = stop.clone();
            p.pauses
                .clone()
                .watch(p.pool.clone(), p.settings.poll_interval, async move {
                    stop.cancelled().await
                })
        }),
        tokio::spawn(consumer::consume_events(p.clone(), stop.clone())),
        tokio::spawn(sweeper::sweep_loop(p.clone(), stop.clone())),
        tokio::spawn({
            let stop = stop.clone();
            reaper::reap_loop(
                p.pool.clone(),
                p.settings.lease,
                p.settings.keep_alive,
                async move { stop.cancelled().await },
            )
        }),
    ];

    let (pool, settings, concurrency) = (p.pool.clone(), p.settings, p.concurrency);
    let shutdown_timeout = p.shutdown_timeout;
    let publish_worker = supervise(
        PUBLISH_OUTBOX,
        "publish",
        Some(pool.clone()),
        stop.clone(),
        {
            let (pool, wake, pauses) = (pool.clone(), p.publish_wake.clone(), p.pauses.clone());
            let acks = acks.clone();
            move |name| {
                let (pool, ctx, wake) = (pool.clone(), publish_ctx.clone(), wake.clone());
                let (pauses, acks) = (pauses.clone(), acks.clone());
                // A fresh storage per start: an apalis poll schedule is single-use.
                Monitor::new()
                    .register(move |_| {
                        WorkerBuilder::new(name.clone())
                            .backend(backend::worker_storage::<PublishOutbox>(
                                &pool,
                                PUBLISH_OUTBOX,
                                &settings,
                                Some(&wake),
                                pauses.gate(PUBLISH_OUTBOX),
                            ))
                            .layer(AttemptHistoryLayer::new(&pool, PUBLISH_OUTBOX).noting(&acks))
                            .concurrency(concurrency)
                            .data(ctx.clone())
                            .build(publish::handle)
                    })
                    .shutdown_timeout(shutdown_timeout)
            }
        },
    );
    let (notify_wake, pauses, notify_acks) =
        (p.notify_wake.clone(), p.pauses.clone(), acks.clone());
    let notify_worker = supervise(
        CONSUME_NOTIFICATION,
        "notify",
        Some(pool.clone()),
        stop.clone(),
        move |name| {
            let (pool, ctx, wake) = (pool.clone(), notify_ctx.clone(), notify_wake.clone());
            let (pauses, acks) = (pauses.clone(), notify_acks.clone());
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(backend::worker_storage::<ConsumeNotification>(
                            &pool,
                            CONSUME_NOTIFICATION,
                            &settings,
                            Some(&wake),
                            pauses.gate(CONSUME_NOTIFICATION),
                        ))
                        .layer(AttemptHistoryLayer::new(&pool, CONSUME_NOTIFICATION).noting(&acks))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(notify::handle)
                })
                .shutdown_timeout(shutdown_timeout)
        },
    );
    let archive_worker = archive::run_archive_worker(
        p.pool.clone(),
        settings,
        shutdown_timeout,
        p.pauses.clone(),
        stop.clone(),
    );
    let retention_ctx = Arc::new(RetentionContext {
        pool: p.pool.clone(),
        settings,
        kinds: p.retention.kinds.clone(),
    });
    let retention_worker = supervise(
        RETENTION,
        "retention",
        Some(p.pool.clone()),
        stop.clone(),
        {
            let (pool, pauses) = (p.pool.clone(), p.pauses.clone());
            move |name| {
                let (pool, ctx, pauses) = (pool.clone(), retention_ctx.clone(), pauses.clone());
                Monitor::new()
                    .register(move |_| {
                        WorkerBuilder::new(name.clone())
                            .backend(backend::worker_storage::<Purge>(
                                &pool,
                                RETENTION,
                                &settings,
                                None,
                                pauses.gate(RETENTION),
                            ))
                            .layer(AttemptHistoryLayer::new(&pool, RETENTION))
                            .concurrency(1)
                            .data(ctx.clone())
                            .build(retention::handle)
                    })
                    .shutdown_timeout(shutdown_timeout)
            }
        },
    );
    let audit_ctx = Arc::new(AuditContext {
        pool: p.pool.clone(),
        settings,
        auditor: p.audit.auditor.clone(),
    });
    let audit_worker = supervise(AUDIT, "audit", Some(p.pool.clone()), stop.clone(), {
        let (pool, pauses) = (p.pool.clone(), p.pauses.clone());
        move |name| {
            let (pool, ctx, pauses) = (pool.clone(), audit_ctx.clone(), pauses.clone());
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(backend::worker_storage::<AuditTick>(
                            &pool,
                            AUDIT,
                            &settings,
                            None,
                            pauses.gate(AUDIT),
                        ))
                        .layer(AttemptHistoryLayer::new(&pool, AUDIT))
                        .concurrency(1)
                        .data(ctx.clone())
                        .build(audit_run::handle)
                })
                .shutdown_timeout(shutdown_timeout)
        }
    });
    let schedules = schedule::run_schedules(p.clone(), stop.clone());
    tokio::join!(
        publish_worker,
        notify_worker,
        archive_worker,
        retention_worker,
        audit_worker,
        schedules
    );
    for task in background {
        let _ = task.await;
    }
    if let Err(e) = p.producer.flush(Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "kafka producer did not flush everything before exit");
    }
    tracing::info!("event pipeline stopped");
}
