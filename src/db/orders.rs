//! The `orders` table.

use diesel::dsl::now;
use diesel::prelude::*;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};

use super::models::{NewOrderRow, Order};
use super::prepared::{bind, planned_each_time, prepared};
use super::schema::orders;
use crate::domain::{Event, OrderId, OrderStatus, UserId};

/// Inserts one order. Its columns are given one by one rather than as the
/// `Insertable` struct: diesel prepares a statement built from `eq`s once
/// per connection and reuses it, while a struct's insert (whose every field
/// could be `DEFAULT`) is parsed and planned again on every call.
pub fn insert(conn: &mut PgConnection, order: &NewOrderRow<'_>) -> QueryResult<Order> {
    diesel::insert_into(orders::table)
        .values((
            orders::user_id.eq(order.user_id),
            orders::amount_minor.eq(order.amount_minor),
            orders::currency.eq(order.currency),
            orders::idempotency_key.eq(order.idempotency_key),
        ))
        .returning(Order::as_returning())
        .get_result(conn)
}

pub fn find(conn: &mut PgConnection, id: OrderId) -> QueryResult<Option<Order>> {
    orders::table
        .find(id)
        .select(Order::as_select())
        .first(conn)
        .optional()
}

/// The order placed with a client's idempotency key, if any.
pub fn find_by_idempotency_key(conn: &mut PgConnection, key: &str) -> QueryResult<Option<Order>> {
    orders::table
        .filter(orders::idempotency_key.eq(key))
        .select(Order::as_select())
        .first(conn)
        .optional()
}

/// Inserts an order created at `created_at` and its `event` in the outbox,
/// in ONE statement (its own transaction when none is open): `event`'s
/// `order.id` is set to the new order's id on the way in. Returns the
/// order's id and the outbox row's.
pub fn insert_with_event(
    conn: &mut PgConnection,
    order: &NewOrderRow<'_>,
    created_at: DateTime<Utc>,
    event: &Event,
) -> QueryResult<(OrderId, i64)> {
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        order_id: OrderId,
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let inserted: Inserted = prepared(
        "WITH placed AS ( \
             INSERT INTO orders (user_id, amount_minor, currency, idempotency_key, created_at, \
                 updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) \
         INSERT INTO outbox (event_id, order_id, routing_key, payload) \
         SELECT $7, placed.id, $8, jsonb_set($9, '{order,id}', to_jsonb(placed.id)) FROM placed \
         RETURNING order_id, id",
        (
            bind::<BigInt, _>(order.user_id),
            bind::<BigInt, _>(order.amount_minor),
            bind::<Text, _>(order.currency),
            bind::<Nullable<Text>, _>(order.idempotency_key),
            bind::<Timestamptz, _>(created_at),
            bind::<Timestamptz, _>(created_at),
            bind::<SqlUuid, _>(event.event_id()),
            bind::<Text, _>(event.routing_key()),
            bind::<Jsonb, _>(event.to_json()),
        ),
    )
    .get_result(conn)?;
    Ok((inserted.order_id, inserted.id))
}

/// The name of the unique constraint on `orders.idempotency_key`.
pub const IDEMPOTENCY_KEY_CONSTRAINT: &str = "orders_idempotency_key_key";

/// The order, locked `FOR NO KEY UPDATE` until the transaction ends:
/// status moves of one order happen one after the other. Not `FOR UPDATE`:
/// that would also block every insert that references the order (a
/// delivery-log row's foreign-key check takes `FOR KEY SHARE`), and a batch
/// of deliveries referencing many orders would then deadlock with the
/// payments being made for them.
pub fn lock(conn: &mut PgConnection, id: OrderId) -> QueryResult<Option<Order>> {
    orders::table
        .find(id)
        .for_no_key_update()
        .select(Order::as_select())
        .first(conn)
        .optional()
}

/// [`lock`] for several orders, in id order (so lockers never deadlock);
/// the ones that exist.
pub fn lock_many(conn: &mut PgConnection, ids: &[OrderId]) -> QueryResult<Vec<Order>> {
    planned_each_time(
        orders::table
            .filter(orders::id.eq_any(ids))
            .order(orders::id)
            .for_no_key_update()
            .select(Order::as_select()),
    )
    .load(conn)
}

/// Sets the status of several orders in one statement.
pub fn set_status_many(
    conn: &mut PgConnection,
    ids: &[OrderId],
    status: OrderStatus,
) -> QueryResult<usize> {
    planned_each_time(prepared(
        "UPDATE orders SET status = $1, updated_at = CURRENT_TIMESTAMP WHERE id = ANY($2)",
        (bind::<Text, _>(status), bind::<Array<BigInt>, _>(ids)),
    ))
    .execute(conn)
}

pub fn set_status(conn: &mut PgConnection, id: OrderId, status: OrderStatus) -> QueryResult<Order> {
    diesel::update(orders::table.find(id))
        .set((orders::status.eq(status), orders::updated_at.eq(now)))
        .returning(Order::as_returning())
        .get_result(conn)
}

/// Which orders [`list`] returns: all filters optional, newest first.
#[derive(Clone, Debug, Default)]
pub struct OrderFilter {
    pub user_id: Option<UserId>,
    pub status: Option<OrderStatus>,
    /// Only orders with a smaller id: the next page after the last one seen.
    pub before_id: Option<OrderId>,
    pub limit: i64,
}

/// Newest first (by id), filtered, at most `filter.limit`.
pub fn list(conn: &mut PgConnection, filter: &OrderFilter) -> QueryResult<Vec<Order>> {
    let mut query = orders::table
        .select(Order::as_select())
        .order(orders::id.desc())
        .limit(filter.limit)
        .into_boxed();
    if let Some(user_id) = filter.user_id {
        query = query.filter(orders::user_id.eq(user_id));
    }
    if let Some(status) = filter.status {
        query = query.filter(orders::status.eq(status));
    }
    if let Some(before_id) = filter.before_id {
        query = query.filter(orders::id.lt(before_id));
    }
    query.load(conn)
}
