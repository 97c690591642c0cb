//! The events the pipeline carries (the README's "How it works" lists
//! them): one envelope — `event_id`, `type` (the routing key),
//! `occurred_at` — then each event's payload. Every event is written to the
//! outbox in the transaction that caused it and published under its type.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::states::OrderStatus;
use super::values::{Currency, Money, OrderId, ProductId, UserId};

/// The routing key of [`OrderCreated`].
pub const ORDER_CREATED: &str = "order.created";
/// The routing key of [`OrderCancelled`].
pub const ORDER_CANCELLED: &str = "order.cancelled";
/// The routing key of [`OrderStatusUpdated`].
pub const ORDER_STATUS_UPDATED: &str = "order.status_updated";
/// The routing key of [`StockLow`].
pub const STOCK_LOW: &str = "stock.low";
/// The routing key of [`PaymentSucceeded`].
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
/// The routing key of [`PaymentDeclined`].
pub const PAYMENT_DECLINED: &str = "payment.declined";

/// Every routing key an event can have.
pub const ROUTING_KEYS: [&str; 6] = [
    ORDER_CREATED,
    ORDER_CANCELLED,
    ORDER_STATUS_UPDATED,
    STOCK_LOW,
    PAYMENT_SUCCEEDED,
    PAYMENT_DECLINED,
];

/// The order as carried inside an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub id: OrderId,
    pub user_id: UserId,
    pub amount: Money,
    pub currency: Currency,
    /// The products ordered; absent for an order placed by amount alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemSnapshot>,
}

/// One line of an order inside an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSnapshot {
    pub product_id: ProductId,
    pub quantity: i32,
}

/// The product as carried by [`StockLow`]: its stock right after the order
/// that crossed the threshold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSnapshot {
    pub id: ProductId,
    pub name: String,
    pub stock: i32,
    pub low_stock_threshold: i32,
}

/// A charge the payment gateway accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSnapshot {
    pub order_id: OrderId,
    pub amount: Money,
    pub currency: Currency,
    /// The gateway's reference for the charge.
    pub reference: String,
}

/// A charge the payment gateway declined, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclinedPaymentSnapshot {
    pub order_id: OrderId,
    pub amount: Money,
    pub currency: Currency,
    pub reference: String,
    pub reason: String,
}

/// Defines one event struct: the envelope fields, then the payload's, with
/// `new` (a fresh event id) and `from_json` (which checks the type).
macro_rules! event {
    ($(#[$doc:meta])* $name:ident = $key:ident { $($(#[$field_doc:meta])* $field:ident : $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            pub event_id: Uuid,
            /// Always the event's routing key.
            #[serde(rename = "type")]
            pub kind: String,
            pub occurred_at: DateTime<Utc>,
            $($(#[$field_doc])* pub $field: $ty,)+
        }

        impl $name {
            pub const ROUTING_KEY: &'static str = $key;

            pub fn new($($field: $ty,)+ occurred_at: DateTime<Utc>) -> Self {
                Self {
                    event_id: Uuid::new_v4(),
                    kind: $key.to_string(),
                    occurred_at,
                    $($field,)+
                }
            }

            /// Parses a message body; anything that is not a valid event of
            /// this type is an error (a consumer treats it as permanent).
            pub fn from_json(body: &[u8]) -> anyhow::Result<Self> {
                parse_as(serde_json::from_slice(body)?)
            }
        }

        impl Typed for $name {
            const ROUTING_KEY: &'static str = $key;
            fn kind(&self) -> &str {
                &self.kind
            }
        }

        impl From<$name> for Event {
            fn from(event: $name) -> Self {
                Event::$name(event)
            }
        }
    };
}

event!(
    /// An order committed.
    OrderCreated = ORDER_CREATED { order: OrderSnapshot }
);

event!(
    /// A pending order was cancelled (its payment was declined, or an admin
    /// cancelled it); its stock was released in the same transaction.
    OrderCancelled = ORDER_CANCELLED {
        order: OrderSnapshot,
        reason: String,
    }
);

event!(
    /// An admin moved an order (`paid` → `shipped`, …).
    OrderStatusUpdated = ORDER_STATUS_UPDATED {
        order: OrderSnapshot,
        from: OrderStatus,
        to: OrderStatus,
    }
);

event!(
    /// An order took a product's stock from at-or-above its threshold to
    /// below it.
    StockLow = STOCK_LOW {
        product: ProductSnapshot,
        /// The order whose commit crossed the threshold.
        order_id: OrderId,
    }
);

event!(
    /// The payments consumer charged the order.
    PaymentSucceeded = PAYMENT_SUCCEEDED { payment: PaymentSnapshot }
);

event!(
    /// The payment gateway declined the order's charge.
    PaymentDeclined = PAYMENT_DECLINED {
        payment: DeclinedPaymentSnapshot,
    }
);

/// Any event, as read from a message body or the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Event {
    OrderCreated(OrderCreated),
    OrderCancelled(OrderCancelled),
    OrderStatusUpdated(OrderStatusUpdated),
    StockLow(StockLow),
    PaymentSucceeded(PaymentSucceeded),
    PaymentDeclined(PaymentDeclined),
}

impl Event {
    /// Parses a message body, dispatching on its `type`; an unknown type or
    /// a payload that does not match it is an error.
    pub fn from_json(body: &[u8]) -> anyhow::Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(body)?;
        let kind = value
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow::anyhow!("the event has no \"type\""))?;
        Ok(match kind {
            ORDER_CREATED => Self::OrderCreated(parse_as(value)?),
            ORDER_CANCELLED => Self::OrderCancelled(parse_as(value)?),
            ORDER_STATUS_UPDATED => Self::OrderStatusUpdated(parse_as(value)?),
            STOCK_LOW => Self::StockLow(parse_as(value)?),
            PAYMENT_SUCCEEDED => Self::PaymentSucceeded(parse_as(value)?),
            PAYMENT_DECLINED => Self::PaymentDeclined(parse_as(value)?),
            other => anyhow::bail!("unexpected event type {other:?}"),
        })
    }

    pub fn event_id(&self) -> Uuid {
        self.envelope().0
    }

    pub fn occurred_at(&self) -> DateTime<Utc> {
        self.envelope().1
    }

    /// The routing key, which is also the event's `type`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::OrderCreated(_) => ORDER_CREATED,
            Self::OrderCancelled(_) => ORDER_CANCELLED,
            Self::OrderStatusUpdated(_) => ORDER_STATUS_UPDATED,
            Self::StockLow(_) => STOCK_LOW,
            Self::PaymentSucceeded(_) => PAYMENT_SUCCEEDED,
            Self::PaymentDeclined(_) => PAYMENT_DECLINED,
        }
    }

    /// The order the event belongs to (for `stock.low`, the order that
    /// crossed the threshold).
    pub fn order_id(&self) -> OrderId {
        match self {
            Self::OrderCreated(event) => event.order.id,
            Self::OrderCancelled(event) => event.order.id,
            Self::OrderStatusUpdated(event) => event.order.id,
            Self::StockLow(event) => event.order_id,
            Self::PaymentSucceeded(event) => event.payment.order_id,
            Self::PaymentDeclined(event) => event.payment.order_id,
        }
    }

    /// The message body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("an event serializes")
    }

    fn envelope(&self) -> (Uuid, DateTime<Utc>) {
        match self {
            Self::OrderCreated(e) => (e.event_id, e.occurred_at),
            Self::OrderCancelled(e) => (e.event_id, e.occurred_at),
            Self::OrderStatusUpdated(e) => (e.event_id, e.occurred_at),
            Self::StockLow(e) => (e.event_id, e.occurred_at),
            Self::PaymentSucceeded(e) => (e.event_id, e.occurred_at),
            Self::PaymentDeclined(e) => (e.event_id, e.occurred_at),
        }
    }
}

/// An event struct that knows its routing key.
trait Typed: DeserializeOwned {
    const ROUTING_KEY: &'static str;
    fn kind(&self) -> &str;
}

/// Deserializes `value` as `T`, checking its `type` is `T`'s.
fn parse_as<T: Typed>(value: serde_json::Value) -> anyhow::Result<T> {
    let event: T = serde_json::from_value(value)?;
    anyhow::ensure!(
        event.kind() == T::ROUTING_KEY,
        "unexpected event type {:?} (expected {:?})",
        event.kind(),
        T::ROUTING_KEY
    );
    Ok(event)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order() -> OrderSnapshot {
        OrderSnapshot {
            id: OrderId(42),
            user_id: UserId(3),
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
            items: Vec::new(),
        }
    }

    /// Serializes `event`, checks the envelope and returns the payload
    /// (the JSON without the envelope), after checking it round-trips.
    fn payload_of(event: impl Into<Event>, kind: &str, order_id: i64) -> serde_json::Value {
        let event = event.into();
        let mut json = event.to_json();
        assert_eq!(json["type"], kind);
        assert_eq!(event.routing_key(), kind);
        assert_eq!(json["event_id"], event.event_id().to_string());
        assert!(DateTime::parse_from_rfc3339(json["occurred_at"].as_str().unwrap()).is_ok());
        assert_eq!(event.order_id(), OrderId(order_id));
        let body = serde_json::to_vec(&json).unwrap();
        assert_eq!(Event::from_json(&body).unwrap(), event);
        let object = json.as_object_mut().unwrap();
        for key in ["event_id", "type", "occurred_at"] {
            object.remove(key);
        }
        json
    }

    #[test]
    fn order_created_has_the_spec_shape() {
        let event = OrderCreated::new(order(), Utc::now());
        assert_eq!(
            payload_of(event.clone(), "order.created", 42),
            json!({"order": {"id": 42, "user_id": 3, "amount": "42.00", "currency": "USD"}})
        );
        assert_eq!(
            OrderCreated::from_json(&serde_json::to_vec(&event).unwrap()).unwrap(),
            event
        );
        assert!(OrderCreated::from_json(b"not json").is_err());
    }

    #[test]
    fn order_created_lists_items_only_when_there_are_some() {
        let mut order = order();
        order.items = vec![ItemSnapshot {
            product_id: ProductId(5),
            quantity: 2,
        }];
        let event = OrderCreated::new(order, Utc::now());
        assert_eq!(
            payload_of(event, "order.created", 42)["order"]["items"],
            json!([{"product_id": 5, "quantity": 2}])
        );
    }

    #[test]
    fn order_cancelled_carries_the_order_and_the_reason() {
        let event = OrderCancelled::new(order(), "payment declined".into(), Utc::now());
        assert_eq!(
            payload_of(event, "order.cancelled", 42),
            json!({
                "order": {"id": 42, "user_id": 3, "amount": "42.00", "currency": "USD"},
                "reason": "payment declined"
            })
        );
    }

    #[test]
    fn order_status_updated_carries_from_and_to() {
        let event =
            OrderStatusUpdated::new(order(), OrderStatus::Paid, OrderStatus::Shipped, Utc::now());
        assert_eq!(
            payload_of(event, "order.status_updated", 42),
            json!({
                "order": {"id": 42, "user_id": 3, "amount": "42.00", "currency": "USD"},
                "from": "paid",
                "to": "shipped"
            })
        );
    }

    #[test]
    fn stock_low_carries_the_product_and_the_crossing_order() {
        let product = ProductSnapshot {
            id: ProductId(5),
            name: "Mug".into(),
            stock: 4,
            low_stock_threshold: 5,
        };
        let event = StockLow::new(product, OrderId(42), Utc::now());
        assert_eq!(
            payload_of(event, "stock.low", 42),
            json!({
                "product": {"id": 5, "name": "Mug", "stock": 4, "low_stock_threshold": 5},
                "order_id": 42
            })
        );
    }

    #[test]
    fn payment_events_carry_the_payment() {
        let succeeded = PaymentSucceeded::new(
            PaymentSnapshot {
                order_id: OrderId(42),
                amount: Money::parse("10.12").unwrap(),
                currency: Currency::default(),
                reference: "ch_1".into(),
            },
            Utc::now(),
        );
        assert_eq!(
            payload_of(succeeded, "payment.succeeded", 42),
            json!({"payment": {"order_id": 42, "amount": "10.12", "currency": "USD", "reference": "ch_1"}})
        );
        let declined = PaymentDeclined::new(
            DeclinedPaymentSnapshot {
                order_id: OrderId(42),
                amount: Money::parse("10.13").unwrap(),
                currency: Currency::default(),
                reference: "dc_1".into(),
                reason: "card declined".into(),
            },
            Utc::now(),
        );
        assert_eq!(
            payload_of(declined, "payment.declined", 42),
            json!({"payment": {
                "order_id": 42, "amount": "10.13", "currency": "USD",
                "reference": "dc_1", "reason": "card declined"
            }})
        );
    }

    #[test]
    fn unknown_or_mismatched_events_are_errors() {
        let created = serde_json::to_value(OrderCreated::new(order(), Utc::now())).unwrap();
        let mut unknown = created.clone();
        unknown["type"] = json!("order.exploded");
        let mut mismatched = created.clone();
        mismatched["type"] = json!("stock.low");
        let mut untyped = created.clone();
        untyped.as_object_mut().unwrap().remove("type");
        for value in [unknown, mismatched, untyped] {
            assert!(
                Event::from_json(&serde_json::to_vec(&value).unwrap()).is_err(),
                "{value}"
            );
        }
        assert!(Event::from_json(b"[]").is_err());
        // A typed struct refuses another type's body.
        let body = serde_json::to_vec(&created).unwrap();
        assert!(OrderCancelled::from_json(&body).is_err());
        assert!(OrderCreated::from_json(&body).is_ok());
    }
}
