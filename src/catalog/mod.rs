//! Products and stock levels: public reads through a Redis read-through cache, admin writes
//! that invalidate it.

pub mod cache;
mod repo;
mod routes;
pub mod stock;

pub use cache::Cache;
pub use routes::router;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub price: i64,
    pub stock: i64,
}
