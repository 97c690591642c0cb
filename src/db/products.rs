//! The `products` table. Stock only ever moves through single conditional
//! statements (never read-then-write), so concurrent orders serialize on
//! the product's row and the stock can never go below zero.

use diesel::dsl::now;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer};

use super::models::{NewProductRow, ProductRow};
use super::schema::products;
use crate::domain::ProductId;

pub fn insert(conn: &mut PgConnection, product: &NewProductRow<'_>) -> QueryResult<ProductRow> {
    diesel::insert_into(products::table)
        .values(product)
        .returning(ProductRow::as_returning())
        .get_result(conn)
}

pub fn find(conn: &mut PgConnection, id: ProductId) -> QueryResult<Option<ProductRow>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .first(conn)
        .optional()
}

/// The products among `ids` that exist, in id order.
pub fn find_many(conn: &mut PgConnection, ids: &[ProductId]) -> QueryResult<Vec<ProductRow>> {
    products::table
        .filter(products::id.eq_any(ids))
        .order(products::id)
        .select(ProductRow::as_select())
        .load(conn)
}

/// Every product, in id order.
pub fn all(conn: &mut PgConnection) -> QueryResult<Vec<ProductRow>> {
    products::table
        .order(products::id)
        .select(ProductRow::as_select())
        .load(conn)
}

/// The products whose stock is below their threshold, in id order.
pub fn low_stock(conn: &mut PgConnection) -> QueryResult<Vec<ProductRow>> {
    products::table
        .filter(products::stock.lt(products::low_stock_threshold))
        .order(products::id)
        .select(ProductRow::as_select())
        .load(conn)
}

/// Takes `quantity` from the product's stock if it has that much, in one
/// conditional UPDATE (the row lock makes concurrent takers wait, then
/// re-check). Returns the product after the take, or `None` if the stock
/// was short (or the product does not exist).
pub fn take(
    conn: &mut PgConnection,
    id: ProductId,
    quantity: i32,
) -> QueryResult<Option<ProductRow>> {
    diesel::update(
        products::table
            .find(id)
            .filter(products::stock.ge(quantity)),
    )
    .set((
        products::stock.eq(products::stock - quantity),
        products::updated_at.eq(now),
    ))
    .returning(ProductRow::as_returning())
    .get_result(conn)
    .optional()
}

/// Gives `quantity` back to the product's stock (a cancelled order's
/// items). The threshold stays: only an add or a restock moves it.
pub fn release(conn: &mut PgConnection, id: ProductId, quantity: i32) -> QueryResult<ProductRow> {
    diesel::update(products::table.find(id))
        .set((
            products::stock.eq(products::stock + quantity),
            products::updated_at.eq(now),
        ))
        .returning(ProductRow::as_returning())
        .get_result(conn)
}

/// Adds `quantity` to the stock and, unless the threshold was set
/// explicitly, moves the threshold to half the new stock. `None` if the
/// product does not exist.
pub fn restock(
    conn: &mut PgConnection,
    id: ProductId,
    quantity: i32,
) -> QueryResult<Option<ProductRow>> {
    diesel::sql_query(
        "UPDATE products SET stock = stock + $2, \
             low_stock_threshold = CASE WHEN threshold_fixed THEN low_stock_threshold \
                                        ELSE (stock + $2) / 2 END, \
             updated_at = now() \
         WHERE id = $1 \
         RETURNING id, name, price_minor, currency, stock, low_stock_threshold, threshold_fixed",
    )
    .bind::<BigInt, _>(id)
    .bind::<Integer, _>(quantity)
    .get_result(conn)
    .optional()
}
