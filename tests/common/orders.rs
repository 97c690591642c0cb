//! Shortcuts into the order system the tests share: adding products,
//! placing orders of products, and reading an order's status and events or
//! a product's stock straight from the tables.

use diesel::prelude::*;
use ordctl::db::schema::{orders, outbox, products};
use serde_json::Value;

use super::*;

impl TestEnv {
    /// `ordctl product add --name NAME --price PRICE --stock STOCK --json`
    /// (plus `extra`); returns the product's id.
    pub fn add_product(&self, name: &str, price: &str, stock: u32, extra: &[&str]) -> i64 {
        let stock = stock.to_string();
        let args = [
            "product", "add", "--name", name, "--price", price, "--stock", &stock, "--json",
        ];
        self.ordctl(args.iter().chain(extra)).assert_code(0).json()["id"]
            .as_i64()
            .expect("a product id")
    }

    /// `place-order --user USER --item ITEM... --json` (plus `extra`),
    /// unchecked.
    pub fn order_items(&self, user: i64, items: &[&str], extra: &[&str]) -> Run {
        let user = user.to_string();
        let mut args = vec!["place-order", "--user", &user, "--json"];
        for item in items {
            args.extend(["--item", item]);
        }
        args.extend(extra);
        self.ordctl(args)
    }

    /// The product's stock and threshold, straight from the table.
    pub fn stock_of(&self, product_id: i64) -> (i32, i32) {
        products::table
            .find(product_id)
            .select((products::stock, products::low_stock_threshold))
            .first(&mut self.db())
            .expect("the product exists")
    }

    /// The order's outbox events (routing key, payload), oldest first.
    pub fn events_of(&self, order_id: i64) -> Vec<(String, Value)> {
        outbox::table
            .filter(outbox::order_id.eq(order_id))
            .order(outbox::id)
            .select((outbox::routing_key, outbox::payload))
            .load(&mut self.db())
            .expect("reading the outbox")
    }

    /// The order's status and last update, straight from the table.
    pub fn status_of(&self, order_id: i64) -> (String, chrono::DateTime<chrono::Utc>) {
        orders::table
            .find(order_id)
            .select((orders::status, orders::updated_at))
            .first(&mut self.db())
            .expect("the order exists")
    }
}
