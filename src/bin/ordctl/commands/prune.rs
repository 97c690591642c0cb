//! `ordctl prune`

use ordctl::db;
use ordctl::domain::age::Age;
use ordctl::pipeline::prune;

use super::Ctx;
use crate::output;

/// Delete delivered history older than an age: events every consumer has
/// delivered go with their outbox row, delivery-log rows and attempts, and
/// the live event feed (`ordctl serve`'s `GET /events`) loses its rows
/// from before then. Nothing pending, retrying or dead is ever deleted,
/// nor an event a consumer has not delivered yet.
///
/// Examples: `ordctl prune --older-than 30d --dry-run`,
/// `ordctl prune --older-than 2w --json`
#[derive(clap::Args)]
pub struct Args {
    /// How old delivered history must be: 90s, 5m, 12h, 30d, 2w.
    #[arg(long, value_name = "AGE")]
    older_than: Age,

    /// Count what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let pruned = prune::prune(&mut conn, self.older_than.before_now(), self.dry_run)?;
        if ctx.json {
            return output::json(&pruned);
        }
        let verb = if pruned.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        output::line(format!(
            "{verb} the history of {} events delivered more than {} ago: {} outbox rows, {} delivery-log rows, {} attempts; and {} live feed rows",
            pruned.events, self.older_than, pruned.outbox, pruned.deliveries, pruned.attempts, pruned.feed
        ))
    }
}
