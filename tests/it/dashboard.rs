//! The admin dashboard in a real headless Chromium, driven over W3C
//! WebDriver (chromedriver, plain HTTP JSON): log in with the admin token,
//! place an order through the API, and see it arrive live — the row, the
//! toast and the unread badge — and a low-stock alert; then move an
//! order's status with a button.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/services.sh
//! installs them); without them the test fails and says so.

use crate::common;
use crate::http_client;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{free_port, TestEnv};
use http_client::{Server, TOKEN};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port with one headless Chromium session; both
/// end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: run scripts/services.sh (or apt-get install chromium chromium-driver)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            agent,
            _profile: profile,
        };
        let profile_arg = format!("--user-data-dir={}", browser._profile.path().display());
        let created = browser.call(
            "POST",
            "/session",
            Some(json!({
                "capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--window-size=1280,800",
                            "--autoplay-policy=no-user-gesture-required",
                            profile_arg,
                        ]
                    }
                }}
            })),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = self.agent.request(method, &url);
        let result = match body {
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(&body.to_string()),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("WebDriver {method} {path}: {error}"),
        };
        let status = response.status();
        let reply: Value =
            serde_json::from_str(&response.into_string().expect("a body")).expect("JSON");
        assert!(status < 400, "WebDriver {method} {path}: {status} {reply}");
        reply["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element matching a CSS selector (WebDriver's element id).
    fn find(&self, selector: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": selector})),
        );
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}: {found}"))
            .to_string()
    }

    fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector);
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn click(&self, selector: &str) {
        let element = self.find(selector);
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Runs `script` (a function body) in the page and returns its result.
    fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Polls `script` until it returns true (at most 15 s).
    fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.eval(script) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the page shows:\n{}",
                self.eval("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        let png = self.session_call("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 PNG"))
            .expect("valid base64");
        std::fs::write(path, bytes).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .agent
                .delete(&format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn the_dashboard_logs_in_and_shows_a_new_order_live_with_toast_and_badge() {
    let env = TestEnv::new();
    env.migrate_and_seed();
    let server = Server::start(&env, &[]);
    let earlier = server
        .post("/orders", r#"{"user_id": 1, "amount": "5.00"}"#, &[])
        .assert_status(201)
        .json();
    let browser = Browser::start();

    browser.open(&server.url("/"));
    browser.wait_for(
        "the login form",
        "return !document.getElementById('login').classList.contains('hidden')",
    );
    browser.type_into("#token", "wrong-token-here");
    browser.click("#login-button");
    browser.wait_for(
        "the wrong token refused",
        "return document.getElementById('login-error').textContent.includes('wrong admin token')",
    );
    browser.eval("document.getElementById('token').value = ''; return true");
    browser.type_into("#token", TOKEN);
    browser.click("#login-button");
    browser.wait_for(
        "the live feed",
        "return document.getElementById('live').textContent === 'live'",
    );
    let earlier_row = format!(
        "return !!document.querySelector('tr[data-order=\"{}\"]')",
        earlier["order_id"]
    );
    browser.wait_for("the existing order listed", &earlier_row);

    let placed = Instant::now();
    let order = server
        .post("/orders", r#"{"user_id": 3, "amount": "42.50"}"#, &[])
        .assert_status(201)
        .json();
    let id = order["order_id"].as_i64().unwrap();
    browser.wait_for(
        "the new order's row",
        &format!("return !!document.querySelector('tr[data-order=\"{id}\"]')"),
    );
    assert!(placed.elapsed() < Duration::from_secs(5));
    browser.wait_for(
        "its toast",
        &format!(
            "return [...document.querySelectorAll('.toast')].some(t => t.textContent.includes('New order #{id}: 42.50 USD'))"
        ),
    );
    assert_eq!(
        browser.eval("return document.getElementById('badge').textContent"),
        "1"
    );
    assert_eq!(browser.eval("return document.title"), "(1) ordctl");
    // Newest first: the new order is the first row.
    assert_eq!(
        browser.eval("return document.querySelector('#orders tr').dataset.order"),
        id.to_string()
    );

    // An order that takes a product below its threshold raises an alert.
    let product = server
        .post(
            "/products",
            r#"{"name": "Blue mug", "price": "9.90", "stock": 4}"#,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        )
        .assert_status(201)
        .json();
    let body = format!(
        r#"{{"user_id": 2, "items": [{{"product_id": {}, "quantity": 3}}]}}"#,
        product["id"]
    );
    server.post("/orders", &body, &[]).assert_status(201);
    browser.wait_for(
        "the low-stock alert",
        "return document.getElementById('alerts').textContent.includes('Low stock: Blue mug has 1 left (threshold 2)')",
    );
    assert_eq!(
        browser.eval("return document.getElementById('badge').textContent"),
        "2"
    );
    browser.screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png"));

    // A status button moves the order, through PATCH /orders/{id}/status.
    browser.click(&format!(
        "tr[data-order=\"{id}\"] button[data-status=\"cancelled\"]"
    ));
    browser.wait_for(
        "the order cancelled",
        &format!(
            "return document.querySelector('tr[data-order=\"{id}\"] .status').textContent === 'cancelled'"
        ),
    );
    let shown = server.get(&format!("/orders/{id}"), &[]).json();
    assert_eq!(shown["status"], "cancelled");

    // The badge is read when clicked.
    browser.click("#badge");
    assert_eq!(
        browser.eval("return document.getElementById('badge').textContent"),
        "0"
    );
}
