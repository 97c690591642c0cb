//! `ordctl place-order`

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ordctl::db;
use ordctl::domain::{Currency, Money, NewOrder, UserId};
use ordctl::error::InvalidInput;
use ordctl::messaging::publisher::Publisher;
use ordctl::pipeline::place_order::{self, Bulk, Users};

use super::Ctx;
use crate::output;

/// Place an order: the order and its event are committed together, then
/// published. If RabbitMQ is down the order still stands and the relay
/// publishes it later.
///
/// Examples: `ordctl place-order --user 3 --amount 42`,
/// `ordctl place-order --count 1000 --concurrency 8`
#[derive(clap::Args)]
pub struct Args {
    /// The customer's user id (required unless --count spreads orders over all users).
    #[arg(long, value_name = "ID")]
    user: Option<UserId>,

    /// Amount: a decimal > 0 with at most 2 fraction digits, e.g. 42 or 42.50
    /// (with --count it may be left out for a spread of demo amounts).
    #[arg(long)]
    amount: Option<Money>,

    /// Three-letter currency code.
    #[arg(long, default_value = "USD")]
    currency: Currency,

    /// Place this many orders (for load and demos), with a progress bar.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,

    /// With --count: orders placed at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        let topology = ctx.topology();
        let connect = || Publisher::connect(&settings.amqp_url, &topology);
        let Some(count) = self.count else {
            let order = NewOrder {
                user_id: self
                    .user
                    .ok_or_else(|| InvalidInput::new("--user is required (or use --count)"))?,
                amount: self
                    .amount
                    .ok_or_else(|| InvalidInput::new("--amount is required"))?,
                currency: self.currency,
            };
            let mut conn = db::connect(&settings.database_url)?;
            let mut publisher = place_order::connect_or_warn(&connect);
            let placed = place_order::place(&mut conn, &mut publisher, &order)?;
            if let Some(publisher) = publisher {
                publisher.close();
            }
            if !placed.published {
                tracing::warn!(
                    order_id = placed.order_id,
                    event_id = %placed.event_id,
                    "order committed but not published yet; the relay will publish it"
                );
            }
            if ctx.json {
                return output::json(&placed);
            }
            let state = if placed.published {
                "published"
            } else {
                "NOT published yet (the relay will)"
            };
            return output::line(format!(
                "order {} placed for user {}: {} {} (event {}, {state})",
                placed.order_id, placed.user_id, placed.amount, placed.currency, placed.event_id
            ));
        };

        let users = self.user.map_or(Users::All, Users::One);
        let pool = db::pool(&settings.database_url, u32::from(self.concurrency))
            .context("connecting to PostgreSQL")?;
        let bar = ProgressBar::new(count).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} orders  {per_sec}  eta {eta}")
                .expect("a valid template"),
        );
        let bulk = Bulk {
            users,
            amount: self.amount,
            currency: self.currency.clone(),
            count,
            concurrency: self.concurrency,
        };
        let summary = place_order::place_many(&pool, &connect, &bulk, &|_| bar.inc(1))?;
        bar.finish_and_clear();
        if ctx.json {
            return output::json(&summary);
        }
        let mut table = output::table(["placed", "published", "failed", "seconds", "orders/s"]);
        table.add_row(vec![
            summary.placed.to_string(),
            summary.published.to_string(),
            summary.failed.to_string(),
            format!("{:.2}", summary.elapsed_secs),
            format!("{:.0}", summary.orders_per_sec),
        ]);
        output::line(table)
    }
}
