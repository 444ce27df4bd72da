//! The OpenAPI document against the router that serves it: the SPEC's endpoints are all
//! documented with the standard error body and the bearer/Idempotency-Key headers; every
//! documented operation is served and no undocumented method answers on a documented path;
//! routes are only ever registered through the documenting router; the Kubernetes probes
//! point at documented routes; Swagger UI is served.

mod common;

use std::collections::BTreeSet;

use common::TestApp;
use orderflow::{router, state::Role};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The SPEC's API table and operations endpoints, as (method, path template).
const SPEC_OPERATIONS: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("get", "/api/v1/products"),
    ("get", "/api/v1/products/{id}"),
    ("post", "/api/v1/admin/products"),
    ("post", "/api/v1/admin/products/{id}/stock-adjust"),
    ("post", "/api/v1/orders"),
    ("get", "/api/v1/orders"),
    ("get", "/api/v1/orders/{id}"),
    ("post", "/api/v1/orders/{id}/cancel"),
    ("post", "/api/v1/admin/orders/{id}/complete"),
    ("get", "/api/v1/notifications"),
    ("get", "/api/v1/admin/jobs"),
    ("post", "/api/v1/admin/jobs/{id}/retry"),
    ("get", "/actuator/health"),
    ("get", "/actuator/health/liveness"),
    ("get", "/actuator/health/readiness"),
    ("get", "/actuator/metrics"),
    ("get", "/actuator/prometheus"),
];

/// The operators' endpoints beyond the SPEC's table (docs/adr/0014-operator-console.md).
const OPERATOR_OPERATIONS: &[(&str, &str)] = &[
    ("get", "/api/v1/admin/jobs/{id}"),
    ("post", "/api/v1/admin/jobs/{id}/discard"),
    ("post", "/api/v1/admin/jobs/retry"),
    ("post", "/api/v1/admin/jobs/discard"),
    ("get", "/api/v1/admin/queues"),
    ("post", "/api/v1/admin/queues/{queue}/pause"),
    ("post", "/api/v1/admin/queues/{queue}/resume"),
    ("get", "/api/v1/admin/orders/{id}/timeline"),
    ("get", "/api/v1/admin/audit"),
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// (method, path template) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((m.to_string(), path.clone()));
            }
        }
    }
    ops
}

fn concrete(template: &str) -> String {
    template.replace("{id}", "1")
}

/// The router's own 404 for a path it does not serve (handlers say what was not found).
fn is_unrouted(r: &common::Resp) -> bool {
    r.status == StatusCode::NOT_FOUND && r.body["message"] == "no such resource"
}

async fn document(app: &TestApp) -> Value {
    let r = app.get("/api-docs/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_describes_the_spec_api_with_its_errors_and_headers() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "orderflow");

    let ops = operations(&doc);
    let expected = SPEC_OPERATIONS.iter().chain(OPERATOR_OPERATIONS);
    for (m, p) in expected.clone() {
        assert!(
            ops.contains(&(m.to_string(), p.to_string())),
            "{m} {p} is not documented"
        );
    }
    assert_eq!(ops.len(), expected.count(), "unexpected extra: {ops:?}");

    let error_body = &doc["components"]["schemas"]["ErrorBody"];
    let mut fields: Vec<_> = error_body["properties"]
        .as_object()
        .expect("ErrorBody properties")
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(fields, ["code", "details", "message", "path", "timestamp"]);
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");

    for (m, p) in &ops {
        let op = &doc["paths"][p][m];
        let responses = op["responses"].as_object().expect("responses");
        for (status, response) in responses {
            let code: u16 = status.parse().expect("numeric status");
            if code >= 400 {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{m} {p} {status} must use the standard error body"
                );
            }
        }
        assert!(responses.contains_key("500"), "{m} {p} lacks 500");
        let secured =
            p.contains("/orders") || p.contains("/admin/") || p.ends_with("/notifications");
        if secured {
            assert_eq!(op["security"][0]["bearer"], Value::Array(vec![]), "{m} {p}");
            assert!(responses.contains_key("401"), "{m} {p} lacks 401");
        } else {
            assert!(op.get("security").is_none(), "{m} {p} is public");
        }
        if p.contains("/admin/") {
            assert!(responses.contains_key("403"), "{m} {p} lacks 403");
        }
        if op.get("requestBody").is_some() {
            for s in ["400", "413", "415"] {
                assert!(responses.contains_key(s), "{m} {p} lacks {s}");
            }
        }
    }

    let create = &doc["paths"]["/api/v1/orders"]["post"];
    let key = create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("Idempotency-Key is documented");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], true);
    for s in ["201", "409", "422"] {
        assert!(create["responses"].get(s).is_some(), "POST /orders {s}");
    }
    assert!(create["responses"]["201"]["headers"]
        .get("Idempotent-Replayed")
        .is_some());
    app.stop().await;
}

/// Every `$ref` in `value`, recursively.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_reference_in_the_document_resolves() {
    for role in [Role::All, Role::Worker] {
        let doc = serde_json::to_value(router::routes(role).1).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "dangling {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_no_other_method_answers() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    let paths: BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        for m in METHODS {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = app.call(method, &concrete(path), None, &[], None).await;
            if ops.contains(&(m.to_string(), path.clone())) {
                assert!(
                    !is_unrouted(&r) && r.status != StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is documented but not served: {} {}",
                    r.status,
                    r.text
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} answers but is not documented: {}",
                    r.text
                );
                common::assert_standard_error(&r.body, "METHOD_NOT_ALLOWED");
            }
        }
    }
    // The check above can tell an unserved route apart.
    assert!(is_unrouted(&app.get("/api/v1/nothing-here", None).await));
    app.stop().await;
}

/// The document is built from the same `routes!` registrations as the router, so the two
/// cannot drift as long as nothing registers a route around it. This checks that nothing
/// does: no handler module touches axum's own routing functions — but the web console's
/// router (`src/console/mod.rs`), a browser UI that is not part of the API and not in the
/// document, like Swagger UI (docs/adr/0014-operator-console.md; tests/console.rs).
#[test]
fn routes_are_only_registered_through_the_documenting_router() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("src/console/mod.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for needle in [
                    ".route(",
                    "axum::routing",
                    ".nest_service(",
                    ".route_service(",
                ] {
                    if text.contains(needle) {
                        offenders.push(format!("{} uses {needle}", path.display()));
                    }
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn a_worker_documents_only_what_it_serves() {
    let (_, doc) = router::routes(Role::Worker);
    let doc = serde_json::to_value(doc).unwrap();
    let ops = operations(&doc);
    assert!(!ops.is_empty());
    assert!(
        ops.iter().all(|(_, p)| p.starts_with("/actuator/")),
        "{ops:?}"
    );
}

/// Every `httpGet` probe in k8s/base names a documented route that answers 200 in every role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_probes_point_at_real_routes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/base");
    let mut probe_paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == "httpGet:" {
                let path = lines[i + 1..]
                    .iter()
                    .take(3)
                    .find_map(|l| l.trim().strip_prefix("path:"))
                    .expect("httpGet has a path");
                probe_paths.insert(path.trim().trim_matches(['"', '\'']).to_string());
            }
        }
    }
    assert!(probe_paths.len() >= 2, "{probe_paths:?}");
    let (_, worker_doc) = router::routes(Role::Worker);
    let worker_doc = serde_json::to_value(worker_doc).unwrap();
    let app = TestApp::spawn_api_only(|_| {}).await;
    for path in &probe_paths {
        assert!(
            worker_doc["paths"][path]["get"].is_object(),
            "probe {path} is not a documented route of every role"
        );
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::OK, "probe {path}: {}", r.text);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_is_served_and_points_at_the_document() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    // With and without the slash a browser may add (the client follows the redirect).
    for path in ["/swagger-ui", "/swagger-ui/"] {
        let r = app.get(path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.text.contains("swagger-ui"), "{}", r.text);
    }
    let r = app.get("/swagger-ui/swagger-initializer.js", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let config = app.get("/swagger-ui/swagger-config.json", None).await;
    assert!(
        r.text.contains("/api-docs/openapi.json") || config.text.contains("/api-docs/openapi.json"),
        "{} {}",
        r.text,
        config.text
    );
    app.stop().await;
}
