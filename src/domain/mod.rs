//! Domain types. Input is parsed into these once, at the edge; the rest of
//! the crate never handles raw strings or floats for money. The events the
//! pipeline carries live in [`events`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

pub mod age;
pub mod events;
mod states;
mod values;

pub use events::{
    Event, OrderCancelled, OrderCreated, OrderSnapshot, OrderStatusUpdated, PaymentDeclined,
    PaymentSucceeded, StockLow, ORDER_CANCELLED, ORDER_CREATED, ORDER_STATUS_UPDATED,
    PAYMENT_DECLINED, PAYMENT_SUCCEEDED, STOCK_LOW,
};
pub use states::{AttemptOutcome, DeliveryStatus, OrderStatus, PaymentStatus};
pub use values::{Currency, Money, OrderId, ProductId, UserId};

/// The prefix of every exchange, queue and Redis key the tool creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        if valid {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidInput::new(format!(
                "invalid namespace {raw:?}: use 1 to 64 letters, digits, '_' or '-'"
            )))
        }
    }

    /// `{ns}.{suffix}`: the name of an exchange or queue.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.0)
    }

    /// `{ns}:{suffix}`: a Redis key.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order to be placed, already validated.
#[derive(Clone, Debug)]
pub struct NewOrder {
    pub user_id: UserId,
    pub contents: OrderContents,
    /// A client's key: placing again with the same key returns the first
    /// order and writes nothing.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl NewOrder {
    /// An order for an amount alone, without products or idempotency key.
    pub fn for_amount(user_id: UserId, amount: Money, currency: Currency) -> Self {
        Self {
            user_id,
            contents: OrderContents::Amount { amount, currency },
            idempotency_key: None,
        }
    }

    /// An order of products, priced when it is placed.
    pub fn for_items(user_id: UserId, items: OrderItems) -> Self {
        Self {
            user_id,
            contents: OrderContents::Items(items),
            idempotency_key: None,
        }
    }
}

/// What an order is for.
#[derive(Clone, Debug)]
pub enum OrderContents {
    /// An amount with no products (`place-order --amount`).
    Amount { amount: Money, currency: Currency },
    /// Products: the amount is their prices when the order commits times
    /// the quantities, and their stock is taken in the same transaction.
    Items(OrderItems),
}

/// The largest quantity of one product in an order, or in one restock.
pub const MAX_QUANTITY: i32 = 1_000_000_000;

/// How many units: a positive integer up to [`MAX_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(i32);

impl Quantity {
    pub fn new(units: i64) -> Option<Self> {
        (1..=i64::from(MAX_QUANTITY))
            .contains(&units)
            .then_some(Self(units as i32))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl FromStr for Quantity {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.parse::<i64>()
            .ok()
            .filter(|_| raw.bytes().all(|b| b.is_ascii_digit()))
            .and_then(Self::new)
            .ok_or_else(|| {
                InvalidInput::new(format!(
                    "invalid quantity {raw:?}: expected an integer from 1 to {MAX_QUANTITY}"
                ))
            })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A stock level or a low-stock threshold: an integer from 0 to
/// [`MAX_QUANTITY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StockLevel(i32);

impl StockLevel {
    pub fn get(self) -> i32 {
        self.0
    }

    /// The threshold a stock level implies unless one is set: half of it,
    /// rounded down.
    pub fn half(self) -> Self {
        Self(self.0 / 2)
    }
}

impl FromStr for StockLevel {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        raw.parse::<i64>()
            .ok()
            .filter(|n| raw.bytes().all(|b| b.is_ascii_digit()) && *n <= i64::from(MAX_QUANTITY))
            .map(|n| Self(n as i32))
            .ok_or_else(|| {
                InvalidInput::new(format!(
                    "invalid stock level {raw:?}: expected an integer from 0 to {MAX_QUANTITY}"
                ))
            })
    }
}

/// One `--item`: `ID` (one unit) or `IDxQTY`, e.g. `5` or `7x2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

impl FromStr for OrderLine {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            InvalidInput::new(format!(
                "invalid item {raw:?}: expected a product id, optionally with a quantity, e.g. 5 or 7x2"
            ))
        };
        let (id, quantity) = match raw.split_once(['x', 'X']) {
            Some((id, quantity)) => (id, quantity.parse().map_err(|_| invalid())?),
            None => (raw, Quantity(1)),
        };
        let product_id = id.parse().map_err(|_| invalid())?;
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        Ok(Self {
            product_id,
            quantity,
        })
    }
}

/// The products of an order: at least one, each product once (repeated
/// ids are merged), in product-id order — the order stock is taken in, so
/// two orders never wait for each other's rows in opposite orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderItems(Vec<OrderLine>);

impl OrderItems {
    pub fn new(lines: impl IntoIterator<Item = OrderLine>) -> Result<Self, InvalidInput> {
        let mut merged: std::collections::BTreeMap<ProductId, i64> = Default::default();
        for line in lines {
            *merged.entry(line.product_id).or_default() += i64::from(line.quantity.get());
        }
        if merged.is_empty() {
            return Err(InvalidInput::new("an order needs at least one item"));
        }
        merged
            .into_iter()
            .map(|(product_id, units)| {
                let quantity = Quantity::new(units).ok_or_else(|| {
                    InvalidInput::new(format!(
                        "too many units of product {product_id}: at most {MAX_QUANTITY}"
                    ))
                })?;
                Ok(OrderLine {
                    product_id,
                    quantity,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn lines(&self) -> &[OrderLine] {
        &self.0
    }
}

/// A client's idempotency key: 1 to 200 visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if (1..=200).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidInput::new(
                "invalid idempotency key: use 1 to 200 visible ASCII characters",
            ))
        }
    }
}

/// A product's name: 1 to 200 characters, not blank, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ProductName {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let length = raw.chars().count();
        if (1..=200).contains(&length)
            && !raw.trim().is_empty()
            && !raw.chars().any(char::is_control)
        {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidInput::new(format!(
                "invalid product name {raw:?}: use 1 to 200 characters, not blank"
            )))
        }
    }
}

/// A product as commands print it and the cache holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub id: ProductId,
    pub name: String,
    pub price: Money,
    pub currency: Currency,
    pub stock: i32,
    pub low_stock_threshold: i32,
}

/// A product to be added, already validated.
#[derive(Clone, Debug)]
pub struct NewProduct {
    pub name: ProductName,
    pub price: Money,
    pub currency: Currency,
    pub stock: StockLevel,
    /// Set explicitly, the threshold stays put; else it is half the stock
    /// after the add and after each restock.
    pub low_stock_threshold: Option<StockLevel>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_parses_decimals_into_minor_units() {
        for (raw, minor, shown) in [
            ("42", 4200, "42.00"),
            ("42.5", 4250, "42.50"),
            ("0.01", 1, "0.01"),
            ("007.10", 710, "7.10"),
        ] {
            let money = Money::parse(raw).unwrap();
            assert_eq!(
                (money.minor_units(), money.to_string().as_str()),
                (minor, shown),
                "{raw}"
            );
        }
    }

    #[test]
    fn money_rejects_everything_else() {
        for raw in [
            "",
            "0",
            "0.00",
            "-1",
            "1.234",
            "1.",
            ".5",
            "1e3",
            "abc",
            " 1",
            "1,50",
            "+1",
            "99999999999999999999",
            "1000000000000.01",
        ] {
            assert!(Money::parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }

    #[test]
    fn currency_is_three_letters_uppercased() {
        assert_eq!(Currency::parse("eur").unwrap().as_str(), "EUR");
        for raw in ["", "US", "USDX", "U$D", "12A"] {
            assert!(Currency::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn user_ids_are_positive() {
        assert_eq!("3".parse::<UserId>().unwrap(), UserId(3));
        for raw in ["0", "-3", "x", "", "3.0"] {
            assert!(raw.parse::<UserId>().is_err(), "{raw:?}");
        }
    }

    #[test]
    fn order_and_product_ids_are_positive() {
        assert_eq!("42".parse::<OrderId>().unwrap(), OrderId(42));
        assert_eq!("5".parse::<ProductId>().unwrap(), ProductId(5));
        for raw in ["0", "-1", "x", ""] {
            assert!(raw.parse::<OrderId>().is_err(), "{raw:?}");
            assert!(raw.parse::<ProductId>().is_err(), "{raw:?}");
        }
        assert_eq!(serde_json::to_string(&OrderId(7)).unwrap(), "7");
    }

    #[test]
    fn items_parse_as_id_or_id_x_quantity() {
        let line = |raw: &str| raw.parse::<OrderLine>();
        assert_eq!(
            line("5").unwrap(),
            OrderLine {
                product_id: ProductId(5),
                quantity: Quantity(1)
            }
        );
        assert_eq!(line("7x2").unwrap().quantity.get(), 2);
        assert_eq!(line("7X3").unwrap().quantity.get(), 3);
        for raw in [
            "",
            "x",
            "5x",
            "x2",
            "0",
            "0x1",
            "5x0",
            "5x-1",
            "-5",
            "+5",
            "5x+2",
            "5 x2",
            "5x2x3",
            "5.0",
            "abc",
            "5x1000000001",
        ] {
            assert!(line(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn repeated_items_merge_in_product_id_order() {
        let lines = ["7x2", "5", "7"].map(|raw| raw.parse::<OrderLine>().unwrap());
        let items = OrderItems::new(lines).unwrap();
        let merged: Vec<(i64, i32)> = items
            .lines()
            .iter()
            .map(|line| (line.product_id.0, line.quantity.get()))
            .collect();
        assert_eq!(merged, [(5, 1), (7, 3)]);
        assert!(OrderItems::new([]).is_err());
        let huge = "5x1000000000".parse::<OrderLine>().unwrap();
        assert!(OrderItems::new([huge, huge]).is_err());
    }

    #[test]
    fn stock_levels_quantities_names_and_keys_are_bounded() {
        assert_eq!("0".parse::<StockLevel>().unwrap().get(), 0);
        assert_eq!("101".parse::<StockLevel>().unwrap().half().get(), 50);
        for raw in ["-1", "1.5", "", "1000000001", "+1"] {
            assert!(raw.parse::<StockLevel>().is_err(), "{raw:?}");
        }
        assert!("0".parse::<Quantity>().is_err());
        assert!("Mug".parse::<ProductName>().is_ok());
        for raw in ["", "   ", "a\nb", &"x".repeat(201)] {
            assert!(raw.parse::<ProductName>().is_err(), "{raw:?}");
        }
        assert!("order-1".parse::<IdempotencyKey>().is_ok());
        for raw in ["", "a b", &"k".repeat(201)] {
            assert!(raw.parse::<IdempotencyKey>().is_err(), "{raw:?}");
        }
    }

    #[test]
    fn namespaces_prefix_names_and_keys() {
        let ns = Namespace::parse("t_1").unwrap();
        assert_eq!(ns.name("events"), "t_1.events");
        assert_eq!(ns.key("user:3"), "t_1:user:3");
        for raw in ["", "a.b", "a b", "ä", &"x".repeat(65)] {
            assert!(Namespace::parse(raw).is_err(), "{raw:?}");
        }
    }
}
