//! The `order_items` table: the products of an order, each with the unit
//! price it was sold at.

use diesel::prelude::*;

use super::models::OrderItem;
use super::schema::order_items;
use crate::domain::OrderId;

pub fn insert_all(conn: &mut PgConnection, items: &[OrderItem]) -> QueryResult<usize> {
    diesel::insert_into(order_items::table)
        .values(items)
        .execute(conn)
}

/// The order's items in product-id order (the order stock is taken and
/// released in).
pub fn for_order(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Vec<OrderItem>> {
    order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select(OrderItem::as_select())
        .load(conn)
}
