//! An order's status moves (`pending` → `paid` → `shipped` → `delivered`,
//! or `pending` → `cancelled`), for the payments consumer and for admins.
//! Each move locks the order row first and writes its event to the outbox
//! in the same transaction; the transaction is the caller's (a consumer's,
//! with its delivery-log row), nested as a savepoint, so a failed move
//! writes nothing.

use anyhow::Context;
use diesel::{Connection, PgConnection};
use serde::Serialize;
use uuid::Uuid;

use crate::db::models::{Order, OrderItem};
use crate::db::{self, order_items, orders, outbox, products};
use crate::domain::events::ItemSnapshot;
use crate::domain::{
    Event, Money, OrderCancelled, OrderId, OrderSnapshot, OrderStatus, OrderStatusUpdated,
    ProductId,
};
use crate::error::{InvalidInput, NotFound};

/// A move the order's current status does not allow. `set_status` turns it
/// into [`InvalidInput`]; consumers (`mark_paid`, `cancel`) can downcast it
/// to tell "already moved on" from a failure.
#[derive(Debug, thiserror::Error)]
#[error("order {order_id} is {from}: it cannot become {to}")]
pub struct IllegalMove {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
}

/// A cancelled order: its event and the products whose stock it released
/// (the caller drops their entries with [`ProductCache::invalidate`] after
/// the commit).
#[derive(Clone, Debug)]
pub struct Cancelled {
    pub order: Order,
    pub from: OrderStatus,
    pub event: OrderCancelled,
    /// The outbox row of `event`, to publish it right after commit.
    pub outbox_id: i64,
    pub released: Vec<ProductId>,
}

/// An admin's status move, as `order set-status --json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct StatusChanged {
    pub order_id: OrderId,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The `order.status_updated` (or, into `cancelled`, `order.cancelled`) event.
    pub event_id: Uuid,
    pub routing_key: &'static str,
    /// Whether the event was published right after commit (else the relay
    /// publishes it).
    pub published: bool,
    #[serde(skip)]
    pub outbox_id: i64,
    /// Products whose stock a cancellation released.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<ProductId>,
}

/// `pending` → `paid`, for the payments consumer, which writes
/// `payment.succeeded` itself. Returns the updated order. An order that is
/// not pending is an [`IllegalMove`]; an unknown one is [`NotFound`].
pub fn mark_paid(conn: &mut PgConnection, order_id: OrderId) -> anyhow::Result<Order> {
    conn.transaction::<_, anyhow::Error, _>(|conn| {
        let order = lock(conn, order_id)?;
        check_move(&order, OrderStatus::Paid)?;
        Ok(orders::set_status(conn, order.id, OrderStatus::Paid)?)
    })
    .with_context(|| format!("marking order {order_id} paid"))
}

/// [`mark_paid`] for orders the caller has locked (`db::orders::lock` or
/// `lock_many`) in its own transaction, in one statement.
pub fn mark_locked_paid(conn: &mut PgConnection, locked: &[&Order]) -> anyhow::Result<()> {
    for order in locked {
        check_move(order, OrderStatus::Paid)?;
    }
    let ids: Vec<OrderId> = locked.iter().map(|order| order.id).collect();
    orders::set_status_many(conn, &ids, OrderStatus::Paid)?;
    Ok(())
}

/// `pending` → `cancelled`: releases the stock of its items (in product-id
/// order, as orders take it, so the two never deadlock) and writes
/// `order.cancelled` with `reason`. An order that is not pending is an
/// [`IllegalMove`]; an unknown one is [`NotFound`].
pub fn cancel(
    conn: &mut PgConnection,
    order_id: OrderId,
    reason: &str,
) -> anyhow::Result<Cancelled> {
    conn.transaction::<_, anyhow::Error, _>(|conn| {
        let order = lock(conn, order_id)?;
        let from = order.status;
        check_move(&order, OrderStatus::Cancelled)?;
        let items = order_items::for_order(conn, order.id)?;
        let mut released = Vec::with_capacity(items.len());
        for item in &items {
            products::release(conn, item.product_id, item.quantity)?;
            released.push(item.product_id);
        }
        let order = orders::set_status(conn, order.id, OrderStatus::Cancelled)?;
        let event = OrderCancelled::new(
            snapshot(&order, &items)?,
            reason.to_string(),
            order.updated_at,
        );
        let row = outbox::insert_event(conn, &Event::OrderCancelled(event.clone()))?;
        Ok(Cancelled {
            order,
            from,
            event,
            outbox_id: row.id,
            released,
        })
    })
    .with_context(|| format!("cancelling order {order_id}"))
}

/// An admin's move. A legal one writes `order.status_updated`; into
/// `cancelled` it goes through [`cancel`] and writes `order.cancelled`
/// instead. An illegal move (from `cancelled` or `delivered`, backwards, to
/// the same status, or to `paid`, which only the payments consumer sets) is
/// [`InvalidInput`], an unknown order [`NotFound`]; nothing is written.
pub fn set_status(
    conn: &mut PgConnection,
    order_id: OrderId,
    to: OrderStatus,
) -> anyhow::Result<StatusChanged> {
    let changed = conn
        .transaction::<_, anyhow::Error, _>(|conn| {
            let order = lock(conn, order_id)?;
            let from = order.status;
            if to == OrderStatus::Paid {
                return Err(InvalidInput::new(format!(
                    "order {order_id} cannot be set to paid: only a payment marks an order paid"
                ))
                .into());
            }
            if from == to {
                return Err(InvalidInput::new(format!("order {order_id} is already {to}")).into());
            }
            if let Err(illegal) = check_move(&order, to) {
                return Err(InvalidInput::new(illegal.to_string()).into());
            }
            if to == OrderStatus::Cancelled {
                let cancelled = cancel(conn, order_id, "cancelled by an admin")?;
                return Ok(StatusChanged {
                    order_id,
                    from,
                    to,
                    event_id: cancelled.event.event_id,
                    routing_key: OrderCancelled::ROUTING_KEY,
                    published: false,
                    outbox_id: cancelled.outbox_id,
                    released: cancelled.released,
                });
            }
            let items = order_items::for_order(conn, order.id)?;
            let order = orders::set_status(conn, order.id, to)?;
            let event =
                OrderStatusUpdated::new(snapshot(&order, &items)?, from, to, order.updated_at);
            let row = outbox::insert_event(conn, &Event::OrderStatusUpdated(event.clone()))?;
            Ok(StatusChanged {
                order_id,
                from,
                to,
                event_id: event.event_id,
                routing_key: OrderStatusUpdated::ROUTING_KEY,
                published: false,
                outbox_id: row.id,
                released: Vec::new(),
            })
        })
        .with_context(|| format!("setting order {order_id} to {to}"))?;
    // The live feed shows the move; a relay publishes its event should the
    // caller's publish fail.
    db::notify(conn, &[outbox::CHANNEL, db::feed::CHANNEL]);
    Ok(changed)
}

/// The order row, locked until the transaction ends.
fn lock(conn: &mut PgConnection, order_id: OrderId) -> anyhow::Result<Order> {
    orders::lock(conn, order_id)
        .with_context(|| format!("locking order {order_id}"))?
        .ok_or_else(|| unknown(order_id).into())
}

fn check_move(order: &Order, to: OrderStatus) -> Result<(), IllegalMove> {
    if order.status.can_become(to) {
        Ok(())
    } else {
        Err(IllegalMove {
            order_id: order.id,
            from: order.status,
            to,
        })
    }
}

pub(crate) fn unknown(order_id: OrderId) -> NotFound {
    NotFound::new(format!("order {order_id} not found"))
}

/// The order as its events carry it.
fn snapshot(order: &Order, items: &[OrderItem]) -> anyhow::Result<OrderSnapshot> {
    Ok(OrderSnapshot {
        id: order.id,
        user_id: order.user_id,
        amount: money(order.amount_minor, "order amount")?,
        currency: order.currency.clone(),
        items: items
            .iter()
            .map(|item| ItemSnapshot {
                product_id: item.product_id,
                quantity: item.quantity,
            })
            .collect(),
    })
}

/// An amount read from the database, which its checks keep positive.
pub(crate) fn money(minor: i64, what: &str) -> anyhow::Result<Money> {
    Money::from_minor_units(minor)
        .with_context(|| format!("invalid {what} {minor} in the database"))
}
