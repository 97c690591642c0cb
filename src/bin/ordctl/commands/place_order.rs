//! `ordctl place-order`

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ordctl::cache::ProductCache;
use ordctl::db;
use ordctl::domain::{
    Currency, IdempotencyKey, Money, NewOrder, OrderContents, OrderItems, OrderLine, UserId,
};
use ordctl::error::InvalidInput;
use ordctl::messaging::publisher::Publisher;
use ordctl::pipeline::place_order::{self, Bulk, BulkContents, Placed, Users};

use super::Ctx;
use crate::output;

/// Place an order: the order and its event are committed together, then
/// published. If RabbitMQ is down the order still stands and the relay
/// publishes it later. An order of products (`--item`) takes them from stock
/// in the same transaction; not enough stock exits 3 and writes nothing.
///
/// Examples: `ordctl place-order --user 3 --amount 42`,
/// `ordctl place-order --user 3 --item 5 --item 7x2`,
/// `ordctl place-order --count 1000 --concurrency 8`
#[derive(clap::Args)]
pub struct Args {
    /// The customer's user id (required unless --count spreads orders over all users).
    #[arg(long, value_name = "ID")]
    user: Option<UserId>,

    /// Amount: a decimal > 0 with at most 2 fraction digits, e.g. 42 or 42.50
    /// (with --count it may be left out for a spread of demo amounts).
    #[arg(long, conflicts_with = "items")]
    amount: Option<Money>,

    /// Three-letter currency code of --amount [default: USD] (an order of
    /// products is in its products' currency).
    #[arg(long, conflicts_with = "items")]
    currency: Option<Currency>,

    /// A product to order: `ID` (one) or `IDxQTY`, e.g. `--item 5 --item 7x2`;
    /// repeat for more. The amount is the products' prices times the quantities.
    #[arg(long = "item", value_name = "ITEM")]
    items: Vec<OrderLine>,

    /// A client's idempotency key: placing again with the same key prints the
    /// first order (`"replayed": true`) and writes nothing.
    #[arg(long, value_name = "KEY", conflicts_with = "count")]
    idempotency_key: Option<IdempotencyKey>,

    /// Place this many orders (for load and demos), with a progress bar.
    /// Orders refused for lack of stock are counted as `refused`: the exit
    /// code is 0 if any order was placed, 3 if every one was refused.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// With --count: orders placed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
}

impl Args {
    pub fn run(mut self, ctx: &Ctx) -> anyhow::Result<()> {
        let items = match self.items.is_empty() {
            true => None,
            false => Some(OrderItems::new(std::mem::take(&mut self.items))?),
        };
        match self.count {
            None => self.place_one(ctx, items),
            Some(count) => self.place_bulk(ctx, items, count),
        }
    }

    /// One order: placed, published at once if the broker takes it, printed.
    fn place_one(self, ctx: &Ctx, items: Option<OrderItems>) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        let product_cache = self.product_cache(ctx);
        let user_id = self
            .user
            .ok_or_else(|| InvalidInput::new("--user is required (or use --count)"))?;
        let contents = match items {
            Some(items) => OrderContents::Items(items),
            None => OrderContents::Amount {
                amount: self
                    .amount
                    .ok_or_else(|| InvalidInput::new("--amount or --item is required"))?,
                currency: self.currency.unwrap_or_default(),
            },
        };
        let order = NewOrder {
            user_id,
            contents,
            idempotency_key: self.idempotency_key,
        };
        let topology = ctx.topology();
        let connect = || Publisher::connect(&settings.amqp_url, &topology);
        let mut conn = db::connect(&settings.database_url)?;
        let mut publisher = place_order::connect_or_warn(&connect);
        let placed = place_order::place(&mut conn, &mut publisher, &order);
        if let Some(publisher) = publisher {
            publisher.close();
        }
        let placed = placed?;
        product_cache?.invalidate(&placed.stock_changed);
        if !placed.published {
            tracing::warn!(
                order_id = placed.order_id.0,
                event_id = %placed.event_id,
                "order committed but not published yet; the relay will publish it"
            );
        }
        if ctx.json {
            return output::json(&placed);
        }
        output::line(describe(&placed))
    }

    /// `--count` orders over `--concurrency` threads, with a progress bar
    /// and a summary.
    fn place_bulk(self, ctx: &Ctx, items: Option<OrderItems>, count: u64) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        let topology = ctx.topology();
        let connect = || Publisher::connect(&settings.amqp_url, &topology);
        let pool = db::pool(&settings.database_url, u32::from(self.concurrency))
            .context("connecting to PostgreSQL")?;
        let bar = ProgressBar::new(count).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} orders  {per_sec}  eta {eta}")
                .expect("a valid template"),
        );
        let product_cache = self.product_cache(ctx)?;
        let bulk = Bulk {
            users: self.user.map_or(Users::All, Users::One),
            contents: match items {
                Some(items) => BulkContents::Items(items),
                None => BulkContents::Amounts {
                    amount: self.amount,
                    currency: self.currency.unwrap_or_default(),
                },
            },
            count,
            concurrency: self.concurrency,
            product_cache: Some(product_cache),
        };
        let summary = place_order::place_many(&pool, &connect, &bulk, &|_| bar.inc(1))?;
        bar.finish_and_clear();
        if ctx.json {
            return output::json(&summary);
        }
        let mut table = output::table([
            "placed",
            "published",
            "failed",
            "refused",
            "seconds",
            "orders/s",
        ]);
        table.add_row(vec![
            summary.placed.to_string(),
            summary.published.to_string(),
            summary.failed.to_string(),
            summary.refused.to_string(),
            format!("{:.2}", summary.elapsed_secs),
            format!("{:.0}", summary.orders_per_sec),
        ]);
        output::line(table)
    }

    fn product_cache(&self, ctx: &Ctx) -> anyhow::Result<ProductCache> {
        ProductCache::new(
            &ctx.settings.redis_url,
            ctx.settings.namespace.clone(),
            u32::from(self.concurrency),
        )
    }
}

/// One placed order, for people.
fn describe(placed: &Placed) -> String {
    let state = if placed.published {
        "published"
    } else {
        "NOT published yet (the relay will)"
    };
    let items: Vec<String> = placed
        .items
        .iter()
        .map(|item| format!("{}x{}", item.product_id, item.quantity))
        .collect();
    let items = match items.is_empty() {
        true => String::new(),
        false => format!(", items {}", items.join(" ")),
    };
    let replayed = match placed.replayed {
        true => " (placed before with this idempotency key: nothing new written)",
        false => "",
    };
    format!(
        "order {} placed for user {}: {} {}{items} (event {}, {state}){replayed}",
        placed.order_id, placed.user_id, placed.amount, placed.currency, placed.event_id
    )
}
