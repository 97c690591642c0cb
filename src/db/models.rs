//! Rows as read from and written to the tables: `Queryable` read structs and
//! borrowed `Insertable` structs, one pair per table.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::schema::{notifications, order_items, orders, outbox, payments, products, users};
use crate::domain::{
    Currency, DeliveryStatus, OrderId, OrderStatus, PaymentStatus, ProductId, UserId,
};

#[derive(Clone, Debug, Queryable, Selectable, Serialize, Deserialize, PartialEq, Eq)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub email: String,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub email: &'a str,
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = orders, check_for_backend(diesel::pg::Pg))]
pub struct Order {
    pub id: OrderId,
    pub user_id: UserId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
    pub status: OrderStatus,
    pub updated_at: DateTime<Utc>,
}

pub struct NewOrderRow<'a> {
    pub user_id: UserId,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub idempotency_key: Option<&'a str>,
}

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = outbox, check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub order_id: OrderId,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
}

pub struct NewOutboxRow<'a> {
    pub event_id: Uuid,
    pub order_id: OrderId,
    pub routing_key: &'a str,
    pub payload: &'a serde_json::Value,
}

#[derive(Clone, Debug, Queryable, Selectable, Serialize)]
#[diesel(table_name = notifications, check_for_backend(diesel::pg::Pg))]
pub struct Notification {
    pub event_id: Uuid,
    pub order_id: OrderId,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub smtp_reply: Option<String>,
    pub message_id: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub consumer: String,
}

#[derive(Clone)]
pub struct NewNotification<'a> {
    pub event_id: Uuid,
    pub consumer: &'a str,
    pub order_id: OrderId,
    pub status: DeliveryStatus,
    pub message_id: Option<&'a str>,
}

#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = order_items, check_for_backend(diesel::pg::Pg))]
pub struct OrderItem {
    pub order_id: OrderId,
    pub product_id: ProductId,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = payments, check_for_backend(diesel::pg::Pg))]
pub struct Payment {
    pub id: i64,
    pub order_id: OrderId,
    pub event_id: Uuid,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: Currency,
    pub reference: String,
    pub decline_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Insertable)]
#[diesel(table_name = payments)]
pub struct NewPayment<'a> {
    pub order_id: OrderId,
    pub event_id: Uuid,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub reference: &'a str,
    pub decline_reason: Option<&'a str>,
}

#[derive(Clone, Debug, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = products, check_for_backend(diesel::pg::Pg))]
pub struct ProductRow {
    pub id: ProductId,
    pub name: String,
    pub price_minor: i64,
    pub currency: Currency,
    pub stock: i32,
    pub low_stock_threshold: i32,
    pub threshold_fixed: bool,
}

#[derive(Insertable)]
#[diesel(table_name = products)]
pub struct NewProductRow<'a> {
    pub name: &'a str,
    pub price_minor: i64,
    pub currency: &'a str,
    pub stock: i32,
    pub low_stock_threshold: i32,
    pub threshold_fixed: bool,
}

impl TryFrom<ProductRow> for crate::domain::Product {
    type Error = anyhow::Error;
    fn try_from(row: ProductRow) -> anyhow::Result<Self> {
        Ok(Self {
            id: row.id,
            name: row.name,
            price: crate::domain::Money::from_minor_units(row.price_minor).ok_or_else(|| {
                anyhow::anyhow!(
                    "product {} has an invalid price {}",
                    row.id,
                    row.price_minor
                )
            })?,
            currency: row.currency,
            stock: row.stock,
            low_stock_threshold: row.low_stock_threshold,
        })
    }
}
