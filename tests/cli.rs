//! The `orderflow` binary as an operator runs it: migrate, users promote, serve (with JSON
//! logs that carry requestId and userId, and a clean exit on SIGTERM), bad configuration.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::DatabaseGuard;
use serde_json::{json, Value};

fn orderflow(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", common::redis_url())
        .env("JWT_SECRET", common::JWT_SECRET.as_str())
        .env("RUST_LOG", "info");
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_and_every_table() {
    let url = common::fresh_database_url();
    let _guard = DatabaseGuard { url: url.clone() };
    let out = orderflow(&url).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = DATABASE() ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "idempotency_keys",
        "jobs",
        "notifications",
        "order_items",
        "order_items_archive",
        "orders",
        "orders_archive",
        "outbox_events",
        "products",
        "stocks",
        "users",
        "workers",
    ] {
        assert!(
            tables.iter().any(|x| x == t),
            "missing table {t} in {tables:?}"
        );
    }
    // Running it again is a no-op.
    assert!(orderflow(&url)
        .arg("migrate")
        .output()
        .unwrap()
        .status
        .success());
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_promote_makes_an_existing_account_admin() {
    let app = common::TestApp::spawn().await;
    let (id, _) = app.new_user().await;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(app.db())
        .await
        .unwrap();
    let url = app.db_guard.url.clone();
    let out = orderflow(&url)
        .args(["users", "promote", &email])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(role, "ADMIN");

    let out = orderflow(&url)
        .args(["users", "promote", "nobody@example.org"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody@example.org"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_run_runs_the_workflow_and_prints_its_summary() {
    let app = common::TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 250, 100).await;
    for i in 0..7 {
        let r = app
            .order(
                &user,
                &format!("old-{i}"),
                json!([{"productId": p, "quantity": 2}]),
            )
            .await;
        assert_eq!(r.status, reqwest::StatusCode::CREATED);
    }
    // Five of them finished long ago, two are still open.
    sqlx::query(
        "UPDATE orders SET status = 'COMPLETED', updated_at = CURRENT_TIMESTAMP(6) - INTERVAL 40 DAY \
         ORDER BY id LIMIT 5",
    )
    .execute(app.db())
    .await
    .unwrap();
    let out = orderflow(&app.db_guard.url)
        .args(["archive", "run", "--older-than-days", "30"])
        .env("ARCHIVE_CHUNK_SIZE", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Logs go to stdout too; the summary is the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["status"], "DONE");
    assert_eq!(summary["orders"], 5);
    assert_eq!(summary["items"], 5);
    assert_eq!(summary["chunks"], 3, "chunks of 2, 2 and 1");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 2);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'archive-run' AND status = 'Done'")
            .await,
        1 + 3 + 1,
        "plan, three chunk jobs, summary"
    );
}

#[test]
fn invalid_configuration_is_refused_with_the_variable_named() {
    let out = orderflow("mysql://root@127.0.0.1:3306/unused")
        .env("ORDER_MAX_ITEMS", "lots")
        .arg("migrate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORDER_MAX_ITEMS"));
}

struct Server {
    child: Child,
    base: String,
}

/// A failing assertion must not leave a service process running after the test.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(url: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = orderflow(url);
        cmd.env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("ADMIN_EMAIL", common::ADMIN_EMAIL)
            .env("ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .args(["serve", "--role", "all"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) -> Duration {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = client
                .get(format!("{}/actuator/health/readiness", self.base))
                .send()
                .await
            {
                if r.status().is_success() {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service did not become ready");
    }

    fn terminate(&mut self) -> (std::process::ExitStatus, Vec<Value>) {
        send_signal(self.child.id(), "TERM");
        let stdout = self.child.stdout.take().unwrap();
        let lines: Vec<Value> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        (self.child.wait().unwrap(), lines)
    }
}

fn send_signal(pid: u32, signal: &str) {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_json_with_request_and_user_ids_and_stops_cleanly_on_sigterm() {
    let url = common::fresh_database_url();
    let _guard = DatabaseGuard { url: url.clone() };
    let mut server = Server::start(&url, &[]);
    let client = reqwest::Client::new();
    server.wait_ready(&client).await;

    let login = client
        .post(format!("{}/api/v1/auth/login", server.base))
        .json(&json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let token = login["accessToken"].as_str().unwrap();
    let r = client
        .post(format!("{}/api/v1/admin/products", server.base))
        .bearer_auth(token)
        .header("x-request-id", "cli-test-request-1")
        .json(&json!({"sku": "LOG-1", "name": "Logged", "price": 1, "initialStock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let (status, lines) = server.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");
    assert!(!lines.is_empty(), "logs are JSON lines");
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("cli-test-request-1"))
        .collect();
    assert!(!ours.is_empty(), "a log line carries the request id");
    let line = ours
        .iter()
        .find(|l| l["message"] == "product created")
        .expect("product created log line");
    let span = &line["spans"][0];
    assert_eq!(span["requestId"], "cli-test-request-1");
    assert!(
        span["userId"].is_number(),
        "userId recorded on the request span: {line}"
    );
    assert!(line["timestamp"].is_string() && line["level"] == "INFO");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "event pipeline stopped"),
        "workers drained"
    );
    assert!(lines.iter().any(|l| l["message"] == "orderflow stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dead_and_jobs_retry_operate_the_job_table() {
    let app = common::TestApp::spawn_api_only(|_| {}).await;
    let url = app.db_guard.url.clone();
    // A publish job that died with its outbox row, as after an outage.
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result) \
         VALUES ('01JDEADJOB0000000000000000', 'publish-outbox', 'Killed', 5, 5, '{\"outbox_ids\":[1]}', '{\"Err\":\"broker down\"}')",
    )
    .execute(app.db())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status, job_id) \
         VALUES (UUID(), 'ORDER', 1, 'ORDER_CREATED', '{}', 'DEAD', '01JDEADJOB0000000000000000')",
    )
    .execute(app.db())
    .await
    .unwrap();

    let out = orderflow(&url)
        .args(["jobs", "dead", "--queue", "publish-outbox"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("01JDEADJOB0000000000000000")
            && text.contains("broker down"),
        "{text}"
    );

    let out = orderflow(&url)
        .args(["jobs", "retry", "01JDEADJOB0000000000000000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM jobs WHERE id = '01JDEADJOB0000000000000000'")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("Pending", 0));
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE status = 'NEW'")
            .await,
        1,
        "its row is NEW again"
    );

    // Retrying a job that is not dead is refused.
    let out = orderflow(&url)
        .args(["jobs", "retry", "01JDEADJOB0000000000000000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not dead"));
    let out = orderflow(&url)
        .args(["jobs", "retry", "--all-dead"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 dead job(s) re-queued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_show_jobs_discard_and_queues_pause_resume_are_audited_as_the_cli() {
    let app = common::TestApp::spawn_api_only(|_| {}).await;
    let url = app.db_guard.url.clone();
    let job = "01JDEADJOB0000000000000001";
    sqlx::query(
        "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, job, last_result) \
         VALUES (?, 'publish-outbox', 'Killed', 5, 5, '{\"outbox_ids\":[1]}', '{\"Err\":\"broker down\"}')",
    )
    .bind(job)
    .execute(app.db())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_attempts (job_id, queue, attempt, started_at, finished_at, outcome, error) \
         VALUES (?, 'publish-outbox', 5, NOW(6), NOW(6), 'dead', 'kafka delivery failed')",
    )
    .bind(job)
    .execute(app.db())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status, job_id) \
         VALUES (UUID(), 'ORDER', 1, 'ORDER_CREATED', '{}', 'DEAD', ?)",
    )
    .bind(job)
    .execute(app.db())
    .await
    .unwrap();
    let run = |args: &[&str]| {
        let out = orderflow(&url)
            .env("USER", "ops")
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        stdout
    };

    let shown: Value = serde_json::from_str(&run(&["jobs", "show", job])).unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["attemptHistory"][0]["error"], "kafka delivery failed");
    assert_eq!(shown["outboxRows"][0]["status"], "DEAD");

    let out = run(&["jobs", "discard", job]);
    assert!(out.contains("1 outbox row(s) DISCARDED"), "{out}");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM outbox_events WHERE status = 'DISCARDED'")
            .await,
        1
    );
    assert!(run(&["queues", "pause", "retention"]).contains("retention is paused"));
    let listed = run(&["queues"]);
    assert!(
        listed.lines().any(|l| l.starts_with("retention\tPAUSED")),
        "{listed}"
    );
    // The queues that work through a Kafka client show its rebuilds (none here).
    for (queue, client) in [
        ("publish-outbox", "producer"),
        ("consume-notification", "consumer"),
    ] {
        let line = listed
            .lines()
            .find(|l| l.starts_with(&format!("{queue}\t")));
        assert!(
            line.is_some_and(|l| l.ends_with(&format!("\t{client} rebuilds 0 (60 min 0)"))),
            "{listed}"
        );
    }
    assert!(run(&["queues", "resume", "retention"]).contains("retention is running"));
    let out = orderflow(&url)
        .args(["queues", "pause", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let audit: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT via, actor, action, affected FROM operator_audit ORDER BY id")
            .fetch_all(app.db())
            .await
            .unwrap();
    let expected = [
        ("cli", "cli (ops)", "discard", 1),
        ("cli", "cli (ops)", "pause", 1),
        ("cli", "cli (ops)", "resume", 1),
    ];
    let audit: Vec<(&str, &str, &str, i32)> = audit
        .iter()
        .map(|(v, a, x, n)| (v.as_str(), a.as_str(), x.as_str(), *n))
        .collect();
    assert_eq!(audit, expected);
}
