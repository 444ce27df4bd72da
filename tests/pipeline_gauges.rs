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
