//! Hostile input at the HTTP edge: oversized bodies and headers, deeply nested JSON, huge
//! numbers and totals that would overflow, unicode and SQL metacharacters in every string
//! field. Each is refused with a 4xx in the standard error body, or stored and returned
//! intact — never a 5xx, never a crash, never a partial write. Slow clients (issue 30): a
//! header dribbled byte by byte, a connection that says nothing, an idle keep-alive
//! connection, a reader too slow for its response — each closed at its deadline — and more
//! connections than the cap, refused while the health probes still answer. Anonymous
//! visitors of the console, who write nothing to the database.

mod common;

use std::collections::BTreeSet;

use common::{assert_standard_error, raw_http, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The service still answers normally (nothing above took it down or wedged it).
async fn still_healthy(app: &TestApp) {
    let r = app.get("/actuator/health/readiness", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        app.get("/api/v1/products", None).await.status,
        StatusCode::OK
    );
}

async fn raw_post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> common::Resp {
    let mut req = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    common::Resp::read(req.send().await.expect("request is sent")).await
}

/// Sends `request` as is on a fresh connection; returns the status (None if the server
/// closed without answering) and the response body.
async fn raw_request(app: &TestApp, request: &str) -> (Option<u16>, String) {
    let answer = raw_http::exchange(app.addr, request.as_bytes()).await;
    (answer.status, answer.body)
}

/// Asserts that a request whose body is over the limit was refused with 413 in the standard
/// body. The server answers as soon as it knows (the Content-Length, or the streamed body
/// passing the limit) and closes without reading the rest, so the client's write may be cut
/// part-way: that is what a client may see, and the answer is read all the same.
#[track_caller]
fn assert_refused_as_too_large(what: &str, answer: &raw_http::RawAnswer) {
    assert_eq!(answer.status, Some(413), "{what}: {answer:?}");
    assert_standard_error(&answer.json(), "PAYLOAD_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413_in_the_standard_body_and_store_nothing() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let limit = app.state.config.http_body_limit_bytes;
    let p = app.new_product(&admin, 100, 10).await;

    // Valid JSON, well over the limit, on every route that takes a body.
    let padding = "x".repeat(2 * limit);
    let order = json!({"items": [{"productId": p, "quantity": 1}], "pad": padding}).to_string();
    let bearer = |t: &str| format!("Bearer {t}");
    let user_auth = bearer(&user);
    let admin_auth = bearer(&admin);
    let answer = raw_http::exchange(
        app.addr,
        &raw_http::post(
            "/api/v1/orders",
            &[
                ("Authorization", user_auth.as_str()),
                ("Idempotency-Key", "big-1"),
            ],
            &order,
        ),
    )
    .await;
    assert_refused_as_too_large("an order", &answer);
    for (path, auth) in [
        ("/api/v1/auth/register", None),
        ("/api/v1/auth/login", None),
        ("/api/v1/admin/products", Some(admin_auth.as_str())),
        (
            &*format!("/api/v1/admin/products/{p}/stock-adjust"),
            Some(admin_auth.as_str()),
        ),
    ] {
        let body = json!({"email": padding, "password": padding, "name": "n"}).to_string();
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let answer = raw_http::exchange(app.addr, &raw_http::post(path, &headers, &body)).await;
        assert_refused_as_too_large(path, &answer);
    }
    // The same without a Content-Length (chunked): the limit applies while streaming.
    let answer = raw_http::exchange(
        app.addr,
        &raw_http::post_chunked(
            "/api/v1/orders",
            &[
                ("Authorization", user_auth.as_str()),
                ("Idempotency-Key", "big-2"),
            ],
            &order,
        ),
    )
    .await;
    assert_refused_as_too_large("a chunked order", &answer);

    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM products").await, 1);
    assert_eq!(app.stock_of(p).await, 10);
    // The key of the refused request is still free.
    let r = app
        .order(&user, "big-1", json!([{"productId": p, "quantity": 1}]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    still_healthy(&app).await;
}

/// Headers: large-but-parsable values reach the service and are refused in the standard
/// body; a header block beyond what the HTTP parser accepts is refused by hyper itself with
/// 431 (the one error that cannot carry the standard body: it never reaches the router)
/// and the service is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_headers_are_refused_without_a_5xx() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 10).await;
    let items = json!([{"productId": p, "quantity": 1}]);

    // A 32 KiB bearer token.
    let r = app
        .get("/api/v1/orders", Some(&"A".repeat(32 * 1024)))
        .await;
    r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // Idempotency-Key: too long, far too long, not ASCII, a control character, twice.
    for key in ["k".repeat(256), "k".repeat(32 * 1024)] {
        let r = app.order(&user, &key, items.clone()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], "Idempotency-Key");
    }
    for raw in [
        "clé-unicode".as_bytes().to_vec(),
        "emoji-😀".as_bytes().to_vec(),
        b"tab\there".to_vec(),
        vec![0xff, 0xfe, b'k'],
    ] {
        let req = app
            .client
            .post(app.url("/api/v1/orders"))
            .bearer_auth(&user)
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(&raw).unwrap(),
            )
            .json(&json!({ "items": items }));
        let r = common::Resp::read(req.send().await.unwrap()).await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let req = app
        .client
        .post(app.url("/api/v1/orders"))
        .bearer_auth(&user)
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .json(&json!({ "items": items }));
    common::Resp::read(req.send().await.unwrap())
        .await
        .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    // A 32 KiB X-Request-Id is replaced, not echoed.
    let r = app
        .call(
            Method::GET,
            "/api/v1/products",
            None,
            &[("x-request-id", &"r".repeat(32 * 1024))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("x-request-id").is_some_and(|id| id.len() <= 128));
    // A Content-Type that is not JSON.
    for ct in [
        "text/plain",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ] {
        let req = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("content-type", ct)
            .body(r#"{"email":"a@b.co","password":"x"}"#);
        let r = common::Resp::read(req.send().await.unwrap()).await;
        r.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);

    // Beyond the parser: one 1 MiB header, and 200 headers. hyper answers 431 before any
    // of the service's code runs (so without the standard body), then closes.
    let huge = "h".repeat(1024 * 1024);
    let many: String = (0..200).map(|i| format!("X-Many-{i}: v\r\n")).collect();
    for headers in [format!("X-Huge: {huge}\r\n"), many] {
        let (status, body) = raw_request(
            &app,
            &format!(
                "GET /api/v1/products HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, Some(431), "{body}");
        assert!(body.is_empty(), "hyper's own 431 has no body: {body}");
    }
    still_healthy(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_a_400_not_a_crash() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let (_, user) = app.new_user().await;
    let depth = 20_000; // 40 KB: under the body limit, far over serde_json's recursion limit
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(depth / 2), "}".repeat(depth / 2));
    for body in [
        format!(r#"{{"items":{arrays}}}"#),
        format!(r#"{{"items":[{{"productId":{objects},"quantity":1}}]}}"#),
        arrays.clone(),
    ] {
        let r = raw_post(
            &app,
            "/api/v1/orders",
            Some(&user),
            &[("idempotency-key", "deep")],
            body,
        )
        .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    // Without a token the admin route refuses the caller before it reads the body.
    for (path, status, code) in [
        (
            "/api/v1/auth/register",
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/auth/login",
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        ),
        (
            "/api/v1/admin/products",
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        ),
    ] {
        let r = raw_post(&app, path, None, &[], format!(r#"{{"email":{objects}}}"#)).await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "{path}: {} {}",
            r.status,
            r.text
        );
        assert_eq!(r.status, status, "{path}: {}", r.text);
        assert_standard_error(&r.body, code);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    still_healthy(&app).await;
}

/// Numbers at and beyond every bound, and of the wrong type: a 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_negative_and_mistyped_numbers_are_400_naming_the_field() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 10).await;
    let max_q = app.state.config.orders.max_quantity;

    let quantities: Vec<Value> = vec![
        json!(0),
        json!(-1),
        json!(max_q + 1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(1e30),
        json!("5"),
        Value::Null,
    ];
    for (i, q) in quantities.iter().enumerate() {
        let body = json!({"items": [{"productId": p, "quantity": q}]}).to_string();
        let r = raw_post(
            &app,
            "/api/v1/orders",
            Some(&user),
            &[("idempotency-key", &format!("q-{i}"))],
            body,
        )
        .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(
            r.body["details"][0]["field"], "items[0].quantity",
            "{q}: {}",
            r.text
        );
    }
    let r = raw_post(
        &app,
        "/api/v1/orders",
        Some(&user),
        &[("idempotency-key", "q-literal")],
        format!(r#"{{"items":[{{"productId":{p},"quantity":99999999999999999999999999}}]}}"#),
    )
    .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    for (i, id) in [json!(0), json!(-5), json!(u64::MAX), json!("1")]
        .iter()
        .enumerate()
    {
        let r = app
            .order(
                &user,
                &format!("pid-{i}"),
                json!([{"productId": id, "quantity": 1}]),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(
            r.body["details"][0]["field"], "items[0].productId",
            "{}",
            r.text
        );
    }
    // A product that does not exist, at the top of the id range.
    let r = app
        .order(
            &user,
            "pid-max",
            json!([{"productId": i64::MAX, "quantity": 1}]),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    // Products: price and stock bounds.
    for (field, price, stock) in [
        ("price", json!(-1), json!(1)),
        ("price", json!(1_000_000_000_001i64), json!(1)),
        ("price", json!(i64::MAX), json!(1)),
        ("price", json!(u64::MAX), json!(1)),
        ("price", json!(12.5), json!(1)),
        ("initialStock", json!(1), json!(-1)),
        ("initialStock", json!(1), json!(i64::MIN)),
        ("initialStock", json!(1), json!(1_000_000_001i64)),
    ] {
        let r = app
            .post(
                "/api/v1/admin/products",
                Some(&admin),
                json!({"sku": "BOUNDS-1", "name": "n", "price": price, "initialStock": stock}),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], field, "{}", r.text);
    }
    // Stock adjustments, including the one value whose absolute value overflows.
    for delta in [
        json!(0),
        json!(1_000_000_001i64),
        json!(-1_000_000_001i64),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(0.5),
    ] {
        let r = app
            .post(
                &format!("/api/v1/admin/products/{p}/stock-adjust"),
                Some(&admin),
                json!({ "delta": delta }),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(
            r.body["details"][0]["field"], "delta",
            "{delta}: {}",
            r.text
        );
    }
    // Below zero is a conflict, not a wrapped or negative stock.
    let r = app
        .post(
            &format!("/api/v1/admin/products/{p}/stock-adjust"),
            Some(&admin),
            json!({"delta": -11}),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "INSUFFICIENT_STOCK");
    // Ids in paths and paging beyond their types.
    for path in [
        "/api/v1/orders/9223372036854775808",
        "/api/v1/orders/1e3",
        "/api/v1/orders?page=4294967296",
        "/api/v1/orders?size=-1",
        "/api/v1/orders?page=10001",
        "/api/v1/products/99999999999999999999",
    ] {
        app.get(path, Some(&user))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    app.get("/api/v1/orders/-9223372036854775808", Some(&user))
        .await
        .assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");

    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM products").await, 1);
    assert_eq!(app.stock_of(p).await, 10);
}

/// With limits generous enough to let them through validation, quantity × price beyond i64
/// (on one line, or only in the sum of lines) is a 400 — never a 500, never a wrapped or
/// negative total — and nothing is stored: no order, no stock taken, the key still free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_that_overflow_i64_are_400_and_store_nothing() {
    let app = TestApp::spawn_api_only(|c| c.orders.max_quantity = i64::MAX).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let max_price = 1_000_000_000_000i64;
    let max_stock = 1_000_000_000i64;
    let a = app.new_product(&admin, max_price, max_stock).await;
    let b = app.new_product(&admin, max_price, max_stock).await;

    let cases = [
        // 10^12 × 10^7 = 10^19 > i64::MAX on one line.
        json!([{"productId": a, "quantity": 10_000_000}]),
        // 5·10^18 per line fits; the sum, 10^19, does not.
        json!([{"productId": a, "quantity": 5_000_000}, {"productId": b, "quantity": 5_000_000}]),
        // Far beyond: the multiplication itself overflows many times over.
        json!([{"productId": a, "quantity": i64::MAX}]),
    ];
    for (i, items) in cases.iter().enumerate() {
        let r = app
            .order(&user, &format!("overflow-{i}"), items.clone())
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], "items", "{}", r.text);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 0);
    assert_eq!(app.stock_of(a).await, max_stock);
    assert_eq!(app.stock_of(b).await, max_stock);

    // The largest total that fits is accepted and exact.
    let cheap = app.new_product(&admin, 1, max_stock).await;
    let r = app
        .order(
            &user,
            "overflow-0",
            json!([{"productId": a, "quantity": 9_000_000}, {"productId": cheap, "quantity": max_stock}]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body["totalAmount"].as_i64(),
        Some(9_000_000 * max_price + max_stock)
    );
    // A quantity larger than any stock, with a total that fits: OUT_OF_STOCK, stored.
    let r = app
        .order(
            &user,
            "too-many",
            json!([{"productId": cheap, "quantity": i64::MAX / 2}]),
        )
        .await;
    r.assert_error(StatusCode::CONFLICT, "OUT_OF_STOCK");
    assert_eq!(app.stock_of(cheap).await, 0);
}

async fn register(app: &TestApp, email: &str, name: &str) -> common::Resp {
    app.post(
        "/api/v1/auth/register",
        None,
        json!({"email": email, "password": "hostile-password-1", "name": name}),
    )
    .await
}

/// Unicode and SQL metacharacters in every string field are stored and returned byte for
/// byte (and keep working: the account logs in, the key replays), or refused with 400 by
/// the field's own rules. Every table is still there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_and_sql_metacharacters_are_stored_intact_or_refused() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let hostile = [
        "Robert'); DROP TABLE users;--",
        "\" OR \"1\"=\"1",
        "' OR 1=1 --",
        "100% _wild_ \\ back\\slash",
        "名前 テスト",
        "😀🎉👩‍👩‍👧‍👦",
        "Zalgo Z̵̡̢a̸l̷g̶o̵",
        "RTL \u{202E}gnp.exe",
        "العربية עברית",
        "𝕄𝕒𝕥𝕙 𐐷",
        "<script>alert(1)</script>",
        "${jndi:ldap://x}",
    ];

    // Register: name (and emails with quotes, unicode and SQL in them).
    for (i, name) in hostile.iter().enumerate() {
        let email = format!("hostile{i}@orderflow.test");
        let r = register(&app, &email, name).await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.body["name"], *name);
        let stored: String = sqlx::query_scalar("SELECT name FROM users WHERE email = ?")
            .bind(&email)
            .fetch_one(app.db())
            .await
            .unwrap();
        assert_eq!(stored, *name);
    }
    let long_emoji = "😀".repeat(100);
    let r = register(&app, "emoji100@orderflow.test", &long_emoji).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "100 four-byte characters fit"
    );
    for (email, name) in [
        ("emoji101@orderflow.test", "😀".repeat(101)),
        ("nul@orderflow.test", "nul\u{0}byte".to_string()),
        ("bell@orderflow.test", "bell\u{7}".to_string()),
        ("newline@orderflow.test", "line\nbreak".to_string()),
    ] {
        let r = register(&app, email, &name).await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], "name");
    }
    for email in [
        "o'brien+tag@orderflow.test",
        "josé.ñandú@exämple.org",
        "a@b.c%'or'1'='1",
        "\"quoted\"@orderflow.test",
    ] {
        let r = register(&app, email, "n").await;
        assert_eq!(r.status, StatusCode::CREATED, "{email}: {}", r.text);
        assert_eq!(r.body["email"], email.to_lowercase());
        let token = app.login(email, "hostile-password-1").await;
        assert_eq!(
            app.get("/api/v1/orders", Some(&token)).await.status,
            StatusCode::OK
        );
    }
    for email in [
        "'; DROP TABLE users; --@x.org",
        "nul\u{0}@orderflow.test",
        "a@b",
        "",
    ] {
        register(&app, email, "n")
            .await
            .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    // Login with injection in either field: the ordinary 401.
    for (email, password) in [
        ("' OR '1'='1", "' OR '1'='1"),
        ("admin@orderflow.test' --", "x"),
        ("admin@orderflow.test\u{0}", "wrong-password"),
        ("%", "%"),
    ] {
        app.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    }

    // Products: the name is free text, stored intact (also through the cache); the sku is
    // a restricted identifier, so metacharacters are refused.
    let mut ids = Vec::new();
    for (i, name) in hostile.iter().enumerate() {
        let r = app
            .post(
                "/api/v1/admin/products",
                Some(&admin),
                json!({"sku": format!("HOSTILE-{i}"), "name": name, "price": 1, "initialStock": 5}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
        assert_eq!(r.body["name"], *name);
        ids.push(r.body["id"].as_i64().unwrap());
    }
    for (id, name) in ids.iter().zip(hostile) {
        for _ in 0..2 {
            // the second read is served from Redis
            let r = app.get(&format!("/api/v1/products/{id}"), None).await;
            assert_eq!(r.body["name"], name);
        }
    }
    let listed = app.get("/api/v1/products?size=100", None).await.body;
    for name in hostile {
        assert!(
            listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == name),
            "{name} listed intact"
        );
    }
    for sku in [
        "SKU'; DROP TABLE products;--",
        "SKU-é",
        "SKU 1",
        "SKU%",
        "SKU\u{0}",
        "😀",
    ] {
        let r = app
            .post(
                "/api/v1/admin/products",
                Some(&admin),
                json!({"sku": sku, "name": "n", "price": 1, "initialStock": 1}),
            )
            .await;
        r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(r.body["details"][0]["field"], "sku");
    }

    // Idempotency-Key: any printable ASCII, metacharacters included, is a key like any
    // other — it creates once and replays byte for byte.
    let (_, user) = app.new_user().await;
    let p = ids[0];
    for key in [
        "'; DROP TABLE orders; --",
        "x\" OR \"\"=\"",
        "%_\\*?[]{}()<>|&;$`",
        r#""quoted \"sf\" string""#,
    ] {
        let items = json!([{"productId": p, "quantity": 1}]);
        let first = app.order(&user, key, items.clone()).await;
        assert_eq!(first.status, StatusCode::CREATED, "{key}: {}", first.text);
        let again = app.order(&user, key, items).await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        assert_eq!(again.text, first.text);
    }
    // A key that starts and ends with a quote is a Structured Field string and must be a
    // valid one: an unescaped quote inside is refused, not guessed at.
    let r = app
        .order(
            &user,
            r#"" OR ""=""#,
            json!([{"productId": p, "quantity": 1}]),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(r.body["details"][0]["field"], "Idempotency-Key");
    assert_eq!(app.count("SELECT COUNT(*) FROM orders").await, 4);

    // Every table survived.
    for table in [
        "users",
        "products",
        "stocks",
        "orders",
        "order_items",
        "idempotency_keys",
    ] {
        let n = app.count(&format!("SELECT COUNT(*) FROM {table}")).await;
        assert!(n > 0, "{table} still has its rows");
    }
}

/// The methods the HTTP metrics may name; anything else is one `OTHER`.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The series of the Prometheus page whose `method` label is not a standard method.
fn series_with_crafted_methods(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split_once("method=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .is_some_and(|(method, _)| !STANDARD_METHODS.contains(&method))
        })
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// Made-up HTTP methods, on a route, on an unknown path and on the actuator, cannot grow the
/// metrics: every method outside the standard set is labelled `OTHER`, so after one such
/// request per target, 1,000 more with 1,000 different methods add no series. (Parallel
/// tests may add series of their own; only series with a non-standard method are counted,
/// and no other test sends one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_http_methods_do_not_grow_the_metrics() {
    use futures::StreamExt;
    let app = TestApp::spawn_api_only(|_| {}).await;
    let targets = ["/api/v1/products", "/no/such/path", "/actuator/prometheus"];
    let send = |i: usize| {
        let method = Method::from_bytes(format!("M{i}X{}", i * 7919).as_bytes()).unwrap();
        let url = app.url(targets[i % targets.len()]);
        let client = app.client.clone();
        async move {
            let status = client.request(method, url).send().await.unwrap().status();
            assert!(
                status.is_client_error(),
                "a made-up method is a 4xx: {status}"
            );
        }
    };
    for i in 0..targets.len() {
        send(i).await;
    }
    let page = || async { app.get("/actuator/prometheus", None).await.text };
    let before = series_with_crafted_methods(&page().await);
    futures::stream::iter(targets.len()..targets.len() + 1000)
        .for_each_concurrent(32, send)
        .await;
    let after_page = page().await;
    let after = series_with_crafted_methods(&after_page);
    assert_eq!(
        after.len(),
        before.len(),
        "new series: {:?} (page now has {} lines)",
        after.difference(&before).take(5).collect::<Vec<_>>(),
        after_page.lines().count()
    );
    assert!(
        after.iter().all(|s| s.contains("method=\"OTHER\"")),
        "{:?}",
        after.iter().take(5).collect::<Vec<_>>()
    );
    still_healthy(&app).await;
}

/// Idempotency-Keys are compared byte for byte: keys that differ only by trailing spaces
/// (which the quoted form keeps) are different keys — each its own order, each replaying its
/// own response — never one key answered 422 for the other's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_differ_only_by_trailing_spaces_are_different_keys() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 10).await;
    let base = format!("k-{}", uuid::Uuid::new_v4().simple());
    let keys = [
        base.clone(),
        format!("\"{base} \""),
        format!("\"{base}  \""),
        format!("\"{base}\t\""),
    ];
    let mut orders = Vec::new();
    for (quantity, key) in (1..).zip(&keys[..3]) {
        let r = app
            .order(&user, key, json!([{"productId": p, "quantity": quantity}]))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "key {key:?}: {}", r.text);
        orders.push(r.body["id"].as_i64().unwrap());
    }
    assert_eq!(app.stock_of(p).await, 10 - 1 - 2 - 3);
    // Each key replays its own order.
    for ((quantity, key), id) in (1..).zip(&keys[..3]).zip(&orders) {
        let r = app
            .order(&user, key, json!([{"productId": p, "quantity": quantity}]))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        assert_eq!(r.body["id"].as_i64(), Some(*id), "key {key:?}");
    }
    // A tab is not printable ASCII: refused, as before.
    app.order(&user, &keys[3], json!([{"productId": p, "quantity": 1}]))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(app.count("SELECT COUNT(*) FROM idempotency_keys").await, 3);
}

/// The fingerprint is the validated request's: a quantity sent as `2`, `2.0` or `2e0` is one
/// request, so a retry that re-serialises the body replays the first response instead of
/// answering 422; a different quantity under the same key is still 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_writes_a_number_differently_is_a_replay() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (_, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 10).await;
    let order = |key: String, quantity: &str| {
        let body = format!(r#"{{"items":[{{"productId":{p},"quantity":{quantity}}}]}}"#);
        let (app, user) = (&app, &user);
        async move {
            let headers = [("idempotency-key", key.as_str())];
            raw_post(app, "/api/v1/orders", Some(user), &headers, body).await
        }
    };
    for (first, retries) in [("2", ["2.0", "2e0"]), ("2.0", ["2", "20e-1"])] {
        let key = format!("num-{}", uuid::Uuid::new_v4().simple());
        let r = order(key.clone(), first).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        for retry in retries {
            let again = order(key.clone(), retry).await;
            assert_eq!(
                again.status,
                StatusCode::CREATED,
                "{first} then {retry}: {}",
                again.text
            );
            assert_eq!(again.header("idempotent-replayed"), Some("true"));
            assert_eq!(again.body["id"], r.body["id"]);
        }
        order(key, "3")
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
    }
    assert_eq!(app.stock_of(p).await, 10 - 2 - 2);
}

/// Rolling deploy: a key stored by the previous release — whose fingerprint was the hash of
/// the body's JSON text, numbers as written — still replays for a retry of that request
/// within its retention, never a 422. Played by storing rows the way that release did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stored_by_the_previous_release_still_replay() {
    use sha2::{Digest, Sha256};
    let app = TestApp::spawn_api_only(|_| {}).await;
    let admin = app.admin_token().await;
    let (user_id, user) = app.new_user().await;
    let p = app.new_product(&admin, 100, 10).await;
    for (stored, retries) in [("2.0", ["2.0", "2"]), ("2", ["2", "2.0"])] {
        let key = format!("old-{}", uuid::Uuid::new_v4().simple());
        let text = format!(r#"{{"items":[{{"productId":{p},"quantity":{stored}}}]}}"#);
        let value: Value = serde_json::from_str(&text).unwrap();
        let old_fingerprint = hex::encode(Sha256::digest(value.to_string().as_bytes()));
        let first_response = json!({"id": 424242, "stored": stored}).to_string();
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, \
             response_status, response_body, expires_at) \
             VALUES (?, ?, ?, 201, ?, CURRENT_TIMESTAMP(6) + INTERVAL 1 HOUR)",
        )
        .bind(user_id)
        .bind(&key)
        .bind(&old_fingerprint)
        .bind(&first_response)
        .execute(app.db())
        .await
        .unwrap();
        for retry in retries {
            let body = text.replace(&format!(":{stored}}}"), &format!(":{retry}}}"));
            let r = raw_post(
                &app,
                "/api/v1/orders",
                Some(&user),
                &[("idempotency-key", &key)],
                body.clone(),
            )
            .await;
            if stored == "2.0" && retry == "2" {
                // The previous release told `2` from `2.0` and its hash cannot be undone:
                // this retry was a 422 before this release too (the same answer, no order).
                r.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED");
                continue;
            }
            assert_eq!(r.status, StatusCode::CREATED, "{body}: {}", r.text);
            assert_eq!(r.header("idempotent-replayed"), Some("true"));
            assert_eq!(r.text, first_response);
        }
    }
    assert_eq!(app.stock_of(p).await, 10, "only replays: no order was made");
}

// ---------------------------------------------------------------------------------------
// Slow clients (issue 30, finding 3)
// ---------------------------------------------------------------------------------------

/// Waits, up to `bound`, for the server to close `conn` (end of stream or reset); returns
/// what it sent before, or None if the connection is still open at the bound. Meanwhile the
/// client keeps sending `dribble` (if any), one byte every `every`.
async fn closed_by_server(
    conn: tokio::net::TcpStream,
    dribble: &[u8],
    every: std::time::Duration,
    bound: std::time::Duration,
) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = conn.into_split();
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let writer = async move {
        for b in dribble.iter().cycle() {
            tokio::time::sleep(every).await;
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await
    };
    let dribbling = async move {
        tokio::select! {
            got = reader => got,
            () = writer => unreachable!(),
        }
    };
    tokio::time::timeout(bound, dribbling).await.ok()
}

/// A connection to the app, with a receive buffer of `rcvbuf` bytes when given (a client
/// that reads slowly fills it at once).
async fn connect(app: &TestApp, rcvbuf: Option<u32>) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.connect(app.addr).await.unwrap()
}

/// The slowloris of issue 30: many connections, each sending a request header one byte at a
/// time and never finishing it, are all closed once HTTP_HEADER_READ_TIMEOUT_SECS has passed
/// since their first byte, without an answer; a connection that sends nothing at all is
/// closed after the same time. Meanwhile, and after, the service answers everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_dribbled_byte_by_byte_is_cut_at_the_header_timeout() {
    let app = TestApp::spawn_api_only(|c| {
        c.http_connections.header_read_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let bound = std::time::Duration::from_secs(60);
    let every = std::time::Duration::from_millis(250);
    let mut slow = Vec::new();
    for _ in 0..50 {
        use tokio::io::AsyncWriteExt;
        let mut conn = connect(&app, None).await;
        conn.write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tokio::spawn(closed_by_server(conn, b"aaaa", every, bound)));
    }
    let silent = tokio::spawn(closed_by_server(
        connect(&app, None).await,
        b"",
        every,
        bound,
    ));
    still_healthy(&app).await;
    for (i, conn) in slow.into_iter().enumerate() {
        let sent = conn.await.unwrap();
        let sent = sent.unwrap_or_else(|| panic!("slow connection {i} still open after {bound:?}"));
        assert!(
            sent.is_empty() || String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 408"),
            "no answer but a 408: {}",
            String::from_utf8_lossy(&sent)
        );
    }
    let sent = silent.await.unwrap();
    assert!(
        sent.is_some(),
        "a connection that never sends is closed too"
    );
    still_healthy(&app).await;
}

/// A keep-alive connection left idle after its response is closed after
/// HTTP_IDLE_TIMEOUT_SECS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn_api_only(|c| {
        c.http_connections.idle_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let bound = std::time::Duration::from_secs(60);
    let mut idle = connect(&app, None).await;
    idle.write_all(b"GET /actuator/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let closed = closed_by_server(idle, b"", bound, bound).await;
    assert!(
        closed.is_some(),
        "the idle connection is still open after {bound:?}"
    );
    still_healthy(&app).await;
}

/// Signals when it is dropped.
struct DropSignal(std::sync::Arc<tokio::sync::Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The slow-read attack: a client asks for a response larger than the socket buffers and
/// stops reading it. Its connection is held only until HTTP_WHOLE_REQUEST_TIMEOUT_SECS after
/// its request; then the server abandons the response — its body is dropped, which the
/// test's endless body reports — and closes the connection. (A route of the test's own,
/// served by the service's server function: the service's largest response, 1.4 MB, fits in
/// the kernel's loopback buffers, so hyper finishes writing it whether the client reads or
/// not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_too_slow_for_its_response_is_cut_at_the_whole_request_timeout() {
    use tokio::io::AsyncWriteExt;
    let dropped = std::sync::Arc::new(tokio::sync::Notify::new());
    let body_dropped = dropped.clone();
    let endless = axum::routing::get(move || {
        let signal = DropSignal(body_dropped.clone());
        async move {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            axum::body::Body::from_stream(futures::stream::repeat_with(move || {
                let _alive = &signal;
                Ok::<_, std::convert::Infallible>(chunk.clone())
            }))
        }
    });
    let router = axum::Router::new().route("/endless", endless);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = orderflow::config::HttpConnectionConfig {
        header_read_timeout: std::time::Duration::from_secs(10),
        idle_timeout: std::time::Duration::from_secs(10),
        whole_request_timeout: std::time::Duration::from_secs(2),
        max_connections: 16,
    };
    let server = tokio::spawn(orderflow::http::server::serve(
        listener,
        router,
        limits,
        std::future::pending(),
    ));

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    slow.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The client never reads.
    let bound = std::time::Duration::from_secs(60);
    tokio::time::timeout(bound, dropped.notified())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the response to a client that does not read is still being sent after {bound:?}"
            )
        });
    drop(slow);
    server.abort();
}

/// HTTP_MAX_CONNECTIONS: with every connection taken (by clients that send nothing), a new
/// connection's request is answered 503 in the standard body and closed — except the health
/// probes, which are answered as usual. Once the slots are free, requests are served again;
/// and the server still shuts down gracefully with a stalled connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_cap_requests_are_refused_but_liveness_answers() {
    let app = TestApp::spawn_api_only(|c| {
        c.http_connections.max_connections = 4;
        c.http_connections.header_read_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&app, None).await);
    }
    let r = common::Resp::read(
        fresh()
            .get(app.url("/api/v1/products"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE");
    for probe in ["/actuator/health/liveness", "/actuator/health/readiness"] {
        let r = fresh().get(app.url(probe)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{probe} over the cap");
    }
    drop(held);
    let served = app
        .eventually(std::time::Duration::from_secs(30), || async {
            fresh()
                .get(app.url("/api/v1/products"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
    assert!(served, "served again once the slots are free");

    let _stalled = connect(&app, None).await;
    tokio::time::timeout(std::time::Duration::from_secs(30), app.stop())
        .await
        .expect("graceful shutdown does not wait for a connection that sends nothing");
}

// ---------------------------------------------------------------------------------------
// Anonymous visitors of the console (issue 30, finding 4)
// ---------------------------------------------------------------------------------------

/// Nobody writes to the database before signing in: 200 anonymous visits of the sign-in
/// page, and failed sign-ins through its form, leave `console_sessions` empty (each visit
/// used to store a session row, purged only 30 minutes after it expired). The form still
/// works: its CSRF check refuses a post without the token it handed out, and a right password
/// signs in — the one row written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_console_visitors_write_nothing() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let sessions = "SELECT COUNT(*) FROM console_sessions";
    for _ in 0..200 {
        let visitor = common::console::Visitor::new(&app);
        let r = visitor.get("/console/login").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(common::console::csrf_of(&r.text).is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(app.count(sessions).await, 0, "200 visits, no row");
    let guesser = common::console::Visitor::new(&app);
    for _ in 0..3 {
        let r = guesser.sign_in(common::ADMIN_EMAIL, "wrong-password").await;
        assert!(r.text.contains("incorrect"), "{}", r.text);
    }
    let forged = common::console::Visitor::new(&app);
    forged.get("/console/login").await;
    let r = forged
        .post_form(
            "/console/login",
            &[
                ("csrf", "0".repeat(64).as_str()),
                ("email", common::ADMIN_EMAIL),
                ("password", common::ADMIN_PASSWORD),
            ],
        )
        .await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(app.count(sessions).await, 0, "failed sign-ins, no row");
    let operator = common::console::Visitor::new(&app);
    let r = operator
        .sign_in(common::ADMIN_EMAIL, common::ADMIN_PASSWORD)
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(operator.get("/console/jobs").await.status, StatusCode::OK);
    assert_eq!(app.count(sessions).await, 1);
}
