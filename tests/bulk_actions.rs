//! Operators' bulk actions on dead jobs (issue 30, findings 5 and 6). By an order or an event
//! id they act on that order's outbox rows and events only: a publish job carries many
//! orders' rows and a notification job many events, and their batch-mates are left as they
//! were (the job is split). By a filter they are capped, confirmed by the count the operator
//! expects (a dry run gives it), and recorded in the audit log in the transaction that
//! changes the jobs — from the API, the console and the CLI alike.

mod common;

use std::{process::Command, time::Duration};

use common::{console::Visitor, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
/// The most jobs one bulk action changes.
const LIMIT: usize = 1000;

/// A dead job, as apalis leaves one whose attempts (or window) ran out.
async fn dead_job(app: &TestApp, id: &str, queue: &str, payload: &Value) {
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result, done_at) \
         VALUES (?, ?, 'Killed', 3, 3, ?, '{\"Err\":\"kafka delivery failed\"}', CURRENT_TIMESTAMP)",
    )
    .bind(id)
    .bind(queue)
    .bind(payload.to_string())
    .execute(app.db())
    .await
    .unwrap();
}

/// `n` dead jobs of `queue` queued at `at`, in one statement.
async fn dead_jobs_at(app: &TestApp, queue: &str, at: chrono::DateTime<chrono::Utc>, n: usize) {
    let mut q = sqlx::QueryBuilder::new(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, done_at) ",
    );
    q.push_values(0..n, |mut row, i| {
        let id = ulid::Ulid::from_parts(at.timestamp_millis() as u64, i as u128 + 1);
        row.push_bind(id.to_string())
            .push_bind(queue.to_owned())
            .push("'Killed', 3, 3, '{}', CURRENT_TIMESTAMP");
    });
    q.build().execute(app.db()).await.unwrap();
}

fn order_event(order_id: i64, user_id: i64) -> Value {
    json!({"orderId": order_id, "userId": user_id, "totalAmount": 100,
           "occurredAt": chrono::Utc::now().to_rfc3339()})
}

/// An order's ORDER_CREATED row, DEAD under the publish job `job` (the end of its retry
/// window); returns its id and event id.
async fn dead_row(app: &TestApp, job: &str, order_id: i64, user_id: i64) -> (i64, String) {
    let event_id = uuid::Uuid::now_v7().to_string();
    let done = sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, \
         status, job_id, attempts, last_error) \
         VALUES (?, 'ORDER', ?, 'ORDER_CREATED', ?, 'DEAD', ?, 3, 'kafka delivery failed')",
    )
    .bind(&event_id)
    .bind(order_id)
    .bind(order_event(order_id, user_id).to_string())
    .bind(job)
    .execute(app.db())
    .await
    .unwrap();
    (done.last_insert_id() as i64, event_id)
}

/// A received ORDER_CREATED message, as the consumer hands it to a notification job.
fn received(app: &TestApp, event_id: &str, order_id: i64, user_id: i64) -> Value {
    json!({"topic": app.topic("ORDER_CREATED"), "partition": 0, "offset": order_id,
           "event_id": event_id, "event_type": "ORDER_CREATED",
           "payload": order_event(order_id, user_id).to_string(),
           "traceparent": null, "tracestate": null})
}

fn new_job_id() -> String {
    ulid::Ulid::new().to_string()
}

async fn row(app: &TestApp, outbox_id: i64) -> (String, String) {
    sqlx::query_as("SELECT status, job_id FROM outbox_events WHERE id = ?")
        .bind(outbox_id)
        .fetch_one(app.db())
        .await
        .unwrap()
}

async fn job(app: &TestApp, id: &str) -> (String, String, String) {
    sqlx::query_as("SELECT job_type, status, CAST(job AS CHAR) FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_one(app.db())
        .await
        .unwrap()
}

/// The event ids a notification job carries.
fn events_of(payload: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(payload).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// The consume-notification jobs in `status` carrying `event_id`.
async fn notification_jobs_with(app: &TestApp, event_id: &str, status: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE job_type = 'consume-notification' AND status = ? \
         AND LOCATE(?, job) > 0",
    )
    .bind(status)
    .bind(event_id)
    .fetch_all(app.db())
    .await
    .unwrap()
}

async fn audit(app: &TestApp, admin: &str) -> Vec<Value> {
    let page = app.get("/api/v1/admin/audit?size=50", Some(admin)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    page.body["items"].as_array().unwrap().clone()
}

/// Jobs an operator's action made runnable again, and the audit log's count of changed jobs.
async fn requeued_and_recorded(app: &TestApp) -> (i64, i64) {
    let requeued = app
        .count("SELECT COUNT(*) FROM jobs WHERE status = 'Pending'")
        .await;
    let recorded = app
        .count("SELECT CAST(COALESCE(SUM(affected), 0) AS SIGNED) FROM operator_audit")
        .await;
    (requeued, recorded)
}

/// Finding 5: a publish job carries the rows of orders 41, 42 and 43, a notification job the
/// events of 42 and 43, and order 42's cancellation sits alone in a job of its own.
/// Discarding "order 42" discards its two rows and its event — splitting the shared jobs —
/// and nothing of 41 or 43: their rows stay DEAD under their dead job, whose retry revives
/// exactly them. The response and the audit entry name what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarding_an_order_discards_its_rows_and_events_and_leaves_its_batch_mates_dead() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    // A sweeper's job, given its rows by id.
    let publish = new_job_id();
    let (r41, _) = dead_row(&app, &publish, 41, 1).await;
    let (r42, e42) = dead_row(&app, &publish, 42, 1).await;
    let (r43, e43) = dead_row(&app, &publish, 43, 1).await;
    let listed = json!({"outbox_ids": [r41, r42, r43]});
    dead_job(&app, &publish, "publish-outbox", &listed).await;
    let alone = new_job_id();
    dead_job(&app, &alone, "publish-outbox", &json!({"outbox_ids": []})).await;
    let (r42_alone, _) = dead_row(&app, &alone, 42, 1).await;
    let notify = new_job_id();
    dead_job(
        &app,
        &notify,
        "consume-notification",
        &json!({"events": [received(&app, &e42, 42, 1), received(&app, &e43, 43, 1)]}),
    )
    .await;

    let r = app
        .post(
            "/api/v1/admin/jobs/discard",
            Some(&admin),
            json!({"filter": {"q": "42"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Order 42's rows are DISCARDED; its batch-mates' are DEAD, still under their dead job.
    assert_eq!(row(&app, r42).await.0, "DISCARDED");
    assert_eq!(row(&app, r42_alone).await.0, "DISCARDED");
    for mate in [r41, r43] {
        assert_eq!(
            row(&app, mate).await,
            ("DEAD".to_owned(), publish.clone()),
            "a batch-mate of order 42 (outbox row {mate}) was changed"
        );
    }
    let (_, status, payload) = job(&app, &publish).await;
    assert_eq!(status, "Killed");
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload["outbox_ids"],
        json!([r41, r43]),
        "it carries 41 and 43 only"
    );
    assert_eq!(job(&app, &alone).await.1, "Discarded", "a job of 42 alone");
    let split_off = row(&app, r42).await.1;
    assert_ne!(split_off, publish, "42's row moved to a job of its own");
    let (queue, status, _) = job(&app, &split_off).await;
    assert_eq!(
        (queue.as_str(), status.as_str()),
        ("publish-outbox", "Discarded")
    );
    // The notification job keeps 43's event, dead; 42's event is set aside in a job of its own.
    let (_, status, payload) = job(&app, &notify).await;
    assert_eq!(status, "Killed");
    assert_eq!(events_of(&payload), [e43.as_str()]);
    let discarded = notification_jobs_with(&app, &e42, "Discarded").await;
    assert_eq!(discarded.len(), 1, "{discarded:?}");
    assert_eq!(events_of(&job(&app, &discarded[0]).await.2), [e42.as_str()]);

    let b = &r.body;
    assert_eq!(b["discarded"], 3, "{b}");
    assert_eq!(b["outboxRows"], 2, "{b}");
    assert_eq!(b["events"], 1, "{b}");
    assert_eq!(b["split"], 2, "{b}");
    let entry = &audit(&app, &admin).await[0];
    assert_eq!(entry["action"], "bulk_discard");
    assert_eq!(entry["affected"], 3);
    assert_eq!(entry["target"]["filter"]["q"], "42");
    let mut rows: Vec<i64> = entry["target"]["outboxRows"]
        .as_array()
        .unwrap_or_else(|| panic!("the entry names the rows: {entry}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    rows.sort_unstable();
    assert_eq!(rows, [r42, r42_alone]);
    assert_eq!(entry["target"]["events"], json!([e42]));

    // The batch-mates' job, retried, revives exactly them.
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{publish}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(row(&app, r41).await.0, "NEW");
    assert_eq!(row(&app, r43).await.0, "NEW");
    assert_eq!(row(&app, r42).await.0, "DISCARDED");
    // What was split off is still found by the order.
    let found = app
        .get("/api/v1/admin/jobs?status=discarded&q=42", Some(&admin))
        .await;
    assert_eq!(found.body["totalItems"], 3, "{}", found.text);
}

/// Finding 5, end to end: retrying by an order publishes that order's row alone (its
/// batch-mate stays DEAD under the dead job), and retrying by an event id runs that event
/// alone out of a dead notification batch; each is notified once, the others not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_an_order_or_an_event_publishes_and_notifies_it_alone() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let publish = new_job_id();
    dead_job(&app, &publish, "publish-outbox", &json!({"outbox_ids": []})).await;
    let (r51, _) = dead_row(&app, &publish, 51, user_id).await;
    let (r52, _) = dead_row(&app, &publish, 52, user_id).await;
    let (e53, e54) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let notify = new_job_id();
    dead_job(
        &app,
        &notify,
        "consume-notification",
        &json!({"events": [received(&app, &e53, 53, user_id), received(&app, &e54, 54, user_id)]}),
    )
    .await;

    for q in ["51".to_owned(), e53.clone()] {
        let r = app
            .post(
                "/api/v1/admin/jobs/retry",
                Some(&admin),
                json!({"filter": {"q": q}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["retried"], 1, "q={q}: {}", r.text);
    }
    let notified = |want: usize| {
        let (app, user) = (&app, &user);
        async move {
            let page = app.get("/api/v1/notifications?size=100", Some(user)).await;
            page.body["items"].as_array().map_or(0, Vec::len) >= want
        }
    };
    assert!(
        app.eventually(2 * WAIT, || notified(2)).await,
        "51 and 53 notified"
    );
    let page = app.get("/api/v1/notifications?size=100", Some(&user)).await;
    let mut orders: Vec<i64> = page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["orderId"].as_i64().unwrap())
        .collect();
    orders.sort_unstable();
    assert_eq!(orders, [51, 53], "only what was retried is notified");
    assert_eq!(row(&app, r51).await.0, "PUBLISHED");
    assert_eq!(
        row(&app, r52).await,
        ("DEAD".to_owned(), publish.clone()),
        "order 52 shares 51's job and was not retried"
    );
    assert_eq!(job(&app, &publish).await.1, "Killed");
    let (_, status, payload) = job(&app, &notify).await;
    assert_eq!(status, "Killed", "the batch keeps 54, dead");
    assert_eq!(events_of(&payload), [e54]);
    app.stop().await;
}

/// Finding 5, a job discarded whole: a publish job killed by one row's refusal still names a
/// batch-mate's NEW row (the sweeper hands such rows to a new job after its grace). Discarded
/// by id before that, the job takes its DEAD row along — and the batch-mate must still be
/// published, not left NEW under a job that will never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mate_still_new_under_a_discarded_job_is_still_published() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let publish = new_job_id();
    dead_job(&app, &publish, "publish-outbox", &json!({"outbox_ids": []})).await;
    let (dead, _) = dead_row(&app, &publish, 71, user_id).await;
    let (mate, _) = dead_row(&app, &publish, 72, user_id).await;
    sqlx::query("UPDATE outbox_events SET status = 'NEW', attempts = 1 WHERE id = ?")
        .bind(mate)
        .execute(app.db())
        .await
        .unwrap();

    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{publish}/discard"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["outboxRowsDiscarded"], 1);
    assert_eq!(row(&app, dead).await.0, "DISCARDED");
    let published = app
        .eventually(WAIT, || async { row(&app, mate).await.0 == "PUBLISHED" })
        .await;
    assert!(
        published,
        "order 72's row is {:?}, under a discarded job",
        row(&app, mate).await
    );
    assert!(
        app.eventually(WAIT, || async {
            let page = app.get("/api/v1/notifications?size=10", Some(&user)).await;
            page.body["items"][0]["orderId"] == 72
        })
        .await
    );
    app.stop().await;
}

/// Finding 6: a filter that names no order, event or job (`{}`, or only blank fields) is
/// every dead job: it is refused without the count the operator expects (409 with the
/// current count, nothing changed, nothing recorded); a dry run gives the count; a stale
/// count is refused; the right one acts, recorded with the jobs it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_without_the_expected_count_changes_nothing_and_a_dry_run_counts() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let now = chrono::Utc::now();
    dead_jobs_at(&app, "consume-notification", now, 3).await;
    dead_jobs_at(&app, "retention", now - chrono::Duration::minutes(1), 1).await;

    for (path, filter) in [
        ("retry", json!({})),
        ("retry", json!({"q": "  ", "queue": ""})),
        ("discard", json!({})),
    ] {
        let r = app
            .post(
                &format!("/api/v1/admin/jobs/{path}"),
                Some(&admin),
                json!({ "filter": filter }),
            )
            .await;
        r.assert_error(StatusCode::CONFLICT, "CONFIRMATION_REQUIRED");
        assert!(
            r.body["message"].as_str().unwrap().contains("4 dead job"),
            "{}",
            r.text
        );
    }
    assert_eq!(requeued_and_recorded(&app).await, (0, 0), "nothing changed");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE status = 'Killed'")
            .await,
        4
    );

    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {"queue": "consume-notification"}, "dryRun": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["matched"], 3, "{}", r.text);
    assert_eq!(r.body["retried"], 0);
    assert_eq!(r.body["dryRun"], true);
    assert_eq!(r.body["limit"], LIMIT);
    assert_eq!(
        requeued_and_recorded(&app).await,
        (0, 0),
        "a dry run changes nothing"
    );
    assert!(audit(&app, &admin).await.is_empty());

    let stale = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {"queue": "consume-notification"}, "expectedCount": 2}),
        )
        .await;
    stale.assert_error(StatusCode::CONFLICT, "CONFIRMATION_REQUIRED");
    assert!(
        stale.body["message"]
            .as_str()
            .unwrap()
            .contains("3 dead job"),
        "{}",
        stale.text
    );
    assert_eq!(requeued_and_recorded(&app).await, (0, 0));

    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {"queue": "consume-notification"}, "expectedCount": 3}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["matched"].clone(), r.body["retried"].clone()),
        (json!(3), json!(3))
    );
    assert_eq!(requeued_and_recorded(&app).await, (3, 3));
    let entry = &audit(&app, &admin).await[0];
    assert_eq!(entry["action"], "bulk_retry");
    assert_eq!(entry["target"]["expectedCount"], 3);
    assert_eq!(
        entry["target"]["jobs"].as_array().map(Vec::len),
        Some(3),
        "{entry}"
    );
}

/// Finding 6: one action changes at most 1,000 jobs. A filter matching 1,001 is refused
/// whole, with or without a count (nothing changed); a dry run still counts them; the same
/// work is done in two narrower actions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_over_the_limit_is_refused_whole() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let earlier = chrono::Utc::now() - chrono::Duration::minutes(10);
    let later = chrono::Utc::now();
    dead_jobs_at(&app, "consume-notification", earlier, LIMIT).await;
    dead_jobs_at(&app, "consume-notification", later, 1).await;

    for body in [
        json!({"filter": {}}),
        json!({"filter": {}, "expectedCount": LIMIT + 1}),
    ] {
        let r = app
            .post("/api/v1/admin/jobs/retry", Some(&admin), body)
            .await;
        r.assert_error(StatusCode::CONFLICT, "TOO_MANY_JOBS");
        let message = r.body["message"].as_str().unwrap();
        assert!(
            message.contains("1001") && message.contains("1000"),
            "{message}"
        );
    }
    assert_eq!(requeued_and_recorded(&app).await, (0, 0));
    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"filter": {}, "dryRun": true}),
        )
        .await;
    assert_eq!(r.body["matched"], LIMIT + 1, "{}", r.text);

    let cut = (earlier + chrono::Duration::minutes(1)).to_rfc3339();
    for (filter, n) in [(json!({"until": cut}), LIMIT), (json!({"since": cut}), 1)] {
        let r = app
            .post(
                "/api/v1/admin/jobs/retry",
                Some(&admin),
                json!({"filter": filter, "expectedCount": n}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["retried"], n);
    }
    assert_eq!(
        requeued_and_recorded(&app).await,
        (LIMIT as i64 + 1, LIMIT as i64 + 1)
    );
}

/// Finding 6: a bulk action cut short — here by the request timeout, while one of its jobs
/// is locked by another transaction — leaves no job changed without its audit entry: the
/// jobs and the entry commit together or not at all. Once the lock is gone the same action
/// changes every job, recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_action_cut_short_changes_nothing_that_is_not_recorded() {
    let app = TestApp::spawn_api_only(|c| {
        c.http_request_timeout = Duration::from_secs(2);
        // Longer than the request: the action is still waiting when the request gives up.
        c.idempotency.in_flight_wait = Duration::from_secs(20);
    })
    .await;
    let admin = app.admin_token().await;
    let ids: Vec<String> = (0..6).map(|_| new_job_id()).collect();
    for id in &ids {
        dead_job(&app, id, "consume-notification", &json!({"events": []})).await;
    }
    let mut holder = app.db().begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = ? FOR UPDATE")
        .bind(&ids[3])
        .execute(&mut *holder)
        .await
        .unwrap();

    let r = app
        .post(
            "/api/v1/admin/jobs/retry",
            Some(&admin),
            json!({"ids": ids}),
        )
        .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");
    let (requeued, recorded) = requeued_and_recorded(&app).await;
    assert_eq!(
        requeued, recorded,
        "{requeued} job(s) re-queued by the cut-short action, {recorded} recorded"
    );

    holder.rollback().await.unwrap();
    // The short timeout bounds the next requests too, on a busy machine: each either goes
    // through whole or changes nothing.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = app
            .post(
                "/api/v1/admin/jobs/retry",
                Some(&admin),
                json!({"ids": ids}),
            )
            .await;
        let (requeued, recorded) = requeued_and_recorded(&app).await;
        assert_eq!(
            requeued, recorded,
            "{requeued} re-queued, {recorded} recorded"
        );
        if r.status == StatusCode::OK {
            assert_eq!(r.body["retried"], 6, "{}", r.text);
            break;
        }
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");
        assert!(std::time::Instant::now() < deadline, "never went through");
    }
    assert_eq!(requeued_and_recorded(&app).await, (6, 6));
}

/// Finding 6 in the console: a selection of more than 1,000 jobs is refused, saying so (it
/// was cut to 1,000 silently); "all matching" carries the count the page showed, and is
/// refused when the jobs matching are no longer that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_bulk_forms_refuse_an_oversized_selection_and_a_stale_count() {
    let app = TestApp::spawn_api_only(|c| c.console.cookie_secure = false).await;
    let now = chrono::Utc::now();
    dead_jobs_at(&app, "retention", now, LIMIT + 1).await;
    dead_jobs_at(
        &app,
        "consume-notification",
        now - chrono::Duration::minutes(1),
        2,
    )
    .await;
    let visitor = Visitor::new(&app);
    visitor.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let csrf = visitor.csrf("/console/jobs").await;
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE job_type = 'retention' ORDER BY id")
            .fetch_all(app.db())
            .await
            .unwrap();
    let flash_after = |fields: Vec<(&'static str, String)>| {
        let (visitor, csrf) = (&visitor, &csrf);
        async move {
            let mut form: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
            form.extend(fields.iter().map(|(k, v)| (*k, v.as_str())));
            let r = visitor.post_form("/console/jobs/action", &form).await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
            let page = visitor.get("/console/jobs").await;
            let at = page.text.find("id=\"flash\"").expect("a flash message");
            let end = page.text[at..].find("</p>").unwrap();
            page.text[at..at + end].to_owned()
        }
    };

    let mut selection = vec![("action", "retry".to_owned())];
    selection.extend(ids.iter().map(|id| ("ids", id.clone())));
    let flash = flash_after(selection).await;
    assert!(
        flash.contains("1001 jobs selected") && flash.contains("1000"),
        "{flash}"
    );
    assert_eq!(requeued_and_recorded(&app).await, (0, 0), "nothing changed");

    let page = visitor
        .get("/console/jobs?queue=consume-notification")
        .await;
    assert!(
        page.text.contains("name=\"expected\" value=\"2\""),
        "the form carries the count it shows"
    );
    let all = |expected: Option<&str>| {
        let mut f = vec![
            ("action", "retry-all".to_owned()),
            ("status", "dead".to_owned()),
            ("queue", "consume-notification".to_owned()),
        ];
        if let Some(e) = expected {
            f.push(("expected", e.to_owned()));
        }
        f
    };
    let flash = flash_after(all(None)).await;
    assert!(flash.contains("2 dead job"), "{flash}");
    let flash = flash_after(all(Some("1"))).await;
    assert!(
        flash.contains("2 dead job") && flash.contains("not 1"),
        "{flash}"
    );
    assert_eq!(requeued_and_recorded(&app).await, (0, 0));
    let flash = flash_after(all(Some("2"))).await;
    assert!(flash.contains("2 dead job(s) re-queued"), "{flash}");
    assert_eq!(requeued_and_recorded(&app).await, (2, 2));
}

fn orderflow(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", common::redis_url())
        .env("JWT_SECRET", common::JWT_SECRET.as_str())
        .env("USER", "ops")
        .env("RUST_LOG", "warn");
    cmd
}

/// Finding 6 in the CLI: `jobs retry --all-dead` retries every dead job only with the count
/// the operator expects (`--expect N`); `--dry-run` gives it; without it, or with a stale
/// one, nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_retries_every_dead_job_only_with_the_expected_count() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let url = app.db_guard.url.clone();
    dead_jobs_at(&app, "consume-notification", chrono::Utc::now(), 2).await;
    let run = |args: &[&str]| {
        let out = orderflow(&url).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let (ok, text) = run(&["jobs", "retry", "--all-dead"]);
    assert!(
        !ok && text.contains("2 dead job") && text.contains("--expect 2"),
        "{text}"
    );
    let (ok, text) = run(&["jobs", "retry", "--all-dead", "--expect", "1"]);
    assert!(!ok && text.contains("2 dead job"), "{text}");
    let (ok, text) = run(&["jobs", "retry", "--all-dead", "--dry-run"]);
    assert!(ok && text.contains("2 dead job(s) match"), "{text}");
    assert_eq!(requeued_and_recorded(&app).await, (0, 0), "nothing changed");

    let (ok, text) = run(&["jobs", "retry", "--all-dead", "--expect", "2"]);
    assert!(ok && text.contains("2 dead job(s) re-queued"), "{text}");
    assert_eq!(requeued_and_recorded(&app).await, (2, 2));
    let actor: String = sqlx::query_scalar("SELECT actor FROM operator_audit")
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(actor, "cli (ops)");
}
