//! Configuration, read once from environment variables. Every variable is listed in the
//! README's configuration table; a variable that is set but unparsable stops the start
//! with a message naming it, rather than silently falling back to a default.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use orderflow_jobs::engine::queue::QueueSettings;
use orderflow_workflows::{parse_schedule, ArchiveSchedule};
use thiserror::Error;

/// The built-in development secret of earlier releases. It is public, so it is refused as
/// JWT_SECRET like every other value printed in this repository.
pub const DEV_JWT_SECRET: &str = "orderflow-development-secret-do-not-use-in-production";

/// JWT_SECRET values printed in this repository (its manifests, compose file and earlier
/// defaults): whoever reads it could sign tokens with them (docs/adr/0021-jwt-secret.md).
const PUBLISHED_JWT_SECRETS: &[&str] = &[
    DEV_JWT_SECRET,
    "dev-only-insecure-jwt-secret-change-me",
    "CHANGE-ME-PLACEHOLDER-NOT-A-REAL-SECRET",
    "integration-test-secret",
];

/// Words only a placeholder contains (compared without case, `-` or `_`).
const PLACEHOLDER_WORDS: &[&str] = &["changeme", "placeholder", "donotuse", "notarealsecret"];

/// The shortest JWT_SECRET accepted: HS256's key is 256 bits.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Why `secret` must not sign tokens, if it must not: shorter than
/// [`MIN_JWT_SECRET_BYTES`], published in this repository, or a placeholder.
pub fn jwt_secret_refusal(secret: &str) -> Option<String> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Some(format!(
            "must be at least {MIN_JWT_SECRET_BYTES} bytes (it has {}); e.g. `openssl rand -base64 48`",
            secret.len()
        ));
    }
    let squashed: String = secret
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .flat_map(char::to_lowercase)
        .collect();
    if PUBLISHED_JWT_SECRETS
        .iter()
        .any(|known| known.eq_ignore_ascii_case(secret.trim()))
        || PLACEHOLDER_WORDS.iter().any(|w| squashed.contains(w))
    {
        return Some(
            "is a placeholder or a value published in the orderflow repository: anyone could \
             sign tokens with it; set at least 32 random bytes, e.g. `openssl rand -base64 48`"
                .into(),
        );
    }
    None
}

/// JWT_SECRET, checked; unset, a random secret for this process only.
fn jwt_secret() -> Result<(String, bool), ConfigError> {
    let Some(secret) = opt_var("JWT_SECRET") else {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
        return Ok((hex::encode(bytes), true));
    };
    match jwt_secret_refusal(&secret) {
        None => Ok((secret, false)),
        Some(reason) => Err(ConfigError {
            name: "JWT_SECRET",
            // Never echoed: the value may be a real secret that is merely too short.
            value: format!("<{} bytes, not shown>", secret.len()),
            reason,
        }),
    }
}

#[derive(Debug, Error)]
#[error("environment variable {name}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    name: &'static str,
    value: String,
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("expected `json` or `pretty`".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub database_acquire_timeout: Duration,
    pub run_migrations: bool,
    pub redis_url: String,
    pub redis_timeout: Duration,
    pub cache_key_prefix: String,
    pub cache_ttl: Duration,
    pub events: EventsConfig,
    pub archive: ArchiveSchedule,
    pub retention: RetentionConfig,
    pub audit: AuditConfig,
    pub http_addr: SocketAddr,
    pub http_request_timeout: Duration,
    pub http_body_limit_bytes: usize,
    pub http_connections: HttpConnectionConfig,
    pub jwt: JwtConfig,
    pub admin_bootstrap: Option<(String, String)>,
    pub log_format: LogFormat,
    pub tracing: TracingConfig,
    pub orders: OrderLimits,
    pub order_batches: OrderBatchConfig,
    pub idempotency: IdempotencyConfig,
    pub login_throttle: LoginThrottleConfig,
    /// `TRACE_UI_URL`: a link to a trace in the tracing UI (unset: trace ids only).
    pub trace_ui: Option<TraceUiUrl>,
    pub console: ConsoleConfig,
}

/// A tracing UI's address of a trace, with `{traceId}` where the id goes, e.g. Jaeger's
/// `http://localhost:16686/trace/{traceId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceUiUrl(String);

impl TraceUiUrl {
    pub const PLACEHOLDER: &'static str = "{traceId}";

    /// The link to one trace.
    pub fn link(&self, trace_id: &str) -> String {
        self.0.replace(Self::PLACEHOLDER, trace_id)
    }
}

impl FromStr for TraceUiUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err("expected an http:// or https:// URL".into());
        }
        if !s.contains(Self::PLACEHOLDER) {
            return Err(format!(
                "expected {} where the trace id goes",
                Self::PLACEHOLDER
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

/// The HTTP server's connections (`http::server`, docs/adr/0022-http-connection-limits.md):
/// how long a client may take over each part of an exchange, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct HttpConnectionConfig {
    /// From a request's first byte (or the connection's opening) to the end of its header
    /// block; past it the connection is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress and no byte received is closed
    /// after this.
    pub idle_timeout: Duration,
    /// From the end of a request's header block to the end of its response (a client sending
    /// its body or reading the response too slowly); past it the connection is closed.
    pub whole_request_timeout: Duration,
    /// Connections served at once; a connection beyond them is answered 503 (health probes
    /// are answered) and closed.
    pub max_connections: usize,
}

impl HttpConnectionConfig {
    fn from_env(request_timeout: Duration) -> Result<Self, ConfigError> {
        let whole_request_timeout = Duration::from_secs(positive(
            "HTTP_WHOLE_REQUEST_TIMEOUT_SECS",
            var("HTTP_WHOLE_REQUEST_TIMEOUT_SECS", 60u64)?,
        )?);
        if whole_request_timeout < request_timeout {
            return Err(ConfigError {
                name: "HTTP_WHOLE_REQUEST_TIMEOUT_SECS",
                value: whole_request_timeout.as_secs().to_string(),
                reason: "must be at least HTTP_REQUEST_TIMEOUT_SECS, so that a slow handler is \
                         answered 503 before its connection is closed"
                    .into(),
            });
        }
        Ok(Self {
            header_read_timeout: Duration::from_secs(positive(
                "HTTP_HEADER_READ_TIMEOUT_SECS",
                var("HTTP_HEADER_READ_TIMEOUT_SECS", 10u64)?,
            )?),
            idle_timeout: Duration::from_secs(positive(
                "HTTP_IDLE_TIMEOUT_SECS",
                var("HTTP_IDLE_TIMEOUT_SECS", 75u64)?,
            )?),
            whole_request_timeout,
            max_connections: positive(
                "HTTP_MAX_CONNECTIONS",
                var("HTTP_MAX_CONNECTIONS", 1024usize)?,
            )?,
        })
    }
}

/// The web console at /console.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The session cookie's `Secure` attribute (off only for plain-HTTP development).
    pub cookie_secure: bool,
    /// A session unused for this long is over.
    pub session_idle: Duration,
    /// A session is over this long after its sign-in, however much it is used.
    pub session_max: Duration,
    /// How often lists refresh themselves (while no row is selected).
    pub refresh: Duration,
}

/// OpenTelemetry tracing. The exporter itself reads the standard `OTEL_*` variables
/// (endpoint, headers, timeout, service name, resource attributes, sampler); this only
/// decides whether there is one: no endpoint, no exporter, no cost.
#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP).
    pub otlp_endpoint: Option<String>,
}

impl TracingConfig {
    fn from_env() -> Result<Self, ConfigError> {
        let disabled = var("OTEL_SDK_DISABLED", false)?;
        let endpoint = opt_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| opt_var("OTEL_EXPORTER_OTLP_ENDPOINT"));
        Ok(Self {
            otlp_endpoint: endpoint.filter(|_| !disabled),
        })
    }
}

/// Kafka and the job engine.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Unset: an in-process broker (librdkafka's mock cluster).
    pub kafka_brokers: Option<String>,
    /// Prepended to the topic names (ORDER_CREATED, ORDER_CANCELLED).
    pub topic_prefix: String,
    pub consumer_group: String,
    pub consumer_instance_id: Option<String>,
    pub delivery_timeout: Duration,
    pub queue: QueueSettings,
    pub worker_concurrency: usize,
    /// NEW outbox rows a publish job carries along with its own (0: only its own).
    pub publish_batch: u32,
    /// How old another job's NEW row must be before a publish job carries it along.
    pub publish_backlog_age: Duration,
    /// How long a committed row waits for others to share its publish job.
    pub publish_linger: Duration,
    pub sweep_interval: Duration,
    pub sweep_grace: Duration,
    pub shutdown_timeout: Duration,
    /// How long a publish failing for a transient reason is retried.
    pub publish_retry_window: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub secret: String,
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    /// JWT_SECRET was not set: the secret is random, made at this start, known to this
    /// process only (its tokens die with it and are not accepted by other replicas).
    pub random_secret: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct OrderLimits {
    pub max_items: usize,
    pub max_quantity: i64,
}

/// Group commit of POST /orders (`orders::committer`).
#[derive(Debug, Clone, Copy)]
pub struct OrderBatchConfig {
    /// Batches committed at once (`ORDER_COMMIT_LANES`).
    pub lanes: usize,
    /// The most orders one transaction commits (`ORDER_BATCH_MAX`).
    pub max_batch: usize,
    /// How long a batch waits for more orders once it has one (`ORDER_BATCH_LINGER_US`).
    pub linger: Duration,
    /// Every order request is answered by then (`ORDER_DEADLINE_MS`).
    pub deadline: Duration,
    /// Requests waiting for a lane, at most (`ORDER_QUEUE_MAX`).
    pub queue_max: usize,
    /// The longest expected wait for a lane a request is let in for
    /// (`ORDER_QUEUE_MAX_WAIT_MS`).
    pub queue_max_wait: Duration,
}

impl OrderBatchConfig {
    fn from_env(http_request_timeout: Duration) -> Result<Self, ConfigError> {
        let lanes = positive("ORDER_COMMIT_LANES", var("ORDER_COMMIT_LANES", 4usize)?)?;
        let max_batch = positive("ORDER_BATCH_MAX", var("ORDER_BATCH_MAX", 64usize)?)?;
        let deadline_ms = positive("ORDER_DEADLINE_MS", var("ORDER_DEADLINE_MS", 3000u64)?)?;
        let deadline = Duration::from_millis(deadline_ms);
        if deadline >= http_request_timeout {
            return Err(ConfigError {
                name: "ORDER_DEADLINE_MS",
                value: deadline_ms.to_string(),
                reason: format!(
                    "must be shorter than HTTP_REQUEST_TIMEOUT_SECS ({} s): an order is answered \
                     by its deadline, never by the request timeout",
                    http_request_timeout.as_secs()
                ),
            });
        }
        let wait_ms = positive(
            "ORDER_QUEUE_MAX_WAIT_MS",
            var("ORDER_QUEUE_MAX_WAIT_MS", (deadline_ms / 3).max(1))?,
        )?;
        if wait_ms >= deadline_ms {
            return Err(ConfigError {
                name: "ORDER_QUEUE_MAX_WAIT_MS",
                value: wait_ms.to_string(),
                reason: format!("must be shorter than ORDER_DEADLINE_MS ({deadline_ms})"),
            });
        }
        Ok(Self {
            lanes,
            max_batch,
            linger: Duration::from_micros(var("ORDER_BATCH_LINGER_US", 0u64)?),
            deadline,
            queue_max: positive(
                "ORDER_QUEUE_MAX",
                var("ORDER_QUEUE_MAX", 4 * lanes * max_batch)?,
            )?,
            queue_max_wait: Duration::from_millis(wait_ms),
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct IdempotencyConfig {
    pub retention: Duration,
    /// How long a duplicate waits on the first request's row lock before it is answered
    /// with 409 IDEMPOTENCY_KEY_IN_PROGRESS.
    pub in_flight_wait: Duration,
}

/// The retention job's schedule, and how long finished work (PUBLISHED outbox rows, `Done`
/// jobs) is kept; expired idempotency keys go on the same schedule.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub cron: String,
    pub finished_after: Duration,
}

/// The invariant audit (`crate::audit`, docs/adr/0017-audit.md): its schedule on the job
/// engine, the rows each of its reads covers, and how long a published event may wait for its
/// notification before the audit counts it missing.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub cron: String,
    pub chunk_size: u32,
    pub notification_grace: Duration,
}

/// Login brute-force throttling (`crate::auth::throttle`, policy in ADR 0013); the counters
/// live in Redis, or in the process while Redis is unavailable.
#[derive(Debug, Clone)]
pub struct LoginThrottleConfig {
    /// Failed logins on one account from one client address within the window before that
    /// address's logins to that account are refused.
    pub max_failures_per_account_and_ip: u32,
    /// Failed logins from one client address (IPv6: one /64) within the window before its
    /// logins are refused, except to accounts that have logged in from it before.
    pub max_failures_per_ip: u32,
    /// Failed logins on one account, from all addresses, within the window before its logins
    /// are slowed down (never refused).
    pub slowdown_after_account_failures: u32,
    /// The longest delay a slowed login waits before its password is checked.
    pub slowdown_max: Duration,
    /// How long an address an account logged in from stays known to that account.
    pub known_client_ttl: Duration,
    /// Fixed window: a counter is forgotten this long after its first failure.
    pub window: Duration,
    /// The bound on the throttle's Redis calls. Longer than the cache's `REDIS_TIMEOUT_MS`:
    /// a login flood slows Redis replies down, and a login waits for its hash anyway.
    pub redis_timeout: Duration,
    /// Reverse proxies in front of the service that append to `X-Forwarded-For`; 0 means the
    /// TCP peer is the client and the header is ignored.
    pub trusted_proxy_hops: usize,
}

impl LoginThrottleConfig {
    fn from_env() -> Result<Self, ConfigError> {
        // Before ADR 0013 this bounded the failures on an account from everywhere (a lock
        // anyone could set off); still read, as the nearest meaning now: one address's
        // failures on one account.
        let per_account_and_ip = var("LOGIN_MAX_FAILURES_PER_ACCOUNT", 5u32)?;
        Ok(Self {
            max_failures_per_account_and_ip: positive(
                "LOGIN_MAX_FAILURES_PER_ACCOUNT_AND_IP",
                var("LOGIN_MAX_FAILURES_PER_ACCOUNT_AND_IP", per_account_and_ip)?,
            )?,
            max_failures_per_ip: positive(
                "LOGIN_MAX_FAILURES_PER_IP",
                var("LOGIN_MAX_FAILURES_PER_IP", 50u32)?,
            )?,
            slowdown_after_account_failures: positive(
                "LOGIN_SLOWDOWN_AFTER_ACCOUNT_FAILURES",
                var("LOGIN_SLOWDOWN_AFTER_ACCOUNT_FAILURES", 20u32)?,
            )?,
            slowdown_max: Duration::from_millis(var("LOGIN_SLOWDOWN_MAX_MS", 5000u64)?),
            known_client_ttl: Duration::from_secs(
                86_400
                    * positive(
                        "LOGIN_KNOWN_CLIENT_DAYS",
                        var("LOGIN_KNOWN_CLIENT_DAYS", 30u64)?,
                    )?,
            ),
            window: Duration::from_secs(positive(
                "LOGIN_THROTTLE_WINDOW_SECS",
                var("LOGIN_THROTTLE_WINDOW_SECS", 900u64)?,
            )?),
            redis_timeout: Duration::from_millis(positive(
                "LOGIN_THROTTLE_REDIS_TIMEOUT_MS",
                var("LOGIN_THROTTLE_REDIS_TIMEOUT_MS", 500u64)?,
            )?),
            trusted_proxy_hops: var("HTTP_TRUSTED_PROXY_HOPS", 0usize)?,
        })
    }
}

/// Reads a typed variable; unset or empty means the default.
fn var<T: FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            value: v,
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

/// A cron expression (with seconds, UTC), checked now rather than when the schedule starts.
fn cron_var(name: &'static str, default: &str) -> Result<String, ConfigError> {
    let cron = var(name, default.to_string())?;
    parse_schedule(&cron).map_err(|reason| ConfigError {
        name,
        value: cron.clone(),
        reason,
    })?;
    Ok(cron)
}

fn opt_var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn positive<T: PartialOrd + Default + ToString>(
    name: &'static str,
    value: T,
) -> Result<T, ConfigError> {
    if value > T::default() {
        Ok(value)
    } else {
        Err(ConfigError {
            name,
            value: value.to_string(),
            reason: "must be greater than zero".into(),
        })
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        let (jwt_secret, random_secret) = jwt_secret()?;
        let http_request_timeout = Duration::from_secs(positive(
            "HTTP_REQUEST_TIMEOUT_SECS",
            var("HTTP_REQUEST_TIMEOUT_SECS", 30u64)?,
        )?);
        Ok(Self {
            database_url: var(
                "DATABASE_URL",
                "mysql://root@127.0.0.1:3306/orderflow".to_string(),
            )?,
            database_max_connections: positive(
                "DATABASE_MAX_CONNECTIONS",
                var("DATABASE_MAX_CONNECTIONS", 32u32)?,
            )?,
            database_acquire_timeout: Duration::from_secs(positive(
                "DATABASE_ACQUIRE_TIMEOUT_SECS",
                var("DATABASE_ACQUIRE_TIMEOUT_SECS", 10u64)?,
            )?),
            run_migrations: var("RUN_MIGRATIONS", true)?,
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379".to_string())?,
            redis_timeout: Duration::from_millis(var("REDIS_TIMEOUT_MS", 100u64)?),
            cache_key_prefix: var("CACHE_KEY_PREFIX", String::new())?,
            cache_ttl: Duration::from_secs(positive(
                "CACHE_TTL_SECS",
                var("CACHE_TTL_SECS", 60u64)?,
            )?),
            events: EventsConfig {
                kafka_brokers: opt_var("KAFKA_BROKERS"),
                topic_prefix: var("KAFKA_TOPIC_PREFIX", String::new())?,
                consumer_instance_id: opt_var("KAFKA_GROUP_INSTANCE_ID"),
                consumer_group: var(
                    "KAFKA_CONSUMER_GROUP",
                    "orderflow-notifications".to_string(),
                )?,
                delivery_timeout: Duration::from_millis(positive(
                    "KAFKA_DELIVERY_TIMEOUT_MS",
                    var("KAFKA_DELIVERY_TIMEOUT_MS", 10_000u64)?,
                )?),
                queue: QueueSettings {
                    poll_interval: Duration::from_millis(positive(
                        "JOB_POLL_INTERVAL_MS",
                        var("JOB_POLL_INTERVAL_MS", 100u64)?,
                    )?),
                    keep_alive: Duration::from_secs(positive(
                        "JOB_KEEP_ALIVE_SECS",
                        var("JOB_KEEP_ALIVE_SECS", 10u64)?,
                    )?),
                    lease: Duration::from_secs(positive(
                        "JOB_LEASE_SECS",
                        var("JOB_LEASE_SECS", 60u64)?,
                    )?),
                    max_attempts: positive("JOB_MAX_ATTEMPTS", var("JOB_MAX_ATTEMPTS", 5u32)?)?,
                    backoff_base: Duration::from_millis(var("JOB_BACKOFF_BASE_MS", 1000u64)?),
                    backoff_max: Duration::from_secs(var("JOB_BACKOFF_MAX_SECS", 60u64)?),
                    idle_poll_max: Duration::from_millis(positive(
                        "JOB_IDLE_POLL_MAX_MS",
                        var("JOB_IDLE_POLL_MAX_MS", 1000u64)?,
                    )?),
                },
                worker_concurrency: positive(
                    "WORKER_CONCURRENCY",
                    var("WORKER_CONCURRENCY", 8usize)?,
                )?,
                publish_batch: var("PUBLISH_BATCH_SIZE", 100u32)?,
                publish_backlog_age: Duration::from_millis(var("PUBLISH_BACKLOG_AGE_MS", 1000u64)?),
                publish_linger: Duration::from_millis(var("PUBLISH_LINGER_MS", 10u64)?),
                sweep_interval: Duration::from_secs(positive(
                    "OUTBOX_SWEEP_INTERVAL_SECS",
                    var("OUTBOX_SWEEP_INTERVAL_SECS", 5u64)?,
                )?),
                sweep_grace: Duration::from_secs(var("OUTBOX_SWEEP_GRACE_SECS", 10u64)?),
                shutdown_timeout: Duration::from_secs(var("SHUTDOWN_TIMEOUT_SECS", 20u64)?),
                publish_retry_window: Duration::from_secs(positive(
                    "PUBLISH_RETRY_WINDOW_SECS",
                    var("PUBLISH_RETRY_WINDOW_SECS", 86_400u64)?,
                )?),
            },
            http_addr: var("HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            http_request_timeout,
            http_body_limit_bytes: positive(
                "HTTP_BODY_LIMIT_BYTES",
                var("HTTP_BODY_LIMIT_BYTES", 64 * 1024usize)?,
            )?,
            http_connections: HttpConnectionConfig::from_env(http_request_timeout)?,
            archive: {
                ArchiveSchedule {
                    cron: cron_var("ARCHIVE_CRON", "0 0 3 * * *")?,
                    older_than_days: var("ARCHIVE_OLDER_THAN_DAYS", 30u32)?,
                    chunk_size: positive(
                        "ARCHIVE_CHUNK_SIZE",
                        var("ARCHIVE_CHUNK_SIZE", 4000u32)?,
                    )?,
                }
            },
            retention: RetentionConfig {
                cron: cron_var("RETENTION_CRON", "0 */5 * * * *")?,
                finished_after: Duration::from_secs(
                    86_400 * positive("RETENTION_DAYS", var("RETENTION_DAYS", 7u64)?)?,
                ),
            },
            audit: AuditConfig {
                cron: cron_var("AUDIT_CRON", "0 17 * * * *")?,
                chunk_size: positive("AUDIT_CHUNK_SIZE", var("AUDIT_CHUNK_SIZE", 2000u32)?)?,
                notification_grace: Duration::from_secs(var(
                    "AUDIT_NOTIFICATION_GRACE_SECS",
                    300u64,
                )?),
            },
            jwt: JwtConfig {
                secret: jwt_secret,
                random_secret,
                issuer: var("JWT_ISSUER", "orderflow".to_string())?,
                audience: var("JWT_AUDIENCE", "orderflow-api".to_string())?,
                ttl: Duration::from_secs(positive("JWT_TTL_SECS", var("JWT_TTL_SECS", 3600u64)?)?),
            },
            admin_bootstrap: opt_var("ADMIN_EMAIL").zip(opt_var("ADMIN_PASSWORD")),
            log_format: var("LOG_FORMAT", LogFormat::Json)?,
            tracing: TracingConfig::from_env()?,
            orders: OrderLimits {
                max_items: positive("ORDER_MAX_ITEMS", var("ORDER_MAX_ITEMS", 50usize)?)?,
                max_quantity: positive("ORDER_MAX_QUANTITY", var("ORDER_MAX_QUANTITY", 1000i64)?)?,
            },
            order_batches: OrderBatchConfig::from_env(http_request_timeout)?,
            idempotency: IdempotencyConfig {
                retention: Duration::from_secs(
                    3600 * positive(
                        "IDEMPOTENCY_RETENTION_HOURS",
                        var("IDEMPOTENCY_RETENTION_HOURS", 24u64)?,
                    )?,
                ),
                in_flight_wait: Duration::from_secs(positive(
                    "IDEMPOTENCY_IN_FLIGHT_WAIT_SECS",
                    var("IDEMPOTENCY_IN_FLIGHT_WAIT_SECS", 5u64)?,
                )?),
            },
            login_throttle: LoginThrottleConfig::from_env()?,
            trace_ui: match opt_var("TRACE_UI_URL") {
                None => None,
                Some(url) => Some(url.trim().parse().map_err(|reason| ConfigError {
                    name: "TRACE_UI_URL",
                    value: url,
                    reason,
                })?),
            },
            console: ConsoleConfig {
                cookie_secure: var("CONSOLE_COOKIE_SECURE", true)?,
                session_idle: Duration::from_secs(positive(
                    "CONSOLE_SESSION_IDLE_SECS",
                    var("CONSOLE_SESSION_IDLE_SECS", 1800u64)?,
                )?),
                session_max: Duration::from_secs(positive(
                    "CONSOLE_SESSION_MAX_SECS",
                    var("CONSOLE_SESSION_MAX_SECS", 43_200u64)?,
                )?),
                refresh: Duration::from_secs(positive(
                    "CONSOLE_REFRESH_SECS",
                    var("CONSOLE_REFRESH_SECS", 5u64)?,
                )?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_case_insensitively() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("pretty".parse::<LogFormat>(), Ok(LogFormat::Pretty));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn a_trace_ui_url_needs_a_scheme_and_the_placeholder() {
        let url: TraceUiUrl = "http://localhost:16686/trace/{traceId}".parse().unwrap();
        assert_eq!(
            url.link("4bf92f3577b34da6a3ce929d0e0e4736"),
            "http://localhost:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!("localhost:16686/trace/{traceId}"
            .parse::<TraceUiUrl>()
            .is_err());
        assert!("http://localhost:16686/trace/"
            .parse::<TraceUiUrl>()
            .is_err());
    }

    #[test]
    fn short_published_or_placeholder_jwt_secrets_are_refused() {
        for refused in [
            "x".repeat(31),
            DEV_JWT_SECRET.to_owned(),
            "CHANGE-ME-PLACEHOLDER-NOT-A-REAL-SECRET".to_owned(),
            "dev-only-insecure-jwt-secret-change-me".to_owned(),
            "ChangeMe-0123456789abcdef0123456789abcdef".to_owned(),
            "my_placeholder_value_for_the_jwt_secret_here".to_owned(),
        ] {
            assert!(jwt_secret_refusal(&refused).is_some(), "{refused}");
        }
        assert_eq!(
            jwt_secret_refusal("q3J0Vb1n7m0o2ZP4c9yJb8w6T1sXr5LkA0eHdGfU2iM="),
            None
        );
    }

    #[test]
    fn zero_is_refused_where_a_positive_value_is_required() {
        let err = positive("ORDER_MAX_ITEMS", 0usize).unwrap_err();
        assert!(err.to_string().contains("ORDER_MAX_ITEMS"));
        assert_eq!(positive("ORDER_MAX_ITEMS", 3usize).unwrap(), 3);
    }
}
