//! A Redis connection for things Redis only speeds up or protects, never a dependency (the
//! product cache, the login throttle): every call is bounded by `REDIS_TIMEOUT_MS`, and after
//! a failure Redis is bypassed for a second, so a dead or slow Redis costs one timeout per
//! second rather than one per request. What a failure means is the caller's business.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

const BYPASS_AFTER_ERROR: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct OptionalRedis {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<redis::Client>,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not tried.
    bypass_until_ms: AtomicU64,
}

/// Why a call did not reach Redis or did not come back.
#[derive(Debug)]
pub enum Unavailable {
    /// No valid URL, or a recent failure: Redis was not tried.
    Bypassed,
    /// This call failed or timed out; Redis is bypassed for a while.
    Failed(String),
}

impl OptionalRedis {
    /// Never fails: a bad URL only means every call is `Bypassed` (logged here, once).
    pub fn new(url: &str, timeout: Duration, what_is_lost: &str) -> Self {
        let client = match redis::Client::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "REDIS_URL is invalid; {what_is_lost}");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                client,
                conn: Mutex::new(None),
                timeout,
                started: Instant::now(),
                bypass_until_ms: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut guard = self.inner.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(conn.clone());
        }
        let client = self.inner.client.clone().ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no valid REDIS_URL"))
        })?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(self.inner.timeout)
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// One Redis round trip within the timeout.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        if self.inner.client.is_none()
            || self.now_ms() < self.inner.bypass_until_ms.load(Ordering::Relaxed)
        {
            return Err(Unavailable::Bypassed);
        }
        let work = async {
            let conn = self.connection().await?;
            f(conn).await
        };
        let error = match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        let until = self.now_ms() + BYPASS_AFTER_ERROR.as_millis() as u64;
        self.inner.bypass_until_ms.store(until, Ordering::Relaxed);
        Err(Unavailable::Failed(error))
    }
}
