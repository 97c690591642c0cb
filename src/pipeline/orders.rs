//! An order's life after it was placed, as the commands see it: an admin's
//! status move (the move itself is [`crate::orders`]) published right after
//! its commit, and what `order show` reports.

use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::{Connection, PgConnection};
use serde::Serialize;

use super::relay;
use super::trace::{self, Step};
use crate::cache::ProductCache;
use crate::db::models::{Order, Payment};
use crate::db::{order_items, orders, payments};
use crate::domain::{Currency, Money, OrderId, OrderStatus, PaymentStatus, ProductId, UserId};
use crate::messaging::publisher::Publisher;
use crate::orders::{money, set_status, unknown, StatusChanged};

/// `ordctl order set-status`: [`set_status`] in its own transaction, then
/// the cache entries of products a cancellation released are dropped and
/// the event is published at once through a publisher `connect` opens
/// after the commit (if the broker is down, the relay publishes it).
pub fn change_status(
    conn: &mut PgConnection,
    connect: &(dyn Fn() -> anyhow::Result<Publisher> + Sync),
    cache: Option<&ProductCache>,
    order_id: OrderId,
    to: OrderStatus,
) -> anyhow::Result<StatusChanged> {
    let mut changed =
        conn.transaction::<_, anyhow::Error, _>(|conn| set_status(conn, order_id, to))?;
    if let Some(cache) = cache {
        cache.invalidate(&changed.released);
    }
    let mut publisher = super::place_order::connect_or_warn(connect);
    changed.published = publish_now(conn, &mut publisher, &[changed.outbox_id]);
    if let Some(publisher) = publisher {
        publisher.close();
    }
    Ok(changed)
}

/// Publishes committed outbox rows under one confirm wait; a failure is
/// logged, drops the publisher and leaves the rows to the relay.
fn publish_now(
    conn: &mut PgConnection,
    publisher: &mut Option<Publisher>,
    outbox_ids: &[i64],
) -> bool {
    let Some(active) = publisher else {
        return false;
    };
    match relay::publish_committed(conn, active, outbox_ids) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                "event committed but not published ({error:#}); the relay will publish it"
            );
            if let Some(broken) = publisher.take() {
                broken.close();
            }
            false
        }
    }
}

/// An order's own fields, as lists show it.
#[derive(Clone, Debug, Serialize)]
pub struct OrderView {
    pub id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
    pub currency: Currency,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<Order> for OrderView {
    type Error = anyhow::Error;
    fn try_from(order: Order) -> anyhow::Result<Self> {
        Ok(Self {
            id: order.id,
            user_id: order.user_id,
            amount: money(order.amount_minor, "order amount")?,
            currency: order.currency,
            status: order.status,
            created_at: order.created_at,
            updated_at: order.updated_at,
        })
    }
}

/// An order as `order show` prints it: its own fields, then what belongs
/// to it.
#[derive(Clone, Debug, Serialize)]
pub struct OrderDetails {
    #[serde(flatten)]
    pub order: OrderView,
    pub items: Vec<ItemDetails>,
    pub payment: Option<PaymentDetails>,
    /// What the pipeline did with the order's events (`ordctl trace`).
    pub timeline: Vec<Step>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemDetails {
    pub product_id: ProductId,
    pub quantity: i32,
    /// The price when the order was placed.
    pub unit_price: Money,
}

#[derive(Clone, Debug, Serialize)]
pub struct PaymentDetails {
    pub status: PaymentStatus,
    pub amount: Money,
    pub currency: Currency,
    pub reference: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The order with its items, status, payment and timeline. An unknown
/// order is [`NotFound`](crate::error::NotFound).
pub fn show(conn: &mut PgConnection, order_id: OrderId) -> anyhow::Result<OrderDetails> {
    let order = orders::find(conn, order_id)
        .with_context(|| format!("reading order {order_id}"))?
        .ok_or_else(|| unknown(order_id))?;
    let items = order_items::for_order(conn, order.id).context("reading the order's items")?;
    let payment = payments::for_order(conn, order.id).context("reading the order's payment")?;
    let trace = trace::trace(conn, order.id)?;
    Ok(OrderDetails {
        order: OrderView::try_from(order)?,
        items: items
            .iter()
            .map(|item| {
                Ok(ItemDetails {
                    product_id: item.product_id,
                    quantity: item.quantity,
                    unit_price: money(item.unit_price_minor, "unit price")?,
                })
            })
            .collect::<anyhow::Result<_>>()?,
        payment: payment.map(payment_details).transpose()?,
        timeline: trace.timeline,
    })
}

fn payment_details(payment: Payment) -> anyhow::Result<PaymentDetails> {
    Ok(PaymentDetails {
        status: payment.status,
        amount: money(payment.amount_minor, "payment amount")?,
        currency: payment.currency,
        reference: payment.reference,
        reason: payment.decline_reason,
        created_at: payment.created_at,
    })
}
