//! One trace per order, end to end. The service's subscriber is installed exactly as in
//! production (`telemetry::install` with a batch `tracer_provider`), only the exporter is an
//! in-memory one instead of OTLP. An order sent with a `traceparent` must produce one trace,
//! continuing the caller's, from the HTTP server span through the order transaction, the
//! publish-outbox job, the Kafka produce and receive, and the consume-notification job, down
//! to the notification INSERT — each span the child of the one before. Also when one job
//! carries the events of several orders, on either side of Kafka.

mod common;

use std::{collections::HashMap, time::Duration};

use common::TestApp;
use opentelemetry::{trace::SpanKind, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use orderflow::telemetry;
use orderflow_jobs::consume_notification::job;
use reqwest::{Method, StatusCode};
use serde_json::json;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> String {
    attr(span, key).map(|v| v.to_string()).unwrap_or_default()
}

/// The spans of one trace.
fn of_trace<'a>(spans: &'a [SpanData], trace: &str) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace)
        .collect()
}

fn by_span_id<'a>(spans: &[&'a SpanData]) -> HashMap<String, &'a SpanData> {
    spans
        .iter()
        .map(|s| (s.span_context.span_id().to_string(), *s))
        .collect()
}

/// The chain from `leaf` up to the root of its trace, leaf first.
fn ancestry<'a>(leaf: &'a SpanData, by_id: &HashMap<String, &'a SpanData>) -> Vec<&'a SpanData> {
    let mut chain = vec![leaf];
    let mut current = leaf;
    while let Some(parent) = by_id.get(&current.parent_span_id.to_string()) {
        chain.push(parent);
        current = parent;
    }
    chain
}

/// Whether the trace's notification INSERT is exported with every span above it, up to the
/// span whose parent is `root_parent` (the caller's). Spans are exported as they end, and a
/// parent ends after its children: the job's span after its INSERT and commit, the receive
/// span after the job is stored (which a worker may be running already), the publish job's
/// span after its commit. So an exported INSERT does not mean an exported chain.
fn chain_exported(spans: &[SpanData], trace: &str, root_parent: &str) -> bool {
    let ours = of_trace(spans, trace);
    let by_id = by_span_id(&ours);
    ours.iter()
        .filter(|s| s.name == "INSERT notifications")
        .any(|insert| {
            ancestry(insert, &by_id)
                .last()
                .is_some_and(|root| root.parent_span_id.to_string() == root_parent)
        })
}

fn collected(provider: &SdkTracerProvider, exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    provider.force_flush().expect("spans flush");
    exporter.get_finished_spans().expect("spans are readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_from_the_request_to_the_notification_insert() {
    let exporter = InMemorySpanExporter::default();
    let provider = telemetry::tracer_provider(exporter.clone());
    telemetry::install(None, Some(provider.clone()));

    // A long linger, so that the two orders sent together below share a publish job.
    let app = TestApp::spawn_with(|c| c.events.publish_linger = Duration::from_millis(400)).await;
    let admin = app.admin_token().await;
    let product = app.new_product(&admin, 500, 10).await;
    let (_, token) = app.new_user().await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let r = app
        .call(
            Method::POST,
            "/api/v1/orders",
            Some(&token),
            &[
                ("Idempotency-Key", "trace-me"),
                ("traceparent", traceparent.as_str()),
            ],
            Some(json!({"items": [{"productId": product, "quantity": 1}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let order_id = r.body["id"].as_i64().unwrap();

    // Spans above the INSERT close after it: wait for the whole chain.
    let mut spans = Vec::new();
    let complete = app
        .eventually(Duration::from_secs(60), || {
            spans = collected(&provider, &exporter);
            let done = chain_exported(&spans, TRACE_ID, CALLER_SPAN);
            async move { done }
        })
        .await;
    assert!(
        complete,
        "the chain down to the notification INSERT never arrived"
    );

    let ours = of_trace(&spans, TRACE_ID);
    let by_id = by_span_id(&ours);
    let insert = ours
        .iter()
        .find(|s| s.name == "INSERT notifications")
        .expect("the notification insert is traced");
    let chain: Vec<&str> = ancestry(insert, &by_id)
        .iter()
        .rev()
        .map(|s| s.name.as_ref())
        .collect();
    let topic = app.topic("ORDER_CREATED");
    assert_eq!(
        chain,
        [
            "POST /api/v1/orders".to_string(),
            "TRANSACTION create_order".into(),
            "publish-outbox process".into(),
            format!("publish {topic}"),
            format!("receive {topic}"),
            "consume-notification process".into(),
            "INSERT notifications".into(),
        ],
        "the span chain from the request to the notification insert"
    );

    let root = ancestry(insert, &by_id).pop().unwrap();
    assert_eq!(
        root.parent_span_id.to_string(),
        CALLER_SPAN,
        "the server span continues the caller's traceparent"
    );
    assert!(root.parent_span_is_remote);
    assert_eq!(root.span_kind, SpanKind::Server);
    assert_eq!(attr_str(root, "http.request.method"), "POST");
    assert_eq!(attr_str(root, "http.route"), "/api/v1/orders");
    assert_eq!(attr_str(root, "http.response.status_code"), "201");

    let kinds: HashMap<&str, SpanKind> = ours
        .iter()
        .map(|s| (s.name.as_ref(), s.span_kind.clone()))
        .collect();
    assert_eq!(
        kinds[format!("publish {topic}").as_str()],
        SpanKind::Producer
    );
    assert_eq!(
        kinds[format!("receive {topic}").as_str()],
        SpanKind::Consumer
    );
    assert_eq!(kinds["INSERT notifications"], SpanKind::Client);

    for name in ["publish-outbox process", "consume-notification process"] {
        let job = ours.iter().find(|s| s.name == name).unwrap();
        assert_eq!(attr_str(job, "messaging.system"), "apalis");
        assert!(
            !attr_str(job, "messaging.message.id").is_empty(),
            "{name}: job id"
        );
        assert_eq!(attr_str(job, "job.attempt"), "1", "{name}");
        assert_eq!(attr_str(job, "job.outcome"), "done", "{name}");
    }
    let produce = ours
        .iter()
        .find(|s| s.name == format!("publish {topic}"))
        .unwrap();
    assert_eq!(attr_str(produce, "messaging.system"), "kafka");
    assert_eq!(
        attr_str(produce, "messaging.kafka.message.key"),
        order_id.to_string()
    );
    let notify = ours
        .iter()
        .find(|s| s.name == "consume-notification process")
        .unwrap();
    assert_eq!(attr_str(notify, "orderId"), order_id.to_string());
    assert_eq!(attr_str(insert, "db.system.name"), "mysql");

    // The stored event carries the transaction's context, not the caller's.
    let stored: String = sqlx::query_scalar("SELECT traceparent FROM outbox_events LIMIT 1")
        .fetch_one(app.db())
        .await
        .unwrap();
    let tx = ours
        .iter()
        .find(|s| s.name == "TRANSACTION create_order")
        .unwrap();
    assert_eq!(
        stored,
        format!("00-{TRACE_ID}-{}-01", tx.span_context.span_id())
    );

    // A job carrying two events keeps their traces apart: each event's span continues its
    // own trace, with its own INSERT as its child.
    let (user_id, _) = app.new_user().await;
    let traces = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ("1bf7651916cd43dd8448eb211c80319d", "c7ad6b7169203332"),
    ];
    let events = traces
        .iter()
        .enumerate()
        .map(|(i, (trace, span))| job::ReceivedEvent {
            topic: topic.clone(),
            partition: 0,
            offset: i as i64,
            event_id: Some(uuid::Uuid::now_v7().to_string()),
            event_type: Some("ORDER_CREATED".into()),
            payload: Some(json!({"orderId": 7000 + i, "userId": user_id}).to_string()),
            traceparent: Some(format!("00-{trace}-{span}-01")),
            tracestate: None,
        })
        .collect();
    job::push_notification(
        app.db(),
        &app.state.config.events.queue,
        job::ConsumeNotification { events },
    )
    .await
    .unwrap();
    let both = app
        .eventually(Duration::from_secs(60), || {
            spans = collected(&provider, &exporter);
            let done = traces
                .iter()
                .all(|(trace, parent)| chain_exported(&spans, trace, parent));
            async move { done }
        })
        .await;
    assert!(both, "each event of the batch is traced");
    let mut job_ids = Vec::new();
    for (trace, parent) in traces {
        let in_trace = of_trace(&spans, trace);
        let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names.len(),
            2,
            "{trace}: only its own job span and INSERT: {names:?}"
        );
        let job = in_trace
            .iter()
            .find(|s| s.name == "consume-notification process")
            .expect("the event's job span");
        assert_eq!(job.parent_span_id.to_string(), parent);
        let insert = in_trace
            .iter()
            .find(|s| s.name == "INSERT notifications")
            .unwrap();
        assert_eq!(insert.parent_span_id, job.span_context.span_id());
        job_ids.push(attr_str(job, "messaging.message.id"));
    }
    assert_eq!(job_ids[0], job_ids[1], "one job served both events");

    // Two orders committed together share a publish job (ADR 0011), and each still makes one
    // trace from its request to its notification: the job's span is in the first order's
    // trace only, and each order's Kafka produce continues its own order's transaction.
    let callers = [
        ("2cf7651916cd43dd8448eb211c80319e", "d7ad6b7169203333"),
        ("3df7651916cd43dd8448eb211c80319f", "e7ad6b7169203334"),
    ];
    let sends = callers.iter().map(|(trace, span)| {
        let traceparent = format!("00-{trace}-{span}-01");
        let token = token.clone();
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/api/v1/orders",
                Some(&token),
                &[
                    ("Idempotency-Key", trace),
                    ("traceparent", traceparent.as_str()),
                ],
                Some(json!({"items": [{"productId": product, "quantity": 1}]})),
            )
            .await
        }
    });
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let both = app
        .eventually(Duration::from_secs(60), || {
            spans = collected(&provider, &exporter);
            let done = callers
                .iter()
                .all(|(trace, parent)| chain_exported(&spans, trace, parent));
            async move { done }
        })
        .await;
    assert!(both, "each order of the shared job is notified and traced");
    // Read after the publish: the batcher hands the second row to the first row's job
    // only when the linger is over, after both answers.
    let shared: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT job_id) FROM outbox_events WHERE aggregate_id <> ?",
    )
    .bind(order_id)
    .fetch_one(app.db())
    .await
    .unwrap();
    assert_eq!(shared, 1, "the two orders' rows name one publish job");
    let mut with_job_span = 0;
    for (trace, _) in callers {
        let in_trace = of_trace(&spans, trace);
        let by_id = by_span_id(&in_trace);
        let insert = in_trace
            .iter()
            .find(|s| s.name == "INSERT notifications")
            .unwrap();
        let chain: Vec<String> = ancestry(insert, &by_id)
            .iter()
            .rev()
            .map(|s| s.name.to_string())
            .filter(|name| name != "publish-outbox process")
            .collect();
        assert_eq!(
            chain,
            [
                "POST /api/v1/orders".to_string(),
                "TRANSACTION create_order".into(),
                format!("publish {topic}"),
                format!("receive {topic}"),
                "consume-notification process".into(),
                "INSERT notifications".into(),
            ],
            "{trace}: its own chain from its request to its notification"
        );
        if in_trace.iter().any(|s| s.name == "publish-outbox process") {
            with_job_span += 1;
        }
    }
    assert_eq!(with_job_span, 1, "the shared job's span is in one trace");
    app.stop().await;
}
