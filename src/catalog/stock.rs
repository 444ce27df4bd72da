//! Taking and restoring stock inside an order's transaction.
//!
//! Taking is optimistic: no read lock, no version compare. Each product's units are taken by
//! one guarded write, `quantity = quantity - n WHERE quantity >= n`, which bumps `version`.
//! It cannot lose an update (InnoDB applies it to the latest committed row) and it never
//! refuses while the units are there, so under any contention an order is refused only with
//! OUT_OF_STOCK, when the stock really is short — there are no retries to run out
//! (docs/adr/0005-stock-concurrency.md has the measurements against a compare-and-set loop).

use std::collections::HashMap;

use sqlx::{mysql::MySqlQueryResult, MySqlConnection, QueryBuilder};

use crate::db::{Part, Script};

/// What an order needs to know of a product: its price, and the units available when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    pub price: i64,
    pub available: i64,
}

/// The offers of `ids` (a plain read: no lock); products that do not exist are absent.
pub async fn offers(
    conn: &mut MySqlConnection,
    ids: &[i64],
) -> Result<HashMap<i64, Offer>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = QueryBuilder::new(
        "SELECT p.id, p.price, s.quantity FROM products p JOIN stocks s ON s.product_id = p.id \
         WHERE p.id IN (",
    );
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(")");
    let rows: Vec<(i64, i64, i64)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(id, price, available)| (id, Offer { price, available }))
        .collect())
}

/// The units of `ids` as this transaction sees them (its own takes included). `lock` takes the
/// rows' write locks: the last resort of an allocation that keeps losing races
/// (`orders::batch`), so that it ends.
pub async fn quantities(
    conn: &mut MySqlConnection,
    ids: &[i64],
    lock: bool,
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut q = QueryBuilder::new("SELECT product_id, quantity FROM stocks WHERE product_id IN (");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(if lock {
        ") ORDER BY product_id FOR UPDATE"
    } else {
        ")"
    });
    let rows: Vec<(i64, i64)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().collect())
}

/// Adds to `script` one statement per change, in the order given (callers pass product-id
/// order, so that concurrent transactions lock shared rows in one order). A positive change
/// takes units with the guarded write; a negative one gives units back. `applied` reads the
/// statements' results.
pub fn push_changes(script: &mut Script, changes: &[(i64, i64)]) {
    for &(product_id, change) in changes {
        let (set, amount) = if change >= 0 {
            ("UPDATE stocks SET quantity = quantity - ", change)
        } else {
            ("UPDATE stocks SET quantity = quantity + ", -change)
        };
        script.statement(&[
            Part::Sql(set),
            Part::Int(amount),
            Part::Sql(
                ", version = version + 1, updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ",
            ),
            Part::Int(product_id),
            Part::Sql(if change >= 0 { " AND quantity >= " } else { "" }),
            if change >= 0 {
                Part::Int(change)
            } else {
                Part::Sql("")
            },
        ]);
    }
}

/// Adds to `script` one guarded write taking every `(product, units)` of `takes` (positive
/// amounts, product-id order) — none if `takes` is empty. The rows are locked in product-id
/// order (the primary key's), as one statement per product did. A row whose units are
/// short is left alone and the others are changed: [`took_all`] tells from the affected
/// rows whether every take applied, and a caller that finds one short rolls back.
pub fn push_takes(script: &mut Script, takes: &[(i64, i64)]) {
    if takes.is_empty() {
        return;
    }
    let case = |parts: &mut Vec<Part<'_>>| {
        parts.push(Part::Sql("CASE product_id"));
        for &(product_id, units) in takes {
            parts.extend([
                Part::Sql(" WHEN "),
                Part::Int(product_id),
                Part::Sql(" THEN "),
                Part::Int(units),
            ]);
        }
        parts.push(Part::Sql(" END"));
    };
    let mut parts = vec![Part::Sql("UPDATE stocks SET quantity = quantity - ")];
    case(&mut parts);
    parts.push(Part::Sql(
        ", version = version + 1, updated_at = CURRENT_TIMESTAMP(6) WHERE product_id IN (",
    ));
    for (i, &(product_id, _)) in takes.iter().enumerate() {
        if i > 0 {
            parts.push(Part::Sql(", "));
        }
        parts.push(Part::Int(product_id));
    }
    parts.push(Part::Sql(") AND quantity >= "));
    case(&mut parts);
    script.statement(&parts);
}

/// Whether the statement of [`push_takes`] took all of its `takes` units.
pub fn took_all(result: &MySqlQueryResult, takes: usize) -> bool {
    result.rows_affected() == takes as u64
}

/// Adds to `script` a write to the stock table that changes no row (there is no product 0):
/// it needs the locks a write to the table needs — its metadata lock, and the global one
/// `FLUSH TABLES WITH READ LOCK` holds — and nothing else, so it shows whether an order's
/// transaction could run now without taking any row's lock.
pub fn push_probe(script: &mut Script) {
    script.statement(&[Part::Sql(
        "UPDATE stocks SET version = version WHERE product_id = 0",
    )]);
}

/// Per change of `push_changes`, whether it was applied: a take finds the stock short
/// otherwise (a give-back always applies).
pub fn applied(results: &[MySqlQueryResult]) -> Vec<bool> {
    results.iter().map(|r| r.rows_affected() == 1).collect()
}

/// Gives back what a cancelled order took. An increment cannot conflict with anything the
/// stock invariant cares about, so it is a single atomic statement.
pub async fn restore(
    conn: &mut MySqlConnection,
    product_id: i64,
    quantity: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stocks SET quantity = quantity + ?, version = version + 1, \
         updated_at = CURRENT_TIMESTAMP(6) WHERE product_id = ?",
    )
    .bind(quantity)
    .bind(product_id)
    .execute(conn)
    .await?;
    Ok(())
}
