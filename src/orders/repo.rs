//! SQL of the orders and order_items tables.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{mysql::MySqlQueryResult, MySqlConnection, MySqlPool, QueryBuilder};

use super::{
    ids::{OrderId, OwnerId},
    model::{Order, OrderItem, OrderRow, OrderStatus},
};
use crate::{
    db::{Part, Script},
    http::paging::PageRequest,
};

const ORDER_COLUMNS: &str = "id, user_id, status, total_amount, created_at, updated_at";

/// An order to insert with its items (all CREATED, created and updated at the same instant).
pub struct NewOrder<'a> {
    pub user_id: i64,
    pub total: i64,
    pub items: &'a [OrderItem],
}

/// Adds to `script` the INSERTs of the orders and their items, two statements per order;
/// `inserted_ids` reads the orders' ids from the results. Each order's items refer to it
/// through `LAST_INSERT_ID()`, the id its own INSERT was given, so no assumption about how the
/// server numbers a multi-row insert is needed.
pub fn push_inserts(script: &mut Script, orders: &[NewOrder<'_>], now: DateTime<Utc>) {
    for order in orders {
        script.statement(&[
            Part::Sql(
                "INSERT INTO orders (user_id, status, total_amount, created_at, updated_at) VALUES (",
            ),
            Part::Int(order.user_id),
            Part::Sql(", 'CREATED', "),
            Part::Int(order.total),
            Part::Sql(", "),
            Part::Time(now),
            Part::Sql(", "),
            Part::Time(now),
            Part::Sql(")"),
        ]);
        let mut items = vec![Part::Sql(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ",
        )];
        for (i, item) in order.items.iter().enumerate() {
            items.extend([
                Part::Sql(if i == 0 {
                    "(LAST_INSERT_ID(), "
                } else {
                    ", (LAST_INSERT_ID(), "
                }),
                Part::Int(item.product_id),
                Part::Sql(", "),
                Part::Int(item.quantity),
                Part::Sql(", "),
                Part::Int(item.unit_price),
                Part::Sql(")"),
            ]);
        }
        script.statement(&items);
    }
}

/// Adds to `script` one INSERT of all `orders` and one of all their items (none if there
/// are no orders); `batch_inserted_ids` reads the orders' ids. Only for a server that gives
/// the rows of one multi-row INSERT consecutive ids, `step` apart
/// (`innodb_autoinc_lock_mode` 0 or 1 and `auto_increment_increment` = `step`; see
/// `batch::id_step`): the first row's id is `LAST_INSERT_ID()`, the k-th's
/// `LAST_INSERT_ID() + k × step`, which the items' INSERT, the next statement, refers to.
pub fn push_batch_inserts(
    script: &mut Script,
    orders: &[NewOrder<'_>],
    now: DateTime<Utc>,
    step: i64,
) {
    if orders.is_empty() {
        return;
    }
    let mut rows = vec![Part::Sql(
        "INSERT INTO orders (user_id, status, total_amount, created_at, updated_at) VALUES ",
    )];
    let mut items = vec![Part::Sql(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES ",
    )];
    for (k, order) in orders.iter().enumerate() {
        rows.extend([
            Part::Sql(if k == 0 { "(" } else { ", (" }),
            Part::Int(order.user_id),
            Part::Sql(", 'CREATED', "),
            Part::Int(order.total),
            Part::Sql(", "),
            Part::Time(now),
            Part::Sql(", "),
            Part::Time(now),
            Part::Sql(")"),
        ]);
        for item in order.items {
            items.extend([
                Part::Sql(if items.len() == 1 {
                    "(LAST_INSERT_ID() + "
                } else {
                    ", (LAST_INSERT_ID() + "
                }),
                Part::Int(k as i64 * step),
                Part::Sql(", "),
                Part::Int(item.product_id),
                Part::Sql(", "),
                Part::Int(item.quantity),
                Part::Sql(", "),
                Part::Int(item.unit_price),
                Part::Sql(")"),
            ]);
        }
    }
    script.statement(&rows);
    script.statement(&items);
}

/// The ids of the `n` orders `push_batch_inserts` added, from its statements' results (the
/// first is the orders' INSERT). An INSERT that added another number of rows is a protocol
/// error: the ids could not be told.
pub fn batch_inserted_ids(
    results: &[MySqlQueryResult],
    n: usize,
    step: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let orders = &results[0];
    if orders.rows_affected() != n as u64 {
        return Err(sqlx::Error::Protocol(format!(
            "a multi-row INSERT of {n} orders added {} rows",
            orders.rows_affected()
        )));
    }
    let first = orders.last_insert_id() as i64;
    Ok((0..n as i64).map(|k| first + k * step).collect())
}

/// The ids of the orders `push_inserts` added, from its statements' results.
pub fn inserted_ids(results: &[MySqlQueryResult]) -> Vec<i64> {
    results
        .iter()
        .step_by(2)
        .map(|r| r.last_insert_id() as i64)
        .collect()
}

async fn items_of(
    conn: &mut MySqlConnection,
    order_ids: &[i64],
) -> Result<Vec<(i64, OrderItem)>, sqlx::Error> {
    if order_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT order_id, product_id, quantity, unit_price FROM order_items WHERE order_id IN (",
    );
    let mut sep = q.separated(", ");
    for id in order_ids {
        sep.push_bind(*id);
    }
    q.push(") ORDER BY order_id, product_id");
    let rows: Vec<(i64, i64, i64, i64)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, product_id, quantity, unit_price)| {
            (
                order_id,
                OrderItem {
                    product_id,
                    quantity,
                    unit_price,
                },
            )
        })
        .collect())
}

async fn attach_items(
    conn: &mut MySqlConnection,
    rows: Vec<OrderRow>,
) -> Result<Vec<Order>, sqlx::Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut by_order: HashMap<i64, Vec<OrderItem>> = HashMap::new();
    for (order_id, item) in items_of(conn, &ids).await? {
        by_order.entry(order_id).or_default().push(item);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let items = by_order.remove(&row.id).unwrap_or_default();
            row.with_items(items)
        })
        .collect())
}

/// The order if `user_id` owns it (`None` for another user's order: never reveal existence).
pub async fn find_owned(
    pool: &MySqlPool,
    user_id: OwnerId,
    order_id: OrderId,
) -> Result<Option<Order>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? AND user_id = ?"
    ))
    .bind(order_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(attach_items(&mut conn, vec![row]).await?.pop()),
        None => Ok(None),
    }
}

pub async fn list_owned(
    pool: &MySqlPool,
    user_id: i64,
    page: PageRequest,
) -> Result<(Vec<Order>, i64), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? ORDER BY id DESC LIMIT ? OFFSET ?"
    ))
    .bind(user_id)
    .bind(page.limit())
    .bind(page.offset())
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE user_id = ?")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?;
    Ok((attach_items(&mut conn, rows).await?, total))
}

/// Locks the order row for a state change; returns it with its owner's id.
/// `owner = None` for admin operations.
pub async fn lock(
    conn: &mut MySqlConnection,
    order_id: OrderId,
    owner: Option<OwnerId>,
) -> Result<Option<(i64, Order)>, sqlx::Error> {
    let row: Option<OrderRow> = sqlx::query_as(&format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = ? AND (? IS NULL OR user_id = ?) FOR UPDATE"
    ))
    .bind(order_id)
    .bind(owner)
    .bind(owner)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => {
            let user_id = row.user_id;
            Ok(attach_items(conn, vec![row])
                .await?
                .pop()
                .map(|o| (user_id, o)))
        }
        None => Ok(None),
    }
}

/// Moves the order from `from` to `to`; false if it was no longer in `from`.
pub async fn transition(
    conn: &mut MySqlConnection,
    order_id: OrderId,
    from: OrderStatus,
    to: OrderStatus,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE orders SET status = ?, updated_at = ? WHERE id = ? AND status = ?")
            .bind(to.as_str())
            .bind(now)
            .bind(order_id)
            .bind(from.as_str())
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}
