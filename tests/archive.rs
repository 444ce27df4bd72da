//! The archive workflow (plan → one job per chunk → summary, on the job engine): finished
//! orders older than the cutoff move with their items, exactly once; a worker killed
//! mid-run is resumed to the same result; two runs at once archive once, and so does one
//! run started twice; live ordering goes on during a run; the daily schedule queues one run
//! per day; the retention job purges what has expired.

mod common;

use std::{sync::Arc, time::Duration};

use common::TestApp;
use orderflow_jobs::{
    archive_run::archive::{self, ArchiveRun, Summary},
    engine::pause::Pauses,
    retention::{self, Expiring, FinishedJobs, PublishedOutboxRows},
};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::QueryBuilder;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// An archive worker, as a replica runs it; cancel the token to stop it.
fn archive_worker(app: &TestApp) -> (CancellationToken, JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(orderflow_workflows::run_archive_worker(
        app.db().clone(),
        app.state.config.events.queue,
        Duration::from_secs(5),
        Pauses::none(),
        stop.clone(),
    ));
    (stop, task)
}

async fn start(app: &TestApp, run: ArchiveRun) {
    archive::push_archive(app.db(), &app.state.config.events.queue, run)
        .await
        .unwrap();
}

/// Waits for the run's summary step (or its SKIPPED plan).
async fn finished(app: &TestApp, key: &str) -> Summary {
    let mut last = None;
    for _ in 0..1200 {
        last = archive::summary(app.db(), key).await.unwrap();
        if last.as_ref().is_some_and(Summary::finished) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("archive run {key} did not finish in 120 s: {last:?}");
}

async fn archive_jobs(app: &TestApp, status: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE job_type = 'archive-run' AND status = ?")
        .bind(status)
        .fetch_one(app.db())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_eligible_orders_are_archived_with_their_items() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    let (stop, worker) = archive_worker(&app);
    start(&app, run("full", 500)).await;
    let summary = finished(&app, "full").await;
    assert_eq!(
        (
            summary.status.as_str(),
            summary.orders,
            summary.items,
            summary.chunks
        ),
        ("DONE", ELIGIBLE, 2 * ELIGIBLE, 20)
    );
    assert!(summary.duration_ms.is_some(), "the summary is recorded");
    assert_final_state(&app, total).await;
    // The workflow's shape, in the job table: the plan, one job per chunk (the 20 full ones,
    // then the one that found nothing left), and the summary.
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            archive_jobs(&app, "Done").await == 1 + 21 + 1
        })
        .await,
        "{} archive jobs done",
        archive_jobs(&app, "Done").await
    );
    let active: i64 = app
        .count("SELECT COUNT(*) FROM archive_runs WHERE active IS NOT NULL")
        .await;
    assert_eq!(active, 0, "the finished run released the one-run slot");
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_started_twice_archives_once() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    // Two starts of one run, e.g. `archive run` retried, or a start replayed after a crash
    // between queueing its successor and its acknowledgement: two chains, two replicas.
    start(&app, run("twice", 300)).await;
    sqlx::query("UPDATE jobs SET idempotency_key = NULL WHERE job_type = 'archive-run'")
        .execute(app.db())
        .await
        .unwrap();
    start(&app, run("twice", 300)).await;
    assert_eq!(archive_jobs(&app, "Pending").await, 2);
    let replicas = [archive_worker(&app), archive_worker(&app)];
    let summary = finished(&app, "twice").await;
    assert_eq!(
        (summary.orders, summary.items, summary.chunks),
        (ELIGIBLE, 2 * ELIGIBLE, ((ELIGIBLE + 299) / 300) as i32),
        "every chunk moved once, whichever chain ran it"
    );
    assert_final_state(&app, total).await;
    for (stop, worker) in replicas {
        stop.cancel();
        worker.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_is_resumed_to_the_same_state() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    let settings = app.state.config.events.queue;
    start(&app, run("interrupted", 100)).await;
    // The doomed replica: a runtime and a pool of its own, so it can die as a process does,
    // every task and connection dropped where it stands, its jobs still marked Running.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = app.state.config.database_url.clone();
    doomed.spawn(async move {
        let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
        orderflow_workflows::run_archive_worker(
            pool,
            settings,
            Duration::from_secs(5),
            Pauses::none(),
            CancellationToken::new(),
        )
        .await
    });
    let started = app
        .eventually(Duration::from_secs(60), || async {
            app.count(
                "SELECT COALESCE(MAX(chunks), 0) FROM archive_runs WHERE run_key = 'interrupted'",
            )
            .await
                >= 3
        })
        .await;
    assert!(started, "the run got going");
    doomed.shutdown_background();
    // Let the server see the dead connections (an uncommitted chunk rolls back).
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    // Another replica: the reaper hands it the dead worker's job once the lease is over.
    let stop = CancellationToken::new();
    let reaper = tokio::spawn(orderflow_jobs::engine::reaper::reap_loop(
        app.db().clone(),
        Duration::from_secs(2),
        Duration::from_millis(500),
        stop.clone().cancelled_owned(),
    ));
    let (stop_worker, worker) = archive_worker(&app);
    let summary = finished(&app, "interrupted").await;
    assert_eq!(
        (summary.status.as_str(), summary.orders),
        ("DONE", ELIGIBLE)
    );
    assert_final_state(&app, total).await;
    stop.cancel();
    stop_worker.cancel();
    reaper.await.unwrap();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_started_at_once_archive_once() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, total) = seed(&app).await;
    // Two plans at the same instant (two replicas' ticks, or the CLI and the schedule): the
    // database admits one RUNNING run.
    let (ra, rb) = (run("twin-a", 300), run("twin-b", 300));
    let (a, b) = tokio::join!(
        archive::plan(app.db(), &ra, Default::default()),
        archive::plan(app.db(), &rb, Default::default()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let sa = archive::summary(app.db(), &a.run_key)
        .await
        .unwrap()
        .unwrap();
    let sb = archive::summary(app.db(), &b.run_key)
        .await
        .unwrap()
        .unwrap();
    assert!(
        sa.skipped() ^ sb.skipped(),
        "exactly one stepped aside: {sa:?} {sb:?}"
    );
    let (running, skipped) = if sa.skipped() { (sb, sa) } else { (sa, sb) };
    assert_eq!(
        skipped.blocked_by.as_deref(),
        Some(running.run_key.as_str())
    );
    // Both chains then run, on two replicas.
    start(&app, run("twin-a", 300)).await;
    start(&app, run("twin-b", 300)).await;
    let replicas = [archive_worker(&app), archive_worker(&app)];
    let (fa, fb) = tokio::join!(finished(&app, "twin-a"), finished(&app, "twin-b"));
    assert_eq!(fa.orders + fb.orders, ELIGIBLE);
    assert!(fa.skipped() ^ fb.skipped());
    assert_final_state(&app, total).await;
    for (stop, worker) in replicas {
        stop.cancel();
        worker.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_goes_on_during_a_run() {
    let app = TestApp::spawn().await;
    let (_, total) = seed(&app).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 1000).await;
    start(&app, run("live", 100)).await;
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
    let (summary, statuses) = tokio::join!(finished(&app, "live"), ordering);
    assert_eq!(summary.orders, ELIGIBLE);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders").await,
        INELIGIBLE + 40
    );
    assert_final_state_archive_only(&app, total).await;
}

/// The archive side of `assert_final_state` (the live tables also hold the new orders).
async fn assert_final_state_archive_only(app: &TestApp, total: i64) {
    assert_eq!(
        app.count("SELECT COUNT(*) FROM orders_archive").await,
        ELIGIBLE
    );
    let sum = app
        .count("SELECT CAST(SUM(total_amount) AS SIGNED) FROM orders_archive")
        .await;
    assert_eq!(sum, ELIGIBLE * total, "totals intact");
}

/// The real schedule: ARCHIVE_CRON firing every second on two replicas, each tick of each
/// trying to queue the day's run. One run is queued and done; the ticks that follow it,
/// on both replicas, queue nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_queues_one_run_per_day_and_the_worker_runs_it() {
    let every_second = "* * * * * *";
    // The API alone first, to seed the tables before any tick.
    let api = TestApp::spawn_api_only(|c| {
        c.archive.cron = every_second.into();
        c.archive.chunk_size = 1000;
        c.archive.older_than_days = 30;
        // The retention schedule ticks beside the archive's: its one job per tick shows the
        // schedules ticking (it purges only what is days old: nothing here).
        c.retention.cron = every_second.into();
    })
    .await;
    let (_, total) = seed(&api).await;
    let first_day = chrono::Utc::now();
    let replicas = [api.replica_of().await, api.replica_of().await];
    let key = orderflow_workflows::daily_run_key(chrono::Utc::now());
    let done = api
        .eventually(Duration::from_secs(120), || async {
            archive::summary(api.db(), &key)
                .await
                .unwrap()
                .is_some_and(|s| s.finished())
        })
        .await;
    assert!(
        done,
        "the schedule queued the day's run {key} and it finished"
    );
    let summary = finished(&api, &key).await;
    assert_eq!((summary.status.as_str(), summary.chunks), ("DONE", 10));
    assert_final_state(&api, total).await;

    // Three more ticks of the schedules after the run ended (three retention jobs queued
    // since), each of them on both replicas a chance to queue the day's run again.
    let ticks_before = retention_ticks(&api).await;
    assert!(
        api.eventually(Duration::from_secs(30), || async {
            retention_ticks(&api).await >= ticks_before + 3
        })
        .await,
        "the schedules go on ticking"
    );
    let last_day = chrono::Utc::now();
    let days: Vec<String> = [first_day, last_day]
        .map(orderflow_workflows::daily_run_key)
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Every start the ticks queued, per key: one per day (a test run across midnight sees two days).
    let starts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, COUNT(*) FROM jobs WHERE job_type = 'archive-run' \
         AND idempotency_key IS NOT NULL GROUP BY idempotency_key ORDER BY idempotency_key",
    )
    .fetch_all(api.db())
    .await
    .unwrap();
    assert!(
        starts.iter().all(|(k, n)| days.contains(k) && *n == 1)
            && starts.iter().any(|(k, _)| *k == key),
        "one start per day ({days:?}): {starts:?}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM archive_runs")
        .fetch_one(api.db())
        .await
        .unwrap();
    assert_eq!(runs as usize, starts.len(), "one archive run per start");
    for replica in replicas {
        replica.stop().await;
    }
}

/// The retention jobs queued so far: one per tick of its schedule.
async fn retention_ticks(app: &TestApp) -> i64 {
    app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'retention'")
        .await
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
    let week = Duration::from_secs(7 * 86_400);
    let kinds: Vec<Arc<dyn Expiring>> = vec![
        Arc::new(PublishedOutboxRows(week)),
        Arc::new(FinishedJobs(week)),
    ];
    let purged = retention::purge_all(app.db(), &kinds).await.unwrap();
    assert_eq!(
        purged,
        vec![("outbox_published", 1), ("jobs_done", 1)],
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
