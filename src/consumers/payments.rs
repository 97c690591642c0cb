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

use std::sync::Arc;

use anyhow::anyhow;
use diesel::PgConnection;

use uuid::Uuid;

use super::delivery::{self, db_error, Delivery};
use super::handler::{Consume, Consumer, Logged};
use crate::cache::ProductCache;
use crate::db::models::NewPayment;
use crate::db::{orders, payments, PgPool};
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
                db: deps.db.clone(),
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
    pub db: PgPool,
    pub gateway: Gateway,
    pub products: Arc<ProductCache>,
}

impl Payments {
    /// Inside the delivery's transaction, with the order row locked.
    fn charge_once(
        &self,
        conn: &mut PgConnection,
        event: &OrderCreated,
        released: &mut Vec<ProductId>,
    ) -> Result<String, HandleError> {
        let order_id = event.order.id;
        let order = orders::lock(conn, order_id)
            .map_err(db_error)?
            .ok_or_else(|| HandleError::Permanent(anyhow!("order {order_id} does not exist")))?;
        if let Some(payment) = payments::for_order(conn, order_id).map_err(db_error)? {
            return Ok(format!(
                "already {} ({}); nothing charged",
                payment.status, payment.reference
            ));
        }
        if order.status != OrderStatus::Pending {
            return Ok(format!("order is {}; nothing charged", order.status));
        }
        let payment = |status, reference, reason| NewPayment {
            order_id,
            event_id: event.event_id,
            status,
            amount_minor: event.order.amount.minor_units(),
            currency: event.order.currency.as_str(),
            reference,
            decline_reason: reason,
        };
        let order = &event.order;
        let now = chrono::Utc::now();
        let written = match self.gateway.charge(event)? {
            Charge::Approved { reference } => {
                payments::insert(conn, &payment(PaymentStatus::Succeeded, &reference, None))
                    .map_err(db_error)?;
                order_moves::mark_paid(conn, order_id).map_err(transient)?;
                let paid = PaymentSucceeded::new(
                    PaymentSnapshot {
                        order_id,
                        amount: order.amount,
                        currency: order.currency.clone(),
                        reference: reference.clone(),
                    },
                    now,
                );
                record(conn, paid.into())?;
                format!("charged {} {} ({reference})", order.amount, order.currency)
            }
            Charge::Declined { reference, reason } => {
                payments::insert(
                    conn,
                    &payment(PaymentStatus::Declined, &reference, Some(&reason)),
                )
                .map_err(db_error)?;
                let declined = PaymentDeclined::new(
                    DeclinedPaymentSnapshot {
                        order_id,
                        amount: order.amount,
                        currency: order.currency.clone(),
                        reference: reference.clone(),
                        reason: reason.clone(),
                    },
                    now,
                );
                record(conn, declined.into())?;
                let cancelled =
                    order_moves::cancel(conn, order_id, &format!("payment declined: {reason}"))
                        .map_err(transient)?;
                released.extend(cancelled.released);
                format!("declined ({reference}): {reason}; order cancelled")
            }
        };
        tracing::info!(order_id = order_id.0, "payment: {written}");
        Ok(written)
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

    /// Charges the order once.
    fn handle(&self, event: &OrderCreated, target: &Delivery) -> Result<(), HandleError> {
        let mut released = Vec::new();
        delivery::once(&self.db, target, |conn| {
            self.charge_once(conn, event, &mut released)
        })?;
        // After commit: the released stock must not be served stale.
        self.products.invalidate(&released);
        Ok(())
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
