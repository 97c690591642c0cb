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

/// Records the order's payment; the unique order id makes a second one for
/// the same order fail instead of charging twice.
pub fn insert(conn: &mut PgConnection, payment: &NewPayment<'_>) -> QueryResult<Payment> {
    diesel::insert_into(payments::table)
        .values(payment)
        .returning(Payment::as_returning())
        .get_result(conn)
}
