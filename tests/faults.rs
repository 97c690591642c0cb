//! The fault suite: the pipeline under SIGKILL, a RabbitMQ restart, a
//! PostgreSQL restart, a Redis outage, an SMTP server answering 451 and
//! then 550, a node of a three-node RabbitMQ cluster SIGKILLed, always
//! against real services. A scenario that stops a service
//! starts its own instance of it on another port, never disturbing the
//! shared one. Each scenario prints orders placed, unique emails received
//! (by Message-ID), duplicates and dead letters, and fails on any loss.

// The fault suite is its own test binary, not a module of `tests/it`: it
// restarts service instances and asserts duplicate counts bounded by
// timing, so no other test may run beside it (cargo runs test binaries one
// after another, the tests inside one binary in parallel). It uses a part of
// the shared harness only.
#[allow(dead_code)]
mod common;
#[path = "common/services.rs"]
mod services;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{free_port, wait_until, Email, Running, SmtpSink, TestEnv};
use services::{Cluster, PostfixSink, PostgresCluster, RabbitNode, RedisServer};

/// How long a scenario may wait for the pipeline to catch up.
const CATCH_UP: Duration = Duration::from_secs(180);

/// Scenarios are heavy (thousands of orders, a RabbitMQ node of their own)
/// and time-sensitive: they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a scenario ended with.
struct Tally {
    placed: usize,
    unique: usize,
    duplicates: usize,
    dead: u32,
}

/// Counts the emails against the orders, prints the scenario's line, and
/// asserts every order got its email and its one payment: nothing lost,
/// nothing foreign, nothing charged twice.
fn tally(scenario: &str, env: &TestEnv, emails: &[Email]) -> Tally {
    assert_each_order_charged_once(scenario, env);
    let expected: BTreeSet<String> = event_ids(env)
        .into_iter()
        .map(|id| format!("<{id}@ordctl>"))
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for email in emails {
        *seen.entry(email.message_id.as_str()).or_default() += 1;
    }
    let unique: BTreeSet<String> = seen.keys().map(|id| id.to_string()).collect();
    let tally = Tally {
        placed: expected.len(),
        unique: unique.len(),
        duplicates: emails.len() - unique.len(),
        // From the delivery log: a scenario may run its own broker.
        dead: env.scalar("SELECT count(*) AS n FROM notifications WHERE status = 'dead'") as u32,
    };
    // Straight to stderr, past the test harness's capture: the figures are
    // the suite's report, shown whether the scenario passes or fails.
    let _ = writeln!(
        std::io::stderr(),
        "{scenario}: orders placed {}, unique emails {}, duplicates {}, dead letters {}",
        tally.placed,
        tally.unique,
        tally.duplicates,
        tally.dead
    );
    let lost: Vec<_> = expected.difference(&unique).take(5).collect();
    assert!(
        lost.is_empty(),
        "{scenario}: {} orders got no email, e.g. {lost:?}",
        expected.len() - unique.len().min(expected.len())
    );
    let foreign: Vec<_> = unique.difference(&expected).take(5).collect();
    assert!(
        foreign.is_empty(),
        "{scenario}: emails for no order: {foreign:?}"
    );
    tally
}

/// Every order has exactly one payment (the payments consumer ran beside
/// the emails) and each was charged by exactly one successful delivery.
fn assert_each_order_charged_once(scenario: &str, env: &TestEnv) {
    let orders = env.count("orders");
    wait_until(
        &format!("{scenario}: a payment for each of {orders} orders"),
        CATCH_UP,
        || env.count("payments") >= orders,
    );
    let charged_twice = env.scalar(
        "SELECT count(*) AS n FROM (SELECT event_id FROM delivery_attempts \
         WHERE consumer = 'payments' AND outcome = 'sent' \
         GROUP BY event_id HAVING count(*) > 1) twice",
    );
    assert_eq!(
        (env.count("payments"), charged_twice),
        (orders, 0),
        "{scenario}: payments"
    );
}

/// The events the notifications consumer emails about.
fn event_ids(env: &TestEnv) -> Vec<String> {
    use diesel::prelude::*;
    use ordctl::consumers::notifications::SPEC;
    use ordctl::db::schema::outbox;
    let ids: Vec<uuid::Uuid> = outbox::table
        .filter(outbox::routing_key.eq_any(SPEC.routing_keys))
        .select(outbox::event_id)
        .load(&mut env.db())
        .expect("reading event ids");
    ids.into_iter().map(|id| id.to_string()).collect()
}

/// Waits until every order is charged and every event the notifications
/// consumer handles (confirmations, cancellations of declined payments) has
/// its email, then returns them all.
fn wait_for_all_emails(env: &TestEnv, emails: impl Fn() -> Vec<Email>) -> Vec<Email> {
    let orders = env.count("orders");
    wait_until(
        &format!("an email for each event of {orders} orders"),
        CATCH_UP,
        || {
            let sent = emails()
                .iter()
                .map(|email| email.message_id.clone())
                .collect::<BTreeSet<_>>()
                .len();
            env.count("payments") >= orders && sent >= event_ids(env).len()
        },
    );
    emails()
}

fn kill(running: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &running.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} failed");
}

#[test]
fn sigkill_of_the_worker_three_times_while_draining_loses_no_order() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.ordctl([
        "place-order",
        "--count",
        "2000",
        "--concurrency",
        "4",
        "--amount",
        "9.99",
    ])
    .assert_code(0);

    for round in 1..=3 {
        let before = env.emails().len();
        let worker = env.spawn_worker(&["--concurrency", "4"]);
        wait_until("the worker to send some emails", CATCH_UP, || {
            env.emails().len() >= before + 100
        });
        kill(&worker, "-KILL");
        let run = worker.wait();
        assert_eq!(
            run.code, None,
            "round {round}: the worker should have died of SIGKILL"
        );
    }
    env.run_worker(&["--concurrency", "4"]);

    let emails = wait_for_all_emails(&env, || env.emails());
    let tally = tally("sigkill x3", &env, &emails);
    assert_eq!(tally.placed, 2000);
    assert_eq!(tally.dead, 0);
    // A duplicate can only be a send the SMTP server accepted just before a
    // kill: at most one in flight per slot per kill.
    assert!(tally.duplicates <= 3 * 4, "{} duplicates", tally.duplicates);
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM notifications WHERE status = 'sent' AND consumer = 'notifications'"),
        2000
    );
}

#[test]
fn a_rabbitmq_restart_under_load_loses_nothing() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broker = RabbitNode::start(&env.id);
    let amqp = [("AMQP_URL", broker.url())];
    let amqp: Vec<(&str, &str)> = amqp.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let worker = Running::spawn(env.command_with_env(["worker", "--concurrency", "4"], &amqp));
    let placer = Running::spawn(env.command_with_env(
        [
            "place-order",
            "--count",
            "1500",
            "--concurrency",
            "2",
            "--amount",
            "5",
        ],
        &amqp,
    ));
    wait_until("some emails before the restart", CATCH_UP, || {
        env.emails().len() >= 100
    });
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    placer.wait().assert_code(0);

    let emails = wait_for_all_emails(&env, || env.emails());
    worker.terminate();
    worker.wait().assert_code(0);
    let tally = tally("rabbitmq restart", &env, &emails);
    assert_eq!(tally.placed, 1500);
    assert_eq!(tally.dead, 0);
    assert_eq!(
        tally.duplicates, 0,
        "the worker was never killed: no duplicate is acceptable"
    );
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL"),
        0
    );
}

#[test]
fn a_memory_alarm_never_hangs_a_command_and_the_order_is_emailed_once_it_clears() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    let broker = RabbitNode::start(&env.id);
    let url = broker.url();
    let amqp = [("AMQP_URL", url.as_str())];
    let worker = Running::spawn(env.command_with_env(["worker", "--concurrency", "2"], &amqp));
    let relay = Running::spawn(env.command_with_env(["relay"], &amqp));
    // Both up (topology declared) before the alarm: one order goes through.
    env.ordctl_with_env(["place-order", "--user", "1", "--amount", "2"], &amqp)
        .assert_code(0);
    env.wait_for_emails(1);

    assert!(broker.ctl(&["set_vm_memory_high_watermark", "0"]));
    let started = Instant::now();
    let placed = env
        .ordctl_with_env(
            ["place-order", "--json", "--user", "1", "--amount", "3"],
            &amqp,
        )
        .assert_code(0);
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "place-order took {:?}",
        started.elapsed()
    );
    assert_eq!(placed.json()["published"], false, "{}", placed.stderr);
    assert!(
        placed
            .stderr
            .contains("broker is blocking publishers (memory alarm)"),
        "{}",
        placed.stderr
    );
    // status and doctor say so, and return promptly.
    let started = Instant::now();
    let status = env
        .ordctl_with_env(["status", "--json"], &amqp)
        .assert_code(0)
        .json();
    assert_eq!(
        status["broker_blocked"], "broker is blocking publishers (memory alarm)",
        "{status:#}"
    );
    let doctor = env.ordctl_with_env(["doctor"], &amqp).assert_code(1);
    assert!(
        doctor
            .stdout
            .lines()
            .any(|line| line.starts_with("✗ rabbitmq: ")
                && line.contains("broker is blocking publishers (memory alarm)")),
        "{}",
        doctor.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // The relays meet the block too, at their next sweep at the latest
    // (every 5 s: place-order held the row while it tried, so the wake-up
    // on commit found it locked); a signal still stops them at once.
    std::thread::sleep(Duration::from_secs(7));
    relay.terminate();
    let stopping = Instant::now();
    let relay = relay.wait().assert_code(0);
    assert!(stopping.elapsed() < Duration::from_secs(10));
    assert_eq!(env.emails().len(), 1, "an email while the broker blocks");

    assert!(broker.ctl(&["set_vm_memory_high_watermark", "0.4"]));
    let emails = env.wait_for_emails(2);
    // Time for a duplicate to show up, if there were one.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(env.emails().len(), 2, "{emails:?}");
    let status = env
        .ordctl_with_env(["status", "--json"], &amqp)
        .assert_code(0)
        .json();
    assert_eq!(status["broker_blocked"], serde_json::Value::Null);
    worker.terminate();
    let worker = worker.wait().assert_code(0);
    // Whichever relay claimed the blocked order's row (the worker's or the
    // standalone one) met the block and said so, each at most once.
    let said = |stderr: &str| {
        stderr
            .matches("broker is blocking publishers (memory alarm)")
            .count()
    };
    let (by_worker, by_relay) = (said(&worker.stderr), said(&relay.stderr));
    assert!(
        by_worker <= 1 && by_relay <= 1 && by_worker + by_relay >= 1,
        "worker said it {by_worker} times, relay {by_relay}:\n{}\n{}",
        worker.stderr,
        relay.stderr
    );
}

#[test]
fn a_redis_outage_does_not_stop_delivery() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut redis = RedisServer::start();
    let redis_url = [("REDIS_URL", redis.url())];
    let redis_url: Vec<(&str, &str)> = redis_url.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let worker = Running::spawn(env.command_with_env(["worker", "--concurrency", "4"], &redis_url));
    env.ordctl([
        "place-order",
        "--count",
        "300",
        "--concurrency",
        "2",
        "--amount",
        "5",
    ])
    .assert_code(0);
    wait_until("some emails with Redis up", CATCH_UP, || {
        env.emails().len() >= 50
    });
    redis.stop();
    env.ordctl([
        "place-order",
        "--count",
        "300",
        "--concurrency",
        "2",
        "--amount",
        "6",
    ])
    .assert_code(0);
    redis.resume();
    env.ordctl([
        "place-order",
        "--count",
        "100",
        "--concurrency",
        "2",
        "--amount",
        "7",
    ])
    .assert_code(0);

    let emails = wait_for_all_emails(&env, || env.emails());
    worker.terminate();
    worker.wait().assert_code(0);
    let tally = tally("redis outage", &env, &emails);
    assert_eq!((tally.placed, tally.duplicates, tally.dead), (700, 0, 0));
}

#[test]
fn smtp_answering_451_for_a_while_then_recovering_delivers_each_order_once() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let mut rejecting = PostfixSink::start(port, "-r", env.dir());

    env.ordctl([
        "place-order",
        "--count",
        "20",
        "--concurrency",
        "2",
        "--amount",
        "3",
    ])
    .assert_code(0);
    let worker = Running::spawn(
        env.command_with_env(["worker", "--concurrency", "4"], &[("SMTP_URL", &smtp_url)]),
    );
    wait_until(
        "every order to fail at least once with 451",
        CATCH_UP,
        || {
            env.scalar("SELECT count(DISTINCT order_id) AS n FROM delivery_attempts WHERE outcome = 'retrying'") >= 20
        },
    );
    rejecting.stop();
    let sink = SmtpSink::start_at(&env.dir().join("recovered"), port);

    let emails = wait_for_all_emails(&env, || sink.emails());
    worker.terminate();
    worker.wait().assert_code(0);
    let tally = tally("smtp 451 then recovery", &env, &emails);
    assert_eq!((tally.placed, tally.duplicates, tally.dead), (20, 0, 0));
    let reply = env.scalar("SELECT count(*) AS n FROM delivery_attempts WHERE outcome = 'retrying' AND error LIKE '%45%'");
    assert!(
        reply >= 20,
        "each 451 is in the delivery log with its reply"
    );
}

#[test]
fn smtp_550_dead_letters_and_replay_after_the_fix_delivers_once() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    env.migrate_and_seed();
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let mut rejecting = PostfixSink::start(port, "-f", env.dir());

    env.ordctl([
        "place-order",
        "--count",
        "300",
        "--concurrency",
        "2",
        "--amount",
        "3",
    ])
    .assert_code(0);
    env.ordctl_with_env(
        ["worker", "--exit-when-idle", "2"],
        &[("SMTP_URL", &smtp_url)],
    )
    .assert_code(0);
    assert_eq!(
        env.queue_depth(&env.dlq()),
        300,
        "a 5xx is permanent: dead-lettered at once"
    );
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM notifications WHERE status = 'dead'"),
        300
    );
    let listed = env
        .ordctl(["replay-dlq", "--dry-run", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(listed["replayed"], 0);
    assert_eq!(listed["messages"].as_array().expect("messages").len(), 300);
    assert!(
        listed["messages"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("500 "),
        "{listed}"
    );
    assert_eq!(env.queue_depth(&env.dlq()), 300, "--dry-run moves nothing");

    // Killed mid-run, replay loses nothing: each message is in the DLQ or
    // back in the work queue (or, published but not yet acked, in both).
    let replay = env.spawn(["replay-dlq"]);
    std::thread::sleep(Duration::from_millis(300));
    kill(&replay, "-KILL");
    replay.wait();
    wait_until(
        "the killed replay's unacked messages to return",
        Duration::from_secs(10),
        || env.queue_depth(&env.dlq()) + env.queue_depth(&env.work_queue()) >= 300,
    );

    rejecting.stop();
    let sink = SmtpSink::start_at(&env.dir().join("fixed"), port);
    let replayed = env.ordctl(["replay-dlq", "--json"]).assert_code(0).json();
    assert_eq!(replayed["remaining"], 0, "{replayed}");
    env.ordctl_with_env(
        ["worker", "--exit-when-idle", "2"],
        &[("SMTP_URL", &smtp_url)],
    )
    .assert_code(0);

    let emails = wait_for_all_emails(&env, || sink.emails());
    let tally = tally("smtp 550, fix, replay", &env, &emails);
    assert_eq!((tally.placed, tally.duplicates, tally.dead), (300, 0, 0));

    // Replaying an event that was already delivered sends nothing.
    let again = env.ordctl(["replay-dlq", "--json"]).assert_code(0).json();
    assert_eq!(again["replayed"], 0);
    assert_eq!(sink.emails().len(), 300);
}

#[test]
fn a_postgresql_restart_under_load_loses_nothing() {
    let _serial = one_at_a_time();
    let postgres = PostgresCluster::start();
    let env = TestEnv::on_postgres(&postgres.server_url());
    env.migrate_and_seed();

    let worker = env.spawn_worker(&["--concurrency", "4"]);
    let placer = env.spawn([
        "place-order",
        "--count",
        "3000",
        "--concurrency",
        "2",
        "--amount",
        "4",
    ]);
    wait_until("some emails before the restart", CATCH_UP, || {
        env.emails().len() >= 30
    });
    postgres.restart();
    // Orders whose commit met the restart failed (and were never
    // committed); every committed one must be delivered.
    let placed = placer.wait();
    assert!(matches!(placed.code, Some(0 | 1)), "{}", placed.stderr);

    let emails = wait_for_all_emails(&env, || env.emails());
    wait_until(
        "the relay to publish what the restart left",
        CATCH_UP,
        || env.scalar("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL") == 0,
    );
    worker.terminate();
    worker.wait().assert_code(0);
    let tally = tally("postgresql restart", &env, &emails);
    assert!(
        tally.placed >= 100,
        "only {} orders committed",
        tally.placed
    );
    assert_eq!(tally.dead, 0);
    // A send whose delivery transaction died with the server is not sent
    // again: its mark in Redis (up all along) records it on redelivery.
    assert_eq!(tally.duplicates, 0, "{} duplicates", tally.duplicates);
}

/// Orders of the cluster scenario: 5,000, placed while the node dies and
/// comes back.
const CLUSTER_ORDERS: usize = 5000;
/// Slots (consumers) per worker in the cluster scenario.
const SLOTS: u32 = 4;

#[test]
fn a_cluster_node_sigkilled_mid_run_loses_no_order_and_every_process_carries_on() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start();
    let env = TestEnv::on_cluster(&cluster.urls_from(1));
    env.migrate_and_seed();
    let from = |node: usize| cluster.urls_from(node);

    // Three workers, each connected first to another node, and two relays.
    let workers: Vec<Running> = (1..=3)
        .map(|node| {
            env.spawn([
                "worker",
                "--no-relay",
                "--concurrency",
                &SLOTS.to_string(),
                "--amqp-url",
                &from(node),
            ])
        })
        .collect();
    let relays: Vec<Running> = [1, 2]
        .into_iter()
        .map(|node| env.spawn(["relay", "--amqp-url", &from(node)]))
        .collect();
    let placer = env.spawn([
        "place-order",
        "--count",
        &CLUSTER_ORDERS.to_string(),
        "--concurrency",
        "2",
        "--amount",
        "5",
        "--amqp-url",
        &from(1),
    ]);
    wait_until("some emails before the kill", CATCH_UP, || {
        env.emails().len() >= 200
    });
    // Node 1: place-order's, a worker's and a relay's first node, and where
    // the quorum queues' leaders were declared.
    cluster.kill(1);
    std::thread::sleep(Duration::from_secs(5));
    cluster.restart();
    placer.wait().assert_code(0);

    let emails = wait_for_all_emails(&env, || env.emails());
    // Every worker reconnected without a restart: each of the three
    // consumes again on every one of its slots.
    wait_until("every worker's slots consuming again", CATCH_UP, || {
        env.queue_consumers(&env.work_queue()) == 3 * SLOTS
    });
    // Both relays still publish: an order the broker never saw (placed
    // with no broker reachable) is emailed.
    let unpublished = env.place_order(2, "7", &["--amqp-url", common::DOWN_AMQP_URL]);
    assert_eq!(unpublished["published"], false);
    let emails_after = wait_for_all_emails(&env, || env.emails());
    assert_eq!(emails_after.len(), emails.len() + 1);

    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    assert_eq!(status["outbox"]["pending"], 0, "{status}");
    assert_eq!(status["dlq"], 0, "{status}");

    for process in workers.into_iter().chain(relays) {
        process.terminate();
        process.wait().assert_code(0);
    }
    let tally = tally("cluster node sigkill", &env, &emails_after);
    assert_eq!(tally.placed, CLUSTER_ORDERS + 1);
    assert_eq!(tally.dead, 0);
    // No process was killed, only a broker node: a message redelivered
    // from the dead node's connections finds its delivery recorded.
    assert_eq!(
        tally.duplicates, 0,
        "only a broker node died: no duplicate is acceptable"
    );
    drop(env);
    drop(cluster);
}
