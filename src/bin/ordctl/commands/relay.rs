//! `ordctl relay`

use ordctl::pipeline::relay;
use ordctl::shutdown::Activity;
use ordctl::shutdown::Shutdown;

use super::Ctx;
use crate::output;

/// Publish outbox events that are still unpublished.
///
/// Woken as orders commit, with a periodic sweep; several relays may run at
/// once. Example: `ordctl relay --once`
#[derive(clap::Args)]
pub struct Args {
    /// Drain what is pending, print how many were published, and exit.
    #[arg(long)]
    once: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        let settings = &ctx.settings;
        if !self.once {
            relay::run(
                &settings.database_url,
                &settings.amqp_url,
                &ctx.topology(),
                shutdown,
                &Activity::default(),
            );
            return Ok(());
        }
        let published =
            relay::run_once(&settings.database_url, &settings.amqp_url, &ctx.topology())?;
        if ctx.json {
            output::json(&serde_json::json!({ "published": published }))
        } else {
            output::line(format!("published {published} outbox events"))
        }
    }
}
