//! `ordctl tail-queue`

use std::time::Duration;

use ordctl::messaging::tap::{self, RoutingPattern, Source, Stop, TapOptions};
use ordctl::shutdown::Shutdown;

use super::Ctx;
use crate::flags;
use crate::output;

/// Watch messages as they flow, without taking them from the pipeline: a
/// private queue bound beside the pipeline's, removed on exit.
///
/// One line per message on a terminal (time, routing key, order, user,
/// amount, attempt, reason); NDJSON with --json. Examples:
/// `ordctl tail-queue`, `ordctl tail-queue --dlq --json | jq .headers`,
/// `ordctl tail-queue --routing-key 'order.*' --limit 10`
#[derive(clap::Args)]
pub struct Args {
    /// Topic pattern of the routing keys to show: `*` is one word, `#` any.
    #[arg(long, value_name = "PATTERN", default_value = "#")]
    routing_key: RoutingPattern,

    /// Watch what is being dead-lettered (with the reason) instead of the flow.
    #[arg(long)]
    dlq: bool,

    /// Exit after this many messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,

    /// Exit after this many seconds without a message.
    #[arg(long, value_name = "SECS", value_parser = flags::seconds)]
    idle_timeout: Option<Duration>,
}

impl Args {
    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        let idle_timeout = self.idle_timeout;
        let options = TapOptions {
            source: if self.dlq {
                Source::DeadLetters
            } else {
                Source::Flow
            },
            pattern: self.routing_key,
            limit: self.limit,
            idle_timeout,
        };
        let stop = tap::tap(
            &ctx.settings.amqp_url,
            &ctx.topology(),
            &options,
            shutdown,
            |message| {
                if ctx.json {
                    output::json(message)
                } else {
                    output::line(message.line())
                }
            },
        )?;
        match stop {
            Stop::Interrupted => tracing::debug!("tap stopped by signal"),
            Stop::Limit => tracing::debug!("tap reached --limit"),
            Stop::Idle => tracing::info!(
                "no message for {}s; exiting",
                idle_timeout.unwrap_or_default().as_secs_f64()
            ),
        }
        Ok(())
    }
}
