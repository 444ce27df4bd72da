//! The event half: outbox → publish-outbox → Kafka → consumer group → consume-notification,
//! against the broker in TEST_KAFKA_BROKERS (CI: tansu, a separate process) or, unset, an
//! embedded one. Fault tests that need to stop the broker use the embedded one.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{kafka, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(45);

async fn notifications(app: &TestApp, token: &str) -> Vec<Value> {
    app.get("/api/v1/notifications?size=100", Some(token))
        .await
        .body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn all_published(app: &TestApp) -> bool {
    app.count("SELECT COUNT(*) FROM outbox_events WHERE status <> 'PUBLISHED'")
        .await
        == 0
}

/// Outbox rows DEAD whose job is dead too (the handler marks the rows, then apalis the job).
async fn dead_rows_of_dead_jobs(app: &TestApp) -> i64 {
    app.count(
        "SELECT COUNT(*) FROM outbox_events e JOIN jobs j ON j.id = e.job_id \
         WHERE e.status = 'DEAD' AND j.status = 'Killed'",
    )
    .await
}

/// Waits until the service's consumer group has committed to the end of these event types'
/// topics, i.e. has consumed every message on them (what a fixed sleep only hoped for).
async fn consumed_everything(app: &TestApp, event_types: &[&str]) -> bool {
    let topics: Vec<String> = event_types.iter().map(|t| app.topic(t)).collect();
    kafka::wait_until_group_consumed(
        &app.state.events.bootstrap,
        &app.state.config.events.consumer_group,
        &topics,
        WAIT,
    )
    .await
}

/// Every consume-notification job (idempotency key, status), once none is still to run or
/// running (or after `WAIT`, as they are then: the caller's assertion shows them).
async fn settled_consume_jobs(app: &TestApp) -> Vec<(Option<String>, String)> {
    let jobs = || async {
        sqlx::query_as::<_, (Option<String>, String)>(
            "SELECT idempotency_key, status FROM jobs \
             WHERE job_type = 'consume-notification' ORDER BY id",
        )
        .fetch_all(app.db())
        .await
        .unwrap()
    };
    app.eventually(WAIT, || async {
        app.count(
            "SELECT COUNT(*) FROM jobs WHERE job_type = 'consume-notification' \
             AND (status IN ('Pending', 'Queued', 'Running') \
             OR (status = 'Failed' AND attempts < max_attempts))",
        )
        .await
            == 0
    })
    .await;
    jobs().await
}

/// Reads `expected` events of the topic and asserts each one is there exactly once.
async fn assert_each_event_once(app: &TestApp, topic: &str, expected: usize) {
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic(topic),
        expected,
        Duration::from_secs(3),
    )
    .await;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *per_event.entry(e.event_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per_event.len(), expected, "every event on the topic");
    assert!(
        per_event.values().all(|n| *n == 1),
        "no event published twice: {per_event:?}"
    );
}

/// Places the user's first order and waits for its notification: (order id, event id, payload).
async fn first_order_notified(
    app: &TestApp,
    user: &str,
    product: i64,
    key: &str,
) -> (i64, String, String) {
    let order_id = app
        .order(user, key, json!([{"productId": product, "quantity": 1}]))
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    assert!(
        app.eventually(WAIT, || async { notifications(app, user).await.len() == 1 })
            .await
    );
    let (event_id, payload) =
        sqlx::query_as("SELECT event_id, payload FROM outbox_events WHERE aggregate_id = ?")
            .bind(order_id)
            .fetch_one(app.db())
            .await
            .unwrap();
    (order_id, event_id, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_and_its_cancellation_each_reach_kafka_and_notify_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let p = app.new_product(&admin, 1500, 5).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let order = app
        .call(
            reqwest::Method::POST,
            "/api/v1/orders",
            Some(&user),
            &[("Idempotency-Key", "e2e-1"), ("traceparent", traceparent)],
            Some(json!({"items": [{"productId": p, "quantity": 2}]})),
        )
        .await;
    assert_eq!(order.status, StatusCode::CREATED);
    let order_id = order.body["id"].as_i64().unwrap();

    assert!(
        app.eventually(WAIT, || async {
            notifications(&app, &user).await.len() == 1
        })
        .await,
        "notified"
    );
    let n = &notifications(&app, &user).await[0];
    assert_eq!(n["orderId"], order_id);
    assert_eq!(n["type"], "ORDER_CREATED");
    assert!(n["message"].as_str().unwrap().contains("3000"));

    let (event_id, status): (String, String) =
        sqlx::query_as("SELECT event_id, status FROM outbox_events WHERE aggregate_id = ?")
            .bind(order_id)
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(status, "PUBLISHED");
    assert_eq!(n["eventId"], event_id.as_str());

    // The message on the topic: key = order id, headers = event id, type, traceparent.
    let topic = app.topic("ORDER_CREATED");
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &topic,
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event_id.as_deref(), Some(event_id.as_str()));
    assert_eq!(e.event_type.as_deref(), Some("ORDER_CREATED"));
    assert_eq!(e.traceparent.as_deref(), Some(traceparent));
    assert_eq!(e.key.as_deref(), Some(order_id.to_string().as_str()));
    let payload: Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(
        (payload["orderId"].as_i64(), payload["userId"].as_i64()),
        (Some(order_id), Some(user_id))
    );

    let cancel = app
        .post(
            &format!("/api/v1/orders/{order_id}/cancel"),
            Some(&user),
            json!({}),
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.text);
    assert_eq!(cancel.body["status"], "CANCELLED");
    assert!(
        app.eventually(WAIT, || async {
            notifications(&app, &user).await.len() == 2
        })
        .await
    );
    let newest = &notifications(&app, &user).await[0];
    assert_eq!(newest["type"], "ORDER_CANCELLED");
    assert_eq!(newest["orderId"], order_id);
    let cancelled_id: String = sqlx::query_scalar(
        "SELECT event_id FROM outbox_events WHERE aggregate_id = ? \
         AND event_type = 'ORDER_CANCELLED'",
    )
    .bind(order_id)
    .fetch_one(app.db())
    .await
    .unwrap();
    assert_eq!(newest["eventId"], cancelled_id.as_str());

    // The cancellation on its own topic, keyed by the order.
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic("ORDER_CANCELLED"),
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.event_id.as_deref(), Some(cancelled_id.as_str()));
    assert_eq!(e.event_type.as_deref(), Some("ORDER_CANCELLED"));
    assert_eq!(e.key.as_deref(), Some(order_id.to_string().as_str()));
    let payload: Value = serde_json::from_str(&e.payload).unwrap();
    assert_eq!(payload["orderId"].as_i64(), Some(order_id));

    // "Once", counted when nothing is left to arrive: the service's consumer has consumed
    // both topics, and every consume job has ended.
    assert!(
        consumed_everything(&app, &["ORDER_CREATED", "ORDER_CANCELLED"]).await,
        "the service's consumer committed past both events"
    );
    assert_eq!(
        settled_consume_jobs(&app).await,
        [
            (Some(event_id.clone()), "Done".to_owned()),
            (Some(cancelled_id.clone()), "Done".to_owned())
        ],
        "one consume job per event, done"
    );
    let notified = notifications(&app, &user).await;
    let mut notified: Vec<&str> = notified
        .iter()
        .filter_map(|n| n["eventId"].as_str())
        .collect();
    notified.sort_unstable();
    let mut expected = [event_id.as_str(), cancelled_id.as_str()];
    expected.sort_unstable();
    assert_eq!(notified, expected, "each event notified once");
    assert_eq!(app.count("SELECT COUNT(*) FROM notifications").await, 2);
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "both outbox rows PUBLISHED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_notifies_once() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let (order_id, event_id, payload) = first_order_notified(&app, &user, p, "dup-1").await;
    let topic = app.topic("ORDER_CREATED");
    for _ in 0..3 {
        kafka::produce(
            &app.state.events.bootstrap,
            &topic,
            &order_id.to_string(),
            &payload,
            &[("eventId", &event_id), ("eventType", "ORDER_CREATED")],
        )
        .await;
    }
    // The three redeliveries are consumed: the service's consumer group commits past them
    // (only once their job is stored, or found to be stored already) ...
    assert!(
        consumed_everything(&app, &["ORDER_CREATED"]).await,
        "the service's consumer committed past the redeliveries"
    );
    // ... and change nothing: one notification, and one consume job in all, done. Without
    // de-duplication each redelivery would be a job of its own (which the notifications'
    // unique event id would then refuse, or turn into a no-op).
    assert_eq!(notifications(&app, &user).await.len(), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM notifications").await, 1);
    assert_eq!(
        settled_consume_jobs(&app).await,
        [(Some(event_id.clone()), "Done".to_owned())],
        "one consume job for the event, done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_dead_and_the_partition_moves_on() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let topic = app.topic("ORDER_CREATED");
    // Key "1" lands where order 1's event will: the poison sits in front of it.
    kafka::produce(&app.state.events.bootstrap, &topic, "1", "{not json", &[]).await;
    app.order(
        &user,
        "after-poison",
        json!([{"productId": p, "quantity": 1}]),
    )
    .await;
    assert!(
        app.eventually(WAIT, || async {
            notifications(&app, &user).await.len() == 1
        })
        .await,
        "the real event still arrives"
    );

    let dead = app
        .eventually(WAIT, || async {
            app.get(
                "/api/v1/admin/jobs?status=dead&queue=consume-notification",
                Some(&admin),
            )
            .await
            .body["totalItems"]
                == 1
        })
        .await;
    assert!(dead, "the poison message is a dead job");
    let jobs = app
        .get(
            "/api/v1/admin/jobs?status=dead&queue=consume-notification",
            Some(&admin),
        )
        .await
        .body;
    let job = &jobs["items"][0];
    assert_eq!(job["queue"], "consume-notification");
    assert!(
        job["lastResult"].as_str().unwrap().contains("eventId"),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_carries_several_events_notifies_each_once_and_refuses_only_its_poison() {
    use orderflow_jobs::consume_notification::job::{self, ConsumeNotification, ReceivedEvent};

    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let (_, notified_id, notified_payload) = first_order_notified(&app, &user, p, "batch-1").await;

    let event = |event_id: Option<String>, payload: String| ReceivedEvent {
        topic: app.topic("ORDER_CREATED"),
        partition: 0,
        offset: 0,
        event_id,
        event_type: Some("ORDER_CREATED".into()),
        payload: Some(payload),
        traceparent: None,
        tracestate: None,
    };
    let fresh: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let mut events = vec![event(Some(notified_id.clone()), notified_payload)];
    for (i, id) in fresh.iter().enumerate() {
        let payload = json!({"orderId": 9000 + i, "userId": user_id, "totalAmount": 100});
        events.push(event(Some(id.clone()), payload.to_string()));
    }
    // Never put in a batch by the consumer, but a handler must not lose the others for it.
    events.push(event(None, "{}".into()));
    job::push_notification(
        app.db(),
        &app.state.config.events.queue,
        ConsumeNotification { events },
    )
    .await
    .unwrap();

    let dead_jobs = "/api/v1/admin/jobs?status=dead&queue=consume-notification";
    assert!(
        app.eventually(WAIT, || async {
            app.get(dead_jobs, Some(&admin)).await.body["totalItems"] == 1
        })
        .await,
        "the job with a poison event is dead"
    );
    let job = app.get(dead_jobs, Some(&admin)).await.body["items"][0].clone();
    assert!(
        job["lastResult"].as_str().unwrap().contains("eventId"),
        "{job}"
    );
    // Its well-formed events were stored before it was refused, each once.
    assert_eq!(notifications(&app, &user).await.len(), 4);
    let count_of = |id: &str| format!("SELECT COUNT(*) FROM notifications WHERE event_id = '{id}'");
    assert_eq!(
        app.count(&count_of(&notified_id)).await,
        1,
        "a redelivered event"
    );
    for id in &fresh {
        assert_eq!(app.count(&count_of(id)).await, 1);
    }

    // An operator's retry runs the job again: nothing new, and the poison is refused again.
    let job_id = job["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{job_id}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert!(
        app.eventually(WAIT, || async {
            let refused_again = format!(
                "SELECT COUNT(*) FROM jobs WHERE id = '{job_id}' AND status = 'Killed' AND last_result IS NOT NULL"
            );
            app.count(&refused_again).await == 1
        })
        .await,
        "the retried job is refused again"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM notifications").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_retries_then_dead_then_an_operator_retry_publishes_once() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.delivery_timeout = Duration::from_millis(1500);
        // An outage is retried for the window (ADR 0015); a short one kills the job soon.
        c.events.publish_retry_window = Duration::from_secs(3);
        c.events.queue.backoff_base = Duration::from_millis(500);
        c.events.queue.backoff_max = Duration::from_secs(1);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 5).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");

    embedded.broker_down();
    let order = app
        .order(
            &user,
            "while-down",
            json!([{"productId": p, "quantity": 1}]),
        )
        .await;
    assert_eq!(
        order.status,
        StatusCode::CREATED,
        "orders are accepted while Kafka is down"
    );
    let order_id = order.body["id"].as_i64().unwrap();

    // At the end of the window the handler marks the row DEAD, then apalis records the job
    // as Killed: wait for both.
    let dead = app
        .eventually(Duration::from_secs(60), || async {
            dead_rows_of_dead_jobs(&app).await == 1
        })
        .await;
    assert!(
        dead,
        "at the end of the retry window the row is DEAD and its job dead"
    );
    let (job_id, attempts): (String, i32) = sqlx::query_as(
        "SELECT j.id, j.attempts FROM jobs j JOIN outbox_events e ON e.job_id = j.id WHERE e.aggregate_id = ? AND j.status = 'Killed'",
    )
    .bind(order_id)
    .fetch_one(app.db())
    .await
    .expect("the publish job is dead in the job table");
    assert!(
        attempts >= 2,
        "retried within the window: {attempts} attempts"
    );
    let listed = app
        .get(
            "/api/v1/admin/jobs?status=dead&queue=publish-outbox",
            Some(&admin),
        )
        .await
        .body;
    assert_eq!(listed["items"][0]["id"], job_id.as_str());
    assert_eq!(listed["totalItems"], 1);

    // Only dead jobs can be retried; unknown ids are 404; users are not operators.
    app.post("/api/v1/admin/jobs/nope/retry", Some(&admin), json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    app.post(
        &format!("/api/v1/admin/jobs/{job_id}/retry"),
        Some(&user),
        json!({}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");

    embedded.broker_up();
    let r = app
        .post(
            &format!("/api/v1/admin/jobs/{job_id}/retry"),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    app.post(
        &format!("/api/v1/admin/jobs/{job_id}/retry"),
        Some(&admin),
        json!({}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "INVALID_STATE");

    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "published after the operator's retry"
    );
    // The consumer reconnects on librdkafka's own backoff (up to 10 s between tries).
    assert!(
        app.eventually(2 * WAIT, || async {
            notifications(&app, &user).await.len() == 1
        })
        .await
    );
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic("ORDER_CREATED"),
        1,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 1, "published once: {events:?}");
    // Nothing more is on its way: the consumer is past every message, and no job waits.
    assert!(consumed_everything(&app, &["ORDER_CREATED"]).await);
    settled_consume_jobs(&app).await;
    assert_eq!(notifications(&app, &user).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_publish_every_event_exactly_once() {
    // Two consumers join one group at once: a rebalance may take up to the rebalance
    // timeout (max.poll.interval.ms, 20 s) on tansu before both are assigned.
    let a = TestApp::spawn().await;
    let b = a.replica_of().await;
    let admin = a.admin_token().await;
    let p = a.new_product(&admin, 10, 1000).await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(a.new_user().await.1);
    }
    let calls = (0..40).map(|i| {
        let (app, token) = (if i % 2 == 0 { &a } else { &b }, users[i % 4].clone());
        async move {
            app.order(
                &token,
                &format!("two-{i}"),
                json!([{"productId": p, "quantity": 1}]),
            )
            .await
        }
    });
    let responses = futures::future::join_all(calls).await;
    for r in &responses {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }

    assert!(
        a.eventually(2 * WAIT, || all_published(&a)).await,
        "every row published"
    );
    assert_each_event_once(&a, "ORDER_CREATED", 40).await;
    assert!(
        a.eventually(2 * WAIT, || async {
            a.count("SELECT COUNT(*) FROM notifications").await == 40
        })
        .await
    );
    assert!(consumed_everything(&a, &["ORDER_CREATED"]).await);
    settled_consume_jobs(&a).await;
    assert_eq!(a.count("SELECT COUNT(*) FROM notifications").await, 40);
}

/// What a publish job of `app` works with, carrying up to `backlog_batch` rows of other jobs
/// at least `backlog_age` old: for tests that call the publish step themselves.
fn publish_context(
    app: &TestApp,
    backlog_batch: u32,
    backlog_age: Duration,
) -> orderflow_jobs::publish_outbox::publish::PublishContext {
    orderflow_jobs::publish_outbox::publish::PublishContext {
        pool: app.db().clone(),
        producer: app.state.events.producer.clone(),
        topic_prefix: app.state.config.events.topic_prefix.clone(),
        settings: app.state.config.events.queue,
        backlog_batch,
        backlog_age,
        retry: Default::default(),
        claim_lease: Duration::from_secs(30),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publish_jobs_for_the_same_rows_publish_each_once() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 100).await;
    for i in 0..10 {
        app.order(
            &user,
            &format!("race-{i}"),
            json!([{"productId": p, "quantity": 1}]),
        )
        .await;
    }
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY id")
        .fetch_all(app.db())
        .await
        .unwrap();
    assert_eq!(ids.len(), 10);
    // Only the rows under test: other NEW rows would be carried along.
    let ctx = publish_context(&app, 0, Duration::ZERO);
    // Four workers race for the same ten rows, as apalis may let happen during a backoff.
    let no_trace = orderflow_jobs::engine::trace::TraceContext::default();
    let reports = futures::future::join_all((0..4).map(|_| {
        orderflow_jobs::publish_outbox::publish::publish_rows(&ctx, &ids, &no_trace, None)
    }))
    .await;
    let published: usize = reports
        .iter()
        .map(|r| r.as_ref().expect("publish succeeds").published)
        .sum();
    assert_eq!(published, 10);
    assert!(all_published(&app).await);
    let events = kafka::read_all(
        &app.state.events.bootstrap,
        &app.topic("ORDER_CREATED"),
        10,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(events.len(), 10);
}

/// A publish job carries another job's NEW row only once it is older than the backlog age:
/// a younger one's own job is on its way, and carrying it made that job find its row claimed,
/// wait for the carrier's send and claim again (statements and lock waits that grew with
/// every replica: docs/capacity.md). An old row, as after an outage, is still carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_job_carries_only_rows_older_than_the_backlog_age() {
    // No workers: the rows are published by the call below, or not at all.
    let app = TestApp::spawn_api_only(|_| {}).await;
    let append = |order_id: i64| {
        let app = &app;
        async move {
            let job = orderflow_jobs::engine::queue::new_job_id();
            let mut tx = app.db().begin().await.unwrap();
            let row = orderflow_jobs::publish_outbox::outbox::append(
                &mut tx,
                orderflow_jobs::publish_outbox::outbox::EventType::OrderCreated,
                order_id,
                &json!({"orderId": order_id, "userId": 1, "totalAmount": 1}),
                &Default::default(),
                &job,
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            (row.id, job)
        }
    };
    let (own, own_job) = append(717171).await;
    let (old, _) = append(717172).await;
    let (fresh, _) = append(717173).await;
    sqlx::query(
        "UPDATE outbox_events SET created_at = created_at - INTERVAL 5 SECOND WHERE id = ?",
    )
    .bind(old)
    .execute(app.db())
    .await
    .unwrap();
    // An age far longer than the test takes to get here, far shorter than the old row's.
    let ctx = publish_context(&app, 100, Duration::from_secs(2));
    let report = orderflow_jobs::publish_outbox::publish::publish_rows(
        &ctx,
        &[own],
        &Default::default(),
        Some(&own_job),
    )
    .await
    .expect("publish succeeds");
    assert_eq!((report.published, report.carried), (1, 1), "{report:?}");
    let state = |id: i64| {
        let app = &app;
        async move {
            sqlx::query_as::<_, (String, bool)>(
                "SELECT status, claimed_until IS NOT NULL FROM outbox_events WHERE id = ?",
            )
            .bind(id)
            .fetch_one(app.db())
            .await
            .unwrap()
        }
    };
    assert_eq!(state(own).await, ("PUBLISHED".to_owned(), false));
    assert_eq!(
        state(old).await,
        ("PUBLISHED".to_owned(), false),
        "the old row was carried"
    );
    assert_eq!(
        state(fresh).await,
        ("NEW".to_owned(), false),
        "the fresh row is left, unclaimed, to its own job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_publish_job_is_swept_up() {
    let app = TestApp::spawn_with(|c| c.events.sweep_grace = Duration::from_secs(1)).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 10, 100).await;
    // An outbox row whose job never made it to the queue (as after a crash right after commit).
    let mut tx = app.db().begin().await.unwrap();
    let appended = orderflow_jobs::publish_outbox::outbox::append(
        &mut tx,
        orderflow_jobs::publish_outbox::outbox::EventType::OrderCreated,
        424242,
        &json!({"orderId": 424242, "userId": 1, "totalAmount": 1}),
        &Default::default(),
        &orderflow_jobs::engine::queue::new_job_id(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let _ = (&user, p);
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "the sweeper re-enqueued it"
    );
    let job: Option<String> = sqlx::query_scalar("SELECT job_id FROM outbox_events WHERE id = ?")
        .bind(appended.id)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_ne!(
        job.as_deref(),
        Some(appended.job_id.as_str()),
        "a new job carried it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_another_transaction_held_is_still_published_by_its_own_job() {
    // No sweeper rescue within the test: only the row's own job can publish it.
    let app = TestApp::spawn_with(|c| c.events.sweep_grace = Duration::from_secs(3600)).await;
    let mut tx = app.db().begin().await.unwrap();
    let appended = orderflow_jobs::publish_outbox::outbox::append(
        &mut tx,
        orderflow_jobs::publish_outbox::outbox::EventType::OrderCreated,
        515151,
        &json!({"orderId": 515151, "userId": 1, "totalAmount": 1}),
        &Default::default(),
        &orderflow_jobs::engine::queue::new_job_id(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Another transaction holds the row without publishing it (as a backlog claim's locking
    // scan may), while the row's job runs.
    let mut holder = app.db().begin().await.unwrap();
    sqlx::query("SELECT id FROM outbox_events WHERE id = ? FOR UPDATE")
        .bind(appended.id)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    orderflow_jobs::publish_outbox::job::push_publish(
        app.db(),
        &app.state.config.events.queue,
        &appended.job_id,
        vec![appended.id],
        Default::default(),
    )
    .await
    .unwrap();
    // The job reaches the held row and waits for the holder's lock: its locking read that
    // waits (FOR UPDATE, not the first pass's SKIP LOCKED) is running in this database. A job
    // that skipped the row and tried again later would never be seen here. (The session list,
    // because on MariaDB 10.11 INNODB_TRX did not list the job's waiting transaction that the
    // InnoDB monitor showed in LOCK WAIT: docs/testing.md.)
    let waits_on_holder = || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE db = DATABASE() AND id <> CONNECTION_ID() \
             AND info LIKE 'SELECT %FROM outbox_events%FOR UPDATE' \
             AND info NOT LIKE '%SKIP LOCKED%'",
        )
        .fetch_one(app.db())
        .await
        .unwrap();
        waiting > 0
    };
    assert!(
        app.eventually(Duration::from_secs(20), waits_on_holder)
            .await,
        "the row's job reached the held row and waits for it"
    );
    assert!(!all_published(&app).await, "held: not published yet");
    holder.rollback().await.unwrap();
    assert!(
        app.eventually(Duration::from_secs(10), || all_published(&app))
            .await,
        "its own job published it once the holder let go"
    );
    // The job is acknowledged (Done) by apalis after the commit that published its row.
    let done = || async {
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
            .bind(&appended.job_id)
            .fetch_one(app.db())
            .await
            .unwrap();
        status == "Done"
    };
    assert!(
        app.eventually(Duration::from_secs(10), done).await,
        "its job ends Done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_workers_jobs_are_released_at_once_and_a_silent_workers_after_the_lease() {
    // No pipeline: the rows below are the whole job table.
    let app = TestApp::spawn_api_only(|_| {}).await;
    for (id, status, worker, seen_secs_ago) in [
        ("01JENDEDQUEUED000000000000", "Queued", "ended", 0),
        ("01JENDEDRUNNING00000000000", "Running", "ended", 0),
        ("01JLIVERUNNING000000000000", "Running", "live", 0),
        ("01JSILENTRUNNING0000000000", "Running", "silent", 120),
    ] {
        sqlx::query(
            "INSERT IGNORE INTO workers (id, worker_type, storage_name, last_seen) \
             VALUES (?, 'publish-outbox', 'MySqlStorage', CURRENT_TIMESTAMP - INTERVAL ? SECOND)",
        )
        .bind(worker)
        .bind(seen_secs_ago)
        .execute(app.db())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO jobs (id, job_type, status, attempts, job, lock_by, lock_at) \
             VALUES (?, 'publish-outbox', ?, 1, '{}', ?, CURRENT_TIMESTAMP - INTERVAL ? SECOND)",
        )
        .bind(id)
        .bind(status)
        .bind(worker)
        .bind(seen_secs_ago)
        .execute(app.db())
        .await
        .unwrap();
    }
    let db = app.db().clone();
    let state = |id: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (String, i32, Option<String>)>(
                "SELECT status, attempts, lock_by FROM jobs WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    // The supervisor saw the worker "ended" stop: its jobs go back now, the interrupted
    // attempt counted.
    assert_eq!(
        orderflow_jobs::engine::reaper::release_worker(app.db(), "ended")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        state("01JENDEDQUEUED000000000000").await,
        ("Pending".into(), 1, None)
    );
    assert_eq!(
        state("01JENDEDRUNNING00000000000").await,
        ("Pending".into(), 2, None)
    );
    // The reaper takes only the job of the worker silent for longer than the lease.
    assert_eq!(
        orderflow_jobs::engine::reaper::reap_orphans(app.db(), Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        state("01JSILENTRUNNING0000000000").await,
        ("Pending".into(), 2, None)
    );
    assert_eq!(
        state("01JLIVERUNNING000000000000").await,
        ("Running".into(), 1, Some("live".into()))
    );
}

/// Orders committed within `PUBLISH_LINGER_MS` of each other share one publish-outbox job, and
/// every row names the job that carries it: when that job dies (Kafka down), an operator's
/// retry of it revives all of its rows, and each event reaches Kafka once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_committed_together_share_one_publish_job_and_its_retry() {
    let app = TestApp::spawn_with(|c| {
        c.events.kafka_brokers = None; // embedded: this test stops the broker
        c.events.publish_linger = Duration::from_millis(500);
        c.events.delivery_timeout = Duration::from_millis(1500);
        c.events.publish_retry_window = Duration::from_secs(2);
        c.events.queue.backoff_base = Duration::from_millis(200);
        c.events.queue.backoff_max = Duration::from_millis(500);
    })
    .await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 50).await;
    let embedded = app.state.events.embedded.as_ref().expect("embedded broker");
    const ORDERS: i64 = 6;

    embedded.broker_down();
    let keys: Vec<String> = (0..ORDERS).map(|i| format!("together-{i}")).collect();
    let calls = keys
        .iter()
        .map(|key| app.order(&user, key, json!([{"productId": p, "quantity": 1}])));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let all_dead = app
        .eventually(Duration::from_secs(60), || async {
            dead_rows_of_dead_jobs(&app).await == ORDERS
        })
        .await;
    assert!(
        all_dead,
        "every row DEAD, each with the dead job that carried it"
    );
    let jobs = app
        .count("SELECT COUNT(DISTINCT job_id) FROM outbox_events")
        .await;
    assert!(
        jobs < ORDERS,
        "{ORDERS} orders committed together took {jobs} jobs"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM jobs WHERE job_type = 'publish-outbox'")
            .await,
        jobs,
        "no job was pushed that carries no row"
    );

    embedded.broker_up();
    let dead: Vec<String> = sqlx::query_scalar("SELECT DISTINCT job_id FROM outbox_events")
        .fetch_all(app.db())
        .await
        .unwrap();
    for job_id in &dead {
        let r = app
            .post(
                &format!("/api/v1/admin/jobs/{job_id}/retry"),
                Some(&admin),
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    }
    assert!(
        app.eventually(WAIT, || all_published(&app)).await,
        "the retry published every row of the job"
    );
    assert_each_event_once(&app, "ORDER_CREATED", ORDERS as usize).await;
    app.stop().await;
}
