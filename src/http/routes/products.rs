//! `GET /products/{id}` (through the Redis cache),
//! `GET /products?low_stock=true`, and the admin's `POST /products` and
//! `POST /products/{id}/restock`.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::fields::{parse_currency, parse_id, parse_money};
use crate::domain::{NewProduct, Product, ProductId, Quantity, StockLevel};
use crate::error::{InvalidInput, NotFound};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::pipeline::products;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductBody {
    name: String,
    price: Box<RawValue>,
    currency: Option<String>,
    stock: i64,
    low_stock_threshold: Option<i64>,
}

fn invalid(error: InvalidInput) -> ApiError {
    ApiError::invalid(error.to_string())
}

fn stock_level(value: i64) -> Result<StockLevel, ApiError> {
    value.to_string().parse().map_err(invalid)
}

/// `POST /products` (admin): `{"name", "price": "12.50", "stock", "low_stock_threshold"?}`.
pub async fn create(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let body: ProductBody = serde_json::from_slice(&body).map_err(ApiError::from_json)?;
    let product = NewProduct {
        name: body.name.parse().map_err(invalid)?,
        price: parse_money("price", &body.price).map_err(invalid)?,
        currency: parse_currency(body.currency.as_deref()).map_err(invalid)?,
        stock: stock_level(body.stock)?,
        low_stock_threshold: body.low_stock_threshold.map(stock_level).transpose()?,
    };
    let added = state
        .blocking(move |state| products::add(&mut *state.conn()?, &product))
        .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// `GET /products/{id}`: Redis first, PostgreSQL on a miss (then cached);
/// every stock change drops the entry.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Product>, ApiError> {
    let id = ProductId(parse_id("product id", &id)?);
    let product = state
        .blocking(move |state| {
            state
                .products
                .product(&mut *state.conn()?, id)?
                .ok_or_else(|| NotFound::new(format!("unknown product {id}")).into())
        })
        .await?;
    Ok(Json(product))
}

/// `GET /products` (all, in id order) or `?low_stock=true` (those below
/// their threshold).
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Product>>, ApiError> {
    let mut low_stock = false;
    for (key, value) in &query {
        match (key.as_str(), value.as_str()) {
            ("low_stock", "true") => low_stock = true,
            ("low_stock", "false") => low_stock = false,
            ("low_stock", other) => {
                return Err(ApiError::invalid(format!(
                    "invalid low_stock {other:?}: true or false"
                )))
            }
            (other, _) => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let found = state
        .blocking(move |state| {
            let mut conn = state.conn()?;
            match low_stock {
                true => products::list_low_stock(&mut conn),
                false => products::list(&mut conn),
            }
        })
        .await?;
    Ok(Json(found))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestockBody {
    quantity: i64,
}

/// `POST /products/{id}/restock` (admin): `{"quantity": 50}`.
pub async fn restock(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Product>, ApiError> {
    let id = ProductId(parse_id("product id", &id)?);
    let body: RestockBody = serde_json::from_slice(&body).map_err(ApiError::from_json)?;
    let quantity = Quantity::new(body.quantity).ok_or_else(|| {
        ApiError::invalid(format!(
            "invalid quantity {}: expected a positive integer",
            body.quantity
        ))
    })?;
    let product = state
        .blocking(move |state| {
            products::restock(&mut *state.conn()?, Some(&state.products), id, quantity)
        })
        .await?;
    Ok(Json(product))
}
