//! `ordctl order show` and `ordctl order set-status`

use ordctl::cache::ProductCache;
use ordctl::db;
use ordctl::domain::{OrderId, OrderStatus};
use ordctl::messaging::publisher::Publisher;
use ordctl::pipeline::orders;

use super::Ctx;
use crate::output;

/// Look at an order, or move it on as an admin.
///
/// Examples: `ordctl order show 42 --json`, `ordctl order set-status 42 shipped`
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: OrderCommand,
}

#[derive(clap::Subcommand)]
enum OrderCommand {
    Show(ShowArgs),
    SetStatus(SetStatusArgs),
}

/// Show an order: its items, status, payment and the timeline of its
/// events through the pipeline.
///
/// Example: `ordctl order show 42 --json`
#[derive(clap::Args)]
struct ShowArgs {
    /// The order id.
    #[arg(value_name = "ID")]
    order_id: OrderId,
}

/// Move an order on: `paid` → `shipped` → `delivered`, or `pending` →
/// `cancelled` (its stock is released). Writes `order.status_updated` (or
/// `order.cancelled`); an illegal move exits 2 and writes nothing. `paid`
/// is set only by the payments consumer.
///
/// Example: `ordctl order set-status 42 shipped`
#[derive(clap::Args)]
struct SetStatusArgs {
    /// The order id.
    #[arg(value_name = "ID")]
    order_id: OrderId,

    /// The new status: shipped, delivered or cancelled.
    #[arg(value_name = "STATUS")]
    status: OrderStatus,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        match self.command {
            OrderCommand::Show(args) => args.run(ctx),
            OrderCommand::SetStatus(args) => args.run(ctx),
        }
    }
}

impl ShowArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let details = orders::show(&mut conn, self.order_id)?;
        if ctx.json {
            return output::json(&details);
        }
        let order = &details.order;
        output::line(format!(
            "order {}: user {}, {} {}, {} (placed {}, updated {})",
            order.id,
            order.user_id,
            order.amount,
            order.currency,
            order.status,
            order.created_at.format("%Y-%m-%d %H:%M:%S"),
            order.updated_at.format("%Y-%m-%d %H:%M:%S"),
        ))?;
        if !details.items.is_empty() {
            let mut table = output::table(["product", "quantity", "unit price"]);
            for item in &details.items {
                table.add_row(vec![
                    item.product_id.to_string(),
                    item.quantity.to_string(),
                    item.unit_price.to_string(),
                ]);
            }
            output::line(table)?;
        }
        match &details.payment {
            Some(payment) => output::line(format!(
                "payment: {} {} {} (reference {}){}",
                payment.status,
                payment.amount,
                payment.currency,
                payment.reference,
                payment
                    .reason
                    .as_ref()
                    .map_or(String::new(), |reason| format!(": {reason}")),
            ))?,
            None => output::line("payment: none yet")?,
        }
        let mut table = output::table(["time (UTC)", "step", "attempt", "detail"]);
        for step in &details.timeline {
            table.add_row(vec![
                step.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                step.step.as_str().to_string(),
                step.attempt.map_or(String::new(), |n| n.to_string()),
                step.detail(),
            ]);
        }
        output::line(table)
    }
}

impl SetStatusArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        let topology = ctx.topology();
        let mut conn = db::connect(&settings.database_url)?;
        let connect = || Publisher::connect(&settings.amqp_url, &topology);
        let cache = ProductCache::new(&settings.redis_url, settings.namespace.clone(), 1)?;
        let changed = orders::change_status(
            &mut conn,
            &connect,
            Some(&cache),
            self.order_id,
            self.status,
        )?;
        if ctx.json {
            return output::json(&changed);
        }
        let state = if changed.published {
            "published"
        } else {
            "NOT published yet (the relay will)"
        };
        output::line(format!(
            "order {}: {} -> {} ({} {}, {state})",
            changed.order_id, changed.from, changed.to, changed.routing_key, changed.event_id
        ))
    }
}
