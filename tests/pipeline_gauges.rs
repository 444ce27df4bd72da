//! The gauges the alerts read from the database state (observability/rules/): what
//! /actuator/prometheus says about dead jobs, the outbox and the queues, and that it follows
//! the state both ways — a gauge that kept its last value would never let its alert resolve.
//!
//! The metrics recorder is one per process, so the tests of this file take turns (`TURN`):
//! two apps setting the same gauge at once would read each other's values.

mod common;

use std::time::Duration;

use common::TestApp;
use reqwest::StatusCode;

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The value of the sample `series` (a name with its labels as rendered, e.g.
/// `jobs_dead{queue="audit"}`) in the Prometheus text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

async fn scrape(app: &TestApp) -> String {
    let r = app
        .client
        .get(app.url("/actuator/prometheus"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.expect("text")
}

/// Waits (bounded) until the scrape shows `series` at `want`; returns the last value seen.
async fn wait_for_sample(app: &TestApp, series: &str, want: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let last = sample(&scrape(app).await, series);
        if last == Some(want) || tokio::time::Instant::now() > deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dead_falls_back_to_zero_once_the_dead_job_is_discarded() {
    let _turn = TURN.lock().await;
    let app = TestApp::spawn().await;
    let job = "01JDEADRETENTION0000000000";
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result) \
         VALUES (?, 'retention', 'Killed', 5, 5, '{}', '{\"Err\":\"lock wait timeout\"}')",
    )
    .bind(job)
    .execute(app.db())
    .await
    .unwrap();
    let series = "jobs_dead{queue=\"retention\"}";
    assert_eq!(wait_for_sample(&app, series, 1.0).await, Some(1.0));

    let admin = app.admin_token().await;
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{job}/discard"),
            Some(&admin),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        wait_for_sample(&app, series, 0.0).await,
        Some(0.0),
        "{series} after the only dead job of the queue was discarded"
    );
    app.stop().await;
}

/// An API-only replica (no workers, no sweeper) reports the database's state too: the
/// outbox's NEW, DEAD and DISCARDED rows and its oldest NEW row, a queue's oldest due job, how
/// long a queue has been paused, and that no worker is alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_reports_the_outbox_and_queue_state_at_each_scrape() {
    let _turn = TURN.lock().await;
    let app = TestApp::spawn_api_only(|_| {}).await;
    for (status, age_secs) in [("NEW", 300), ("NEW", 10), ("DEAD", 900), ("DISCARDED", 900)] {
        sqlx::query(
            "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, \
             payload, status, created_at) VALUES (UUID(), 'ORDER', 1, 'ORDER_CREATED', '{}', ?, \
             CURRENT_TIMESTAMP(6) - INTERVAL ? SECOND)",
        )
        .bind(status)
        .bind(age_secs)
        .execute(app.db())
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, run_at) \
         VALUES ('01JPENDINGAUDIT00000000000', 'audit', 'Pending', 0, 5, '{}', \
         CURRENT_TIMESTAMP - INTERVAL 120 SECOND)",
    )
    .execute(app.db())
    .await
    .unwrap();
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/admin/queues/retention/pause",
            Some(&admin),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Paused an hour ago, as far as the database knows.
    sqlx::query(
        "UPDATE job_queues SET changed_at = CURRENT_TIMESTAMP(6) - INTERVAL 3600 SECOND \
         WHERE queue = 'retention'",
    )
    .execute(app.db())
    .await
    .unwrap();

    let text = scrape(&app).await;
    let at = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in {text}"));
    assert_eq!(at("outbox_backlog"), 2.0);
    let oldest = at("outbox_oldest_new_age_seconds");
    assert!((300.0..400.0).contains(&oldest), "oldest NEW row: {oldest}");
    assert_eq!(at("outbox_rows{status=\"DEAD\"}"), 1.0);
    assert_eq!(at("outbox_rows{status=\"DISCARDED\"}"), 1.0);
    let due = at("jobs_oldest_pending_age_seconds{queue=\"audit\"}");
    assert!((120.0..220.0).contains(&due), "oldest due audit job: {due}");
    assert_eq!(
        at("jobs_oldest_pending_age_seconds{queue=\"publish-outbox\"}"),
        0.0
    );
    let paused = at("jobs_queue_paused_seconds{queue=\"retention\"}");
    assert!((3600.0..3700.0).contains(&paused), "paused for {paused}");
    assert_eq!(at("jobs_queue_paused_seconds{queue=\"audit\"}"), 0.0);
    for queue in ["publish-outbox", "consume-notification", "audit"] {
        assert_eq!(
            at(&format!("jobs_live_workers{{queue=\"{queue}\"}}")),
            0.0,
            "no process runs {queue}'s worker"
        );
    }

    // Resumed, and the events published: the gauges follow.
    let r = app
        .post(
            "/api/v1/admin/queues/retention/resume",
            Some(&admin),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    sqlx::query("UPDATE outbox_events SET status = 'PUBLISHED', published_at = CURRENT_TIMESTAMP(6) WHERE status = 'NEW'")
        .execute(app.db())
        .await
        .unwrap();
    let text = scrape(&app).await;
    let at = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in {text}"));
    assert_eq!(at("outbox_backlog"), 0.0);
    assert_eq!(at("outbox_oldest_new_age_seconds"), 0.0);
    assert_eq!(at("jobs_queue_paused_seconds{queue=\"retention\"}"), 0.0);
    app.stop().await;
}

/// A process that runs the workers shows them alive, queue by queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_shows_as_live_for_each_of_its_queues() {
    let _turn = TURN.lock().await;
    let app = TestApp::spawn().await;
    for queue in [
        "publish-outbox",
        "consume-notification",
        "archive-run",
        "retention",
        "audit",
    ] {
        let series = format!("jobs_live_workers{{queue=\"{queue}\"}}");
        let mut seen = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            seen = sample(&scrape(&app).await, &series);
            if seen.is_some_and(|n| n >= 1.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(seen.is_some_and(|n| n >= 1.0), "{series}: {seen:?}");
    }
    app.stop().await;
}
