//! `ordctl status`

use ordctl::pipeline::status;

use super::Ctx;
use crate::output;

/// Show queue depths and consumers, the outbox backlog, deliveries by
/// status and the dead-letter depth.
///
/// Example: `ordctl status --json`
#[derive(clap::Args)]
pub struct Args {}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let status = status::collect(&ctx.settings, &ctx.topology())?;
        if ctx.json {
            return output::json(&status);
        }
        let mut queues = output::table(["queue", "ready", "unacked", "consumers"]);
        for queue in &status.queues {
            let unacked = queue.unacked.map_or("-".to_string(), |n| n.to_string());
            queues.add_row(vec![
                queue.name.clone(),
                queue.ready.to_string(),
                unacked,
                queue.consumers.to_string(),
            ]);
        }
        output::line(queues)?;
        let oldest = status
            .outbox
            .oldest_pending_secs
            .map_or("-".to_string(), |secs| format!("{secs:.1}s"));
        let mut summary = output::table(["outbox pending", "oldest pending", "dead letters"]);
        summary.add_row(vec![
            status.outbox.pending.to_string(),
            oldest,
            status.dlq.to_string(),
        ]);
        output::line(summary)?;
        let mut deliveries = output::table(["delivery status", "count"]);
        for (state, count) in &status.deliveries {
            deliveries.add_row(vec![state.clone(), count.to_string()]);
        }
        output::line(deliveries)
    }
}
