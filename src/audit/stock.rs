//! Stock is conserved per product: what the product holds is its initial stock plus the
//! admin adjustments (both in `stock_adjustments`) minus the units of the orders not
//! cancelled, live and archived (summed by the orders pass; a cancellation gives its units
//! back, so a cancelled order holds none).

use std::collections::HashMap;

use super::{Check, Kind, Scan};

pub(super) async fn scan(
    scan: &mut Scan<'_>,
    units: &HashMap<i64, i64>,
) -> Result<Check, sqlx::Error> {
    let mut check = Check::new(
        "stock",
        Kind::Invariant,
        "stock = initial stock + adjustments - units of orders not cancelled",
    );
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT s.product_id, s.quantity, \
             CAST(COALESCE((SELECT SUM(a.delta) FROM stock_adjustments a \
                            WHERE a.product_id = s.product_id), 0) AS SIGNED) \
             FROM stocks s WHERE s.product_id > ? ORDER BY s.product_id LIMIT ?",
        )
        .bind(after)
        .bind(scan.chunk())
        .fetch_all(&mut *scan.conn)
        .await?;
        let Some(&(last, _, _)) = rows.last() else {
            break;
        };
        for &(product, quantity, adjusted) in &rows {
            let held = units.get(&product).copied().unwrap_or(0);
            let expected = adjusted - held;
            if quantity != expected {
                check.found(
                    format!("product {product}"),
                    format!(
                        "stock {quantity}, expected {expected} (initial and adjustments {adjusted}, units in orders {held})"
                    ),
                );
            }
        }
        check.scanned += rows.len() as u64;
        scan.read("stock", rows.len());
        after = last;
    }
    Ok(check)
}
