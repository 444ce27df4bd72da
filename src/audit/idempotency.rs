//! An Idempotency-Key maps to at most one order: one row per (user, key), its order exists
//! (live or archived) and is the key's user's, and no order is claimed by two keys.
//! Keys expire (IDEMPOTENCY_RETENTION_HOURS), so this covers the keys still kept.

use std::collections::HashMap;

use super::{Check, Kind, Scan};

type Row = (i64, i64, Option<i64>, i64, Option<i64>);

pub(super) async fn scan(scan: &mut Scan<'_>) -> Result<Check, sqlx::Error> {
    let mut check = Check::new(
        "idempotency",
        Kind::Invariant,
        "an idempotency key maps to at most one order, of its own user",
    );
    // order id -> the first key that names it
    let mut owners: HashMap<i64, i64> = HashMap::new();
    let mut after = 0i64;
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT k.id, k.user_id, k.order_id, \
             (SELECT COUNT(*) FROM idempotency_keys k2 \
              WHERE k2.user_id = k.user_id AND k2.idem_key = k.idem_key), \
             COALESCE(o.user_id, a.user_id) \
             FROM idempotency_keys k \
             LEFT JOIN orders o ON o.id = k.order_id \
             LEFT JOIN orders_archive a ON a.id = k.order_id \
             WHERE k.id > ? ORDER BY k.id LIMIT ?",
        )
        .bind(after)
        .bind(scan.chunk())
        .fetch_all(&mut *scan.conn)
        .await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        for &(key, user, order, same_key, owner) in &rows {
            let id = format!("idempotency key {key}");
            if same_key > 1 {
                check.found(
                    id.clone(),
                    format!("user {user}'s key is stored {same_key} times"),
                );
            }
            let Some(order) = order else { continue };
            match owner {
                None => check.found(id.clone(), format!("order {order} does not exist")),
                Some(owner) if owner != user => check.found(
                    id.clone(),
                    format!("order {order} is user {owner}'s, the key is user {user}'s"),
                ),
                Some(_) => {}
            }
            if let Some(first) = owners.insert(order, key) {
                check.found(id, format!("order {order} is also key {first}'s"));
            }
        }
        check.scanned += rows.len() as u64;
        scan.read("idempotency keys", rows.len());
        after = last;
    }
    Ok(check)
}
