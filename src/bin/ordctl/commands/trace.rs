//! `ordctl trace`

use ordctl::db;
use ordctl::domain::OrderId;
use ordctl::pipeline::trace;

use super::Ctx;
use crate::output;

/// Show the timeline of one order: committed, published (and the lag),
/// every delivery attempt with its SMTP reply or error, dead-lettered or
/// replayed, and where it stands now.
///
/// Example: `ordctl trace 42 --json`
#[derive(clap::Args)]
pub struct Args {
    /// The order id.
    #[arg(value_name = "ORDER_ID")]
    order_id: OrderId,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let trace = trace::trace(&mut conn, self.order_id)?;
        if ctx.json {
            return output::json(&trace);
        }
        let order = &trace.order;
        let event = trace
            .event_id
            .map_or("no event".to_string(), |id| format!("event {id}"));
        output::line(format!(
            "order {}: user {}, {} {} ({event})",
            order.id, order.user_id, order.amount, order.currency
        ))?;
        let mut table = output::table(["time (UTC)", "step", "attempt", "detail"]);
        for step in &trace.timeline {
            table.add_row(vec![
                step.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                step.step.as_str().to_string(),
                step.attempt.map_or(String::new(), |n| n.to_string()),
                step.detail(),
            ]);
        }
        output::line(table)?;
        output::line(format!("now: {}", trace.state.describe()))
    }
}
