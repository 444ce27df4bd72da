//! The web console in a real browser (headless Chromium over WebDriver; tests/common/browser.rs):
//! an ADMIN signs in and a USER cannot; a publish job killed by a Kafka outage shows each
//! attempt's error and trace link, is retried from its page, ends Done and the order is
//! notified once; a form posted without its CSRF token changes nothing; a list does not
//! refresh while rows are selected. The jobs page's screenshot is written to
//! `$CARGO_TARGET_TMPDIR/console-jobs.png` (the one in docs/ comes from here).

mod common;

use std::time::Duration;

use common::{browser::Browser, kafka, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A console served over plain HTTP, as in development (the Secure cookie is for HTTPS).
async fn console_app(adjust: impl FnOnce(&mut orderflow::config::Config)) -> TestApp {
    TestApp::spawn_with(|c| {
        c.console.cookie_secure = false;
        adjust(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_and_out_and_a_user_cannot_sign_in() {
    let app = console_app(|_| {}).await;
    let (_, _) = app.new_user().await;
    let user_email: String =
        sqlx::query_scalar("SELECT email FROM users WHERE role = 'USER' LIMIT 1")
            .fetch_one(app.db())
            .await
            .unwrap();
    let browser = Browser::open(&app.base).await;

    browser.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    browser.element("#jobs-table").await;
    assert_eq!(browser.text("#signed-in-as").await, ADMIN_EMAIL);
    assert_eq!(browser.path().await, "/console/jobs");
    browser.click("#sign-out").await;
    browser.element("#login-form").await;
    assert_eq!(browser.path().await, "/console/login");
    browser.goto("/console/queues").await;
    browser.element("#login-form").await;

    browser.sign_in(&user_email, "user-password-1").await;
    let error = browser.text("#login-error").await;
    assert!(error.contains("administrators only"), "{error}");
    browser.goto("/console/jobs").await;
    browser.element("#login-form").await;
    assert_eq!(
        browser.path().await,
        "/console/login",
        "no session for a USER"
    );
    browser.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_by_a_kafka_outage_shows_its_attempts_and_a_retry_from_its_page_notifies_once()
{
    let app = console_app(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(1500);
        // An outage is retried for the window (ADR 0015); a short one kills the job soon.
        c.events.publish_retry_window = Duration::from_secs(3);
        c.events.queue.backoff_base = Duration::from_millis(300);
        c.events.queue.backoff_max = Duration::from_secs(1);
        c.trace_ui = Some("http://jaeger.test:16686/trace/{traceId}".parse().unwrap());
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");

    embedded.broker_down();
    let order = app
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(&user),
            &[
                ("Idempotency-Key", "browser-outage"),
                ("traceparent", &format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
            ],
            Some(json!({"items": [{"productId": p, "quantity": 1}]})),
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", order.text);
    let order_id = order.body["id"].as_i64().unwrap();
    let job_id: String =
        sqlx::query_scalar("SELECT job_id FROM outbox_events WHERE aggregate_id = ?")
            .bind(order_id)
            .fetch_one(app.db())
            .await
            .unwrap();

    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    browser.element("#jobs-table").await;
    // The dead list refreshes itself: the job appears once its last attempt has failed.
    let row = format!("tr[data-job-id=\"{job_id}\"]");
    browser
        .until("the job listed as dead", || async {
            !browser.texts(&format!("{row} td.state")).await.is_empty()
        })
        .await;
    browser
        .screenshot(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-jobs.png"))
        .await;

    browser.click(&format!("{row} a.job-link")).await;
    browser.element("#attempts-table").await;
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_attempts WHERE job_id = ?")
        .bind(&job_id)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert!(attempts >= 2, "retried within the window");
    browser
        .until("every failed attempt", || async {
            browser.texts("#attempts-table tr.attempt").await.len() == attempts as usize
        })
        .await;
    let errors = browser.texts("#attempts-table .attempt-error").await;
    assert_eq!(errors.len(), attempts as usize);
    for e in &errors {
        assert!(e.contains("kafka delivery failed"), "{e}");
    }
    let links = browser.attrs("#attempts-table a.trace", "href").await;
    assert_eq!(links.len(), attempts as usize);
    for href in links {
        assert_eq!(href, format!("http://jaeger.test:16686/trace/{TRACE_ID}"));
    }
    assert_eq!(browser.text("#job-state").await, "dead");
    let rows = browser.texts("#outbox-rows td.row-status").await;
    assert_eq!(rows, ["DEAD"]);

    embedded.broker_up();
    browser.click("#retry-job").await;
    let flash = browser.text("#flash").await;
    assert!(flash.contains("re-queued"), "{flash}");
    // The job's page refreshes itself until the retry is done.
    browser
        .until("the retried job done", || async {
            browser.texts("#job-state").await == ["done"]
        })
        .await;
    assert_eq!(
        browser.texts("#outbox-rows td.row-status").await,
        ["PUBLISHED"]
    );
    browser.close().await;

    // The consumer reconnects on librdkafka's own backoff (up to 10 s between tries).
    let notified = app
        .eventually(Duration::from_secs(90), || async {
            app.count("SELECT COUNT(*) FROM notifications").await == 1
        })
        .await;
    assert!(notified, "the order is notified");
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic("ORDER_CREATED"),
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1, "published once: {events:?}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM notifications").await,
        1,
        "notified once"
    );
    let action: String = sqlx::query_scalar("SELECT action FROM operator_audit")
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(action, "retry");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_without_its_csrf_token_changes_nothing() {
    let app = console_app(|_| {}).await;
    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    browser.element("#jobs-table").await;
    browser.goto("/console/queues").await;
    let form = "tr[data-queue=\"publish-outbox\"] form";
    browser.element(form).await;
    // What a forged form would lack: its token.
    browser
        .client
        .execute(
            "document.querySelectorAll(arguments[0]).forEach(function (e) { e.remove(); });",
            vec![json!(format!("{form} input[name=\"csrf\"]"))],
        )
        .await
        .unwrap();
    browser.click(&format!("{form} button")).await;
    browser
        .until("the refusal", || async {
            browser
                .client
                .source()
                .await
                .is_ok_and(|html| html.contains("FORBIDDEN"))
        })
        .await;
    assert_eq!(app.count("SELECT COUNT(*) FROM job_queues").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM operator_audit").await, 0);

    browser.goto("/console/queues").await;
    let state = browser
        .text("tr[data-queue=\"publish-outbox\"] td.queue-state")
        .await;
    assert!(state.starts_with("running"), "{state}");
    // With its token the same form works.
    browser.click(&format!("{form} button")).await;
    let flash = browser.text("#flash").await;
    assert!(flash.contains("publish-outbox is paused"), "{flash}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM job_queues WHERE paused = 1")
            .await,
        1
    );
    browser.close().await;
    app.stop().await;
}

async fn insert_dead_job(app: &TestApp, id: &str) {
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result, done_at) \
         VALUES (?, 'consume-notification', 'Killed', 3, 3, '{}', '\"poison\"', CURRENT_TIMESTAMP)",
    )
    .bind(id)
    .execute(app.db())
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_does_not_refresh_while_rows_are_selected() {
    let app = TestApp::spawn_api_only(|c| c.console.cookie_secure = false).await;
    insert_dead_job(&app, &ulid::Ulid::new().to_string()).await;
    let browser = Browser::open(&app.base).await;
    browser.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let boxes = "#jobs-table input[name=\"ids\"]";
    browser.element(boxes).await;
    assert_eq!(browser.texts(boxes).await.len(), 1);
    browser.click(boxes).await;
    let region_count = |name: &'static str| {
        let browser = &browser;
        async move {
            browser
                .element("#jobs-region")
                .await
                .attr(name)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        }
    };
    insert_dead_job(&app, &ulid::Ulid::new().to_string()).await;
    let skipped = region_count("data-refresh-skips").await;
    browser
        .until("two refreshes skipped while a row is selected", || async {
            region_count("data-refresh-skips").await >= skipped + 2
        })
        .await;
    assert_eq!(browser.texts(boxes).await.len(), 1, "the list stood still");
    let status = browser.text("#refresh-status").await;
    assert!(status.contains("auto-refresh paused"), "{status}");

    browser.click(boxes).await; // unselected: refreshing resumes
    browser
        .until("the new job listed", || async {
            browser.texts(boxes).await.len() == 2
        })
        .await;
    browser.close().await;
    app.stop().await;
}
