//! The HTTP edge: the standard error body for every kind of failure, X-Request-Id, health,
//! readiness against a database that goes away, and request metrics.

mod common;

use std::time::Duration;

use axum::routing::get;
use common::{assert_standard_error, proxy::FaultProxy, raw_http, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_wrong_method_and_bad_json_get_the_standard_body() {
    let app = TestApp::spawn().await;
    let (_, token) = app.new_user().await;

    let r = app.get("/api/v1/no-such-thing", None).await;
    r.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(r.body["path"], "/api/v1/no-such-thing");

    let r = app
        .call(Method::DELETE, "/api/v1/products", None, &[], None)
        .await;
    r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");

    let raw = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let r = common::Resp::read(raw).await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": 5, "password": "x", "name": "n"}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(r.body["details"][0]["field"], "email");

    let raw = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    common::Resp::read(raw)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");

    let r = app.get("/api/v1/products/not-a-number", Some(&token)).await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_413_in_the_standard_body() {
    let app = TestApp::spawn_with(|c| c.http_body_limit_bytes = 1024).await;
    let big = "x".repeat(4096);
    // Over a bare socket: the server answers and closes as soon as it has read the
    // Content-Length, and a client library reports a write it cut short as a failed send.
    let body = json!({"email": "a@b.co", "password": big, "name": "n"}).to_string();
    let answer = raw_http::exchange(
        app.addr,
        &raw_http::post("/api/v1/auth/register", &[], &body),
    )
    .await;
    assert_eq!(answer.status, Some(413), "{answer:?}");
    assert_standard_error(&answer.json(), "PAYLOAD_TOO_LARGE");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM users WHERE email = 'a@b.co'")
            .await,
        0,
        "nothing stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_becomes_a_500_in_the_standard_body() {
    let base = TestApp::spawn().await;
    let routes = axum::Router::new().route(
        "/boom",
        get(|| async {
            panic!("handler exploded");
            #[allow(unreachable_code)]
            ""
        }),
    );
    let app = TestApp::serve(base.state.clone(), base.db_guard.clone(), Some(routes)).await;
    let r = app.get("/boom", None).await;
    r.assert_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR");
    assert!(
        !r.text.contains("exploded"),
        "panic message must not leak: {}",
        r.text
    );
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_echoed_when_sane_and_generated_otherwise() {
    let app = TestApp::spawn().await;
    let r = app
        .call(
            Method::GET,
            "/actuator/health",
            None,
            &[("x-request-id", "client-id-42")],
            None,
        )
        .await;
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));

    let r = app
        .call(
            Method::GET,
            "/actuator/health",
            None,
            &[("x-request-id", "bad id <script>")],
            None,
        )
        .await;
    let generated = r.header("x-request-id").expect("generated id");
    assert_ne!(generated, "bad id <script>");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    // Errors carry it too.
    let r = app.get("/nowhere", None).await;
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_liveness_and_readiness() {
    let app = TestApp::spawn().await;
    let r = app.get("/actuator/health", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "UP");
    assert_eq!(r.body["components"]["db"]["status"], "UP");
    assert_eq!(
        app.get("/actuator/health/liveness", None).await.body["status"],
        "UP"
    );
    assert_eq!(
        app.get("/actuator/health/readiness", None).await.body["status"],
        "UP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_database_is_unreachable_and_recovers() {
    let proxy = FaultProxy::start(common::server_addr().await).await;
    let url = common::fresh_database_url();
    let proxied = common::with_host(&url, proxy.addr);
    let guard = std::sync::Arc::new(common::DatabaseGuard { url: url.clone() });
    let mut config = common::test_config(&proxied);
    config.database_acquire_timeout = Duration::from_secs(1);
    let state = orderflow::startup::init(config)
        .await
        .expect("starts through the proxy");
    let app = TestApp::serve(state, guard, None).await;

    assert_eq!(
        app.get("/actuator/health/readiness", None).await.status,
        StatusCode::OK
    );
    proxy.down();
    let r = app.get("/actuator/health/readiness", None).await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");
    assert_eq!(r.body["details"][0]["field"], "db");
    // Liveness does not depend on the database: the pod must not be restarted for it.
    assert_eq!(
        app.get("/actuator/health/liveness", None).await.status,
        StatusCode::OK
    );
    // An API call that needs the database is a clean 503, not a hang or a bare 500.
    app.get("/api/v1/products", None)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");

    proxy.up();
    let mut ready = false;
    for _ in 0..50 {
        if app.get("/actuator/health/readiness", None).await.status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "readiness recovers when the database is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_exposes_request_metrics_by_route_template() {
    let app = TestApp::spawn().await;
    let (_, token) = app.new_user().await;
    app.get("/api/v1/orders/12345", Some(&token)).await;
    let r = app
        .client
        .get(app.url("/actuator/prometheus"))
        .send()
        .await
        .unwrap();
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("http_requests_total")
            && l.contains("route=\"/api/v1/orders/{id}\"")
            && l.contains("status=\"404\"")),
        "no templated route in:\n{text}"
    );
    assert!(text.contains("http_request_duration_seconds_bucket"));
    assert!(text.contains("db_pool_connections"));
    // What is running: the tests run a debug build of this version.
    let build = format!(
        "orderflow_build_info{{version=\"{}\",profile=\"debug\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == build), "no {build} in:\n{text}");

    let names = app.get("/actuator/metrics", None).await.body;
    let names: Vec<&str> = names["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(names.contains(&"http_requests_total"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_every_layer_share_one_shape() {
    let app = TestApp::spawn().await;
    for (method, path, status, code) in [
        (
            Method::GET,
            "/api/v1/orders",
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            Method::POST,
            "/api/v1/admin/products",
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
        (
            Method::PUT,
            "/api/v1/orders",
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
        ),
        (Method::GET, "/api/v2", StatusCode::NOT_FOUND, "NOT_FOUND"),
    ] {
        let r = app.call(method, path, None, &[], None).await;
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
        r.assert_error(status, code);
        assert_eq!(r.body["path"], path);
    }
}
