//! A RabbitMQ connection that can always be let go of: we open its socket
//! ourselves and keep a handle on it, and we listen for the broker's
//! `connection.blocked` notifications.
//!
//! Why: a broker under a memory or disk alarm stops reading from a
//! connection as soon as it publishes. amiquip's `close` (and `Drop`) then
//! waits for a `Close-Ok` that never comes, so a publisher that merely
//! closes its connection hangs for as long as the alarm lasts. Shutting the
//! socket down ends amiquip's I/O thread at once, and the close returns.

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use amiquip::{Auth, Channel, Connection, ConnectionBlockedNotification, ConnectionOptions};
use anyhow::{bail, Context};
use crossbeam_channel::Receiver;
use url::Url;

use crate::secrets::redact;

/// How long opening a connection (TCP and the AMQP handshake) may take
/// unless the URL's `connection_timeout` says otherwise: an unreachable
/// broker fails fast instead of hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a graceful close may take before the socket is cut.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// The broker blocks this connection's publishes (a resource alarm). The
/// reason is RabbitMQ's, e.g. "low on memory".
#[derive(Debug, Clone, thiserror::Error)]
#[error("broker is blocking publishers ({})", alarm_name(.0))]
pub struct BrokerBlocked(pub String);

/// "memory alarm" for RabbitMQ's "low on memory", and so on.
fn alarm_name(reason: &str) -> String {
    match (reason.contains("memory"), reason.contains("disk")) {
        (true, true) => "memory and disk alarms".into(),
        (true, false) => "memory alarm".into(),
        (false, true) => "disk alarm".into(),
        (false, false) if reason.is_empty() => "resource alarm".into(),
        (false, false) => reason.to_string(),
    }
}

/// An open connection, its socket and its blocked/unblocked notifications.
pub struct Link {
    connection: Option<Connection>,
    socket: TcpStream,
    notifications: Receiver<ConnectionBlockedNotification>,
    /// The broker's reason, while it blocks this connection.
    blocked: Option<String>,
    /// Channels that cannot be closed before the socket is cut.
    stuck: Vec<Channel>,
}

impl Link {
    /// Opens a connection to `url` (amqp:// or amqps://, with amiquip's
    /// query options `heartbeat`, `channel_max`, `connection_timeout`).
    pub fn open(url: &Url) -> anyhow::Result<Self> {
        let shown = redact(url);
        Self::open_inner(url).with_context(|| format!("connecting to RabbitMQ at {shown}"))
    }

    fn open_inner(url: &Url) -> anyhow::Result<Self> {
        let (options, timeout) = connection_options(url)?;
        let tls = match url.scheme() {
            "amqp" => false,
            "amqps" => true,
            other => bail!("unsupported scheme {other}://"),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .unwrap_or("localhost");
        let port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        let addresses: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let mut last_error = None;
        let mut socket = None;
        for address in &addresses {
            match TcpStream::connect_timeout(address, timeout) {
                Ok(stream) => {
                    socket = Some(stream);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let socket = match (socket, last_error) {
            (Some(socket), _) => socket,
            (None, Some(error)) => return Err(error).context("opening a TCP connection"),
            (None, None) => bail!("{host} resolves to no address"),
        };
        // Publishes and confirms are small frames: never hold them back.
        socket.set_nodelay(true)?;
        let handle = socket.try_clone()?;
        let stream = mio::net::TcpStream::from_stream(socket)?;
        let tuning = amiquip::ConnectionTuning::default();
        let mut connection = if tls {
            let connector = native_tls::TlsConnector::new().context("setting up TLS")?;
            Connection::open_tls_stream(connector, host, stream, options, tuning)?
        } else {
            Connection::insecure_open_stream(stream, options, tuning)?
        };
        let notifications = connection.listen_for_connection_blocked()?;
        Ok(Self {
            connection: Some(connection),
            socket: handle,
            notifications,
            blocked: None,
            stuck: Vec::new(),
        })
    }

    pub fn open_channel(&mut self) -> anyhow::Result<Channel> {
        Ok(self.connection_mut().open_channel(None)?)
    }

    fn connection_mut(&mut self) -> &mut Connection {
        self.connection.as_mut().expect("an open connection")
    }

    /// Hands the connection over to code that closes it itself (the
    /// consumer's and tap's sessions). It is no longer watched for blocks.
    pub fn into_connection(mut self) -> Connection {
        self.connection.take().expect("an open connection")
    }

    /// Reads the notifications that arrived; `Err(BrokerBlocked)` while the
    /// broker blocks this connection.
    pub fn check(&mut self) -> Result<(), BrokerBlocked> {
        while let Ok(notification) = self.notifications.try_recv() {
            self.note(notification);
        }
        match &self.blocked {
            Some(reason) => Err(BrokerBlocked(reason.clone())),
            None => Ok(()),
        }
    }

    fn note(&mut self, notification: ConnectionBlockedNotification) {
        match notification {
            ConnectionBlockedNotification::Blocked(reason) => self.blocked = Some(reason),
            ConnectionBlockedNotification::Unblocked => self.blocked = None,
        }
    }

    /// The blocked/unblocked notifications, for a wait that selects over
    /// them and something else (the publisher's confirms).
    pub fn notifications(&self) -> &Receiver<ConnectionBlockedNotification> {
        &self.notifications
    }

    /// Records a notification taken from [`Link::notifications`].
    pub fn record(&mut self, notification: ConnectionBlockedNotification) {
        self.note(notification);
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Waits until the broker unblocks this connection (`true`), or until
    /// `give_up` says stop (`false`), checking it every 100 ms.
    pub fn wait_unblocked(&mut self, give_up: impl Fn() -> bool) -> bool {
        while self.is_blocked() {
            if give_up() {
                return false;
            }
            if let Ok(notification) = self.notifications.recv_timeout(Duration::from_millis(100)) {
                self.note(notification);
            }
        }
        true
    }

    /// Keeps a channel of a blocked connection until [`Link::close`]:
    /// closing it alone would wait for the alarm; `close` cuts them both.
    pub fn keep_stuck(&mut self, channel: Channel) {
        self.stuck.push(channel);
    }

    /// Closes `channel` and the connection: gracefully if the broker
    /// answers within a few seconds, by cutting the socket if it does not
    /// (or at once, when it is known to block us). Never hangs.
    pub fn close(mut self, channel: Option<Channel>) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if self.is_blocked() {
            let _ = self.socket.shutdown(Shutdown::Both);
        }
        let (done, finished) = crossbeam_channel::bounded::<()>(1);
        let channels: Vec<Channel> = channel.into_iter().chain(self.stuck.drain(..)).collect();
        let closer = std::thread::spawn(move || {
            for channel in channels {
                let _ = channel.close();
            }
            let _ = connection.close();
            let _ = done.send(());
        });
        if finished.recv_timeout(CLOSE_TIMEOUT).is_err() {
            tracing::debug!("RabbitMQ did not answer the close: cutting the connection");
            let _ = self.socket.shutdown(Shutdown::Both);
        }
        let _ = closer.join();
    }
}

impl Drop for Link {
    /// A link dropped without [`Link::close`] (an early return) still never
    /// hangs: the socket goes first, then amiquip's close finds it gone.
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = self.socket.shutdown(Shutdown::Both);
            self.stuck.clear();
            drop(connection);
        }
    }
}

/// amiquip's connection options from the URL, as `Connection::open` reads
/// them, and the connect timeout.
fn connection_options(url: &Url) -> anyhow::Result<(ConnectionOptions<Auth>, Duration)> {
    let decode = |part: &str| {
        url::form_urlencoded::parse(format!("x={}", part.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default()
    };
    let mut options = ConnectionOptions::<Auth>::default();
    let mut segments = url.path_segments().into_iter().flatten();
    if let Some(vhost) = segments.next().filter(|vhost| !vhost.is_empty()) {
        options = options.virtual_host(decode(vhost));
    }
    if segments.next().is_some() {
        bail!("the URL's path must be just the virtual host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        let username = match url.username() {
            "" => "guest".to_string(),
            user => decode(user),
        };
        options = options.auth(Auth::Plain {
            username,
            password: decode(url.password().unwrap_or("guest")),
        });
    }
    let mut timeout = CONNECT_TIMEOUT;
    for (key, value) in url.query_pairs() {
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{key}={value} is not a number"))
        };
        match key.as_ref() {
            "heartbeat" => options = options.heartbeat(u16::try_from(number()?)?),
            "channel_max" => options = options.channel_max(u16::try_from(number()?)?),
            "connection_timeout" => timeout = Duration::from_millis(number()?),
            "auth_mechanism" if value == "external" => options = options.auth(Auth::External),
            other => bail!("unsupported URL option {other}"),
        }
    }
    Ok((options.connection_timeout(Some(timeout)), timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_read_as_amiquip_reads_them() {
        let url =
            Url::parse("amqp://me:p%40ss@host:5673/my%2Fvhost?heartbeat=10&connection_timeout=750")
                .unwrap();
        let (options, timeout) = connection_options(&url).unwrap();
        let expected = ConnectionOptions::<Auth>::default()
            .virtual_host("my/vhost")
            .auth(Auth::Plain {
                username: "me".into(),
                password: "p@ss".into(),
            })
            .heartbeat(10)
            .connection_timeout(Some(Duration::from_millis(750)));
        assert_eq!(options, expected);
        assert_eq!(timeout, Duration::from_millis(750));
        let (options, _) =
            connection_options(&Url::parse("amqp://guest:guest@h/%2f").unwrap()).unwrap();
        assert_eq!(
            options,
            ConnectionOptions::<Auth>::default()
                .virtual_host("/")
                .auth(Auth::default())
                .connection_timeout(Some(CONNECT_TIMEOUT))
        );
        assert!(options_err("amqp://h/?frobnicate=1"));
    }

    fn options_err(url: &str) -> bool {
        connection_options(&Url::parse(url).unwrap()).is_err()
    }

    #[test]
    fn alarms_are_named_from_rabbitmqs_reasons() {
        assert_eq!(
            BrokerBlocked("low on memory".into()).to_string(),
            "broker is blocking publishers (memory alarm)"
        );
        assert_eq!(alarm_name("low on disk"), "disk alarm");
        assert_eq!(alarm_name(""), "resource alarm");
    }
}
