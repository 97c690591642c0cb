//! `ordctl doctor`

use ordctl::doctor;
use ordctl::error::InvalidInput;
use ordctl::pipeline::status::ManagementApi;
use url::Url;

use super::Ctx;
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
    /// RabbitMQ management API, e.g. http://user:pass@rabbit:15672 (default:
    /// derived from the AMQP URL).
    #[arg(
        long,
        env = "ORDCTL_MANAGEMENT_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    management_url: Option<String>,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let base = self
            .management_url
            .as_deref()
            .map(|raw| {
                Url::parse(raw).map_err(|e| {
                    InvalidInput::new(format!(
                        "--management-url {} is not a valid URL: {e}",
                        ordctl::secrets::redact_str(raw)
                    ))
                })
            })
            .transpose()?;
        let management = ManagementApi::new(&ctx.settings.amqp_url, base.as_ref())?;
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
