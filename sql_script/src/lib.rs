//! Statements sent to the server together, in one round trip, each with its own result (rows
//! affected, last insert id), and transactions whose `START TRANSACTION` and `COMMIT` travel
//! with the statements around them.
//!
//! A round trip costs both sides a wake-up and a few system calls whatever the statement does;
//! the order path's batches (`orders::batch` in the service) are a handful of them instead of
//! a few per order. Prepared statements cannot be sent together, so the values are written into
//! the text — only as integer, timestamp or hexadecimal literals (`X'…'`, the bytes of a
//! string), none of which has a quote or an escape to get wrong: text from a client cannot
//! change what a statement says, whatever the session's `sql_mode`.

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sqlx::{mysql::MySqlQueryResult, pool::PoolConnection, MySql, MySqlConnection};

/// Statements to run in order, in one round trip.
#[derive(Debug, Default)]
pub struct Script {
    sql: String,
    statements: usize,
}

/// A piece of a statement: SQL we wrote, or a value written as a literal that needs no quoting.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    Sql(&'a str),
    Int(i64),
    OptInt(Option<i64>),
    /// A `DATETIME(6)` value, UTC.
    Time(DateTime<Utc>),
    /// A string, as its UTF-8 bytes in a hexadecimal literal.
    Text(&'a str),
    OptText(Option<&'a str>),
}

/// The statement a script stopped at, and why; the statements before it ran.
#[derive(Debug, thiserror::Error)]
#[error("statement {statement} of a script failed: {error}")]
pub struct ScriptError {
    pub statement: usize,
    #[source]
    pub error: sqlx::Error,
}

impl Script {
    pub fn statement(&mut self, parts: &[Part<'_>]) {
        use std::fmt::Write;
        for part in parts {
            match *part {
                Part::Sql(s) => self.sql.push_str(s),
                Part::Int(n) => write!(self.sql, "{n}").expect("writing to a String"),
                Part::OptInt(None) | Part::OptText(None) => self.sql.push_str("NULL"),
                Part::OptInt(Some(n)) => write!(self.sql, "{n}").expect("writing to a String"),
                Part::Time(t) => write!(self.sql, "'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f"))
                    .expect("writing to a String"),
                Part::Text(s) | Part::OptText(Some(s)) => {
                    // By table: `write!` per byte was ~3 % of the service's CPU in a spread
                    // profile (bench/results/20261208-spread-profile-*.txt), most of it fmt.
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    self.sql.reserve(s.len() * 2 + 3);
                    self.sql.push_str("X'");
                    for &b in s.as_bytes() {
                        self.sql.push(char::from(HEX[usize::from(b >> 4)]));
                        self.sql.push(char::from(HEX[usize::from(b & 0x0F)]));
                    }
                    self.sql.push('\'');
                }
            }
        }
        self.sql.push_str(";\n");
        self.statements += 1;
    }

    pub fn len(&self) -> usize {
        self.statements
    }

    pub fn is_empty(&self) -> bool {
        self.statements == 0
    }

    /// Runs the statements in order. The server stops at the first that fails, and so does
    /// this; the transaction around it decides what happens to the ones before.
    pub async fn run(
        &self,
        conn: &mut MySqlConnection,
    ) -> Result<Vec<MySqlQueryResult>, ScriptError> {
        let mut results = Vec::with_capacity(self.statements);
        if self.is_empty() {
            return Ok(results);
        }
        let mut stream = sqlx::raw_sql(&self.sql).execute_many(conn);
        while let Some(item) = stream.next().await {
            match item {
                Ok(done) => results.push(done),
                Err(error) => {
                    return Err(ScriptError {
                        statement: results.len(),
                        error,
                    })
                }
            }
        }
        if results.len() != self.statements {
            return Err(ScriptError {
                statement: results.len(),
                error: sqlx::Error::Protocol(format!(
                    "a script of {} statements returned {} results",
                    self.statements,
                    results.len()
                )),
            });
        }
        Ok(results)
    }

    fn wrapped(&self, before: &str, after: &str) -> Script {
        Script {
            sql: format!("{before}{}{after}", self.sql),
            statements: self.statements
                + usize::from(!before.is_empty())
                + usize::from(!after.is_empty()),
        }
    }
}

/// A transaction driven by scripts: `begin` sends `START TRANSACTION` with the first script,
/// `commit` sends `COMMIT` after the last, saving both their round trips. If it is dropped
/// while open — an error not rolled back, a cancelled future, a panic — its connection is
/// closed instead of going back to the pool, and the server rolls the transaction back: no
/// later user of the pool can find itself inside it.
pub struct ScriptTx<'c> {
    conn: &'c mut PoolConnection<MySql>,
    open: bool,
}

impl<'c> ScriptTx<'c> {
    pub fn new(conn: &'c mut PoolConnection<MySql>) -> Self {
        Self { conn, open: false }
    }

    /// Starts the transaction and runs `script` in it; the results are the script's.
    pub async fn begin(&mut self, script: &Script) -> Result<Vec<MySqlQueryResult>, ScriptError> {
        self.open = true;
        let mut results = self
            .run_raw(&script.wrapped("START TRANSACTION;\n", ""), 1)
            .await?;
        results.remove(0);
        Ok(results)
    }

    /// Runs `script` in the transaction.
    pub async fn run(&mut self, script: &Script) -> Result<Vec<MySqlQueryResult>, ScriptError> {
        script.run(self.conn).await
    }

    /// The connection, for statements with bound parameters inside the transaction.
    pub fn conn(&mut self) -> &mut MySqlConnection {
        self.conn
    }

    /// Runs `script` and commits; the results are the script's. If a statement of the script
    /// fails, the transaction is still open (roll it back).
    pub async fn commit(&mut self, script: &Script) -> Result<Vec<MySqlQueryResult>, ScriptError> {
        let mut results = self.run_raw(&script.wrapped("", "COMMIT;\n"), 0).await?;
        results.pop();
        self.open = false;
        Ok(results)
    }

    /// Rolls the transaction back; if that fails, the connection is closed when dropped.
    pub async fn rollback(&mut self) {
        let mut rollback = Script::default();
        rollback.statement(&[Part::Sql("ROLLBACK")]);
        if rollback.run(self.conn).await.is_ok() {
            self.open = false;
        }
    }

    /// `skip` leading statements are ours (START TRANSACTION): an index in an error counts
    /// the caller's statements only.
    async fn run_raw(
        &mut self,
        script: &Script,
        skip: usize,
    ) -> Result<Vec<MySqlQueryResult>, ScriptError> {
        script.run(self.conn).await.map_err(|mut e| {
            e.statement = e.statement.saturating_sub(skip);
            e
        })
    }
}

impl Drop for ScriptTx<'_> {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_literals_that_need_no_quoting() {
        let t = DateTime::parse_from_rfc3339("2026-11-30T15:32:46.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut s = Script::default();
        s.statement(&[
            Part::Sql("SELECT "),
            Part::Int(-42),
            Part::Sql(", "),
            Part::Time(t),
            Part::Sql(", "),
            Part::Text("a'b\\c é"),
            Part::Sql(", "),
            Part::OptText(None),
            Part::Sql(", "),
            Part::OptInt(Some(7)),
        ]);
        s.statement(&[Part::Sql("SELECT 1")]);
        assert_eq!(
            s.sql,
            "SELECT -42, '2026-11-30 15:32:46.123456', X'6127625C6320C3A9', NULL, 7;\nSELECT 1;\n"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn every_byte_of_a_text_is_two_upper_case_hex_digits() {
        let text: String = (1u32..0x800).filter_map(char::from_u32).collect();
        let mut s = Script::default();
        s.statement(&[Part::Text(&text)]);
        let expected: String = text.bytes().map(|b| format!("{b:02X}")).collect();
        assert_eq!(s.sql, format!("X'{expected}';\n"));
    }

    #[test]
    fn a_wrapped_script_counts_its_added_statements() {
        let mut s = Script::default();
        s.statement(&[Part::Sql("SELECT 1")]);
        let w = s.wrapped("START TRANSACTION;\n", "COMMIT;\n");
        assert_eq!(w.len(), 3);
        assert_eq!(w.sql, "START TRANSACTION;\nSELECT 1;\nCOMMIT;\n");
    }
}
