//! The HTTP side of the composition: every router under its path, the OpenAPI document of
//! what a role serves, the web console, and the middleware stack around them. Only the
//! start-up (and tests) import it; nothing it composes imports it back.

use axum::{
    extract::{DefaultBodyLimit, MatchedPath},
    http::{Request, Response, StatusCode},
    middleware::from_fn,
    Router,
};
use orderflow_jobs::engine::trace;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    actuator, auth, catalog, console,
    http::{error_body, metrics as http_metrics, openapi, request_id},
    notifications, operators, orders, outbox,
    state::{AppState, Role},
};

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(catalog::router())
        .merge(orders::router())
        .merge(notifications::router())
        .merge(operators::router())
}

/// The server span of a request, named and attributed per the OpenTelemetry HTTP semantic
/// conventions; it continues the caller's `traceparent` when one is sent.
fn http_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    let path = req.uri().path();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!(
        "http",
        otel.name = format!("{} {route}", req.method()),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        "http.request.method" = %req.method(),
        "http.route" = route,
        "url.path" = path,
        "http.response.status_code" = tracing::field::Empty,
        requestId = %request_id,
        userId = tracing::field::Empty,
        orderId = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let caller = outbox::trace_context(req.headers());
    caller.adopt(&span);
    // The caller's trace id, when nothing of ours is recorded; else our span's ids.
    if let Some(id) = caller.trace_id() {
        span.record("trace_id", id);
    }
    trace::record_ids(&span);
    span
}

fn record_status<B>(res: &Response<B>, _latency: std::time::Duration, span: &tracing::Span) {
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The routes a process of `role` serves, and the OpenAPI document describing exactly those.
pub fn routes(role: Role) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut routes =
        OpenApiRouter::with_openapi(openapi::ApiDoc::openapi()).merge(actuator::router());
    if role.serves_api() {
        routes = routes.nest("/api/v1", api_routes());
    }
    let (router, doc) = routes.split_for_parts();
    (router, openapi::complete(doc))
}

/// The routes of `role` (documented), Swagger UI and the web console (every role serves
/// HTTP, so every role serves the console), inside the middleware stack.
pub fn router(state: AppState, role: Role) -> Router {
    let (routes, doc) = routes(role);
    let console = console::router(&state);
    with_middleware(
        routes.merge(openapi::docs_router(doc)).merge(console),
        state,
    )
}

/// Wraps routes in the service's middleware stack (request ids, tracing, the standard error
/// body, panic catching, timeout, body limit, metrics). Public so that tests can check the
/// stack's behaviour on routes of their own, such as one that panics.
pub fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let config = state.config.clone();
    // Router::layer wraps every route, so the layers run after routing (the metrics see the
    // route template); the last layer added is the outermost.
    routes
        .fallback(error_body::not_found)
        .layer(from_fn(http_metrics::record))
        .layer(DefaultBodyLimit::max(config.http_body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.http_request_timeout,
        ))
        .layer(CatchPanicLayer::custom(error_body::panic_response))
        .layer(from_fn(error_body::render_errors))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(http_span)
                .on_response(record_status),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(from_fn(request_id::drop_insane_request_id))
        .with_state(state)
}
