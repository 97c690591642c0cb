//! Products and their stock: adding, listing and restocking products, and
//! taking an order's items from stock inside the order's transaction — one
//! conditional UPDATE per product, in product-id order, so stock never goes
//! below zero under any concurrency and two orders never deadlock.

use anyhow::Context;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::PgConnection;

use crate::cache::ProductCache;
use crate::db::models::{NewProductRow, ProductRow};
use crate::db::products;
use crate::domain::{Currency, NewProduct, OrderItems, Product, ProductId, Quantity};
use crate::error::{InvalidInput, NotFound, Refused};

/// Adds a product. Its threshold is the one given (and then stays), else
/// half its stock (and then follows each restock).
pub fn add(conn: &mut PgConnection, product: &NewProduct) -> anyhow::Result<Product> {
    let row = products::insert(
        conn,
        &NewProductRow {
            name: product.name.as_str(),
            price_minor: product.price.minor_units(),
            currency: product.currency.as_str(),
            stock: product.stock.get(),
            low_stock_threshold: product
                .low_stock_threshold
                .unwrap_or(product.stock.half())
                .get(),
            threshold_fixed: product.low_stock_threshold.is_some(),
        },
    )
    .context("adding a product")?;
    Product::try_from(row)
}

/// Every product, in id order.
pub fn list(conn: &mut PgConnection) -> anyhow::Result<Vec<Product>> {
    products::all(conn)
        .context("listing products")?
        .into_iter()
        .map(Product::try_from)
        .collect()
}

/// The products whose stock is below their low-stock threshold.
pub fn list_low_stock(conn: &mut PgConnection) -> anyhow::Result<Vec<Product>> {
    products::low_stock(conn)
        .context("listing products low on stock")?
        .into_iter()
        .map(Product::try_from)
        .collect()
}

/// Adds `quantity` to the product's stock (moving a threshold that was not
/// set explicitly to half the new stock), then drops its cache entry. Stock
/// back at or above the threshold re-arms the low-stock event. An unknown
/// product, or a stock that would pass the largest level, is
/// [`InvalidInput`].
pub fn restock(
    conn: &mut PgConnection,
    cache: Option<&ProductCache>,
    id: ProductId,
    quantity: Quantity,
) -> anyhow::Result<Product> {
    let row = match products::restock(conn, id, quantity.get()) {
        Ok(Some(row)) => row,
        Ok(None) => return Err(unknown(id).into()),
        Err(error) if out_of_range(&error) => {
            return Err(InvalidInput::new(format!(
                "restocking product {id} by {quantity} would pass the largest stock level"
            ))
            .into())
        }
        Err(error) => return Err(error).with_context(|| format!("restocking product {id}")),
    };
    if let Some(cache) = cache {
        cache.invalidate(&[id]);
    }
    Product::try_from(row)
}

/// One product's part of an order, taken from stock.
#[derive(Clone, Debug)]
pub struct Taken {
    /// The product right after the take.
    pub product: ProductRow,
    pub quantity: i32,
}

impl Taken {
    /// Whether this take moved the stock from at-or-above the threshold to
    /// below it: the one take per crossing that writes `stock.low`.
    pub fn crossed_threshold(&self) -> bool {
        crossed(
            self.product.stock + self.quantity,
            self.product.stock,
            self.product.low_stock_threshold,
        )
    }
}

fn crossed(before: i32, after: i32, threshold: i32) -> bool {
    before >= threshold && after < threshold
}

/// Takes the items from stock, in the caller's transaction. Every product
/// must exist and all must share one currency ([`InvalidInput`] otherwise,
/// checked before any stock is touched); a product without enough stock is
/// [`Refused`]. On an error the caller rolls back, so nothing was taken.
/// Returns the takes in product-id order, with the currency.
pub fn take_stock(
    conn: &mut PgConnection,
    items: &OrderItems,
) -> anyhow::Result<(Vec<Taken>, Currency)> {
    let ids: Vec<ProductId> = items.lines().iter().map(|line| line.product_id).collect();
    // A read to check the input only: the stock is decided by the
    // conditional updates below, never by what this read saw.
    let found = products::find_many(conn, &ids).context("reading the products")?;
    if let Some(missing) = ids.iter().find(|id| !found.iter().any(|p| p.id == **id)) {
        return Err(unknown(*missing).into());
    }
    let mut currencies: Vec<&str> = found.iter().map(|p| p.currency.as_str()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    if currencies.len() > 1 {
        return Err(InvalidInput::new(format!(
            "the items are priced in different currencies ({}): place one order per currency",
            currencies.join(", ")
        ))
        .into());
    }
    let currency = Currency::parse(currencies[0])?;

    let mut taken = Vec::with_capacity(ids.len());
    for line in items.lines() {
        let (id, quantity) = (line.product_id, line.quantity.get());
        match products::take(conn, id, quantity)
            .with_context(|| format!("taking product {id} from stock"))?
        {
            Some(product) => taken.push(Taken { product, quantity }),
            None => {
                let left = products::find(conn, id)?.map_or(0, |p| p.stock);
                let name = found
                    .iter()
                    .find(|p| p.id == id)
                    .map_or("", |p| p.name.as_str());
                return Err(Refused::new(format!(
                    "not enough stock of product {id} ({name}): {quantity} ordered, {left} left"
                ))
                .into());
            }
        }
    }
    Ok((taken, currency))
}

fn unknown(id: ProductId) -> NotFound {
    NotFound::new(format!("unknown product {id}"))
}

/// PostgreSQL's "integer out of range" (SQLSTATE 22003).
fn out_of_range(error: &DieselError) -> bool {
    matches!(error, DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
        if info.message().contains("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_take_crosses_only_from_at_or_above_to_below_the_threshold() {
        assert!(crossed(5, 4, 5), "from at to below");
        assert!(crossed(10, 0, 5), "from above to well below");
        assert!(!crossed(10, 5, 5), "down to the threshold is not below");
        assert!(!crossed(4, 3, 5), "already below: crossed before");
        assert!(!crossed(3, 0, 0), "a zero threshold is never crossed");
    }
}
