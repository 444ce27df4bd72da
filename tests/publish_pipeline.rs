//! Issue 21: every outbox row always has a way forward — PUBLISHED, or NEW with a job that
//! will run it, or DEAD under a dead job whose retry revives exactly it. Each test here
//! reproduces one of the review's findings (docs/reliability.md names them).

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::{kafka, proxy::FaultProxy, DatabaseGuard, TestApp};
use reqwest::StatusCode;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(45);

async fn by_status(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, COUNT(*) FROM outbox_events GROUP BY status ORDER BY status")
        .fetch_all(app.db())
        .await
        .unwrap()
}

async fn all_published(app: &TestApp) -> bool {
    app.count("SELECT COUNT(*) FROM outbox_events WHERE status <> 'PUBLISHED'")
        .await
        == 0
}

/// Reads `expected` events of the topic and asserts each one is there exactly once.
async fn assert_each_event_once(app: &TestApp, topic: &str, expected: usize) {
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic(topic),
        expected,
        Duration::from_secs(3),
    )
    .await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *per_event.entry(e.event_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_event.len(), expected, "every event on the topic");
    assert!(
        per_event.values().all(|n| *n == 1),
        "no event published twice: {per_event:?}"
    );
}

/// Finding 5: a broker outage is transient. It outlasts JOB_MAX_ATTEMPTS attempts here; the
/// rows stay NEW and visibly retrying (attempts and the error recorded, the job pending,
/// not dead), and once the broker is back every event is published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_the_attempts_keeps_rows_retrying_and_loses_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(500);
        c.events.queue.max_attempts = 3;
        c.events.queue.backoff_base = Duration::from_millis(200);
        c.events.queue.backoff_max = Duration::from_millis(500);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");
    const ORDERS: i64 = 3;

    embedded.broker_down();
    for i in 0..ORDERS {
        let r = app
            .order(
                &user,
                &format!("outage-{i}"),
                json!([{"productId": p, "quantity": 1}]),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    // Wait until the rows failed more often than the job's attempts allow, or went DEAD.
    let past_the_attempts = app
        .eventually(Duration::from_secs(40), || async {
            app.count("SELECT COUNT(*) FROM outbox_events WHERE attempts > 4 OR status <> 'NEW'")
                .await
                == ORDERS
        })
        .await;
    assert!(past_the_attempts, "rows: {:?}", by_status(&app).await);
    assert_eq!(
        by_status(&app).await,
        vec![("NEW".to_string(), ORDERS)],
        "an outage kills no event"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE status = 'Killed'")
            .await,
        0,
        "no job died of the outage"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE last_error IS NULL")
            .await,
        0,
        "each row shows why it is still waiting"
    );
    let listed = app
        .get(
            "/api/v1/admin/jobs?queue=publish-outbox&status=dead",
            Some(&admin),
        )
        .await;
    assert_eq!(listed.body["totalItems"], 0, "{}", listed.text);

    embedded.broker_up();
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "published once the broker is back: {:?}",
        by_status(&app).await
    );
    assert_each_event_once(&app, "ORDER_CREATED", ORDERS as usize).await;
    app.stop().await;
}

/// Finding 5: a record Kafka refuses for good (larger than `message.max.bytes`) is DEAD at
/// its first attempt, under a dead job, while the retry window (a day by default) is far
/// from over; the other orders' events are published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_kafka_refuses_for_good_is_dead_at_once_and_the_others_publish() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    let mut tx = app.db().begin().await.unwrap();
    let huge = orderflow_jobs::publish_outbox::outbox::append(
        &mut tx,
        orderflow_jobs::publish_outbox::outbox::EventType::OrderCreated,
        777_777,
        &json!({"orderId": 777_777, "pad": "x".repeat(1_500_000)}),
        &Default::default(),
        &job_id,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    orderflow_jobs::publish_outbox::job::push_publish(
        app.db(),
        &app.state.config.events.queue,
        &job_id,
        Vec::new(),
        Default::default(),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let r = app
            .order(
                &user,
                &format!("beside-{i}"),
                json!([{"productId": p, "quantity": 1}]),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    let killed = format!("SELECT COUNT(*) FROM jobs WHERE id = '{job_id}' AND status = 'Killed'");
    assert!(
        app.eventually(WAIT, || async { app.count(&killed).await == 1 })
            .await,
        "the job is dead: rows {:?}, job {:?}",
        by_status(&app).await,
        sqlx::query_as::<_, (String, i32, Option<String>, Option<String>)>(
            "SELECT status, attempts, lock_by, last_result FROM jobs WHERE id = ?"
        )
        .bind(&job_id)
        .fetch_optional(app.db())
        .await
        .unwrap()
    );
    let (status, attempts, error): (String, i32, Option<String>) =
        sqlx::query_as("SELECT status, attempts, last_error FROM outbox_events WHERE id = ?")
            .bind(huge.id)
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("DEAD", 1),
        "dead at its first attempt"
    );
    assert!(
        error.as_deref().unwrap_or_default().contains("too large"),
        "{error:?}"
    );
    assert!(
        app.eventually(WAIT, || async {
            app.count("SELECT COUNT(*) FROM outbox_events WHERE status = 'PUBLISHED'")
                .await
                == 3
        })
        .await,
        "the other events are published: {:?}",
        by_status(&app).await
    );
    assert_each_event_once(&app, "ORDER_CREATED", 3).await;
    app.stop().await;
}

/// Finding 5: at the end of the retry window the rows still failing are DEAD under their
/// dead job, and an operator's retry of that job revives exactly them with a fresh window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_end_of_the_window_the_rows_are_dead_and_a_retry_revives_them() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(500);
        c.events.publish_retry_window = Duration::from_secs(3);
        c.events.queue.backoff_base = Duration::from_millis(200);
        c.events.queue.backoff_max = Duration::from_millis(500);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");

    embedded.broker_down();
    let r = app
        .order(&user, "window", json!([{"productId": p, "quantity": 1}]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let dead_under_dead_job =
        "SELECT COUNT(*) FROM outbox_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.status = 'DEAD' AND j.status = 'Killed'";
    assert!(
        app.eventually(WAIT, || async { app.count(dead_under_dead_job).await == 1 })
            .await,
        "DEAD under its dead job at the end of the window: {:?}",
        by_status(&app).await
    );
    assert!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE attempts >= 2")
            .await
            == 1,
        "retried within the window"
    );
    embedded.broker_up();
    let job_id: String = sqlx::query_scalar("SELECT job_id FROM outbox_events")
        .fetch_one(app.db())
        .await
        .unwrap();
    let retried_at: chrono::NaiveDateTime = sqlx::query_scalar("SELECT NOW(6)")
        .fetch_one(app.db())
        .await
        .unwrap();
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{job_id}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "published after the retry: {:?}",
        by_status(&app).await
    );
    // The retry cleared the window's start. The reconnecting client may still fail the first
    // attempt after it, which starts a new window then: never the old one.
    let first_failed: Option<chrono::NaiveDateTime> =
        sqlx::query_scalar("SELECT first_failed_at FROM outbox_events")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert!(
        first_failed.is_none_or(|at| at >= retried_at),
        "the retry started a fresh window: first failure {first_failed:?}, retried at {retried_at}"
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// Appends an ORDER_CREATED row for a made-up order, naming `job_id`; returns its id.
async fn append_row(app: &TestApp, order_id: i64, job_id: &str, payload: serde_json::Value) -> i64 {
    let mut tx = app.db().begin().await.unwrap();
    let row = orderflow_jobs::publish_outbox::outbox::append(
        &mut tx,
        orderflow_jobs::publish_outbox::outbox::EventType::OrderCreated,
        order_id,
        &payload,
        &Default::default(),
        job_id,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    row.id
}

async fn push_job(app: &TestApp, job_id: &str, ids: Vec<i64>) {
    orderflow_jobs::publish_outbox::job::push_publish(
        app.db(),
        &app.state.config.events.queue,
        job_id,
        ids,
        Default::default(),
    )
    .await
    .unwrap();
}

async fn job_status(app: &TestApp, job_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
        .bind(job_id)
        .fetch_optional(app.db())
        .await
        .unwrap()
}

/// Finding 1: the statement that records a failed publish on its rows fails (a trigger
/// refuses it, as a lock wait timeout or a busy pool would) while Kafka is down. The job
/// must still back off and stay alive past JOB_MAX_ATTEMPTS attempts, its row NEW; once the
/// database and Kafka are well again, the row is published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_cannot_be_recorded_still_leaves_the_job_alive_and_the_row_published() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(500);
        c.events.queue.max_attempts = 3;
        c.events.queue.backoff_base = Duration::from_millis(200);
        c.events.queue.backoff_max = Duration::from_millis(500);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");
    sqlx::raw_sql(
        "CREATE TRIGGER injected_record_failure BEFORE UPDATE ON outbox_events FOR EACH ROW \
         IF NEW.last_error IS NOT NULL THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected: recording the failure fails'; \
         END IF",
    )
    .execute(app.db())
    .await
    .unwrap();

    embedded.broker_down();
    let r = app
        .order(
            &user,
            "unrecorded",
            json!([{"productId": p, "quantity": 1}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let job_id: String = sqlx::query_scalar("SELECT job_id FROM outbox_events")
        .fetch_one(app.db())
        .await
        .unwrap();
    let attempts = format!(
        "SELECT COUNT(*) FROM jobs WHERE id = '{job_id}' AND (attempts > 4 OR status = 'Killed')"
    );
    assert!(
        app.eventually(Duration::from_secs(40), || async {
            app.count(&attempts).await == 1
        })
        .await,
        "the job keeps failing"
    );
    assert_ne!(
        job_status(&app, &job_id).await.as_deref(),
        Some("Killed"),
        "a failure it could not record must not kill the job with its row NEW"
    );
    assert_eq!(by_status(&app).await, vec![("NEW".to_string(), 1)]);

    sqlx::raw_sql("DROP TRIGGER injected_record_failure")
        .execute(app.db())
        .await
        .unwrap();
    embedded.broker_up();
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "published once everything is well: {:?}",
        by_status(&app).await
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// Finding 1: a row left NEW under a dead job (what a killed job left before this fix) is
/// swept: its job will never run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_row_under_a_dead_job_is_swept_and_published() {
    let app = TestApp::spawn().await;
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result, done_at) \
         VALUES (?, 'publish-outbox', 'Killed', 5, 5, '{\"outbox_ids\":[]}', '\"killed\"', CURRENT_TIMESTAMP)",
    )
    .bind(&job_id)
    .execute(app.db())
    .await
    .unwrap();
    let row = append_row(&app, 8080, &job_id, json!({"orderId": 8080})).await;
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "swept and published: {:?}",
        by_status(&app).await
    );
    let now_named: String = sqlx::query_scalar("SELECT job_id FROM outbox_events WHERE id = ?")
        .bind(row)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_ne!(now_named, job_id, "a new job carried it");
    app.stop().await;
}

/// Finding 2 (a): a job whose rows are DEAD (its last attempt marked them, then its
/// acknowledgement was lost and it was queued again) must end dead again, not Done, so
/// that an operator's retry still revives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeued_job_that_finds_its_rows_dead_ends_dead_and_its_retry_publishes_them() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    append_row(&app, 9090, &job_id, json!({"orderId": 9090})).await;
    sqlx::query(
        "UPDATE outbox_events SET status = 'DEAD', attempts = 5, last_error = 'kafka down'",
    )
    .execute(app.db())
    .await
    .unwrap();
    push_job(&app, &job_id, Vec::new()).await;
    assert!(
        app.eventually(WAIT, || async {
            matches!(
                job_status(&app, &job_id).await.as_deref(),
                Some("Done" | "Killed")
            )
        })
        .await
    );
    assert_eq!(
        job_status(&app, &job_id).await.as_deref(),
        Some("Killed"),
        "a job whose rows are DEAD is dead"
    );
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{job_id}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "the retry published its row: {:?}",
        by_status(&app).await
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// Finding 2 (b): a row carried by two jobs (two sweepers raced, or a batch pushed after the
/// sweep grace) that Kafka refuses is marked DEAD only under the job it names, which is
/// then dead: its retry revives it. Before, the other job marked it DEAD by its id list,
/// and the job it names then ended Done over a DEAD row no retry could reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_two_jobs_carry_is_dead_only_under_the_job_it_names() {
    let app = TestApp::spawn_with(|c| {
        c.events.queue.backoff_base = Duration::from_millis(200);
        c.events.queue.backoff_max = Duration::from_millis(500);
        // No sweeper within the test: the row keeps naming the job it was appended with.
        c.events.sweep_grace = Duration::from_secs(3600);
    })
    .await;
    let admin = app.admin_token().await;
    let named = orderflow_jobs::engine::queue::new_job_id();
    let other = orderflow_jobs::engine::queue::new_job_id();
    // Larger than Kafka's message.max.bytes: refused for good.
    let row = append_row(
        &app,
        6060,
        &named,
        json!({"orderId": 6060, "pad": "x".repeat(1_500_000)}),
    )
    .await;
    push_job(&app, &other, vec![row]).await;
    assert!(
        app.eventually(WAIT, || async {
            matches!(
                job_status(&app, &other).await.as_deref(),
                Some("Done" | "Killed")
            )
        })
        .await,
        "the other job ends"
    );
    // The other job carried it, saw Kafka refuse it, and left it to the job it names: the
    // row is untouched (NEW, no attempt counted) and the other job is done, not dead.
    assert_eq!(job_status(&app, &other).await.as_deref(), Some("Done"));
    assert_eq!(
        row_state(&app, row).await,
        (Some(named.clone()), "NEW".to_owned(), 0),
        "the other job left the row to the job it names"
    );
    push_job(&app, &named, Vec::new()).await;
    let dead_under_its_dead_job =
        "SELECT COUNT(*) FROM outbox_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.status = 'DEAD' AND j.status = 'Killed'";
    assert!(
        app.eventually(WAIT, || async {
            app.count(dead_under_its_dead_job).await == 1
        })
        .await,
        "the row is DEAD under the dead job it names: rows {:?}, the job it names {:?}",
        by_status(&app).await,
        job_status(&app, &named).await
    );
    assert_eq!(
        row_state(&app, row).await,
        (Some(named.clone()), "DEAD".to_owned(), 1),
        "DEAD under the job it names, after that job's one attempt"
    );
    assert_eq!(job_status(&app, &named).await.as_deref(), Some("Killed"));
    assert_eq!(job_status(&app, &other).await.as_deref(), Some("Done"));
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{named}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "the retry reaches it: {}",
        r.text
    );
    // The retry revived the row: its job tried it again (Kafka still refuses it, so it is
    // DEAD again, after a second attempt). A retry that left the row DEAD would end the job
    // dead without trying it.
    assert!(
        app.eventually(WAIT, || async {
            row_state(&app, row).await == (Some(named.clone()), "DEAD".to_owned(), 2)
                && job_status(&app, &named).await.as_deref() == Some("Killed")
        })
        .await,
        "the retried job tried its revived row once more: row {:?}, job {:?}",
        row_state(&app, row).await,
        job_status(&app, &named).await
    );
    app.stop().await;
}

/// The job a row names, its status and its attempts.
async fn row_state(app: &TestApp, row: i64) -> (Option<String>, String, i32) {
    sqlx::query_as("SELECT job_id, status, attempts FROM outbox_events WHERE id = ?")
        .bind(row)
        .fetch_one(app.db())
        .await
        .unwrap()
}

/// Finding 4: a job whose payload this release cannot decode (a rolling deploy, a corrupt
/// row) is dead at once with its error, and the queue moves on: the orders placed behind it
/// are published and notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_payload_does_not_decode_is_dead_and_the_queue_moves_on() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let bad = orderflow_jobs::engine::queue::new_job_id();
    // Older than anything else in the queue: fetched first.
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, run_at) \
         VALUES (?, 'publish-outbox', 'Pending', 0, 5, '{\"outbox_ids\":\"from a newer release\"}', \
         CURRENT_TIMESTAMP - INTERVAL 1 HOUR)",
    )
    .bind(&bad)
    .execute(app.db())
    .await
    .unwrap();
    for i in 0..3 {
        let r = app
            .order(
                &user,
                &format!("behind-{i}"),
                json!([{"productId": p, "quantity": 1}]),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    assert!(
        app.eventually(WAIT, || async {
            app.count("SELECT COUNT(*) FROM notifications").await == 3
        })
        .await,
        "the orders behind it are notified: rows {:?}, the job {:?}",
        by_status(&app).await,
        job_status(&app, &bad).await
    );
    assert_eq!(job_status(&app, &bad).await.as_deref(), Some("Killed"));
    let (result,): (Option<String>,) = sqlx::query_as("SELECT last_result FROM jobs WHERE id = ?")
        .bind(&bad)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert!(
        result.unwrap_or_default().contains("does not decode"),
        "its error is kept"
    );
    let listed = app
        .get(
            "/api/v1/admin/jobs?queue=publish-outbox&status=dead",
            Some(&admin),
        )
        .await;
    assert_eq!(
        listed.body["items"][0]["id"],
        bad.as_str(),
        "{}",
        listed.text
    );
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM job_attempts WHERE job_id = '{bad}' AND outcome = 'dead'"
        ))
        .await,
        1,
        "in the attempt history"
    );
    app.stop().await;
}

/// Finding 6: no database lock is held across the Kafka send. A row's own job finds it
/// being sent by another job (a racing sweeper's) whose send lasts the delivery timeout
/// (longer than the 5 s lock wait here, as by default: 10 s): it must wait for that send
/// and then take the row, not fail on a lock wait timeout (1205).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_a_row_another_job_is_sending_does_not_time_out_on_its_lock() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_secs(7);
        c.events.sweep_grace = Duration::from_secs(3600);
        c.idempotency.in_flight_wait = Duration::from_secs(5); // the session lock wait bound
    })
    .await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");
    embedded.broker_down();
    let own = orderflow_jobs::engine::queue::new_job_id();
    let other = orderflow_jobs::engine::queue::new_job_id();
    let row = append_row(&app, 5050, &own, json!({"orderId": 5050})).await;
    push_job(&app, &other, vec![row]).await;
    assert!(
        app.eventually(WAIT, || async {
            job_status(&app, &other).await.as_deref() == Some("Running")
        })
        .await,
        "the other job is sending the row"
    );
    push_job(&app, &own, Vec::new()).await;
    let own_failed = format!("SELECT COUNT(*) FROM job_attempts WHERE job_id = '{own}'");
    assert!(
        app.eventually(Duration::from_secs(60), || async {
            app.count(&own_failed).await >= 1
        })
        .await,
        "the row's own job tried it"
    );
    let errors: Vec<String> = sqlx::query_scalar("SELECT error FROM job_attempts ORDER BY id")
        .fetch_all(app.db())
        .await
        .unwrap();
    assert!(
        errors.iter().all(|e| !e.contains("Lock wait timeout")),
        "no attempt timed out on a lock: {errors:?}"
    );
    embedded.broker_up();
    assert!(
        app.eventually(Duration::from_secs(60), || all_published(&app))
            .await,
        "published once the broker is back: {:?}",
        by_status(&app).await
    );
    app.stop().await;
}

/// Finding 7: the job table refuses a consumer batch as it is (a trigger stands in for a
/// batch too large for the database): the consumer splits it instead of retrying it for
/// ever, and every event is notified; no partition stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_job_table_refuses_is_split_and_every_event_notified() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 1_000).await;
    sqlx::raw_sql(
        "CREATE TRIGGER injected_refuse_batches BEFORE INSERT ON jobs FOR EACH ROW \
         IF NEW.job_type = 'consume-notification' \
         AND JSON_LENGTH(CONVERT(NEW.job USING utf8mb4), '$.events') > 1 THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected: this batch is refused'; \
         END IF",
    )
    .execute(app.db())
    .await
    .unwrap();
    let splits = || async {
        app.get("/actuator/prometheus", None)
            .await
            .text
            .lines()
            .filter(|l| l.starts_with("notification_batch_splits_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // Orders placed together are published together and received together: a batch.
    let mut placed = 0;
    for round in 0..5 {
        let keys: Vec<String> = (0..20).map(|i| format!("split-{round}-{i}")).collect();
        let calls = keys
            .iter()
            .map(|key| app.order(&user, key, json!([{"productId": p, "quantity": 1}])));
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            placed += 1;
        }
        let all = app
            .eventually(WAIT, || async {
                app.count("SELECT COUNT(*) FROM notifications").await == placed
            })
            .await;
        assert!(
            all,
            "every event notified: {} of {placed}",
            app.count("SELECT COUNT(*) FROM notifications").await
        );
        if splits().await > 0.0 {
            break;
        }
    }
    assert!(splits().await > 0.0, "a batch was refused and split");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'consume-notification' AND status = 'Killed'")
            .await,
        0,
        "no event parked"
    );
    app.stop().await;
}

/// Finding 3: apalis' acknowledgement of an attempt fails (a trigger refuses it, as a
/// dropped connection would): the job stays `Running` under a live, heartbeating worker,
/// which the lease never reclaims. It must go back to its queue and end Done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_acknowledgement_was_lost_is_run_again_and_ends_done() {
    let app = TestApp::spawn().await;
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    sqlx::raw_sql(&format!(
        "CREATE TRIGGER injected_lost_ack BEFORE UPDATE ON jobs FOR EACH ROW \
         IF NEW.id = '{job_id}' AND OLD.status = 'Running' AND NEW.status = 'Done' THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected: the acknowledgement is lost'; \
         END IF"
    ))
    .execute(app.db())
    .await
    .unwrap();
    append_row(&app, 3030, &job_id, json!({"orderId": 3030})).await;
    push_job(&app, &job_id, Vec::new()).await;
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "the attempt published its row"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        job_status(&app, &job_id).await.as_deref(),
        Some("Running"),
        "its acknowledgement was refused"
    );
    sqlx::raw_sql("DROP TRIGGER injected_lost_ack")
        .execute(app.db())
        .await
        .unwrap();
    assert!(
        app.eventually(WAIT, || async {
            job_status(&app, &job_id).await.as_deref() == Some("Done")
        })
        .await,
        "the job is run again and ends Done: {:?}",
        job_status(&app, &job_id).await
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// Finding 3, its second half: a worker's fetch reaches the database and commits (the jobs
/// it took are `Queued` under that worker), but the answer to its COMMIT is lost with the
/// connection. The worker is alive and heartbeating, so the lease never reclaims the job; it
/// was never handed to the worker, so it never runs; and the sweeper leaves a live job's rows
/// alone. The job must still run, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_commit_answer_was_lost_leaves_no_job_stranded() {
    let proxy = FaultProxy::start(common::server_addr().await).await;
    let url = common::fresh_database_url();
    let guard = Arc::new(DatabaseGuard { url: url.clone() });
    // Without a prepared-statement cache each statement's text crosses the proxy every time,
    // so the proxy can tell the fetch's transaction.
    let through_proxy = format!(
        "{}?statement-cache-capacity=0&ssl-mode=disabled",
        common::with_host(&url, proxy.addr)
    );
    let state = orderflow::startup::init(common::test_config(&through_proxy))
        .await
        .expect("starts through the proxy");
    let lease = state.config.events.queue.lease;
    let app = TestApp::serve(state, guard, None).await;
    let direct = sqlx::MySqlPool::connect(&url).await.unwrap();

    let job_id = orderflow_jobs::engine::queue::new_job_id();
    proxy.lose_answer_to_commit_after(&[b"SET status = 'Queued'", job_id.as_bytes()]);
    append_row(&app, 3131, &job_id, json!({"orderId": 3131})).await;
    push_job(&app, &job_id, Vec::new()).await;
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            proxy.commit_answers_lost() == 1
        })
        .await,
        "the fetch that took the job lost its COMMIT's answer"
    );
    let job = |direct: sqlx::MySqlPool, id: String| async move {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT status, attempts, lock_by FROM jobs WHERE id = ?",
        )
        .bind(id)
        .fetch_one(&direct)
        .await
        .unwrap()
    };
    // Well inside the lease: the worker stays alive, so the reaper is not what moves it.
    let wait = lease.min(Duration::from_secs(20));
    let done = app
        .eventually(wait, || async {
            job(direct.clone(), job_id.clone()).await.0 == "Done"
        })
        .await;
    assert!(
        done,
        "the job runs and ends Done within {wait:?}; it is {:?}",
        job(direct.clone(), job_id.clone()).await
    );
    let (_, attempts, _) = job(direct.clone(), job_id.clone()).await;
    assert_eq!(attempts, 1, "the lost fetch counts no attempt; one run");
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_attempts WHERE job_id = ?")
        .bind(&job_id)
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(failed, 0, "no failed or interrupted attempt recorded");
    let published: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox_events WHERE job_id = ? AND status = 'PUBLISHED'",
    )
    .bind(&job_id)
    .fetch_one(&direct)
    .await
    .unwrap();
    assert_eq!(published, 1);
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// A job whose own row another job holds (a publish job carrying it along from the backlog,
/// its send slow or refused) past this job's wait must not end Done with that row still NEW:
/// it would leave the row to the sweeper's grace and to another job, and a row Kafka refuses
/// would then die under a job that is not the one named when it was committed (seen under a
/// slow broker: `a_record_kafka_refuses_for_good…` found its job Done, published 0, skipped 1).
/// The job retries after its backoff, and publishes the row itself once the hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_row_another_job_holds_past_its_wait_retries_and_publishes_it_itself() {
    let app = TestApp::spawn().await;
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    let row = append_row(&app, 4242, &job_id, json!({"orderId": 4242})).await;
    // Held as by another job's send that outlasts this job's wait (the claim lease, 8 s here).
    sqlx::query(
        "UPDATE outbox_events SET claimed_until = CURRENT_TIMESTAMP(6) + INTERVAL 14 SECOND \
         WHERE id = ?",
    )
    .bind(row)
    .execute(app.db())
    .await
    .unwrap();
    push_job(&app, &job_id, Vec::new()).await;
    let row_state = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT status, job_id FROM outbox_events WHERE id = ?",
        )
        .bind(row)
        .fetch_one(app.db())
        .await
        .unwrap()
    };
    // Until the row is published, its job never ends Done with the row NEW.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, owner) = row_state().await;
        let job = job_status(&app, &job_id).await;
        if status == "PUBLISHED" {
            break;
        }
        assert!(
            job.as_deref() != Some("Done"),
            "the job ended Done while its row is {status} (the row now names {owner})"
        );
        assert!(tokio::time::Instant::now() < deadline, "never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, owner) = row_state().await;
    assert_eq!(
        owner, job_id,
        "published by the job it names, not handed on"
    );
    assert!(
        app.eventually(WAIT, || async {
            job_status(&app, &job_id).await.as_deref() == Some("Done")
        })
        .await
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// The statement that marks delivered rows PUBLISHED loses a deadlock (InnoDB picks it as
/// the victim; seen in bench/ under load, `1213 Deadlock found` on a publish job). Kafka has
/// the records already: the rows must be marked at once, not left claimed for the whole claim
/// lease and then sent again (a duplicate on the topic, and every job waiting on those rows
/// stalled for the lease: the bench's pipeline once took 15 s to catch up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marking_rows_published_survives_a_deadlock_without_sending_them_again() {
    let app = TestApp::spawn().await;
    // The first UPDATE that publishes a row fails as a deadlock victim would. The flag lives
    // in a MEMORY table: the failed statement's rollback does not undo it.
    sqlx::raw_sql(
        "CREATE TABLE injected_once (fired INT) ENGINE = MEMORY; \
         CREATE TRIGGER injected_deadlock BEFORE UPDATE ON outbox_events FOR EACH ROW \
         IF NEW.status = 'PUBLISHED' AND OLD.status = 'NEW' \
            AND (SELECT COUNT(*) FROM injected_once) = 0 THEN \
           INSERT INTO injected_once VALUES (1); \
           SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, \
             MESSAGE_TEXT = 'injected: Deadlock found when trying to get lock'; \
         END IF",
    )
    .execute(app.db())
    .await
    .unwrap();
    let job_id = orderflow_jobs::engine::queue::new_job_id();
    append_row(&app, 5150, &job_id, json!({"orderId": 5150})).await;
    push_job(&app, &job_id, Vec::new()).await;
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "published: {:?}",
        by_status(&app).await
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM injected_once").await,
        1,
        "the deadlock was injected"
    );
    assert_each_event_once(&app, "ORDER_CREATED", 1).await;
    app.stop().await;
}

/// Issue 29: a producer and a consumer librdkafka declares dead (a fatal error, raised here
/// with librdkafka's own test hook: the embedded broker never gets there by itself; the
/// tansu cut in tests/faults.rs is the real case) are replaced. What the producer held when
/// it died (queued while the broker was down) stays NEW and goes out once with the new one;
/// the new consumer resumes from the committed offsets; each replacement is recorded once
/// and shows on its queue's line of the operators' overview and console page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_and_a_consumer_librdkafka_declares_dead_are_replaced_and_nothing_is_lost_or_sent_twice(
) {
    use rdkafka::types::RDKafkaErrorCode;

    let app = TestApp::spawn_with(|c| c.events.kafka_brokers = None).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let product = app.new_product(&admin, 100, 1_000).await;
    let order = |key: String| {
        let (app, user) = (&app, &user);
        async move {
            let r = app
                .order(user, &key, json!([{"productId": product, "quantity": 1}]))
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{key}: {}", r.text);
        }
    };
    let notified = |n: i64| {
        let app = &app;
        async move {
            app.eventually(WAIT, || async {
                app.count("SELECT COUNT(*) FROM notifications").await == n
            })
            .await
        }
    };
    for i in 0..5 {
        order(format!("before-{i}")).await;
    }
    assert!(notified(5).await, "the pipeline runs");

    // The broker down: the next orders' events wait in the producer's queue.
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");
    embedded.broker_down();
    for i in 0..5 {
        order(format!("queued-{i}")).await;
    }
    assert!(
        app.eventually(WAIT, || async {
            app.count("SELECT COUNT(*) FROM outbox_events WHERE claimed_until IS NOT NULL")
                .await
                > 0
        })
        .await,
        "a publish job is sending the rows"
    );
    let producer = &app.state.events.producer;
    producer
        .raise_fatal_error_for_test(
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            "the broker's sequence and the producer's disagree",
        )
        .await;
    assert!(
        app.eventually(WAIT, || async { producer.rebuilds() == 1 })
            .await,
        "the dead producer is replaced"
    );
    embedded.broker_up();
    assert!(notified(10).await, "{:?}", by_status(&app).await);

    // The consumer dies (as a static member fenced by another process would).
    app.state.events.consumer_fatal_for_test.raise();
    let consumer_rebuilt = || async {
        app.count("SELECT COUNT(*) FROM kafka_client_rebuilds WHERE client = 'consumer'")
            .await
            == 1
    };
    assert!(
        app.eventually(WAIT, consumer_rebuilt).await,
        "the dead consumer is replaced"
    );
    for i in 0..5 {
        order(format!("after-{i}")).await;
    }
    assert!(
        notified(15).await,
        "the new consumer delivers: {} of 15",
        app.count("SELECT COUNT(*) FROM notifications").await
    );

    assert!(all_published(&app).await, "{:?}", by_status(&app).await);
    assert_each_event_once(&app, "ORDER_CREATED", 15).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.count("SELECT COUNT(*) FROM notifications").await, 15);
    assert_eq!(producer.rebuilds(), 1, "replaced once");
    let last = producer.last_rebuild().expect("the rebuild");
    assert!(last.error.contains("OutOfOrderSequenceNumber"), "{last:?}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM kafka_client_rebuilds WHERE client = 'producer'")
            .await,
        1,
        "recorded once"
    );

    // The operators' view: each client's rebuild on its queue's line, with its error.
    let queues = app.get("/api/v1/admin/queues", Some(&admin)).await;
    assert_eq!(queues.status, StatusCode::OK, "{}", queues.text);
    let line = |queue: &str| {
        queues.body["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["queue"] == queue))
            .map(|q| q["kafkaClient"].clone())
            .unwrap_or_default()
    };
    let (publish, notify) = (line("publish-outbox"), line("consume-notification"));
    assert_eq!(publish["client"], "producer", "{}", queues.text);
    assert_eq!(publish["rebuildsLast60m"], 1, "{}", queues.text);
    assert_eq!(publish["rebuildsTotal"], 1, "{}", queues.text);
    assert!(publish["lastRebuiltAt"].is_string(), "{}", queues.text);
    assert!(
        publish["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("OutOfOrderSequenceNumber")),
        "{}",
        queues.text
    );
    assert_eq!(notify["client"], "consumer", "{}", queues.text);
    assert_eq!(notify["rebuildsTotal"], 1, "{}", queues.text);
    assert!(
        notify["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("FencedInstanceId")),
        "{}",
        queues.text
    );
    assert!(line("archive-run").is_null(), "{}", queues.text);

    let console = common::console::Visitor::new(&app);
    console
        .sign_in(common::ADMIN_EMAIL, common::ADMIN_PASSWORD)
        .await;
    let page = console.get("/console/queues").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    for shown in [
        "producer: 1 in 60 min, 1 in all",
        "consumer: 1 in 60 min, 1 in all",
    ] {
        assert!(page.text.contains(shown), "{shown}: {}", page.text);
    }

    let metrics = app.get("/actuator/prometheus", None).await.text;
    for client in ["producer", "consumer"] {
        let name = format!("kafka_client_rebuilds_total{{client=\"{client}\"}}");
        assert!(metrics.contains(&name), "{name}: {metrics}");
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE status = 'DEAD'")
            .await,
        0
    );
    common::audit::assert_passes(&app.db_guard.url);
}
