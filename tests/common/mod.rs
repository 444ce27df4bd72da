//! Integration-test harness: the real service on a random port, against the real MariaDB
//! (a fresh database per test, dropped afterwards) and Redis, driven over HTTP.
//!
//! Endpoints come from the environment: `TEST_DATABASE_URL` (a server URL, default
//! `mysql://root@127.0.0.1:3306`), `TEST_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! With the `testcontainers` feature and `ORDERFLOW_TESTCONTAINERS=1`, MySQL and Redis are
//! started in containers instead (needs a Docker engine).
#![allow(dead_code)]

pub mod audit;
pub mod browser;
pub mod console;
#[cfg(feature = "testcontainers")]
pub mod containers;
pub mod kafka;
pub mod private_mariadb;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod tansu;

use std::{net::SocketAddr, time::Duration};

use orderflow::{
    config::Config,
    router, startup,
    state::{AppState, Role},
};
use reqwest::{header::HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const ADMIN_EMAIL: &str = "admin@orderflow.test";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// The tests' token secret: random for each test process (a value written here would be one
/// anyone can read, and the service refuses those).
pub static JWT_SECRET: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
});

pub fn server_url() -> String {
    #[cfg(feature = "testcontainers")]
    if let Some(url) = containers::mysql_url() {
        return url;
    }
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn redis_url() -> String {
    #[cfg(feature = "testcontainers")]
    if let Some(url) = containers::redis_url() {
        return url;
    }
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database URL for a new, uniquely named database on the test server.
pub fn fresh_database_url() -> String {
    let name = format!("orderflow_test_{}", uuid::Uuid::new_v4().simple());
    format!("{}/{}", server_url().trim_end_matches('/'), &name[..31])
}

/// `url` with its host:port replaced by `addr` (to route a connection through a proxy).
pub fn with_host(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (userinfo, hostpath) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let path = hostpath.find('/').map(|i| &hostpath[i..]).unwrap_or("");
    format!("{scheme}://{userinfo}{addr}{path}")
}

/// The database server's socket address.
pub async fn server_addr() -> SocketAddr {
    let url = server_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host = host.split('/').next().unwrap_or(host).to_owned();
    tokio::net::lookup_host(host)
        .await
        .expect("resolve database host")
        .next()
        .expect("an address")
}

/// Configuration as the service reads it, pointed at the test endpoints.
pub fn test_config(database_url: &str) -> Config {
    // TEST_LOG=1 shows the service's logs (filtered by RUST_LOG) when a test needs explaining.
    if std::env::var("TEST_LOG").is_ok() {
        orderflow::telemetry::init_logging(orderflow::config::LogFormat::Json);
    }
    let mut config = Config::from_env().expect("test environment configuration is valid");
    config.database_url = database_url.to_owned();
    config.redis_url = redis_url();
    // Tests run in parallel against one Redis: each app gets its own key space.
    config.cache_key_prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    // TEST_KAFKA_BROKERS (e.g. tansu on 127.0.0.1:9092) or, unset, an embedded broker per app.
    // Each app gets its own topics and consumer group, so parallel tests cannot see each
    // other's events on a shared broker.
    let run = uuid::Uuid::new_v4().simple().to_string();
    config.events.kafka_brokers = std::env::var("TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty());
    config.events.topic_prefix = format!("t{}.", &run[..12]);
    config.events.consumer_group = format!("orderflow-test-{}", &run[..12]);
    config.events.delivery_timeout = Duration::from_secs(3);
    config.events.queue.poll_interval = Duration::from_millis(50);
    config.events.queue.backoff_base = Duration::from_millis(500);
    config.events.queue.backoff_max = Duration::from_secs(2);
    config.events.sweep_interval = Duration::from_secs(1);
    config.events.sweep_grace = Duration::from_secs(3);
    config.events.shutdown_timeout = Duration::from_secs(5);
    config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.jwt.secret = JWT_SECRET.clone();
    config.jwt.random_secret = false;
    config.admin_bootstrap = Some((ADMIN_EMAIL.into(), ADMIN_PASSWORD.into()));
    config.database_max_connections = 24;
    // Browser tests wait for lists to refresh themselves.
    config.console.refresh = Duration::from_secs(1);
    config.database_acquire_timeout = Duration::from_secs(30);
    // Tests of other features than the deadline share two cores with the whole suite: a
    // generous one keeps a slow moment from answering 503 where they check correctness.
    // tests/overload.rs runs the service with the default deadline.
    config.order_batches.deadline = Duration::from_secs(10);
    config.order_batches.queue_max_wait = Duration::from_secs(5);
    config
}

/// Drops the test database when the test ends, however it ends.
pub struct DatabaseGuard {
    pub url: String,
}

impl Drop for DatabaseGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop runs inside the test's runtime; do the async work on a runtime of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(orderflow::db::drop_database(&url))
        })
        .join();
    }
}

pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
    pub db_guard: std::sync::Arc<DatabaseGuard>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the service with a configuration adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let url = fresh_database_url();
        let guard = std::sync::Arc::new(DatabaseGuard { url: url.clone() });
        let mut config = test_config(&url);
        adjust(&mut config);
        Self::start(config, guard).await
    }

    async fn start(config: Config, db_guard: std::sync::Arc<DatabaseGuard>) -> Self {
        let state = startup::init(config).await.expect("service starts");
        Self::serve(state, db_guard, None).await
    }

    /// Starts the API only: no workers, so outbox rows and jobs stay where the API left them.
    pub async fn spawn_api_only(adjust: impl FnOnce(&mut Config)) -> Self {
        let url = fresh_database_url();
        let guard = std::sync::Arc::new(DatabaseGuard { url: url.clone() });
        let mut config = test_config(&url);
        adjust(&mut config);
        let state = startup::init(config).await.expect("service starts");
        Self::serve_role(state, guard, Role::Api).await
    }

    /// A second instance on the same database and the same Kafka (a replica).
    pub async fn replica_of(&self) -> Self {
        let mut config = (*self.state.config).clone();
        config.events.kafka_brokers = Some(self.state.events.bootstrap.clone());
        Self::start(config, self.db_guard.clone()).await
    }

    async fn serve_role(
        state: AppState,
        db_guard: std::sync::Arc<DatabaseGuard>,
        role: Role,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(startup::serve(listener, state.clone(), role, async move {
            stop.cancelled().await
        }));
        Self::assemble(addr, state, shutdown, server, db_guard)
    }

    /// The Kafka topic of an event type for this app.
    pub fn topic(&self, event_type: &str) -> String {
        format!("{}{event_type}", self.state.config.events.topic_prefix)
    }

    /// Polls `f` until it returns true or `timeout` passes; returns whether it did.
    pub async fn eventually<F, Fut>(&self, timeout: Duration, mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if f().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f().await
    }

    /// Serves `state` (optionally with extra routes inside the middleware stack).
    pub async fn serve(
        state: AppState,
        db_guard: std::sync::Arc<DatabaseGuard>,
        extra: Option<axum::Router<AppState>>,
    ) -> Self {
        let Some(routes) = extra else {
            return Self::serve_role(state, db_guard, Role::All).await;
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = router::with_middleware(routes, state.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        });
        Self::assemble(addr, state, shutdown, server, db_guard)
    }

    fn assemble(
        addr: SocketAddr,
        state: AppState,
        shutdown: CancellationToken,
        server: JoinHandle<std::io::Result<()>>,
        db_guard: std::sync::Arc<DatabaseGuard>,
    ) -> Self {
        Self {
            base: format!("http://{addr}"),
            addr,
            state,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(256)
                .build()
                .expect("client"),
            shutdown,
            server: Some(server),
            db_guard,
        }
    }

    pub fn db(&self) -> &sqlx::MySqlPool {
        &self.state.db
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; returns status, headers and the JSON body (Null if empty/non-JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request is sent");
        Resp::read(res).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call(Method::GET, path, token, &[], None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.call(Method::POST, path, token, &[], Some(body)).await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login failed: {}", r.body);
        r.body["accessToken"].as_str().expect("token").to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Registers a new user with a unique email and returns (id, token).
    pub async fn new_user(&self) -> (i64, String) {
        let email = format!("user-{}@orderflow.test", uuid::Uuid::new_v4().simple());
        let r = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": "user-password-1", "name": "Test User"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "register failed: {}", r.body);
        let id = r.body["id"].as_i64().expect("id");
        (id, self.login(&email, "user-password-1").await)
    }

    /// Creates a product as admin; returns its id.
    pub async fn new_product(&self, admin: &str, price: i64, stock: i64) -> i64 {
        let sku = format!("SKU-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let r = self
            .post(
                "/api/v1/admin/products",
                Some(admin),
                json!({"sku": sku, "name": "Test product", "price": price, "initialStock": stock}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "create product failed: {}",
            r.body
        );
        r.body["id"].as_i64().expect("id")
    }

    pub async fn order(&self, token: &str, key: &str, items: Value) -> Resp {
        self.call(
            Method::POST,
            "/api/v1/orders",
            Some(token),
            &[("Idempotency-Key", key)],
            Some(json!({ "items": items })),
        )
        .await
    }

    pub async fn stock_of(&self, product_id: i64) -> i64 {
        sqlx::query_scalar("SELECT quantity FROM stocks WHERE product_id = ?")
            .bind(product_id)
            .fetch_one(self.db())
            .await
            .expect("stock row")
    }

    /// Every committed order has exactly one ORDER_CREATED outbox row, and no row lacks its order.
    pub async fn assert_outbox_matches_orders(&self) {
        let orphans = self
            .count(
                "SELECT COUNT(*) FROM orders o WHERE (SELECT COUNT(*) FROM outbox_events e \
                 WHERE e.aggregate_id = o.id AND e.event_type = 'ORDER_CREATED') <> 1",
            )
            .await;
        assert_eq!(orphans, 0, "every order has exactly one ORDER_CREATED row");
        let dangling = self
            .count(
                "SELECT COUNT(*) FROM outbox_events e WHERE e.event_type = 'ORDER_CREATED' \
                 AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = e.aggregate_id)",
            )
            .await;
        assert_eq!(dangling, 0, "no event for an order that does not exist");
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.db())
            .await
            .expect("count query")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    pub async fn read(res: reqwest::Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the standard error body with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_standard_error(&self.body, code);
    }
}

/// The error body has exactly the standard fields, with the given code.
#[track_caller]
pub fn assert_standard_error(body: &Value, code: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "details", "message", "path", "timestamp"],
        "body: {body}"
    );
    assert_eq!(body["code"], code, "body: {body}");
    assert!(body["details"].is_array());
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(body["path"].as_str().is_some_and(|p| p.starts_with('/')));
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap_or_default())
        .expect("timestamp is RFC 3339");
}
