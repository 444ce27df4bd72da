//! The service process SIGKILLed in the middle of a burst of orders, then started again:
//! every committed order has exactly one outbox row, reaches Kafka, and is notified exactly
//! once; the jobs the dead process held are resumed after their lease.

mod common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{kafka, DatabaseGuard};
use orderflow_jobs::kafka::EmbeddedKafka;
use serde_json::{json, Value};

struct Service {
    child: Child,
    base: String,
}

/// A failing assertion must not leave a service process running after the test.
impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &str, bootstrap: &str, prefix: &str) -> Service {
    start_with(db, Some(bootstrap), prefix, &[])
}

/// Starts the service; without a `bootstrap` it runs the default configuration (no
/// `KAFKA_BROKERS`: its own in-process broker, which dies with it).
fn start_with(db: &str, bootstrap: Option<&str>, prefix: &str, extra: &[(&str, &str)]) -> Service {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command.env_clear();
    if let Some(bootstrap) = bootstrap {
        command.env("KAFKA_BROKERS", bootstrap);
    }
    let child = command
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db)
        .env("REDIS_URL", common::redis_url())
        .env("KAFKA_TOPIC_PREFIX", prefix)
        .env("KAFKA_CONSUMER_GROUP", format!("{prefix}group"))
        // The restarted process is the same member of the group (as a restarted pod of a
        // StatefulSet would be): it takes its partitions back without waiting for the broker
        // to expire the killed one.
        .env("KAFKA_GROUP_INSTANCE_ID", format!("{prefix}instance"))
        .env("JWT_SECRET", common::JWT_SECRET.as_str())
        .env("ADMIN_EMAIL", common::ADMIN_EMAIL)
        .env("ADMIN_PASSWORD", common::ADMIN_PASSWORD)
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("JOB_KEEP_ALIVE_SECS", "1")
        .env("JOB_LEASE_SECS", "4")
        .env("OUTBOX_SWEEP_INTERVAL_SECS", "1")
        .env("OUTBOX_SWEEP_GRACE_SECS", "2")
        .env("JOB_POLL_INTERVAL_MS", "50")
        .env("RUST_LOG", "info,rdkafka=warn,librdkafka=warn")
        .env("LOG_FORMAT", "json")
        .envs(extra.iter().copied())
        .stdout(log_file(prefix))
        .stderr(Stdio::null())
        .spawn()
        .expect("start orderflow");
    Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
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

async fn ready(client: &reqwest::Client, s: &Service) {
    for _ in 0..600 {
        if let Ok(r) = client
            .get(format!("{}/actuator/health/readiness", s.base))
            .send()
            .await
        {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service not ready");
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    key: Option<&str>,
    body: Value,
) -> Option<(u16, Value)> {
    let mut req = client.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let res = req.send().await.ok()?;
    let status = res.status().as_u16();
    Some((status, res.json().await.unwrap_or(Value::Null)))
}

/// A broker that outlives the service process: TEST_KAFKA_BROKERS, or one embedded here (kept
/// alive by the returned handle), and a topic prefix of the test's own.
async fn outliving_broker() -> (Option<EmbeddedKafka>, String, String) {
    let mut embedded = None;
    let bootstrap = match std::env::var("TEST_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
    {
        Some(b) => b,
        None => {
            let broker = EmbeddedKafka::start(vec![]).expect("embedded kafka");
            let bootstrap = broker.bootstrap_servers().to_owned();
            embedded = Some(broker);
            bootstrap
        }
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("crash{}.", &run[..10]);
    orderflow_jobs::kafka::ensure_topics(&bootstrap, &orderflow_jobs::kafka::topics(&prefix))
        .await
        .ok();
    (embedded, bootstrap, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_loses_nothing_and_notifies_each_order_once() {
    let (_embedded, bootstrap, prefix) = outliving_broker().await;
    let db = common::fresh_database_url();
    let _guard = DatabaseGuard { url: db.clone() };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut first = start(&db, &bootstrap, &prefix);
    ready(&client, &first).await;
    let (_, login) = post(
        &client,
        format!("{}/api/v1/auth/login", first.base),
        None,
        None,
        json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}),
    )
    .await
    .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let (_, product) = post(
        &client,
        format!("{}/api/v1/admin/products", first.base),
        Some(&token),
        None,
        json!({"sku": "CRASH-1", "name": "c", "price": 5, "initialStock": 100000}),
    )
    .await
    .unwrap();
    let product = product["id"].as_i64().unwrap();

    // A burst of 120 orders from 12 concurrent clients; the process dies in the middle of it.
    let base = first.base.clone();
    let burst = tokio::spawn({
        let (client, token) = (client.clone(), token.clone());
        async move {
            let calls = (0..120).map(|i| {
                let (client, token, base) = (client.clone(), token.clone(), base.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis((i % 12) * 5 + (i / 12) * 40)).await;
                    post(
                        &client,
                        format!("{base}/api/v1/orders"),
                        Some(&token),
                        Some(&format!("burst-{i}")),
                        json!({"items": [{"productId": product, "quantity": 1}]}),
                    )
                    .await
                }
            });
            futures::future::join_all(calls).await
        }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    drop(first);
    let outcomes = burst.await.unwrap();
    let acknowledged = outcomes
        .iter()
        .filter(|o| matches!(o, Some((201, _))))
        .count();

    let second = start(&db, &bootstrap, &prefix);
    ready(&client, &second).await;
    let pool = sqlx::MySqlPool::connect(&db).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let orders = count("SELECT COUNT(*) FROM orders").await;
    assert!(
        orders as usize >= acknowledged,
        "every acknowledged order is committed"
    );
    assert!(
        orders > 0 && orders < 120,
        "the kill landed mid-burst ({orders} committed)"
    );
    assert_committed_once(&pool, orders).await;
    let (settled, last) = settled(&pool, orders).await;
    if !settled {
        let jobs: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT job_type, status, COUNT(*) FROM jobs GROUP BY job_type, status ORDER BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        eprintln!("jobs by queue and status: {jobs:?}");
    }
    assert!(
        settled,
        "after the restart every committed order is published and notified: \
         {orders} orders, {} unpublished, {} notified",
        last.0, last.1
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM jobs WHERE status IN ('Running', 'Queued')").await,
        0,
        "jobs the killed process held were resumed (lease)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count("SELECT COUNT(*) FROM notifications").await,
        orders,
        "notified exactly once"
    );

    let events = kafka::read_all(
        &bootstrap,
        &format!("{prefix}ORDER_CREATED"),
        orders as usize,
        Duration::from_secs(3),
    )
    .await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *per_event
            .entry(e.event_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(
        per_event.len() as i64,
        orders,
        "every committed order's event is on the topic"
    );
    // A kill between Kafka's acknowledgement and the PUBLISHED commit can publish a row twice
    // (at-least-once); the consumer's dedup on the event id keeps notifications exact.
    let duplicates: usize = per_event.values().map(|n| n - 1).sum();
    eprintln!(
        "committed {orders}, acknowledged {acknowledged}, messages {}, duplicates {duplicates}",
        events.len()
    );

    drop(second);
    pool.close().await;
    common::audit::assert_passes(&db);
}

/// One stock decrement and one outbox row per committed order (stock started at 100,000).
async fn assert_committed_once(pool: &sqlx::MySqlPool, orders: i64) {
    assert_eq!(
        scalar(pool, "SELECT 100000 - quantity FROM stocks").await,
        orders,
        "one decrement per committed order"
    );
    assert_eq!(
        scalar(pool, "SELECT COUNT(*) FROM orders o WHERE (SELECT COUNT(*) FROM outbox_events e WHERE e.aggregate_id = o.id) <> 1").await,
        0,
        "exactly one outbox row per committed order"
    );
}

/// Waits up to 90 s for every outbox row to be PUBLISHED and `orders` notifications;
/// whether that happened, and the last (unpublished, notified) seen.
async fn settled(pool: &sqlx::MySqlPool, orders: i64) -> (bool, (i64, i64)) {
    let mut last = (0, 0);
    for _ in 0..180 {
        let unpublished = scalar(
            pool,
            "SELECT COUNT(*) FROM outbox_events WHERE status <> 'PUBLISHED'",
        )
        .await;
        let notified = scalar(pool, "SELECT COUNT(*) FROM notifications").await;
        last = (unpublished, notified);
        if unpublished == 0 && notified == orders {
            return (true, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (false, last)
}

async fn scalar(pool: &sqlx::MySqlPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The process dies while a batch of orders is inside its transaction (it holds one stock row
/// and waits for another, which the test holds): none of the batch is committed, and after a
/// restart every key of it succeeds once, as a new order, then replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_inside_a_batch_commits_none_of_it_and_each_retried_key_succeeds_once() {
    let (_embedded, bootstrap, prefix) = outliving_broker().await;
    let db = common::fresh_database_url();
    let _guard = DatabaseGuard { url: db.clone() };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // One lane and a long linger: the orders sent together are one batch. A long deadline:
    // the lanes' lock wait is a third of it, and the batch must still be waiting on the held
    // row when the process is killed.
    let batching = [
        ("ORDER_COMMIT_LANES", "1"),
        ("ORDER_BATCH_LINGER_US", "300000"),
        ("ORDER_DEADLINE_MS", "15000"),
    ];
    let mut first = start_with(&db, Some(&bootstrap), &prefix, &batching);
    ready(&client, &first).await;
    let (_, login) = post(
        &client,
        format!("{}/api/v1/auth/login", first.base),
        None,
        None,
        json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}),
    )
    .await
    .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let mut products = Vec::new();
    for sku in ["KILL-A", "KILL-B"] {
        let (_, p) = post(
            &client,
            format!("{}/api/v1/admin/products", first.base),
            Some(&token),
            None,
            json!({"sku": sku, "name": sku, "price": 7, "initialStock": 100}),
        )
        .await
        .unwrap();
        products.push(p["id"].as_i64().unwrap());
    }
    let items = json!({"items": [{"productId": products[0], "quantity": 1}, {"productId": products[1], "quantity": 2}]});

    let pool = sqlx::MySqlPool::connect(&db).await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("UPDATE stocks SET version = version + 1 WHERE product_id = ?")
        .bind(products[1])
        .execute(&mut *holder)
        .await
        .unwrap();
    let base = first.base.clone();
    let burst = tokio::spawn({
        let (client, token, items) = (client.clone(), token.clone(), items.clone());
        async move {
            let calls = (0..8).map(|i| {
                let (client, base, token, items) = (&client, &base, &token, items.clone());
                async move {
                    let key = format!("batch-{i}");
                    post(
                        client,
                        format!("{base}/api/v1/orders"),
                        Some(token),
                        Some(&key),
                        items,
                    )
                    .await
                }
            });
            futures::future::join_all(calls).await
        }
    });
    let mut waiting = false;
    for _ in 0..200 {
        let waits: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND ID <> CONNECTION_ID() \
             AND INFO LIKE '%UPDATE stocks%' AND TIME >= 1",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waits > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        waiting,
        "the batch is inside its transaction, waiting for the held row"
    );
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    drop(first);
    holder.rollback().await.unwrap();
    let outcomes = burst.await.unwrap();
    assert!(
        outcomes.iter().all(Option::is_none),
        "no answer came from the killed process: {outcomes:?}"
    );
    let count = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    for table in ["orders", "order_items", "outbox_events", "idempotency_keys"] {
        assert_eq!(
            count(format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "none of the batch is in {table}"
        );
    }
    assert_eq!(
        count("SELECT CAST(SUM(quantity) AS SIGNED) FROM stocks".into()).await,
        200
    );

    let second = start_with(&db, Some(&bootstrap), &prefix, &batching);
    ready(&client, &second).await;
    let retries = (0..8).map(|i| {
        let (client, base, token, items) = (&client, &second.base, &token, items.clone());
        async move {
            let key = format!("batch-{i}");
            post(
                client,
                format!("{base}/api/v1/orders"),
                Some(token),
                Some(&key),
                items,
            )
            .await
        }
    });
    let retried = futures::future::join_all(retries).await;
    assert!(
        retried.iter().all(|o| matches!(o, Some((201, _)))),
        "every retried key succeeds: {retried:?}"
    );
    let again = post(
        &client,
        format!("{}/api/v1/orders", second.base),
        Some(&token),
        Some("batch-0"),
        items.clone(),
    )
    .await
    .unwrap();
    assert_eq!(again.1, retried[0].as_ref().unwrap().1, "then replays");
    assert_eq!(count("SELECT COUNT(*) FROM orders".into()).await, 8);
    assert_eq!(
        count(format!(
            "SELECT quantity FROM stocks WHERE product_id = {}",
            products[0]
        ))
        .await,
        100 - 8
    );
    assert_eq!(
        count(format!(
            "SELECT quantity FROM stocks WHERE product_id = {}",
            products[1]
        ))
        .await,
        100 - 16
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM orders o WHERE (SELECT COUNT(*) FROM outbox_events e WHERE e.aggregate_id = o.id) <> 1".into()).await,
        0,
        "exactly one outbox row per order"
    );
    drop(second);
    pool.close().await;
    common::audit::assert_passes(&db);
}

/// The default configuration (no `KAFKA_BROKERS`): the in-process broker dies with the
/// process, taking with it the events published to it and not yet handed to a job, while
/// their outbox rows say PUBLISHED. Killed in the middle of a burst from 16 clients and
/// restarted on the same database, with every unanswered key sent again: every committed
/// order is published and notified exactly once (ADR 0016).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_the_default_embedded_broker_loses_no_notification() {
    let db = common::fresh_database_url();
    let _guard = DatabaseGuard { url: db.clone() };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("crashdefault{}.", &run[..10]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut first = start_with(&db, None, &prefix, &[]);
    ready(&client, &first).await;
    let (_, login) = post(
        &client,
        format!("{}/api/v1/auth/login", first.base),
        None,
        None,
        json!({"email": common::ADMIN_EMAIL, "password": common::ADMIN_PASSWORD}),
    )
    .await
    .unwrap();
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let (_, product) = post(
        &client,
        format!("{}/api/v1/admin/products", first.base),
        Some(&token),
        None,
        json!({"sku": "CRASH-DEFAULT", "name": "c", "price": 5, "initialStock": 100000}),
    )
    .await
    .unwrap();
    let product = product["id"].as_i64().unwrap();
    let order = json!({"items": [{"productId": product, "quantity": 1}]});

    // 16 clients, each sending its keys one after another until the process is gone: the
    // pipeline is busy end to end when the kill lands. Each returns its unanswered key.
    let base = first.base.clone();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (client, token, base, order) =
                (client.clone(), token.clone(), base.clone(), order.clone());
            tokio::spawn(async move {
                for n in 0..1000 {
                    let key = format!("default-{c}-{n}");
                    let url = format!("{base}/api/v1/orders");
                    match post(&client, url, Some(&token), Some(&key), order.clone()).await {
                        Some((201, _)) => {}
                        Some(other) => panic!("{key}: {other:?}"),
                        None => return Some(key),
                    }
                }
                None
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    drop(first);
    let mut unanswered = Vec::new();
    for c in clients {
        unanswered.extend(c.await.unwrap());
    }

    let second = start_with(&db, None, &prefix, &[]);
    ready(&client, &second).await;
    for key in &unanswered {
        let url = format!("{}/api/v1/orders", second.base);
        let outcome = post(&client, url, Some(&token), Some(key), order.clone()).await;
        assert!(
            matches!(outcome, Some((201, _))),
            "{key} retried: {outcome:?}"
        );
    }
    let pool = sqlx::MySqlPool::connect(&db).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let orders = count("SELECT COUNT(*) FROM orders").await;
    assert!(orders > 0, "orders were committed before the kill");
    assert_committed_once(&pool, orders).await;
    let (settled, last) = settled(&pool, orders).await;
    assert!(
        settled,
        "after the restart every committed order is published and notified: \
         {orders} orders ({} keys retried), {} unpublished, {} notified",
        unanswered.len(),
        last.0,
        last.1
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count("SELECT COUNT(*) FROM orders o WHERE (SELECT COUNT(*) FROM notifications n WHERE n.order_id = o.id) <> 1").await,
        0,
        "each order notified exactly once"
    );
    assert_eq!(count("SELECT COUNT(*) FROM notifications").await, orders);
    eprintln!(
        "committed {orders}, retried {} unanswered keys",
        unanswered.len()
    );
    drop(second);
    pool.close().await;
}
