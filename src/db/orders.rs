//! The `orders` table.

use diesel::prelude::*;

use super::models::{NewOrderRow, Order};
use super::schema::orders;

pub fn insert(conn: &mut PgConnection, order: &NewOrderRow<'_>) -> QueryResult<Order> {
    diesel::insert_into(orders::table)
        .values(order)
        .returning(Order::as_returning())
        .get_result(conn)
}

pub fn find(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Order>> {
    orders::table
        .find(id)
        .select(Order::as_select())
        .first(conn)
        .optional()
}
