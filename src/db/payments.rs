//! The `payments` table: at most one payment per order.

use diesel::prelude::*;

use super::models::Payment;
use super::schema::payments;

pub fn for_order(conn: &mut PgConnection, order_id: i64) -> QueryResult<Option<Payment>> {
    payments::table
        .filter(payments::order_id.eq(order_id))
        .select(Payment::as_select())
        .first(conn)
        .optional()
}
