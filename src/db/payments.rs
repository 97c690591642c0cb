//! The `payments` table: at most one payment per order.

use diesel::prelude::*;

use super::models::{NewPayment, Payment};
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
    payments::table
        .filter(payments::order_id.eq_any(order_ids))
        .select(Payment::as_select())
        .load(conn)
}

/// Records several orders' payments in one statement; like [`insert`], a
/// second payment for an order fails.
pub fn insert_many(conn: &mut PgConnection, rows: &[NewPayment<'_>]) -> QueryResult<usize> {
    diesel::insert_into(payments::table)
        .values(rows)
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
