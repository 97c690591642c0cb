//! Request fields every route parses alike: ids from paths and queries,
//! amounts as written, an optional currency.

use serde_json::value::RawValue;

use crate::domain::{Currency, Money};
use crate::error::InvalidInput;
use crate::http::error::ApiError;

/// A positive integer id from a path or query.
pub fn parse_id(what: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::invalid(format!(
            "invalid {what} {raw:?}: expected a positive integer"
        ))
    })
}

/// `"42.50"` or `42.50`: the text as written, at most 2 fraction digits.
pub fn parse_money(field: &str, raw: &RawValue) -> Result<Money, InvalidInput> {
    let text = raw.get();
    if text.starts_with('"') {
        let text: String = serde_json::from_str(text)
            .map_err(|e| InvalidInput::new(format!("invalid {field}: {e}")))?;
        Money::parse(&text)
    } else {
        Money::parse(text)
    }
}

/// A currency code, or the default currency when the field is absent.
pub fn parse_currency(raw: Option<&str>) -> Result<Currency, InvalidInput> {
    raw.map(Currency::parse)
        .transpose()
        .map(Option::unwrap_or_default)
}
