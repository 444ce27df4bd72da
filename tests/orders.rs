//! POST /orders with Idempotency-Key, reads, cancel and complete, and the outbox rows that
//! every committed change leaves behind.

mod common;

use std::time::Duration;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_takes_stock_and_writes_its_outbox_row_in_one_go() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let a = app.new_product(&admin, 1250, 10).await;
    let b = app.new_product(&admin, 99, 3).await;
    let r = app
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(&user),
            &[
                ("Idempotency-Key", "first-order"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ],
            Some(json!({"items": [{"productId": b, "quantity": 3}, {"productId": a, "quantity": 2}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.header("idempotent-replayed").is_none());
    let order = r.body;
    assert_eq!(order["status"], "CREATED");
    assert_eq!(order["totalAmount"], 2 * 1250 + 3 * 99);
    let mut items = order["items"].as_array().unwrap().clone();
    items.sort_by_key(|i| i["productId"].as_i64());
    assert_eq!(
        items,
        vec![
            json!({"productId": a, "quantity": 2, "unitPrice": 1250}),
            json!({"productId": b, "quantity": 3, "unitPrice": 99}),
        ]
    );
    assert_eq!(order["createdAt"], order["updatedAt"]);
    assert_eq!((app.stock_of(a).await, app.stock_of(b).await), (8, 0));

    let id = order["id"].as_i64().unwrap();
    let (event_type, payload, traceparent, status): (String, String, Option<String>, String) = sqlx::query_as(
        "SELECT event_type, payload, traceparent, status FROM outbox_events WHERE aggregate_id = ?",
    )
    .bind(id)
    .fetch_one(app.db())
    .await
    .unwrap();
    assert_eq!(
        (event_type.as_str(), status.as_str()),
        ("ORDER_CREATED", "NEW")
    );
    assert_eq!(
        traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["orderId"], id);
    assert_eq!(payload["userId"], user_id);
    assert_eq!(payload["totalAmount"], order["totalAmount"]);
    assert_eq!(payload["items"].as_array().unwrap().len(), 2);

    // The owner reads it back, alone or in a page.
    let got = app.get(&format!("/api/v1/orders/{id}"), Some(&user)).await;
    assert_eq!(got.body, order);
    let page = app
        .get("/api/v1/orders?page=0&size=10", Some(&user))
        .await
        .body;
    assert_eq!(page["totalItems"], 1);
    assert_eq!(page["items"][0], order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_replays_the_first_response() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 500, 10).await;
    let items = json!([{"productId": p, "quantity": 1}]);
    let first = app.order(&user, "replay-me", items.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // The quoted Structured Field form of the same key is the same key.
    for key in ["replay-me", "\"replay-me\""] {
        let again = app.order(&user, key, items.clone()).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.text, first.text, "byte-identical body");
    }
    // Key order and whitespace in the body do not make it another request.
    let reordered = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user)
        .header("Idempotency-Key", "replay-me")
        .header("content-type", "application/json")
        .body(format!(
            "{{ \"items\" : [ {{ \"quantity\": 1, \"productId\": {p} }} ] }}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reordered.status(), StatusCode::CREATED);
    assert_eq!(app.stock_of(p).await, 9);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox_events").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_key_with_another_body_is_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 500, 10).await;
    app.order(&user, "k", json!([{"productId": p, "quantity": 1}]))
        .await;
    app.order(&user, "k", json!([{"productId": p, "quantity": 2}]))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.stock_of(p).await, 9);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_per_user() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, alice) = app.new_user().await;
    let (_, bob) = app.new_user().await;
    let p = app.new_product(&admin, 500, 10).await;
    let a = app
        .order(
            &alice,
            "shared-key",
            json!([{"productId": p, "quantity": 1}]),
        )
        .await;
    let b = app
        .order(&bob, "shared-key", json!([{"productId": p, "quantity": 2}]))
        .await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert!(b.header("idempotent-replayed").is_none());
    assert_ne!(a.body["id"], b.body["id"]);
    assert_eq!(app.stock_of(p).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_is_stored_and_replayed_even_after_restock() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 500, 1).await;
    let items = json!([{"productId": p, "quantity": 2}]);
    let first = app.order(&user, "too-many", items.clone()).await;
    first.assert_error(StatusCode::CONFLICT, "OUT_OF_STOCK");
    assert_eq!(first.body["path"], "/api/v1/orders");

    app.post(
        &format!("/api/v1/admin/products/{p}/stock-adjust"),
        Some(&admin),
        json!({"delta": 5}),
    )
    .await;
    let again = app.order(&user, "too-many", items).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    assert_eq!(app.stock_of(p).await, 6);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM outbox_events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_item_orders_take_everything_or_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let plenty = app.new_product(&admin, 10, 100).await;
    let scarce = app.new_product(&admin, 10, 1).await;
    let r = app
        .order(
            &user,
            "all-or-nothing",
            json!([{"productId": plenty, "quantity": 5}, {"productId": scarce, "quantity": 2}]),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "OUT_OF_STOCK");
    assert_eq!(r.body["details"][0]["field"], "items[1].quantity");
    assert_eq!(
        (app.stock_of(plenty).await, app.stock_of(scarce).await),
        (100, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_execution_stores_nothing_and_the_key_stays_usable() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 100).await;

    let bad_bodies = [
        json!({"items": []}),
        json!({"items": [{"productId": p, "quantity": 0}]}),
        json!({"items": [{"productId": p, "quantity": 1_000_001}]}),
        json!({"items": [{"productId": p, "quantity": 1}, {"productId": p, "quantity": 2}]}),
        json!({"items": [{"productId": 987654, "quantity": 1}]}),
        json!({"items": [{"productId": p, "quantity": "1"}]}),
        json!({"items": [{"productId": p, "quantity": 1, "discount": 100}]}),
        json!({"items": (0..51).map(|i| json!({"productId": i + 1, "quantity": 1})).collect::<Vec<_>>()}),
    ];
    for body in bad_bodies {
        let r = app
            .call(
                Method::POST,
                "/api/v1/orders",
                Some(&user),
                &[("Idempotency-Key", "reusable")],
                Some(body.clone()),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert!(
            !r.body["details"].as_array().unwrap().is_empty(),
            "{body} -> {}",
            r.text
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    let ok = app
        .order(&user, "reusable", json!([{"productId": p, "quantity": 1}]))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_is_required_and_checked() {
    let app = TestApp::spawn().await;
    let (_, user) = app.new_user().await;
    let body = json!({"items": [{"productId": 1, "quantity": 1}]});
    app.call(
        Method::POST,
        "/api/v1/orders",
        Some(&user),
        &[],
        Some(body.clone()),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "IDEMPOTENCY_KEY_REQUIRED");
    let long = "k".repeat(256);
    for bad in ["\"\"", long.as_str(), "\"unterminated\\\""] {
        let r = app
            .call(
                Method::POST,
                "/api/v1/orders",
                Some(&user),
                &[("Idempotency-Key", bad)],
                Some(body.clone()),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], "Idempotency-Key");
    }
    // Authentication comes first: no key or body is looked at for an anonymous caller.
    app.call(Method::POST, "/api/v1/orders", None, &[], Some(body))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_while_the_first_is_in_flight_is_409_and_never_a_second_order() {
    let app = TestApp::spawn_with(|c| c.idempotency.in_flight_wait = Duration::from_secs(1)).await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;

    // Play the first request: hold the key's row in an open transaction.
    let mut first = app.db().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, expires_at) \
         VALUES (?, 'in-flight', REPEAT('0', 64), CURRENT_TIMESTAMP(6) + INTERVAL 1 HOUR)",
    )
    .bind(user_id)
    .execute(&mut *first)
    .await
    .unwrap();
    let r = app
        .order(&user, "in-flight", json!([{"productId": p, "quantity": 1}]))
        .await;
    r.assert_error(StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_PROGRESS");
    assert_eq!(app.stock_of(p).await, 10);

    // The first one fails and rolls back: the key is free and the retry goes through.
    first.rollback().await.unwrap();
    let r = app
        .order(&user, "in-flight", json!([{"productId": p, "quantity": 1}]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_purged_and_then_start_afresh() {
    // No scheduled retention job in between: it would purge the key before this test does
    // (the default schedule ticks every 5 minutes, and a run crossing one failed here).
    let app = TestApp::spawn_with(|c| c.retention.cron = "0 0 0 1 1 *".into()).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;
    app.order(&user, "old-key", json!([{"productId": p, "quantity": 1}]))
        .await;
    app.order(&user, "fresh-key", json!([{"productId": p, "quantity": 1}]))
        .await;
    sqlx::query("UPDATE idempotency_keys SET expires_at = CURRENT_TIMESTAMP(6) - INTERVAL 1 SECOND WHERE idem_key = 'old-key'")
        .execute(app.db())
        .await
        .unwrap();
    let purged = orderflow::idempotency::purge_all(app.db()).await.unwrap();
    assert_eq!(purged, 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 1);
    // After expiry the key is new: another body is a new order, not a 422.
    let r = app
        .order(&user, "old-key", json!([{"productId": p, "quantity": 2}]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(r.header("idempotent-replayed").is_none());
    assert_eq!(app.stock_of(p).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_job_purges_expired_keys_on_its_schedule() {
    // Every second: the schedule queues a retention job, which the worker runs.
    let app = TestApp::spawn_with(|c| c.retention.cron = "* * * * * *".into()).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;
    app.order(&user, "soon-gone", json!([{"productId": p, "quantity": 1}]))
        .await;
    sqlx::query(
        "UPDATE idempotency_keys SET expires_at = CURRENT_TIMESTAMP(6) - INTERVAL 1 SECOND",
    )
    .execute(app.db())
    .await
    .unwrap();
    let mut remaining = 1;
    for _ in 0..100 {
        remaining = app.count("SELECT COUNT(*) FROM idempotency_keys").await;
        if remaining == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(remaining, 0, "the retention job removed the expired key");
    // The key is gone once the job's transaction commits; the job is Done once apalis
    // acknowledges it, a moment later (after the job's other kinds of rows).
    let done = app
        .eventually(Duration::from_secs(10), || async {
            app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'retention' AND status = 'Done'")
                .await
                >= 1
        })
        .await;
    assert!(done, "it ran as a job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_order_is_404_everywhere() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, alice) = app.new_user().await;
    let (_, mallory) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;
    let id = app
        .order(&alice, "mine", json!([{"productId": p, "quantity": 1}]))
        .await
        .body["id"]
        .as_i64()
        .unwrap();

    let r = app
        .get(&format!("/api/v1/orders/{id}"), Some(&mallory))
        .await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let missing = app.get("/api/v1/orders/999999", Some(&mallory)).await;
    assert_eq!(
        r.body["message"], missing.body["message"],
        "indistinguishable from a missing order"
    );
    app.post(
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&mallory),
        json!({}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(
        app.get("/api/v1/orders", Some(&mallory)).await.body["totalItems"],
        0
    );
    assert_eq!(
        app.stock_of(p).await,
        9,
        "mallory's cancel restored nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_restores_stock_once_and_emits_order_cancelled() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;
    let id = app
        .order(&user, "to-cancel", json!([{"productId": p, "quantity": 4}]))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    assert_eq!(app.stock_of(p).await, 6);

    let path = format!("/api/v1/orders/{id}/cancel");
    let results =
        futures::future::join_all((0..10).map(|_| app.post(&path, Some(&user), json!({})))).await;
    for r in &results {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["status"], "CANCELLED");
    }
    assert_eq!(app.stock_of(p).await, 10, "restored exactly once");
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM outbox_events WHERE aggregate_id = {id} AND event_type = 'ORDER_CANCELLED'")).await,
        1
    );
    // A cancelled order cannot be completed.
    app.post(
        &format!("/api/v1/admin/orders/{id}/complete"),
        Some(&admin),
        json!({}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "INVALID_STATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_then_cancel_is_invalid() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 10).await;
    let id = app
        .order(
            &user,
            "to-complete",
            json!([{"productId": p, "quantity": 1}]),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let done = app
        .post(
            &format!("/api/v1/admin/orders/{id}/complete"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(done.body["status"], "COMPLETED");
    // Completing again changes nothing and says so with the order as it is.
    let again = app
        .post(
            &format!("/api/v1/admin/orders/{id}/complete"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(again.body["updatedAt"], done.body["updatedAt"]);
    app.post(
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&user),
        json!({}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "INVALID_STATE");
    assert_eq!(app.stock_of(p).await, 9);
    app.post(
        "/api/v1/admin/orders/999999/complete",
        Some(&admin),
        json!({}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
}
