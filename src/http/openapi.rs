//! The OpenAPI 3.1 document. Handlers carry `#[utoipa::path]` and are registered with
//! `utoipa_axum::routes!`, which adds the route to the router and to the document in one
//! step: a route cannot be served without being documented (tests/openapi.rs checks both
//! directions over HTTP).
//!
//! Responses every operation shares (the standard error body for 401, 413, 415, 500, 503…)
//! are added here once instead of being repeated on each handler.

use axum::Router;
use utoipa::{
    openapi::{
        path::Operation,
        response::{Response, ResponseBuilder},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        Content, OpenApi as Document, RefOr,
    },
    Modify, OpenApi,
};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

pub const DOCUMENT_PATH: &str = "/api-docs/openapi.json";
pub const SWAGGER_UI_PATH: &str = "/swagger-ui";
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow",
        description = "Orders, inventory and notifications, exactly once under duplication and \
                       failure. Every error response has the standard body `ErrorBody`; every \
                       response carries `X-Request-Id`."
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorCode, crate::error::FieldError)),
    tags(
        (name = "auth", description = "Registration and login (JWT bearer tokens)"),
        (name = "catalog", description = "Products and stock"),
        (name = "orders", description = "Idempotent order creation and the order lifecycle"),
        (name = "notifications", description = "Notifications produced from order events"),
        (name = "jobs", description = "Operators' view of the job table: filters and counts, one job with its attempt history and carried outbox rows, retry and discard (one or in bulk)"),
        (name = "operators", description = "Operators' side of the job engine: queues (pause, resume), an order's timeline, the action log of every operator action"),
        (name = "operations", description = "Health probes and metrics"),
    )
)]
pub struct ApiDoc;

/// Completes the document assembled from the routes: the bearer scheme and the shared error
/// responses. (A derive-level modifier would run before the routes' paths are merged in.)
pub fn complete(mut doc: Document) -> Document {
    SharedResponses.modify(&mut doc);
    doc
}

struct SharedResponses;

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                "ErrorBody",
            )))),
        )
        .into()
}

fn add_if_absent(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

impl Modify for SharedResponses {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from POST /api/v1/auth/login"))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                if op.request_body.is_some() {
                    add_if_absent(op, "400", "Invalid JSON or a field failed validation");
                    add_if_absent(op, "413", "The body is larger than HTTP_BODY_LIMIT_BYTES");
                    add_if_absent(op, "415", "The body is not application/json");
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    add_if_absent(op, "401", "Missing, malformed or expired bearer token");
                }
                add_if_absent(op, "500", "Unexpected failure (logged with the request id)");
                add_if_absent(
                    op,
                    "503",
                    "A dependency is unavailable or the request timed out; retry later",
                );
            }
        }
    }
}

/// Serves the document at [`DOCUMENT_PATH`] and Swagger UI (assets built into the binary)
/// at [`SWAGGER_UI_PATH`].
pub fn docs_router(doc: Document) -> Router<AppState> {
    SwaggerUi::new(SWAGGER_UI_PATH)
        .url(DOCUMENT_PATH, doc)
        .into()
}
