//! `ordctl status`

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ordctl::pipeline::status::{self, Status};
use ordctl::shutdown::Shutdown;

use super::Ctx;
use crate::flags;
use crate::output;

/// Show every queue of the namespace (ready, unacked, consumers), the
/// outbox backlog, deliveries by status and the dead letters by reason.
///
/// `unacked` comes from the RabbitMQ management API (derived from the AMQP
/// URL: http://HOST:15672, or the AMQP port + 10000 for another port, with
/// its credentials; the first URL of a list) and is unknown without it.
/// Examples: `ordctl status --json`, `ordctl status --watch 2`
#[derive(clap::Args)]
pub struct Args {
    /// Redraw every SECS seconds until Ctrl-C (on a terminal, in place;
    /// otherwise one snapshot after another, NDJSON with --json).
    #[arg(long, value_name = "SECS", value_parser = flags::positive_seconds)]
    watch: Option<Duration>,

    #[command(flatten)]
    management: flags::Management,
}

impl Args {
    /// `--watch` runs until a signal, so it must stop gracefully.
    pub fn watches(&self) -> bool {
        self.watch.is_some()
    }

    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        let management = self.management.api(&ctx.settings.amqp_url)?;
        let topology = ctx.topology();
        let collect = || status::collect(&ctx.settings, &topology, &management);
        let Some(interval) = self.watch else {
            let status = collect()?;
            return if ctx.json {
                output::json(&status)
            } else {
                output::line(render(&status))
            };
        };
        let secs = interval.as_secs_f64();
        let in_place = !ctx.json && std::io::stdout().is_terminal();
        if in_place {
            output::line("\x1b[2J")?;
        }
        while !shutdown.is_triggered() {
            // A watch outlives outages: it shows the error and keeps going.
            let frame = match collect() {
                Ok(status) if ctx.json => serde_json::to_string(&status)?,
                Ok(status) => render(&status),
                Err(error) if ctx.json => return Err(error),
                Err(error) => format!("error: {error:#}"),
            };
            if in_place {
                let now = chrono::Local::now().format("%H:%M:%S");
                // Home, draw, clear whatever the previous frame left below.
                let mut stdout = std::io::stdout().lock();
                write!(
                    stdout,
                    "\x1b[H{now}  every {secs}s, Ctrl-C to stop\n{frame}\n\x1b[J"
                )?;
                stdout.flush()?;
            } else {
                output::line(frame)?;
            }
            shutdown.sleep(interval);
        }
        Ok(())
    }
}

fn render(status: &Status) -> String {
    let mut queues = output::table(["queue", "kind", "ready", "unacked", "consumers"]);
    for queue in &status.queues {
        queues.add_row(vec![
            queue.name.clone(),
            queue.kind.as_str().to_string(),
            queue.ready.to_string(),
            queue.unacked.map_or("?".to_string(), |n| n.to_string()),
            queue.consumers.to_string(),
        ]);
    }
    let mut text = queues.to_string();
    if let Some(blocked) = &status.broker_blocked {
        text.push_str(&format!(
            "\n{blocked}: orders commit but stay in the outbox until the alarm clears"
        ));
    }
    if let Some(error) = &status.management.error {
        text.push_str(&format!(
            "\nunacked unknown (?): the RabbitMQ management API at {} failed ({error}); \
             enable rabbitmq_management there or pass --management-url",
            status.management.url
        ));
    }
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
    text.push_str(&format!("\n{summary}"));
    if status.deliveries.is_empty() {
        text.push_str("\nno deliveries yet");
    } else {
        let mut deliveries = output::table(["consumer", "delivery status", "count"]);
        for consumer in &status.consumers {
            for (state, count) in &consumer.deliveries {
                deliveries.add_row(vec![
                    consumer.name.clone(),
                    state.clone(),
                    count.to_string(),
                ]);
            }
        }
        text.push_str(&format!("\n{deliveries}"));
    }
    if !status.dead_letters.is_empty() {
        let mut reasons = output::table(["consumer", "dead-letter reason (delivery log)", "count"]);
        for reason in &status.dead_letters {
            reasons.add_row(vec![
                reason.consumer.clone(),
                reason.reason.clone(),
                reason.count.to_string(),
            ]);
        }
        text.push_str(&format!("\n{reasons}"));
    }
    text
}
