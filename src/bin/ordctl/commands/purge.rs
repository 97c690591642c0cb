//! `ordctl purge`

use ordctl::error::InvalidInput;
use ordctl::pipeline::purge;

use super::Ctx;
use crate::output;

/// Remove a namespace's queues (with their messages), exchanges and Redis
/// keys together, and with --database its database too, so a reset demo
/// never delivers stale events against reused ids. Stop the namespace's
/// workers first: purge refuses (exit 3) while consumers are attached.
///
/// Examples: `ordctl purge --dry-run`, `ordctl purge --yes --database`
#[derive(clap::Args)]
pub struct Args {
    /// Really delete (required unless --dry-run).
    #[arg(long)]
    yes: bool,

    /// Drop the namespace's database too (DATABASE_URL's database).
    #[arg(long)]
    database: bool,

    /// List what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        if !self.yes && !self.dry_run {
            return Err(InvalidInput::new(format!(
                "purge deletes namespace {}'s queues and Redis keys{}: pass --yes (or --dry-run to see what)",
                settings.namespace,
                if self.database { " and its database" } else { "" }
            ))
            .into());
        }
        let purged = purge::purge(settings, &ctx.topology(), self.database, self.dry_run)?;
        if ctx.json {
            return output::json(&purged);
        }
        let verb = if purged.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let messages: u64 = purged.queues.iter().map(|queue| queue.messages).sum();
        let mut table = output::table(["kind", "name", "messages"]);
        for queue in &purged.queues {
            table.add_row(vec![
                "queue".into(),
                queue.name.clone(),
                queue.messages.to_string(),
            ]);
        }
        for exchange in &purged.exchanges {
            table.add_row(vec!["exchange".into(), exchange.clone(), String::new()]);
        }
        if !purged.queues.is_empty() || !purged.exchanges.is_empty() {
            output::line(table)?;
        }
        let database = match &purged.database {
            Some(name) => format!(", database {name}"),
            None if self.database => ", no database (it did not exist)".into(),
            None => String::new(),
        };
        output::line(format!(
            "namespace {}: {verb} {} queues ({messages} messages), {} exchanges, {} Redis keys{database}",
            purged.namespace,
            purged.queues.len(),
            purged.exchanges.len(),
            purged.redis_keys
        ))
    }
}
