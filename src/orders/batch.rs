//! One batch of order requests, decided together and committed in one transaction.
//!
//! First two reads, with no transaction and no lock: which accounts still exist and which
//! keys already have a committed outcome (a replay, or a 422); the products' prices and stock.
//! Then, for the requests left, one transaction: take each product's units for the whole
//! batch with one guarded write (`catalog::stock`), in arrival order (`allocate`), insert the
//! orders with their items, their ORDER_CREATED events (one publish job for all of them) and
//! every first outcome under its key. Either all of it commits or none of it does; an order
//! that is OUT_OF_STOCK or a request that is refused never fails the others.
//!
//! The round trips per batch are the same whatever its size — two reads, then the
//! transaction in two (`db::Script`: statements sent together) — so a batch of n orders
//! costs the database about what one order cost before, n times fewer commits included
//! (docs/adr/0012-order-group-commit.md).

use std::{collections::HashMap, future::Future, time::Duration};

use chrono::{SubsecRound, Utc};
use orderflow_jobs::{engine::queue, publish_outbox::publish_batch::Committed};
use sqlx::{mysql::MySqlQueryResult, pool::PoolConnection, MySql, MySqlConnection};
use thiserror::Error;
use tokio::{sync::OnceCell, time::Instant};

use super::{
    allocate::{allocate, Allocation, Units},
    model::{Line, Order, OrderItem, OrderStatus},
    outcome::{event_payload, refusal},
    repo,
};
use crate::{
    catalog::stock::{self, Offer},
    db::{self, Script, ScriptTx},
    error::{ErrorCode, FieldError},
    idempotency::{self, Fingerprint, StoreError, StoredResponse},
    outbox::{self, EventType, NewEvent, TraceContext},
    telemetry::names,
};

/// A validated order request waiting for its batch.
#[derive(Debug, Clone)]
pub struct Pending {
    pub user_id: i64,
    pub key: String,
    pub fingerprint: Fingerprint,
    /// Ordered by product id (`model::validate`).
    pub lines: Vec<Line>,
    /// Stored with the order's event: its trace continues from here.
    pub trace: TraceContext,
}

/// What became of one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Committed: a new order (201), its response stored under the key.
    Created { order_id: i64, body: String },
    /// Committed: the refusal (409 OUT_OF_STOCK), stored under the key.
    OutOfStock { body: String },
    /// The key had a committed outcome already.
    Stored(StoredResponse),
    /// The token's account no longer exists; nothing was stored.
    AccountGone,
    /// Refused before it executed (a product that does not exist); nothing was stored.
    Invalid(Vec<FieldError>),
}

/// A batch's decisions, in request order, and what its commit changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    /// The events it committed, for their publish job.
    pub events: Option<Committed>,
    /// Products whose stock changed, or was found short.
    pub products: Vec<i64>,
}

#[derive(Debug, Error)]
pub enum BatchError {
    /// Another request committed one of the keys after they were read: the batch is to be
    /// decided again (the key is then a replay).
    #[error("an idempotency key was committed by another request meanwhile")]
    KeyTaken,
    /// Another replica's request holds one of the keys beyond the lock wait bound.
    #[error("an idempotency key is held by a request still in flight")]
    KeyInFlight,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The COMMIT was sent and no answer came (the connection failed, or the batch's time ran
    /// out): the batch may or may not have committed. What it would have committed comes
    /// along, to be checked against what the database holds.
    #[error("the batch's commit was sent and its answer lost: {}", .0.error)]
    InDoubt(Box<InDoubt>),
}

/// A batch whose COMMIT may have taken effect.
#[derive(Debug)]
pub struct InDoubt {
    pub error: sqlx::Error,
    /// The outcome if it committed: every request decided, the claims' decisions being
    /// what their keys then hold.
    pub outcome: Outcome,
    /// The requests (indices in the batch) whose outcome the commit stored.
    pub claims: Vec<usize>,
}

impl BatchError {
    /// Nothing was committed and running the batch again can succeed: the rolled-back victim
    /// of a deadlock or a lock wait, or a key committed elsewhere since it was read.
    pub fn worth_repeating(&self) -> bool {
        match self {
            BatchError::KeyTaken => true,
            BatchError::KeyInFlight | BatchError::InDoubt(_) => false,
            BatchError::Db(e) => db::is_deadlock(e) || db::is_lock_wait_timeout(e),
        }
    }

    /// The failure is one order's, not the batch's: committed one by one, the others go
    /// through. A key another replica holds, or a statement the server refused for what it
    /// says. Never the connection, the pool or time running out: those would fail every
    /// order the same way, one after the other.
    pub fn is_per_order(&self) -> bool {
        match self {
            BatchError::KeyInFlight => true,
            BatchError::KeyTaken | BatchError::InDoubt(_) => false,
            BatchError::Db(e) => db::is_deadlock(e) || is_statement_refused(e),
        }
    }

    /// The connection cannot be trusted any more: it failed, or a round trip was abandoned.
    pub fn broke_connection(&self) -> bool {
        match self {
            BatchError::Db(e) => !matches!(e, sqlx::Error::Database(_)),
            BatchError::InDoubt(_) => true,
            BatchError::KeyTaken | BatchError::KeyInFlight => false,
        }
    }

    /// A label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            BatchError::KeyTaken => "key_taken",
            BatchError::KeyInFlight => "key_in_flight",
            BatchError::InDoubt(_) => "in_doubt",
            BatchError::Db(e) if db::is_deadlock(e) => "deadlock",
            BatchError::Db(e) if db::is_lock_wait_timeout(e) => "lock_wait",
            BatchError::Db(e) if is_timed_out(e) => "timeout",
            BatchError::Db(sqlx::Error::Database(_)) => "database",
            BatchError::Db(_) => "connection",
        }
    }
}

/// A statement the server refused for what it says (a constraint, a value), as opposed to
/// the server being unable to run statements: killed, shutting down, read-only (a
/// failover), or a lock wait that ran out.
fn is_statement_refused(e: &sqlx::Error) -> bool {
    const SERVER_NOT_SERVING: &[u16] = &[
        1053, // server shutdown in progress
        1290, // --read-only (a replica, or a primary being failed over)
        1836, // read-only mode
        1927, // connection killed
        1205, // lock wait timeout (row, metadata or global read lock)
    ];
    matches!(e, sqlx::Error::Database(_))
        && db::mysql_code(e).is_none_or(|n| !SERVER_NOT_SERVING.contains(&n))
}

/// The error a round trip past the batch's time ends with: as if the connection had failed,
/// which, for all the client can tell, it has.
fn timed_out() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the database did not answer within the batch's time",
    ))
}

fn is_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// `round_trip`, abandoned at `until` (a server that stopped answering without closing the
/// connection would otherwise hold the lane for the kernel's retransmission timeout).
async fn bounded<T>(
    until: Instant,
    round_trip: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout_at(until, round_trip)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
}

/// [`bounded`], for a script.
async fn bounded_script<T>(
    until: Instant,
    script: impl Future<Output = Result<T, db::ScriptError>>,
) -> Result<T, db::ScriptError> {
    tokio::time::timeout_at(until, script)
        .await
        .unwrap_or_else(|_| {
            Err(db::ScriptError {
                statement: usize::MAX,
                error: timed_out(),
            })
        })
}

/// Rolls back after a statement the server refused; after a failed connection there is
/// nothing to roll back on (the server does it when the connection goes).
async fn roll_back(tx: &mut ScriptTx<'_>, until: Instant, after: &BatchError) {
    if !after.broke_connection() {
        let _ = tokio::time::timeout_at(until, tx.rollback()).await;
    }
}

/// How the server numbers the rows of one multi-row INSERT, read once per process.
static ID_STEP: OnceCell<Option<i64>> = OnceCell::const_new();

/// `Some(step)` when the rows of one multi-row INSERT get consecutive ids, `step` apart:
/// `innodb_autoinc_lock_mode` 0 ("traditional") or 1 ("consecutive", MariaDB's default),
/// for which MySQL and MariaDB document that guarantee, with `auto_increment_increment` =
/// `step`. `None` otherwise — 2 ("interleaved", MySQL 8's default) promises unique ids
/// only — and a batch then inserts each order with a statement of its own and reads its id
/// from that statement (ADR 0012).
async fn id_step(conn: &mut MySqlConnection) -> Result<Option<i64>, sqlx::Error> {
    ID_STEP
        .get_or_try_init(|| async {
            let (mode, step): (i64, i64) = sqlx::query_as(
                "SELECT CAST(@@GLOBAL.innodb_autoinc_lock_mode AS SIGNED), \
                 CAST(@@SESSION.auto_increment_increment AS SIGNED)",
            )
            .fetch_one(conn)
            .await?;
            Ok::<_, sqlx::Error>((matches!(mode, 0 | 1) && step >= 1).then_some(step))
        })
        .await
        .copied()
}

/// After this many rounds of an allocation that keeps finding the stock taken by others, the
/// short rows are locked so that the next round ends it.
const LOCK_AFTER_ROUNDS: usize = 3;

/// Decides `batch` and commits what it changes. A round trip still unanswered at `until` is
/// abandoned: the batch then fails with a timed-out connection (`BatchError::InDoubt` when
/// it was the COMMIT's).
pub async fn commit(
    conn: &mut PoolConnection<MySql>,
    batch: &[&Pending],
    retention: Duration,
    until: Instant,
) -> Result<Outcome, BatchError> {
    let mut decided: Vec<Option<Decision>> = vec![None; batch.len()];

    let mut users: Vec<i64> = batch.iter().map(|p| p.user_id).collect();
    users.sort_unstable();
    users.dedup();
    let keys: Vec<_> = batch.iter().map(|&p| (p.user_id, p.key.as_str())).collect();
    let (accounts, mut stored) = bounded(
        until,
        idempotency::accounts_and_records(conn, &users, &keys),
    )
    .await?;
    let mut expired = Vec::new();
    for (d, &p) in decided.iter_mut().zip(batch) {
        if !accounts.contains(&p.user_id) {
            *d = Some(Decision::AccountGone);
        } else if let Some(s) = stored.remove(&(p.user_id, p.key.clone())) {
            if s.expired {
                expired.push((p.user_id, p.key.as_str()));
            } else {
                *d = Some(Decision::Stored(s));
            }
        }
    }

    let mut products: Vec<i64> = undecided(&decided)
        .flat_map(|i| batch[i].lines.iter().map(|l| l.product_id))
        .collect();
    products.sort_unstable();
    products.dedup();
    let offers = bounded(until, stock::offers(conn, &products)).await?;
    for i in undecided(&decided).collect::<Vec<_>>() {
        if let Err(details) = priced(batch[i], &offers) {
            decided[i] = Some(Decision::Invalid(details));
        }
    }

    let claims: Vec<usize> = undecided(&decided).collect();
    let mut outcome = Outcome::default();
    if !claims.is_empty() {
        let step = bounded(until, id_step(conn)).await?;
        let mut claimed: Vec<&Pending> = Vec::with_capacity(claims.len());
        for &i in &claims {
            claimed.push(batch[i]);
        }
        let mut tx = ScriptTx::new(conn);
        outcome = match store(&mut tx, &claimed, &offers, &expired, retention, step, until).await {
            Ok(outcome) => outcome,
            Err(BatchError::InDoubt(mut doubt)) => {
                let decisions = std::mem::take(&mut doubt.outcome.decisions);
                for (i, d) in claims.iter().zip(decisions) {
                    decided[*i] = Some(d);
                }
                doubt.outcome.decisions = decided
                    .into_iter()
                    .map(|d| d.expect("every request is decided"))
                    .collect();
                doubt.outcome.products = products;
                doubt.claims = claims;
                return Err(BatchError::InDoubt(doubt));
            }
            Err(e) => {
                roll_back(&mut tx, until, &e).await;
                return Err(e);
            }
        };
        for (i, d) in claims.iter().zip(std::mem::take(&mut outcome.decisions)) {
            decided[*i] = Some(d);
        }
        outcome.products = products;
    }
    outcome.decisions = decided
        .into_iter()
        .map(|d| d.expect("every request is decided"))
        .collect();
    Ok(outcome)
}

/// Indices of the requests not decided yet.
fn undecided(decided: &[Option<Decision>]) -> impl Iterator<Item = usize> + '_ {
    decided
        .iter()
        .enumerate()
        .filter(|(_, d)| d.is_none())
        .map(|(i, _)| i)
}

/// The order's items at their prices, or why it cannot be priced.
fn priced(
    p: &Pending,
    offers: &HashMap<i64, Offer>,
) -> Result<(Vec<OrderItem>, i64), Vec<FieldError>> {
    let missing: Vec<FieldError> = p
        .lines
        .iter()
        .filter(|l| !offers.contains_key(&l.product_id))
        .map(|l| FieldError::new(format!("items[{}].productId", l.index), "no such product"))
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut total: i64 = 0;
    let items = p
        .lines
        .iter()
        .map(|l| {
            let unit_price = offers[&l.product_id].price;
            total = unit_price
                .checked_mul(l.quantity)
                .and_then(|t| t.checked_add(total))
                .ok_or_else(|| vec![FieldError::new("items", "order total is too large")])?;
            Ok(OrderItem {
                product_id: l.product_id,
                quantity: l.quantity,
                unit_price,
            })
        })
        .collect::<Result<Vec<_>, Vec<FieldError>>>()?;
    Ok((items, total))
}

/// The transaction of the `claims` (requests that will store an outcome): stock, orders,
/// events and outcomes; decisions come back in the order of `claims`. It is three round
/// trips when the stock read before it still holds: `START TRANSACTION` with the stock's
/// guarded writes and the orders, then the events and outcomes with `COMMIT`. When a guarded
/// write finds less than the read said, that attempt is rolled back and the stock is taken
/// round by round (`take_stock`). On an error the caller rolls the transaction back.
async fn store(
    tx: &mut ScriptTx<'_>,
    claims: &[&Pending],
    offers: &HashMap<i64, Offer>,
    expired: &[idempotency::KeyOf<'_>],
    retention: Duration,
    step: Option<i64>,
    until: Instant,
) -> Result<Outcome, BatchError> {
    let demands: Vec<&[Line]> = claims.iter().map(|&p| p.lines.as_slice()).collect();
    let available: Units = offers.iter().map(|(id, o)| (*id, o.available)).collect();
    let now = Utc::now().trunc_subsecs(6);

    let mut first = Script::default();
    idempotency::push_delete_expired(&mut first, expired);
    let allocation = allocate(&demands, &available);
    let takes: Vec<(i64, i64)> = allocation.take.iter().map(|(p, n)| (*p, *n)).collect();
    // One guarded write for every product of the batch (none if no order fits).
    let took_at = first.len();
    stock::push_takes(&mut first, &takes);
    let inserted_at = first.len();
    let orders = orders_of(claims, offers, &allocation);
    push_orders(&mut first, claims, &orders, now, step);
    let results = bounded_script(until, tx.begin(&first))
        .await
        .map_err(|e| e.error)?;
    let taken = takes.is_empty() || stock::took_all(&results[took_at], takes.len());
    let (allocation, orders, order_ids) = if taken {
        let ids = inserted_ids(&results[inserted_at..], orders.len(), step)?;
        (allocation, orders, ids)
    } else {
        // Another transaction took units since the read: start again, round by round.
        bounded(until, async {
            tx.rollback().await;
            Ok(())
        })
        .await?;
        metrics::counter!(names::STOCK_LOCK_CONFLICTS).increment(1);
        let mut restart = Script::default();
        idempotency::push_delete_expired(&mut restart, expired);
        bounded_script(until, tx.begin(&restart))
            .await
            .map_err(|e| e.error)?;
        let allocation = take_stock(tx, &demands, available, until).await?;
        let orders = orders_of(claims, offers, &allocation);
        let mut script = Script::default();
        push_orders(&mut script, claims, &orders, now, step);
        let results = bounded_script(until, tx.run(&script))
            .await
            .map_err(|e| e.error)?;
        let ids = inserted_ids(&results, orders.len(), step)?;
        (allocation, orders, ids)
    };

    let mut decisions: Vec<Option<Decision>> = vec![None; claims.len()];
    let mut events = Vec::with_capacity(orders.len());
    for ((c, items, total), &order_id) in orders.into_iter().zip(&order_ids) {
        let p = claims[c];
        let order = Order {
            id: order_id,
            status: OrderStatus::Created,
            items,
            total_amount: total,
            created_at: now,
            updated_at: now,
        };
        events.push(NewEvent {
            event_type: EventType::OrderCreated,
            aggregate_id: order_id,
            payload: event_payload(EventType::OrderCreated, p.user_id, &order).to_string(),
            trace: p.trace.clone(),
        });
        let body = serde_json::to_string(&order).expect("order serializes");
        decisions[c] = Some(Decision::Created { order_id, body });
    }
    for (c, line) in allocation.short_on.iter().enumerate() {
        if let Some(line) = line {
            let (_, body) = refusal(
                ErrorCode::OutOfStock,
                format!("not enough stock for product {}", line.product_id),
                vec![FieldError::new(
                    format!("items[{}].quantity", line.index),
                    "exceeds the available stock",
                )],
            );
            decisions[c] = Some(Decision::OutOfStock { body });
        }
    }
    let decisions: Vec<Decision> = decisions
        .into_iter()
        .map(|d| d.expect("every claim is decided"))
        .collect();

    let mut last = Script::default();
    let job_id = queue::new_job_id();
    outbox::push_append(&mut last, &events, &job_id);
    let appended = last.len();
    let mut outcomes: Vec<idempotency::Outcome> = claims
        .iter()
        .zip(&decisions)
        .map(|(&p, d)| {
            let (status, body, order_id) = match d {
                Decision::Created { order_id, body } => (201, body.as_str(), Some(*order_id)),
                Decision::OutOfStock { body } => (409, body.as_str(), None),
                _ => unreachable!("a claim is created or out of stock"),
            };
            idempotency::Outcome {
                user_id: p.user_id,
                key: &p.key,
                fingerprint: &p.fingerprint.current,
                status,
                body,
                order_id,
            }
        })
        .collect();
    idempotency::push_store(&mut last, &mut outcomes, retention);
    let events = (!events.is_empty()).then(|| Committed {
        job_id,
        rows: events.len(),
        trace: events[0].trace.clone(),
    });
    if let Err(e) = bounded_script(until, tx.commit(&last)).await {
        return Err(match e.error {
            // The server answered: it stopped at the failing statement, before the COMMIT.
            sqlx::Error::Database(_) if e.statement == appended => match StoreError::of(e.error) {
                StoreError::Taken => BatchError::KeyTaken,
                StoreError::InFlight => BatchError::KeyInFlight,
                StoreError::Db(e) => BatchError::Db(e),
            },
            error @ sqlx::Error::Database(_) => BatchError::Db(error),
            // No answer: the COMMIT may have run.
            error => BatchError::InDoubt(Box::new(InDoubt {
                error,
                outcome: Outcome {
                    decisions,
                    events,
                    products: Vec::new(),
                },
                claims: Vec::new(),
            })),
        });
    }

    let created = order_ids.len();
    metrics::counter!(names::ORDERS_CREATED).increment(created as u64);
    let short = claims.len() - created;
    if short > 0 {
        metrics::counter!(names::ORDERS_REJECTED, "reason" => "OUT_OF_STOCK")
            .increment(short as u64);
    }
    Ok(Outcome {
        decisions,
        events,
        products: Vec::new(),
    })
}

/// The orders the allocation lets through: claim index, items, total.
fn orders_of(
    claims: &[&Pending],
    offers: &HashMap<i64, Offer>,
    allocation: &Allocation,
) -> Vec<(usize, Vec<OrderItem>, i64)> {
    (0..claims.len())
        .filter(|&c| allocation.fits(c))
        .map(|c| {
            let (items, total) = priced(claims[c], offers).expect("claims are priced");
            (c, items, total)
        })
        .collect()
}

/// Adds the INSERTs of `orders` (claim index, items, total) to `script`: one per table for
/// the whole batch where the server numbers a multi-row INSERT's rows consecutively
/// (`step`), two per order otherwise.
fn push_orders(
    script: &mut Script,
    claims: &[&Pending],
    orders: &[(usize, Vec<OrderItem>, i64)],
    now: chrono::DateTime<Utc>,
    step: Option<i64>,
) {
    let rows: Vec<repo::NewOrder> = orders
        .iter()
        .map(|(c, items, total)| repo::NewOrder {
            user_id: claims[*c].user_id,
            total: *total,
            items,
        })
        .collect();
    match step {
        Some(step) => repo::push_batch_inserts(script, &rows, now, step),
        None => repo::push_inserts(script, &rows, now),
    }
}

/// The ids of the `n` orders `push_orders` added, from its statements' results.
fn inserted_ids(
    results: &[MySqlQueryResult],
    n: usize,
    step: Option<i64>,
) -> Result<Vec<i64>, sqlx::Error> {
    match step {
        Some(step) => repo::batch_inserted_ids(results, n, step),
        None => Ok(repo::inserted_ids(results)),
    }
}

/// Takes the units the orders that fit need, allocating in arrival order, in an open
/// transaction. A guarded write that finds fewer units than allocated (another transaction
/// took some) makes this transaction read what is left — its own takes included — and
/// allocate again, giving back what it took for orders that no longer fit.
async fn take_stock(
    tx: &mut ScriptTx<'_>,
    orders: &[&[Line]],
    mut available: Units,
    until: Instant,
) -> Result<Allocation, sqlx::Error> {
    let mut held = Units::new();
    let mut round = 0;
    loop {
        let allocation = allocate(orders, &available);
        let changes: Vec<(i64, i64)> = allocation
            .take
            .keys()
            .chain(held.keys())
            .copied()
            .collect::<std::collections::BTreeSet<i64>>()
            .into_iter()
            .map(|p| {
                let want = allocation.take.get(&p).copied().unwrap_or(0);
                (p, want - held.get(&p).copied().unwrap_or(0))
            })
            .filter(|&(_, change)| change != 0)
            .collect();
        let mut script = Script::default();
        stock::push_changes(&mut script, &changes);
        let results = bounded_script(until, tx.run(&script))
            .await
            .map_err(|e| e.error)?;
        let mut short = Vec::new();
        for (&(p, change), ok) in changes.iter().zip(stock::applied(&results)) {
            if ok {
                *held.entry(p).or_default() += change;
            } else {
                short.push(p);
            }
        }
        if short.is_empty() {
            return Ok(allocation);
        }
        metrics::counter!(names::STOCK_LOCK_CONFLICTS).increment(short.len() as u64);
        metrics::counter!(names::STOCK_LOCK_RETRIES).increment(1);
        round += 1;
        let seen = bounded(
            until,
            stock::quantities(tx.conn(), &short, round >= LOCK_AFTER_ROUNDS),
        )
        .await?;
        for p in short {
            let left = seen.get(&p).copied().unwrap_or(0);
            available.insert(p, left + held.get(&p).copied().unwrap_or(0));
        }
    }
}
