//! `orderflow audit` over a real history: a clean one (live and archived orders, a cancel, a
//! completion, a stock adjustment) passes with exit 0; each invariant broken on purpose in
//! SQL is reported with the offending id and exit 1; DEAD rows and dead jobs are listed
//! without failing; the scheduled audit exports `audit_violations{check}`.

mod common;

use std::{sync::Arc, time::Duration};

use common::{audit, DatabaseGuard, TestApp};
use orderflow::config::Config;
use orderflow_jobs::archive_run::archive::{self, ArchiveRun};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::MySqlPool;

/// A small history: orders 0..4 of one user on one product (stock 50, then +5), order 0
/// cancelled and order 1 completed, both archived; every event notified.
struct History {
    app: TestApp,
    product: i64,
    orders: Vec<i64>,
}

impl History {
    async fn build(adjust: impl FnOnce(&mut Config)) -> Self {
        let app = TestApp::spawn_with(adjust).await;
        let admin = app.admin_token().await;
        let (_, user) = app.new_user().await;
        let product = app.new_product(&admin, 10, 50).await;
        let r = app
            .post(
                &format!("/api/v1/admin/products/{product}/stock-adjust"),
                Some(&admin),
                json!({"delta": 5}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let mut orders = Vec::new();
        for n in 0..4 {
            let r = app
                .order(
                    &user,
                    &format!("audit-{n}"),
                    json!([{"productId": product, "quantity": 2}]),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            orders.push(r.body["id"].as_i64().unwrap());
        }
        let r = app
            .post(
                &format!("/api/v1/orders/{}/cancel", orders[0]),
                Some(&user),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = app
            .post(
                &format!("/api/v1/admin/orders/{}/complete", orders[1]),
                Some(&admin),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(
            app.eventually(Duration::from_secs(60), || async {
                app.count("SELECT COUNT(*) FROM notifications").await == 5
            })
            .await,
            "4 ORDER_CREATED and 1 ORDER_CANCELLED notified"
        );
        let key = format!("audit-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        archive::push_archive(
            app.db(),
            &app.state.config.events.queue,
            ArchiveRun {
                run_key: key.clone(),
                older_than_days: 0,
                chunk_size: 1,
            },
        )
        .await
        .unwrap();
        assert!(
            app.eventually(Duration::from_secs(60), || async {
                archive::summary(app.db(), &key)
                    .await
                    .unwrap()
                    .is_some_and(|s| s.finished())
            })
            .await,
            "the archive run finished"
        );
        assert_eq!(app.count("SELECT COUNT(*) FROM orders_archive").await, 2);
        Self {
            app,
            product,
            orders,
        }
    }

    /// Stops the service (so that no worker repairs what a test breaks) and keeps its
    /// database: the guard drops it at the end of the test.
    async fn stop(self) -> (Arc<DatabaseGuard>, MySqlPool) {
        let guard = self.app.db_guard.clone();
        self.app.stop().await;
        let pool = MySqlPool::connect(&guard.url).await.unwrap();
        (guard, pool)
    }
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The audit fails (exit 1) on `check`, naming `ids`; returns the check's section.
fn assert_fails(url: &str, check: &str, ids: &[String]) -> String {
    let run = audit::run(url, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("audit FAILED"), "{}", run.stdout);
    let section = run
        .failed(check)
        .unwrap_or_else(|| panic!("{check} is not reported:\n{}", run.stdout));
    for id in ids {
        assert!(
            section
                .lines()
                .skip(1)
                .any(|l| l.trim_start().starts_with(&format!("{id}:"))),
            "{id} is not named under {check}:\n{}",
            run.stdout
        );
    }
    section
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_history_with_archived_orders_passes() {
    let h = History::build(|_| {}).await;
    let (guard, _pool) = h.stop().await;
    let run = audit::run(&guard.url, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("audit passed"), "{}", run.stdout);
    // Live and archived orders were both read: 2 live + 2 archived.
    let created = run
        .stdout
        .lines()
        .find(|l| l.contains("order_created"))
        .unwrap();
    assert!(created.contains("(4 checked"), "{created}");
    assert!(run.failed("stock").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_without_or_with_two_order_created_events_fails() {
    let h = History::build(|_| {}).await;
    let (o2, o3, archived) = (h.orders[2], h.orders[3], h.orders[1]);
    let (guard, pool) = h.stop().await;
    // Lost: no outbox row and no notification.
    exec(
        &pool,
        &format!(
            "DELETE FROM outbox_events WHERE aggregate_id = {o2} AND event_type = 'ORDER_CREATED'"
        ),
    )
    .await;
    exec(
        &pool,
        &format!("DELETE FROM notifications WHERE order_id = {o2} AND type = 'ORDER_CREATED'"),
    )
    .await;
    // Twice: a second row with its own event id.
    exec(
        &pool,
        &format!(
            "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status) \
             SELECT UUID(), aggregate_type, aggregate_id, event_type, payload, 'NEW' FROM outbox_events \
             WHERE aggregate_id = {o3} AND event_type = 'ORDER_CREATED'"
        ),
    )
    .await;
    // An archived order's row purged by the retention still counts by its notification.
    exec(
        &pool,
        &format!("DELETE FROM outbox_events WHERE aggregate_id = {archived}"),
    )
    .await;
    let section = assert_fails(
        &guard.url,
        "order_created",
        &[format!("order {o2}"), format!("order {o3}")],
    );
    assert!(
        !section.contains(&format!("order {archived}:")),
        "{section}"
    );
    assert!(section.contains("2 violations"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_order_without_its_order_cancelled_event_fails_even_archived() {
    let h = History::build(|_| {}).await;
    let (cancelled, live) = (h.orders[0], h.orders[2]);
    let (guard, pool) = h.stop().await;
    exec(&pool, &format!("DELETE FROM outbox_events WHERE aggregate_id = {cancelled} AND event_type = 'ORDER_CANCELLED'")).await;
    exec(
        &pool,
        &format!(
            "DELETE FROM notifications WHERE order_id = {cancelled} AND type = 'ORDER_CANCELLED'"
        ),
    )
    .await;
    // And a live order that is not cancelled but has an ORDER_CANCELLED event.
    exec(
        &pool,
        &format!(
            "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status) \
             VALUES (UUID(), 'ORDER', {live}, 'ORDER_CANCELLED', '{{}}', 'DISCARDED')"
        ),
    )
    .await;
    assert_fails(
        &guard.url,
        "order_cancelled",
        &[format!("order {cancelled}"), format!("order {live}")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_that_moved_outside_an_order_or_adjustment_fails() {
    let h = History::build(|_| {}).await;
    let product = h.product;
    let (guard, pool) = h.stop().await;
    exec(
        &pool,
        &format!("UPDATE stocks SET quantity = quantity - 1 WHERE product_id = {product}"),
    )
    .await;
    let section = assert_fails(&guard.url, "stock", &[format!("product {product}")]);
    // 50 + 5 - 3 orders of 2 not cancelled (one archived) = 49; the row says 48.
    assert!(section.contains("stock 48, expected 49"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_event_past_the_grace_without_its_notification_fails() {
    let h = History::build(|_| {}).await;
    let o3 = h.orders[3];
    let (guard, pool) = h.stop().await;
    exec(
        &pool,
        &format!("DELETE FROM notifications WHERE order_id = {o3}"),
    )
    .await;
    let row: i64 = sqlx::query_scalar(&format!(
        "SELECT id FROM outbox_events WHERE aggregate_id = {o3} AND event_type = 'ORDER_CREATED'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    // Within the grace it is not yet missing.
    assert_eq!(audit::run(&guard.url, &[]).code, 0);
    exec(&pool, &format!("UPDATE outbox_events SET published_at = published_at - INTERVAL 1 HOUR WHERE id = {row}")).await;
    assert_fails(&guard.url, "notifications", &[format!("outbox {row}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_row_past_the_sweep_grace_without_a_live_job_fails() {
    let h = History::build(|_| {}).await;
    let o2 = h.orders[2];
    let (guard, pool) = h.stop().await;
    exec(
        &pool,
        &format!(
            "UPDATE outbox_events SET status = 'NEW', published_at = NULL, job_id = '01JGONE0000000000000000000', \
             created_at = created_at - INTERVAL 1 HOUR WHERE aggregate_id = {o2} AND event_type = 'ORDER_CREATED'"
        ),
    )
    .await;
    let row: i64 = sqlx::query_scalar(&format!(
        "SELECT id FROM outbox_events WHERE aggregate_id = {o2} AND event_type = 'ORDER_CREATED'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    let section = assert_fails(&guard.url, "outbox_unqueued", &[format!("outbox {row}")]);
    assert!(section.contains("is missing"), "{section}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_both_live_and_archived_fails() {
    let h = History::build(|_| {}).await;
    let o2 = h.orders[2];
    let (guard, pool) = h.stop().await;
    exec(
        &pool,
        &format!(
            "INSERT INTO orders_archive (id, user_id, status, total_amount, created_at, updated_at) \
             SELECT id, user_id, status, total_amount, created_at, updated_at FROM orders WHERE id = {o2}"
        ),
    )
    .await;
    assert_fails(&guard.url, "live_and_archived", &[format!("order {o2}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_with_two_orders_or_an_order_with_two_keys_fails() {
    let h = History::build(|_| {}).await;
    let (o2, o3) = (h.orders[2], h.orders[3]);
    let (guard, pool) = h.stop().await;
    let key_of = |order: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT id FROM idempotency_keys WHERE order_id = {order}"
            ))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (k2, k3) = (key_of(o2).await, key_of(o3).await);
    // The key of order 2 now names order 3 too.
    exec(
        &pool,
        &format!("UPDATE idempotency_keys SET order_id = {o3} WHERE id = {k2}"),
    )
    .await;
    // One (user, key) stored twice: only possible once the UNIQUE key is gone.
    exec(
        &pool,
        "ALTER TABLE idempotency_keys DROP INDEX uq_idempotency_user_key",
    )
    .await;
    exec(
        &pool,
        &format!(
            "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, response_status, expires_at) \
             SELECT user_id, idem_key, request_fingerprint, 201, expires_at FROM idempotency_keys WHERE id = {k3}"
        ),
    )
    .await;
    let section = assert_fails(
        &guard.url,
        "idempotency",
        &[format!("idempotency key {k3}")],
    );
    assert!(
        section.contains(&format!("order {o3} is also key")),
        "{section}"
    );
    assert!(section.contains("stored 2 times"), "{section}");
    // Order 2 lost its key: that is not a violation (keys expire).
    assert!(
        !section.contains(&format!("idempotency key {k2}: order {o2}")),
        "{section}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_outbox_rows_and_dead_jobs_are_listed_not_failed() {
    let h = History::build(|_| {}).await;
    let o3 = h.orders[3];
    let (guard, pool) = h.stop().await;
    exec(
        &pool,
        &format!(
            "UPDATE outbox_events SET status = 'DEAD', last_error = 'broker said no' \
             WHERE aggregate_id = {o3} AND event_type = 'ORDER_CREATED'"
        ),
    )
    .await;
    let job = ulid::Ulid::new().to_string();
    exec(
        &pool,
        &format!(
            "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result, done_at) \
             VALUES ('{job}', 'publish-outbox', 'Killed', 5, 5, '{{}}', '\"kafka unreachable\"', CURRENT_TIMESTAMP)"
        ),
    )
    .await;
    let run = audit::run(&guard.url, &[]);
    assert_eq!(run.code, 0, "listing is not failing:\n{}", run.stdout);
    let rows = run.listed("outbox_dead").expect("DEAD rows listed");
    assert!(
        rows.contains("broker said no") && rows.contains(&format!("order {o3}")),
        "{rows}"
    );
    let jobs = run.listed("dead_jobs").expect("dead jobs listed");
    assert!(
        jobs.contains(&format!("job {job}: queue publish-outbox"))
            && jobs.contains("kafka unreachable"),
        "{jobs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_audit_exports_its_violations_per_check() {
    let h = History::build(|c| c.audit.cron = "* * * * * *".into()).await;
    let product = h.product;
    exec(
        h.app.db(),
        &format!("UPDATE stocks SET quantity = quantity + 7 WHERE product_id = {product}"),
    )
    .await;
    let metric = "audit_violations{check=\"stock\"} 1";
    let mut text = String::new();
    let mut seen = false;
    for _ in 0..300 {
        text = h
            .app
            .client
            .get(h.app.url("/actuator/prometheus"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(metric) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "{metric} never exported:\n{text}");
    assert!(
        text.contains("audit_violations{check=\"order_created\"} 0"),
        "{text}"
    );
}
