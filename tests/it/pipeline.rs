//! End-to-end tests of the order → email pipeline: the real `ordctl` binary
//! against the real PostgreSQL, RabbitMQ, Redis and an aiosmtpd SMTP sink,
//! each test in its own database and namespace (see `common`).

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::{keys, with_password, Running, TestEnv, DOWN_AMQP_URL, DOWN_REDIS_URL};
use diesel::prelude::*;
use ordctl::db::schema::{delivery_attempts, notifications, orders, outbox, users};
use serde_json::Value;
use uuid::Uuid;

/// The work queue's entry in `status --json`.
fn work_queue_status<'a>(env: &TestEnv, status: &'a Value) -> &'a Value {
    let name = env.work_queue();
    status["queues"]
        .as_array()
        .and_then(|queues| queues.iter().find(|queue| queue["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("{name} in {status}"))
}

fn user_email(env: &TestEnv, id: i64) -> String {
    users::table
        .find(id)
        .select(users::email)
        .first(&mut env.db())
        .expect("the user exists")
}

#[test]
fn an_order_sends_exactly_one_correct_email() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42", &[]);
    env.run_worker(&[]);

    let emails = env.emails();
    assert_eq!(emails.len(), 1, "{emails:#?}");
    let email = &emails[0];
    assert_eq!(email.to, user_email(&env, 3));
    let order_id = placed["order_id"].as_i64().expect("an order id");
    assert!(
        email.subject.contains(&order_id.to_string()),
        "subject {:?} should name order {order_id}",
        email.subject
    );
    assert!(email.body.contains("42.00"), "{}", email.body);
    assert!(email.body.contains("USD"), "{}", email.body);
    let event_id = placed["event_id"].as_str().expect("an event id");
    assert_eq!(email.message_id, format!("<{event_id}@ordctl>"));
}

#[test]
fn every_invalid_input_exits_2_with_one_line_and_writes_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(1, "1", &[]);
    // `place-order` arguments that are wrong in themselves.
    let orders: &[(&str, &[&str])] = &[
        ("unknown user", &["--user", "999", "--amount", "42"]),
        ("user 0", &["--user", "0", "--amount", "42"]),
        ("user abc", &["--user", "abc", "--amount", "42"]),
        ("amount 0", &["--user", "3", "--amount", "0"]),
        ("amount 0.00", &["--user", "3", "--amount", "0.00"]),
        ("amount -1", &["--user", "3", "--amount", "-1"]),
        ("amount=-1", &["--user", "3", "--amount=-1"]),
        ("amount 1.234", &["--user", "3", "--amount", "1.234"]),
        ("amount abc", &["--user", "3", "--amount", "abc"]),
        ("amount empty", &["--user", "3", "--amount", ""]),
        ("amount 1e3", &["--user", "3", "--amount", "1e3"]),
        ("missing --user", &["--amount", "42"]),
        ("missing --amount", &["--user", "3"]),
    ];
    // Flags that spoil an otherwise valid `place-order --user 3 --amount 42`.
    let valid = ["place-order", "--user", "3", "--amount", "42"];
    let spoilers: &[(&str, &[&str])] = &[
        ("currency US", &["--currency", "US"]),
        ("currency 12$", &["--currency", "12$"]),
        ("database URL not a URL", &["--database-url", "not a url"]),
        (
            "database URL port",
            &["--database-url", "postgres://h:99999/x"],
        ),
        (
            "database URL scheme",
            &["--database-url", "mysql://127.0.0.1/x"],
        ),
        ("AMQP URL not a URL", &["--amqp-url", "amqp://[::1"]),
        ("AMQP URL scheme", &["--amqp-url", "http://127.0.0.1:5672/"]),
        ("Redis URL not a URL", &["--redis-url", "127.0.0.1:6379"]),
        (
            "Redis URL scheme",
            &["--redis-url", "memcached://127.0.0.1"],
        ),
        ("SMTP URL not a URL", &["--smtp-url", "smtp://[bad"]),
        ("SMTP URL without a host", &["--smtp-url", "smtp://"]),
        (
            "SMTP URL option",
            &["--smtp-url", "smtp://127.0.0.1?tls=maybe"],
        ),
        ("invalid namespace", &["--namespace", "bad.namespace"]),
        ("empty namespace", &["--namespace", ""]),
        ("unknown flag", &["--frobnicate"]),
    ];
    let cases = orders
        .iter()
        .map(|(case, args)| (*case, [&["place-order"][..], args].concat()))
        .chain(
            spoilers
                .iter()
                .map(|(case, extra)| (*case, [&valid[..], extra].concat())),
        )
        .chain([("unknown subcommand", vec!["frobnicate"])]);

    let counts = || (env.count("orders"), env.count("outbox"));
    let before = counts();
    for (case, args) in cases {
        let run = env.ordctl(&args);
        assert_eq!(run.code, Some(2), "{case}: {run:#?}");
        assert_eq!(run.stdout, "", "{case}: nothing on stdout");
        let lines = run.stderr_lines();
        assert_eq!(lines.len(), 1, "{case}: one line on stderr: {run:#?}");
        assert!(lines[0].starts_with("error: "), "{case}: {:?}", lines[0]);
        assert_eq!(counts(), before, "{case}: nothing written");
    }
}

#[test]
fn an_order_placed_while_the_broker_is_down_is_kept_and_relayed_later() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let run = env
        .ordctl([
            "place-order",
            "--user",
            "3",
            "--amount",
            "42",
            "--json",
            "--amqp-url",
            DOWN_AMQP_URL,
        ])
        .assert_code(0);
    let placed = run.json();
    assert_eq!(placed["published"], false);
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("relay"),
        "a warning says the relay will publish it: {}",
        run.stderr
    );
    assert_eq!(env.count("orders"), 1);
    let pending = env.scalar("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL");
    assert_eq!(pending, 1);

    let relayed = env.ordctl(["relay", "--once", "--json"]).assert_code(0);
    assert_eq!(relayed.json()["published"], 1);
    assert_eq!(env.queue_depth(&env.work_queue()), 1);

    env.run_worker(&["--no-relay"]);
    let emails = env.emails();
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert_eq!(
        emails[0].message_id,
        format!("<{}@ordctl>", placed["event_id"].as_str().unwrap())
    );
}

#[test]
fn a_redelivered_event_is_not_emailed_twice() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42", &[]);
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 1);

    // Publish the same event again, as a relay that crashed after the
    // broker's confirm but before marking the row would.
    diesel::update(outbox::table)
        .set(outbox::published_at.eq(None::<chrono::DateTime<chrono::Utc>>))
        .execute(&mut env.db())
        .unwrap();
    let relayed = env.ordctl(["relay", "--once", "--json"]).assert_code(0);
    // order.created and the payments consumer's payment.succeeded.
    assert_eq!(relayed.json()["published"], 2);
    env.run_worker(&["--no-relay"]);

    assert_eq!(env.emails().len(), 1, "still one email");
    assert_eq!(
        env.queue_depth(&env.work_queue()),
        0,
        "the duplicate was acked"
    );
    let event_id: Uuid = placed["event_id"].as_str().unwrap().parse().unwrap();
    let mut conn = env.db();
    let (status, attempts): (String, i32) = notifications::table
        .filter(notifications::event_id.eq(event_id))
        .filter(notifications::consumer.eq("notifications"))
        .select((notifications::status, notifications::attempts))
        .first(&mut conn)
        .unwrap();
    assert_eq!((status.as_str(), attempts), ("sent", 1));
    let outcomes: Vec<String> = delivery_attempts::table
        .filter(delivery_attempts::event_id.eq(event_id))
        .filter(delivery_attempts::consumer.eq("notifications"))
        .order(delivery_attempts::id)
        .select(delivery_attempts::outcome)
        .load(&mut conn)
        .unwrap();
    assert_eq!(outcomes, ["sent", "duplicate"]);
}

#[test]
fn orders_are_still_delivered_while_redis_is_down() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(3, "42", &[]);
    // Started during the outage: past the preflight, which would refuse.
    let run = env.run_worker(&["--no-preflight", "--redis-url", DOWN_REDIS_URL]);

    let emails = env.emails();
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert_eq!(emails[0].to, user_email(&env, 3));
    assert!(
        run.stderr.contains("Redis"),
        "a warning names Redis: {}",
        run.stderr
    );
}

#[test]
fn the_worker_caches_the_user_in_redis_with_a_ttl() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(3, "42", &[]);
    env.run_worker(&[]);
    assert_eq!(env.emails().len(), 1);

    let key = env.redis_key("user:3");
    let mut redis = env.redis();
    let cached: Option<String> = redis::cmd("GET").arg(&key).query(&mut redis).unwrap();
    let cached: Value = serde_json::from_str(&cached.expect("the user is cached")).unwrap();
    assert_eq!(cached["id"], 3);
    assert_eq!(cached["email"], user_email(&env, 3));
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut redis).unwrap();
    assert!(ttl > 0, "{key} has a TTL, got {ttl}");
}

#[test]
fn two_relays_at_once_publish_each_row_exactly_once() {
    const ROWS: usize = 600;
    let env = TestEnv::new();
    env.migrate_and_seed();
    let count = ROWS.to_string();
    let summary = env
        .ordctl([
            "place-order",
            "--count",
            &count,
            "--amount",
            "5",
            "--json",
            "--amqp-url",
            DOWN_AMQP_URL,
        ])
        .assert_code(0)
        .json();
    assert_eq!(
        (summary["placed"].as_u64(), summary["published"].as_u64()),
        (Some(ROWS as u64), Some(0))
    );

    let relays = [
        env.spawn(["relay", "--once", "--json"]),
        env.spawn(["relay", "--once", "--json"]),
    ];
    let published: u64 = relays
        .into_iter()
        .map(|relay| {
            relay.wait().assert_code(0).json()["published"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(published, ROWS as u64);

    let pending = env.scalar("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL");
    assert_eq!(pending, 0);
    assert_eq!(env.queue_depth(&env.work_queue()), ROWS as u32);
    let messages = env.take_messages(&env.work_queue());
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.message_id.clone().expect("a message id"))
        .collect();
    assert_eq!(ids.len(), ROWS, "every event id once");
    let outbox_ids: HashSet<String> = outbox::table
        .select(outbox::event_id)
        .load::<Uuid>(&mut env.db())
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect();
    assert_eq!(ids, outbox_ids);
}

#[test]
fn migrate_and_seed_are_idempotent() {
    let env = TestEnv::new();
    let first = env.ordctl(["migrate", "--json"]).assert_code(0).json();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(first["created_database"], true, "{first}");
    assert_eq!(
        first["applied"].as_array().unwrap().len(),
        migrations,
        "{first}"
    );

    let second = env.ordctl(["migrate", "--json"]).assert_code(0).json();
    assert_eq!(second["created_database"], false, "{second}");
    assert_eq!(second["applied"], Value::Array(vec![]), "{second}");
    let human = env.ordctl(["migrate"]).assert_code(0);
    assert!(human.stdout.contains("up to date"), "{}", human.stdout);

    let seeded = env
        .ordctl(["seed", "--users", "5", "--json"])
        .assert_code(0)
        .json();
    let again = env
        .ordctl(["seed", "--users", "5", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(seeded, again);
    let seeded = seeded.as_array().expect("an array");
    assert_eq!(seeded.len(), 5);
    for user in seeded {
        assert_eq!(keys(user), ["email", "id", "name"], "{user}");
        assert!(user["id"].is_i64() && user["name"].is_string(), "{user}");
    }
    let emails: HashSet<&str> = seeded
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 5, "distinct emails");
    assert_eq!(env.count("users"), 5);

    let more = env
        .ordctl(["seed", "--users", "7", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(
        more.as_array().unwrap()[..5],
        seeded[..],
        "existing users kept"
    );
    assert_eq!(env.count("users"), 7);
}

#[test]
fn no_password_appears_in_any_output() {
    const SECRET: &str = "SeCrEt";
    let env = TestEnv::new();
    let database_url = with_password(&env.database_url(), SECRET);
    let db = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--database-url", &database_url]);
        env.ordctl(args)
    };
    let amqp_down = format!("amqp://guest:{SECRET}@127.0.0.1:1/%2f");
    let smtp_down = format!("smtp://user:{SECRET}@127.0.0.1:1");
    let smtp_no_auth = env
        .smtp_url()
        .replace("smtp://", &format!("smtp://user:{SECRET}@"));
    let redis_auth = format!("redis://:{SECRET}@127.0.0.1:6379/0");

    let mut runs = vec![
        db(&["migrate"]).assert_code(0),
        db(&["migrate", "--json"]).assert_code(0),
        db(&["seed", "--json"]).assert_code(0),
        db(&["place-order", "--user", "3", "--amount", "42", "--json"]).assert_code(0),
        db(&["place-order", "--user", "999", "--amount", "42"]).assert_code(2),
        db(&["status", "--json"]).assert_code(0),
        db(&["status"]).assert_code(0),
        db(&["worker", "--exit-when-idle", common::WORKER_IDLE_SECS]).assert_code(0),
        db(&["relay", "--once"]).assert_code(0),
    ];
    // A broker, an SMTP server and a Redis that refuse: their errors name
    // the URL, masked.
    let place_unpublished = ["place-order", "--user", "3", "--amount", "42"];
    runs.extend([
        env.ordctl([&place_unpublished[..], &["--amqp-url", &amqp_down]].concat())
            .assert_code(0),
        env.ordctl(["relay", "--once", "--amqp-url", &amqp_down])
            .assert_code(1),
        env.ordctl(["status", "--amqp-url", &amqp_down])
            .assert_code(1),
        env.ordctl_with_env(["status"], &[("AMQP_URL", amqp_down.as_str())])
            .assert_code(1),
        // The worker's preflight names each of them, masked...
        env.ordctl(["worker", "--amqp-url", &amqp_down])
            .assert_code(1),
        env.ordctl(["worker", "--smtp-url", &smtp_down])
            .assert_code(1),
        env.ordctl(["worker", "--smtp-url", &smtp_no_auth])
            .assert_code(1),
        env.ordctl(["worker", "--redis-url", &redis_auth])
            .assert_code(1),
        // ...and so do the failures met later, without it.
        env.run_worker(&["--no-preflight", "--amqp-url", &amqp_down]),
        // Relays the unpublished order, then cannot send it: an SMTP
        // outage holds it until the worker is idle, then it is requeued.
        env.run_worker(&[
            "--no-preflight",
            "--max-attempts",
            "1",
            "--smtp-url",
            &smtp_down,
        ]),
    ]);
    env.place_order(3, "42", &[]);
    runs.push(env.run_worker(&[
        "--no-preflight",
        "--max-attempts",
        "1",
        "--smtp-url",
        &smtp_no_auth,
    ]));
    assert_eq!(
        env.queue_depth(&env.work_queue()),
        2,
        "both SMTP outages were reached and held the orders"
    );
    env.place_order(3, "42", &[]);
    runs.push(env.run_worker(&["--no-preflight", "--redis-url", &redis_auth]));
    assert_eq!(env.queue_depth(&env.dlq()), 0);
    assert_eq!(
        env.emails().len(),
        4,
        "every order emailed once: the held ones once SMTP works, and with Redis refusing"
    );
    // Malformed URLs with passwords: the error must still mask them.
    for (flag, url) in [
        (
            "--database-url",
            format!("postgres://postgres:{SECRET}@127.0.0.1:99999/x"),
        ),
        (
            "--amqp-url",
            format!("http://guest:{SECRET}@127.0.0.1:5672/"),
        ),
        ("--amqp-url", format!("amqp://guest:{SECRET}@[::1/%2f")),
        ("--redis-url", format!("redis://:{SECRET}@[bad/0")),
        (
            "--smtp-url",
            format!("smtp://user:{SECRET}@127.0.0.1?tls=maybe"),
        ),
        ("--smtp-url", format!("smtps://user:{SECRET}@[bad")),
    ] {
        runs.push(env.ordctl(["status", flag, &url]).assert_code(2));
    }
    for run in &runs {
        assert!(
            !run.output().contains(SECRET),
            "a password leaked: {run:#?}"
        );
    }
    // The runs did reach the failures whose messages could have leaked.
    let all: String = runs.iter().map(|run| run.output()).collect();
    assert!(all.contains(":***@"), "masked URLs are shown: {all}");
}

#[test]
fn place_order_json_has_the_spec_shape() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42", &[]);
    assert_eq!(
        keys(&placed),
        [
            "amount",
            "currency",
            "event_id",
            "order_id",
            "published",
            "user_id"
        ]
    );
    assert_eq!(placed["amount"], "42.00");
    assert_eq!(placed["currency"], "USD");
    assert_eq!(placed["user_id"], 3);
    assert_eq!(placed["published"], true);
    let event_id: Uuid = placed["event_id"].as_str().unwrap().parse().unwrap();
    let order_id = placed["order_id"].as_i64().unwrap();
    let (user_id, amount_minor, currency): (i64, i64, String) = orders::table
        .find(order_id)
        .select((orders::user_id, orders::amount_minor, orders::currency))
        .first(&mut env.db())
        .unwrap();
    assert_eq!((user_id, amount_minor, currency.as_str()), (3, 4200, "USD"));
    let outbox_event: Uuid = outbox::table
        .filter(outbox::order_id.eq(order_id))
        .select(outbox::event_id)
        .first(&mut env.db())
        .unwrap();
    assert_eq!(outbox_event, event_id);

    // Global flags work before the subcommand too; amounts keep their cents.
    let run = env
        .ordctl([
            "--json",
            "place-order",
            "--user",
            "2",
            "--amount",
            "7.5",
            "--currency",
            "eur",
        ])
        .assert_code(0);
    let second = run.json();
    assert_eq!(
        (&second["amount"], &second["currency"]),
        (&"7.50".into(), &"EUR".into())
    );
}

#[test]
fn a_placed_order_is_published_with_the_spec_message_shape() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42", &[]);
    let messages = env.take_messages(&env.work_queue());
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    let event_id = placed["event_id"].as_str().unwrap();
    assert_eq!(message.routing_key, "order.created");
    assert_eq!(message.message_id.as_deref(), Some(event_id));
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.delivery_mode, Some(2), "persistent");
    assert!(message.timestamp.is_some_and(|t| t > 0), "{message:?}");
    let body = &message.body;
    assert_eq!(keys(body), ["event_id", "occurred_at", "order", "type"]);
    assert_eq!(body["event_id"], event_id);
    assert_eq!(body["type"], "order.created");
    chrono::DateTime::parse_from_rfc3339(body["occurred_at"].as_str().unwrap())
        .expect("occurred_at is RFC 3339");
    assert_eq!(
        body["order"],
        serde_json::json!({
            "id": placed["order_id"], "user_id": 3, "amount": "42.00", "currency": "USD"
        })
    );
}

#[test]
fn an_unreachable_database_exits_1_with_the_cause_chain_once() {
    let env = TestEnv::new();
    let down = "postgres://postgres@127.0.0.1:1/ordctl";
    for args in [
        &["place-order", "--user", "3", "--amount", "42"][..],
        &["migrate"],
        &["seed"],
        &["status"],
        &["relay", "--once"],
    ] {
        let run = env
            .ordctl(args.iter().chain(&["--database-url", down]))
            .assert_code(1);
        assert_eq!(run.stdout, "", "{args:?}");
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|line| line.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error line: {}", run.stderr);
        assert!(errors[0].contains("127.0.0.1:1"), "{args:?}: {}", errors[0]);
        assert_eq!(
            run.stderr.matches("Connection refused").count(),
            1,
            "{args:?}: the cause once: {}",
            run.stderr
        );
    }
}

#[test]
fn an_operational_failure_is_reported_on_one_line() {
    let env = TestEnv::new();
    let run = env
        .ordctl([
            "place-order",
            "--user",
            "3",
            "--amount",
            "42",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/ordctl",
        ])
        .assert_code(1);
    assert_eq!(run.stderr_lines().len(), 1, "{}", run.stderr);
}

#[test]
fn the_worker_exits_0_on_sigterm() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let worker = env.spawn_worker(&[]);
    env.place_order(3, "42", &[]);
    env.wait_for_emails(1);

    worker.terminate();
    let run = worker.wait();
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(env.emails().len(), 1);
    assert_eq!(
        env.queue_consumers(&env.work_queue()),
        0,
        "the consumer is gone"
    );
}

#[test]
fn the_worker_exits_0_when_idle() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let run = env.ordctl(["worker", "--exit-when-idle", "1"]);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(env.emails().is_empty());
}

#[test]
fn a_worker_whose_log_reader_went_away_keeps_working_and_stops_when_told() {
    // Every line it logs fails to write: it must neither die nor hang.
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(1, "10.00", &[]);
    let idle = Running::spawn_unread(env.command(["worker", "--exit-when-idle", "1"]));
    assert_eq!(idle.wait().code, Some(0), "exits when idle");
    assert_eq!(env.emails().len(), 1);

    let worker = Running::spawn_unread(env.command(["worker"]));
    env.place_order(2, "12.50", &[]);
    common::wait_until("the second email", Duration::from_secs(30), || {
        env.emails().len() == 2
    });
    worker.terminate();
    assert_eq!(worker.wait().code, Some(0), "stops on SIGTERM");
}

#[test]
fn a_command_whose_stderr_is_gone_still_exits_with_its_code() {
    let env = TestEnv::new();
    // Bad input is exit 2, whether or not anyone reads the error line.
    let run = Running::spawn_unread(env.command(["place-order", "--user", "1", "--amount", "abc"]))
        .wait();
    assert_eq!(run.code, Some(2));
}

#[test]
fn the_worker_sends_over_no_more_smtp_connections_than_it_is_allowed() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.ordctl([
        "place-order",
        "--count",
        "60",
        "--concurrency",
        "4",
        "--amount",
        "3",
    ])
    .assert_code(0);

    // 8 slots sending at once, 2 connections: the others wait their turn.
    env.run_worker(&["--concurrency", "8", "--smtp-connections", "2"]);
    let emails = env.emails();
    assert_eq!(emails.len(), 60);
    let peers: HashSet<&str> = emails.iter().map(|e| e.peer.as_str()).collect();
    assert!(
        (1..=2).contains(&peers.len()) && !peers.contains(""),
        "the emails came over these connections: {peers:?}"
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) AS n FROM notifications \
             WHERE consumer = 'notifications' AND status = 'sent'"
        ),
        60
    );
}

#[test]
fn bulk_orders_are_spread_over_the_users_and_each_emailed_once() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let summary = env
        .ordctl([
            "place-order",
            "--count",
            "50",
            "--concurrency",
            "4",
            "--amount",
            "3",
            "--json",
        ])
        .assert_code(0)
        .json();
    assert_eq!(summary["placed"], 50, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(env.count("orders"), 50);
    let users_with_orders = env.scalar("SELECT count(DISTINCT user_id) AS n FROM orders");
    assert_eq!(
        users_with_orders,
        env.count("users"),
        "every user got orders"
    );

    env.run_worker(&["--concurrency", "4"]);
    let emails = env.emails();
    assert_eq!(emails.len(), 50);
    let message_ids: HashSet<&str> = emails.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(message_ids.len(), 50, "50 distinct emails");
    let recipients: BTreeSet<&str> = emails.iter().map(|e| e.to.as_str()).collect();
    let addresses: Vec<String> = users::table
        .select(users::email)
        .load(&mut env.db())
        .unwrap();
    assert_eq!(
        recipients,
        addresses
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn status_json_has_the_spec_shape() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    env.place_order(3, "42", &[]);
    env.place_order(4, "1", &["--amqp-url", DOWN_AMQP_URL]);

    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    for key in ["queues", "outbox", "deliveries", "dlq"] {
        assert!(status.get(key).is_some(), "{key} in {status}");
    }
    let queues = status["queues"].as_array().expect("queues is an array");
    let names: Vec<&str> = queues.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, env.topology().queue_names());
    for queue in queues {
        for key in ["name", "ready", "unacked", "consumers"] {
            assert!(queue.get(key).is_some(), "{key} in {queue}");
        }
        assert!(
            queue["ready"].is_u64() && queue["consumers"].is_u64(),
            "{queue}"
        );
        assert!(
            queue["unacked"].is_u64() || queue["unacked"].is_null(),
            "{queue}"
        );
    }
    let work = work_queue_status(&env, &status);
    assert_eq!((&work["ready"], &work["consumers"]), (&1.into(), &0.into()));
    assert_eq!(status["outbox"]["pending"], 1);
    assert!(status["outbox"]["oldest_pending_secs"]
        .as_f64()
        .is_some_and(|s| s >= 0.0));
    assert_eq!(status["deliveries"], serde_json::json!({}));
    assert_eq!(status["dlq"], 0);

    env.run_worker(&[]);
    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    // Both orders' confirmations and payments.
    assert_eq!(
        status["deliveries"],
        serde_json::json!({"sent": 4}),
        "{status}"
    );
    let notifications = status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .find(|consumer| consumer["name"] == "notifications")
        .expect("the notifications consumer");
    assert_eq!(notifications["deliveries"], serde_json::json!({"sent": 2}));
    assert_eq!(status["outbox"]["pending"], 0);
    assert!(
        status["outbox"]["oldest_pending_secs"].is_null(),
        "{status}"
    );
    assert_eq!(work_queue_status(&env, &status)["ready"], 0);
}

#[test]
fn quorum_queues_carry_orders_end_to_end() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let quorum = [("ORDCTL_QUEUE_TYPE", "quorum")];
    let placed = env
        .ordctl_with_env(
            ["place-order", "--user", "2", "--amount", "12.34", "--json"],
            &quorum,
        )
        .assert_code(0)
        .json();
    assert_eq!(placed["published"], true);
    env.ordctl_with_env(["worker", "--exit-when-idle", "2"], &quorum)
        .assert_code(0);

    let emails = env.emails();
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert!(emails[0].body.contains("12.34"), "{}", emails[0].body);
    // The queues exist as quorum queues now: declaring them classic fails
    // with a clear message naming the flag.
    let classic = env
        .ordctl(["place-order", "--user", "2", "--amount", "1"])
        .assert_code(0);
    assert!(
        classic.stderr.contains("--queue-type"),
        "{}",
        classic.stderr
    );
}

#[test]
fn bulk_orders_without_an_amount_get_a_spread_of_demo_amounts() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let summary = env
        .ordctl(["place-order", "--count", "20", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(summary["placed"], 20, "{summary}");
    let amounts = env.scalar("SELECT count(DISTINCT amount_minor) AS n FROM orders");
    assert!(amounts > 1, "amounts should vary, got {amounts} distinct");
    let out_of_range = env.scalar(
        "SELECT count(*) AS n FROM orders WHERE amount_minor < 500 OR amount_minor > 20499",
    );
    assert_eq!(out_of_range, 0);
}
