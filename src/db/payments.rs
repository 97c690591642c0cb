//! The `payments` table: at most one payment per order.

use diesel::prelude::*;

use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid as SqlUuid};

use super::models::{NewPayment, Payment};
use super::prepared::{bind, planned_each_time, prepared};
use super::schema::payments;
use crate::domain::OrderId;

pub fn for_order(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Option<Payment>> {
    payments::table
        .filter(payments::order_id.eq(order_id))
        .select(Payment::as_select())
        .first(conn)
        .optional()
}

/// The payments of these orders.
pub fn for_orders(conn: &mut PgConnection, order_ids: &[OrderId]) -> QueryResult<Vec<Payment>> {
    planned_each_time(
        payments::table
            .filter(payments::order_id.eq_any(order_ids))
            .select(Payment::as_select()),
    )
    .load(conn)
}

/// Records several orders' payments in one statement; like [`insert`], a
/// second payment for an order fails.
pub fn insert_many(conn: &mut PgConnection, rows: &[NewPayment<'_>]) -> QueryResult<usize> {
    prepared(
        "INSERT INTO payments \
             (order_id, event_id, status, amount_minor, currency, reference, decline_reason) \
         SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], \
             $6::text[], $7::text[])",
        (
            bind::<Array<BigInt>, _>(rows.iter().map(|row| row.order_id).collect::<Vec<_>>()),
            bind::<Array<SqlUuid>, _>(rows.iter().map(|row| row.event_id).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|row| row.status).collect::<Vec<_>>()),
            bind::<Array<BigInt>, _>(rows.iter().map(|row| row.amount_minor).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|row| row.currency).collect::<Vec<_>>()),
            bind::<Array<Text>, _>(rows.iter().map(|row| row.reference).collect::<Vec<_>>()),
            bind::<Array<Nullable<Text>>, _>(
                rows.iter()
                    .map(|row| row.decline_reason)
                    .collect::<Vec<_>>(),
            ),
        ),
    )
    .execute(conn)
}

/// Records the order's payment; the unique order id makes a second one for
/// the same order fail instead of charging twice.
pub fn insert(conn: &mut PgConnection, payment: &NewPayment<'_>) -> QueryResult<Payment> {
    diesel::insert_into(payments::table)
        .values(payment)
        .returning(Payment::as_returning())
        .get_result(conn)
}
