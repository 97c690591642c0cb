//! `ordctl replay-dlq`

use indicatif::{ProgressBar, ProgressStyle};
use ordctl::domain::OrderId;
use ordctl::pipeline::replay::{self, ReplayOptions};
use ordctl::{consumers, db};

use super::Ctx;
use crate::output;

/// Move dead-lettered messages back to their work queue for reprocessing.
///
/// A message leaves the DLQ only after its republish is confirmed; an event
/// that was already delivered sends nothing when replayed. Examples:
/// `ordctl replay-dlq --dry-run`, `ordctl replay-dlq --order 42`
#[derive(clap::Args)]
pub struct Args {
    /// Move at most N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,

    /// Only the dead letters of this order.
    #[arg(long, value_name = "ID")]
    order: Option<OrderId>,

    /// Only this consumer's dead letters (default: every consumer's).
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,

    /// List what would move (order, reason, attempts, age); move nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let options = ReplayOptions {
            limit: self.limit,
            order_id: self.order,
            consumer: self
                .consumer
                .map(|name| consumers::find(&name).map(|consumer| consumer.spec.name.to_string()))
                .transpose()?,
            dry_run: self.dry_run,
        };
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters")
                .expect("a valid template"),
        );
        let report = replay::replay(
            &mut conn,
            &ctx.settings.amqp_url,
            &ctx.topology(),
            &options,
            &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            },
        )?;
        bar.finish_and_clear();
        if ctx.json {
            return output::json(&report);
        }
        if self.dry_run {
            let mut table = output::table(["consumer", "order", "reason", "attempts", "age"]);
            for letter in &report.messages {
                table.add_row(vec![
                    letter.consumer.clone(),
                    letter.order_id.map_or("-".into(), |id| id.to_string()),
                    letter.reason.clone().unwrap_or_else(|| "-".into()),
                    letter.attempts.to_string(),
                    letter
                        .age_secs
                        .map_or("-".into(), |secs| format!("{secs}s")),
                ]);
            }
            output::line(table)?;
            return output::line(format!(
                "{} would be replayed; {} in the DLQ",
                report.messages.len(),
                report.remaining
            ));
        }
        output::line(format!(
            "replayed {}; {} left in the DLQ",
            report.replayed, report.remaining
        ))
    }
}
