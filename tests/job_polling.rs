//! What a worker's poll of an empty queue costs the database. Every replica polls every queue
//! each `JOB_POLL_INTERVAL_MS` while it is empty, so this cost is paid per replica, per queue,
//! ten times a second by default, with or without orders: `bench replicas` measured 147
//! statements a second per idle replica when each empty poll was a transaction (BEGIN, the
//! locking SELECT, COMMIT).

mod common;

use common::TestApp;
use sqlx::mysql::MySqlPoolOptions;

/// `SHOW SESSION STATUS` counters of the pool's one connection.
async fn session(pool: &sqlx::MySqlPool) -> (i64, i64, i64) {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_begin', 'Com_commit')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let get = |n: &str| {
        rows.iter()
            .find(|(k, _)| k == n)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{n} in {rows:?}"))
    };
    (get("Questions"), get("Com_begin"), get("Com_commit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_an_empty_queue_is_one_statement_and_no_transaction() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    // One connection: the session's counters are the fetch's.
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&app.db_guard.url)
        .await
        .unwrap();
    let before = session(&pool).await;
    let jobs = orderflow_jobs::engine::fetch::fetch(&pool, "retention", 16, "worker-probe")
        .await
        .expect("fetch");
    let after = session(&pool).await;
    assert!(jobs.is_empty());
    // Questions also counts the second SHOW.
    let statements = after.0 - before.0 - 1;
    assert_eq!(
        (statements, after.1 - before.1, after.2 - before.2),
        (1, 0, 0),
        "statements, BEGINs and COMMITs of one empty poll"
    );

    // A due job is still taken by the next poll.
    let id = ulid::Ulid::new().to_string();
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, run_at) \
         VALUES (?, 'retention', 'Pending', 0, 5, '{}', CURRENT_TIMESTAMP - INTERVAL 1 SECOND)",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap();
    let jobs = orderflow_jobs::engine::fetch::fetch(&pool, "retention", 16, "worker-probe")
        .await
        .expect("fetch");
    assert_eq!(jobs.len(), 1);
    let (status, by): (String, String) =
        sqlx::query_as("SELECT status, lock_by FROM jobs WHERE id = ?")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), by.as_str()), ("Queued", "worker-probe"));
    app.stop().await;
}
