//! The operators' side over HTTP: the attempt history of a job killed by a Kafka outage
//! (with trace links), the job list's filters and counts, one job, bulk retry and discard,
//! pausing a queue across replicas and restarts, an order's timeline, and the audit log of
//! every action.

mod common;

use std::time::Duration;

use common::{kafka, TestApp, ADMIN_EMAIL};
use reqwest::{Method, StatusCode};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_UI: &str = "http://jaeger.test:16686/trace/{traceId}";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
}

/// Places an order carrying the client's trace context; returns its id.
async fn traced_order(app: &TestApp, user: &str, product: i64, key: &str) -> i64 {
    let r = app
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(user),
            &[("Idempotency-Key", key), ("traceparent", &traceparent())],
            Some(json!({"items": [{"productId": product, "quantity": 1}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_i64().unwrap()
}

async fn notifications(app: &TestApp, token: &str) -> usize {
    app.get("/api/v1/notifications?size=100", Some(token))
        .await
        .body["items"]
        .as_array()
        .map_or(0, Vec::len)
}

async fn count(app: &TestApp, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(app.db())
        .await
        .unwrap()
}

/// A publish job killed by a Kafka outage records each failed attempt — error, worker,
/// times, outcome, and the trace of the order — and a successful attempt records nothing.
/// The job's page shows them newest first with trace links, and the outbox row it carries;
/// a search by the order finds the job; a bulk retry by that search publishes the order
/// once, notifies it once, and is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_leaves_each_attempts_error_and_trace_and_a_bulk_retry_by_order_recovers() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(1500);
        // An outage is retried for the window (ADR 0015); a short one kills the job soon.
        c.events.publish_retry_window = Duration::from_secs(3);
        c.events.queue.backoff_base = Duration::from_millis(300);
        c.events.queue.backoff_max = Duration::from_secs(1);
        c.trace_ui = Some(TRACE_UI.parse().unwrap());
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");

    embedded.broker_down();
    let order_id = traced_order(&app, &user, p, "outage-1").await;
    let job_id: String =
        sqlx::query_scalar("SELECT job_id FROM outbox_events WHERE aggregate_id = ?")
            .bind(order_id)
            .fetch_one(app.db())
            .await
            .unwrap();
    // apalis marks the job Killed, then the history layer writes the last attempt.
    let dead = app
        .eventually(WAIT, || async {
            count(
                &app,
                "SELECT COUNT(*) FROM job_attempts WHERE job_id = ? AND outcome = 'dead'",
                &job_id,
            )
            .await
                == 1
                && count(
                    &app,
                    "SELECT COUNT(*) FROM jobs WHERE id = ? AND status = 'Killed'",
                    &job_id,
                )
                .await
                    == 1
        })
        .await;
    assert!(dead, "failed attempts until the window ended, the job dead");

    let job = app
        .get(&format!("/api/v1/admin/jobs/{job_id}"), Some(&admin))
        .await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.text);
    let b = &job.body;
    assert_eq!(b["state"], "dead");
    assert_eq!(b["queue"], "publish-outbox");
    let history = b["attemptHistory"].as_array().unwrap();
    let numbers: Vec<i64> = history
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    let attempts = numbers.len() as i64;
    assert!(attempts >= 2, "retried within the window: {numbers:?}");
    assert_eq!(
        numbers,
        (1..=attempts).rev().collect::<Vec<_>>(),
        "newest first"
    );
    let outcomes: Vec<&str> = history
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes[0], "dead");
    assert!(outcomes[1..].iter().all(|o| *o == "retry"), "{outcomes:?}");
    for a in history {
        let error = a["error"].as_str().unwrap();
        assert!(error.contains("kafka delivery failed"), "{error}");
        assert!(a["worker"].as_str().unwrap().starts_with("publish-"), "{a}");
        assert_eq!(
            a["traceId"], TRACE_ID,
            "the attempt continues the order's trace"
        );
        assert_eq!(
            a["traceUrl"],
            format!("http://jaeger.test:16686/trace/{TRACE_ID}")
        );
        assert!(a["finishedAt"].as_str() >= a["startedAt"].as_str());
    }
    let rows = b["outboxRows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["orderId"], order_id);
    assert_eq!(rows[0]["status"], "DEAD");
    assert_eq!(rows[0]["traceId"], TRACE_ID);
    let event_id = rows[0]["eventId"].as_str().unwrap().to_owned();

    // The job is found by its order, by its event, and by itself.
    for q in [order_id.to_string(), event_id.clone(), job_id.clone()] {
        let page = app
            .get(
                &format!("/api/v1/admin/jobs?status=all&q={q}"),
                Some(&admin),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let ids: Vec<&str> = page.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&job_id.as_str()), "q={q}: {ids:?}");
        assert_eq!(page.body["counts"]["dead"], 1, "q={q}");
    }

    embedded.broker_up();
    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {"q": order_id.to_string()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["retried"], 1);
    // The consumer reconnects on librdkafka's own backoff (up to 10 s between tries).
    assert!(
        app.eventually(2 * WAIT, || async { notifications(&app, &user).await == 1 })
            .await,
        "notified after the retry"
    );
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic("ORDER_CREATED"),
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1, "published once: {events:?}");

    // A second order on the happy path: its job is Done and wrote no history.
    let second = traced_order(&app, &user, p, "after-outage").await;
    assert!(
        app.eventually(WAIT, || async { notifications(&app, &user).await == 2 })
            .await
    );
    let second_job: String =
        sqlx::query_scalar("SELECT job_id FROM outbox_events WHERE aggregate_id = ?")
            .bind(second)
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM job_attempts WHERE job_id = ?",
            &second_job
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM job_attempts WHERE job_id = ?",
            &job_id
        )
        .await,
        attempts,
        "the successful attempt after the retry added nothing"
    );

    let audit = app.get("/api/v1/admin/audit", Some(&admin)).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let entry = &audit.body["items"][0];
    assert_eq!(entry["action"], "bulk_retry");
    assert_eq!(entry["via"], "api");
    assert_eq!(entry["actor"], ADMIN_EMAIL);
    assert_eq!(entry["affected"], 1);
    assert_eq!(entry["target"]["filter"]["q"], order_id.to_string());
    assert_eq!(
        entry["target"]["jobs"],
        json!([job_id]),
        "its one row: the job itself"
    );
}

/// A job row as an operator's test fixture.
async fn insert_job(app: &TestApp, id: &str, queue: &str, status: &str, attempts: i32) {
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result, done_at) \
         VALUES (?, ?, ?, ?, 3, '{}', ?, IF(? IN ('Killed', 'Done'), CURRENT_TIMESTAMP, NULL))",
    )
    .bind(id)
    .bind(queue)
    .bind(status)
    .bind(attempts)
    .bind(format!("\"{status} result\""))
    .bind(status)
    .execute(app.db())
    .await
    .unwrap();
}

/// A ULID made at `t`.
fn ulid_at(t: chrono::DateTime<chrono::Utc>, n: u128) -> String {
    ulid::Ulid::from_parts(t.timestamp_millis() as u64, n).to_string()
}

/// Filters (state, queue, queued since/until) and the counts of every state under the same
/// filters; unknown values are the standard 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_filters_by_state_queue_and_time_and_counts_every_state() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::hours(3);
    let jobs = [
        (ulid_at(old, 1), "consume-notification", "Killed", 3),
        (ulid_at(old, 2), "publish-outbox", "Killed", 3),
        (ulid_at(now, 3), "publish-outbox", "Killed", 3),
        (ulid_at(now, 4), "publish-outbox", "Done", 1),
        (ulid_at(now, 5), "publish-outbox", "Failed", 1),
        (ulid_at(now, 6), "publish-outbox", "Running", 1),
        (ulid_at(now, 7), "retention", "Discarded", 3),
    ];
    for (id, queue, status, attempts) in &jobs {
        insert_job(&app, id, queue, status, *attempts).await;
    }

    let page = app
        .get("/api/v1/admin/jobs?queue=publish-outbox", Some(&admin))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(page.body["totalItems"], 2, "dead by default");
    assert_eq!(
        page.body["counts"],
        json!({"dead": 2, "pending": 1, "running": 1, "done": 1, "discarded": 0})
    );
    let since = (now - chrono::Duration::minutes(1)).to_rfc3339();
    let recent = app
        .get(
            &format!("/api/v1/admin/jobs?status=all&since={}", urlencode(&since)),
            Some(&admin),
        )
        .await;
    assert_eq!(recent.body["totalItems"], 5, "{}", recent.text);
    assert_eq!(recent.body["counts"]["dead"], 1);
    assert_eq!(recent.body["counts"]["discarded"], 1);
    let until = (now - chrono::Duration::hours(1)).to_rfc3339();
    let older = app
        .get(
            &format!("/api/v1/admin/jobs?until={}", urlencode(&until)),
            Some(&admin),
        )
        .await;
    let ids: Vec<&str> = older.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{}", older.text);
    assert!(ids
        .iter()
        .all(|id| [&jobs[0].0, &jobs[1].0].contains(&&id.to_string())));
    let discarded = app
        .get("/api/v1/admin/jobs?status=discarded", Some(&admin))
        .await;
    assert_eq!(discarded.body["items"][0]["state"], "discarded");

    app.get("/api/v1/admin/jobs?status=killed", Some(&admin))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let bad = app
        .get(
            "/api/v1/admin/jobs?since=yesterday&until=2026-13-01",
            Some(&admin),
        )
        .await;
    bad.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(bad.body["details"].as_array().unwrap().len(), 2);
    // Present but empty is not a time either (schemathesis: a schema-violating request).
    app.get("/api/v1/admin/jobs?until=", Some(&admin))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    app.get("/api/v1/admin/jobs/no-such-job", Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// Discarding a dead publish job sets it aside and its DEAD rows become DISCARDED (never
/// published, still counted); only dead jobs are discarded or retried; an archive-run job is
/// not discarded; bulk actions by ids and by filter answer how many; each action is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_and_bulk_actions_change_only_dead_jobs_and_are_audited() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let now = chrono::Utc::now();
    let ids: Vec<String> = (1..=6).map(|n| ulid_at(now, n)).collect();
    insert_job(&app, &ids[0], "publish-outbox", "Killed", 3).await;
    insert_job(&app, &ids[1], "consume-notification", "Killed", 3).await;
    insert_job(&app, &ids[2], "consume-notification", "Killed", 3).await;
    insert_job(&app, &ids[3], "archive-run", "Killed", 3).await;
    insert_job(&app, &ids[4], "publish-outbox", "Done", 1).await;
    insert_job(&app, &ids[5], "retention", "Killed", 3).await;
    sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, \
         status, job_id, attempts) VALUES (UUID(), 'ORDER', 77, 'ORDER_CREATED', '{}', 'DEAD', ?, 3)",
    )
    .bind(&ids[0])
    .execute(app.db())
    .await
    .unwrap();

    // A USER is no operator.
    app.post(
        &format!("/api/v1/admin/jobs/{}/discard", ids[0]),
        Some(&user),
        json!({}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");

    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{}/discard", ids[0]),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"id": ids[0], "status": "Discarded", "outboxRowsDiscarded": 1})
    );
    let row: String = sqlx::query_scalar("SELECT status FROM outbox_events WHERE job_id = ?")
        .bind(&ids[0])
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(row, "DISCARDED");
    for (path, id) in [
        ("discard", &ids[0]),
        ("retry", &ids[0]),
        ("discard", &ids[4]),
    ] {
        app.post(
            &format!("/api/v1/admin/jobs/{id}/{path}"),
            Some(&admin),
            json!({}),
        )
        .await
        .assert_error(StatusCode::CONFLICT, "INVALID_STATE");
    }
    let archive = app
        .post(
            &format!("/api/v1/admin/jobs/{}/discard", ids[3]),
            Some(&admin),
            json!({}),
        )
        .await;
    archive.assert_error(StatusCode::CONFLICT, "INVALID_STATE");
    assert!(archive.body["message"]
        .as_str()
        .unwrap()
        .contains("archive run"));
    app.post("/api/v1/admin/jobs/nope/discard", Some(&admin), json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // By ids: only the dead ones count.
    let r = app
        .post(
            "/api/v1/admin/jobs/discard",
            Some(&admin),
            json!({"ids": [ids[1], ids[4], "nope"]}),
        )
        .await;
    assert_eq!(r.body["discarded"], 1, "{}", r.text);
    // By filter: every dead job of the queue, confirmed by their count.
    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {"queue": "consume-notification"}, "expectedCount": 1}),
        )
        .await;
    assert_eq!(
        (r.body["retried"].clone(), r.body["matched"].clone()),
        (json!(1), json!(1)),
        "{}",
        r.text
    );
    let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
        .bind(&ids[2])
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(status, "Pending");
    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": ["a"], "filter": {}}),
    ] {
        app.post("/api/v1/admin/jobs/retry", Some(&admin), bad)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }

    let audit = app.get("/api/v1/admin/audit?size=10", Some(&admin)).await;
    let actions: Vec<(&str, i64)> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["affected"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("bulk_retry", 1), ("bulk_discard", 1), ("discard", 1)],
        "refusals change nothing and are not recorded"
    );
    assert_eq!(
        audit.body["items"][1]["target"],
        json!({"ids": [ids[1], ids[4], "nope"], "expectedCount": null, "jobs": [ids[1]]})
    );
    // The discarded job and its row stay visible.
    let shown = app
        .get(&format!("/api/v1/admin/jobs/{}", ids[0]), Some(&admin))
        .await;
    assert_eq!(shown.body["state"], "discarded");
    assert_eq!(shown.body["outboxRows"][0]["status"], "DISCARDED");
}

/// Whether the poison message with this payload is parked as a dead job.
async fn parked(app: &TestApp, payload: &str) -> bool {
    count(
        app,
        "SELECT COUNT(*) FROM jobs WHERE job_type = 'consume-notification' \
         AND status = 'Killed' AND LOCATE(?, job) > 0",
        payload,
    )
    .await
        > 0
}

/// A paused queue is fetched from by no replica, also after a restart, while the others run
/// on; once resumed, its work is done once. The queues page shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_stays_paused_on_every_replica_and_across_a_restart() {
    let a = TestApp::spawn().await;
    let b = a.replica_of().await;
    let admin = a.admin_token().await;
    let (_, user) = a.new_user().await;
    let p = a.new_product(&admin, 10, 100).await;

    let r = a
        .post(
            "/api/v1/admin/queues/publish-outbox/pause",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["paused"], true);
    assert_eq!(r.body["changedBy"], ADMIN_EMAIL);
    a.post("/api/v1/admin/queues/nope/pause", Some(&admin), json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // Each poison message is told apart by its payload (a commit that fails in a rebalance
    // may deliver one twice, and each delivery parks a dead job).
    let poison = |app: &TestApp, payload: &'static str| {
        let bootstrap = app.state.events.bootstrap.clone();
        let topic = app.topic("ORDER_CREATED");
        async move { kafka::produce(&bootstrap, &topic, "k", payload, &[]).await }
    };
    // A pause reaches every replica within one poll interval, so the orders come after both
    // have read it: once a poison message has gone all the way through the other queue
    // (consumer, push, fetch, dead job), several poll intervals have passed.
    poison(&a, "poison one").await;
    assert!(a.eventually(WAIT, || parked(&a, "poison one")).await);
    let order_a = a
        .order(&user, "paused-a", json!([{"productId": p, "quantity": 1}]))
        .await;
    let order_b = b
        .order(&user, "paused-b", json!([{"productId": p, "quantity": 1}]))
        .await;
    assert_eq!(order_a.status, StatusCode::CREATED);
    assert_eq!(order_b.status, StatusCode::CREATED);
    // Several poll intervals more, in which neither replica takes the orders' publish jobs.
    poison(&a, "poison two").await;
    assert!(a.eventually(WAIT, || parked(&a, "poison two")).await);
    let publish_jobs = "SELECT COUNT(*) FROM jobs WHERE job_type = 'publish-outbox'";
    let untouched = "SELECT COUNT(*) FROM jobs WHERE job_type = 'publish-outbox' \
                     AND status = 'Pending' AND attempts = 0 AND lock_by IS NULL";
    assert_eq!(a.count(untouched).await, a.count(publish_jobs).await);
    let new_rows = "SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW'";
    assert_eq!(a.count(new_rows).await, 2);

    // A restarted replica keeps the pause.
    b.stop().await;
    let c = a.replica_of().await;
    poison(&a, "poison three").await;
    // The consumer group rebalances first (up to its rebalance timeout).
    assert!(a.eventually(2 * WAIT, || parked(&a, "poison three")).await);
    assert_eq!(a.count(untouched).await, a.count(publish_jobs).await);
    assert_eq!(a.count(new_rows).await, 2);
    let queues = c.get("/api/v1/admin/queues", Some(&admin)).await;
    assert_eq!(queues.status, StatusCode::OK, "{}", queues.text);
    let publish = queues.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "publish-outbox")
        .unwrap()
        .clone();
    assert_eq!(publish["paused"], true);
    assert_eq!(publish["counts"]["pending"], 2, "{publish}");
    assert!(publish["oldestPendingAgeSecs"].as_i64().unwrap() >= 0);
    let notify = queues.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "consume-notification")
        .unwrap()
        .clone();
    assert_eq!(notify["paused"], false);
    assert!(notify["deadLast60m"].as_i64().unwrap() >= 3, "{notify}");
    assert!(notify["liveWorkers"].as_i64().unwrap() >= 2, "{notify}");

    let r = c
        .post(
            "/api/v1/admin/queues/publish-outbox/resume",
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.body["paused"], false, "{}", r.text);
    assert!(
        a.eventually(WAIT, || async {
            a.count("SELECT COUNT(*) FROM notifications").await == 2
        })
        .await,
        "published and notified after the resume"
    );
    let audit = a.get("/api/v1/admin/audit", Some(&admin)).await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["resume", "pause"]);
    assert_eq!(
        audit.body["items"][0]["target"],
        json!({"queue": "publish-outbox"})
    );
    c.stop().await;
}

/// "Where is my order's event?": the timeline lists the commit, the outbox row, its publish
/// job, the publication and the notification, each with its time, and the order's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_timeline_runs_from_its_commit_to_its_notification() {
    let app = TestApp::spawn_with(|c| c.trace_ui = Some(TRACE_UI.parse().unwrap())).await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 100).await;
    let order_id = traced_order(&app, &user, p, "timeline-1").await;
    assert!(
        app.eventually(WAIT, || async { notifications(&app, &user).await == 1 })
            .await
    );

    let r = app
        .get(
            &format!("/api/v1/admin/orders/{order_id}/timeline"),
            Some(&admin),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let t = &r.body;
    assert_eq!(t["orderId"], order_id);
    assert_eq!(t["userId"], user_id);
    assert_eq!(t["status"], "CREATED");
    assert_eq!(t["traceId"], TRACE_ID);
    assert_eq!(
        t["traceUrl"],
        format!("http://jaeger.test:16686/trace/{TRACE_ID}")
    );
    let steps: Vec<&str> = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "COMMITTED",
            "OUTBOX_ROW",
            "PUBLISH_JOB",
            "PUBLISHED",
            "NOTIFICATION_STORED"
        ]
    );
    let all_timed = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["at"].is_string());
    assert!(all_timed, "{t}");
    assert_eq!(t["steps"][1]["status"], "PUBLISHED");
    assert_eq!(t["steps"][2]["status"], "done");
    assert_eq!(t["steps"][2]["attempts"], 1);
    assert!(t["steps"][2]["jobId"].is_string());

    app.get("/api/v1/admin/orders/999999/timeline", Some(&admin))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.get(
        &format!("/api/v1/admin/orders/{order_id}/timeline"),
        Some(&user),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
}
