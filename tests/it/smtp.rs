//! The SMTP client against real servers that need more than plain SMTP:
//! STARTTLS, implicit TLS and AUTH (aiosmtpd with a throw-away certificate
//! and a password), and what the worker says when the server refuses the
//! password, the certificate or the connection.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Email, Running, TestEnv};

/// aiosmtpd with TLS and AUTH as the arguments say, storing into a Maildir.
const SERVER: &str = r#"
import argparse, ssl, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--maildir", required=True)
p.add_argument("--mode", choices=["plain", "starttls", "implicit"], default="plain")
p.add_argument("--cert")
p.add_argument("--key")
p.add_argument("--user")
p.add_argument("--password")
a = p.parse_args()

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login == a.user.encode()
          and auth_data.password == a.password.encode())
    return AuthResult(success=ok, handled=False)

kwargs = {}
if a.user:
    kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=False)
context = None
if a.cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(a.cert, a.key)
if a.mode == "starttls":
    kwargs.update(tls_context=context, require_starttls=True)
controller = Controller(
    Mailbox(a.maildir), hostname="127.0.0.1", port=a.port,
    ssl_context=context if a.mode == "implicit" else None,
    server_kwargs=kwargs)
controller.start()
print("ready", flush=True)
threading.Event().wait()
"#;

const USER: &str = "shop";
const PASSWORD: &str = "s3cret";

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
}

impl Certificate {
    fn make(dir: &Path) -> Self {
        let cert = dir.join("smtp-cert.pem");
        let key = dir.join("smtp-key.pem");
        let status = Command::new("openssl")
            .args(["req", "-x509", "-nodes", "-days", "1"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-subj", "/CN=ordctl test SMTP"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl req failed");
        Self { cert, key }
    }
}

/// One aiosmtpd server, stopped on drop.
struct Server {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Server {
    fn start(dir: &Path, mode: &str, certificate: Option<&Certificate>, auth: bool) -> Self {
        let port = free_port();
        let maildir = dir.join(format!("maildir-{port}"));
        let mut command = Command::new("/usr/bin/python3");
        command
            .args(["-c", SERVER, "--port", &port.to_string(), "--mode", mode])
            .arg("--maildir")
            .arg(&maildir);
        if let Some(certificate) = certificate {
            command
                .arg("--cert")
                .arg(&certificate.cert)
                .arg("--key")
                .arg(&certificate.key);
        }
        if auth {
            command.args(["--user", USER, "--password", PASSWORD]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting aiosmtpd with /usr/bin/python3");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "aiosmtpd did not start");
        Self {
            child,
            port,
            maildir,
        }
    }

    fn emails(&self) -> Vec<Email> {
        let dir = self.maildir.join("new");
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .map(|entry| Email::parse(&std::fs::read_to_string(entry.unwrap().path()).unwrap()))
            .collect()
    }

    fn wait_for_emails(&self, n: usize) -> Vec<Email> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let emails = self.emails();
            if emails.len() >= n || Instant::now() > deadline {
                return emails;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Places three orders, runs a worker against `smtp_url` with `vars` until
/// `server` holds three emails, and returns them.
fn deliver_three(env: &TestEnv, server: &Server, smtp_url: &str, vars: &[(&str, &str)]) {
    env.migrate_and_seed();
    for user in 1..=3 {
        env.place_order(user, "12.50", &[]);
    }
    let mut all = vec![("SMTP_URL", smtp_url)];
    all.extend_from_slice(vars);
    let worker = Running::spawn(env.command_with_env(["worker"], &all));
    let emails = server.wait_for_emails(3);
    worker.terminate();
    let run = worker.wait().assert_code(0);
    assert_eq!(emails.len(), 3, "{}", run.stderr);
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM notifications WHERE status = 'sent' AND consumer = 'notifications'"),
        3
    );
}

#[test]
fn emails_go_out_over_starttls_with_a_password() {
    let env = TestEnv::new();
    let certificate = Certificate::make(env.dir());
    let server = Server::start(env.dir(), "starttls", Some(&certificate), true);
    let url = format!(
        "smtp://{USER}:{PASSWORD}@127.0.0.1:{}?tls=starttls",
        server.port
    );
    let ca = certificate.cert.to_string_lossy().to_string();
    deliver_three(&env, &server, &url, &[("SSL_CERT_FILE", &ca)]);
}

#[test]
fn emails_go_out_over_implicit_tls() {
    let env = TestEnv::new();
    let certificate = Certificate::make(env.dir());
    let server = Server::start(env.dir(), "implicit", Some(&certificate), false);
    let url = format!("smtps://127.0.0.1:{}", server.port);
    let ca = certificate.cert.to_string_lossy().to_string();
    deliver_three(&env, &server, &url, &[("SSL_CERT_FILE", &ca)]);
}

/// Runs a worker against `smtp_url` with two orders waiting, for a few
/// seconds of outage, and returns what it logged. Checks what every outage
/// must do: hold the messages (no attempt used, nothing dead-lettered, both
/// back in the queue after the worker stops) and say what is wrong once.
fn worker_log_against(env: &TestEnv, smtp_url: &str, diagnosis: &str) -> String {
    env.migrate_and_seed();
    env.place_order(1, "12.50", &[]);
    env.place_order(2, "12.50", &[]);
    // Past the preflight, which would refuse to start: this is about what
    // the worker does when sending fails.
    let worker = Running::spawn(env.command_with_env(
        ["worker", "--no-preflight", "--concurrency", "2"],
        &[("SMTP_URL", smtp_url)],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.queue_depth(&env.work_queue()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Several tries of each held message.
    std::thread::sleep(Duration::from_secs(2));
    worker.terminate();
    let run = worker.wait().assert_code(0);
    assert_eq!(
        env.scalar("SELECT count(*) AS n FROM delivery_attempts WHERE consumer = 'notifications'"),
        0,
        "an outage uses no attempt: {}",
        run.stderr
    );
    assert_eq!(
        env.queue_depth(&env.work_queue()),
        2,
        "both held, then requeued"
    );
    assert_eq!(env.queue_depth(&env.dlq()), 0);
    assert_eq!(
        run.stderr.matches(diagnosis).count(),
        1,
        "{diagnosis:?} once per outage, not per message or try:\n{}",
        run.stderr
    );
    run.stderr
}

#[test]
fn a_wrong_smtp_password_is_reported_as_an_authentication_failure() {
    let env = TestEnv::new();
    let server = Server::start(env.dir(), "plain", None, true);
    let url = format!("smtp://{USER}:wrong@127.0.0.1:{}", server.port);
    let log = worker_log_against(&env, &url, "SMTP authentication failed (535 5.7.8");
    assert!(
        !log.contains("wrong"),
        "the password is never logged: {log}"
    );
    assert!(server.emails().is_empty());
}

#[test]
fn a_server_requiring_a_password_that_gets_none_is_an_authentication_failure() {
    let env = TestEnv::new();
    let server = Server::start(env.dir(), "plain", None, true);
    let url = format!("smtp://127.0.0.1:{}", server.port);
    worker_log_against(&env, &url, "SMTP authentication failed (530 5.7.0");
}

#[test]
fn an_untrusted_certificate_is_named_with_the_reason() {
    let env = TestEnv::new();
    let certificate = Certificate::make(env.dir());
    let server = Server::start(env.dir(), "implicit", Some(&certificate), false);
    let url = format!("smtps://127.0.0.1:{}", server.port);
    // No SSL_CERT_FILE: the system's roots do not know this certificate.
    let log = worker_log_against(
        &env,
        &url,
        "certificate CN=ordctl test SMTP (for 127.0.0.1)",
    );
    assert!(
        log.contains("self-signed") || log.contains("self signed"),
        "{log}"
    );
}

#[test]
fn a_refused_connection_names_the_host_and_port() {
    let env = TestEnv::new();
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    worker_log_against(
        &env,
        &url,
        &format!("127.0.0.1:{port} refused the connection"),
    );
}
