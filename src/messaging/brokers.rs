//! The RabbitMQ nodes of one setting: `--amqp-url` takes one URL or several,
//! comma-separated (the nodes of a cluster). Every connection of a process
//! goes through [`Brokers::open`], the one place that decides which node to
//! try next: the one that answered last, then the others in turn. A node
//! that goes away (killed, restarted, unreachable) refuses the reconnect,
//! and the next live one takes over for every later connection.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use amiquip::Connection;
use anyhow::anyhow;
use url::Url;

use super::link::Link;
use crate::secrets::redact;

/// The broker URLs, in the order given, and which one to try first. Clones
/// share that choice, so every connection of a process follows the node
/// that last answered.
#[derive(Clone)]
pub struct Brokers {
    urls: Arc<[Url]>,
    current: Arc<AtomicUsize>,
}

impl Brokers {
    /// At least one URL; the first is tried first.
    pub fn new(urls: Vec<Url>) -> Self {
        assert!(!urls.is_empty(), "at least one broker URL");
        Self {
            urls: urls.into(),
            current: Arc::default(),
        }
    }

    pub fn urls(&self) -> &[Url] {
        &self.urls
    }

    /// The first URL given: where the management API is looked for unless
    /// `--management-url` says otherwise.
    pub fn first(&self) -> &Url {
        &self.urls[0]
    }

    /// The node the last connection reached (the first one before any).
    pub fn current(&self) -> &Url {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// The order in which the next connection tries the nodes: the one that
    /// answered last, then the ones after it, wrapping around.
    pub fn order(&self) -> impl Iterator<Item = usize> {
        let len = self.urls.len();
        let start = self.current.load(Ordering::Relaxed) % len;
        (0..len).map(move |step| (start + step) % len)
    }

    /// A connection to the first node that answers, tried in
    /// [`Brokers::order`]; that node is tried first next time. If none
    /// answers, the error names each node and why.
    pub fn open(&self) -> anyhow::Result<Link> {
        let mut failures = Vec::new();
        for index in self.order() {
            match Link::open(&self.urls[index]) {
                Ok(link) => {
                    if !failures.is_empty() {
                        tracing::info!(
                            "RabbitMQ: connected to {} after {}",
                            redact(&self.urls[index]),
                            describe(&failures)
                        );
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(link);
                }
                Err(error) => failures.push(error),
            }
        }
        match failures.len() {
            1 => Err(failures.remove(0)),
            count => Err(anyhow!(
                "none of the {count} RabbitMQ nodes answered: {}",
                describe(&failures)
            )),
        }
    }

    /// [`Brokers::open`], handing the connection over to code that closes
    /// it itself.
    pub fn connect(&self) -> anyhow::Result<Connection> {
        Ok(self.open()?.into_connection())
    }

    /// The same nodes, each URL without a `connection_timeout` of its own
    /// given `timeout` (a health check must answer quickly). The choice of
    /// node stays shared.
    pub fn with_connect_timeout(&self, timeout: Duration) -> Self {
        let urls: Vec<Url> = self
            .urls
            .iter()
            .map(|url| {
                let mut url = url.clone();
                if !url
                    .query_pairs()
                    .any(|(key, _)| key == "connection_timeout")
                {
                    url.query_pairs_mut()
                        .append_pair("connection_timeout", &timeout.as_millis().to_string());
                }
                url
            })
            .collect();
        Self {
            urls: urls.into(),
            current: self.current.clone(),
        }
    }

    /// The list as `AMQP_URL` takes it, passwords included: for a child
    /// process's environment, never for output.
    pub fn to_env(&self) -> String {
        self.join(|url| url.to_string())
    }

    fn join(&self, show: impl Fn(&Url) -> String) -> String {
        self.urls.iter().map(show).collect::<Vec<_>>().join(",")
    }
}

/// Each failure's cause chain, one after the other.
fn describe(failures: &[anyhow::Error]) -> String {
    failures
        .iter()
        .map(|error| format!("{error:#}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every URL, comma-separated, each password masked.
impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.join(redact))
    }
}

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(urls: &[&str]) -> Brokers {
        Brokers::new(urls.iter().map(|url| Url::parse(url).unwrap()).collect())
    }

    #[test]
    fn the_node_that_answered_last_is_tried_first_then_the_others_in_turn() {
        let nodes = brokers(&["amqp://a", "amqp://b", "amqp://c"]);
        assert_eq!(nodes.order().collect::<Vec<_>>(), [0, 1, 2]);
        nodes.current.store(1, Ordering::Relaxed);
        assert_eq!(nodes.order().collect::<Vec<_>>(), [1, 2, 0]);
        // Clones follow the same choice.
        let clone = nodes.clone();
        clone.current.store(2, Ordering::Relaxed);
        assert_eq!(nodes.order().collect::<Vec<_>>(), [2, 0, 1]);
    }

    #[test]
    fn every_password_is_masked_when_shown_and_kept_for_the_environment() {
        let nodes = brokers(&["amqp://u:s3cret@a:5681/%2f", "amqps://v:hunter2@b/vh"]);
        let shown = format!("{nodes} {nodes:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(
            nodes.to_string(),
            "amqp://u:***@a:5681/%2f,amqps://v:***@b/vh"
        );
        assert_eq!(
            nodes.to_env(),
            "amqp://u:s3cret@a:5681/%2f,amqps://v:hunter2@b/vh"
        );
    }

    #[test]
    fn a_connect_timeout_is_added_where_none_is_given() {
        let nodes = brokers(&["amqp://a/%2f", "amqp://b/%2f?connection_timeout=50"])
            .with_connect_timeout(Duration::from_millis(750));
        assert_eq!(
            nodes.to_env(),
            "amqp://a/%2f?connection_timeout=750,amqp://b/%2f?connection_timeout=50"
        );
    }

    #[test]
    fn when_no_node_answers_the_error_names_each() {
        // Two closed ports first: nothing listens on a port just released.
        let closed = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let nodes = brokers(&[
            &format!("amqp://127.0.0.1:{}/%2f", closed()),
            &format!("amqp://127.0.0.1:{}/%2f", closed()),
        ]);
        let error = nodes.open().err().expect("no node answers");
        let message = format!("{error:#}");
        assert!(
            message.contains("none of the 2 RabbitMQ nodes"),
            "{message}"
        );
    }
}
