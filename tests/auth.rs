//! Registration, login, tokens and roles.

mod common;

use chrono::Utc;
use common::{TestApp, ADMIN_EMAIL, JWT_SECRET};
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_then_login() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "Ada@Example.org", "password": "analytical-engine", "name": "Ada"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["email"], "ada@example.org");
    assert_eq!(r.body["name"], "Ada");
    assert_eq!(r.body["role"], "USER");
    assert!(r.body["id"].as_i64().unwrap() > 0);
    assert!(r.body.get("password").is_none() && r.body.get("passwordHash").is_none());

    let hash: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'ada@example.org'")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert!(hash.starts_with("$argon2id$"), "stored as argon2id: {hash}");

    let r = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ada@example.org", "password": "analytical-engine"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["tokenType"], "Bearer");
    assert!(r.body["expiresIn"].as_u64().unwrap() > 0);
    assert!(r.body["accessToken"].as_str().unwrap().split('.').count() == 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_is_unique_regardless_of_case() {
    let app = TestApp::spawn().await;
    let body = json!({"email": "grace@example.org", "password": "cobol-rules", "name": "Grace"});
    assert_eq!(
        app.post("/api/v1/auth/register", None, body).await.status,
        StatusCode::CREATED
    );
    let again = json!({"email": "GRACE@example.org", "password": "cobol-rules-2", "name": "G"});
    app.post("/api/v1/auth/register", None, again)
        .await
        .assert_error(StatusCode::CONFLICT, "EMAIL_TAKEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_validation_names_every_bad_field() {
    let app = TestApp::spawn().await;
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({"email": "nope", "password": "short", "name": ""}),
        )
        .await;
    r.assert_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let fields: Vec<&str> = r.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["email", "password", "name"]);
    let users = app
        .count("SELECT COUNT(*) FROM users WHERE email = 'nope'")
        .await;
    assert_eq!(users, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_email_are_the_same_401() {
    let app = TestApp::spawn().await;
    app.new_user().await;
    let a = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": ADMIN_EMAIL, "password": "wrong-password"}),
        )
        .await;
    let b = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ghost@example.org", "password": "whatever1"}),
        )
        .await;
    a.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    b.assert_error(StatusCode::UNAUTHORIZED, "INVALID_CREDENTIALS");
    assert_eq!(a.body["message"], b.body["message"]);
}

fn forge(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_expired_or_misaddressed_tokens_are_401() {
    let app = TestApp::spawn().await;
    let now = Utc::now().timestamp();
    let good = json!({"sub": "1", "role": "ADMIN", "iss": "orderflow", "aud": "orderflow-api", "iat": now, "exp": now + 600});
    let mut expired = good.clone();
    expired["exp"] = json!(now - 120);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("someone-else");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("another-api");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");

    // Sanity: the well-formed token is accepted, so the refusals below are about one flaw each.
    let ok = app
        .get("/api/v1/orders", Some(&forge(&JWT_SECRET, good.clone())))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);

    let cases = [
        ("no token", None),
        ("garbage", Some("not.a.jwt".to_string())),
        ("wrong secret", Some(forge("another-secret", good))),
        ("expired", Some(forge(&JWT_SECRET, expired))),
        ("wrong issuer", Some(forge(&JWT_SECRET, wrong_iss))),
        ("wrong audience", Some(forge(&JWT_SECRET, wrong_aud))),
        ("no exp", Some(forge(&JWT_SECRET, no_exp))),
    ];
    for (name, token) in cases {
        let r = app.get("/api/v1/orders", token.as_deref()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_user_gets_403_on_admin_routes() {
    let app = TestApp::spawn().await;
    let (_, user) = app.new_user().await;
    let admin = app.admin_token().await;
    let product = json!({"sku": "ROLE-1", "name": "n", "price": 1, "initialStock": 1});
    app.post("/api/v1/admin/products", Some(&user), product.clone())
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.post(
        "/api/v1/admin/products/1/stock-adjust",
        Some(&user),
        json!({"delta": 1}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    app.post("/api/v1/admin/orders/1/complete", Some(&user), json!({}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(
        app.post("/api/v1/admin/products", Some(&admin), product)
            .await
            .status,
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bootstrap_from_the_environment_and_promotion() {
    let app = TestApp::spawn().await;
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE email = ?")
        .bind(ADMIN_EMAIL)
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(role, "ADMIN");

    let (id, token) = app.new_user().await;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(app.db())
        .await
        .unwrap();
    orderflow::auth::promote(app.db(), &email).await.unwrap();
    // Roles travel in the token: the old token stays USER, a new login is ADMIN.
    let product = json!({"sku": "PROMO-1", "name": "n", "price": 1, "initialStock": 1});
    assert_eq!(
        app.post("/api/v1/admin/products", Some(&token), product.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let fresh = app.login(&email, "user-password-1").await;
    assert_eq!(
        app.post("/api/v1/admin/products", Some(&fresh), product)
            .await
            .status,
        StatusCode::CREATED
    );

    assert!(matches!(
        orderflow::auth::promote(app.db(), "nobody@example.org").await,
        Err(orderflow::auth::PromoteError::NoSuchUser(_))
    ));
}
