//! The archive: finished orders older than the cutoff move with their items, exactly once,
//! chunk by chunk; a run cut short resumes to the same result; two runs at once archive
//! once; live ordering goes on during a run; the daily schedule queues one run per day.

mod common;

use std::time::Duration;

use common::TestApp;
use orderflow_jobs::archive::{self, ArchiveRun};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::QueryBuilder;

const ELIGIBLE: i64 = 10_000;
const INELIGIBLE: i64 = 1_000;

/// Inserts orders with two items each, straight into the tables (HTTP would take minutes):
/// `ELIGIBLE` finished ones 40 days old, and `INELIGIBLE` that must stay (recent, or
/// still CREATED).
async fn seed(app: &TestApp) -> (i64, i64) {
    let admin = app.admin_token().await;
    let (user_id, _) = app.new_user().await;
    let a = app.new_product(&admin, 300, 1).await;
    let b = app.new_product(&admin, 450, 1).await;
    let total = 300 + 2 * 450;
    let mut next = 0i64;
    let mut insert = |n: i64, status: &'static str, age_days: i64| {
        let ids: Vec<i64> = (next..next + n).collect();
        next += n;
        (ids, status, age_days)
    };
    let batches = [
        insert(ELIGIBLE / 2, "COMPLETED", 40),
        insert(ELIGIBLE / 2, "CANCELLED", 40),
        insert(INELIGIBLE / 2, "COMPLETED", 1),
        insert(INELIGIBLE / 2, "CREATED", 40),
    ];
    for (ids, status, age) in batches {
        for chunk in ids.chunks(1000) {
            let mut q = QueryBuilder::new(
                "INSERT INTO orders (id, user_id, status, total_amount, created_at, updated_at) ",
            );
            q.push_values(chunk, |mut row, id| {
                row.push_bind(id + 1)
                    .push_bind(user_id)
                    .push_bind(status)
                    .push_bind(total)
                    .push(format!("CURRENT_TIMESTAMP(6) - INTERVAL {age} DAY"))
                    .push(format!("CURRENT_TIMESTAMP(6) - INTERVAL {age} DAY"));
            });
            q.build().execute(app.db()).await.unwrap();
            let mut q = QueryBuilder::new(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price) ",
            );
            let items: Vec<(i64, i64, i64, i64)> = chunk
                .iter()
                .flat_map(|id| [(id + 1, a, 1, 300), (id + 1, b, 2, 450)])
                .collect();
            q.push_values(items, |mut row, (o, p, qty, price)| {
                row.push_bind(o)
                    .push_bind(p)
                    .push_bind(qty)
                    .push_bind(price);
            });
            q.build().execute(app.db()).await.unwrap();
        }
    }
    (user_id, total)
}

async fn assert_final_state(app: &TestApp, total: i64) {
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders_archive").await,
        ELIGIBLE
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM order_items_archive").await,
        2 * ELIGIBLE
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, INELIGIBLE);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM order_items").await,
        2 * INELIGIBLE
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders WHERE status IN ('COMPLETED','CANCELLED') AND updated_at < CURRENT_TIMESTAMP(6) - INTERVAL 30 DAY").await,
        0,
        "nothing eligible left behind"
    );
    let sum = app
        .count("SELECT CAST(SUM(total_amount) AS SIGNED) FROM orders_archive")
        .await;
    assert_eq!(sum, ELIGIBLE * total, "totals intact");
    let items_sum = app
        .count("SELECT CAST(SUM(quantity * unit_price) AS SIGNED) FROM order_items_archive")
        .await;
    assert_eq!(items_sum, ELIGIBLE * total, "items match their orders");
    let mismatched = app
        .count(
            "SELECT COUNT(*) FROM orders_archive o WHERE o.total_amount <> \
             (SELECT SUM(quantity * unit_price) FROM order_items_archive i WHERE i.order_id = o.id)",
        )
        .await;
    assert_eq!(mismatched, 0);
}

fn run(key: &str, chunk: u32) -> ArchiveRun {
    ArchiveRun {
        run_key: key.into(),
        older_than_days: 30,
        chunk_size: chunk,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_eligible_orders_are_archived_with_their_items() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    let summary = archive::run(app.db(), &run("full", 500)).await.unwrap();
    assert_eq!(
        (summary.orders, summary.items, summary.chunks),
        (ELIGIBLE, 2 * ELIGIBLE, 20)
    );
    assert!(!summary.skipped);
    assert_final_state(&app, total).await;
    // Running the same run again changes nothing and reports the same summary.
    let again = archive::run(app.db(), &run("full", 500)).await.unwrap();
    assert_eq!((again.orders, again.chunks), (ELIGIBLE, 20));
    let status: String =
        sqlx::query_scalar("SELECT status FROM archive_runs WHERE run_key = 'full'")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(status, "DONE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_a_few_chunks_resumes_to_the_same_state() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    // Cut the run off mid-flight, a few chunks in (the task is aborted: its futures are
    // dropped where they stand, as when the process dies).
    let task = tokio::spawn({
        let pool = app.db().clone();
        async move { archive::run(&pool, &run("interrupted", 100)).await }
    });
    let started = app
        .eventually(Duration::from_secs(30), || async {
            app.count(
                "SELECT COALESCE(MAX(chunks), 0) FROM archive_runs WHERE run_key = 'interrupted'",
            )
            .await
                >= 3
        })
        .await;
    task.abort();
    assert!(
        started && task.await.is_err(),
        "the run was still going when it was cut off"
    );
    let done_so_far = app.count("SELECT COUNT(*) FROM orders_archive").await;
    assert!(
        done_so_far > 0 && done_so_far < ELIGIBLE,
        "cut mid-run ({done_so_far} archived)"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders").await + done_so_far,
        ELIGIBLE + INELIGIBLE,
        "nothing lost or duplicated at the cut"
    );
    // The lock died with its connection; the resumed run finishes the job.
    let summary = archive::run(app.db(), &run("interrupted", 100))
        .await
        .unwrap();
    assert_eq!(summary.orders, ELIGIBLE);
    assert_final_state(&app, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_started_at_once_archive_once() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    let (ra, rb) = (run("twin-a", 300), run("twin-b", 300));
    let (a, b) = tokio::join!(archive::run(app.db(), &ra), archive::run(app.db(), &rb));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.skipped ^ b.skipped, "exactly one ran: {a:?} {b:?}");
    assert_eq!(a.orders + b.orders, ELIGIBLE);
    assert_final_state(&app, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_goes_on_during_a_run() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 1000).await;
    let live = run("live", 100);
    let archiving = archive::run(app.db(), &live);
    let ordering = async {
        let mut statuses = Vec::new();
        for i in 0..40 {
            statuses.push(
                app.order(
                    &user,
                    &format!("live-{i}"),
                    json!([{"productId": p, "quantity": 1}]),
                )
                .await
                .status,
            );
        }
        statuses
    };
    let (summary, statuses) = tokio::join!(archiving, ordering);
    assert_eq!(summary.unwrap().orders, ELIGIBLE);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders").await,
        INELIGIBLE + 40
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders_archive").await,
        ELIGIBLE
    );
    let _ = total;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_queues_one_run_per_day_and_the_worker_runs_it() {
    let app = TestApp::spawn().await;
    let (_, total) = seed(&app).await;
    let settings = app.state.config.events.queue;
    let key = orderflow_workflows::daily_run_key(chrono::Utc::now());
    // Two replicas ticking for the same day queue one job.
    for _ in 0..2 {
        orderflow_jobs::queue::push_archive(app.db(), &settings, run(&key, 1000))
            .await
            .unwrap();
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'archive-run'")
            .await,
        1
    );
    let done = app
        .eventually(Duration::from_secs(60), || async {
            app.count(
                "SELECT COUNT(*) FROM jobs WHERE job_type = 'archive-run' AND status = 'Done'",
            )
            .await
                == 1
        })
        .await;
    assert!(done, "the archive worker ran the queued run");
    assert_final_state(&app, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_published_outbox_rows_and_finished_jobs() {
    // The purge is about rows, not the pipeline: set them up directly (no workers, no Kafka).
    let app = TestApp::spawn_api_only(|_| {}).await;
    for (status, age_days) in [("PUBLISHED", 8), ("PUBLISHED", 1), ("DEAD", 8), ("NEW", 8)] {
        sqlx::query(
            "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status, published_at) \
             VALUES (UUID(), 'ORDER', 1, 'ORDER_CREATED', '{}', ?, CURRENT_TIMESTAMP(6) - INTERVAL ? DAY)",
        )
        .bind(status)
        .bind(age_days)
        .execute(app.db())
        .await
        .unwrap();
    }
    for (id, status, age_days) in [
        ("01JOLDDONE0000000000000000", "Done", 8),
        ("01JNEWDONE0000000000000000", "Done", 1),
        ("01JOLDKILLED00000000000000", "Killed", 8),
    ] {
        sqlx::query(
            "INSERT INTO jobs (id, job_type, status, job, done_at) \
             VALUES (?, 'publish-outbox', ?, '{}', CURRENT_TIMESTAMP - INTERVAL ? DAY)",
        )
        .bind(id)
        .bind(status)
        .bind(age_days)
        .execute(app.db())
        .await
        .unwrap();
    }
    let (outbox, jobs) = archive::purge_finished(app.db(), Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    assert_eq!(
        (outbox, jobs),
        (1, 1),
        "only old PUBLISHED rows and old Done jobs go"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events").await,
        3,
        "recent, DEAD and NEW rows stay"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs").await,
        2,
        "recent and dead jobs stay"
    );
}
