//! One pass over every order, live then archived, in chunks of ids: each order's events, the
//! units its items hold (for the stock check), and whether an archived order is also live.
//!
//! An order's events are counted as outbox rows or, once the retention purged its PUBLISHED
//! rows, as the notifications they made (the larger of the two): a purged event that never
//! became a notification was lost, and counts as missing.

use std::collections::HashMap;

use super::{Check, Kind, Scan};

const CREATED: &str = "ORDER_CREATED";
const CANCELLED: &str = "ORDER_CANCELLED";

pub(super) struct Orders {
    pub created: Check,
    pub cancelled: Check,
    pub live_and_archived: Check,
    /// Units held per product by the orders not cancelled, live and archived.
    pub units: HashMap<i64, i64>,
}

#[derive(Clone, Copy)]
enum Table {
    Live,
    Archive,
}

impl Table {
    fn orders(self) -> &'static str {
        match self {
            Table::Live => "orders",
            Table::Archive => "orders_archive",
        }
    }
    fn items(self) -> &'static str {
        match self {
            Table::Live => "order_items",
            Table::Archive => "order_items_archive",
        }
    }
    fn stage(self) -> &'static str {
        match self {
            Table::Live => "orders",
            Table::Archive => "archived orders",
        }
    }
}

pub(super) async fn scan(scan: &mut Scan<'_>) -> Result<Orders, sqlx::Error> {
    let mut out = Orders {
        created: Check::new(
            "order_created",
            Kind::Invariant,
            "every order has exactly one ORDER_CREATED event",
        ),
        cancelled: Check::new(
            "order_cancelled",
            Kind::Invariant,
            "every cancelled order has exactly one ORDER_CANCELLED event, others none",
        ),
        live_and_archived: Check::new(
            "live_and_archived",
            Kind::Invariant,
            "no order is both live and archived",
        ),
        units: HashMap::new(),
    };
    for table in [Table::Live, Table::Archive] {
        let mut after = 0i64;
        loop {
            let orders: Vec<(i64, String)> = sqlx::query_as(&format!(
                "SELECT id, status FROM {} WHERE id > ? ORDER BY id LIMIT ?",
                table.orders()
            ))
            .bind(after)
            .bind(scan.chunk())
            .fetch_all(&mut *scan.conn)
            .await?;
            let (Some(&(lo, _)), Some(&(hi, _))) = (orders.first(), orders.last()) else {
                break;
            };
            chunk(scan, &mut out, table, &orders, lo, hi).await?;
            scan.read(table.stage(), orders.len());
            after = hi;
        }
    }
    Ok(out)
}

async fn chunk(
    scan: &mut Scan<'_>,
    out: &mut Orders,
    table: Table,
    orders: &[(i64, String)],
    lo: i64,
    hi: i64,
) -> Result<(), sqlx::Error> {
    let outbox: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, COUNT(*) FROM outbox_events \
         WHERE aggregate_type = 'ORDER' AND aggregate_id BETWEEN ? AND ? \
         GROUP BY aggregate_id, event_type",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *scan.conn)
    .await?;
    let notified: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT order_id, type, COUNT(*) FROM notifications \
         WHERE order_id BETWEEN ? AND ? GROUP BY order_id, type",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *scan.conn)
    .await?;
    let units: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT i.product_id, CAST(SUM(i.quantity) AS SIGNED) FROM {} o \
         JOIN {} i ON i.order_id = o.id \
         WHERE o.id BETWEEN ? AND ? AND o.status <> 'CANCELLED' GROUP BY i.product_id",
        table.orders(),
        table.items()
    ))
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *scan.conn)
    .await?;
    for (product, n) in units {
        *out.units.entry(product).or_default() += n;
    }
    let mut events: HashMap<(i64, String), i64> = HashMap::new();
    for (order, kind, n) in outbox.into_iter().chain(notified) {
        let count = events.entry((order, kind)).or_default();
        *count = (*count).max(n);
    }
    let count =
        |order: i64, kind: &str| events.get(&(order, kind.to_owned())).copied().unwrap_or(0);
    for (id, status) in orders {
        let created = count(*id, CREATED);
        if created != 1 {
            out.created.found(
                format!("order {id}"),
                format!("{created} ORDER_CREATED events"),
            );
        }
        let cancelled = count(*id, CANCELLED);
        let expected = i64::from(status == "CANCELLED");
        if cancelled != expected {
            out.cancelled.found(
                format!("order {id}"),
                format!("{status} with {cancelled} ORDER_CANCELLED events"),
            );
        }
    }
    out.created.scanned += orders.len() as u64;
    out.cancelled.scanned += orders.len() as u64;
    if let Table::Archive = table {
        let both: Vec<i64> = sqlx::query_scalar(
            "SELECT a.id FROM orders_archive a JOIN orders o ON o.id = a.id \
             WHERE a.id BETWEEN ? AND ? ORDER BY a.id",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *scan.conn)
        .await?;
        for id in both {
            out.live_and_archived.found(
                format!("order {id}"),
                "in orders and in orders_archive".to_owned(),
            );
        }
        out.live_and_archived.scanned += orders.len() as u64;
    }
    Ok(())
}
