//! The raw limits of this machine's services, measured WITHOUT ordctl's
//! code path: the order+outbox transaction through `pgbench`, SMTP through
//! Postfix's `smtp-source`, RabbitMQ publishes and consumes through amiquip
//! directly. Each runs at the same concurrency as the pipeline figure it
//! bounds.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amiquip::{
    AmqpProperties, ConfirmSmoother, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions,
};
use anyhow::{bail, Context};
use crossbeam_channel::RecvTimeoutError;
use ordctl::config::{Settings, SmtpSettings, SmtpTls};
use ordctl::db::models::User;
use ordctl::domain::{Currency, Money, OrderCreated, OrderId, OrderSnapshot, UserId};
use ordctl::fanout::{fan_out, Timing};
use ordctl::messaging;
use url::Url;

use super::measure::{CpuSample, Rate};

/// How long a raw phase may go without progress before it is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Postfix's SMTP load generator, from the same package as `smtp-sink`.
const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// A rate from a fan-out's timing, with the CPU use since `cpu`.
fn rate(count: u64, timing: Timing, cpu: &CpuSample) -> Rate {
    Rate::new(count, timing.elapsed, cpu)
}

/// A JSON payload of the same shape and size as a real `order.created`.
pub fn sample_event(order_id: OrderId, user_id: UserId) -> OrderCreated {
    OrderCreated::new(
        OrderSnapshot {
            id: order_id,
            user_id,
            amount: Money::from_minor_units(4200).expect("a positive amount"),
            currency: Currency::default(),
            items: Vec::new(),
        },
        chrono::Utc::now(),
    )
}

/// The confirmation email the pipeline would send, for the raw SMTP phase.
pub fn sample_email(settings: &Settings, user: &User) -> anyhow::Result<lettre::Message> {
    let event = sample_event(OrderId(1), user.id);
    ordctl::mail::confirmation(&event, user, &settings.mail_from)
        .map_err(|error| anyhow::anyhow!("building the sample email: {error}"))
}

/// `count` order+outbox transactions (BEGIN, INSERT orders RETURNING id,
/// INSERT outbox, COMMIT) by `pgbench` with `clients` connections and
/// prepared statements, over the users `user_ids` (which must be one
/// contiguous range, as `seed` makes them). pgbench's own clock, without
/// connection set-up.
pub fn pgbench(url: &Url, user_ids: &[UserId], count: u64, clients: u16) -> anyhow::Result<Rate> {
    let (Some(&UserId(min)), Some(&UserId(max))) = (user_ids.iter().min(), user_ids.iter().max())
    else {
        bail!("the benchmark database has no users");
    };
    anyhow::ensure!(
        (max - min + 1) as usize == user_ids.len(),
        "pgbench needs the users' ids to be one contiguous range"
    );
    let payload =
        serde_json::to_string(&sample_event(OrderId(1), UserId(min)))?.replace('\'', "''");
    let script = format!(
        "\\set uid random({min}, {max})\n\
         BEGIN;\n\
         INSERT INTO orders (user_id, amount_minor, currency) VALUES (:uid, 4200, 'USD') \
         RETURNING id AS order_id \\gset\n\
         INSERT INTO outbox (event_id, order_id, routing_key, payload) \
         VALUES (gen_random_uuid(), :order_id, 'order.created', '{payload}'::jsonb);\n\
         COMMIT;\n"
    );
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(script.as_bytes())?;
    let clients = u64::from(clients.max(1));
    let per_client = count.div_ceil(clients);
    let cpu = CpuSample::now();
    let output = Command::new("pgbench")
        .args(["--no-vacuum", "--protocol=prepared"])
        .arg(format!("--client={clients}"))
        // pgbench threads: more than the cores only adds switching.
        .arg(format!("--jobs={}", clients.min(available_cores())))
        .arg(format!("--transactions={per_client}"))
        .arg("--file")
        .arg(file.path())
        .arg(url.as_str())
        .output()
        .context("running pgbench (Debian package postgresql-client)")?;
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("no tps line in pgbench's output:\n{stdout}"))?;
    let done = per_client * clients;
    let mut rate = Rate::new(done, Duration::from_secs_f64(done as f64 / tps), &cpu);
    rate.per_sec = tps;
    Ok(rate)
}

/// How `smtp-source` uses its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// A new connection per message (connect, EHLO, one mail, QUIT):
    /// smtp-source's default, and how the speed issue measured raw SMTP.
    PerMessage,
    /// Each session's connection reused for all its messages (`-d`), as
    /// the worker reuses its own.
    Reused,
}

/// `count` copies of `email` sent by `smtp-source` over `sessions`
/// concurrent sessions, timed from start to exit. `None` when the server
/// needs TLS or AUTH, which smtp-source does not speak.
pub fn smtp_source(
    smtp: &SmtpSettings,
    email: &lettre::Message,
    count: u64,
    sessions: u16,
    connections: Connections,
) -> anyhow::Result<Option<Rate>> {
    if smtp.tls != SmtpTls::None || smtp.credentials.is_some() {
        tracing::warn!("smtp-source speaks neither TLS nor AUTH: no raw SMTP figure for {smtp}");
        return Ok(None);
    }
    let mut file = tempfile::NamedTempFile::new()?;
    // smtp-source adds the CRLFs and dot-stuffing itself.
    let formatted = String::from_utf8_lossy(&email.formatted()).replace("\r\n", "\n");
    file.write_all(formatted.as_bytes())?;
    let envelope = email.envelope();
    let from = envelope
        .from()
        .map_or_else(String::new, |from| from.to_string());
    let to = envelope
        .to()
        .first()
        .map_or_else(String::new, |to| to.to_string());
    let cpu = CpuSample::now();
    let started = Instant::now();
    let mut command = Command::new(SMTP_SOURCE);
    if connections == Connections::Reused {
        command.arg("-d");
    }
    let output = command
        .args(["-f", &from, "-t", &to])
        .arg("-m")
        .arg(count.to_string())
        .arg("-s")
        .arg(sessions.max(1).to_string())
        .arg("-F")
        .arg(file.path())
        .arg(format!("{}:{}", smtp.host, smtp.port))
        .output()
        .with_context(|| format!("running {SMTP_SOURCE} (Debian package postfix)"))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        output.status.success() && output.stderr.is_empty(),
        "smtp-source failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(Some(Rate::new(count, elapsed, &cpu)))
}

fn available_cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// Declares the bench-only queue (durable, on the default exchange).
pub fn declare_queue(url: &messaging::Brokers, queue: &str) -> anyhow::Result<()> {
    let mut connection = messaging::connect(url)?;
    let channel = connection.open_channel(None)?;
    channel.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )?;
    let _ = channel.close();
    let _ = connection.close();
    Ok(())
}

/// Publishes `count` persistent messages to `queue` from `concurrency`
/// connections, waiting for the broker's confirms after every `window`
/// messages (1: confirm each, as the pipeline does).
pub fn amqp_publish(
    url: &messaging::Brokers,
    queue: &str,
    count: u64,
    concurrency: u16,
    window: u64,
) -> anyhow::Result<Rate> {
    let body =
        serde_json::to_vec(&sample_event(OrderId(1), UserId(1))).expect("an event serializes");
    let properties = AmqpProperties::default()
        .with_content_type("application/json".to_string())
        .with_delivery_mode(2);
    let setup = || -> anyhow::Result<_> {
        let mut connection = messaging::connect(url)?;
        let channel = connection.open_channel(None)?;
        let confirms = channel.listen_for_publisher_confirms()?;
        channel.enable_publisher_confirms()?;
        Ok((connection, channel, confirms, ConfirmSmoother::new()))
    };
    let cpu = CpuSample::now();
    let timing = fan_out(
        concurrency,
        count,
        &setup,
        &|(_, channel, confirms, smoother), items| {
            while let Some(batch) = items.take_up_to(window) {
                let batch = batch.end - batch.start;
                for _ in 0..batch {
                    channel.basic_publish(
                        "",
                        Publish::with_properties(&body, queue, properties.clone()),
                    )?;
                }
                let mut confirmed = 0;
                while confirmed < batch {
                    let raw = confirms
                        .recv_timeout(STALL_TIMEOUT)
                        .context("waiting for a publisher confirm")?;
                    for confirm in smoother.process(raw) {
                        if matches!(confirm, amiquip::Confirm::Nack(_)) {
                            bail!("RabbitMQ nacked a publish");
                        }
                        confirmed += 1;
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(rate(count, timing, &cpu))
}

/// Consumes and acks `count` messages from `queue` on `concurrency`
/// channels of one connection (as the worker does), with `prefetch`
/// unacked messages allowed per channel.
pub fn amqp_consume(
    url: &messaging::Brokers,
    queue: &str,
    count: u64,
    concurrency: u16,
    prefetch: u16,
) -> anyhow::Result<Rate> {
    let mut connection = messaging::connect(url)?;
    let channels = Mutex::new(
        (0..concurrency.max(1))
            .map(|_| connection.open_channel(None))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let consumed = AtomicU64::new(0);
    let cpu = CpuSample::now();
    let timing = fan_out(
        concurrency,
        count,
        &|| {
            let channel = channels
                .lock()
                .unwrap()
                .pop()
                .expect("a channel per thread");
            channel.qos(0, prefetch, false)?;
            Ok(channel)
        },
        &|channel, _| {
            let consumer = channel.basic_consume(queue, ConsumerOptions::default())?;
            let mut last_progress = Instant::now();
            while consumed.load(Ordering::SeqCst) < count {
                match consumer.receiver().recv_timeout(Duration::from_millis(50)) {
                    Ok(ConsumerMessage::Delivery(delivery)) => {
                        if consumed.fetch_add(1, Ordering::SeqCst) < count {
                            consumer.ack(delivery)?;
                        }
                        last_progress = Instant::now();
                    }
                    Ok(other) => bail!("consumer on {queue} stopped: {other:?}"),
                    Err(RecvTimeoutError::Timeout) if last_progress.elapsed() > STALL_TIMEOUT => {
                        bail!("no message from {queue} for {STALL_TIMEOUT:?}")
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        bail!("consumer on {queue} disconnected")
                    }
                }
            }
            // Unacked leftovers go back to the queue when the channel closes.
            ordctl::messaging::cancel_and_drain(&consumer)?;
            Ok(())
        },
    );
    let _ = connection.close();
    Ok(rate(count, timing?, &cpu))
}
