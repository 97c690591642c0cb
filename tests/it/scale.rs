//! Scaling out: several RabbitMQ nodes in one `--amqp-url`, and the
//! fleet-wide send rate.

use crate::common;

use std::time::Duration;

use common::{with_password, SmtpSink, TestEnv, AMQP_URL, DOWN_AMQP_URL};
use ordctl::messaging::topology::QueueType;

#[test]
fn every_command_moves_on_to_the_next_node_when_the_first_does_not_answer() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let down = with_password(DOWN_AMQP_URL, "hunter2");
    let nodes = format!("{down}, {AMQP_URL}");
    let with_nodes = |args: &[&str]| {
        let mut all = vec!["--amqp-url", nodes.as_str()];
        all.extend_from_slice(args);
        let run = env.ordctl(all);
        assert!(
            !run.output().contains("hunter2"),
            "a password shown by {args:?}:\n{}",
            run.output()
        );
        run
    };

    let placed = with_nodes(&["place-order", "--json", "--user", "3", "--amount", "42"])
        .assert_code(0)
        .json();
    assert_eq!(placed["published"], true, "{placed}");
    with_nodes(&["worker", "--exit-when-idle", "2"]).assert_code(0);
    assert_eq!(env.emails().len(), 1);

    let status = with_nodes(&["status", "--json"]).assert_code(0).json();
    assert_eq!(status["deliveries"]["sent"], 2, "{status}");
    let replay = with_nodes(&["replay-dlq", "--json"]).assert_code(0).json();
    assert_eq!(replay["remaining"], 0, "{replay}");
    with_nodes(&["tail-queue", "--idle-timeout", "0.5"]).assert_code(0);
    with_nodes(&["relay", "--once"]).assert_code(0);

    // doctor passes on the node that answers and warns about the other.
    let doctor = with_nodes(&["doctor"]).assert_code(0);
    assert!(
        doctor.stdout.contains("127.0.0.1:1/") && doctor.stdout.contains("does not answer"),
        "{}",
        doctor.stdout
    );
    assert!(
        doctor.stdout.contains("guest:***@127.0.0.1:1/"),
        "{}",
        doctor.stdout
    );

    // No node answers: one error naming each, passwords masked.
    let nowhere = format!("{down},{down}");
    let run = env
        .ordctl(["relay", "--once", "--amqp-url", &nowhere])
        .assert_code(1);
    assert!(
        run.stderr.contains("none of the 2 RabbitMQ nodes answered"),
        "{}",
        run.stderr
    );
    assert!(!run.output().contains("hunter2"), "{}", run.output());
}

#[test]
fn a_malformed_node_in_the_list_is_invalid_input_with_its_password_masked() {
    let env = TestEnv::new();
    let run = env
        .ordctl([
            "status",
            "--amqp-url",
            &format!("{AMQP_URL},http://u:hunter2@host/"),
        ])
        .assert_code(2);
    assert!(run.stderr.contains("--amqp-url"), "{}", run.stderr);
    assert!(!run.output().contains("hunter2"), "{}", run.output());
}

#[test]
fn three_workers_with_a_shared_max_send_rate_of_50_send_50_a_second_together() {
    const ORDERS: i64 = 500;
    let env = TestEnv::new();
    env.migrate_and_seed();
    // Every order waits in the queue before the workers start, so they are
    // never short of work and the rate is the limit's alone.
    env.ordctl([
        "place-order",
        "--count",
        &ORDERS.to_string(),
        "--amount",
        "42",
        "--json",
    ])
    .assert_code(0);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            env.spawn_worker(&[
                "--consumers",
                "notifications",
                // 8 slots × 16 prefetched: no worker can take every
                // message before the others start.
                "--concurrency",
                "8",
                "--max-send-rate",
                "50",
                "--exit-when-idle",
                "3",
            ])
        })
        .collect();
    for worker in workers {
        worker.wait().assert_code(0);
    }

    let sent = env.scalar(
        "SELECT count(*) AS n FROM notifications WHERE consumer = 'notifications' AND status = 'sent'",
    );
    // A confirmation per order, and a cancellation per declined payment.
    assert!(sent >= ORDERS, "{sent} sent");
    assert_eq!(env.emails().len(), sent as usize);
    // From the first send to the last, by the delivery log's clock.
    let span_ms = env.scalar(
        "SELECT (extract(epoch FROM max(sent_at) - min(sent_at)) * 1000)::int8 AS n \
         FROM notifications WHERE consumer = 'notifications'",
    );
    let rate = (sent - 1) as f64 * 1000.0 / span_ms as f64;
    eprintln!("{sent} emails in {span_ms} ms: {rate:.1}/s");
    assert!(
        (45.0..=55.0).contains(&rate),
        "{sent} emails in {span_ms} ms: {rate:.1}/s, not 50/s ± 10 %"
    );
    // The three shared one bucket and saw each other.
    let seen: i64 = redis::cmd("ZCARD")
        .arg(env.redis_key("send-rate:workers"))
        .query(&mut env.redis())
        .expect("reading the heartbeat set");
    assert_eq!(seen, 3);
}

#[test]
fn a_send_rate_that_is_not_a_positive_number_is_invalid_input() {
    let env = TestEnv::new();
    for bad in ["0", "-5", "fast", "inf"] {
        let run = env
            .ordctl(["worker", &format!("--max-send-rate={bad}")])
            .assert_code(2);
        assert!(run.stderr.contains("--max-send-rate"), "{}", run.stderr);
    }
}

#[test]
fn a_throttling_provider_slows_the_fleet_down_without_using_up_attempts() {
    const ORDERS: usize = 30;
    let env = TestEnv::new();
    env.migrate_and_seed();
    let provider = SmtpSink::start_throttling(&env.dir().join("provider"), 10);
    env.ordctl([
        "place-order",
        "--count",
        &ORDERS.to_string(),
        "--amount",
        "42",
    ])
    .assert_code(0);
    let worker = env.spawn([
        "worker",
        "--max-send-rate",
        "20",
        "--smtp-url",
        &provider.url(),
    ]);
    common::wait_until(
        "every order emailed through the throttling",
        common::COMMAND_TIMEOUT,
        || provider.emails().len() >= ORDERS,
    );
    worker.terminate();
    let worker = worker.wait().assert_code(0);

    // Every order emailed once, and the ten 454s cost no attempt: nothing
    // was retried through the retry queues, nothing dead-lettered.
    let emails = provider.emails();
    assert_eq!(emails.len(), ORDERS, "{}", emails.len());
    let retried = env.scalar(
        "SELECT count(*) AS n FROM delivery_attempts WHERE outcome <> 'sent' AND consumer = 'notifications'",
    );
    assert_eq!(retried, 0);
    // The shared rate was halved, and said so once per slow-down.
    let factor: Option<String> = redis::cmd("HGET")
        .arg(env.redis_key("send-rate"))
        .arg("factor")
        .query(&mut env.redis())
        .expect("reading the bucket");
    let factor: f64 = factor.expect("a factor").parse().expect("a number");
    assert!(factor < 1.0, "factor {factor}");
    let warnings = worker.stderr.matches("the SMTP server throttles").count();
    assert!((1..10).contains(&warnings), "{}", worker.stderr);
}

#[test]
fn on_quorum_queues_transient_failures_wait_in_quorum_retry_queues_and_are_retried() {
    const ORDERS: i64 = 20;
    let env = TestEnv::on(common::POSTGRES_SERVER, AMQP_URL, QueueType::Quorum);
    env.migrate_and_seed();
    env.ordctl([
        "place-order",
        "--count",
        &ORDERS.to_string(),
        "--amount",
        "42",
    ])
    .assert_code(0);
    // Three attempts: the retries wait 1 s and 5 s, then a third failure
    // is dead-lettered, so the run stays short whatever the dice say.
    env.ordctl([
        "worker",
        "--payment-fail-rate",
        "0.5",
        "--max-attempts",
        "3",
        "--exit-when-idle",
        "2",
    ])
    .assert_code(0);

    // Every charge ended: paid, or dead-lettered after its third failure.
    let dead = env.scalar(
        "SELECT count(*) AS n FROM notifications WHERE consumer = 'payments' AND status = 'dead'",
    );
    assert_eq!(env.count("payments") + dead, ORDERS);
    // Some came back from a retry queue and were charged then.
    let charged_on_retry = env.scalar(
        "SELECT count(*) AS n FROM delivery_attempts \
         WHERE consumer = 'payments' AND outcome = 'sent' AND attempt > 1",
    );
    assert!(charged_on_retry > 0, "no charge succeeded on a retry");
    // The retry queue is a quorum queue: declaring it classic is refused.
    let retry_queue = env
        .topology()
        .retry_queue("payments", Duration::from_secs(1));
    let mut connection = ordctl::messaging::connect(&env.settings.amqp_url).expect("connecting");
    let channel = connection.open_channel(None).expect("a channel");
    let classic = channel.queue_declare(
        retry_queue.as_str(),
        amiquip::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    );
    assert!(classic.is_err(), "{retry_queue} is not a quorum queue");
    let _ = connection.close();
}
