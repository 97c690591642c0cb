//! `ordctl tail-queue`

use std::time::Duration;

use std::fmt::Write as _;

use ordctl::messaging::table::truncate;
use ordctl::messaging::tap::{self, Kind, RoutingPattern, Source, Stop, TapOptions, Tapped};
use ordctl::shutdown::Shutdown;
use serde_json::Value;

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
                    output::line(line(message))
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

/// One line for people: time, routing key, order, user, amount, attempt
/// and, for a failed message, why.
fn line(message: &Tapped) -> String {
    let mut line = format!(
        "{} {}",
        message.received_at.format("%H:%M:%S%.3fZ"),
        message.original_routing_key
    );
    match message.kind {
        Kind::Event => {}
        Kind::Retry => {
            let _ = write!(line, " [retry via {}]", message.routing_key);
        }
        Kind::Dead => line.push_str(" [dead-lettered]"),
    }
    let order = &message.body["order"];
    if order.is_object() {
        let field = |name: &str| match &order[name] {
            Value::String(text) => text.clone(),
            Value::Null => "?".into(),
            other => other.to_string(),
        };
        let _ = write!(
            line,
            " order={} user={} amount={} {}",
            field("id"),
            field("user_id"),
            field("amount"),
            field("currency")
        );
    } else {
        let text = match &message.body {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let _ = write!(line, " body={:?}", truncate(&text, 60));
    }
    // The attempt this copy stands for: the next one for an event or a
    // retry, the last one made for a dead letter.
    let done = message.attempts.unwrap_or(0).max(0);
    match message.kind {
        Kind::Dead => {
            let _ = write!(line, " attempts={done}");
        }
        Kind::Event | Kind::Retry => {
            let _ = write!(line, " attempt={}", done + 1);
        }
    }
    if let Some(reason) = &message.reason {
        let _ = write!(line, " reason={:?}", truncate(reason, 200));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::DateTime;

    use super::*;

    fn tapped(kind: Kind, body: Value, attempts: Option<i64>, reason: Option<&str>) -> Tapped {
        Tapped {
            received_at: DateTime::parse_from_rfc3339("2026-11-21T10:00:01.250Z")
                .unwrap()
                .into(),
            exchange: "t.dead".into(),
            routing_key: "notifications.5s".into(),
            original_routing_key: "order.created".into(),
            message_id: Some("e1".into()),
            published_at: None,
            headers: BTreeMap::new(),
            body,
            kind,
            attempts,
            reason: reason.map(String::from),
        }
    }

    #[test]
    fn a_line_names_time_key_order_user_amount_and_attempt() {
        let body = serde_json::json!({"order": {"id": 42, "user_id": 3, "amount": "42.00", "currency": "USD"}});
        assert_eq!(
            line(&tapped(Kind::Event, body.clone(), None, None)),
            "10:00:01.250Z order.created order=42 user=3 amount=42.00 USD attempt=1"
        );
        assert_eq!(
            line(&tapped(Kind::Retry, body, Some(1), Some("transient: SMTP 451"))),
            "10:00:01.250Z order.created [retry via notifications.5s] order=42 user=3 amount=42.00 USD attempt=2 reason=\"transient: SMTP 451\""
        );
    }

    #[test]
    fn a_dead_letter_line_gives_the_attempts_and_the_reason() {
        let line = line(&tapped(
            Kind::Dead,
            Value::String("not json".into()),
            Some(1),
            Some("permanent: not an event"),
        ));
        assert_eq!(
            line,
            "10:00:01.250Z order.created [dead-lettered] body=\"not json\" attempts=1 reason=\"permanent: not an event\""
        );
    }
}
