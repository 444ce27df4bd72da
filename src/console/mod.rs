//! The operators' web console at `/console`, served by every role of the binary: pages
//! rendered on the server from compiled templates (askama; `templates/console/`), one
//! stylesheet and one script embedded in the binary, nothing from a CDN, no inline script
//! (the Content-Security-Policy forbids it). docs/adr/0014-operator-console.md
//!
//! * sign-in with an ADMIN account (a USER cannot sign in), throttled as the API's login;
//!   a session cookie (HttpOnly, SameSite=Strict, Secure unless configured off) with an idle
//!   expiry and an absolute lifetime, no row before sign-in, no write on a read
//!   (docs/adr/0023-console-sessions.md); sign-out;
//! * a CSRF token on every state-changing form (a POST without it is 403 and changes
//!   nothing);
//! * pages: queues (counts, pause/resume), jobs (filters, select several, retry or discard
//!   the selection or everything matching), one job (payload, attempts with errors and trace
//!   links, carried rows), an order's timeline, the action log; lists refresh themselves and
//!   pause while rows are selected.
//!
//! The console is a browser UI, not part of the JSON API: like Swagger UI it is not in the
//! OpenAPI document. Its routes are registered here only; what they show and do is the
//! operators' module's (`crate::operators`), so the console and the API cannot disagree.

mod action_log;
mod assets;
mod guard;
mod jobs;
mod orders;
mod queues;
pub mod session;
mod sign_in;
mod view;

use axum::{
    extract::Request,
    http::{header, HeaderValue},
    middleware::{from_fn, Next},
    response::{Redirect, Response},
    routing::{get, post},
    Router,
};

use crate::state::AppState;

pub const PATH: &str = "/console";

/// Scripts and styles only from this origin's files, no inline script or style, no framing,
/// forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/login", get(sign_in::form).post(sign_in::sign_in))
        .route("/console/logout", post(sign_in::sign_out))
        .route("/console/jobs", get(jobs::list))
        .route("/console/jobs/action", post(jobs::act_on_selection))
        .route("/console/jobs/{id}", get(jobs::show))
        .route("/console/jobs/{id}/{op}", post(jobs::act_on_one))
        .route("/console/queues", get(queues::list))
        .route("/console/queues/{queue}/{op}", post(queues::set_paused))
        .route("/console/orders", get(orders::timeline))
        .route("/console/audit", get(action_log::list))
        .layer(session::layer(&state.db, &state.config.console))
        // After the session layer: a stylesheet or script neither reads nor extends a session.
        .route("/console/assets/{file}", get(assets::serve))
        .layer(from_fn(security_headers))
}

/// `/console` and `/console/` (the slash a browser may add) both lead to the jobs page.
async fn home() -> Redirect {
    Redirect::to("/console/jobs")
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    res
}
