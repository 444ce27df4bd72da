//! POST /orders, GET /orders, GET /orders/{id}, POST /orders/{id}/cancel,
//! POST /admin/orders/{id}/complete.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    create::{self, OrderRequest},
    ids::{OrderId, OwnerId},
    lifecycle,
    model::{self, CreateOrderRequest, Order},
    repo,
};
use crate::{
    auth::{AdminUser, AuthUser, TokenUser},
    error::{ApiError, ErrorBody, FieldError},
    http::{
        extract::{Json, Path},
        paging::{Page, PageParams, PageRequest},
    },
    idempotency, outbox,
    state::AppState,
    telemetry::names,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order, list))
        .routes(routes!(get_one))
        .routes(routes!(cancel))
        .routes(routes!(complete))
}

pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

fn parse_body(body: &serde_json::Value) -> Result<CreateOrderRequest, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::validation(vec![FieldError::new(field, e.into_inner().to_string())])
    })
}

/// Creates an order exactly once per `Idempotency-Key`: stock is taken, the order and its
/// event are stored in one transaction. A retry with the same key and body replays the first
/// response (also a first OUT_OF_STOCK) with `Idempotent-Replayed: true`.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "createOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = String, Header, pattern = r#"^[!#-~]([ -~]{0,253}[!-~])?$"#,
         description = "1–255 printable ASCII characters (sent bare as here, or as a quoted Structured Field string); scoped to the caller"),
        ("traceparent" = Option<String>, Header,
         description = "W3C trace context; the order's event and notification join this trace"),
    ),
    request_body = CreateOrderRequest,
    responses(
        (status = 201, description = "Order created (or the replay of its creation)", body = Order,
         headers(("Idempotent-Replayed" = String, description = "`true` when this is a stored response replayed"))),
        (status = 400, description = "IDEMPOTENCY_KEY_REQUIRED, or VALIDATION_ERROR for the key or the body", body = ErrorBody),
        (status = 409, description = "OUT_OF_STOCK (stored and replayed), or IDEMPOTENCY_KEY_IN_PROGRESS while the first request with this key runs", body = ErrorBody,
         headers(("Idempotent-Replayed" = String, description = "`true` when this is a stored response replayed"))),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED: the key was used with a different body", body = ErrorBody),
        (status = 503, description = "SERVICE_UNAVAILABLE: **not done** — the order was refused (overload, a stalled database, its deadline passed before it started) or could not be committed; nothing was stored and the key is free: retry after `Retry-After`", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 504, description = "ORDER_OUTCOME_UNKNOWN: the order was being committed when its deadline (`ORDER_DEADLINE_MS`) came; it may or may not exist. Send the same request with the same Idempotency-Key to learn the outcome (its replay, or a new attempt)", body = ErrorBody,
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn create_order(
    State(state): State<AppState>,
    user: TokenUser,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let result = create_order_inner(state, user, headers, body).await;
    if let Err(e) = &result {
        // OUT_OF_STOCK is a stored response, counted where it is decided.
        metrics::counter!(names::ORDERS_REJECTED, "reason" => e.code.as_str()).increment(1);
    }
    result
}

async fn create_order_inner(
    state: AppState,
    user: TokenUser,
    headers: HeaderMap,
    body: serde_json::Value,
) -> Result<Response, ApiError> {
    // Everything refused here happens before execution starts and stores nothing.
    let key = idempotency::IdempotencyKey::from_headers(&headers)?;
    let request = parse_body(&body)?;
    let lines = model::validate(&request, state.config.orders).map_err(ApiError::validation)?;
    let fingerprint = idempotency::Fingerprint::of(&body);
    let trace = outbox::trace_context(&headers);

    // The account behind the token is checked when the order is decided (`committer`).
    let reply = create::create(
        &state.orders,
        OrderRequest {
            user_id: user.id,
            key: &key,
            fingerprint: &fingerprint,
            lines: &lines,
            trace: &trace,
        },
    )
    .await?;

    if let Some(order_id) = reply.order_id {
        tracing::Span::current().record("orderId", order_id);
        tracing::info!(orderId = order_id, "order created");
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        reply.body,
    )
        .into_response();
    if reply.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The caller's own orders, newest first.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "listOrders",
    tag = "orders",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "A page of the caller's orders", body = Page<Order>),
        (status = 400, description = "VALIDATION_ERROR: bad paging", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    page: PageRequest,
) -> Result<axum::Json<Page<Order>>, ApiError> {
    let (items, total) = repo::list_owned(&state.db, user.id, page).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}

/// One of the caller's orders; another user's order is NOT_FOUND, never FORBIDDEN.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "VALIDATION_ERROR: the id is not an integer", body = ErrorBody),
        (status = 404, description = "NOT_FOUND (also for another user's order)", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<OrderId>,
) -> Result<axum::Json<Order>, ApiError> {
    repo::find_owned(&state.db, OwnerId(user.id), id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("order"))
}

/// Cancels one of the caller's orders and restores its stock, once; cancelling again
/// returns the cancelled order.
#[utoipa::path(
    post,
    path = "/orders/{id}/cancel",
    operation_id = "cancelOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("id" = i64, Path, description = "Order id"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
    ),
    responses(
        (status = 200, description = "The order, now CANCELLED", body = Order),
        (status = 400, description = "VALIDATION_ERROR: the id is not an integer", body = ErrorBody),
        (status = 404, description = "NOT_FOUND (also for another user's order)", body = ErrorBody),
        (status = 409, description = "INVALID_STATE: the order is COMPLETED", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<OrderId>,
) -> Result<axum::Json<Order>, ApiError> {
    tracing::Span::current().record("orderId", id.0);
    let trace = outbox::trace_context(&headers);
    let done = lifecycle::cancel(&state.db, &state.publisher, OwnerId(user.id), id, &trace).await?;
    if !done.restocked.is_empty() {
        state.cache.invalidate_products(&done.restocked).await;
        tracing::info!(orderId = id.0, "order cancelled; stock restored");
    }
    Ok(axum::Json(done.order))
}

/// Marks an order COMPLETED (ADMIN); completing again returns the completed order.
#[utoipa::path(
    post,
    path = "/admin/orders/{id}/complete",
    operation_id = "completeOrder",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order, now COMPLETED", body = Order),
        (status = 400, description = "VALIDATION_ERROR: the id is not an integer", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "INVALID_STATE: the order is CANCELLED", body = ErrorBody),
    )
)]
async fn complete(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<OrderId>,
) -> Result<axum::Json<Order>, ApiError> {
    tracing::Span::current().record("orderId", id.0);
    let order = lifecycle::complete(&state.db, id).await?;
    Ok(axum::Json(order))
}
