//! Group commit of POST /orders: what batching adds must not change what any one order gets.
//! The apps here commit with one lane and a long linger, so that requests sent together are
//! decided in one batch (one transaction); that they were is checked in the database (one
//! `created_at` and one publish job for the batch's orders).

mod common;

use std::time::Duration;

use common::{Resp, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// One lane, and a linger long enough that everything sent at once lands in one batch.
async fn batching_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.order_batches.lanes = 1;
        c.order_batches.linger = Duration::from_millis(400);
    })
    .await
}

/// Sends the orders concurrently.
async fn send_together(app: &TestApp, orders: &[(&str, String, Value)]) -> Vec<Resp> {
    let calls = orders
        .iter()
        .map(|(token, key, items)| app.order(token, key, items.clone()));
    futures::future::join_all(calls).await
}

/// The orders were committed in one transaction: one instant, one publish job.
async fn assert_one_batch(app: &TestApp, order_ids: &[i64]) {
    let list = order_ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let instants = app
        .count(&format!(
            "SELECT COUNT(DISTINCT created_at) FROM orders WHERE id IN ({list})"
        ))
        .await;
    let jobs = app
        .count(&format!(
            "SELECT COUNT(DISTINCT job_id) FROM outbox_events WHERE aggregate_id IN ({list})"
        ))
        .await;
    assert_eq!((instants, jobs), (1, 1), "orders {list} share one batch");
}

fn order_id(r: &Resp) -> i64 {
    r.body["id"].as_i64().expect("an order id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_out_of_stock_in_a_batch_never_fails_the_others() {
    let app = batching_app().await;
    let admin = app.admin_token().await;
    let scarce = app.new_product(&admin, 500, 1).await;
    let plenty = app.new_product(&admin, 300, 10).await;
    let (_, a) = app.new_user().await;
    let (_, b) = app.new_user().await;
    let results = send_together(
        &app,
        &[
            (
                &a,
                "scarce-a".into(),
                json!([{"productId": scarce, "quantity": 1}]),
            ),
            (
                &b,
                "scarce-b".into(),
                json!([{"productId": scarce, "quantity": 1}, {"productId": plenty, "quantity": 2}]),
            ),
            (
                &a,
                "plenty-a".into(),
                json!([{"productId": plenty, "quantity": 3}]),
            ),
            (
                &b,
                "plenty-b".into(),
                json!([{"productId": plenty, "quantity": 1}]),
            ),
        ],
    )
    .await;
    let created: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .collect();
    let short: Vec<&Resp> = results
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT)
        .collect();
    assert_eq!((created.len(), short.len()), (3, 1), "{results:?}");
    short[0].assert_error(StatusCode::CONFLICT, "OUT_OF_STOCK");
    assert!(
        results[2].status == StatusCode::CREATED && results[3].status == StatusCode::CREATED,
        "the orders of the plentiful product are not held back by the short one"
    );
    // Exactly one of the two buyers of the single unit got it, with all of its lines.
    let scarce_buyers = [&results[0], &results[1]];
    assert_eq!(
        scarce_buyers
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count(),
        1
    );
    let plenty_taken = 3
        + 1
        + if results[1].status == StatusCode::CREATED {
            2
        } else {
            0
        };
    assert_eq!(app.stock_of(scarce).await, 0);
    assert_eq!(app.stock_of(plenty).await, 10 - plenty_taken);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 3);
    let ids: Vec<i64> = created.iter().map(|r| order_id(r)).collect();
    assert_one_batch(&app, &ids).await;
    // The refusal was stored with the batch and is replayed, byte for byte.
    let loser = if results[0].status == StatusCode::CONFLICT {
        (
            &a,
            "scarce-a",
            json!([{"productId": scarce, "quantity": 1}]),
        )
    } else {
        (
            &b,
            "scarce-b",
            json!([{"productId": scarce, "quantity": 1}, {"productId": plenty, "quantity": 2}]),
        )
    };
    let again = app.order(loser.0, loser.1, loser.2).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.text, short[0].text);
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 4);
    app.assert_outbox_matches_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_twice_in_a_batch_makes_one_order_and_one_replay() {
    let app = batching_app().await;
    let admin = app.admin_token().await;
    let p = app.new_product(&admin, 250, 10).await;
    let (_, user) = app.new_user().await;
    let items = json!([{"productId": p, "quantity": 2}]);
    let results = send_together(
        &app,
        &[
            (&user, "twice".into(), items.clone()),
            (&user, "twice".into(), items.clone()),
            (
                &user,
                "other".into(),
                json!([{"productId": p, "quantity": 1}]),
            ),
        ],
    )
    .await;
    assert!(
        results.iter().all(|r| r.status == StatusCode::CREATED),
        "{results:?}"
    );
    let replayed = results[..2]
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 1, "one of the two is the replay of the other");
    assert_eq!(results[0].text, results[1].text, "byte for byte");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 2);
    assert_eq!(app.stock_of(p).await, 10 - 2 - 1);

    // The same key with another body while the first is in the batch: 422, nothing written.
    let results = send_together(
        &app,
        &[
            (&user, "reused".into(), items.clone()),
            (
                &user,
                "reused".into(),
                json!([{"productId": p, "quantity": 3}]),
            ),
        ],
    )
    .await;
    let mut statuses: Vec<u16> = results.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 422], "{results:?}");
    let reused = results.iter().find(|r| r.status.as_u16() == 422).unwrap();
    reused.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 3);
    app.assert_outbox_matches_orders().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_of_different_users_in_one_batch_keep_their_owners() {
    let app = batching_app().await;
    let admin = app.admin_token().await;
    let p = app.new_product(&admin, 120, 100).await;
    let q = app.new_product(&admin, 80, 100).await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.new_user().await);
    }
    let orders: Vec<(&str, String, Value)> = users
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            let n = i as i64 + 1;
            (
                token.as_str(),
                format!("mine-{i}"),
                json!([{"productId": p, "quantity": n}, {"productId": q, "quantity": 5 - n}]),
            )
        })
        .collect();
    let results = send_together(&app, &orders).await;
    assert!(
        results.iter().all(|r| r.status == StatusCode::CREATED),
        "{results:?}"
    );
    let ids: Vec<i64> = results.iter().map(order_id).collect();
    assert_one_batch(&app, &ids).await;
    for (i, ((_, token), created)) in users.iter().zip(&results).enumerate() {
        let n = i as i64 + 1;
        assert_eq!(created.body["totalAmount"], 120 * n + 80 * (5 - n));
        let mine = app.get("/api/v1/orders", Some(token)).await;
        assert_eq!(mine.body["totalItems"], 1, "user {i} sees only their order");
        assert_eq!(mine.body["items"][0], created.body);
        let own = app
            .get(
                &format!("/api/v1/orders/{}", order_id(created)),
                Some(token),
            )
            .await;
        assert_eq!(own.text, created.text);
        // Everyone else's order of the same batch is not found for this user.
        for (_, other) in results.iter().enumerate().filter(|(j, _)| *j != i) {
            let theirs = app
                .get(&format!("/api/v1/orders/{}", order_id(other)), Some(token))
                .await;
            theirs.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
        }
    }
    // Each owner is notified of their own order only.
    for ((_, token), created) in users.iter().zip(&results) {
        let notified = app
            .eventually(Duration::from_secs(30), || async {
                app.get("/api/v1/notifications", Some(token)).await.body["totalItems"] == 1
            })
            .await;
        assert!(notified, "the owner is notified");
        let page = app.get("/api/v1/notifications", Some(token)).await;
        assert_eq!(page.body["items"][0]["orderId"], created.body["id"]);
    }
    assert_eq!(app.stock_of(p).await, 100 - (1 + 2 + 3 + 4));
    assert_eq!(app.stock_of(q).await, 100 - (4 + 3 + 2 + 1));
}

/// A transaction of the test holds one product's stock row and, once the batch waits for it,
/// asks for the row the batch holds: InnoDB rolls one of the two back. The test's transaction
/// has written many rows, so the batch (lighter) is the victim; the test's statement going
/// through proves it. The batch runs again and each of its orders is committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_rolled_back_by_a_deadlock_runs_again_and_commits_each_order_once() {
    let app = batching_app().await;
    let admin = app.admin_token().await;
    let first = app.new_product(&admin, 100, 50).await;
    let second = app.new_product(&admin, 100, 50).await;
    // Rows for the test's transaction to write, to be the heavier side of the deadlock.
    let mut ballast = Vec::new();
    for _ in 0..30 {
        ballast.push(app.new_product(&admin, 1, 1).await);
    }
    let (_, user) = app.new_user().await;

    let mut holder = app.db().begin().await.unwrap();
    for id in &ballast {
        sqlx::query("UPDATE stocks SET version = version + 1 WHERE product_id = ?")
            .bind(id)
            .execute(&mut *holder)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE stocks SET version = version + 1 WHERE product_id = ?")
        .bind(second)
        .execute(&mut *holder)
        .await
        .unwrap();

    let orders: Vec<(&str, String, Value)> = (0..4)
        .map(|i| {
            (
                user.as_str(),
                format!("deadlock-{i}"),
                json!([{"productId": first, "quantity": 1}, {"productId": second, "quantity": 1}]),
            )
        })
        .collect();
    let sending = send_together(&app, &orders);
    tokio::pin!(sending);
    // Wait until the batch holds `first` and waits for `second`, while the requests run.
    let mut results = None;
    let waiting = loop {
        tokio::select! {
            r = &mut sending => { results = Some(r); break false; }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        // Other tests' transactions on the same server are in other databases.
        let waits: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID() \
             AND INFO LIKE '%UPDATE stocks%' AND TIME >= 1",
        )
        .fetch_one(app.db())
        .await
        .unwrap();
        if waits > 0 {
            break true;
        }
    };
    assert!(waiting, "the batch waited for the held row: {results:?}");
    sqlx::query("UPDATE stocks SET version = version + 1 WHERE product_id = ?")
        .bind(first)
        .execute(&mut *holder)
        .await
        .expect("the batch, not this transaction, is the deadlock's victim");
    holder.rollback().await.unwrap();

    let results = sending.await;
    assert!(
        results.iter().all(|r| r.status == StatusCode::CREATED),
        "{results:?}"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 4);
    assert_eq!(app.stock_of(first).await, 46);
    assert_eq!(app.stock_of(second).await, 46);
    let ids: Vec<i64> = results.iter().map(order_id).collect();
    assert_one_batch(&app, &ids).await;
    let metrics = app.get("/actuator/prometheus", None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("order_batch_retries_total{reason=\"deadlock\"}")),
        "the retry is counted"
    );
    app.assert_outbox_matches_orders().await;
}

/// Finding 4 of the abuse review: a lock wait on a busy stock row must never answer 503
/// while stock remains. 256 buyers at once on one product with the lock wait bound at 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_product_answers_only_created_or_out_of_stock_under_a_short_lock_bound() {
    let app = TestApp::spawn_with(|c| {
        c.idempotency.in_flight_wait = Duration::from_secs(1);
    })
    .await;
    let admin = app.admin_token().await;
    let p = app.new_product(&admin, 100, 100).await;
    let mut users = Vec::new();
    for _ in 0..8 {
        users.push(app.new_user().await.1);
    }
    let calls = (0..256).map(|i| {
        let (app, user) = (&app, &users[i % users.len()]);
        async move {
            app.order(
                user,
                &format!("busy-{i}"),
                json!([{"productId": p, "quantity": 1}]),
            )
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let created = results
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let short = results
        .iter()
        .filter(|r| r.status == StatusCode::CONFLICT && r.body["code"] == "OUT_OF_STOCK")
        .count();
    let others: Vec<String> = results
        .iter()
        .filter(|r| r.status != StatusCode::CREATED && r.body["code"] != "OUT_OF_STOCK")
        .map(|r| format!("{} {}", r.status, r.text))
        .collect();
    assert!(
        others.is_empty(),
        "{} other answers, e.g. {:?}",
        others.len(),
        others.first()
    );
    assert_eq!((created, short), (100, 156));
    assert_eq!(app.stock_of(p).await, 0);
    app.assert_outbox_matches_orders().await;
}
