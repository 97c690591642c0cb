//! `ordctl worker`

use std::time::Duration;

use ordctl::messaging::consumer::RunOptions;
use ordctl::pipeline::worker::{self, WorkerOptions};
use ordctl::shutdown::Shutdown;
use ordctl::{consumers, doctor};

use super::Ctx;
use crate::flags;

/// Run the pipeline's consumers until SIGINT/SIGTERM: confirmation, status
/// and cancellation emails (notifications), payments, staff alerts.
///
/// Also runs the outbox relay unless --no-relay. Examples:
/// `ordctl worker --exit-when-idle 3`,
/// `ordctl worker --consumers notifications,payments --concurrency 8`,
/// `ordctl worker --max-send-rate 50` (the provider's limit, shared by
/// every worker of the namespace)
#[derive(clap::Args)]
pub struct Args {
    /// Run only these consumers (comma-separated); default: all of them.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    consumers: Vec<String>,

    /// Messages each consumer handles at once (each holds a PostgreSQL
    /// connection while it does); the default fills two cores
    /// (BENCHMARKS.md).
    #[arg(long, default_value_t = worker::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
    concurrency: u16,

    /// Attempts before a transiently failing message is dead-lettered.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,

    /// Where the staff-alerts consumer sends low-stock alerts.
    #[arg(long, env = "STAFF_EMAIL", default_value = "staff@example.com")]
    staff_email: String,

    /// SIMULATED payment gateway: fail each charge transiently with this
    /// probability (0 to 1), retried like any transient failure. (The
    /// simulated gateway always declines amounts whose cents are 13, e.g.
    /// 10.13.)
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = fail_rate)]
    payment_fail_rate: f64,

    /// Send at most N emails a second across every worker of the namespace,
    /// as the email provider allows (fractions allowed, e.g. 0.5). Shared
    /// through Redis; an SMTP 421/454 (the provider throttling) halves it
    /// for 30 s instead of using up attempts; with Redis down each worker
    /// sends at its share, N / the workers it last saw. Default: no limit.
    #[arg(long, env = "ORDCTL_MAX_SEND_RATE", value_name = "N", value_parser = send_rate)]
    max_send_rate: Option<f64>,

    /// SMTP connections this worker opens at most, shared by every
    /// consumer's slots: a send that finds them all busy waits for one.
    /// Set it to what the provider allows; on a nearby server a few
    /// connections carry thousands of emails a second (BENCHMARKS.md).
    #[arg(long, env = "ORDCTL_SMTP_CONNECTIONS", value_name = "N", default_value_t = worker::DEFAULT_SMTP_CONNECTIONS, value_parser = clap::value_parser!(u16).range(1..=256))]
    smtp_connections: u16,

    /// Do not run the outbox relay in this process.
    #[arg(long)]
    no_relay: bool,

    /// Exit 0 after this many seconds with nothing to do (for scripts and
    /// CI); messages waiting in retry queues count as something to do.
    #[arg(long, value_name = "SECS", value_parser = flags::seconds)]
    exit_when_idle: Option<Duration>,

    /// Skip the start-up checks (those of `ordctl doctor`) and find out
    /// about a bad setting per message instead.
    #[arg(long)]
    no_preflight: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        let options = WorkerOptions {
            consumer: RunOptions {
                concurrency: self.concurrency,
                max_attempts: self.max_attempts,
            },
            staff: self.staff_email.parse().map_err(|e| {
                ordctl::error::InvalidInput::new(format!(
                    "invalid --staff-email {:?}: {e}",
                    self.staff_email
                ))
            })?,
            payment_fail_rate: self.payment_fail_rate,
            relay: !self.no_relay,
            exit_when_idle: self.exit_when_idle,
            max_send_rate: self.max_send_rate,
            smtp_connections: self.smtp_connections,
        };
        let consumers = consumers::select(&self.consumers)?;
        let topology = ctx.topology();
        if !self.no_preflight {
            // A bad SMTP password or queue type fails here, once, rather
            // than on every message.
            for check in doctor::preflight(&ctx.settings, &topology)? {
                tracing::debug!("preflight: {check}");
            }
        }
        worker::run(&ctx.settings, &topology, &consumers, &options, shutdown)
    }
}

fn fail_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("{raw:?} is not a probability from 0 to 1")),
    }
}

fn send_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.01 => Ok(rate),
        _ => Err(format!(
            "{raw:?} is not a number of emails per second (0.01 or more)"
        )),
    }
}
