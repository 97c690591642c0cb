//! The write side of the order system against the real services: order
//! status moves and their events, `order show`, products and their stock,
//! orders of products under concurrency, low-stock events, idempotency.
//! Each test has its own database and namespace (see `common`).

mod common;

use common::TestEnv;
use diesel::prelude::*;
use ordctl::db::schema::{orders, outbox};
use ordctl::domain::OrderId;
use serde_json::Value;

/// The routing keys of the order's outbox events, oldest first.
fn events_of(env: &TestEnv, order_id: i64) -> Vec<(String, Value)> {
    outbox::table
        .filter(outbox::order_id.eq(order_id))
        .order(outbox::id)
        .select((outbox::routing_key, outbox::payload))
        .load(&mut env.db())
        .expect("reading the outbox")
}

/// The order's status and last update, straight from the table.
fn status_of(env: &TestEnv, order_id: i64) -> (String, chrono::DateTime<chrono::Utc>) {
    orders::table
        .find(order_id)
        .select((orders::status, orders::updated_at))
        .first(&mut env.db())
        .expect("the order exists")
}

/// Places a `--amount` order for user 3 and returns its id.
fn place(env: &TestEnv, amount: &str) -> i64 {
    env.place_order(3, amount, &[])["order_id"]
        .as_i64()
        .expect("an order id")
}

/// What the payments consumer does on success (the status part of it).
fn mark_paid(env: &TestEnv, order_id: i64) {
    ordctl::pipeline::orders::mark_paid(&mut env.db(), OrderId(order_id)).expect("marking paid");
}

fn set_status(env: &TestEnv, order_id: i64, status: &str) -> common::Run {
    env.ordctl([
        "order",
        "set-status",
        &order_id.to_string(),
        status,
        "--json",
    ])
}

#[test]
fn a_paid_order_moves_to_shipped_then_delivered_with_one_event_each() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order_id = place(&env, "42");
    mark_paid(&env, order_id);
    assert_eq!(status_of(&env, order_id).0, "paid");
    assert_eq!(events_of(&env, order_id).len(), 1, "paying writes no event");

    for (n, (from, to)) in [("paid", "shipped"), ("shipped", "delivered")]
        .into_iter()
        .enumerate()
    {
        let changed = set_status(&env, order_id, to).assert_code(0).json();
        assert_eq!(changed["order_id"], order_id);
        assert_eq!(changed["from"], from);
        assert_eq!(changed["to"], to);
        assert_eq!(changed["routing_key"], "order.status_updated");
        assert_eq!(changed["published"], true, "{changed}");
        assert_eq!(status_of(&env, order_id).0, to);

        let events = events_of(&env, order_id);
        assert_eq!(events.len(), n + 2, "exactly one new event: {events:?}");
        let (key, payload) = events.last().unwrap();
        assert_eq!(key, "order.status_updated");
        assert_eq!(payload["type"], "order.status_updated");
        assert_eq!(payload["event_id"], changed["event_id"]);
        assert_eq!(payload["from"], from);
        assert_eq!(payload["to"], to);
        assert_eq!(
            payload["order"],
            serde_json::json!({"id": order_id, "user_id": 3, "amount": "42.00", "currency": "USD"})
        );
    }
}

#[test]
fn an_admin_cancels_a_pending_order_with_an_order_cancelled_event() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let order_id = place(&env, "42");
    let changed = set_status(&env, order_id, "cancelled")
        .assert_code(0)
        .json();
    assert_eq!(changed["from"], "pending");
    assert_eq!(changed["to"], "cancelled");
    assert_eq!(changed["routing_key"], "order.cancelled");
    assert_eq!(status_of(&env, order_id).0, "cancelled");
    let events = events_of(&env, order_id);
    let keys: Vec<&str> = events.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, ["order.created", "order.cancelled"]);
    let payload = &events[1].1;
    assert_eq!(payload["event_id"], changed["event_id"]);
    assert_eq!(payload["order"]["id"], order_id);
    assert!(
        payload["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{payload}"
    );
}

#[test]
fn illegal_status_moves_exit_2_with_one_line_and_write_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let pending = place(&env, "1");
    let paid = place(&env, "2");
    mark_paid(&env, paid);
    let delivered = place(&env, "3");
    mark_paid(&env, delivered);
    set_status(&env, delivered, "shipped").assert_code(0);
    set_status(&env, delivered, "delivered").assert_code(0);
    let cancelled = place(&env, "4");
    set_status(&env, cancelled, "cancelled").assert_code(0);

    let cases: &[(&str, i64, &str)] = &[
        ("pending skips paid", pending, "shipped"),
        ("pending to delivered", pending, "delivered"),
        ("only a payment sets paid", pending, "paid"),
        ("same status", pending, "pending"),
        ("paid to paid", paid, "paid"),
        ("paid cannot be cancelled", paid, "cancelled"),
        ("paid skips shipped", paid, "delivered"),
        ("backwards", paid, "pending"),
        ("from delivered", delivered, "shipped"),
        ("delivered to cancelled", delivered, "cancelled"),
        ("from cancelled", cancelled, "shipped"),
        ("cancelled to pending", cancelled, "pending"),
        ("cancelled again", cancelled, "cancelled"),
        ("unknown status", pending, "refunded"),
        ("upper-case status", pending, "SHIPPED"),
        ("unknown order", 999_999, "shipped"),
    ];
    let ids = [pending, paid, delivered, cancelled];
    let snapshot = || -> Vec<_> {
        ids.iter()
            .map(|&id| (status_of(&env, id), events_of(&env, id).len()))
            .collect()
    };
    let before = (snapshot(), env.count("outbox"));
    for (case, order_id, status) in cases {
        let run = set_status(&env, *order_id, status);
        assert_eq!(run.code, Some(2), "{case}: {run:#?}");
        assert_eq!(run.stdout, "", "{case}");
        let lines = run.stderr_lines();
        assert_eq!(lines.len(), 1, "{case}: one line: {run:#?}");
        assert!(lines[0].starts_with("error: "), "{case}: {lines:?}");
        assert_eq!(
            (snapshot(), env.count("outbox")),
            before,
            "{case}: nothing written"
        );
    }
    for bad_id in ["0", "-1", "x"] {
        let run = env.ordctl(["order", "set-status", bad_id, "shipped"]);
        assert_eq!(run.code, Some(2), "id {bad_id}: {run:#?}");
        assert_eq!(run.stderr_lines().len(), 1, "{run:#?}");
    }
}

#[test]
fn order_show_prints_the_order_its_status_payment_and_timeline() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let placed = env.place_order(3, "42.50", &[]);
    let order_id = placed["order_id"].as_i64().unwrap();

    let shown = env
        .ordctl(["order", "show", &order_id.to_string(), "--json"])
        .assert_code(0)
        .json();
    assert_eq!(shown["id"], order_id);
    assert_eq!(shown["user_id"], 3);
    assert_eq!(shown["amount"], "42.50");
    assert_eq!(shown["currency"], "USD");
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["items"], serde_json::json!([]));
    assert_eq!(shown["payment"], Value::Null);
    let steps: Vec<&str> = shown["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|step| step["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["committed", "published"], "{shown}");

    let human = env
        .ordctl(["order", "show", &order_id.to_string()])
        .assert_code(0);
    assert!(human.stdout.contains("pending"), "{}", human.stdout);
    assert!(human.stdout.contains("42.50"), "{}", human.stdout);

    let run = env.ordctl(["order", "show", "999999"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(run.stderr_lines().len(), 1, "{run:#?}");
}
