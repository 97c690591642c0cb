//! The write side of the order system against the real services: order
//! status moves and their events, `order show`, products and their stock,
//! orders of products under concurrency, low-stock events, idempotency.
//! Each test has its own database and namespace (see `common`).

use crate::common;

use common::{TestEnv, DOWN_AMQP_URL};
use diesel::prelude::*;
use ordctl::db::schema::{order_items, outbox, products};
use ordctl::domain::OrderId;
use redis::Commands;
use serde_json::{json, Value};

/// Places a `--amount` order for user 3 and returns its id.
fn place(env: &TestEnv, amount: &str) -> i64 {
    env.place_order(3, amount, &[])["order_id"]
        .as_i64()
        .expect("an order id")
}

/// What the payments consumer does on success (the status part of it).
fn mark_paid(env: &TestEnv, order_id: i64) {
    ordctl::orders::mark_paid(&mut env.db(), OrderId(order_id)).expect("marking paid");
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
    assert_eq!(env.status_of(order_id).0, "paid");
    assert_eq!(env.events_of(order_id).len(), 1, "paying writes no event");

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
        assert_eq!(env.status_of(order_id).0, to);

        let events = env.events_of(order_id);
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
    assert_eq!(env.status_of(order_id).0, "cancelled");
    let events = env.events_of(order_id);
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
            .map(|&id| (env.status_of(id), env.events_of(id).len()))
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

// ---- products, stock and orders of products ----

/// The `stock.low` payloads in the outbox, oldest first.
fn stock_low_events(env: &TestEnv) -> Vec<Value> {
    outbox::table
        .filter(outbox::routing_key.eq("stock.low"))
        .order(outbox::id)
        .select(outbox::payload)
        .load(&mut env.db())
        .expect("reading the outbox")
}

/// Everything an order could write, to check that nothing was.
fn written(env: &TestEnv) -> (i64, i64, i64, Vec<(i64, i32)>) {
    let stocks = products::table
        .order(products::id)
        .select((products::id, products::stock))
        .load(&mut env.db())
        .expect("reading products");
    (
        env.count("orders"),
        env.count("outbox"),
        env.count("order_items"),
        stocks,
    )
}

#[test]
fn product_commands_print_the_spec_shapes_and_move_the_default_threshold() {
    let env = TestEnv::new();
    env.ordctl(["migrate"]).assert_code(0);
    let mug = env
        .ordctl([
            "product", "add", "--name", "Mug", "--price", "12.5", "--stock", "101", "--json",
        ])
        .assert_code(0)
        .json();
    assert_eq!(
        mug,
        json!({"id": 1, "name": "Mug", "price": "12.50", "currency": "USD", "stock": 101, "low_stock_threshold": 50})
    );
    let pen = env.add_product(
        "Pen",
        "1",
        10,
        &["--low-stock-threshold", "3", "--currency", "eur"],
    );

    // A default threshold follows the stock; an explicit one stays put.
    let restocked = env
        .ordctl(["product", "restock", "1", "--quantity", "19", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(restocked["stock"], 120);
    assert_eq!(restocked["low_stock_threshold"], 60);
    env.ordctl(["product", "restock", &pen.to_string(), "--quantity", "90"])
        .assert_code(0);
    assert_eq!(env.stock_of(pen), (100, 3));

    let list = env
        .ordctl(["product", "list", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(
        list,
        json!([
            {"id": 1, "name": "Mug", "price": "12.50", "currency": "USD", "stock": 120, "low_stock_threshold": 60},
            {"id": pen, "name": "Pen", "price": "1.00", "currency": "EUR", "stock": 100, "low_stock_threshold": 3}
        ])
    );
    let human = env.ordctl(["product", "list"]).assert_code(0);
    assert!(human.stdout.contains("Mug"), "{}", human.stdout);

    let add = [
        "product", "add", "--name", "X", "--price", "1", "--stock", "5",
    ];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "empty name",
            vec![
                "product", "add", "--name", "", "--price", "1", "--stock", "5",
            ],
        ),
        (
            "blank name",
            vec![
                "product", "add", "--name", "  ", "--price", "1", "--stock", "5",
            ],
        ),
        (
            "price 0",
            vec![
                "product", "add", "--name", "X", "--price", "0", "--stock", "5",
            ],
        ),
        (
            "price 1.234",
            vec![
                "product", "add", "--name", "X", "--price", "1.234", "--stock", "5",
            ],
        ),
        (
            "negative stock",
            vec![
                "product",
                "add",
                "--name",
                "X",
                "--price",
                "1",
                "--stock=-1",
            ],
        ),
        (
            "missing stock",
            vec!["product", "add", "--name", "X", "--price", "1"],
        ),
        (
            "bad currency",
            [&add[..], &["--currency", "DOLLAR"]].concat(),
        ),
        (
            "negative threshold",
            [&add[..], &["--low-stock-threshold=-1"]].concat(),
        ),
        (
            "restock unknown product",
            vec!["product", "restock", "99", "--quantity", "1"],
        ),
        (
            "restock 0",
            vec!["product", "restock", "1", "--quantity", "0"],
        ),
        (
            "restock -5",
            vec!["product", "restock", "1", "--quantity=-5"],
        ),
        ("restock without quantity", vec!["product", "restock", "1"]),
        (
            "restock product 0",
            vec!["product", "restock", "0", "--quantity", "1"],
        ),
        ("show unknown product", vec!["product", "show", "99"]),
    ];
    let before = (env.count("products"), env.stock_of(1), env.stock_of(pen));
    for (case, args) in cases {
        let run = env.ordctl(&args);
        assert_eq!(run.code, Some(2), "{case}: {run:#?}");
        assert_eq!(run.stdout, "", "{case}");
        assert_eq!(run.stderr_lines().len(), 1, "{case}: one line: {run:#?}");
        let after = (env.count("products"), env.stock_of(1), env.stock_of(pen));
        assert_eq!(after, before, "{case}: nothing written");
    }
}

#[test]
fn an_order_of_products_is_priced_from_them_and_takes_their_stock() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mug = env.add_product("Mug", "12.50", 10, &[]);
    let pen = env.add_product("Pen", "0.99", 10, &[]);
    let pen_item = format!("{pen}x2");
    let mug_item = mug.to_string();
    // Repeated ids merge: two mugs and three pens.
    let placed = env
        .order_items(3, &[&pen_item, &mug_item, &mug_item, &pen.to_string()], &[])
        .assert_code(0)
        .json();
    assert_eq!(placed["amount"], "27.97", "2 × 12.50 + 3 × 0.99: {placed}");
    assert_eq!(placed["currency"], "USD");
    assert_eq!(placed["published"], true);
    assert_eq!(
        placed["items"],
        json!([{"product_id": mug, "quantity": 2}, {"product_id": pen, "quantity": 3}])
    );
    assert_eq!(env.stock_of(mug).0, 8);
    assert_eq!(env.stock_of(pen).0, 7);
    let order_id = placed["order_id"].as_i64().unwrap();
    let lines: Vec<(i64, i32, i64)> = order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select((
            order_items::product_id,
            order_items::quantity,
            order_items::unit_price_minor,
        ))
        .load(&mut env.db())
        .unwrap();
    assert_eq!(lines, [(mug, 2, 1250), (pen, 3, 99)]);
    let events = env.events_of(order_id);
    assert_eq!(events.len(), 1, "no threshold crossed: {events:?}");
    assert_eq!(events[0].1["order"]["items"], placed["items"]);

    let shown = env
        .ordctl(["order", "show", &order_id.to_string(), "--json"])
        .assert_code(0)
        .json();
    assert_eq!(
        shown["items"],
        json!([
            {"product_id": mug, "quantity": 2, "unit_price": "12.50"},
            {"product_id": pen, "quantity": 3, "unit_price": "0.99"}
        ])
    );

    // Broker down: committed with its stock taken, published later.
    let run = env.ordctl_with_env(
        ["place-order", "--user", "3", "--item", &mug_item, "--json"],
        &[("AMQP_URL", DOWN_AMQP_URL)],
    );
    let placed = run.assert_code(0).json();
    assert_eq!(placed["published"], false);
    assert_eq!(env.stock_of(mug).0, 7);
}

#[test]
fn bad_items_exit_2_with_one_line_and_write_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mug = env.add_product("Mug", "12.50", 10, &[]);
    let euro = env.add_product("Tasse", "9", 10, &["--currency", "EUR"]);
    let (mug, euro) = (mug.to_string(), euro.to_string());
    let mug2 = format!("{mug}x2");
    let cases: &[(&str, &[&str])] = &[
        ("unknown product", &["--user", "3", "--item", "999"]),
        (
            "one unknown among known",
            &["--user", "3", "--item", &mug, "--item", "999"],
        ),
        (
            "mixed currencies",
            &["--user", "3", "--item", &mug, "--item", &euro],
        ),
        ("quantity 0", &["--user", "3", "--item", "1x0"]),
        ("negative quantity", &["--user", "3", "--item", "1x-2"]),
        ("not an item", &["--user", "3", "--item", "mug"]),
        ("empty item", &["--user", "3", "--item", ""]),
        (
            "item and amount",
            &["--user", "3", "--item", &mug, "--amount", "5"],
        ),
        (
            "item and currency",
            &["--user", "3", "--item", &mug, "--currency", "USD"],
        ),
        ("unknown user", &["--user", "999", "--item", &mug2]),
        (
            "unknown user, short stock",
            &["--user", "999", "--item", "1x50"],
        ),
        (
            "bad idempotency key",
            &["--user", "3", "--item", &mug, "--idempotency-key", ""],
        ),
        (
            "bulk and idempotency key",
            &["--count", "2", "--item", &mug, "--idempotency-key", "k"],
        ),
        (
            "bulk of an unknown product",
            &["--count", "3", "--item", "999"],
        ),
    ];
    let before = written(&env);
    for (case, args) in cases {
        let run = env.ordctl([&["place-order"][..], args].concat());
        assert_eq!(run.code, Some(2), "{case}: {run:#?}");
        assert_eq!(run.stdout, "", "{case}");
        let lines = run.stderr_lines();
        assert_eq!(lines.len(), 1, "{case}: one line: {run:#?}");
        assert!(lines[0].starts_with("error: "), "{case}: {lines:?}");
        assert_eq!(written(&env), before, "{case}: nothing written");
    }
}

#[test]
fn not_enough_stock_exits_3_with_one_line_naming_the_product_and_writes_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mug = env.add_product("Mug", "12.50", 10, &[]);
    let pen = env.add_product("Pen", "1", 2, &[]);
    let before = written(&env);
    // The mug is taken first (lower id) and must be given back.
    let run = env.order_items(3, &[&format!("{mug}x3"), &format!("{pen}x3")], &[]);
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_eq!(run.stdout, "");
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{run:#?}");
    assert!(lines[0].starts_with("error: "), "{lines:?}");
    assert!(lines[0].contains(&format!("product {pen}")), "{lines:?}");
    assert!(lines[0].contains("Pen"), "{lines:?}");
    assert_eq!(written(&env), before, "nothing written");

    // Exactly what is left can still be ordered.
    env.order_items(3, &[&format!("{pen}x2")], &[])
        .assert_code(0);
    assert_eq!(env.stock_of(pen).0, 0);
    assert_eq!(env.order_items(3, &[&pen.to_string()], &[]).code, Some(3));
}

#[test]
fn two_hundred_concurrent_orders_for_fifty_units_place_exactly_fifty() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let product = env.add_product("Limited", "5", 50, &[]);
    let item = product.to_string();
    // 20 single orders and 5 bulk runs of 36 (2 connections each) at once:
    // about 30 connections, well under max_connections shared with others.
    let singles: Vec<common::Running> = (0..20)
        .map(|n| {
            let user = (n % 10 + 1).to_string();
            env.spawn(["place-order", "--user", &user, "--item", &item, "--json"])
        })
        .collect();
    let bulks: Vec<common::Running> = (0..5)
        .map(|_| {
            env.spawn([
                "place-order",
                "--count",
                "36",
                "--concurrency",
                "2",
                "--item",
                &item,
                "--json",
            ])
        })
        .collect();
    let mut placed = 0;
    for single in singles {
        let run = single.wait();
        match run.code {
            Some(0) => placed += 1,
            Some(3) => {
                assert_eq!(run.stdout, "");
                assert_eq!(run.stderr_lines().len(), 1, "{run:#?}");
            }
            _ => panic!("a single order neither placed nor refused: {run:#?}"),
        }
    }
    for bulk in bulks {
        let run = bulk.wait();
        match run.code {
            Some(0) => {
                let summary = run.json();
                assert_eq!(summary["failed"], 0, "{summary}");
                assert_eq!(
                    summary["placed"].as_u64().unwrap() + summary["refused"].as_u64().unwrap(),
                    36,
                    "{summary}"
                );
                placed += summary["placed"].as_u64().unwrap();
            }
            Some(3) => assert_eq!(run.stdout, "", "all refused: {run:#?}"),
            _ => panic!("a bulk run failed: {run:#?}"),
        }
    }
    assert_eq!(placed, 50, "exactly the stock was sold");
    assert_eq!(env.stock_of(product).0, 0);
    assert_eq!(env.count("orders"), 50);
    assert_eq!(
        env.scalar("SELECT sum(quantity)::bigint AS n FROM order_items"),
        50
    );
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM outbox WHERE routing_key = 'order.created'"),
        50
    );
    let low = stock_low_events(&env);
    assert_eq!(low.len(), 1, "one crossing, one event: {low:?}");
    assert_eq!(low[0]["product"]["stock"], 24);
    assert_eq!(low[0]["product"]["low_stock_threshold"], 25);
}

#[test]
fn stock_low_is_written_once_per_crossing_and_rearmed_by_restock_and_cancellation() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let product = env.add_product("Lamp", "30", 4, &["--low-stock-threshold", "2"]);
    let order = |quantity: u32| -> i64 {
        env.order_items(3, &[&format!("{product}x{quantity}")], &[])
            .assert_code(0)
            .json()["order_id"]
            .as_i64()
            .unwrap()
    };
    order(2); // 4 -> 2: at the threshold, not below
    assert_eq!(stock_low_events(&env).len(), 0);
    let crossing = order(1); // 2 -> 1: crosses
    let low = stock_low_events(&env);
    assert_eq!(low.len(), 1);
    assert_eq!(
        low[0]["product"],
        json!({"id": product, "name": "Lamp", "stock": 1, "low_stock_threshold": 2})
    );
    assert_eq!(low[0]["order_id"], crossing);
    let keys: Vec<String> = env
        .events_of(crossing)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        keys,
        ["order.created", "stock.low"],
        "in the order's transaction"
    );
    order(1); // 1 -> 0: already below
    assert_eq!(stock_low_events(&env).len(), 1, "once per crossing");
    let low = env
        .ordctl(["product", "list", "--low-stock", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(low.as_array().map(Vec::len), Some(1), "{low}");
    assert_eq!(low[0]["id"], product);

    env.ordctl([
        "product",
        "restock",
        &product.to_string(),
        "--quantity",
        "10",
    ])
    .assert_code(0);
    let last = order(9); // 10 -> 1: crosses again after the restock
    assert_eq!(stock_low_events(&env).len(), 2, "a restock re-arms it");

    set_status(&env, last, "cancelled").assert_code(0); // 1 -> 10
    let low = env
        .ordctl(["product", "list", "--low-stock", "--json"])
        .assert_code(0)
        .json();
    assert_eq!(low, json!([]));
    assert_eq!(env.stock_of(product).0, 10);
    order(9);
    assert_eq!(stock_low_events(&env).len(), 3, "a cancellation re-arms it");
}

#[test]
fn cancelling_an_order_releases_its_stock_and_the_cache_shows_it() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mug = env.add_product("Mug", "12.50", 10, &[]);
    let pen = env.add_product("Pen", "1", 10, &[]);
    let show = || -> Value {
        env.ordctl(["product", "show", &mug.to_string(), "--json"])
            .assert_code(0)
            .json()
    };
    let key = env.redis_key(&format!("product:{mug}"));
    assert_eq!(show()["stock"], 10);
    let cached: Option<String> = env.redis().get(&key).unwrap();
    assert!(cached.is_some(), "show caches the product");

    let placed = env
        .order_items(3, &[&format!("{mug}x4"), &format!("{pen}x1")], &[])
        .assert_code(0)
        .json();
    assert!(
        !env.redis().exists::<_, bool>(&key).unwrap(),
        "an order drops the entry"
    );
    assert_eq!(show()["stock"], 6);

    let order_id = placed["order_id"].as_i64().unwrap();
    let changed = set_status(&env, order_id, "cancelled")
        .assert_code(0)
        .json();
    assert_eq!(changed["released"], json!([mug, pen]));
    assert_eq!(env.stock_of(mug).0, 10);
    assert_eq!(env.stock_of(pen).0, 10);
    assert_eq!(show()["stock"], 10, "the cache shows the released stock");
    let cancelled = &env.events_of(order_id)[1].1;
    assert_eq!(cancelled["type"], "order.cancelled");
    assert_eq!(cancelled["order"]["items"], placed["items"]);

    env.ordctl(["product", "restock", &mug.to_string(), "--quantity", "5"])
        .assert_code(0);
    assert_eq!(show()["stock"], 15, "a restock drops the entry too");
}

#[test]
fn an_idempotency_key_places_one_order_however_often_it_is_sent() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let mug = env.add_product("Mug", "12.50", 10, &[]);
    let item = format!("{mug}x2");
    let mug_one = mug.to_string();
    let first = env
        .order_items(3, &[&item], &["--idempotency-key", "cart-1"])
        .assert_code(0)
        .json();
    assert!(first.get("replayed").is_none(), "{first}");
    let before = written(&env);
    let again = env
        .order_items(3, &[&item], &["--idempotency-key", "cart-1"])
        .assert_code(0)
        .json();
    assert_eq!(again["replayed"], true);
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(again["amount"], "25.00");
    assert_eq!(written(&env), before, "a replay writes nothing");

    // The key reused for another order is a mistake, not a replay.
    for (case, user, items) in [
        ("another user", 4, vec![item.as_str()]),
        ("another quantity", 3, vec![mug_one.as_str()]),
    ] {
        let run = env.order_items(user, &items, &["--idempotency-key", "cart-1"]);
        assert_eq!(run.code, Some(2), "{case}: {run:#?}");
        assert_eq!(run.stderr_lines().len(), 1, "{case}: {run:#?}");
        assert_eq!(written(&env), before, "{case}: nothing written");
    }
    let run = env.ordctl([
        "place-order",
        "--user",
        "3",
        "--amount",
        "25",
        "--idempotency-key",
        "cart-1",
    ]);
    assert_eq!(run.code, Some(2), "an amount instead of items: {run:#?}");

    // Sent at once by several clients: still one order.
    let racers: Vec<common::Running> = (0..6)
        .map(|_| {
            env.spawn([
                "place-order",
                "--user",
                "4",
                "--amount",
                "7",
                "--idempotency-key",
                "cart-2",
                "--json",
            ])
        })
        .collect();
    let ids: Vec<Value> = racers
        .into_iter()
        .map(|racer| racer.wait().assert_code(0).json()["order_id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM orders WHERE idempotency_key = 'cart-2'"),
        1
    );
}

#[test]
fn bulk_orders_count_refusals_and_exit_3_when_every_order_is_refused() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let product = env.add_product("Rare", "3", 5, &[]).to_string();
    let summary = env
        .ordctl(["place-order", "--count", "8", "--item", &product, "--json"])
        .assert_code(0)
        .json();
    assert_eq!(
        (&summary["placed"], &summary["refused"], &summary["failed"]),
        (&json!(5), &json!(3), &json!(0)),
        "{summary}"
    );
    let run = env.ordctl(["place-order", "--count", "3", "--item", &product, "--json"]);
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr_lines().len(), 1, "{run:#?}");
    assert_eq!(env.count("orders"), 5);
}
