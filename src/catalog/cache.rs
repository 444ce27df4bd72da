//! Redis read-through cache for `product:{id}` and `product:list:{page}:{size}`.
//!
//! The cache is an optimisation, never a dependency: Redis is reached through
//! `OptionalRedis` (bounded calls, bypassed for a second after a failure), and a failure is
//! logged, counted (`cache_requests_total{result="error"}`) and answered from the database.

use std::{sync::Arc, time::Duration};

use redis::{aio::ConnectionManager, AsyncCommands};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    optional_redis::{OptionalRedis, Unavailable},
    telemetry::names,
};

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
    redis: OptionalRedis,
    /// Prepended to every key, so that deployments (or test runs) can share one Redis.
    prefix: String,
    ttl: Duration,
    script: redis::Script,
}

impl Cache {
    /// Never fails: a bad URL or an unreachable Redis only means every lookup is a miss.
    pub fn new(url: &str, prefix: &str, timeout: Duration, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                redis: OptionalRedis::new(url, timeout, "the product cache is disabled"),
                prefix: prefix.to_owned(),
                ttl,
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

    /// One Redis round trip; `None` on any failure (logged and counted when Redis was tried).
    async fn run<T, F, Fut>(&self, op: &str, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match self.inner.redis.run(f).await {
            Ok(v) => Some(v),
            Err(Unavailable::Bypassed) => None,
            Err(Unavailable::Failed(error)) => {
                metrics::counter!(names::CACHE_REQUESTS, "result" => "error").increment(1);
                tracing::warn!(op, %error, "redis unavailable; answering from the database");
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
