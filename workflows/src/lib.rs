//! Wires orderflow's jobs into a running pipeline:
//!
//! ```text
//! order commit ──push──▶ publish-outbox worker ──▶ Kafka ORDER_* ──▶ consumer group
//!      ▲ (sweeper re-enqueues lost rows)                               │ push, then commit offset
//!      └ outbox_events (NEW → PUBLISHED | DEAD)      notifications ◀── consume-notification worker
//! ```
//!
//! plus the job reaper (the lease apalis-mysql rc.8 lacks), the gauges operators watch, and
//! the schedules (apalis-cron) of the archive workflow and of the retention job.

mod archive;
mod consumer;
mod schedule;
mod sweeper;

use std::{sync::Arc, time::Duration};

use apalis::prelude::{Monitor, WorkerBuilder, WorkerBuilderExt};
use orderflow_jobs::{
    notify::{self, NotifyContext},
    publish::{self, PublishContext},
    queue::{
        self, ConsumeNotification, PublishOutbox, QueueSettings, Wake, CONSUME_NOTIFICATION,
        PUBLISH_OUTBOX, RETENTION,
    },
    reaper,
    retention::{self, Purge, RetentionContext},
};
use rdkafka::producer::{FutureProducer, Producer};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;

pub use archive::run_archive_worker;
pub use consumer::consume_events;
pub use schedule::{daily_run_key, parse_schedule, ArchiveSchedule, RetentionSchedule};
pub use sweeper::sweep_once;

#[derive(Clone)]
pub struct Pipeline {
    pub pool: MySqlPool,
    pub producer: FutureProducer,
    pub bootstrap: String,
    pub topic_prefix: String,
    pub consumer_group: String,
    /// Static group membership (e.g. the pod name of a StatefulSet), if configured.
    pub consumer_instance_id: Option<String>,
    pub settings: QueueSettings,
    pub concurrency: usize,
    /// Rows of the backlog a publish job carries along with its own.
    pub publish_batch: u32,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub shutdown_timeout: Duration,
    pub archive: ArchiveSchedule,
    pub retention: RetentionSchedule,
    /// Wake the local publish-outbox worker (orders committed by this process's API).
    pub publish_wake: Wake,
    /// Wake the local consume-notification worker (messages this process's consumer stored).
    pub notify_wake: Wake,
}

const RESTART_DELAY: Duration = Duration::from_secs(2);

/// Runs one queue's worker until `stop`, starting it again (after a pause, so a database
/// outage does not become a busy loop) whenever it ends on its own, e.g. on a fetch error.
pub(crate) async fn supervise(
    queue: &'static str,
    stop: CancellationToken,
    make: impl Fn() -> Monitor,
) {
    loop {
        let signal = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok(())
            }
        };
        let result = make().run_with_signal(signal).await;
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(queue, "job worker ended; restarting"),
            Err(e) => tracing::warn!(queue, error = %e, "job worker failed; restarting"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RESTART_DELAY) => {}
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
    });
    let notify_ctx = Arc::new(NotifyContext {
        pool: p.pool.clone(),
        settings: p.settings,
    });

    tracing::info!(queues = ?orderflow_jobs::queue::QUEUES, bootstrap = %p.bootstrap, "event pipeline starting");
    let background = vec![
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
    let publish_worker = supervise(PUBLISH_OUTBOX, stop.clone(), {
        let (pool, wake) = (pool.clone(), p.publish_wake.clone());
        move || {
            let (pool, ctx, wake) = (pool.clone(), publish_ctx.clone(), wake.clone());
            // A fresh storage per start: an apalis poll schedule is single-use. Worker names
            // are unique per start (they are workers.id, which jobs' lock_by points at).
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(format!("publish-{}", Ulid::new()))
                        .backend(queue::worker_storage::<PublishOutbox>(
                            &pool,
                            PUBLISH_OUTBOX,
                            &settings,
                            &wake,
                        ))
                        .concurrency(concurrency)
                        .data(ctx.clone())
                        .build(publish::handle)
                })
                .shutdown_timeout(shutdown_timeout)
        }
    });
    let notify_wake = p.notify_wake.clone();
    let notify_worker = supervise(CONSUME_NOTIFICATION, stop.clone(), move || {
        let (pool, ctx, wake) = (pool.clone(), notify_ctx.clone(), notify_wake.clone());
        Monitor::new()
            .register(move |_| {
                WorkerBuilder::new(format!("notify-{}", Ulid::new()))
                    .backend(queue::worker_storage::<ConsumeNotification>(
                        &pool,
                        CONSUME_NOTIFICATION,
                        &settings,
                        &wake,
                    ))
                    .concurrency(concurrency)
                    .data(ctx.clone())
                    .build(notify::handle)
            })
            .shutdown_timeout(shutdown_timeout)
    });
    let archive_worker =
        archive::run_archive_worker(p.pool.clone(), settings, shutdown_timeout, stop.clone());
    let retention_ctx = Arc::new(RetentionContext {
        pool: p.pool.clone(),
        settings,
        kinds: p.retention.kinds.clone(),
    });
    let retention_worker = supervise(RETENTION, stop.clone(), {
        let pool = p.pool.clone();
        move || {
            let (pool, ctx) = (pool.clone(), retention_ctx.clone());
            Monitor::new()
                .register(move |_| {
                    WorkerBuilder::new(format!("retention-{}", Ulid::new()))
                        .backend(queue::storage::<Purge>(&pool, RETENTION, &settings))
                        .concurrency(1)
                        .data(ctx.clone())
                        .build(retention::handle)
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
        schedules
    );
    for task in background {
        let _ = task.await;
    }
    if let Err(e) = p.producer.flush(Duration::from_secs(5)) {
        tracing::warn!(error = %e, "kafka producer did not flush everything before exit");
    }
    tracing::info!("event pipeline stopped");
}
