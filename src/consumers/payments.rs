//! The `payments` consumer: charges each order once through the payment
//! gateway. The payment row, the order's new status and the resulting
//! events commit in the delivery's transaction, and `payments.order_id` is
//! unique, so no redelivery, replay or crash charges an order twice.
//!
//! The gateway is SIMULATED, by documented deterministic
//! rules so that every outcome can be triggered: an amount whose cents are
//! 13 (e.g. 10.13) is declined; `--payment-fail-rate P` makes the gateway
//! fail transiently with probability P (retried like any transient
//! failure). A decline cancels the order (its stock is released) and writes
//! `payment.declined` and `order.cancelled`.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::anyhow;
use diesel::PgConnection;

use uuid::Uuid;

use super::delivery::{db_error, Delivery};
use super::handler::{Consume, Consumer, Kind, Logged};
use crate::cache::ProductCache;
use crate::db::models::{NewPayment, Order, Payment};
use crate::db::{orders, outbox, payments};
use crate::domain::events::{DeclinedPaymentSnapshot, PaymentSnapshot};
use crate::domain::{
    Event, OrderCreated, OrderId, OrderStatus, PaymentDeclined, PaymentStatus, PaymentSucceeded,
    ProductId, ORDER_CREATED,
};
use crate::messaging::consumer::HandleError;
use crate::messaging::topology::ConsumerSpec;
use crate::orders as order_moves;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "payments",
    routing_keys: &[ORDER_CREATED],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Logged::boxed(
            &deps.db,
            Payments {
                gateway: Gateway {
                    fail_rate: deps.payment_fail_rate,
                },
                products: deps.products.clone(),
            },
        )
    },
};

/// The simulated payment gateway.
#[derive(Clone, Copy, Debug)]
pub struct Gateway {
    /// Probability (0–1) of a transient failure on each charge.
    pub fail_rate: f64,
}

/// What the gateway said about a charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    Approved { reference: String },
    Declined { reference: String, reason: String },
}

impl Gateway {
    /// Charges `event`'s order: declined when the amount's cents are 13,
    /// a transient error with probability `fail_rate`, else approved. The
    /// reference is derived from the event, so a retried charge has the
    /// same one.
    pub fn charge(&self, event: &OrderCreated) -> Result<Charge, HandleError> {
        let draw = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        if draw < self.fail_rate {
            return Err(HandleError::Transient(anyhow!(
                "payment gateway unavailable (simulated, --payment-fail-rate {})",
                self.fail_rate
            )));
        }
        let reference = format!("sim_{}", &event.event_id.simple().to_string()[..16]);
        if event.order.amount.minor_units() % 100 == 13 {
            return Ok(Charge::Declined {
                reference,
                reason: "card declined (simulated: the amount's cents are 13)".into(),
            });
        }
        Ok(Charge::Approved { reference })
    }
}

pub struct Payments {
    pub gateway: Gateway,
    pub products: Arc<ProductCache>,
}

impl Payments {
    /// Charges the orders of a batch of `order.created` events, all or
    /// none, inside the deliveries' transaction: the orders are locked (in
    /// id order) and read with their payments, if any; an order paid
    /// before or no longer pending is not charged; the approved charges are
    /// written together — one statement each for their payments, their
    /// orders' `paid` status and their `payment.succeeded` events; a
    /// decline cancels its order.
    fn charge_all(
        &self,
        conn: &mut PgConnection,
        events: &[&OrderCreated],
    ) -> Result<Vec<String>, HandleError> {
        let ids: Vec<OrderId> = events.iter().map(|event| event.order.id).collect();
        let locked: HashMap<OrderId, Order> = orders::lock_many(conn, &ids)
            .map_err(db_error)?
            .into_iter()
            .map(|order| (order.id, order))
            .collect();
        let paid_before: HashMap<OrderId, Payment> = payments::for_orders(conn, &ids)
            .map_err(db_error)?
            .into_iter()
            .map(|payment| (payment.order_id, payment))
            .collect();
        let now = chrono::Utc::now();
        let mut replies = Vec::with_capacity(events.len());
        let mut approved = Vec::new();
        for &event in events {
            let order_id = event.order.id;
            let order = locked.get(&order_id).ok_or_else(|| {
                HandleError::Permanent(anyhow!("order {order_id} does not exist"))
            })?;
            let order_snapshot = &event.order;
            let reply = if let Some(payment) = paid_before.get(&order_id) {
                format!(
                    "already {} ({}); nothing charged",
                    payment.status, payment.reference
                )
            } else if order.status != OrderStatus::Pending {
                format!("order is {}; nothing charged", order.status)
            } else {
                match self.gateway.charge(event)? {
                    Charge::Approved { reference } => {
                        let reply = format!(
                            "charged {} {} ({reference})",
                            order_snapshot.amount, order_snapshot.currency
                        );
                        approved.push((event, order, reference));
                        reply
                    }
                    Charge::Declined { reference, reason } => {
                        decline(conn, event, &reference, &reason, now)?;
                        format!("declined ({reference}): {reason}; order cancelled")
                    }
                }
            };
            replies.push(reply);
        }
        if !approved.is_empty() {
            let rows: Vec<NewPayment> = approved
                .iter()
                .map(|(event, _, reference)| {
                    new_payment(event, PaymentStatus::Succeeded, reference, None)
                })
                .collect();
            payments::insert_many(conn, &rows).map_err(db_error)?;
            let orders: Vec<&Order> = approved.iter().map(|(_, order, _)| *order).collect();
            order_moves::mark_locked_paid(conn, &orders).map_err(transient)?;
            let paid: Vec<Event> = approved
                .iter()
                .map(|(event, _, reference)| {
                    PaymentSucceeded::new(
                        PaymentSnapshot {
                            order_id: event.order.id,
                            amount: event.order.amount,
                            currency: event.order.currency.clone(),
                            reference: reference.clone(),
                        },
                        now,
                    )
                    .into()
                })
                .collect();
            outbox::insert_events(conn, &paid).map_err(db_error)?;
        }
        for (event, reply) in events.iter().zip(&replies) {
            tracing::info!(order_id = event.order.id.0, "payment: {reply}");
        }
        Ok(replies)
    }
}

/// A declined charge: its payment row, `payment.declined`, and the order
/// cancelled (its stock released, `order.cancelled` written).
fn decline(
    conn: &mut PgConnection,
    event: &OrderCreated,
    reference: &str,
    reason: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), HandleError> {
    let order = &event.order;
    payments::insert(
        conn,
        &new_payment(event, PaymentStatus::Declined, reference, Some(reason)),
    )
    .map_err(db_error)?;
    let declined = PaymentDeclined::new(
        DeclinedPaymentSnapshot {
            order_id: order.id,
            amount: order.amount,
            currency: order.currency.clone(),
            reference: reference.to_string(),
            reason: reason.to_string(),
        },
        now,
    );
    record(conn, declined.into())?;
    order_moves::cancel(conn, order.id, &format!("payment declined: {reason}"))
        .map_err(transient)?;
    Ok(())
}

fn new_payment<'a>(
    event: &'a OrderCreated,
    status: PaymentStatus,
    reference: &'a str,
    decline_reason: Option<&'a str>,
) -> NewPayment<'a> {
    NewPayment {
        order_id: event.order.id,
        event_id: event.event_id,
        status,
        amount_minor: event.order.amount.minor_units(),
        currency: event.order.currency.as_str(),
        reference,
        decline_reason,
    }
}

impl Consume for Payments {
    type Event = OrderCreated;

    const SPEC: ConsumerSpec = SPEC;

    fn parse(body: &[u8]) -> Result<OrderCreated, HandleError> {
        OrderCreated::from_json(body).map_err(|e| {
            HandleError::Permanent(e.context("the message is not a valid order.created event"))
        })
    }

    fn keys(event: &OrderCreated) -> (Uuid, OrderId) {
        (event.event_id, event.order.id)
    }

    fn kind(&self) -> Kind<'_> {
        Kind::Writes
    }

    /// Charges the order: [`Payments::charge_all`] for one.
    fn effect(
        &self,
        conn: &mut PgConnection,
        event: &OrderCreated,
        _delivery: &Delivery,
    ) -> Result<String, HandleError> {
        let mut replies = self.charge_all(conn, &[event])?;
        Ok(replies.pop().expect("one reply per event"))
    }

    fn effects(
        &self,
        conn: &mut PgConnection,
        batch: &[(&OrderCreated, &Delivery)],
    ) -> Result<Vec<String>, HandleError> {
        let events: Vec<&OrderCreated> = batch.iter().map(|(event, _)| *event).collect();
        self.charge_all(conn, &events)
    }

    /// A declined payment released the order's stock: its products must
    /// not be served stale. (An approved one changed nothing there; one
    /// cache miss for each of its products is the price of not telling
    /// the two apart here.)
    fn committed(&self, event: &OrderCreated) {
        let products: Vec<ProductId> = event.order.items.iter().map(|i| i.product_id).collect();
        self.products.invalidate(&products);
    }
}

fn record(conn: &mut PgConnection, event: Event) -> Result<(), HandleError> {
    crate::db::outbox::insert_event(conn, &event)
        .map(drop)
        .map_err(db_error)
}

/// A status move inside the delivery's transaction failed: the order is
/// locked and pending, so this is the database, which may recover.
fn transient(error: anyhow::Error) -> HandleError {
    HandleError::Transient(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money, OrderSnapshot, UserId};

    fn order_of(amount: &str) -> OrderCreated {
        let order = OrderSnapshot {
            id: OrderId(7),
            user_id: UserId(3),
            amount: Money::parse(amount).unwrap(),
            currency: Currency::default(),
            items: Vec::new(),
        };
        OrderCreated::new(order, chrono::Utc::now())
    }

    #[test]
    fn the_simulated_gateway_declines_13_cents_and_approves_the_rest() {
        let gateway = Gateway { fail_rate: 0.0 };
        let event = order_of("10.13");
        let Ok(Charge::Declined { reference, reason }) = gateway.charge(&event) else {
            panic!("10.13 must be declined");
        };
        assert!(reason.contains("13"), "{reason}");
        // A retried charge of the same event has the same reference.
        assert_eq!(
            gateway.charge(&event).unwrap(),
            Charge::Declined { reference, reason }
        );
        for amount in ["10.00", "10.12", "13", "0.31", "113.14"] {
            assert!(
                matches!(
                    gateway.charge(&order_of(amount)),
                    Ok(Charge::Approved { .. })
                ),
                "{amount}"
            );
        }
    }

    #[test]
    fn the_simulated_gateway_fails_transiently_at_its_rate() {
        let always = Gateway { fail_rate: 1.0 };
        assert!(matches!(
            always.charge(&order_of("5")),
            Err(HandleError::Transient(_))
        ));
        let half = Gateway { fail_rate: 0.5 };
        let failures = (0..2000)
            .filter(|_| half.charge(&order_of("5")).is_err())
            .count();
        assert!((800..1200).contains(&failures), "{failures} of 2000");
    }
}
