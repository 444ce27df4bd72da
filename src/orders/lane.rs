//! The lanes' own connections to the database, and what a lane does when one of them fails.
//!
//! A lane keeps one connection of a pool of their own, so that other work holding every
//! connection of the service's pool never stands between an order and its commit. Its
//! session waits at most `lock_wait` for any lock — a row, a table's metadata, a global read
//! lock (`FLUSH TABLES WITH READ LOCK`) — and the batch bounds each round trip on the client
//! side as well (`batch::commit`'s `until`), so a server that stops answering without closing
//! the connection cannot hold a lane.
//!
//! A connection that failed, or whose round trip was abandoned, is dropped and its session
//! killed on the server from a new connection: a session left waiting for a lock there would
//! otherwise run its statements when the lock is released, and hold a connection slot until
//! then. When the batch's COMMIT was sent and its answer lost, the lane waits until that
//! session is gone and then reads what it committed (`kill_and_read`).

use std::{collections::HashMap, str::FromStr, time::Duration};

use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
    pool::PoolConnection,
    ConnectOptions, Connection, Executor, MySql, MySqlConnection, MySqlPool, Row,
};
use tokio::time::Instant;

use crate::{
    catalog::stock,
    db::Script,
    idempotency::{self, StoredResponse},
};

/// A lane's connection and the server's id for its session.
pub struct Held {
    pub conn: PoolConnection<MySql>,
    pub session: u64,
}

pub struct LaneDb {
    pool: MySqlPool,
    server: MySqlConnectOptions,
}

/// How often a killed session is looked for until it is gone.
const GONE_POLL: Duration = Duration::from_millis(20);

/// A discarded session is killed within this, in the background.
const KILL_BOUND: Duration = Duration::from_secs(10);

impl LaneDb {
    /// The lanes' pool for `url` (no connection is made before a lane needs one).
    pub fn new(url: &str, lanes: usize, lock_wait: Duration) -> Result<Self, sqlx::Error> {
        let server = MySqlConnectOptions::from_str(url)?
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1));
        let secs = lock_wait.as_secs().max(1);
        let pool = MySqlPoolOptions::new()
            .max_connections(lanes.max(1) as u32)
            .min_connections(0)
            // A lane bounds its own wait (`acquire`); a held connection is not pinged before
            // each batch: a failure on the batch's first read costs a reconnect, not a refusal.
            .acquire_timeout(Duration::from_secs(3600))
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // READ COMMITTED as in the service's pool (db.rs); `lock_wait_timeout`
                    // bounds metadata and global read lock waits, `innodb_` row lock waits.
                    conn.execute(
                        format!(
                            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                             SET SESSION innodb_lock_wait_timeout = {secs}; \
                             SET SESSION lock_wait_timeout = {secs}"
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(server.clone());
        Ok(Self { pool, server })
    }

    /// A connection for a lane, by `until`.
    pub async fn acquire(&self, until: Instant) -> Result<Held, sqlx::Error> {
        let connect = async {
            let mut conn = self.pool.acquire().await?;
            let session: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&mut *conn)
                .await?;
            Ok(Held { conn, session })
        };
        tokio::time::timeout_at(until, connect)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }

    /// Drops a connection that failed or was abandoned, and kills its session in the
    /// background.
    pub fn discard(&self, held: Held) {
        let session = held.session;
        drop(held.conn.detach());
        let server = self.server.clone();
        tokio::spawn(async move {
            let until = Instant::now() + KILL_BOUND;
            if let Err(e) = kill(&server, session, until).await {
                tracing::warn!(error = %e, session, "could not kill an abandoned order lane session");
            }
        });
    }

    /// Drops a connection whose COMMIT may have run, waits (by `until`) until its session is
    /// gone from the server — after that, what it committed is all it ever will — and reads
    /// the records of `keys`.
    pub async fn kill_and_read(
        &self,
        held: Held,
        keys: &[idempotency::KeyOf<'_>],
        until: Instant,
    ) -> Result<HashMap<(i64, String), StoredResponse>, sqlx::Error> {
        let session = held.session;
        drop(held.conn.detach());
        let mut conn = kill(&self.server, session, until).await?;
        let mut users: Vec<i64> = keys.iter().map(|(u, _)| *u).collect();
        users.sort_unstable();
        users.dedup();
        loop {
            let read = idempotency::accounts_and_records(&mut conn, &users, keys);
            match tokio::time::timeout_at(until, read).await {
                Ok(Ok((_, records))) => return Ok(records),
                Ok(Err(e)) if Instant::now() + GONE_POLL >= until => return Err(e),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading what an order batch committed; trying again");
                    tokio::time::sleep(GONE_POLL).await;
                    if e.as_database_error().is_none() {
                        conn = kill(&self.server, session, until).await?;
                    }
                }
                Err(_) => return Err(sqlx::Error::PoolTimedOut),
            }
        }
    }

    /// Whether a transaction that writes can commit now: one that changes nothing, but
    /// takes the locks every batch takes first (a global read lock stops it as it stops
    /// them). Run while the lanes are stalled and idle, so that readiness comes back as
    /// soon as orders can be committed, with no order risked on it.
    pub async fn probe(&self, held: &mut Held, until: Instant) -> Result<(), sqlx::Error> {
        let mut script = Script::default();
        script.statement(&[crate::db::Part::Sql("START TRANSACTION")]);
        stock::push_probe(&mut script);
        script.statement(&[crate::db::Part::Sql("COMMIT")]);
        let run = async {
            let result = script.run(&mut held.conn).await;
            if result.is_err() {
                held.conn.execute("ROLLBACK").await?;
            }
            result.map(|_| ()).map_err(|e| e.error)
        };
        tokio::time::timeout_at(until, run)
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    }
}

/// Kills `session` from a new connection and waits until the server has let it go; the
/// connection is returned for what comes next. A failure on the way (the server busy, a
/// connection refused) is tried again until `until`.
async fn kill(
    server: &MySqlConnectOptions,
    session: u64,
    until: Instant,
) -> Result<MySqlConnection, sqlx::Error> {
    loop {
        match tokio::time::timeout_at(until, kill_once(server, session)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) if Instant::now() + GONE_POLL >= until => return Err(e),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, session, "killing an order lane session; trying again");
                tokio::time::sleep(GONE_POLL).await;
            }
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
    }
}

async fn kill_once(
    server: &MySqlConnectOptions,
    session: u64,
) -> Result<MySqlConnection, sqlx::Error> {
    let mut conn = MySqlConnection::connect_with(server).await?;
    match conn
        .execute(format!("KILL CONNECTION {session}").as_str())
        .await
    {
        Ok(_) => {}
        // ER_NO_SUCH_THREAD: it is gone already.
        Err(e) if crate::db::mysql_code(&e) == Some(1094) => {}
        Err(e) => return Err(e),
    }
    // SHOW PROCESSLIST rather than information_schema, whose query builds a temporary table.
    loop {
        let sessions = sqlx::query("SHOW PROCESSLIST").fetch_all(&mut conn).await?;
        let alive = sessions
            .iter()
            .any(|row| row.try_get::<u64, _>("Id").ok() == Some(session));
        if !alive {
            return Ok(conn);
        }
        tokio::time::sleep(GONE_POLL).await;
    }
}
