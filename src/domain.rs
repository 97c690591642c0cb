//! Domain types. Input is parsed into these once, at the edge; the rest of
//! the crate never handles raw strings or floats for money.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::error::InvalidInput;

/// The largest amount accepted: 1 000 000 000 000.00 in minor units.
const MAX_MINOR_UNITS: i64 = 100_000_000_000_000;

/// A positive amount of money in integer minor units (cents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(i64);

impl Money {
    /// Parses `42`, `42.5` or `42.50`: digits, at most two fraction digits,
    /// greater than zero.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let invalid = |why: &str| InvalidInput::new(format!("invalid amount {raw:?}: {why}"));
        let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (raw.contains('.') && fraction.is_empty())
        {
            return Err(invalid("expected a decimal number such as 42 or 42.50"));
        }
        if fraction.len() > 2 {
            return Err(invalid("at most 2 fraction digits"));
        }
        let too_large = || invalid("too large");
        let whole: i64 = whole.parse().map_err(|_| too_large())?;
        let cents: i64 = format!("{fraction:0<2}").parse().expect("two ASCII digits");
        let minor = whole
            .checked_mul(100)
            .and_then(|w| w.checked_add(cents))
            .ok_or_else(too_large)?;
        if minor > MAX_MINOR_UNITS {
            return Err(too_large());
        }
        Self::from_minor_units(minor).ok_or_else(|| invalid("must be greater than 0"))
    }

    /// `None` unless `minor` is in (0, max].
    pub fn from_minor_units(minor: i64) -> Option<Self> {
        (minor > 0 && minor <= MAX_MINOR_UNITS).then_some(Self(minor))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl FromStr for Money {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Money::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// An ISO 4217-style currency code: three letters, stored upper-case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.len() == 3 && raw.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Self(raw.to_ascii_uppercase()))
        } else {
            Err(InvalidInput::new(format!(
                "invalid currency {raw:?}: expected a 3-letter code such as USD"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self("USD".into())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Currency {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::parse(raw)
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidInput;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> Self {
        currency.0
    }
}

/// A user id as given on the command line: a positive integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserId(pub i64);

impl FromStr for UserId {
    type Err = InvalidInput;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(Self(id)),
            _ => Err(InvalidInput::new(format!(
                "invalid user id {raw:?}: expected a positive integer"
            ))),
        }
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

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
    pub amount: Money,
    pub currency: Currency,
}

/// The order as carried inside an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub id: i64,
    pub user_id: i64,
    pub amount: Money,
    pub currency: Currency,
}

/// The routing key of [`OrderCreated`].
pub const ORDER_CREATED: &str = "order.created";

/// The event published for every committed order (SPEC "Messages").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub order: OrderSnapshot,
}

impl OrderCreated {
    pub fn new(order: OrderSnapshot, occurred_at: DateTime<Utc>) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            kind: ORDER_CREATED.to_string(),
            occurred_at,
            order,
        }
    }

    /// Parses a message body; anything that is not a valid `order.created`
    /// event is an error the worker treats as permanent.
    pub fn from_json(body: &[u8]) -> anyhow::Result<Self> {
        let event: Self = serde_json::from_slice(body)?;
        anyhow::ensure!(
            event.kind == ORDER_CREATED,
            "unexpected event type {:?}",
            event.kind
        );
        Ok(event)
    }
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
    fn namespaces_prefix_names_and_keys() {
        let ns = Namespace::parse("t_1").unwrap();
        assert_eq!(ns.name("events"), "t_1.events");
        assert_eq!(ns.key("user:3"), "t_1:user:3");
        for raw in ["", "a.b", "a b", "ä", &"x".repeat(65)] {
            assert!(Namespace::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn order_created_has_the_spec_shape() {
        let order = OrderSnapshot {
            id: 42,
            user_id: 3,
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
        };
        let event = OrderCreated::new(order, Utc::now());
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "order.created");
        assert_eq!(
            json["order"],
            serde_json::json!({"id": 42, "user_id": 3, "amount": "42.00", "currency": "USD"})
        );
        assert_eq!(
            OrderCreated::from_json(&serde_json::to_vec(&event).unwrap()).unwrap(),
            event
        );
        assert!(OrderCreated::from_json(b"not json").is_err());
    }
}
