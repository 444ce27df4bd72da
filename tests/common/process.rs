//! The service as a process of its own (the release a user runs, configured by environment
//! variables only), for tests that need what an in-process app cannot give: its own metrics
//! registry, its resident memory, or a configuration a new user would have.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

pub struct ServiceProcess {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

/// A failing assertion must not leave a service process running after the test.
impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one order request came back with.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub code: Option<String>,
    pub retry_after: Option<String>,
    pub replayed: bool,
    pub body: Value,
}

impl ServiceProcess {
    /// Starts `orderflow serve` on a free port against `database_url`, with the tests' secret
    /// and administrator, `TEST_KAFKA_BROKERS` when set (else the in-process broker), topics
    /// of its own, and `extra` on top; waits until it is ready.
    pub async fn start(database_url: &str, extra: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("p{}.", &run[..10]);
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command.env_clear();
        if let Some(brokers) = std::env::var("TEST_KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.is_empty())
        {
            command.env("KAFKA_BROKERS", brokers);
        }
        let child = command
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", super::redis_url())
            .env("CACHE_KEY_PREFIX", &prefix)
            .env("KAFKA_TOPIC_PREFIX", &prefix)
            .env("KAFKA_CONSUMER_GROUP", format!("{prefix}group"))
            .env("JWT_SECRET", super::JWT_SECRET.as_str())
            .env("ADMIN_EMAIL", super::ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", super::ADMIN_PASSWORD)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn")
            .env("LOG_FORMAT", "json")
            .envs(extra.iter().copied())
            .stdout(log_file(&prefix))
            .stderr(Stdio::null())
            .spawn()
            .expect("start orderflow");
        let service = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(35))
                .pool_max_idle_per_host(512)
                .build()
                .expect("client"),
        };
        service.wait_ready().await;
        service
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_ready(&self) {
        for _ in 0..1200 {
            if self.probe("/actuator/health/readiness").await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service did not become ready");
    }

    /// The status of a GET (no body read), `None` when no answer came.
    pub async fn probe(&self, path: &str) -> Option<u16> {
        self.client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the service's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// The value of one sample of the Prometheus scrape (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/actuator/prometheus", self.base))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("scrape body");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request is answered");
        assert!(res.status().is_success(), "POST {path}: {}", res.status());
        res.json().await.expect("JSON body")
    }

    pub async fn admin_token(&self) -> String {
        self.login(super::ADMIN_EMAIL, super::ADMIN_PASSWORD).await
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let body = self
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
            )
            .await;
        body["accessToken"].as_str().expect("token").to_owned()
    }

    /// A new account; returns its id and token.
    pub async fn new_user(&self) -> (i64, String) {
        let email = format!("user-{}@orderflow.test", uuid::Uuid::new_v4().simple());
        let user = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"email": email, "password": "user-password-1", "name": "Test User"}),
            )
            .await;
        let id = user["id"].as_i64().expect("id");
        (id, self.login(&email, "user-password-1").await)
    }

    pub async fn new_product(&self, admin: &str, stock: i64) -> i64 {
        let sku = format!("SKU-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let product = self
            .post(
                "/api/v1/admin/products",
                Some(admin),
                json!({"sku": sku, "name": "Test product", "price": 100, "initialStock": stock}),
            )
            .await;
        product["id"].as_i64().expect("id")
    }

    /// One order of one unit of `product`; `Err` when no answer came (a transport error or
    /// the client's own timeout).
    pub async fn order(&self, token: &str, key: &str, product: i64) -> Result<Answer, String> {
        let res = self
            .client
            .post(format!("{}/api/v1/orders", self.base))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&json!({"items": [{"productId": product, "quantity": 1}]}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let body: Value = res.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            code: body["code"].as_str().map(str::to_owned),
            retry_after,
            replayed,
            body,
        })
    }
}

/// The service's log, kept in the temp dir when `TEST_LOG` is set (for post-mortems).
fn log_file(prefix: &str) -> Stdio {
    match std::env::var("TEST_LOG") {
        Ok(_) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("{prefix}log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        Err(_) => Stdio::null(),
    }
}
