//! Start-up, used by the binary (and the tests that run the service in-process): connects to
//! everything and prepares the database, builds the shared state, starts the background
//! workers, and serves the router until the shutdown signal.

use std::{future::Future, sync::Arc};

use orderflow_jobs::{
    kafka_clients::{self, KafkaClient},
    publish_outbox::publish_batch::{BatchSettings, PublishBatcher},
};
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, JwtKeys},
    catalog::Cache,
    config::Config,
    console, db,
    events::{self},
    http, idempotency, orders,
    router::router,
    state::{AppState, Role},
    telemetry,
};

/// Connects to everything and prepares the database. Redis is not required to start.
pub async fn init(config: Config) -> anyhow::Result<AppState> {
    // Also for configurations made in code: no known or short secret ever signs a token.
    if let Some(reason) = crate::config::jwt_secret_refusal(&config.jwt.secret) {
        anyhow::bail!("JWT_SECRET {reason}");
    }
    if config.jwt.random_secret {
        tracing::warn!(
            "JWT_SECRET is not set: tokens are signed with a random secret made at this start. \
             They do not survive a restart and are not accepted by other replicas. Set \
             JWT_SECRET (at least 32 random bytes) for more than one process or across restarts."
        );
    }
    db::create_database_if_missing(&config.database_url).await?;
    let pool = db::connect(
        &config.database_url,
        &db::PoolSettings::from_config(&config),
    )
    .await?;
    if config.run_migrations {
        db::migrate(&pool).await?;
    }
    if let Some((email, password)) = &config.admin_bootstrap {
        bootstrap_admin(&pool, email, password).await?;
    }
    let events = events::connect(&config.events).await?;
    // Each replacement of a producer librdkafka declared dead shows in the queue overview.
    events.producer.on_rebuild(Box::new({
        let pool = pool.clone();
        move |rebuild| {
            kafka_clients::record_later(&pool, KafkaClient::Producer, rebuild.error.clone())
        }
    }));
    let publisher = PublishBatcher::start(
        pool.clone(),
        config.events.queue,
        events.publish_wake.clone(),
        BatchSettings {
            linger: config.events.publish_linger,
            max_rows: config.events.publish_batch as usize,
        },
    );
    let cache = Cache::new(
        &config.redis_url,
        &config.cache_key_prefix,
        config.redis_timeout,
        config.cache_ttl,
    );
    let orders = orders::OrderCommitter::start(
        &config.database_url,
        publisher.clone(),
        cache.clone(),
        orders::CommitSettings {
            lanes: config.order_batches.lanes,
            max_batch: config.order_batches.max_batch,
            linger: config.order_batches.linger,
            retention: config.idempotency.retention,
            in_flight_wait: config.idempotency.in_flight_wait,
            deadline: config.order_batches.deadline,
            queue_max: config.order_batches.queue_max,
            queue_max_wait: config.order_batches.queue_max_wait,
        },
    )?;
    Ok(AppState {
        publisher,
        orders,
        events: Arc::new(events),
        cache,
        login_throttle: auth::LoginThrottle::new(
            &config.redis_url,
            &config.cache_key_prefix,
            config.login_throttle.clone(),
        ),
        jwt: Arc::new(JwtKeys::new(&config.jwt)),
        metrics: telemetry::metrics_handle(),
        db: pool,
        config: Arc::new(config),
    })
}

/// ADMIN_EMAIL / ADMIN_PASSWORD (docs/adr/0020-admin-bootstrap.md). A refusal does not stop
/// the start — anyone could then keep the service down by registering the address — it is
/// logged as an error for the operator to look into.
async fn bootstrap_admin(pool: &MySqlPool, email: &str, password: &str) -> anyhow::Result<()> {
    match auth::ensure_admin(pool, email, password).await? {
        auth::Bootstrap::Created => {
            tracing::info!(email, "administrator account created from ADMIN_EMAIL");
        }
        auth::Bootstrap::AlreadyAdmin => {
            tracing::info!(email, "ADMIN_EMAIL is an administrator already");
        }
        auth::Bootstrap::Promoted => tracing::warn!(
            email,
            "ADMIN_EMAIL's existing account promoted to ADMIN: its password is ADMIN_PASSWORD"
        ),
        auth::Bootstrap::Refused { found } => tracing::error!(
            email,
            found,
            "ADMIN_EMAIL NOT applied: the account registered under this address (or a look-alike \
             differing only in case or accents) does not have ADMIN_PASSWORD as its password, \
             so someone else may have registered it. It stays as it is. Find out who owns it; \
             if it is yours, promote it with `orderflow users promote <its exact email>`, \
             otherwise set ADMIN_EMAIL to an address nobody has registered"
        ),
    }
    Ok(())
}

/// The event pipeline of this process, as configured.
pub fn pipeline(state: &AppState) -> orderflow_workflows::Pipeline {
    let cfg = &state.config.events;
    orderflow_workflows::Pipeline {
        pool: state.db.clone(),
        producer: state.events.producer.clone(),
        bootstrap: state.events.bootstrap.clone(),
        topic_prefix: cfg.topic_prefix.clone(),
        consumer_group: cfg.consumer_group.clone(),
        consumer_instance_id: cfg.consumer_instance_id.clone(),
        settings: cfg.queue,
        concurrency: cfg.worker_concurrency,
        publish_batch: cfg.publish_batch,
        publish_backlog_age: cfg.publish_backlog_age,
        sweep_interval: cfg.sweep_interval,
        sweep_grace: cfg.sweep_grace,
        shutdown_timeout: cfg.shutdown_timeout,
        publish_retry: orderflow_jobs::publish_outbox::retry_policy::RetryPolicy {
            window: cfg.publish_retry_window,
        },
        // A send lasts at most the delivery timeout after the queue wait; the margin covers
        // the UPDATE that settles it.
        publish_claim_lease: cfg.delivery_timeout
            + orderflow_jobs::publish_outbox::publish::QUEUE_WAIT
            + std::time::Duration::from_secs(5),
        archive: state.config.archive.clone(),
        retention: retention_schedule(&state.config),
        audit: orderflow_workflows::AuditSchedule {
            cron: state.config.audit.cron.clone(),
            auditor: crate::audit::scheduled(&state.config),
        },
        publish_wake: state.events.publish_wake.clone(),
        notify_wake: Default::default(),
        pauses: Default::default(),
        consumer_fatal_for_test: state.events.consumer_fatal_for_test.clone(),
    }
}

/// What the retention job purges, each kind with its own retention.
fn retention_schedule(config: &Config) -> orderflow_workflows::RetentionSchedule {
    use orderflow_jobs::{
        kafka_clients,
        retention::{FinishedJobs, PublishedOutboxRows},
    };
    let finished_after = config.retention.finished_after;
    orderflow_workflows::RetentionSchedule {
        cron: config.retention.cron.clone(),
        kinds: vec![
            Arc::new(idempotency::ExpiredIdempotencyKeys),
            Arc::new(console::session::EXPIRED_SESSIONS),
            Arc::new(PublishedOutboxRows(finished_after)),
            Arc::new(FinishedJobs(finished_after)),
            Arc::new(kafka_clients::old_rebuilds(finished_after)),
        ],
    }
}

/// Starts the background work of the worker role; it stops when `shutdown` is cancelled.
pub fn spawn_workers(
    state: &AppState,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    if state.events.embedded.is_some() {
        tasks.push(tokio::spawn(events::reseed_embedded(
            state.db.clone(),
            state.events.producer.clone(),
            state.config.events.topic_prefix.clone(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(orderflow_workflows::run(
        pipeline(state),
        shutdown,
    )));
    tasks
}

/// Serves until `signal` resolves, then drains in-flight requests and stops the workers.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    role: Role,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shutdown = CancellationToken::new();
    let workers = if role.runs_workers() {
        spawn_workers(&state, shutdown.clone())
    } else {
        Vec::new()
    };
    let publisher = state.publisher.clone();
    let limits = state.config.http_connections;
    let app = router(state, role);
    let stop = shutdown.clone();
    let result = http::server::serve(listener, app, limits, async move {
        tokio::select! {
            () = signal => {}
            () = stop.cancelled() => {}
        }
    })
    .await;
    // The last requests are answered: their rows get their publish jobs before we stop.
    publisher.close().await;
    shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    result
}
