//! `ordctl reconcile`

use ordctl::db;
use ordctl::domain::age::Age;
use ordctl::pipeline::reconcile;

use super::Ctx;
use crate::output;

/// List orders whose events a consumer never received: published longer
/// ago than --older-than, no delivery-log row of that consumer (neither
/// sent, retrying nor dead), nothing waiting in its queues. With
/// --republish, send each again to that consumer's queue only.
///
/// Examples: `ordctl reconcile`, `ordctl reconcile --older-than 1h --republish`
#[derive(clap::Args)]
pub struct Args {
    /// Only events published at least this long ago (younger ones may still
    /// be on their way): 90s, 5m, 12h, 30d.
    #[arg(long, value_name = "AGE", default_value = "5m")]
    older_than: Age,

    /// Publish each undelivered event again, to the consumer that missed it.
    #[arg(long)]
    republish: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let reconciled = reconcile::reconcile(
            &mut conn,
            &ctx.settings.amqp_url,
            &ctx.topology(),
            self.older_than.before_now(),
            self.republish,
        )?;
        for busy in &reconciled.skipped {
            tracing::warn!(
                "{}: {} messages still queued; its events were not checked (run the worker, then reconcile again)",
                busy.consumer,
                busy.queued
            );
        }
        if reconciled.unpublished > 0 {
            tracing::warn!(
                "{} outbox events older than {} are not published yet: is a relay (or worker) running?",
                reconciled.unpublished,
                self.older_than
            );
        }
        if ctx.json {
            return output::json(&reconciled);
        }
        if reconciled.undelivered.is_empty() {
            return output::line(format!(
                "every event older than {} reached each of its consumers",
                self.older_than
            ));
        }
        let mut table = output::table(["order", "event", "routing key", "consumer", "published"]);
        for event in &reconciled.undelivered {
            table.add_row(vec![
                event.order_id.to_string(),
                event.event_id.to_string(),
                event.routing_key.clone(),
                event.consumer.clone(),
                event
                    .published_at
                    .map_or("-".into(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string()),
            ]);
        }
        output::line(table)?;
        output::line(if self.republish {
            format!("republished {} events", reconciled.republished)
        } else {
            format!(
                "{} undelivered; --republish sends them again",
                reconciled.undelivered.len()
            )
        })
    }
}
