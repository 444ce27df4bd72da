//! Connection pool, database creation and migrations. The classification of MySQL errors
//! (duplicate key, lock wait, deadlock, unreachable) lives with the jobs, which share it.

use std::{str::FromStr, time::Duration};

use sqlx::{
    mysql::{MySqlConnectOptions, MySqlPoolOptions},
    ConnectOptions, Connection, Executor, MySqlPool,
};

pub use orderflow_jobs::engine::sql_error::{
    is_deadlock, is_lock_wait_timeout, is_unavailable, is_unique_violation, mysql_code,
};
pub use orderflow_sql_script::{Part, Script, ScriptError, ScriptTx};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long a request waits for a free connection before it is answered with 503.
    pub acquire_timeout: Duration,
    /// Bounds every row-lock wait of the session, so a request stuck behind another one
    /// fails fast (and is mapped to a clear answer) instead of holding a connection for 50 s.
    pub lock_wait_timeout: Duration,
}

/// The database named in `mysql://host/db?x`, checked to be a plain identifier because it is
/// spliced into CREATE/DROP DATABASE (identifiers cannot be bound as parameters).
fn database_name(url: &str) -> Result<String, sqlx::Error> {
    let opts = MySqlConnectOptions::from_str(url)?;
    let name = opts.get_database().unwrap_or_default();
    if !is_safe_identifier(name) {
        return Err(sqlx::Error::Configuration(
            format!(
                "DATABASE_URL must name a database matching [A-Za-z0-9_$]{{1,64}}, got {name:?}"
            )
            .into(),
        ));
    }
    Ok(name.to_owned())
}

/// A connection to the server itself, for statements about databases.
async fn server_connection(url: &str) -> Result<sqlx::MySqlConnection, sqlx::Error> {
    MySqlConnectOptions::from_str(url)?
        .database("mysql")
        .connect()
        .await
}

fn is_safe_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// Creates the database named in `url` when it does not exist yet.
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    let name = database_name(url)?;
    let mut conn = server_connection(url).await?;
    conn.execute(format!("CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci").as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

/// Drops the database named in `url` (used by the test harness for its throwaway databases).
pub async fn drop_database(url: &str) -> Result<(), sqlx::Error> {
    let name = database_name(url)?;
    let mut conn = server_connection(url).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS `{name}`").as_str())
        .await?;
    conn.close().await?;
    Ok(())
}

pub async fn connect(url: &str, settings: &PoolSettings) -> Result<MySqlPool, sqlx::Error> {
    connect_with(MySqlConnectOptions::from_str(url)?, settings).await
}

/// The service's pool for `opts` (also what bench/ measures its raw-SQL ceiling with).
pub async fn connect_with(
    opts: MySqlConnectOptions,
    settings: &PoolSettings,
) -> Result<MySqlPool, sqlx::Error> {
    let opts = opts.log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1));
    let lock_wait = settings.lock_wait_timeout.as_secs().max(1);
    MySqlPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // READ COMMITTED: a retry inside the order transaction must see the stock
                // version another transaction just committed (REPEATABLE READ would keep
                // re-reading its first snapshot), and it takes no gap locks.
                conn.execute(
                    format!(
                        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
                         SET SESSION innodb_lock_wait_timeout = {lock_wait}"
                    )
                    .as_str(),
                )
                .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
}

impl PoolSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_connections: config.database_max_connections,
            acquire_timeout: config.database_acquire_timeout,
            lock_wait_timeout: config.idempotency.in_flight_wait,
        }
    }

    /// A small pool for one-shot commands (migrate, users promote).
    pub fn for_command(config: &crate::config::Config) -> Self {
        Self {
            max_connections: 2,
            ..Self::from_config(config)
        }
    }
}

pub async fn migrate(pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Readiness: one round trip on a pooled connection.
pub async fn ping(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    conn.ping().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_split_from_the_url() {
        let name =
            database_name("mysql://root@127.0.0.1:3306/orderflow_x?ssl-mode=disabled").unwrap();
        assert_eq!(name, "orderflow_x");
        assert!(database_name("mysql://root@127.0.0.1:3306").is_err());
        assert!(database_name("mysql://root@127.0.0.1:3306/a-b").is_err());
    }

    #[test]
    fn only_plain_identifiers_are_created_or_dropped() {
        assert!(is_safe_identifier("orderflow_test_1"));
        assert!(!is_safe_identifier("x`; DROP DATABASE mysql; --"));
        assert!(!is_safe_identifier(""));
    }
}
