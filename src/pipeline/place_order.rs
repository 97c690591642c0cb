//! Placing orders: the order and its outbox event in ONE transaction, then
//! an immediate confirmed publish. If the broker is down the order stands
//! and the relay publishes the event later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::SubsecRound;
use diesel::r2d2::PooledConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection};
use serde::Serialize;
use uuid::Uuid;

use super::products::{self, Taken};
use super::relay;
use crate::cache::ProductCache;
use crate::db::models::{NewOrderRow, OrderItem};
use crate::db::{self, order_items, orders, outbox, users, PgPool};
use crate::domain::events::{ItemSnapshot, ProductSnapshot};
use crate::domain::{
    Currency, Event, IdempotencyKey, Money, NewOrder, OrderContents, OrderCreated, OrderId,
    OrderItems, OrderSnapshot, ProductId, StockLow, UserId, ORDER_CREATED,
};
use crate::error::{refused, InvalidInput, NotFound, Refused};
use crate::fanout::fan_out;
use crate::messaging::publisher::Publisher;

/// A committed order, as `place-order --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Placed {
    pub order_id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
    pub currency: Currency,
    pub event_id: Uuid,
    pub published: bool,
    /// The products ordered, for an order of products.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemSnapshot>,
    /// True when the idempotency key had placed this order before: it is
    /// that first order, and nothing was written now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Products whose stock this order took: the caller drops their
    /// product-cache entries ([`crate::cache::ProductCache::invalidate`])
    /// once the order is committed.
    #[serde(skip)]
    pub stock_changed: Vec<ProductId>,
}

/// Commits the order with its events — `order.created`, and `stock.low`
/// for each product whose threshold it crossed — taking its items from
/// stock in the same transaction. Returns the order and its outbox ids.
/// Unknown user or product: [`NotFound`]; items in several currencies:
/// [`InvalidInput`]; not enough stock: [`Refused`](crate::error::Refused);
/// nothing is written either way. An idempotency key placed before returns
/// that first order, `replayed`, and writes nothing.
///
/// The commit wakes no LISTENer: the caller publishes the events, which
/// wakes the live feed, and calls [`announce`] if that failed — once for
/// all the orders it committed.
pub fn commit(conn: &mut PgConnection, order: &NewOrder) -> anyhow::Result<(Placed, Vec<i64>)> {
    if let (OrderContents::Amount { amount, currency }, None) =
        (&order.contents, &order.idempotency_key)
    {
        return insert_amount(conn, order.user_id, *amount, currency)
            .with_context(|| format!("placing an order for user {}", order.user_id));
    }
    let result = conn.transaction::<_, anyhow::Error, _>(|conn| {
        if let Some(key) = &order.idempotency_key {
            if let Some(first) = replay(conn, key, order)? {
                return Ok((first, Vec::new()));
            }
        }
        insert(conn, order)
    });
    match (result, &order.idempotency_key) {
        // Another placer committed the same key while this one was
        // inserting: theirs is the first order.
        (Err(error), Some(key)) if is_key_conflict(&error) => replay(conn, key, order)?
            .map(|first| (first, Vec::new()))
            .ok_or(error),
        (result, _) => result,
    }
    .with_context(|| format!("placing an order for user {}", order.user_id))
}

/// An order for an amount alone, without idempotency key: nothing to read
/// or check first, so the order and its `order.created` go in with ONE
/// statement, which commits on its own — one round trip instead of four
/// (BEGIN, two inserts, COMMIT). The event is built here with the order's
/// time (this clock, to the microsecond, as the row stores it) and its id
/// filled in by the statement.
fn insert_amount(
    conn: &mut PgConnection,
    user_id: UserId,
    amount: Money,
    currency: &Currency,
) -> anyhow::Result<(Placed, Vec<i64>)> {
    let created_at = chrono::Utc::now().trunc_subsecs(6);
    let snapshot = OrderSnapshot {
        id: OrderId(0),
        user_id,
        amount,
        currency: currency.clone(),
        items: Vec::new(),
    };
    let event = Event::OrderCreated(OrderCreated::new(snapshot, created_at));
    let row = NewOrderRow {
        user_id,
        amount_minor: amount.minor_units(),
        currency: currency.as_str(),
        idempotency_key: None,
    };
    let (order_id, outbox_id) =
        orders::insert_with_event(conn, &row, created_at, &event).map_err(|error| match error {
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                unknown_user(user_id)
            }
            other => other.into(),
        })?;
    let placed = Placed {
        order_id,
        user_id,
        amount,
        currency: currency.clone(),
        event_id: event.event_id(),
        published: false,
        items: Vec::new(),
        replayed: false,
        stock_changed: Vec::new(),
    };
    Ok((placed, vec![outbox_id]))
}

fn insert(conn: &mut PgConnection, order: &NewOrder) -> anyhow::Result<(Placed, Vec<i64>)> {
    let (amount, currency, taken) = match &order.contents {
        OrderContents::Amount { amount, currency } => (*amount, currency.clone(), Vec::new()),
        OrderContents::Items(items) => {
            // Checked first so an unknown user is invalid input even when
            // the stock is short.
            if users::find(conn, order.user_id)?.is_none() {
                return Err(unknown_user(order.user_id));
            }
            let (taken, currency) = products::take_stock(conn, items)?;
            (total(&taken)?, currency, taken)
        }
    };
    let new_order = NewOrderRow {
        user_id: order.user_id,
        amount_minor: amount.minor_units(),
        currency: currency.as_str(),
        idempotency_key: order.idempotency_key.as_ref().map(IdempotencyKey::as_str),
    };
    // The foreign key is the user check: one round trip less per order.
    let row = orders::insert(conn, &new_order).map_err(|error| match error {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            unknown_user(order.user_id)
        }
        other => other.into(),
    })?;
    let lines: Vec<OrderItem> = taken
        .iter()
        .map(|take| OrderItem {
            order_id: row.id,
            product_id: take.product.id,
            quantity: take.quantity,
            unit_price_minor: take.product.price_minor,
        })
        .collect();
    if !lines.is_empty() {
        order_items::insert_all(conn, &lines)?;
    }
    let items: Vec<ItemSnapshot> = lines
        .iter()
        .map(|line| ItemSnapshot {
            product_id: line.product_id,
            quantity: line.quantity,
        })
        .collect();
    let snapshot = OrderSnapshot {
        id: row.id,
        user_id: row.user_id,
        amount,
        currency: currency.clone(),
        items: items.clone(),
    };
    let event = OrderCreated::new(snapshot, row.created_at);
    let mut outbox_ids = vec![outbox::insert_event(conn, &Event::OrderCreated(event.clone()))?.id];
    for take in taken.iter().filter(|take| take.crossed_threshold()) {
        let product = ProductSnapshot {
            id: take.product.id,
            name: take.product.name.clone(),
            stock: take.product.stock,
            low_stock_threshold: take.product.low_stock_threshold,
        };
        let low = StockLow::new(product, row.id, row.created_at);
        outbox_ids.push(outbox::insert_event(conn, &Event::StockLow(low))?.id);
    }
    let placed = Placed {
        order_id: row.id,
        user_id: row.user_id,
        amount,
        currency,
        event_id: event.event_id,
        published: false,
        items,
        replayed: false,
        stock_changed: taken.iter().map(|take| take.product.id).collect(),
    };
    Ok((placed, outbox_ids))
}

/// The order an idempotency key placed, if any, as it was placed. The key
/// sent with another user or other contents is [`InvalidInput`]: a client
/// reusing a key by mistake must not get someone else's order back.
fn replay(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    order: &NewOrder,
) -> anyhow::Result<Option<Placed>> {
    let Some(first) = first_placed(conn, key)? else {
        return Ok(None);
    };
    if !is_same_request(order, &first) {
        return Err(InvalidInput::new(format!(
            "idempotency key {:?} was used for order {} with another user or other contents",
            key.as_str(),
            first.order_id
        ))
        .into());
    }
    Ok(Some(first))
}

fn is_same_request(order: &NewOrder, first: &Placed) -> bool {
    order.user_id == first.user_id
        && match &order.contents {
            OrderContents::Amount { amount, currency } => {
                first.items.is_empty() && *amount == first.amount && *currency == first.currency
            }
            OrderContents::Items(items) => items
                .lines()
                .iter()
                .map(|line| (line.product_id, line.quantity.get()))
                .eq(first
                    .items
                    .iter()
                    .map(|item| (item.product_id, item.quantity))),
        }
}

fn first_placed(conn: &mut PgConnection, key: &IdempotencyKey) -> anyhow::Result<Option<Placed>> {
    let Some(order) = orders::find_by_idempotency_key(conn, key.as_str())? else {
        return Ok(None);
    };
    let items = order_items::for_order(conn, order.id)?
        .into_iter()
        .map(|item| ItemSnapshot {
            product_id: item.product_id,
            quantity: item.quantity,
        })
        .collect();
    let created = outbox::for_order(conn, order.id)?
        .into_iter()
        .find(|row| row.routing_key == ORDER_CREATED)
        .with_context(|| format!("order {} has no order.created event", order.id))?;
    Ok(Some(Placed {
        order_id: order.id,
        user_id: order.user_id,
        amount: Money::from_minor_units(order.amount_minor)
            .with_context(|| format!("order {} has an invalid amount", order.id))?,
        currency: order.currency.clone(),
        event_id: created.event_id,
        published: created.published_at.is_some(),
        items,
        replayed: true,
        stock_changed: Vec::new(),
    }))
}

/// Wakes the LISTENers of committed orders whose publish failed (or had no
/// broker to go to): the live feed shows them, and a relay publishes their
/// events. (Before the publish, it would send a relay after the same
/// rows; a publish that succeeded woke the feed itself.) One wake-up covers
/// every order committed before it.
pub fn announce(conn: &mut PgConnection) {
    db::notify(conn, &[outbox::CHANNEL, db::feed::CHANNEL]);
}

fn is_key_conflict(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<DieselError>(),
        Some(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some(orders::IDEMPOTENCY_KEY_CONSTRAINT)
    )
}

/// Σ unit price × quantity, at the prices the updates returned.
fn total(taken: &[Taken]) -> anyhow::Result<Money> {
    taken
        .iter()
        .try_fold(0i64, |sum, take| {
            take.product
                .price_minor
                .checked_mul(i64::from(take.quantity))
                .and_then(|line| sum.checked_add(line))
        })
        .and_then(Money::from_minor_units)
        .ok_or_else(|| InvalidInput::new("the order's total is too large").into())
}

fn unknown_user(user_id: UserId) -> anyhow::Error {
    NotFound::new(format!("unknown user {user_id}")).into()
}

/// Commits the order, then publishes its event if a publisher is at hand.
/// A failed publish is logged and drops the publisher (its channel is no
/// longer trustworthy); the order is committed either way.
pub fn place(
    conn: &mut PgConnection,
    publisher: &mut Option<Publisher>,
    order: &NewOrder,
) -> anyhow::Result<Placed> {
    let mut committed = [commit(conn, order)?];
    publish(conn, publisher, &mut committed);
    let [(placed, _)] = committed;
    Ok(placed)
}

/// Publishes committed orders' events and marks them `published`, which
/// wakes the live feed. A failed publish is logged and drops the publisher
/// (its channel is no longer trustworthy); the orders stand either way,
/// and a failed or impossible publish [`announce`]s them to the relays.
fn publish(
    conn: &mut PgConnection,
    publisher: &mut Option<Publisher>,
    committed: &mut [(Placed, Vec<i64>)],
) {
    let Some(active) = publisher else {
        announce(conn);
        return;
    };
    let outbox_ids: Vec<i64> = committed
        .iter()
        .flat_map(|(_, outbox_ids)| outbox_ids.iter().copied())
        .collect();
    if outbox_ids.is_empty() {
        // Replays only: their events were published (or are the relay's).
        return;
    }
    match relay::publish_committed(conn, active, &outbox_ids) {
        // A replayed order keeps what its first placing recorded.
        Ok(()) => committed
            .iter_mut()
            .filter(|(_, outbox_ids)| !outbox_ids.is_empty())
            .for_each(|(placed, _)| placed.published = true),
        Err(error) => {
            for (placed, _) in committed.iter().filter(|(placed, _)| !placed.replayed) {
                tracing::warn!(
                    order_id = placed.order_id.0,
                    event_id = %placed.event_id,
                    "order committed but not published ({error:#}); the relay will publish it"
                );
            }
            if let Some(broken) = publisher.take() {
                broken.close();
            }
            announce(conn);
        }
    }
}

/// `place-order --count` publishes its orders in windows of this many: one
/// publisher-confirm wait per window instead of per order.
const PUBLISH_WINDOW: usize = 64;

/// One bulk thread's committed-but-not-yet-published orders and its
/// publisher, reconnected now and then after the broker was lost.
struct Window<'a> {
    connect: &'a (dyn Fn() -> anyhow::Result<Publisher> + Sync),
    publisher: Option<Publisher>,
    lost_at: Option<Instant>,
    pending: Vec<(Placed, Vec<i64>)>,
}

impl<'a> Window<'a> {
    fn new(connect: &'a (dyn Fn() -> anyhow::Result<Publisher> + Sync)) -> Self {
        let publisher = connect_or_warn(connect);
        let lost_at = publisher.is_none().then(Instant::now);
        Self {
            connect,
            publisher,
            lost_at,
            pending: Vec::with_capacity(PUBLISH_WINDOW),
        }
    }

    /// Publishes the pending orders under one confirm wait (announcing
    /// them if that failed); returns how many were published.
    fn flush(&mut self, conn: &mut PgConnection) -> u64 {
        if self.pending.is_empty() {
            return 0;
        }
        if self.publisher.is_none()
            && self
                .lost_at
                .is_some_and(|at| at.elapsed() > Duration::from_secs(5))
        {
            self.publisher = connect_or_warn(self.connect);
            self.lost_at = None;
        }
        let had_publisher = self.publisher.is_some();
        publish(conn, &mut self.publisher, &mut self.pending);
        if had_publisher && self.publisher.is_none() {
            self.lost_at = Some(Instant::now());
        }
        let published = self
            .pending
            .iter()
            .filter(|(placed, _)| placed.published)
            .count();
        self.pending.clear();
        published as u64
    }

    fn close(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            publisher.close();
        }
    }
}

/// What `place-order --count` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BulkSummary {
    pub placed: u64,
    pub published: u64,
    pub failed: u64,
    /// Orders a business rule refused (not enough stock): nothing written.
    pub refused: u64,
    pub elapsed_secs: f64,
    pub orders_per_sec: f64,
}

/// Which user each bulk order goes to.
pub enum Users {
    One(UserId),
    /// Round-robin over every existing user.
    All,
}

/// What each bulk order is for.
pub enum BulkContents {
    Amounts {
        /// Every order's amount; `None` spreads them over 5.00 to 204.99.
        amount: Option<Money>,
        currency: Currency,
    },
    /// Every order takes these products from stock.
    Items(OrderItems),
}

/// What `place-order --count` places.
pub struct Bulk {
    pub users: Users,
    pub contents: BulkContents,
    pub count: u64,
    /// Threads placing at once, each with its own connection and publisher.
    pub concurrency: u16,
    /// Product entries to drop after each order that took stock.
    pub product_cache: Option<ProductCache>,
}

/// Places `bulk.count` orders from `bulk.concurrency` threads, each with its
/// own database connection and publisher. `progress` is called once per
/// order. A failed or refused order is counted and the others go on. When
/// none was placed it is an error: the first failure's, else (every order
/// refused, e.g. sold out) a [`Refused`](crate::error::Refused).
pub fn place_many(
    pool: &PgPool,
    connect_publisher: &(dyn Fn() -> anyhow::Result<Publisher> + Sync),
    bulk: &Bulk,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<BulkSummary> {
    let user_ids = bulk_users(pool, &bulk.users)?;
    let published = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let refusals = AtomicU64::new(0);
    let first_refusal: Mutex<Option<String>> = Mutex::new(None);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let count = bulk.count;
    let timing = fan_out(
        bulk.concurrency,
        count,
        &|| Ok(Window::new(connect_publisher)),
        &|window, items| {
            // None after a failure: the connection may be broken (a server
            // restart), so it goes back to the pool, which drops broken
            // ones, and the next order takes another.
            let mut conn: Option<PooledConnection<_>> = None;
            while let Some(n) = items.take() {
                let user_id = user_ids[(n % user_ids.len() as u64) as usize];
                let order = match &bulk.contents {
                    BulkContents::Amounts { amount, currency } => NewOrder::for_amount(
                        user_id,
                        amount.unwrap_or_else(|| varied_amount(n)),
                        currency.clone(),
                    ),
                    BulkContents::Items(items) => NewOrder::for_items(user_id, items.clone()),
                };
                // Announced with its window, one wake-up for all of it.
                let result = match conn.as_mut() {
                    Some(connection) => commit(connection, &order),
                    None => match pool.get() {
                        Ok(connection) => commit(conn.insert(connection), &order),
                        Err(error) => {
                            Err(anyhow::Error::from(error).context("getting a database connection"))
                        }
                    },
                };
                match result {
                    Ok(committed) => {
                        if let Some(cache) = &bulk.product_cache {
                            cache.invalidate(&committed.0.stock_changed);
                        }
                        window.pending.push(committed);
                    }
                    Err(error) if refused(&error).is_some() => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        first_refusal
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| refused(&error).unwrap().to_string());
                    }
                    Err(error) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(error);
                        conn = None;
                    }
                }
                progress(n + 1);
                if let Some(connection) = conn
                    .as_mut()
                    .filter(|_| window.pending.len() >= PUBLISH_WINDOW)
                {
                    published.fetch_add(window.flush(connection), Ordering::Relaxed);
                }
            }
            if let Some(mut connection) = conn.or_else(|| pool.get().ok()) {
                published.fetch_add(window.flush(&mut connection), Ordering::Relaxed);
            }
            window.close();
            Ok(())
        },
    )?;
    let elapsed = timing.elapsed.as_secs_f64();
    let failed = failed.into_inner();
    let refused_count = refusals.into_inner();
    let placed = count - failed - refused_count;
    if let Some(error) = first_error.into_inner().unwrap() {
        if placed == 0 {
            return Err(error);
        }
        tracing::error!("{failed} of {count} orders failed, the first with: {error:#}");
    }
    if let Some(refusal) = first_refusal.into_inner().unwrap() {
        if placed == 0 {
            return Err(Refused::new(format!(
                "all {count} orders were refused, the first: {refusal}"
            ))
            .into());
        }
        tracing::warn!("{refused_count} of {count} orders were refused, the first: {refusal}");
    }
    Ok(BulkSummary {
        placed,
        published: published.into_inner(),
        failed,
        refused: refused_count,
        elapsed_secs: elapsed,
        orders_per_sec: if elapsed > 0.0 {
            placed as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// The ids bulk orders go to: the one user (which must exist), or all.
fn bulk_users(pool: &PgPool, which: &Users) -> anyhow::Result<Vec<UserId>> {
    let mut conn = pool.get().context("getting a database connection")?;
    let user_ids: Vec<UserId> = match which {
        Users::One(id) => {
            if users::find(&mut conn, *id)?.is_none() {
                return Err(NotFound::new(format!("unknown user {id}")).into());
            }
            vec![*id]
        }
        Users::All => users::all_ids(&mut conn)?,
    };
    if user_ids.is_empty() {
        return Err(InvalidInput::new("there are no users: run `ordctl seed` first").into());
    }
    Ok(user_ids)
}

/// The `n`th of a spread of demo amounts, 5.00 to 204.99.
fn varied_amount(n: u64) -> Money {
    Money::from_minor_units(500 + (n as i64 * 1_337) % 20_000).expect("a positive amount")
}

/// A publisher, or `None` with a warning: orders are committed either way.
pub fn connect_or_warn(
    connect: &(dyn Fn() -> anyhow::Result<Publisher> + Sync),
) -> Option<Publisher> {
    connect()
        .map_err(|error| tracing::warn!("broker unavailable ({error:#}); orders are committed and the relay will publish them"))
        .ok()
}
