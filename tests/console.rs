//! The web console over plain HTTP (the browser tests are in console_browser.rs): where it
//! is served, its session cookie and security headers, who can sign in, the CSRF token on
//! every state-changing form, idle expiry and sign-out, login throttling shared with the API.

mod common;

use std::time::Duration;

use common::{console::Visitor, TestApp, ADMIN_EMAIL, ADMIN_PASSWORD};
use reqwest::StatusCode;

fn location(r: &common::Resp) -> &str {
    r.header("location").unwrap_or_default()
}

/// `/console` and `/console/` both lead to the console (the sign-in page without a session),
/// and Swagger UI answers with and without its trailing slash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_swagger_ui_answer_with_and_without_a_trailing_slash() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let visitor = Visitor::new(&app);
    for path in ["/console", "/console/"] {
        let r = visitor.get(path).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(location(&r), "/console/jobs", "{path}");
    }
    let r = visitor.get("/console/jobs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/console/login", "not signed in");
    let r = visitor.get("/console/login").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("id=\"login-form\""), "{}", r.text);

    for path in ["/swagger-ui", "/swagger-ui/"] {
        let r = app.get(path, None).await; // follows the redirect, as a browser does
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        assert!(r.text.contains("swagger-ui"), "{path}");
    }
    app.stop().await;
}

/// The session cookie is HttpOnly, SameSite=Strict, Secure by default, scoped to /console;
/// every page has a Content-Security-Policy allowing no inline script, and no page has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_strict_and_pages_carry_a_csp_without_inline_script() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let visitor = Visitor::new(&app);
    let r = visitor.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(location(&r), "/console/jobs");
    let cookies = visitor.set_cookies.lock().unwrap().clone();
    // The session's, and the sign-in form's token (set by the form, removed at sign-in).
    for name in ["orderflow_console=", "orderflow_console_login="] {
        let cookie = cookies
            .iter()
            .rev()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} cookie: {cookies:?}"));
        for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/console"] {
            assert!(cookie.contains(attr), "{attr} missing: {cookie}");
        }
    }
    for page in [
        "/console/jobs",
        "/console/queues",
        "/console/orders",
        "/console/audit",
        "/console/login",
    ] {
        let r = visitor.get(page).await;
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("script-src 'self'"), "{page}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        if page == "/console/login" {
            assert_eq!(r.status, StatusCode::SEE_OTHER, "signed in: on to the jobs");
            continue;
        }
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.text);
        assert!(r.text.contains(ADMIN_EMAIL), "{page}");
        let inline = r.text.matches("<script").count() - r.text.matches("<script src=").count();
        assert_eq!(inline, 0, "{page} has an inline script");
        assert!(
            !r.text.contains(" onclick="),
            "{page} has an inline handler"
        );
    }
    let js = visitor.get("/console/assets/console.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    app.stop().await;
}

/// A USER's right password does not open the console; a wrong one neither; the forms say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_signs_in() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let email = format!("user-{}@orderflow.test", uuid::Uuid::new_v4().simple());
    let r = app
        .post(
            "/api/v1/auth/register",
            None,
            serde_json::json!({"email": email, "password": "user-password-1", "name": "U"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let visitor = Visitor::new(&app);
    let r = visitor.sign_in(&email, "user-password-1").await;
    assert_eq!(r.status, StatusCode::OK, "the form again, not a redirect");
    assert!(r.text.contains("for administrators only"), "{}", r.text);
    assert_eq!(
        location(&visitor.get("/console/jobs").await),
        "/console/login"
    );
    let r = visitor.sign_in(ADMIN_EMAIL, "wrong-password").await;
    assert!(r.text.contains("incorrect"), "{}", r.text);
    assert_eq!(
        location(&visitor.get("/console/jobs").await),
        "/console/login"
    );
    app.stop().await;
}

/// A state-changing form posted without its token, or with another session's, is 403 in the
/// standard body and changes nothing; the same form with its token works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    let visitor = Visitor::new(&app);
    visitor.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let other = Visitor::new(&app);
    other.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let foreign = other.csrf("/console/queues").await;
    let paused = "SELECT COUNT(*) FROM job_queues WHERE paused = 1";
    for fields in [vec![], vec![("csrf", "")], vec![("csrf", foreign.as_str())]] {
        let r = visitor
            .post_form("/console/queues/publish-outbox/pause", &fields)
            .await;
        r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    }
    let r = visitor.post_form("/console/logout", &[]).await;
    r.assert_error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert_eq!(app.count(paused).await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM operator_audit").await, 0);

    let csrf = visitor.csrf("/console/queues").await;
    let r = visitor
        .post_form("/console/queues/publish-outbox/pause", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(app.count(paused).await, 1);
    let page = visitor.get("/console/queues").await;
    assert!(
        page.text.contains("publish-outbox is paused"),
        "the flash: {}",
        page.text
    );
    let via: String = sqlx::query_scalar("SELECT via FROM operator_audit")
        .fetch_one(app.db())
        .await
        .unwrap();
    assert_eq!(via, "console");
    app.stop().await;
}

/// A session unused for CONSOLE_SESSION_IDLE_SECS is over; signing out ends one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_idle_and_on_sign_out() {
    let app = TestApp::spawn_api_only(|c| c.console.session_idle = Duration::from_secs(2)).await;
    let idle = Visitor::new(&app);
    idle.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(idle.get("/console/jobs").await.status, StatusCode::OK);
    let expired = app
        .eventually(Duration::from_secs(30), || async {
            // Only an unused session expires: look without using it (no cookie jar here).
            app.count("SELECT COUNT(*) FROM console_sessions WHERE expires_at > CURRENT_TIMESTAMP")
                .await
                == 0
        })
        .await;
    assert!(expired);
    assert_eq!(location(&idle.get("/console/jobs").await), "/console/login");

    let leaving = Visitor::new(&app);
    leaving.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let csrf = leaving.csrf("/console/jobs").await;
    let r = leaving
        .post_form("/console/logout", &[("csrf", &csrf)])
        .await;
    assert_eq!(location(&r), "/console/login");
    assert!(
        !leaving.has_cookie("orderflow_console"),
        "the cookie is removed"
    );
    assert_eq!(
        location(&leaving.get("/console/jobs").await),
        "/console/login"
    );
    app.stop().await;
}

/// Failed console sign-ins count against the same per-account-and-address limit as the API's logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_ins_are_throttled_with_the_api_logins() {
    let app = TestApp::spawn_api_only(|c| {
        c.login_throttle.max_failures_per_account_and_ip = 3;
    })
    .await;
    let visitor = Visitor::new(&app);
    for _ in 0..3 {
        let r = visitor.sign_in(ADMIN_EMAIL, "wrong-password").await;
        assert!(r.text.contains("incorrect"), "{}", r.text);
    }
    let r = visitor.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("Too many failed sign-ins"), "{}", r.text);
    let api = app
        .post(
            "/api/v1/auth/login",
            None,
            serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    api.assert_error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS");
    app.stop().await;
}

/// The count in a state tab of the jobs page (`<a … data-state="done">done <span
/// class="count">N</span>`).
fn tab_count(page: &str, state: &str) -> String {
    let at = page
        .find(&format!("data-state=\"{state}\""))
        .unwrap_or_else(|| panic!("no {state} tab"));
    let rest = &page[at..];
    let from = rest.find("class=\"count\">").expect("a count") + "class=\"count\">".len();
    rest[from..from + rest[from..].find('<').unwrap()].to_owned()
}

/// Issue 30, finding 7: the jobs page refreshes itself every few seconds, and used to count
/// every job of every state (a GROUP BY over the whole table, 7 days of Done jobs) each time.
/// Now each state is counted up to a bound (10,000) and shown as "10000+" past it, so a
/// refresh reads at most that many index entries per state, however many jobs are kept; the
/// small states are exact. The queues page counts the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_page_counts_each_state_only_up_to_a_bound() {
    let app = TestApp::spawn_api_only(|_| {}).await;
    // 12,000 Done jobs and 3 dead ones, as the retention keeps them (ids in ULID form).
    for (status, n, attempts) in [("Done", 12_000, 1), ("Killed", 3, 5)] {
        sqlx::query(
            "INSERT INTO jobs (id, job_type, status, attempts, max_attempts, run_at, done_at, job) \
             SELECT CONCAT(?, LPAD(seq, 20, '0')), 'publish-outbox', ?, ?, 5, \
             CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{}' FROM seq_1_to_100000 WHERE seq <= ?",
        )
        .bind(if status == "Done" { "01JD00" } else { "01JK00" })
        .bind(status)
        .bind(attempts)
        .bind(n)
        .execute(app.db())
        .await
        .unwrap();
    }
    let visitor = Visitor::new(&app);
    visitor.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let page = visitor.get("/console/jobs").await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(tab_count(&page.text, "dead"), "3");
    assert_eq!(tab_count(&page.text, "done"), "10000+");
    assert_eq!(tab_count(&page.text, "pending"), "0");
    assert!(
        page.text.contains("3 job(s)"),
        "the dead list's total is exact"
    );
    let done = visitor.get("/console/jobs?status=done").await;
    assert!(
        done.text.contains("10000+ job(s)"),
        "the done list's total is bounded too"
    );
    assert!(done.text.contains("01JD00"), "and the list shows them");
    let queues = visitor.get("/console/queues").await;
    assert!(queues.text.contains("10000+"), "{}", queues.text);
}
