//! `POST /orders`, `GET /orders/{id}`, `GET /orders?…` and the admin's
//! `PATCH /orders/{id}/status`: the same use cases as `ordctl place-order`,
//! `order show` and `order set-status`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::fields::{parse_currency, parse_id, parse_money};
use crate::db::orders::{self as order_rows, OrderFilter};
use crate::domain::{
    IdempotencyKey, NewOrder, OrderContents, OrderId, OrderItems, OrderLine, OrderStatus,
    ProductId, Quantity, UserId,
};
use crate::error::InvalidInput;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::pipeline::orders::{self, OrderView};
use crate::pipeline::place_order::{self, Placed};

/// The most orders one page of `GET /orders` returns.
pub const MAX_PAGE: i64 = 500;
const DEFAULT_PAGE: i64 = 50;

/// The body of `POST /orders`. `amount` is kept as raw JSON text so that a
/// number is parsed exactly as written, never through a float.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    user_id: i64,
    amount: Option<Box<RawValue>>,
    currency: Option<String>,
    items: Option<Vec<ItemBody>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    product_id: i64,
    quantity: i64,
}

impl OrderBody {
    fn parse(body: &[u8], idempotency_key: Option<IdempotencyKey>) -> Result<NewOrder, ApiError> {
        let body: OrderBody = serde_json::from_slice(body).map_err(ApiError::from_json)?;
        let invalid = |error: InvalidInput| ApiError::invalid(error.to_string());
        let user_id = positive("user_id", body.user_id)?;
        let contents = match (body.amount, body.items) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "give either `amount` or `items`, not both",
                ))
            }
            (None, None) => return Err(ApiError::invalid("missing field `amount` (or `items`)")),
            (Some(amount), None) => OrderContents::Amount {
                amount: parse_money("amount", &amount).map_err(invalid)?,
                currency: parse_currency(body.currency.as_deref()).map_err(invalid)?,
            },
            (None, Some(_)) if body.currency.is_some() => {
                return Err(ApiError::invalid(
                    "an order of items is in its products' currency: leave out `currency`",
                ))
            }
            (None, Some(items)) => {
                let lines = items
                    .into_iter()
                    .map(|item| {
                        Ok(OrderLine {
                            product_id: ProductId(positive("product_id", item.product_id)?),
                            quantity: Quantity::new(item.quantity).ok_or_else(|| {
                                ApiError::invalid(format!(
                                    "invalid quantity {}: expected a positive integer",
                                    item.quantity
                                ))
                            })?,
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()?;
                OrderContents::Items(OrderItems::new(lines).map_err(invalid)?)
            }
        };
        Ok(NewOrder {
            user_id: UserId(user_id),
            contents,
            idempotency_key,
        })
    }
}

fn positive(field: &str, value: i64) -> Result<i64, ApiError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!(
            "invalid {field} {value}: expected a positive integer"
        )))
    }
}

/// `place-order --json`'s object plus the order's status.
#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    placed: Placed,
    status: OrderStatus,
}

/// `POST /orders`: commits the order with its outbox event (taking the
/// items' stock in the same transaction), then publishes it (confirmed,
/// together with other requests' events: [`crate::pipeline::publishing`]).
/// 201; the broker being down still gives 201 with `published: false`. An
/// `Idempotency-Key` placed before returns that first order with 200 and
/// writes nothing.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| InvalidInput::new("invalid idempotency key: not ASCII"))
                .and_then(str::parse::<IdempotencyKey>)
                .map_err(|error| ApiError::invalid(error.to_string()))?,
        ),
        None => None,
    };
    let order = OrderBody::parse(&body, key)?;
    let (mut created, outbox_ids) = state
        .blocking(move |state| {
            let mut conn = state.conn()?;
            // Announced by the publishing round it joins, with the
            // round's other orders.
            let (placed, outbox_ids) = place_order::commit(&mut conn, &order)?;
            state.products.invalidate(&placed.stock_changed);
            // A replayed order may have moved on since it was placed.
            let status = match placed.replayed {
                false => OrderStatus::Pending,
                true => order_rows::find(&mut conn, placed.order_id)?
                    .map_or(OrderStatus::Pending, |order| order.status),
            };
            anyhow::Ok((Created { placed, status }, outbox_ids))
        })
        .await?;
    // A replayed order keeps what its first placing recorded.
    if !outbox_ids.is_empty() {
        created.placed.published = state.publishing.publish(outbox_ids).await.unwrap_or(false);
    }
    let status = match created.placed.replayed {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    Ok((status, Json(serde_json::to_value(created).expect("JSON"))))
}

/// `GET /orders/{id}`: the order with its items, status, payment and
/// delivery timeline (`ordctl order show --json`).
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<orders::OrderDetails>, ApiError> {
    let id = OrderId(parse_id("order id", &id)?);
    let details = state
        .blocking(move |state| orders::show(&mut *state.conn()?, id))
        .await?;
    Ok(Json(details))
}

/// `GET /orders?user_id=&status=&limit=&before_id=`: newest first; the
/// next page is `before_id=<next_before_id>`.
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let filter = parse_filter(&query)?;
    let limit = filter.limit;
    let found = state
        .blocking(move |state| Ok(order_rows::list(&mut *state.conn()?, &filter)?))
        .await?;
    let next_before_id = (found.len() as i64 == limit)
        .then(|| found.last().map(|order| order.id))
        .flatten();
    let orders = found
        .into_iter()
        .map(OrderView::try_from)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(
        serde_json::json!({ "orders": orders, "next_before_id": next_before_id }),
    ))
}

fn parse_filter(query: &HashMap<String, String>) -> Result<OrderFilter, ApiError> {
    let mut filter = OrderFilter {
        limit: DEFAULT_PAGE,
        ..OrderFilter::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "user_id" => filter.user_id = Some(UserId(parse_id("user_id", value)?)),
            "before_id" => filter.before_id = Some(OrderId(parse_id("before_id", value)?)),
            "status" => {
                filter.status = Some(
                    value
                        .parse()
                        .map_err(|error: InvalidInput| ApiError::invalid(error.to_string()))?,
                )
            }
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| (1..=MAX_PAGE).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid(format!(
                            "invalid limit {value:?}: a number from 1 to {MAX_PAGE}"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    Ok(filter)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
}

/// The order after an admin's move, and the move.
#[derive(Serialize)]
struct Moved {
    #[serde(flatten)]
    order: OrderView,
    from: OrderStatus,
    event_id: uuid::Uuid,
    routing_key: &'static str,
    published: bool,
}

/// `PATCH /orders/{id}/status` (admin): `{"status": "shipped"}`. An illegal
/// move is 422 and writes nothing; the event is published right after the
/// commit (or by the relay, if the broker is down).
pub async fn set_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = OrderId(parse_id("order id", &id)?);
    let body: StatusBody = serde_json::from_slice(&body).map_err(ApiError::from_json)?;
    let to: OrderStatus = body
        .status
        .parse()
        .map_err(|error: InvalidInput| ApiError::invalid(error.to_string()))?;
    let (changed, order) = state
        .blocking(move |state| {
            let mut conn = state.conn()?;
            let changed = crate::orders::set_status(&mut conn, id, to)?;
            state.products.invalidate(&changed.released);
            let order = order_rows::find(&mut conn, id)?
                .ok_or_else(|| anyhow::anyhow!("order {id} vanished"))?;
            anyhow::Ok((changed, OrderView::try_from(order)?))
        })
        .await?;
    let published = state
        .publishing
        .publish(vec![changed.outbox_id])
        .await
        .unwrap_or(false);
    let moved = Moved {
        order,
        from: changed.from,
        event_id: changed.event_id,
        routing_key: changed.routing_key,
        published,
    };
    Ok(Json(serde_json::to_value(moved).expect("JSON")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewOrder, String> {
        OrderBody::parse(body.as_bytes(), None)
            .map_err(|e| format!("{} {}", e.status.as_u16(), e.message))
    }

    fn amount(order: &NewOrder) -> i64 {
        match &order.contents {
            OrderContents::Amount { amount, .. } => amount.minor_units(),
            OrderContents::Items(_) => panic!("an order of items"),
        }
    }

    #[test]
    fn amounts_are_read_as_written_never_as_floats() {
        for (body, minor) in [
            (r#"{"user_id": 3, "amount": "42.00"}"#, 4200),
            (r#"{"user_id": 3, "amount": 42}"#, 4200),
            (r#"{"user_id": 3, "amount": 0.29}"#, 29),
            (r#"{"user_id": 3, "amount": 999999999.99}"#, 99_999_999_999),
        ] {
            assert_eq!(amount(&parse(body).unwrap()), minor, "{body}");
        }
    }

    #[test]
    fn items_are_merged_per_product() {
        let order =
            parse(r#"{"user_id": 3, "items": [{"product_id": 5, "quantity": 2}, {"product_id": 5, "quantity": 1}]}"#)
                .unwrap();
        let OrderContents::Items(items) = order.contents else {
            panic!("items expected")
        };
        assert_eq!(items.lines().len(), 1);
        assert_eq!(items.lines()[0].quantity.get(), 3);
    }

    #[test]
    fn bad_bodies_are_400_or_422() {
        for (body, status) in [
            ("{", "400"),
            ("not json", "400"),
            (r#"{"amount": "1"}"#, "422"),
            (r#"{"user_id": 3}"#, "422"),
            (r#"{"user_id": 3, "amount": "1.001"}"#, "422"),
            (r#"{"user_id": 3, "amount": 1.001}"#, "422"),
            (r#"{"user_id": 3, "amount": 1e3}"#, "422"),
            (r#"{"user_id": 3, "amount": -5}"#, "422"),
            (r#"{"user_id": 3, "amount": null}"#, "422"),
            (r#"{"user_id": 0, "amount": 5}"#, "422"),
            (r#"{"user_id": "3", "amount": 5}"#, "422"),
            (
                r#"{"user_id": 3, "amount": 5, "currency": "DOLLARS"}"#,
                "422",
            ),
            (r#"{"user_id": 3, "amount": 5, "colour": "red"}"#, "422"),
            (r#"{"user_id": 3, "items": []}"#, "422"),
            (
                r#"{"user_id": 3, "items": [{"product_id": 1, "quantity": 0}]}"#,
                "422",
            ),
            (r#"{"user_id": 3, "items": [{"product_id": 1}]}"#, "422"),
            (
                r#"{"user_id": 3, "amount": 5, "items": [{"product_id": 1, "quantity": 1}]}"#,
                "422",
            ),
        ] {
            let error = parse(body).unwrap_err();
            assert!(error.starts_with(status), "{body}: {error}");
        }
    }
}
