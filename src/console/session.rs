//! The console's sessions: tower-sessions does the cookie (HttpOnly, SameSite=Strict, Secure
//! unless `CONSOLE_COOKIE_SECURE=false`), the id (128 random bits), the idle expiry
//! (`CONSOLE_SESSION_IDLE_SECS`, moved forward on every request) and the id's renewal at
//! sign-in; this stores the records in `console_sessions`, which every replica shares.
//!
//! Only the SHA-256 of a session id is stored: a copy of the table signs no one in. Expired
//! rows are refused on load and purged by the retention job ([`ExpiredConsoleSessions`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use orderflow_jobs::retention::Expiring;
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use tower_sessions::{
    cookie::{time, SameSite},
    session::{Id, Record},
    session_store::{self, SessionStore},
    Expiry, SessionManagerLayer,
};

use crate::config::ConsoleConfig;

pub const COOKIE: &str = "orderflow_console";

#[derive(Debug, Clone)]
pub struct ConsoleSessionStore {
    pool: MySqlPool,
}

impl ConsoleSessionStore {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }
}

fn key(id: &Id) -> String {
    hex::encode(Sha256::digest(id.to_string().as_bytes()))
}

fn expires_at(record: &Record) -> DateTime<Utc> {
    DateTime::from_timestamp(record.expiry_date.unix_timestamp(), 0).unwrap_or_default()
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn encode(record: &Record) -> session_store::Result<String> {
    serde_json::to_string(record).map_err(|e| session_store::Error::Encode(e.to_string()))
}

#[async_trait]
impl SessionStore for ConsoleSessionStore {
    /// A new session; on the (2^-128) chance its id is taken, another id.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            let inserted = sqlx::query(
                "INSERT INTO console_sessions (id_hash, data, expires_at) VALUES (?, ?, ?)",
            )
            .bind(key(&record.id))
            .bind(encode(record)?)
            .bind(expires_at(record))
            .execute(&self.pool)
            .await;
            match inserted {
                Ok(_) => return Ok(()),
                Err(e) if crate::db::is_unique_violation(&e) => record.id = Id::default(),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, data, expires_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE data = VALUES(data), expires_at = VALUES(expires_at)",
        )
        .bind(key(&record.id))
        .bind(encode(record)?)
        .bind(expires_at(record))
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let data: Option<String> = sqlx::query_scalar(
            "SELECT data FROM console_sessions WHERE id_hash = ? AND expires_at > CURRENT_TIMESTAMP",
        )
        .bind(key(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        data.map(|d| {
            serde_json::from_str(&d).map_err(|e| session_store::Error::Decode(e.to_string()))
        })
        .transpose()
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query("DELETE FROM console_sessions WHERE id_hash = ?")
            .bind(key(id))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// The session layer of the console's routes.
pub fn layer(pool: &MySqlPool, config: &ConsoleConfig) -> SessionManagerLayer<ConsoleSessionStore> {
    let idle = time::Duration::seconds(config.session_idle.as_secs() as i64);
    SessionManagerLayer::new(ConsoleSessionStore::new(pool.clone()))
        .with_name(COOKIE)
        .with_path("/console")
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_secure(config.cookie_secure)
        .with_expiry(Expiry::OnInactivity(idle))
        // Every request moves the idle expiry forward, not only those that change the session.
        .with_always_save(true)
}

/// Expired console sessions, one of the kinds the retention job purges.
pub struct ExpiredConsoleSessions;

impl Expiring for ExpiredConsoleSessions {
    fn kind(&self) -> &'static str {
        "console_sessions"
    }

    fn purge_batch<'a>(
        &'a self,
        pool: &'a MySqlPool,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM console_sessions WHERE expires_at <= CURRENT_TIMESTAMP LIMIT ?",
            )
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_stored_under_the_hash_of_its_id_only() {
        let id = Id::default();
        let k = key(&id);
        assert_eq!(k.len(), 64);
        assert!(!k.contains(&id.to_string()));
        assert_eq!(k, key(&id));
        assert_ne!(k, key(&Id::default()));
    }
}
