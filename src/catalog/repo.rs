//! SQL of the products and stocks tables.

use sqlx::{MySql, MySqlPool, Transaction};
use thiserror::Error;

use super::Product;
use crate::{db, http::paging::PageRequest};

const SELECT_PRODUCT: &str = "SELECT p.id, p.sku, p.name, p.price, s.quantity AS stock \
     FROM products p JOIN stocks s ON s.product_id = p.id";

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("sku is already taken")]
    SkuTaken,
    #[error("product not found")]
    NotFound,
    #[error("stock would go below zero")]
    InsufficientStock,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub async fn get(pool: &MySqlPool, id: i64) -> Result<Option<Product>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_PRODUCT} WHERE p.id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &MySqlPool, page: PageRequest) -> Result<(Vec<Product>, i64), sqlx::Error> {
    let items = sqlx::query_as(&format!("{SELECT_PRODUCT} ORDER BY p.id LIMIT ? OFFSET ?"))
        .bind(page.limit())
        .bind(page.offset())
        .fetch_all(pool)
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products")
        .fetch_one(pool)
        .await?;
    Ok((items, total))
}

pub async fn create(
    pool: &MySqlPool,
    sku: &str,
    name: &str,
    price: i64,
    initial_stock: i64,
) -> Result<Product, CatalogError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query("INSERT INTO products (sku, name, price) VALUES (?, ?, ?)")
        .bind(sku)
        .bind(name)
        .bind(price)
        .execute(&mut *tx)
        .await;
    let id = match inserted {
        Ok(done) => done.last_insert_id() as i64,
        Err(e) if db::is_unique_violation(&e) => return Err(CatalogError::SkuTaken),
        Err(e) => return Err(e.into()),
    };
    sqlx::query("INSERT INTO stocks (product_id, quantity) VALUES (?, ?)")
        .bind(id)
        .bind(initial_stock)
        .execute(&mut *tx)
        .await?;
    record_adjustment(&mut tx, id, initial_stock, "INITIAL").await?;
    tx.commit().await?;
    Ok(Product {
        id,
        sku: sku.to_owned(),
        name: name.to_owned(),
        price,
        stock: initial_stock,
    })
}

/// Adds `delta` (negative to remove) in one guarded statement: the WHERE clause refuses to
/// go below zero, so no read-modify-write race can either. Returns the new quantity.
pub async fn adjust_stock(
    pool: &MySqlPool,
    product_id: i64,
    delta: i64,
) -> Result<i64, CatalogError> {
    let mut tx: Transaction<'_, MySql> = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE stocks SET quantity = quantity + ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ? AND quantity + ? >= 0",
    )
    .bind(delta)
    .bind(product_id)
    .bind(delta)
    .execute(&mut *tx)
    .await?;
    let quantity: Option<i64> =
        sqlx::query_scalar("SELECT quantity FROM stocks WHERE product_id = ?")
            .bind(product_id)
            .fetch_optional(&mut *tx)
            .await?;
    match (done.rows_affected(), quantity) {
        (_, None) => Err(CatalogError::NotFound),
        (0, Some(_)) => Err(CatalogError::InsufficientStock),
        (_, Some(q)) => {
            record_adjustment(&mut tx, product_id, delta, "ADJUST").await?;
            tx.commit().await?;
            Ok(q)
        }
    }
}

/// Records a stock change that is not an order, in the change's own transaction, so that the
/// audit can check stock is conserved (docs/adr/0017-audit.md).
async fn record_adjustment(
    tx: &mut Transaction<'_, MySql>,
    product_id: i64,
    delta: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO stock_adjustments (product_id, delta, reason) VALUES (?, ?, ?)")
        .bind(product_id)
        .bind(delta)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
