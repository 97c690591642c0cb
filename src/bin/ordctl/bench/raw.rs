//! The raw limits of this machine's services, measured WITHOUT ordctl's
//! code path: the order+outbox transaction as plain SQL, RabbitMQ publishes
//! and consumes through amiquip directly, SMTP sends through lettre directly.
//! Each runs at the same concurrency as the pipeline figure it bounds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use amiquip::{
    AmqpProperties, ConfirmSmoother, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions,
};
use anyhow::{bail, Context};
use crossbeam_channel::RecvTimeoutError;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Uuid as SqlUuid};
use lettre::{Message, Transport};
use url::Url;

use super::measure::{Rate, Stopwatch};
use crate::config::SmtpSettings;
use crate::db;
use crate::domain::{Currency, Money, OrderCreated, OrderSnapshot, ORDER_CREATED};
use crate::mail;
use crate::messaging;

/// How long a raw phase may go without progress before it is abandoned.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `work` on `threads` threads, each with its own state from `setup`,
/// and times only the work: the clock starts once every thread is set up.
/// `work` returns false when there is nothing left to do.
fn timed<S>(
    threads: u16,
    count: u64,
    setup: &(dyn Fn() -> anyhow::Result<S> + Sync),
    work: &(dyn Fn(&mut S) -> anyhow::Result<bool> + Sync),
) -> anyhow::Result<Rate> {
    let threads = usize::from(threads.max(1));
    let ready = Barrier::new(threads + 1);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let fail = |error: anyhow::Error| {
        failed.store(true, Ordering::SeqCst);
        first_error.lock().unwrap().get_or_insert(error);
    };
    let stopwatch = std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let state = setup();
                ready.wait();
                let mut state = match state {
                    Ok(state) => state,
                    Err(error) => return fail(error),
                };
                while !failed.load(Ordering::SeqCst) {
                    match work(&mut state) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(error) => return fail(error),
                    }
                }
            });
        }
        ready.wait();
        // The scope joins every thread before it returns the stopwatch.
        Stopwatch::start()
    });
    let rate = stopwatch.rate(count);
    match first_error.into_inner().unwrap() {
        Some(error) => Err(error),
        None => Ok(rate),
    }
}

/// A JSON payload of the same shape and size as a real `order.created`.
pub fn sample_event(order_id: i64, user_id: i64) -> OrderCreated {
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

/// `count` order+outbox transactions (BEGIN, INSERT orders RETURNING id,
/// INSERT outbox, COMMIT) over `concurrency` plain connections.
pub fn postgres(url: &Url, user_ids: &[i64], count: u64, concurrency: u16) -> anyhow::Result<Rate> {
    #[derive(QueryableByName)]
    struct Inserted {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let next = AtomicU64::new(0);
    timed(concurrency, count, &|| db::connect(url), &|conn| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= count {
            return Ok(false);
        }
        let user_id = user_ids[(n % user_ids.len() as u64) as usize];
        conn.transaction::<_, diesel::result::Error, _>(|conn| {
            let order: Inserted = diesel::sql_query(
                "INSERT INTO orders (user_id, amount_minor, currency) VALUES ($1, 4200, 'USD') \
                 RETURNING id",
            )
            .bind::<BigInt, _>(user_id)
            .get_result(conn)?;
            let event = sample_event(order.id, user_id);
            let payload = serde_json::to_string(&event).expect("an event serializes");
            diesel::sql_query(
                "INSERT INTO outbox (event_id, order_id, routing_key, payload) \
                 VALUES ($1, $2, $3, $4::jsonb)",
            )
            .bind::<SqlUuid, _>(event.event_id)
            .bind::<BigInt, _>(order.id)
            .bind::<Text, _>(ORDER_CREATED)
            .bind::<Text, _>(payload)
            .execute(conn)?;
            Ok(())
        })?;
        Ok(true)
    })
}

/// Declares the bench-only queue (durable, on the default exchange).
pub fn declare_queue(url: &Url, queue: &str) -> anyhow::Result<()> {
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
    url: &Url,
    queue: &str,
    count: u64,
    concurrency: u16,
    window: u64,
) -> anyhow::Result<Rate> {
    let body = serde_json::to_vec(&sample_event(1, 1)).expect("an event serializes");
    let properties = AmqpProperties::default()
        .with_content_type("application/json".to_string())
        .with_delivery_mode(2);
    let next = AtomicU64::new(0);
    let setup = || -> anyhow::Result<_> {
        let mut connection = messaging::connect(url)?;
        let channel = connection.open_channel(None)?;
        let confirms = channel.listen_for_publisher_confirms()?;
        channel.enable_publisher_confirms()?;
        Ok((connection, channel, confirms, ConfirmSmoother::new()))
    };
    let rate = timed(concurrency, count, &setup, &|(
        _,
        channel,
        confirms,
        smoother,
    )| {
        let first = next.fetch_add(window, Ordering::Relaxed);
        if first >= count {
            return Ok(false);
        }
        let batch = window.min(count - first);
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
        Ok(true)
    })?;
    Ok(rate)
}

/// Consumes and acks `count` messages from `queue` on `concurrency`
/// channels of one connection (as the worker does), with `prefetch`
/// unacked messages allowed per channel.
pub fn amqp_consume(
    url: &Url,
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
    let rate = timed(
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
        &|channel| {
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
            consumer.cancel()?;
            while let Ok(ConsumerMessage::Delivery(_)) =
                consumer.receiver().recv_timeout(Duration::from_secs(5))
            {}
            Ok(false)
        },
    );
    let _ = connection.close();
    rate
}

/// Sends `email` `count` times from `concurrency` threads over one pooled
/// transport (a connection per thread, reused).
pub fn smtp(
    smtp: &SmtpSettings,
    email: &Message,
    count: u64,
    concurrency: u16,
) -> anyhow::Result<Rate> {
    let transport = mail::smtp_transport(smtp, u32::from(concurrency))?;
    transport
        .test_connection()
        .with_context(|| format!("connecting to the SMTP server at {smtp}"))?;
    let next = AtomicU64::new(0);
    timed(concurrency, count, &|| Ok(()), &|_| {
        if next.fetch_add(1, Ordering::Relaxed) >= count {
            return Ok(false);
        }
        transport
            .send(email)
            .with_context(|| format!("sending to {smtp}"))?;
        Ok(true)
    })
}
