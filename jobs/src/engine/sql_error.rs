//! What a database error means to the code that must decide whether to try again. The
//! service's request path (a deadlocked order transaction is run again) and the job workers
//! (a fetch InnoDB rolled back is tried again) share one reading of the MySQL error numbers.

const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

/// The server's error number (e.g. 1205), for a database error.
pub fn mysql_code(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

/// A UNIQUE or PRIMARY KEY violation.
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub fn is_lock_wait_timeout(err: &sqlx::Error) -> bool {
    mysql_code(err) == Some(ER_LOCK_WAIT_TIMEOUT)
}

/// InnoDB chose this transaction as a deadlock victim and rolled all of it back.
pub fn is_deadlock(err: &sqlx::Error) -> bool {
    mysql_code(err) == Some(ER_LOCK_DEADLOCK)
}

/// The database cannot be reached or the pool is exhausted: "try again later", not a bug.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || is_lock_wait_timeout(err)
        || is_deadlock(err)
}

/// A statement that failed only because of what ran beside it (a lock conflict, a busy pool,
/// a dropped connection): the same statement can succeed a moment later. Narrower than
/// [`is_unavailable`]: a closed pool (shutdown) or a protocol error is not worth repeating.
pub fn is_transient(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        || is_lock_wait_timeout(err)
        || is_deadlock(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_pool_is_transient_and_a_closed_one_is_not() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::PoolClosed));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        assert!(!is_transient(&sqlx::Error::Protocol("bad row".into())));
        assert!(!is_deadlock(&sqlx::Error::RowNotFound));
    }
}
