//! The states a row can be in, each an enum stored as its lower-case name
//! in a text column: an order's status, a delivery's status, an attempt's
//! outcome and a payment's status.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;

/// An enum of named states: `as_str`, `ALL`, `Display`, `FromStr` (an
/// unknown name is invalid input listing the known ones), serde and diesel
/// as its name.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            AsExpression, FromSqlRow,
        )]
        #[diesel(sql_type = Text)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|state| state.as_str() == raw)
                    .ok_or_else(|| {
                        let known: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                        InvalidInput::new(format!(
                            concat!("invalid ", $what, " {:?}: expected one of {}"),
                            raw,
                            known.join(", ")
                        ))
                    })
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                let raw = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok(raw.parse()?)
            }
        }
    };
}

text_enum!(
    /// Where an order stands (`orders.status`).
    OrderStatus, "order status", {
        Pending => "pending",
        Paid => "paid",
        Shipped => "shipped",
        Delivered => "delivered",
        Cancelled => "cancelled",
    }
);

impl OrderStatus {
    /// The legal moves: `pending` → `paid` → `shipped` → `delivered`, or
    /// `pending` → `cancelled`. Nothing leaves `delivered` or `cancelled`.
    pub fn can_become(self, to: Self) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            (Pending, Paid) | (Paid, Shipped) | (Shipped, Delivered) | (Pending, Cancelled)
        )
    }
}

text_enum!(
    /// Where one event's delivery to one consumer stands
    /// (`notifications.status`, the delivery log).
    DeliveryStatus, "delivery status", {
        /// Being delivered: the row is locked while the effect runs.
        Pending => "pending",
        /// The effect happened (for an email: the SMTP server accepted it).
        Sent => "sent",
        /// Failed transiently; waiting in a retry queue.
        Retrying => "retrying",
        /// Dead-lettered.
        Dead => "dead",
    }
);

text_enum!(
    /// What one delivery attempt did (`delivery_attempts.outcome`).
    AttemptOutcome, "attempt outcome", {
        Sent => "sent",
        /// A redelivery of an event already handled: acked, nothing done.
        Duplicate => "duplicate",
        Retrying => "retrying",
        Dead => "dead",
        /// Moved back from the dead-letter queue by `ordctl replay-dlq`.
        Replayed => "replayed",
    }
);

text_enum!(
    /// What the payment gateway said (`payments.status`).
    PaymentStatus, "payment status", {
        Succeeded => "succeeded",
        Declined => "declined",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_serialize_as_their_names() {
        fn check<T>(all: &[T])
        where
            T: Copy + fmt::Debug + PartialEq + FromStr + Serialize + fmt::Display,
            <T as FromStr>::Err: fmt::Debug,
        {
            for &state in all {
                let name = state.to_string();
                assert_eq!(name.parse::<T>().unwrap(), state);
                assert_eq!(
                    serde_json::to_value(state).unwrap(),
                    serde_json::json!(name)
                );
            }
        }
        check(OrderStatus::ALL);
        check(DeliveryStatus::ALL);
        check(AttemptOutcome::ALL);
        check(PaymentStatus::ALL);
        for raw in ["", "Paid", "refunded", " paid"] {
            assert!(raw.parse::<OrderStatus>().is_err(), "{raw:?}");
        }
        let error = "Sent".parse::<DeliveryStatus>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid delivery status \"Sent\": expected one of pending, sent, retrying, dead"
        );
    }

    #[test]
    fn only_the_documented_status_moves_are_legal() {
        use OrderStatus::*;
        let legal = [
            (Pending, Paid),
            (Paid, Shipped),
            (Shipped, Delivered),
            (Pending, Cancelled),
        ];
        for &from in OrderStatus::ALL {
            for &to in OrderStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    legal.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
    }
}
