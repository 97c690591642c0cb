//! `ordctl serve` against the real services and a real listening socket:
//! every route's happy path and every 4xx (with nothing written), the admin
//! token, readiness with the broker down, the live event stream and its
//! gap-free resume, and the graceful shutdown.

use crate::common;
use crate::http_client;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{keys, TestEnv, DOWN_AMQP_URL};
use http_client::{Server, TOKEN};
use serde_json::Value;

#[test]
fn posting_an_order_commits_it_publishes_it_and_answers_201() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);

    let created = server.post("/orders", r#"{"user_id": 3, "amount": "42.00"}"#, &[]);
    assert_eq!(created.status, 201, "{created:?}");
    let order = created.json();
    assert_eq!(
        keys(&order),
        [
            "amount",
            "currency",
            "event_id",
            "order_id",
            "published",
            "status",
            "user_id"
        ]
    );
    assert_eq!(order["amount"], "42.00");
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["user_id"], 3);
    assert_eq!(order["status"], "pending");
    assert_eq!(order["published"], true);

    // A JSON number is read as written, never through a float.
    let created = server.post(
        "/orders",
        r#"{"user_id": 4, "amount": 19.99, "currency": "eur"}"#,
        &[],
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["amount"], "19.99");
    assert_eq!(created.json()["currency"], "EUR");

    assert_eq!(env.count("orders"), 2);
    assert_eq!(env.count("outbox WHERE published_at IS NOT NULL"), 2);
    let messages = env.take_messages(&env.work_queue());
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0].message_id.as_deref(),
        order["event_id"].as_str()
    );
}

#[test]
fn orders_posted_at_once_are_each_confirmed_and_marked_published() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);

    // Requests that arrive together share a publish round: each must
    // still learn that its own event was confirmed.
    let event_ids: Vec<String> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..24)
            .map(|n| {
                let server = &server;
                scope.spawn(move || {
                    let body = format!(r#"{{"user_id": {}, "amount": "1{n}.00"}}"#, 1 + n % 10);
                    let created = server.post("/orders", &body, &[]);
                    assert_eq!(created.status, 201, "{created:?}");
                    let order = created.json();
                    assert_eq!(order["published"], true, "{order}");
                    order["event_id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        posts.into_iter().map(|post| post.join().unwrap()).collect()
    });

    assert_eq!(env.count("outbox WHERE published_at IS NOT NULL"), 24);
    let mut queued: Vec<String> = env
        .take_messages(&env.work_queue())
        .into_iter()
        .filter_map(|message| message.message_id)
        .collect();
    let mut posted = event_ids;
    queued.sort_unstable();
    posted.sort_unstable();
    assert_eq!(queued, posted);
}

#[test]
fn every_bad_request_is_a_one_line_json_4xx_and_writes_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let cases: &[(&str, &str, &str, u16)] = &[
        ("bad JSON", "/orders", r#"{"user_id": 3,"#, 400),
        ("not JSON at all", "/orders", "user_id=3&amount=4", 400),
        ("missing user", "/orders", r#"{"amount": "42"}"#, 422),
        ("missing amount", "/orders", r#"{"user_id": 3}"#, 422),
        (
            "3 decimals",
            "/orders",
            r#"{"user_id": 3, "amount": "42.001"}"#,
            422,
        ),
        (
            "3 decimals as a number",
            "/orders",
            r#"{"user_id": 3, "amount": 42.001}"#,
            422,
        ),
        ("zero", "/orders", r#"{"user_id": 3, "amount": 0}"#, 422),
        (
            "negative",
            "/orders",
            r#"{"user_id": 3, "amount": "-5"}"#,
            422,
        ),
        (
            "bad currency",
            "/orders",
            r#"{"user_id": 3, "amount": 5, "currency": "dollars"}"#,
            422,
        ),
        (
            "unknown field",
            "/orders",
            r#"{"user_id": 3, "amount": 5, "amonut": 6}"#,
            422,
        ),
        (
            "unknown user",
            "/orders",
            r#"{"user_id": 999, "amount": "42"}"#,
            404,
        ),
        ("unknown route", "/nowhere", "{}", 404),
    ];
    for (what, path, body, status) in cases {
        let reply = server.post(path, body, &[]);
        assert_eq!(reply.status, *status, "{what}: {reply:?}");
        reply.assert_json_error(what);
    }
    // Over 64 KiB: refused from its Content-Length, before any of it is read.
    let mut socket = TcpStream::connect(server.address()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        socket,
        "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        100 * 1024
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = socket.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#"{"error":"request body too large"#),
        "{response}"
    );
    let reply = server.request("DELETE", "/orders", None, &[]);
    assert_eq!(reply.status, 405, "{reply:?}");
    reply.assert_json_error("wrong method");
    for (what, path, status) in [
        ("unknown order", "/orders/999", 404),
        ("order id not a number", "/orders/abc", 422),
        ("bad status filter", "/orders?status=lost", 422),
        ("bad limit", "/orders?limit=0", 422),
        ("unknown parameter", "/orders?colour=red", 422),
    ] {
        let reply = server.get(path, &[]);
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        reply.assert_json_error(what);
    }
    for table in ["orders", "outbox", "feed"] {
        assert_eq!(env.count(table), 0, "{table}");
    }
}

#[test]
fn orders_are_listed_newest_first_in_pages_and_shown_one_by_one() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let ids: Vec<i64> = [(1, "10"), (2, "20"), (1, "30")]
        .iter()
        .map(|(user, amount)| {
            let body = format!(r#"{{"user_id": {user}, "amount": "{amount}"}}"#);
            server.post("/orders", &body, &[]).assert_status(201).json()["order_id"]
                .as_i64()
                .unwrap()
        })
        .collect();

    let page = server.get("/orders?limit=2", &[]).assert_status(200).json();
    let listed: Vec<i64> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [ids[2], ids[1]]);
    assert_eq!(page["next_before_id"], ids[1]);
    let next = server
        .get(&format!("/orders?limit=2&before_id={}", ids[1]), &[])
        .assert_status(200)
        .json();
    assert_eq!(next["orders"][0]["id"], ids[0]);
    assert_eq!(next["next_before_id"], Value::Null);
    let mine = server
        .get("/orders?user_id=1&status=pending", &[])
        .assert_status(200)
        .json();
    assert_eq!(mine["orders"].as_array().unwrap().len(), 2);
    let first = &mine["orders"][1];
    assert_eq!(first["amount"], "10.00");
    assert_eq!(first["status"], "pending");

    let shown = server
        .get(&format!("/orders/{}", ids[0]), &[])
        .assert_status(200)
        .json();
    assert_eq!(shown["id"], ids[0]);
    assert_eq!(shown["user_id"], 1);
    assert_eq!(shown["amount"], "10.00");
    assert_eq!(shown["currency"], "USD");
    assert_eq!(shown["status"], "pending");
    let steps: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| step["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["committed", "published"]);
}

#[test]
fn admin_routes_need_the_token_or_a_dashboard_login() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);

    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
        let reply = server.get("/events", &headers);
        assert_eq!(reply.status, 401, "{reply:?}");
        reply.assert_json_error("no token");
        // Adding a product is the admin's too; reading products is not.
        let reply = server.post(
            "/products",
            r#"{"name": "Mug", "price": "12.50", "stock": 4}"#,
            &headers,
        );
        assert_eq!(reply.status, 401, "{reply:?}");
        reply.assert_json_error("no token");
    }
    assert_eq!(env.count("products"), 0);
    server.get("/products", &[]).assert_status(200);
    let page = server.get("/", &[]);
    assert_eq!(page.status, 401);
    assert!(page.body.contains(r#"<form id="login""#), "{}", page.body);

    let refused = server.post("/login", r#"{"token": "not-the-token"}"#, &[]);
    assert_eq!(refused.status, 401, "{refused:?}");
    refused.assert_json_error("wrong login");
    let login = server.post("/login", &format!(r#"{{"token": "{TOKEN}"}}"#), &[]);
    assert_eq!(login.status, 204, "{login:?}");
    let set_cookie = login.header("set-cookie").expect("a session cookie");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains(TOKEN),
        "the cookie is a session id, not the token"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let page = server.get("/", &[("Cookie", &cookie)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-authenticated=\"true\""));

    for headers in [[("Authorization", bearer.as_str())], [("Cookie", &cookie)]] {
        let mut stream = server.events(&headers);
        assert!(stream.content_type.starts_with("text/event-stream"));
        stream.close();
    }
    let logout = server.post("/logout", "", &[("Cookie", &cookie)]);
    assert_eq!(logout.status, 204);
    assert_eq!(server.get("/events", &[("Cookie", &cookie)]).status, 401);

    // The token never reaches the log.
    let run = server.stop();
    assert!(!run.contains(TOKEN), "{run}");
}

#[test]
fn a_generated_admin_token_is_printed_once_at_start_up() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start_without_token(&env);
    let token = server.token.clone();
    assert_eq!(token.len(), 64, "{token:?}");
    let authorization = format!("Bearer {token}");
    server.events(&[("Authorization", &authorization)]).close();
    server.get("/orders", &[]).assert_status(200);
    let log = server.stop();
    assert_eq!(log.matches(&token).count(), 1, "{log}");
}

#[test]
fn health_is_200_and_ready_names_rabbitmq_when_the_broker_is_down() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let up = Server::start(&env, &[]);
    up.get("/health", &[]).assert_status(200);
    let ready = up.get("/ready", &[]).assert_status(200).json();
    assert_eq!(ready["status"], "ready");
    drop(up);

    let down = Server::start(&env, &[("AMQP_URL", DOWN_AMQP_URL)]);
    down.get("/health", &[]).assert_status(200);
    let ready = down.get("/ready", &[]);
    assert_eq!(ready.status, 503, "{ready:?}");
    let body = ready.json();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("RabbitMQ"), "{error}");
    assert!(
        !error.contains("PostgreSQL is down") && !error.contains("Redis is down"),
        "{error}"
    );
    assert_eq!(body["checks"]["postgresql"], "ok");

    // The order still stands; the relay publishes it later.
    let created = down.post("/orders", r#"{"user_id": 3, "amount": "5"}"#, &[]);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json()["published"], false);
    assert_eq!(env.count("outbox WHERE published_at IS NULL"), 1);
}

#[test]
fn the_event_stream_shows_a_new_order_within_a_second_and_resumes_without_a_gap() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let authorization = format!("Bearer {TOKEN}");
    let headers = [("Authorization", authorization.as_str())];

    let mut stream = server.events(&headers);
    let order = server
        .post("/orders", r#"{"user_id": 2, "amount": "12.34"}"#, &[])
        .assert_status(201)
        .json();
    // From the moment the order exists (committed, answered) to its event.
    let posted = Instant::now();
    let event = stream.next_event();
    assert!(
        posted.elapsed() < Duration::from_secs(1),
        "{:?}",
        posted.elapsed()
    );
    assert_eq!(event.event, "order.created");
    assert_eq!(event.data["order"]["id"], order["order_id"]);
    assert_eq!(event.data["event_id"], order["event_id"]);
    let last_seen = event.id;
    stream.close();

    // While the client is away: orders over HTTP and from the CLI, and
    // their deliveries by a worker.
    let mut missed = Vec::new();
    for amount in ["1", "2"] {
        let body = format!(r#"{{"user_id": 3, "amount": "{amount}"}}"#);
        missed
            .push(server.post("/orders", &body, &[]).assert_status(201).json()["order_id"].clone());
    }
    missed.push(env.place_order(4, "3", &[])["order_id"].clone());
    env.run_worker(&[]);

    // The feed now holds what happened meanwhile: the orders, their
    // payments and deliveries. The resumed stream must give exactly that.
    let expected = feed_after(&env, last_seen);
    assert!(expected.len() >= 3, "{expected:?}");
    let last_event_id = last_seen.to_string();
    let mut resumed = server.events(&[
        ("Authorization", authorization.as_str()),
        ("Last-Event-ID", last_event_id.as_str()),
    ]);
    let events: Vec<_> = expected.iter().map(|_| resumed.next_event()).collect();
    let got: Vec<(i64, String)> = events
        .iter()
        .map(|event| (event.id, event.event.clone()))
        .collect();
    assert_eq!(got, expected);
    let created: Vec<&Value> = events
        .iter()
        .filter(|event| event.event == "order.created")
        .map(|event| &event.data["order"]["id"])
        .collect();
    assert_eq!(created, missed.iter().collect::<Vec<_>>());
    assert!(
        events.iter().any(|event| event.event == "delivery.sent"),
        "{events:#?}"
    );
    // And then it goes on live.
    let live = server
        .post("/orders", r#"{"user_id": 5, "amount": "9"}"#, &[])
        .assert_status(201)
        .json();
    let next = resumed.next_event();
    assert_eq!(next.event, "order.created");
    assert_eq!(next.data["order"]["id"], live["order_id"]);
    assert!(next.id > got.last().unwrap().0);
}

/// The feed rows after `cursor`, as (id, routing key), in id order.
fn feed_after(env: &TestEnv, cursor: i64) -> Vec<(i64, String)> {
    use diesel::prelude::*;
    use ordctl::db::schema::feed;
    feed::table
        .filter(feed::id.gt(cursor))
        .order(feed::id)
        .select((feed::id, feed::routing_key))
        .load(&mut env.db())
        .unwrap()
}

#[test]
fn many_clients_each_get_every_event_in_order() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let authorization = format!("Bearer {TOKEN}");
    let headers = [("Authorization", authorization.as_str())];
    let mut streams: Vec<_> = (0..5).map(|_| server.events(&headers)).collect();
    env.ordctl(["place-order", "--count", "40", "--concurrency", "4"])
        .assert_code(0);
    for stream in &mut streams {
        let ids: Vec<i64> = (0..40).map(|_| stream.next_event().id).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }
}

#[test]
fn a_stop_signal_lets_the_request_in_flight_finish_and_ends_live_streams() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let authorization = format!("Bearer {TOKEN}");
    let _stream = server.events(&[("Authorization", authorization.as_str())]);

    // A request whose body is only half sent when the signal arrives.
    let body = r#"{"user_id": 3, "amount": "7.50"}"#;
    let mut socket = TcpStream::connect(server.address()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        socket,
        "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.terminate();
    std::thread::sleep(Duration::from_millis(300));
    socket.write_all(&body.as_bytes()[10..]).unwrap();
    let mut response = String::new();
    let _ = socket.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");

    let (code, log) = server.wait();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(env.count("orders"), 1);
}

#[test]
fn an_event_committed_late_with_an_earlier_cursor_is_not_skipped() {
    use diesel::prelude::*;
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let authorization = format!("Bearer {TOKEN}");
    let mut stream = server.events(&[("Authorization", authorization.as_str())]);

    // A slow transaction draws feed id 1 and stays open...
    let mut slow = env.db();
    diesel::sql_query("BEGIN").execute(&mut slow).unwrap();
    diesel::sql_query(
        "WITH o AS (INSERT INTO orders (user_id, amount_minor, currency) VALUES (1, 100, 'USD') RETURNING id) \
         INSERT INTO outbox (event_id, order_id, routing_key, payload) \
         SELECT gen_random_uuid(), o.id, 'order.created', jsonb_build_object('type', 'order.created', 'order', jsonb_build_object('id', o.id)) FROM o",
    )
    .execute(&mut slow)
    .unwrap();
    // ...while a later order (feed id 2) commits at once.
    let later = server
        .post("/orders", r#"{"user_id": 2, "amount": "2"}"#, &[])
        .assert_status(201)
        .json();
    std::thread::sleep(Duration::from_millis(500));
    diesel::sql_query("COMMIT").execute(&mut slow).unwrap();

    let first = stream.next_event();
    let second = stream.next_event();
    assert_eq!((first.id, second.id), (1, 2), "{first:?} {second:?}");
    assert_eq!(second.data["order"]["id"], later["order_id"]);
}

#[test]
fn products_are_added_read_through_the_cache_restocked_and_ordered() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let bearer = format!("Bearer {TOKEN}");
    let admin = [("Authorization", bearer.as_str())];

    let product = server
        .post(
            "/products",
            r#"{"name": "Mug", "price": 12.5, "stock": 4}"#,
            &admin,
        )
        .assert_status(201)
        .json();
    assert_eq!(product["price"], "12.50");
    assert_eq!(product["low_stock_threshold"], 2);
    let id = product["id"].as_i64().unwrap();

    // Read through Redis: a miss fills the entry, an order drops it.
    let shown = server
        .get(&format!("/products/{id}"), &[])
        .assert_status(200)
        .json();
    assert_eq!(shown["stock"], 4);
    let key = env.redis_key(&format!("product:{id}"));
    let cached: Option<String> = redis::cmd("GET").arg(&key).query(&mut env.redis()).unwrap();
    assert!(cached.is_some(), "{key} is cached");

    let body = format!(r#"{{"user_id": 3, "items": [{{"product_id": {id}, "quantity": 3}}]}}"#);
    let order = server.post("/orders", &body, &[]).assert_status(201).json();
    assert_eq!(order["amount"], "37.50");
    let cached: Option<String> = redis::cmd("GET").arg(&key).query(&mut env.redis()).unwrap();
    assert!(cached.is_none(), "an order drops the cache entry");
    assert_eq!(
        server.get(&format!("/products/{id}"), &[]).json()["stock"],
        1
    );
    let low = server
        .get("/products?low_stock=true", &[])
        .assert_status(200)
        .json();
    assert_eq!(low.as_array().unwrap().len(), 1, "{low}");

    // Not enough stock: 409 and nothing written.
    let orders_before = env.count("orders");
    let refused = server.post("/orders", &body, &[]);
    assert_eq!(refused.status, 409, "{refused:?}");
    refused.assert_json_error("out of stock");
    let unknown = server.post(
        "/orders",
        r#"{"user_id": 3, "items": [{"product_id": 999, "quantity": 1}]}"#,
        &[],
    );
    assert_eq!(unknown.status, 404, "{unknown:?}");
    unknown.assert_json_error("unknown product");
    assert_eq!(env.count("orders"), orders_before);
    assert_eq!(server.get("/products/999", &[]).status, 404);

    // Restocking is an admin's: 401 without the token.
    let restock = format!("/products/{id}/restock");
    let denied = server.post(&restock, r#"{"quantity": 10}"#, &[]);
    assert_eq!(denied.status, 401);
    denied.assert_json_error("restock without token");
    let restocked = server
        .post(&restock, r#"{"quantity": 10}"#, &admin)
        .assert_status(200)
        .json();
    assert_eq!(restocked["stock"], 11);
    assert_eq!(
        server.get(&format!("/products/{id}"), &[]).json()["stock"],
        11
    );
    let bad = server.post(&restock, r#"{"quantity": -1}"#, &admin);
    assert_eq!(bad.status, 422);
    bad.assert_json_error("negative restock");
}

#[test]
fn an_admin_moves_an_order_along_its_legal_statuses_only() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let bearer = format!("Bearer {TOKEN}");
    let admin = [("Authorization", bearer.as_str())];
    let order = server
        .post("/orders", r#"{"user_id": 3, "amount": "8"}"#, &[])
        .assert_status(201)
        .json();
    let path = format!("/orders/{}/status", order["order_id"]);
    let patch =
        |body: &str, headers: &[(&str, &str)]| server.request("PATCH", &path, Some(body), headers);

    let denied = patch(r#"{"status": "cancelled"}"#, &[]);
    assert_eq!(denied.status, 401);
    denied.assert_json_error("no token");
    for (body, status) in [
        (r#"{"status": "shipped"}"#, 422),
        (r#"{"status": "lost"}"#, 422),
        (r#"{"state": "shipped"}"#, 422),
        (r#"{"status":"#, 400),
    ] {
        let reply = patch(body, &admin);
        assert_eq!(reply.status, status, "{body}: {reply:?}");
        reply.assert_json_error(body);
    }
    assert_eq!(env.count("outbox"), 1, "nothing written by a refused move");

    let moved = patch(r#"{"status": "cancelled"}"#, &admin)
        .assert_status(200)
        .json();
    assert_eq!(moved["status"], "cancelled");
    assert_eq!(moved["from"], "pending");
    assert_eq!(moved["routing_key"], "order.cancelled");
    assert_eq!(moved["published"], true);
    let again = patch(r#"{"status": "shipped"}"#, &admin);
    assert_eq!(again.status, 422, "nothing leaves cancelled");
    let unknown = server.request(
        "PATCH",
        "/orders/999/status",
        Some(r#"{"status": "shipped"}"#),
        &admin,
    );
    assert_eq!(unknown.status, 404);

    let shown = server
        .get(&format!("/orders/{}", order["order_id"]), &[])
        .assert_status(200)
        .json();
    assert_eq!(shown["status"], "cancelled");
}

#[test]
fn the_same_idempotency_key_returns_the_first_order_and_writes_nothing() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let key = [("Idempotency-Key", "checkout-7f3a")];
    let body = r#"{"user_id": 3, "amount": "15.00"}"#;
    let first = server.post("/orders", body, &key).assert_status(201).json();
    let again = server.post("/orders", body, &key).assert_status(200).json();
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(again["replayed"], true);
    assert_eq!(env.count("orders"), 1);
    assert_eq!(env.count("outbox"), 1);

    // Another body under the same key is a client bug, not a replay.
    let other = server.post("/orders", r#"{"user_id": 3, "amount": "16.00"}"#, &key);
    assert_eq!(other.status, 422, "{other:?}");
    other.assert_json_error("key reused");
    let bad_key = server.post("/orders", body, &[("Idempotency-Key", "has space")]);
    assert_eq!(bad_key.status, 422);
    assert_eq!(env.count("orders"), 1);
}
