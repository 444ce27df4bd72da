//! POST /orders, GET /orders, GET /orders/{id}, POST /orders/{id}/cancel,
//! POST /admin/orders/{id}/complete.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};

use super::{
    create::{self, NewOrder, Settings},
    lifecycle,
    model::{self, CreateOrderRequest, Order},
    repo,
};
use crate::{
    app::AppState,
    auth::{AdminUser, AuthUser},
    error::{ApiError, FieldError},
    http::{
        extract::{Json, Path},
        paging::{Page, PageRequest},
    },
    idempotency, outbox,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(create_order).get(list))
        .route("/orders/{id}", get(get_one))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/admin/orders/{id}/complete", post(complete))
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

async fn create_order(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    // Everything refused here happens before execution starts and stores nothing.
    let key = idempotency::parse_key(&headers)?;
    let request = parse_body(&body)?;
    let lines = model::validate(&request, state.config.orders).map_err(ApiError::validation)?;
    let fingerprint = idempotency::fingerprint(&body);
    let trace = outbox::trace_context(&headers);

    let settings = Settings {
        idempotency: state.config.idempotency,
        stock_retry: state.config.stock_retry,
        queue: state.config.events.queue,
    };
    let reply = create::create(
        &state.db,
        NewOrder {
            user_id: user.id,
            key: &key,
            fingerprint: &fingerprint,
            lines: &lines,
            trace: &trace,
        },
        &settings,
    )
    .await?;

    if let Some(order_id) = reply.order_id {
        tracing::Span::current().record("orderId", order_id);
        tracing::info!(orderId = order_id, "order created");
    }
    if !reply.replayed {
        // Stock changed (or was found short): cached product views are stale either way.
        let ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
        state.cache.invalidate_products(&ids).await;
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

async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    page: PageRequest,
) -> Result<axum::Json<Page<Order>>, ApiError> {
    let (items, total) = repo::list_owned(&state.db, user.id, page).await?;
    Ok(axum::Json(Page::new(items, page, total)))
}

async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<Order>, ApiError> {
    repo::find_owned(&state.db, user.id, id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found("order"))
}

async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<axum::Json<Order>, ApiError> {
    tracing::Span::current().record("orderId", id);
    let trace = outbox::trace_context(&headers);
    let done =
        lifecycle::cancel(&state.db, &state.config.events.queue, user.id, id, &trace).await?;
    if !done.restocked.is_empty() {
        state.cache.invalidate_products(&done.restocked).await;
        tracing::info!(orderId = id, "order cancelled; stock restored");
    }
    Ok(axum::Json(done.order))
}

async fn complete(
    State(state): State<AppState>,
    AdminUser(_): AdminUser,
    Path(id): Path<i64>,
) -> Result<axum::Json<Order>, ApiError> {
    tracing::Span::current().record("orderId", id);
    let order = lifecycle::complete(&state.db, id).await?;
    Ok(axum::Json(order))
}
