//! SMTP sending over connections this module opens itself, with
//! `TCP_NODELAY`, driven by lettre's async client on a small tokio runtime
//! behind a blocking `send`.
//!
//! Why not lettre's `SmtpTransport`: lettre 0.11.23 never sets
//! `TCP_NODELAY`, and it writes a message's body and the closing `.` in two
//! writes, so Nagle's algorithm holds the dot until the server's delayed ACK:
//! ~45 ms per email, ~22 emails/s per connection (BENCHMARKS.md). Its async
//! connection accepts a stream the caller opened, so the fix needs no patched
//! lettre — but that path has no pool, hence the one here: idle connections
//! are reused (checked with RSET after a quiet spell), a connection that
//! failed is dropped, and `QUIT` is sent to each idle one on drop.
//!
//! MailErrors are sorted by whose fault they are. A 4xx or a connection lost
//! mid-message is this message's transient failure; a 5xx is permanent. A
//! server that cannot take ANY email — refused connection, failed TLS,
//! rejected credentials — is an outage ([`MailError::Unavailable`]): it is
//! logged once when it starts and once when it ends, not once per message.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::Rset;
use lettre::transport::smtp::extension::ClientId;
use lettre::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::MailError;

use crate::config::{SmtpSettings, SmtpTls};

/// How long connecting, one SMTP command or one message may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection older than this is checked (RSET) before reuse:
/// servers close connections that stay quiet.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(5);
/// Mechanisms tried, in order, when the URL has credentials.
const MECHANISMS: &[Mechanism] = &[Mechanism::Plain, Mechanism::Login];

/// A pool of at most `max_connections` SMTP connections to one server;
/// `send` may be called from many threads at once, each send using a
/// connection of its own. A send that finds every connection busy waits
/// for one, in arrival order: providers refuse clients that open too many
/// connections at once, and on a nearby server a few reused connections
/// carry thousands of emails a second (BENCHMARKS.md).
///
/// Each send runs as a task on the pool's one I/O thread, which also drives
/// the sockets: an SMTP round trip (four per email) then wakes no other
/// thread, and the caller is woken once, when its send is done. (Driven
/// from the caller's thread with `block_on`, every reply was read by the
/// I/O thread and handed over, two context switches per round trip.)
pub struct SmtpPool {
    connections: Arc<Connections>,
    runtime: tokio::runtime::Runtime,
}

/// The pool's connections and what it knows about the server.
struct Connections {
    settings: SmtpSettings,
    hello: ClientId,
    /// One permit per connection the pool may have open: a send holds one
    /// from taking a connection until it is back among the idle ones, and
    /// a connection is only opened while none is idle, so the connections
    /// open never outnumber the permits.
    permits: tokio::sync::Semaphore,
    idle: Mutex<Vec<Idle>>,
    /// The outage being reported, so it is logged once, not per message.
    outage: Mutex<Option<String>>,
}

struct Idle {
    connection: AsyncSmtpConnection,
    since: Instant,
}

impl SmtpPool {
    /// A pool of up to `max_connections` connections, kept open between
    /// sends. It connects lazily: nothing is dialled until the first send.
    pub fn new(settings: &SmtpSettings, max_connections: usize) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("smtp-io")
            .enable_all()
            .build()
            .context("starting the SMTP client's I/O thread")?;
        Ok(Self {
            connections: Arc::new(Connections {
                settings: settings.clone(),
                hello: ClientId::default(),
                permits: tokio::sync::Semaphore::new(max_connections.max(1)),
                idle: Mutex::new(Vec::new()),
                outage: Mutex::new(None),
            }),
            runtime,
        })
    }

    /// Sends one email; returns the server's reply, e.g. `250 2.0.0 Ok`.
    pub fn send(&self, email: &Message) -> Result<String, MailError> {
        let connections = Arc::clone(&self.connections);
        let envelope = email.envelope().clone();
        let formatted = email.formatted();
        let task = self
            .runtime
            .spawn(async move { connections.send(&envelope, &formatted).await });
        let result = self.runtime.block_on(task).unwrap_or_else(|error| {
            Err(MailError::Transient(format!(
                "the SMTP send failed: {error}"
            )))
        });
        self.connections.note_outage(&result);
        result
    }

    /// Connects, upgrades to TLS and authenticates as a send would, then
    /// says goodbye: checks the settings without sending anything.
    pub fn check(&self) -> Result<(), MailError> {
        self.runtime.block_on(async {
            let mut connection = self.connections.connect().await?;
            let _ = timeout(connection.quit()).await;
            Ok(())
        })
    }
}

impl Connections {
    async fn send(&self, envelope: &Envelope, formatted: &[u8]) -> Result<String, MailError> {
        // Held until the connection is idle again or dropped; the pool
        // never closes its semaphore.
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the pool's semaphore is open");
        let mut connection = match self.take_idle().await {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let sent = timeout(connection.send(envelope, formatted)).await;
        match sent {
            Ok(response) => {
                self.put_idle(connection);
                Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ))
            }
            Err(error) => {
                // lettre has already sent QUIT on a broken connection; a
                // timed-out one is dropped mid-exchange.
                drop(connection);
                Err(self.classify_send_error(&error))
            }
        }
    }

    /// An idle connection that still answers, or `None`.
    async fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let Idle {
                mut connection,
                since,
            } = self.idle.lock().unwrap().pop()?;
            if connection.has_broken() {
                continue;
            }
            if since.elapsed() < IDLE_CHECK_AFTER {
                return Some(connection);
            }
            // RSET both checks the connection and clears any transaction
            // state the server might still hold.
            if timeout(connection.command(Rset)).await.is_ok() {
                return Some(connection);
            }
        }
    }

    fn put_idle(&self, connection: AsyncSmtpConnection) {
        self.idle.lock().unwrap().push(Idle {
            connection,
            since: Instant::now(),
        });
    }

    /// A new connection: TCP with `TCP_NODELAY`, implicit TLS or STARTTLS
    /// as the URL says, then AUTH when it has credentials.
    async fn connect(&self) -> Result<AsyncSmtpConnection, MailError> {
        let settings = &self.settings;
        let server = self.server();
        let tcp = tokio::time::timeout(
            SMTP_TIMEOUT,
            TcpStream::connect((settings.host.as_str(), settings.port)),
        )
        .await
        .map_err(|_| {
            MailError::Unavailable(format!(
                "cannot connect to the SMTP server at {server}: no answer within {SMTP_TIMEOUT:?}"
            ))
        })?
        .map_err(|error| connect_error(&server, &error))?;
        tcp.set_nodelay(true)
            .map_err(|error| connect_error(&server, &error))?;

        let stream: Box<dyn AsyncTokioStream> = match settings.tls {
            SmtpTls::Implicit => Box::new(self.implicit_tls(tcp).await?),
            SmtpTls::None | SmtpTls::StartTls => Box::new(tcp),
        };
        let mut connection = timeout(AsyncSmtpConnection::connect_with_transport(
            stream,
            &self.hello,
        ))
        .await
        .map_err(|error| self.handshake_error("greeting the SMTP server", &error))?;

        if settings.tls == SmtpTls::StartTls {
            if !connection.can_starttls() {
                return Err(MailError::Unavailable(format!(
                    "the SMTP server at {server} does not offer STARTTLS, which the URL \
                     requires (?tls=starttls)"
                )));
            }
            let parameters = self.tls_parameters(false)?;
            if let Err(error) = timeout(connection.starttls(parameters, &self.hello)).await {
                return Err(self.tls_error(&error.to_string()).await);
            }
        }

        if let Some((user, password)) = &settings.credentials {
            let credentials = Credentials::new(user.clone(), password.clone());
            match timeout(connection.auth(MECHANISMS, &credentials)).await {
                Ok(response) if response.is_positive() => {}
                Ok(response) => {
                    return Err(auth_failed(&format!(
                        "{} {}",
                        response.code(),
                        response.message().collect::<Vec<_>>().join(" ")
                    )))
                }
                Err(error) if error.status().is_some() => {
                    return Err(auth_failed(&error.to_string()))
                }
                Err(error) => {
                    return Err(self.handshake_error("authenticating", &error));
                }
            }
        }
        Ok(connection)
    }

    async fn implicit_tls(
        &self,
        tcp: TcpStream,
    ) -> Result<TlsStream<tokio_native_tls::TlsStream<TcpStream>>, MailError> {
        let connector = native_tls::TlsConnector::new().map_err(|error| {
            MailError::Unavailable(format!("setting up TLS for {}: {error}", self.server()))
        })?;
        let connector = tokio_native_tls::TlsConnector::from(connector);
        match tokio::time::timeout(SMTP_TIMEOUT, connector.connect(&self.settings.host, tcp)).await
        {
            Ok(Ok(stream)) => Ok(TlsStream(stream)),
            Ok(Err(error)) => Err(self.tls_error(&error.to_string()).await),
            Err(_) => Err(MailError::Unavailable(format!(
                "TLS with the SMTP server at {}: no handshake within {SMTP_TIMEOUT:?}",
                self.server()
            ))),
        }
    }

    fn tls_parameters(&self, accept_any: bool) -> Result<TlsParameters, MailError> {
        TlsParameters::builder(self.settings.host.clone())
            .dangerous_accept_invalid_certs(accept_any)
            .dangerous_accept_invalid_hostnames(accept_any)
            .build()
            .map_err(|error| {
                MailError::Unavailable(format!("setting up TLS for {}: {error}", self.server()))
            })
    }

    /// A failed TLS handshake, with the certificate the server presented
    /// (fetched again without verifying it) and why it was refused.
    async fn tls_error(&self, reason: &str) -> MailError {
        let certificate = match self.peer_certificate().await {
            Some(der) => describe_certificate(&der),
            None => "its certificate could not be read".to_string(),
        };
        MailError::Unavailable(format!(
            "TLS with the SMTP server at {} failed: {certificate}: {reason}",
            self.server()
        ))
    }

    /// The server's certificate (DER), read over a connection that accepts
    /// any certificate; used only to explain a refusal, nothing is sent.
    async fn peer_certificate(&self) -> Option<Vec<u8>> {
        let settings = &self.settings;
        let fetch = async {
            let tcp = TcpStream::connect((settings.host.as_str(), settings.port))
                .await
                .ok()?;
            if settings.tls == SmtpTls::Implicit {
                let connector = native_tls::TlsConnector::builder()
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true)
                    .build()
                    .ok()?;
                let stream = tokio_native_tls::TlsConnector::from(connector)
                    .connect(&settings.host, tcp)
                    .await
                    .ok()?;
                return stream.get_ref().peer_certificate().ok()??.to_der().ok();
            }
            let mut connection =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                    .await
                    .ok()?;
            let parameters = self.tls_parameters(true).ok()?;
            connection.starttls(parameters, &self.hello).await.ok()?;
            let der = connection.peer_certificate().ok();
            let _ = connection.quit().await;
            der
        };
        tokio::time::timeout(SMTP_TIMEOUT, fetch).await.ok()?
    }

    fn handshake_error(&self, doing: &str, error: &StepError) -> MailError {
        MailError::Unavailable(format!("{doing} at {}: {error}", self.server()))
    }

    /// A failed send: 530/535 mean our credentials (an outage), 421/454
    /// the provider's throttling, other replies are about this message,
    /// and a lost connection is transient.
    fn classify_send_error(&self, error: &StepError) -> MailError {
        let text = error.to_string();
        match error.status().map(|code| code.to_string()) {
            Some(code) if code == "530" || code == "535" => auth_failed(&text),
            Some(code) if code == "421" || code == "454" => MailError::Throttled(text),
            _ if error.is_permanent() => MailError::Permanent(text),
            Some(_) => MailError::Transient(text),
            None => MailError::Transient(format!("sending to {}: {text}", self.server())),
        }
    }

    /// Logs an outage when it starts or changes, and when it ends.
    fn note_outage(&self, result: &Result<String, MailError>) {
        let mut outage = self.outage.lock().unwrap();
        match result {
            Err(MailError::Unavailable(text)) => {
                if outage.as_deref() != Some(text.as_str()) {
                    tracing::error!("SMTP unavailable: {text}");
                    *outage = Some(text.clone());
                }
            }
            Ok(_) => {
                if let Some(previous) = outage.take() {
                    tracing::info!("SMTP available again (was: {previous})");
                }
            }
            Err(_) => {}
        }
    }

    fn server(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }
}

impl Drop for SmtpPool {
    /// Says QUIT on every idle connection, as a polite client does.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.connections.idle.lock().unwrap());
        self.runtime.block_on(async {
            for Idle { mut connection, .. } in idle {
                let _ = tokio::time::timeout(Duration::from_secs(1), connection.quit()).await;
            }
        });
    }
}

impl fmt::Debug for SmtpPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SmtpPool({})", self.connections.settings)
    }
}

fn auth_failed(reply: &str) -> MailError {
    MailError::Unavailable(format!("SMTP authentication failed ({reply})"))
}

fn connect_error(server: &str, error: &io::Error) -> MailError {
    MailError::Unavailable(match error.kind() {
        io::ErrorKind::ConnectionRefused => {
            format!("the SMTP server at {server} refused the connection (is it running?)")
        }
        _ => format!("cannot connect to the SMTP server at {server}: {error}"),
    })
}

/// Why one SMTP step failed: the server or the network said so, or it did
/// not answer in time.
#[derive(Debug)]
enum StepError {
    Smtp(lettre::transport::smtp::Error),
    TimedOut,
}

impl StepError {
    /// The server's reply code, when it replied.
    fn status(&self) -> Option<lettre::transport::smtp::response::Code> {
        match self {
            Self::Smtp(error) => error.status(),
            Self::TimedOut => None,
        }
    }

    fn is_permanent(&self) -> bool {
        matches!(self, Self::Smtp(error) if error.is_permanent())
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // "535 5.7.8 Authentication credentials invalid", as servers
            // say it, rather than lettre's "permanent error (535): …".
            Self::Smtp(error) => match error.status() {
                Some(code) => {
                    let text = smtp_error(error);
                    let reply = text
                        .split_once("): ")
                        .map_or(text.as_str(), |(_, reply)| reply);
                    write!(f, "{code} {reply}")
                }
                None => f.write_str(&smtp_error(error)),
            },
            Self::TimedOut => write!(f, "no answer within {SMTP_TIMEOUT:?}"),
        }
    }
}

/// One SMTP step under [`SMTP_TIMEOUT`].
async fn timeout<T>(
    step: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(SMTP_TIMEOUT, step).await {
        Ok(result) => result.map_err(StepError::Smtp),
        Err(_) => Err(StepError::TimedOut),
    }
}

/// The error and its causes on one line.
pub(super) fn smtp_error(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}

/// "certificate CN=mail.example.com issued by CN=Some CA, valid
/// 2026-01-01 to 2026-04-01" from a DER certificate.
fn describe_certificate(der: &[u8]) -> String {
    let Ok(certificate) = openssl::x509::X509::from_der(der) else {
        return "an unreadable certificate".to_string();
    };
    let name = |name: &openssl::x509::X509NameRef| {
        name.entries()
            .filter_map(|entry| {
                let key = entry.object().nid().short_name().ok()?;
                let value = entry.data().to_string().ok()?;
                Some(format!("{key}={value}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names: Vec<String> = certificate
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| {
                    name.dnsname().map(str::to_string).or_else(|| {
                        name.ipaddress().and_then(|ip| match ip.len() {
                            4 => Some(
                                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(ip).ok()?).to_string(),
                            ),
                            16 => Some(
                                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?)
                                    .to_string(),
                            ),
                            _ => None,
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "certificate {} (for {}) issued by {}, valid {} to {}",
        name(certificate.subject_name()),
        if names.is_empty() {
            "no alternative names".to_string()
        } else {
            names.join(", ")
        },
        name(certificate.issuer_name()),
        certificate.not_before(),
        certificate.not_after()
    )
}

/// An implicit-TLS stream in the shape lettre's async client accepts.
#[derive(Debug)]
struct TlsStream<S>(S);

impl AsyncTokioStream for TlsStream<tokio_native_tls::TlsStream<TcpStream>> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().get_ref().get_ref().peer_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
