//! Redis read-through cache for `product:{id}` and `product:list:{page}:{size}`.
//!
//! The cache is an optimisation, never a dependency: every call is bounded by a short
//! timeout, a failure is logged, counted (`cache_requests_total{result="error"}`) and
//! answered from the database, and after a failure Redis is bypassed for a second so a dead
//! or slow Redis costs one timeout per second rather than one per request.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redis::{aio::ConnectionManager, AsyncCommands};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Mutex;

use crate::telemetry::names;

const BYPASS_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Deletes the given product keys and every cached list page in one round trip.
const INVALIDATE_SCRIPT: &str = r#"
local pages = redis.call('SMEMBERS', KEYS[1])
for _, k in ipairs(pages) do redis.call('DEL', k) end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return #pages
"#;

#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<redis::Client>,
    /// Prepended to every key, so that deployments (or test runs) can share one Redis.
    prefix: String,
    conn: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    ttl: Duration,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not tried.
    bypass_until_ms: AtomicU64,
    script: redis::Script,
}

impl Cache {
    /// Never fails: a bad URL or an unreachable Redis only means every lookup is a miss.
    pub fn new(url: &str, prefix: &str, timeout: Duration, ttl: Duration) -> Self {
        let client = match redis::Client::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "REDIS_URL is invalid; the product cache is disabled");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_owned(),
                conn: Mutex::new(None),
                timeout,
                ttl,
                started: Instant::now(),
                bypass_until_ms: AtomicU64::new(0),
                script: redis::Script::new(INVALIDATE_SCRIPT),
            }),
        }
    }

    pub fn product_key(&self, id: i64) -> String {
        format!("{}product:{id}", self.inner.prefix)
    }

    pub fn list_key(&self, page: u32, size: u32) -> String {
        format!("{}product:list:{page}:{size}", self.inner.prefix)
    }

    /// The set of cached list-page keys, so that invalidation can find them all.
    fn list_index_key(&self) -> String {
        format!("{}product:list:index", self.inner.prefix)
    }

    fn now_ms(&self) -> u64 {
        self.inner.started.elapsed().as_millis() as u64
    }

    fn bypassed(&self) -> bool {
        self.now_ms() < self.inner.bypass_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, op: &str, err: &dyn std::fmt::Display) {
        metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
        tracing::warn!(op, error = %err, "redis unavailable; answering from the database");
        let until = self.now_ms() + BYPASS_AFTER_ERROR.as_millis() as u64;
        self.inner.bypass_until_ms.store(until, Ordering::Relaxed);
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

    /// Runs one Redis operation within the timeout; `None` on any failure (already logged).
    async fn run<T, F, Fut>(&self, op: &str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        if self.inner.client.is_none() || self.bypassed() {
            return None;
        }
        let work = async {
            let conn = self.connection().await?;
            f(conn).await
        };
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.failed(op, &e);
                None
            }
            Err(_) => {
                self.failed(op, &"timed out");
                None
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let raw: Option<String> = self
            .run("get", |mut c| async move { c.get(key).await })
            .await
            .flatten();
        let value = raw.and_then(|s| serde_json::from_str(&s).ok());
        let result = if value.is_some() { "hit" } else { "miss" };
        metrics::counter!(names::CACHE_REQUESTS, "result" => result).increment(1);
        value
    }

    pub async fn put<T: Serialize>(&self, key: &str, value: &T) {
        let Ok(json) = serde_json::to_string(value) else {
            return;
        };
        let ttl = self.inner.ttl.as_secs().max(1);
        let index = self.list_index_key();
        let is_list = key.starts_with(&index[..index.len() - "index".len()]);
        self.run("set", |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.set_ex(key, json, ttl).ignore();
            if is_list {
                pipe.sadd(index, key).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await;
    }

    /// Drops the entries of these products and every cached list page.
    pub async fn invalidate_products(&self, ids: &[i64]) {
        let script = &self.inner.script;
        let index = self.list_index_key();
        let keys: Vec<String> = ids.iter().map(|id| self.product_key(*id)).collect();
        self.run("invalidate", |mut c| async move {
            let mut inv = script.key(index);
            for key in keys {
                inv.key(key);
            }
            inv.invoke_async::<i64>(&mut c).await
        })
        .await;
    }

    /// For health reporting: can Redis answer a PING right now?
    pub async fn ping(&self) -> bool {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .is_some()
    }
}
