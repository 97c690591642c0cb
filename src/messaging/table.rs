//! AMQP field tables (message headers): reading this tool's headers,
//! showing any header as JSON, and bounding the text put into one.

use amiquip::{AmqpValue, FieldTable};
use serde_json::Value;

/// A header value as a string, if it is one.
pub fn header_str<'a>(headers: Option<&'a FieldTable>, key: &str) -> Option<&'a str> {
    match headers?.get(key)? {
        AmqpValue::LongString(value) => Some(value),
        _ => None,
    }
}

/// A header value as an integer, if it is one.
pub fn header_int(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    match headers?.get(key)? {
        AmqpValue::LongLongInt(value) => Some(*value),
        AmqpValue::LongInt(value) => Some(i64::from(*value)),
        AmqpValue::ShortInt(value) => Some(i64::from(*value)),
        AmqpValue::LongUInt(value) => Some(i64::from(*value)),
        _ => None,
    }
}

/// An AMQP header value as JSON.
pub fn to_json(value: &AmqpValue) -> Value {
    match value {
        AmqpValue::Boolean(b) => Value::Bool(*b),
        AmqpValue::ShortShortInt(n) => (*n).into(),
        AmqpValue::ShortShortUInt(n) => (*n).into(),
        AmqpValue::ShortInt(n) => (*n).into(),
        AmqpValue::ShortUInt(n) => (*n).into(),
        AmqpValue::LongInt(n) => (*n).into(),
        AmqpValue::LongUInt(n) => (*n).into(),
        AmqpValue::LongLongInt(n) => (*n).into(),
        AmqpValue::Timestamp(n) => (*n).into(),
        AmqpValue::Float(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number)
        }
        AmqpValue::Double(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AmqpValue::DecimalValue(d) => Value::String(format!("{}e-{}", d.value, d.scale)),
        AmqpValue::LongString(text) => Value::String(text.clone()),
        AmqpValue::FieldArray(items) => Value::Array(items.iter().map(to_json).collect()),
        AmqpValue::FieldTable(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| (key.clone(), to_json(value)))
                .collect(),
        ),
        AmqpValue::ByteArray(bytes) => Value::String(String::from_utf8_lossy(bytes).into()),
        AmqpValue::Void => Value::Null,
    }
}

/// `text` cut to `max_chars` characters, with `…` when it was cut (header
/// values and terminal lines stay bounded).
pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_become_json() {
        let mut table = FieldTable::new();
        table.insert("n".into(), AmqpValue::LongLongInt(3));
        table.insert("s".into(), AmqpValue::LongString("x".into()));
        let value = to_json(&AmqpValue::FieldArray(vec![
            AmqpValue::Boolean(true),
            AmqpValue::FieldTable(table),
            AmqpValue::Void,
        ]));
        assert_eq!(value, serde_json::json!([true, {"n": 3, "s": "x"}, null]));
    }

    #[test]
    fn truncate_cuts_at_characters_not_bytes() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hé", 2), "hé");
    }
}
