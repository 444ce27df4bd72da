//! Products, stock adjustment, the Redis read-through cache and its invalidation, and the
//! service's behaviour when Redis is down or hangs.

mod common;

use common::{process::ServiceProcess, proxy, TestApp};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::json;

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(common::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("redis for assertions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_and_sku_uniqueness() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/admin/products",
            Some(&admin),
            json!({"sku": "MUG-1", "name": "Mug", "price": 1299, "initialStock": 7}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(
        r.body,
        json!({"id": id, "sku": "MUG-1", "name": "Mug", "price": 1299, "stock": 7})
    );

    let r = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(
        r.body,
        json!({"id": id, "sku": "MUG-1", "name": "Mug", "price": 1299, "stock": 7})
    );

    app.post(
        "/api/v1/admin/products",
        Some(&admin),
        json!({"sku": "mug-1", "name": "Other", "price": 1, "initialStock": 1}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "SKU_TAKEN");

    app.get("/api/v1/products/999999", None)
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");

    for i in 0..4 {
        app.post(
            "/api/v1/admin/products",
            Some(&admin),
            json!({"sku": format!("P-{i}"), "name": "p", "price": 10, "initialStock": 1}),
        )
        .await;
    }
    let page = app.get("/api/v1/products?page=1&size=2", None).await.body;
    assert_eq!(page["page"], 1);
    assert_eq!(page["size"], 2);
    assert_eq!(page["totalItems"], 5);
    assert_eq!(page["totalPages"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_is_bounded() {
    let app = TestApp::spawn().await;
    for q in ["size=0", "size=101", "page=-1", "page=abc", "size=1.5"] {
        app.get(&format!("/api/v1/products?{q}"), None)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    assert_eq!(
        app.get("/api/v1/products?size=100", None).await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_validation() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let r = app
        .post(
            "/api/v1/admin/products",
            Some(&admin),
            json!({"sku": "bad sku!", "name": "", "price": -1, "initialStock": -1}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(r.body["details"].as_array().unwrap().len(), 4);
    assert_eq!(app.count("SELECT COUNT(*) FROM products").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_adjust_never_goes_below_zero() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let id = app.new_product(&admin, 100, 5).await;
    let path = format!("/api/v1/admin/products/{id}/stock-adjust");

    let r = app.post(&path, Some(&admin), json!({"delta": 3})).await;
    assert_eq!(r.body, json!({"productId": id, "quantity": 8}));
    let r = app.post(&path, Some(&admin), json!({"delta": -8})).await;
    assert_eq!(r.body, json!({"productId": id, "quantity": 0}));
    app.post(&path, Some(&admin), json!({"delta": -1}))
        .await
        .assert_error(StatusCode::CONFLICT, "INSUFFICIENT_STOCK");
    app.post(&path, Some(&admin), json!({"delta": 0}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    app.post(
        "/api/v1/admin/products/999999/stock-adjust",
        Some(&admin),
        json!({"delta": 1}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(app.stock_of(id).await, 0);

    // The database refuses negative stock even from code that forgets to check.
    let direct = sqlx::query("UPDATE stocks SET quantity = -1 WHERE product_id = ?")
        .bind(id)
        .execute(app.db())
        .await;
    assert!(
        direct.is_err(),
        "CHECK (quantity >= 0) must reject a negative stock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decrements_stop_at_zero() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let id = app.new_product(&admin, 100, 10).await;
    let path = format!("/api/v1/admin/products/{id}/stock-adjust");
    let calls = (0..30).map(|_| app.post(&path, Some(&admin), json!({"delta": -1})));
    let results = futures::future::join_all(calls).await;
    let ok = results
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let refused = results
        .iter()
        .filter(|r| r.body["code"] == "INSUFFICIENT_STOCK")
        .count();
    assert_eq!((ok, refused), (10, 20));
    assert_eq!(app.stock_of(id).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_cached_in_redis_and_every_change_invalidates() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let id = app.new_product(&admin, 100, 5).await;
    let mut redis = redis().await;
    let prefix = &app.state.config.cache_key_prefix;
    let key = format!("{prefix}product:{id}");
    let list_key = format!("{prefix}product:list:0:20");
    let list_key = list_key.as_str();

    app.get(&format!("/api/v1/products/{id}"), None).await;
    app.get("/api/v1/products", None).await;
    let cached: Option<String> = redis.get(&key).await.unwrap();
    assert!(cached.unwrap().contains("\"stock\":5"));
    let ttl: i64 = redis.ttl(&key).await.unwrap();
    assert!(ttl > 0, "entries expire");
    let cached_list: Option<String> = redis.get(list_key).await.unwrap();
    assert!(cached_list.is_some());

    // A served hit: change the database behind the cache's back and read the cached value.
    sqlx::query("UPDATE products SET name = 'Renamed' WHERE id = ?")
        .bind(id)
        .execute(app.db())
        .await
        .unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"), None).await.body["name"],
        "Test product"
    );

    // A stock change through the API invalidates the product and every list page.
    app.post(
        &format!("/api/v1/admin/products/{id}/stock-adjust"),
        Some(&admin),
        json!({"delta": 2}),
    )
    .await;
    let gone: Option<String> = redis.get(&key).await.unwrap();
    assert!(gone.is_none(), "product entry invalidated");
    let gone: Option<String> = redis.get(list_key).await.unwrap();
    assert!(gone.is_none(), "list pages invalidated");
    let fresh = app.get(&format!("/api/v1/products/{id}"), None).await.body;
    assert_eq!(
        (fresh["stock"].as_i64(), fresh["name"].as_str()),
        (Some(7), Some("Renamed"))
    );

    // Creating a product invalidates the list pages too.
    app.get("/api/v1/products", None).await;
    app.new_product(&admin, 1, 1).await;
    let gone: Option<String> = redis.get(list_key).await.unwrap();
    assert!(gone.is_none());
    assert_eq!(
        app.get("/api/v1/products", None).await.body["totalItems"],
        2
    );
}

async fn catalog_and_orders_work(app: &TestApp) {
    let admin = app.admin_token().await;
    let id = app.new_product(&admin, 250, 3).await;
    let r = app.get(&format!("/api/v1/products/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["stock"], 3);
    assert_eq!(
        app.get("/api/v1/products", None).await.status,
        StatusCode::OK
    );
    let r = app
        .post(
            &format!("/api/v1/admin/products/{id}/stock-adjust"),
            Some(&admin),
            json!({"delta": -1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (_, user) = app.new_user().await;
    let r = app
        .order(
            &user,
            "redis-down-1",
            json!([{"productId": id, "quantity": 2}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"), None).await.body["stock"],
        0
    );
}

fn cache_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cache_requests_total") && l.contains("result=\"error\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_the_api_answers_from_the_database() {
    let before = cache_errors(&orderflow::telemetry::metrics_handle().render());
    // Nothing listens on port 1.
    let app = TestApp::spawn_with(|c| c.redis_url = "redis://127.0.0.1:1".into()).await;
    catalog_and_orders_work(&app).await;
    let health = app.get("/actuator/health", None).await;
    assert_eq!(
        health.status,
        StatusCode::OK,
        "a cache outage does not make the service DOWN"
    );
    assert_eq!(health.body["components"]["redis"]["status"], "DOWN");
    let after = cache_errors(&orderflow::telemetry::metrics_handle().render());
    assert!(
        after > before,
        "cache errors are counted ({before} -> {after})"
    );
}

/// The cache's metrics on a service of its own, from zero: this binary's process-wide
/// registry is moved by every test in it (the other Redis tests count errors too). With
/// Redis down every lookup is a miss and none a hit; the failures are counted (at least the
/// first: after a failure Redis is bypassed for a second, and a bypassed call is no error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_every_lookup_is_a_miss_and_the_failures_are_counted() {
    let url = common::fresh_database_url();
    let _database = common::DatabaseGuard { url: url.clone() };
    let service = ServiceProcess::start(&url, &[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let admin = service.admin_token().await;
    let id = service.new_product(&admin, 5).await;
    let lookups = [
        format!("/api/v1/products/{id}"),
        format!("/api/v1/products/{id}"),
        "/api/v1/products".to_owned(),
        format!("/api/v1/products/{id}"),
        "/api/v1/products?page=0&size=5".to_owned(),
    ];
    for path in &lookups {
        assert_eq!(service.probe(path).await, Some(200), "{path}");
    }
    let sample = |result: &str| format!("cache_requests_total{{result=\"{result}\"}}");
    assert_eq!(service.metric(&sample("miss")).await, lookups.len() as f64);
    assert_eq!(service.metric(&sample("hit")).await, 0.0);
    assert!(
        service.metric(&sample("error")).await >= 1.0,
        "the cache's failures are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hanging_the_api_answers_from_the_database() {
    let hole = proxy::blackhole().await;
    let app = TestApp::spawn_with(|c| c.redis_url = format!("redis://{hole}")).await;
    catalog_and_orders_work(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lost_while_running_the_api_keeps_answering() {
    let upstream: std::net::SocketAddr = {
        let url = common::redis_url();
        let host = url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        tokio::net::lookup_host(host).await.unwrap().next().unwrap()
    };
    let fault = proxy::FaultProxy::start(upstream).await;
    let app = TestApp::spawn_with(|c| c.redis_url = format!("redis://{}", fault.addr)).await;
    let admin = app.admin_token().await;
    let id = app.new_product(&admin, 1, 1).await;
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
    fault.down();
    catalog_and_orders_work(&app).await;
    assert_eq!(
        app.get(&format!("/api/v1/products/{id}"), None)
            .await
            .status,
        StatusCode::OK
    );
}
