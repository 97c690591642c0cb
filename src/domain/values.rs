//! The values every other domain type and every event is made of: money
//! in integer minor units, a currency code, and the ids of users, orders
//! and products (stored as `bigint`).

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{BigInt, Text};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, AsExpression, FromSqlRow)]
#[serde(try_from = "String", into = "String")]
#[diesel(sql_type = Text)]
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

/// A positive integer id (a row's primary key) as given on the command line
/// or carried in an event: serialized as the bare number, stored as `bigint`.
macro_rules! positive_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            AsExpression, FromSqlRow,
        )]
        #[diesel(sql_type = BigInt)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl ToSql<BigInt, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <i64 as ToSql<BigInt, Pg>>::to_sql(&self.0, &mut out.reborrow())
            }
        }

        impl FromSql<BigInt, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                <i64 as FromSql<BigInt, Pg>>::from_sql(bytes).map(Self)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                match raw.parse::<i64>() {
                    Ok(id) if id > 0 => Ok(Self(id)),
                    _ => Err(InvalidInput::new(format!(
                        concat!("invalid ", $what, " {:?}: expected a positive integer"),
                        raw
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_id!(
    /// A user's id.
    UserId,
    "user id"
);
positive_id!(
    /// An order's id.
    OrderId,
    "order id"
);
positive_id!(
    /// A product's id.
    ProductId,
    "product id"
);

impl ToSql<Text, Pg> for Currency {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.0.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl FromSql<Text, Pg> for Currency {
    fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
        let raw = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
        Ok(Currency::parse(&raw)?)
    }
}
