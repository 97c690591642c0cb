//! `ordctl doctor`

use ordctl::doctor;

use super::Ctx;
use crate::flags;
use crate::output;

/// Check every setting and service the way the worker will use them:
/// PostgreSQL (reachable, migrated), RabbitMQ (reachable, not blocked by
/// a memory or disk alarm, existing queues of --queue-type), the
/// management API (a warning only), Redis, and SMTP (connects, TLS,
/// authenticates; sends nothing). One line per check with the fix; exits 1
/// if any check fails.
///
/// Examples: `ordctl doctor`, `ordctl doctor --json`
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    management: flags::Management,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let management = self.management.api(&ctx.settings.amqp_url)?;
        let report = doctor::run(&ctx.settings, &ctx.topology(), Some(&management));
        if ctx.json {
            output::json(&report)?;
        } else {
            for check in &report.checks {
                output::line(check)?;
            }
        }
        let failed: Vec<&str> = report.failures().map(|check| check.name).collect();
        if failed.is_empty() {
            return Ok(());
        }
        anyhow::bail!("{} check(s) failed: {}", failed.len(), failed.join(", "))
    }
}
