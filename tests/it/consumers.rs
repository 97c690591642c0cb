//! The consumers beside the confirmation email — payments with its
//! compensation, staff alerts, cancellation and status emails — and the
//! registry that the worker, status and replay-dlq read. Real services, one
//! database and namespace per test (see `common`).

use crate::common;

use common::TestEnv;
use ordctl::messaging::publisher::Publisher;
use ordctl::messaging::Outgoing;
use serde_json::Value;

/// `ordctl place-order --user 3 --item ITEM --json`; returns the order id.
fn order_items(env: &TestEnv, items: &[&str]) -> i64 {
    env.order_items(3, items, &[]).assert_code(0).json()["order_id"]
        .as_i64()
        .expect("an order id")
}

fn stock(env: &TestEnv, product: i64) -> i32 {
    env.stock_of(product).0
}

fn order_status(env: &TestEnv, order: i64) -> String {
    env.status_of(order).0
}

/// The routing keys of the order's outbox events, oldest first.
fn events_of(env: &TestEnv, order: i64) -> Vec<String> {
    env.events_of(order)
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

fn subjects(env: &TestEnv) -> Vec<String> {
    let mut subjects: Vec<String> = env.emails().into_iter().map(|e| e.subject).collect();
    subjects.sort();
    subjects
}

#[test]
fn a_paid_order_gets_one_payment_one_event_and_its_confirmation() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order = env.place_order(3, "42", &[])["order_id"].as_i64().unwrap();
    env.run_worker(&[]);

    assert_eq!(order_status(&env, order), "paid");
    assert_eq!(
        env.scalar(
            "SELECT count(*) AS n FROM payments WHERE status = 'succeeded' AND amount_minor = 4200"
        ),
        1
    );
    assert_eq!(
        events_of(&env, order),
        ["order.created", "payment.succeeded"]
    );
    assert_eq!(subjects(&env), [format!("Order #{order} confirmed")]);
    let shown = env
        .ordctl(["order", "show", &order.to_string(), "--json"])
        .assert_code(0)
        .json();
    assert_eq!(shown["payment"]["status"], "succeeded", "{shown}");
}

#[test]
fn a_declined_payment_cancels_the_order_releases_its_stock_and_charges_once_under_redelivery() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    // The simulated gateway declines every amount whose cents are 13.
    let product = env.add_product("Declined Widget", "10.13", 5, &[]);
    let order = order_items(&env, &[&format!("{product}")]);
    assert_eq!(stock(&env, product), 4);
    env.run_worker(&[]);

    assert_eq!(order_status(&env, order), "cancelled");
    assert_eq!(stock(&env, product), 5, "the stock came back");
    assert_eq!(
        events_of(&env, order),
        ["order.created", "payment.declined", "order.cancelled"]
    );
    assert_eq!(
        subjects(&env),
        [
            format!("Order #{order} cancelled"),
            format!("Order #{order} confirmed")
        ]
    );
    let cancellation = env
        .emails()
        .into_iter()
        .find(|email| email.subject.ends_with("cancelled"))
        .unwrap();
    assert!(
        cancellation.body.contains("payment declined"),
        "{}",
        cancellation.body
    );

    // Every event delivered again (the relay republishes unmarked rows):
    // nothing is charged, released or emailed twice.
    env.scalar(
        "WITH r AS (UPDATE outbox SET published_at = NULL RETURNING 1) SELECT count(*) AS n FROM r",
    );
    env.run_worker(&[]);
    assert_eq!(env.count("payments"), 1);
    assert_eq!(stock(&env, product), 5);
    assert_eq!(env.emails().len(), 2);
    assert!(
        env.scalar("SELECT count(*) AS n FROM delivery_attempts WHERE consumer = 'payments' AND outcome = 'duplicate'") >= 1
    );
}

#[test]
fn crossing_the_low_stock_threshold_emails_staff_once_per_crossing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    // Stock 10: the threshold defaults to half of it, 5.
    let product = env.add_product("Gadget", "2.50", 10, &[]);
    order_items(&env, &[&format!("{product}x3")]); // 10 → 7
    order_items(&env, &[&format!("{product}x3")]); // 7 → 4: crosses
    order_items(&env, &[&format!("{product}")]); // 4 → 3: already below
    let staff = ["--staff-email", "ops@example.com"];
    env.run_worker(&staff);

    let alerts = || -> Vec<common::Email> {
        env.emails()
            .into_iter()
            .filter(|email| email.to == "ops@example.com")
            .collect()
    };
    let first = alerts();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].subject.contains("Low stock: Gadget"),
        "{}",
        first[0].subject
    );
    assert!(first[0].body.contains("Stock left: 4"), "{}", first[0].body);
    assert!(first[0].message_id.ends_with(".staff-alerts@ordctl>"));

    // A restock above the threshold re-arms the alert.
    let id = product.to_string();
    env.ordctl(["product", "restock", &id, "--quantity", "10"])
        .assert_code(0); // 13, threshold 6
    order_items(&env, &[&format!("{product}x8")]); // 13 → 5: crosses again
    env.run_worker(&staff);
    assert_eq!(alerts().len(), 2);
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM outbox WHERE routing_key = 'stock.low'"),
        2
    );
}

#[test]
fn an_admins_status_moves_email_the_customer() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order = env.place_order(3, "42", &[])["order_id"].as_i64().unwrap();
    env.run_worker(&[]);
    let id = order.to_string();
    env.ordctl(["order", "set-status", &id, "shipped"])
        .assert_code(0);
    env.ordctl(["order", "set-status", &id, "delivered"])
        .assert_code(0);
    env.run_worker(&[]);
    assert_eq!(
        subjects(&env),
        [
            format!("Order #{order} confirmed"),
            format!("Order #{order} is delivered"),
            format!("Order #{order} is shipped"),
        ]
    );
}

#[test]
fn a_poison_message_is_dead_lettered_on_each_consumers_queue_with_its_reason() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mut publisher =
        Publisher::connect(&env.settings.amqp_url, &env.topology()).expect("connecting");
    for (key, id) in [("order.created", "poison-1"), ("stock.low", "poison-2")] {
        let junk = Outgoing::new(key, id, b"{\"not\": \"an event\"}".to_vec());
        publisher.publish_events(&[junk]).expect("publishing");
    }
    publisher.close();
    env.run_worker(&[]);

    let status = env.ordctl(["status", "--json"]).assert_code(0).json();
    let consumers: Vec<(&str, u64)> = status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["dlq"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        consumers,
        [("notifications", 1), ("payments", 1), ("staff-alerts", 1)],
        "{status}"
    );
    assert_eq!(status["dlq"], 3);
    let reasons: Vec<&Value> = status["dead_letters"].as_array().unwrap().iter().collect();
    assert_eq!(reasons.len(), 3, "{status}");
    assert!(reasons
        .iter()
        .all(|r| r["reason"].as_str().unwrap().contains("not a valid event")));

    let messages = dead_letters(&env, &["--consumer", "payments"]);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["consumer"], "payments");
    assert_eq!(messages[0]["message_id"], "poison-1");
    env.ordctl(["replay-dlq", "--consumer", "nope"])
        .assert_code(2);
}

#[test]
fn worker_consumers_runs_only_the_named_ones() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order = env.place_order(3, "42", &[])["order_id"].as_i64().unwrap();
    env.run_worker(&["--consumers", "payments"]);
    assert_eq!(order_status(&env, order), "paid");
    assert!(env.emails().is_empty(), "only payments ran");
    assert_eq!(
        env.queue_depth(&env.work_queue()),
        1,
        "the confirmation still waits"
    );

    let refused = env
        .ordctl(["worker", "--consumers", "payments,nope"])
        .assert_code(2);
    assert!(
        refused.stderr.contains("unknown consumer \"nope\""),
        "{}",
        refused.stderr
    );
}

#[test]
fn a_dead_lettered_payment_is_charged_once_when_replayed() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order = env.place_order(3, "42", &[])["order_id"].as_i64().unwrap();
    // The simulated gateway fails every charge: one attempt, then the DLQ.
    let failing = ["--payment-fail-rate", "1", "--max-attempts", "1"];
    env.run_worker(&failing);
    assert_eq!(order_status(&env, order), "pending");
    assert_eq!(env.count("payments"), 0);
    let messages = dead_letters(&env, &["--consumer", "payments"]);
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0]["reason"]
            .as_str()
            .unwrap()
            .contains("simulated"),
        "{messages:?}"
    );

    // Replayed twice over (the second run finds nothing): one charge.
    for _ in 0..2 {
        env.ordctl(["replay-dlq", "--consumer", "payments"])
            .assert_code(0);
        env.run_worker(&[]);
    }
    assert_eq!(order_status(&env, order), "paid");
    assert_eq!(env.count("payments"), 1);
    assert_eq!(env.emails().len(), 1, "one confirmation");
}

#[test]
fn one_bad_event_in_a_batch_fails_alone_and_the_rest_are_handled_once() {
    use ordctl::domain::events::OrderSnapshot;
    use ordctl::domain::{Currency, Event, Money, OrderCreated, OrderId, UserId};

    let env = TestEnv::new();
    env.migrate_and_seed();
    env.ordctl(["place-order", "--count", "10"]).assert_code(0);
    // An event about an order that does not exist, queued behind the ten:
    // one slot takes all eleven as one batch, whose delivery-log insert
    // fails on the foreign key.
    let bogus = Event::OrderCreated(OrderCreated::new(
        OrderSnapshot {
            id: OrderId(999_999),
            user_id: UserId(3),
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
            items: Vec::new(),
        },
        chrono::Utc::now(),
    ));
    let mut publisher =
        Publisher::connect(&env.settings.amqp_url, &env.topology()).expect("connecting");
    let body = serde_json::to_vec(&bogus.to_json()).unwrap();
    let outgoing = Outgoing::new("order.created", bogus.event_id().to_string(), body);
    publisher.publish_events(&[outgoing]).expect("publishing");
    publisher.close();

    let run = env.run_worker(&["--concurrency", "1"]);
    assert!(
        run.stderr.contains("failed together"),
        "the eleven were not one batch:\n{}",
        run.stderr
    );
    let emails = env.wait_for_emails(10);
    let mut ids: Vec<&str> = emails.iter().map(|e| e.message_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each confirmation once");
    assert_eq!(env.count("payments"), 10);
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM notifications WHERE status = 'sent'"),
        20
    );
    let messages = dead_letters(&env, &[]);
    assert_eq!(messages.len(), 2, "one per consumer: {messages:?}");
    for message in &messages {
        assert_eq!(message["message_id"], bogus.event_id().to_string());
        assert!(
            message["reason"]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{messages:?}"
        );
    }
}

/// The dead letters `replay-dlq --dry-run --json` lists (with `extra`
/// arguments, e.g. `--consumer payments`), leaving them in place.
fn dead_letters(env: &TestEnv, extra: &[&str]) -> Vec<Value> {
    let args = ["replay-dlq", "--dry-run", "--json"];
    let listed = env.ordctl(args.iter().chain(extra)).assert_code(0).json();
    listed["messages"].as_array().expect("messages").clone()
}
