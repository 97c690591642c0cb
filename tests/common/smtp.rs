//! The SMTP sink every env gets (aiosmtpd storing into a Maildir) and the
//! [`Email`]s read back from it.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// An email as the SMTP sink stored it.
#[derive(Clone, Debug)]
pub struct Email {
    /// The `Message-ID` header, angle brackets included.
    pub message_id: String,
    /// The address inside the `To` header's angle brackets.
    pub to: String,
    pub subject: String,
    pub body: String,
    /// The client's address and port, as aiosmtpd's `X-Peer` header
    /// records it: one value per SMTP connection.
    pub peer: String,
}

impl Email {
    /// Parses a plain-text 7bit message as the sink stored it.
    pub fn parse(raw: &str) -> Self {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            match (line.starts_with([' ', '\t']), headers.last_mut()) {
                (true, Some((_, value))) => {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                _ => {
                    let (name, value) = line
                        .split_once(':')
                        .unwrap_or_else(|| panic!("not a header line: {line:?}"));
                    headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
                }
            }
        }
        let headers: HashMap<String, String> = headers.into_iter().collect();
        let encoding = headers
            .get("content-transfer-encoding")
            .map_or("7bit", String::as_str);
        let quoted_printable = encoding.eq_ignore_ascii_case("quoted-printable");
        assert!(
            quoted_printable
                || encoding.eq_ignore_ascii_case("7bit")
                || encoding.eq_ignore_ascii_case("8bit"),
            "the harness reads only 7bit/8bit/quoted-printable bodies, got {encoding}:\n{raw}"
        );
        let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
        let to = header("to");
        let to = match (to.rfind('<'), to.rfind('>')) {
            (Some(start), Some(end)) if start < end => to[start + 1..end].to_string(),
            _ => to,
        };
        Self {
            message_id: header("message-id"),
            to,
            subject: header("subject"),
            peer: header("x-peer"),
            body: if quoted_printable {
                decode_quoted_printable(body)
            } else {
                body.to_string()
            },
        }
    }
}

/// Decodes a quoted-printable body (RFC 2045): soft line breaks and `=XX`.
fn decode_quoted_printable(body: &str) -> String {
    let joined = body.replace("=\n", "");
    let mut bytes = Vec::with_capacity(joined.len());
    let mut rest = joined.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        let hex = tail
            .get(..2)
            .and_then(|pair| std::str::from_utf8(pair).ok());
        match hex.and_then(|pair| u8::from_str_radix(pair, 16).ok()) {
            Some(decoded) if byte == b'=' => {
                bytes.push(decoded);
                rest = &tail[2..];
            }
            _ => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A real SMTP server for one env: aiosmtpd's Mailbox handler on a free
/// loopback port, storing what it accepts in a Maildir.
pub struct SmtpSink {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpSink {
    /// Starts the sink on a free port and waits until it accepts
    /// connections. Another process can grab the free port before aiosmtpd
    /// binds it, so a sink that dies at once is retried on a new port.
    pub(super) fn start(dir: &Path) -> Self {
        let maildir = dir.join("maildir");
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::try_start(&maildir, free_port()) {
                Ok(sink) => return sink,
                Err(log) => last_error = log,
            }
        }
        panic!("the SMTP sink did not start; its log says:\n{last_error}");
    }

    /// Starts a sink that answers the first `throttled` emails with `454
    /// 4.7.0`, as an email provider over its rate does, then stores the
    /// next ones like [`SmtpSink::start`]'s.
    // Only the scale tests use it; the harness is compiled by two binaries.
    #[allow(dead_code)]
    pub fn start_throttling(dir: &Path, throttled: u32) -> Self {
        std::fs::create_dir_all(dir).expect("creating the sink's directory");
        std::fs::write(
            dir.join("throttling.py"),
            format!(
                "from aiosmtpd.handlers import Mailbox\n\
                 class Throttling(Mailbox):\n\
                 \x20   throttled = {throttled}\n\
                 \x20   async def handle_DATA(self, server, session, envelope):\n\
                 \x20       if Throttling.throttled > 0:\n\
                 \x20           Throttling.throttled -= 1\n\
                 \x20           return '454 4.7.0 Too many messages, slow down'\n\
                 \x20       return await super().handle_DATA(server, session, envelope)\n"
            ),
        )
        .expect("writing the throttling handler");
        Self::try_start_with(
            &dir.join("maildir"),
            free_port(),
            "throttling.Throttling",
            Some(dir),
        )
        .unwrap_or_else(|log| panic!("the throttling SMTP sink did not start: {log}"))
    }

    /// Starts a sink on `port` storing into `maildir`, e.g. to bring a
    /// "recovered" SMTP server up where a failing one was.
    // Only the fault suite (a binary of its own) brings a server back.
    #[allow(dead_code)]
    pub fn start_at(maildir: &Path, port: u16) -> Self {
        Self::try_start(maildir, port).unwrap_or_else(|log| {
            panic!("the SMTP sink did not start on {port}; its log says:\n{log}")
        })
    }

    fn try_start(maildir: &Path, port: u16) -> Result<Self, String> {
        Self::try_start_with(maildir, port, "aiosmtpd.handlers.Mailbox", None)
    }

    /// aiosmtpd with `handler` (a class path; its module found in
    /// `python_path` if given) storing into `maildir`.
    fn try_start_with(
        maildir: &Path,
        port: u16,
        handler: &str,
        python_path: Option<&Path>,
    ) -> Result<Self, String> {
        if let Some(parent) = maildir.parent() {
            std::fs::create_dir_all(parent).expect("creating the Maildir's parent");
        }
        let log_path = maildir.with_extension(format!("smtp-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("creating the SMTP log");
        // Debian's python3: the one on PATH may not see python3-aiosmtpd.
        let mut command = Command::new("/usr/bin/python3");
        if let Some(path) = python_path {
            command.env("PYTHONPATH", path);
        }
        let child = command
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", handler])
            .arg(maildir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .expect("starting aiosmtpd with /usr/bin/python3");
        let mut sink = Self {
            child,
            port,
            maildir: maildir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sink);
            }
            if sink.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        sink.stop();
        Err(std::fs::read_to_string(&log_path).unwrap_or_default())
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server; what it stored stays readable.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every email stored, ordered by Message-ID.
    pub fn emails(&self) -> Vec<Email> {
        let mut emails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("reading the Maildir").path();
                let raw = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
                emails.push(Email::parse(&raw));
            }
        }
        emails.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        emails
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}
