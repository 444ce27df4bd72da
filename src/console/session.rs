//! The console's sessions: tower-sessions does the cookie (HttpOnly, SameSite=Strict, Secure
//! unless `CONSOLE_COOKIE_SECURE=false`, no Max-Age: the server decides when it ends), the id
//! (128 random bits) and its renewal at sign-in; this stores the records in
//! `console_sessions`, which every replica shares (docs/adr/0023-console-sessions.md).
//!
//! * A row exists only for a signed-in operator: the sign-in form's CSRF token lives in a
//!   cookie of its own (`sign_in`), so an anonymous visit writes nothing.
//! * A session ends at the first of its idle expiry (`expires_at`,
//!   `CONSOLE_SESSION_IDLE_SECS` after the operator last did something) and its absolute end
//!   (`ends_at`, `CONSOLE_SESSION_MAX_SECS` after sign-in, which nothing moves).
//! * Reading a page writes nothing on the way: the idle expiry is moved forward by
//!   [`touch_later`], off the request, at most every [`touch_step`], and only for what the
//!   operator does — a page refreshing itself is not activity.
//!
//! Only the SHA-256 of a session id is stored: a copy of the table signs no one in. Expired
//! rows are refused on load and purged by the retention job ([`EXPIRED_SESSIONS`]).

use std::time::Duration;

use async_trait::async_trait;
use orderflow_jobs::retention::ExpiredRows;
use sha2::{Digest, Sha256};
use sqlx::MySqlPool;
use tower_sessions::{
    cookie::SameSite,
    session::{Id, Record},
    session_store::{self, SessionStore},
    Expiry, SessionManagerLayer,
};

use crate::config::ConsoleConfig;

pub const COOKIE: &str = "orderflow_console";

/// Put in a loaded session's data by the store (never stored): the seconds left before its
/// idle expiry, by the database's clock.
pub const IDLE_LEFT: &str = "idle_left_secs";

/// How long a background touch may wait for the database before it gives up.
const TOUCH_BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ConsoleSessionStore {
    pool: MySqlPool,
    /// The idle expiry given at sign-in (no longer than the lifetime).
    first_idle_secs: i64,
    max_secs: i64,
}

impl ConsoleSessionStore {
    pub fn new(pool: MySqlPool, config: &ConsoleConfig) -> Self {
        Self {
            pool,
            first_idle_secs: config.session_idle.min(config.session_max).as_secs() as i64,
            max_secs: config.session_max.as_secs() as i64,
        }
    }
}

fn key(id: &Id) -> String {
    hex::encode(Sha256::digest(id.to_string().as_bytes()))
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn encode(record: &Record) -> session_store::Result<String> {
    let mut data = record.data.clone();
    data.remove(IDLE_LEFT);
    serde_json::to_string(&Record {
        data,
        ..record.clone()
    })
    .map_err(|e| session_store::Error::Encode(e.to_string()))
}

/// A new row: idle expiry and absolute end counted from now.
const INSERT: &str = "INSERT INTO console_sessions (id_hash, data, expires_at, ends_at) \
     VALUES (?, ?, NOW(6) + INTERVAL ? SECOND, NOW(6) + INTERVAL ? SECOND)";

#[async_trait]
impl SessionStore for ConsoleSessionStore {
    /// A new session (a sign-in); on the (2^-128) chance its id is taken, another id.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            let inserted = sqlx::query(INSERT)
                .bind(key(&record.id))
                .bind(encode(record)?)
                .bind(self.first_idle_secs)
                .bind(self.max_secs)
                .execute(&self.pool)
                .await;
            match inserted {
                Ok(_) => return Ok(()),
                Err(e) if crate::db::is_unique_violation(&e) => record.id = Id::default(),
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// A changed session's data; its expiries are not moved.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        sqlx::query(&format!(
            "{INSERT} ON DUPLICATE KEY UPDATE data = VALUES(data)"
        ))
        .bind(key(&record.id))
        .bind(encode(record)?)
        .bind(self.first_idle_secs)
        .bind(self.max_secs)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT data, TIMESTAMPDIFF(SECOND, NOW(6), expires_at) FROM console_sessions \
             WHERE id_hash = ? AND expires_at > NOW(6) AND ends_at > NOW(6)",
        )
        .bind(key(id))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|(data, idle_left)| {
            let mut record: Record = serde_json::from_str(&data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?;
            record.data.insert(IDLE_LEFT.into(), idle_left.into());
            Ok(record)
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

/// How far the idle expiry may lag behind the operator's last action: a touch is due once
/// this much of the idle period has passed (a quarter of it, at most a minute).
pub fn touch_step(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

/// Whether a session with `idle_left` seconds before its idle expiry is due a touch.
pub fn touch_due(idle_left: i64, idle: Duration) -> bool {
    idle_left < (idle - touch_step(idle)).as_secs() as i64
}

/// Moves the session's idle expiry to `idle` from now (never past its absolute end), in the
/// background: the page that asked for it does not wait, and while the database refuses
/// writes the touch gives up after [`TOUCH_BOUND`] (its connection is closed rather than
/// handed back still waiting).
pub fn touch_later(pool: MySqlPool, id: Id, idle: Duration) {
    tokio::spawn(async move {
        let Ok(Ok(mut conn)) = tokio::time::timeout(TOUCH_BOUND, pool.acquire()).await else {
            tracing::warn!("console session not touched: no database connection in time");
            return;
        };
        let touched = tokio::time::timeout(
            TOUCH_BOUND,
            sqlx::query(
                "UPDATE console_sessions SET expires_at = LEAST(ends_at, NOW(6) + INTERVAL ? SECOND) \
                 WHERE id_hash = ? AND expires_at > NOW(6)",
            )
            .bind(idle.as_secs() as i64)
            .bind(key(&id))
            .execute(&mut *conn),
        )
        .await;
        match touched {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "console session not touched"),
            Err(_) => {
                tracing::warn!(
                    "console session not touched: the database did not take the write in time"
                );
                drop(conn.detach());
            }
        }
    });
}

/// The session layer of the console's routes.
pub fn layer(pool: &MySqlPool, config: &ConsoleConfig) -> SessionManagerLayer<ConsoleSessionStore> {
    SessionManagerLayer::new(ConsoleSessionStore::new(pool.clone(), config))
        .with_name(COOKIE)
        .with_path("/console")
        .with_http_only(true)
        .with_same_site(SameSite::Strict)
        .with_secure(config.cookie_secure)
        // The cookie lasts as long as the browser; when the session is over is the server's
        // to say (its idle expiry and absolute end), and it is only saved when it changes.
        .with_expiry(Expiry::OnSessionEnd)
        .with_always_save(false)
}

/// Expired console sessions, one of the kinds the retention job purges.
pub const EXPIRED_SESSIONS: ExpiredRows = ExpiredRows {
    kind: "console_sessions",
    delete: "DELETE FROM console_sessions WHERE expires_at <= CURRENT_TIMESTAMP LIMIT ?",
    retention: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_is_due_once_a_quarter_of_the_idle_period_has_passed_at_most_a_minute() {
        let idle = Duration::from_secs(1800);
        assert_eq!(touch_step(idle), Duration::from_secs(60));
        assert!(!touch_due(1790, idle));
        assert!(touch_due(1730, idle));
        let short = Duration::from_secs(8);
        assert_eq!(touch_step(short), Duration::from_secs(2));
        assert!(!touch_due(7, short));
        assert!(touch_due(5, short));
    }

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
