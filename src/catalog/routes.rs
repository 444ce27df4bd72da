//! GET /products, GET /products/{id}, POST /admin/products,
//! POST /admin/products/{id}/stock-adjust.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{repo, repo::CatalogError, Product};
use crate::{
    auth::AdminUser,
    error::{ApiError, ErrorBody, ErrorCode, FieldError},
    http::{
        extract::{Json, Path},
        paging::{Page, PageParams, PageRequest},
    },
    state::AppState,
};

pub const MAX_PRICE: i64 = 1_000_000_000_000;
pub const MAX_STOCK_DELTA: i64 = 1_000_000_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(create))
        .routes(routes!(adjust_stock))
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::SkuTaken => ApiError::new(ErrorCode::SkuTaken, "sku is already taken"),
            CatalogError::NotFound => ApiError::not_found("product"),
            CatalogError::InsufficientStock => {
                ApiError::new(ErrorCode::InsufficientStock, "stock cannot go below zero")
            }
            CatalogError::Db(e) => e.into(),
        }
    }
}

/// Lists products by id, with their current stock.
#[utoipa::path(
    get,
    path = "/products",
    operation_id = "listProducts",
    tag = "catalog",
    params(PageParams),
    responses(
        (status = 200, description = "A page of products", body = Page<Product>),
        (status = 400, description = "VALIDATION_ERROR: bad paging", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    page: PageRequest,
) -> Result<axum::Json<Page<Product>>, ApiError> {
    let key = state.cache.list_key(page.page, page.size);
    if let Some(hit) = state.cache.get::<Page<Product>>(&key).await {
        return Ok(axum::Json(hit));
    }
    let (items, total) = repo::list(&state.db, page).await?;
    let body = Page::new(items, page, total);
    state.cache.put(&key, &body).await;
    Ok(axum::Json(body))
}

/// One product with its current stock.
#[utoipa::path(
    get,
    path = "/products/{id}",
    operation_id = "getProduct",
    tag = "catalog",
    params(("id" = i64, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 400, description = "VALIDATION_ERROR: the id is not an integer", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Product>, ApiError> {
    let key = state.cache.product_key(id);
    if let Some(hit) = state.cache.get::<Product>(&key).await {
        return Ok(axum::Json(hit));
    }
    let product = repo::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("product"))?;
    state.cache.put(&key, &product).await;
    Ok(axum::Json(product))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateProductRequest {
    /// 1–64 characters of A-Z, a-z, 0-9, '-', '_', '.'; unique.
    #[schema(example = "MUG-001", pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub sku: String,
    /// 1–200 characters, not all blank, no control characters.
    #[schema(
        example = "Mug",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// Minor units (cents), 0 to 10^12.
    #[schema(example = 1299, minimum = 0, maximum = 1_000_000_000_000_i64)]
    #[serde(deserialize_with = "crate::http::integer::deserialize")]
    pub price: i64,
    #[schema(example = 100, minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::http::integer::deserialize")]
    pub initial_stock: i64,
}

fn validate_create(req: &CreateProductRequest) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let sku = req.sku.trim();
    if sku.is_empty()
        || sku.len() > 64
        || !sku
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        errors.push(FieldError::new(
            "sku",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '-', '_', '.'",
        ));
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "must be 1 to 200 characters without control characters",
        ));
    }
    if !(0..=MAX_PRICE).contains(&req.price) {
        errors.push(FieldError::new(
            "price",
            format!("must be between 0 and {MAX_PRICE} minor units"),
        ));
    }
    if !(0..=MAX_STOCK_DELTA).contains(&req.initial_stock) {
        errors.push(FieldError::new(
            "initialStock",
            format!("must be between 0 and {MAX_STOCK_DELTA}"),
        ));
    }
    errors
}

/// Creates a product with its initial stock (ADMIN).
#[utoipa::path(
    post,
    path = "/admin/products",
    operation_id = "createProduct",
    tag = "catalog",
    security(("bearer" = [])),
    request_body = CreateProductRequest,
    responses(
        (status = 201, description = "Product created", body = Product),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 409, description = "SKU_TAKEN", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<CreateProductRequest>,
) -> Result<(StatusCode, axum::Json<Product>), ApiError> {
    let errors = validate_create(&req);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let product = repo::create(
        &state.db,
        req.sku.trim(),
        req.name.trim(),
        req.price,
        req.initial_stock,
    )
    .await?;
    state.cache.invalidate_products(&[product.id]).await;
    tracing::info!(productId = product.id, sku = %product.sku, "product created");
    Ok((StatusCode::CREATED, axum::Json(product)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockAdjustRequest {
    /// Non-zero, between -10^9 and 10^9; stock never goes below zero.
    #[schema(schema_with = delta_schema)]
    #[serde(deserialize_with = "crate::http::integer::deserialize")]
    pub delta: i64,
}

/// -10^9..=-1 or 1..=10^9: the schema says "non-zero" the way JSON Schema can.
fn delta_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type};
    let range = |min: i64, max: i64| {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(min))
            .maximum(Some(max))
    };
    Schema::OneOf(
        OneOfBuilder::new()
            .item(range(-MAX_STOCK_DELTA, -1))
            .item(range(1, MAX_STOCK_DELTA))
            .description(Some("Non-zero, between -10^9 and 10^9"))
            .examples([serde_json::json!(25)])
            .build(),
    )
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StockResponse {
    pub product_id: i64,
    pub quantity: i64,
}

/// Adds to or takes from a product's stock (ADMIN).
#[utoipa::path(
    post,
    path = "/admin/products/{id}/stock-adjust",
    operation_id = "adjustStock",
    tag = "catalog",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Product id")),
    request_body = StockAdjustRequest,
    responses(
        (status = 200, description = "The new stock level", body = StockResponse),
        (status = 403, description = "FORBIDDEN: not an ADMIN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "INSUFFICIENT_STOCK: the delta would take stock below zero", body = ErrorBody),
    )
)]
async fn adjust_stock(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
    Json(req): Json<StockAdjustRequest>,
) -> Result<axum::Json<StockResponse>, ApiError> {
    // Not `delta.abs()`: it overflows for i64::MIN (a panic, i.e. a 500, in a debug build;
    // a negative "absolute value" that passes the check in a release build).
    if req.delta == 0 || !(-MAX_STOCK_DELTA..=MAX_STOCK_DELTA).contains(&req.delta) {
        return Err(ApiError::validation(vec![FieldError::new(
            "delta",
            format!("must be non-zero and between -{MAX_STOCK_DELTA} and {MAX_STOCK_DELTA}"),
        )]));
    }
    let quantity = repo::adjust_stock(&state.db, id, req.delta).await?;
    state.cache.invalidate_products(&[id]).await;
    tracing::info!(
        productId = id,
        delta = req.delta,
        quantity,
        "stock adjusted"
    );
    Ok(axum::Json(StockResponse {
        product_id: id,
        quantity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_validation() {
        let ok = CreateProductRequest {
            sku: "SKU-1".into(),
            name: "Mug".into(),
            price: 1299,
            initial_stock: 10,
        };
        assert!(validate_create(&ok).is_empty());
        let bad = CreateProductRequest {
            sku: "sku with spaces; DROP".into(),
            name: "".into(),
            price: -1,
            initial_stock: -5,
        };
        let fields: Vec<_> = validate_create(&bad).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["sku", "name", "price", "initialStock"]);
    }
}
