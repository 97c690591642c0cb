//! Placing orders: the order and its outbox event in ONE transaction, then
//! an immediate confirmed publish. If the broker is down the order stands
//! and the relay publishes the event later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::r2d2::PooledConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, PgConnection};
use serde::Serialize;
use uuid::Uuid;

use super::relay;
use crate::db::models::{NewOrderRow, NewOutboxRow};
use crate::db::{orders, outbox, users, PgPool};
use crate::domain::{
    Currency, Money, NewOrder, OrderCreated, OrderSnapshot, UserId, ORDER_CREATED,
};
use crate::error::InvalidInput;
use crate::fanout::fan_out;
use crate::messaging::publisher::Publisher;

/// A committed order, as `place-order --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct Placed {
    pub order_id: i64,
    pub user_id: i64,
    pub amount: Money,
    pub currency: Currency,
    pub event_id: Uuid,
    pub published: bool,
}

/// Commits the order and its outbox event; returns them and the outbox id.
/// An unknown user is `InvalidInput`, and nothing is written.
pub fn commit(conn: &mut PgConnection, order: &NewOrder) -> anyhow::Result<(Placed, i64)> {
    conn.transaction::<_, anyhow::Error, _>(|conn| {
        let new_order = NewOrderRow {
            user_id: order.user_id.0,
            amount_minor: order.amount.minor_units(),
            currency: order.currency.as_str(),
        };
        // The foreign key is the user check: one round trip less per order.
        let row = orders::insert(conn, &new_order).map_err(|error| match error {
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                anyhow::Error::from(InvalidInput::new(format!("unknown user {}", order.user_id)))
            }
            other => other.into(),
        })?;
        let snapshot = OrderSnapshot {
            id: row.id,
            user_id: row.user_id,
            amount: order.amount,
            currency: order.currency.clone(),
            items: Vec::new(),
        };
        let event = OrderCreated::new(snapshot, row.created_at);
        let payload = serde_json::to_value(&event)?;
        let outbox_row = outbox::insert(
            conn,
            &NewOutboxRow {
                event_id: event.event_id,
                order_id: row.id,
                routing_key: ORDER_CREATED,
                payload: &payload,
            },
        )?;
        let placed = Placed {
            order_id: row.id,
            user_id: row.user_id,
            amount: order.amount,
            currency: order.currency.clone(),
            event_id: event.event_id,
            published: false,
        };
        Ok((placed, outbox_row.id))
    })
    .with_context(|| format!("placing an order for user {}", order.user_id))
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

/// Publishes committed orders' events and marks them `published`. A failed
/// publish is logged and drops the publisher (its channel is no longer
/// trustworthy); the orders stand either way and the relay publishes them.
fn publish(
    conn: &mut PgConnection,
    publisher: &mut Option<Publisher>,
    committed: &mut [(Placed, i64)],
) {
    let Some(active) = publisher else { return };
    let outbox_ids: Vec<i64> = committed.iter().map(|(_, outbox_id)| *outbox_id).collect();
    match relay::publish_committed(conn, active, &outbox_ids) {
        Ok(()) => committed
            .iter_mut()
            .for_each(|(placed, _)| placed.published = true),
        Err(error) => {
            for (placed, _) in committed.iter() {
                tracing::warn!(
                    order_id = placed.order_id,
                    event_id = %placed.event_id,
                    "order committed but not published ({error:#}); the relay will publish it"
                );
            }
            if let Some(broken) = publisher.take() {
                broken.close();
            }
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
    pending: Vec<(Placed, i64)>,
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

    /// Publishes the pending orders under one confirm wait; returns how
    /// many were published.
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
    pub elapsed_secs: f64,
    pub orders_per_sec: f64,
}

/// Which user each bulk order goes to.
pub enum Users {
    One(UserId),
    /// Round-robin over every existing user.
    All,
}

/// What `place-order --count` places.
pub struct Bulk {
    pub users: Users,
    /// Every order's amount; `None` spreads them over 5.00 to 204.99.
    pub amount: Option<Money>,
    pub currency: Currency,
    pub count: u64,
    /// Threads placing at once, each with its own connection and publisher.
    pub concurrency: u16,
}

/// Places `bulk.count` orders from `bulk.concurrency` threads, each with its
/// own database connection and publisher. `progress` is called once per
/// order. A failed order is counted and the others go on; only when every
/// order failed (or none did and a thread could not start) is it an error.
pub fn place_many(
    pool: &PgPool,
    connect_publisher: &(dyn Fn() -> anyhow::Result<Publisher> + Sync),
    bulk: &Bulk,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<BulkSummary> {
    let user_ids = bulk_users(pool, &bulk.users)?;
    let published = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
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
                let order = NewOrder {
                    user_id: UserId(user_ids[(n % user_ids.len() as u64) as usize]),
                    amount: bulk.amount.unwrap_or_else(|| varied_amount(n)),
                    currency: bulk.currency.clone(),
                };
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
                    Ok(committed) => window.pending.push(committed),
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
    if let Some(error) = first_error.into_inner().unwrap() {
        if failed == count || failed == 0 {
            return Err(error);
        }
        tracing::error!("{failed} of {count} orders failed, the first with: {error:#}");
    }
    let placed = count - failed;
    Ok(BulkSummary {
        placed,
        published: published.into_inner(),
        failed,
        elapsed_secs: elapsed,
        orders_per_sec: if elapsed > 0.0 {
            placed as f64 / elapsed
        } else {
            0.0
        },
    })
}

/// The ids bulk orders go to: the one user (which must exist), or all.
fn bulk_users(pool: &PgPool, which: &Users) -> anyhow::Result<Vec<i64>> {
    let mut conn = pool.get().context("getting a database connection")?;
    let user_ids: Vec<i64> = match which {
        Users::One(id) => {
            if users::find(&mut conn, id.0)?.is_none() {
                return Err(InvalidInput::new(format!("unknown user {id}")).into());
            }
            vec![id.0]
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
