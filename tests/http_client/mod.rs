//! A running `ordctl serve` for integration tests, and a small HTTP and
//! Server-Sent Events client for it (ureq over a real socket).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::common::TestEnv;

/// The admin token the servers of these tests use.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// `ordctl serve --listen 127.0.0.1:0`, killed when dropped.
pub struct Server {
    child: Option<Child>,
    base: String,
    /// The admin token: [`TOKEN`], or the generated one it printed.
    pub token: String,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Server {
    /// Starts the server with [`TOKEN`] and some environment variables
    /// replaced, and waits until it listens.
    pub fn start(env: &TestEnv, vars: &[(&str, &str)]) -> Self {
        let mut vars = vars.to_vec();
        vars.push(("ORDCTL_ADMIN_TOKEN", TOKEN));
        let mut server = Self::spawn(env, &vars, false);
        server.token = TOKEN.to_string();
        server
    }

    /// Starts the server without a token, so it generates one.
    pub fn start_without_token(env: &TestEnv) -> Self {
        Self::spawn(env, &[], true)
    }

    fn spawn(env: &TestEnv, vars: &[(&str, &str)], generated: bool) -> Self {
        let mut command = env.command_with_env(["serve", "--listen", "127.0.0.1:0"], vars);
        if generated {
            command.env_remove("ORDCTL_ADMIN_TOKEN");
        }
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ordctl serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, address) = mpsc::channel();
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let address = line[at + "listening on http://".len()..].trim();
                    let _ = found.send(("address", address.to_string()));
                }
                if let Some(at) = line.find("admin token (generated") {
                    let token = line[at..].rsplit(' ').next().unwrap_or("").to_string();
                    let _ = found.send(("token", token));
                }
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut base = None;
        let mut token = String::new();
        while base.is_none() {
            match address.recv_timeout(Duration::from_secs(60)) {
                Ok(("address", address)) => base = Some(format!("http://{address}")),
                Ok((_, generated)) => token = generated,
                Err(_) => {
                    let _ = child.kill();
                    panic!("ordctl serve did not start:\n{}", log.lock().unwrap());
                }
            }
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .redirects(0)
            // A fresh connection per request: one the server closed after a
            // 413 is never reused.
            .max_idle_connections(0)
            .build();
        Self {
            child: Some(child),
            base: base.unwrap(),
            token,
            log,
            agent,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", path, None, headers)
    }

    pub fn post(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("POST", path, Some(body), headers)
    }

    /// Any request; 4xx and 5xx are replies too, not errors.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.agent.request(method, &self.url(path));
        if body.is_some() {
            request = request.set("Content-Type", "application/json");
        }
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Some(body) => request.send_string(body),
            None => request.call(),
        };
        let response = match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{method} {path}: {error}"),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .map(|name| {
                let value = response.header(&name).unwrap_or("").to_string();
                (name, value)
            })
            .collect();
        let body = response.into_string().expect("a text body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Opens `GET /events` and returns the live stream (200 asserted).
    pub fn events(&self, headers: &[(&str, &str)]) -> EventStream {
        let agent = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(20))
            .build();
        let mut request = agent.get(&self.url("/events"));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = request
            .call()
            .unwrap_or_else(|e| panic!("GET /events: {e}"));
        assert_eq!(response.status(), 200);
        EventStream {
            content_type: response.header("content-type").unwrap_or("").to_string(),
            reader: Some(BufReader::new(response.into_reader())),
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the exit (at most 30 s); returns the exit code and the log.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ordctl serve did not stop:\n{}", self.log.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        (code, log)
    }

    /// SIGTERM, then the log once it exited 0.
    pub fn stop(self) -> String {
        self.terminate();
        let (code, log) = self.wait();
        assert_eq!(code, Some(0), "{log}");
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A response: status, headers (names lower-cased) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn assert_status(self, status: u16) -> Self {
        assert_eq!(self.status, status, "{self:?}");
        self
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// `{"error": "one line"}` with a JSON content type.
    #[track_caller]
    pub fn assert_json_error(&self, what: &str) {
        assert!(
            self.header("content-type")
                .is_some_and(|value| value.starts_with("application/json")),
            "{what}: {self:?}"
        );
        let body = self.json();
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error message: {self:?}"));
        assert!(
            !error.is_empty() && !error.contains('\n'),
            "{what}: {error:?}"
        );
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

/// A live `GET /events` response, read event by event.
pub struct EventStream {
    pub content_type: String,
    reader: Option<BufReader<Box<dyn Read + Send + Sync + 'static>>>,
}

impl EventStream {
    /// The next event (keep-alive comments skipped); panics after about 20 s
    /// without one, or if the stream ends.
    #[track_caller]
    pub fn next_event(&mut self) -> SseEvent {
        let reader = self.reader.as_mut().expect("open");
        let (mut id, mut event, mut data) = (None, String::new(), String::new());
        // Keep-alive comments come every 15 s, so this is checked at least that often.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "no event for 20 s");
            let mut line = String::new();
            let read = reader
                .read_line(&mut line)
                .unwrap_or_else(|e| panic!("reading the event stream: {e}"));
            assert!(read > 0, "the event stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if let Some(id) = id {
                    return SseEvent {
                        id,
                        event,
                        data: serde_json::from_str(&data)
                            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}")),
                    };
                }
                continue;
            }
            if let Some(value) = line.strip_prefix("id:") {
                id = Some(value.trim().parse().expect("a numeric id"));
            } else if let Some(value) = line.strip_prefix("event:") {
                event = value.trim().to_string();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
    }

    /// Disconnects.
    pub fn close(&mut self) {
        self.reader = None;
    }
}
