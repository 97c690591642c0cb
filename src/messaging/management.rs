//! A client for the RabbitMQ management HTTP API, for what AMQP does not
//! tell: a queue's unacked count. Its address and credentials are derived
//! from the AMQP URL unless given.

use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use url::Url;

use crate::error::InvalidInput;
use crate::secrets::{decode, redact};

/// The RabbitMQ management HTTP API of the broker behind the AMQP URL.
#[derive(Clone)]
pub struct ManagementApi {
    base: Url,
    vhost: String,
    authorization: String,
    agent: ureq::Agent,
}

impl ManagementApi {
    /// `http://HOST:15672/` (or, for an AMQP port other than RabbitMQ's
    /// own, that port + 10000, RabbitMQ's convention, as the nodes of
    /// `scripts/cluster.sh` use) with the AMQP URL's credentials (AMQP's default
    /// guest/guest when it has none) and virtual host; `base` overrides the
    /// address, and its credentials, if any, win.
    pub fn new(amqp_url: &Url, base: Option<&Url>) -> Result<Self, InvalidInput> {
        let derived;
        let base = match base {
            Some(base) => {
                if base.scheme() != "http" {
                    return Err(InvalidInput::new(format!(
                        "--management-url {} must start with http://",
                        redact(base)
                    )));
                }
                base
            }
            None => {
                let mut url = Url::parse("http://localhost:15672/").expect("a valid URL");
                url.set_host(amqp_url.host_str())
                    .map_err(|e| InvalidInput::new(format!("RabbitMQ host: {e}")))?;
                let _ = url.set_port(Some(management_port(amqp_url.port())));
                derived = url;
                &derived
            }
        };
        let (user, password) = match (base.username(), amqp_url.username()) {
            ("", "") => ("guest".to_string(), "guest".to_string()),
            ("", user) => (decode(user), decode(amqp_url.password().unwrap_or(""))),
            (user, _) => (decode(user), decode(base.password().unwrap_or(""))),
        };
        let mut clean = base.clone();
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        if !clean.path().ends_with('/') {
            let path = format!("{}/", clean.path());
            clean.set_path(&path);
        }
        let vhost = match decode(amqp_url.path().trim_start_matches('/')) {
            vhost if vhost.is_empty() => "/".to_string(),
            vhost => vhost,
        };
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Self {
            base: clean,
            vhost,
            authorization: format!("Basic {credentials}"),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(1))
                .timeout(Duration::from_secs(3))
                .build(),
        })
    }

    pub fn url(&self) -> &Url {
        &self.base
    }

    /// The queue's unacked count; `None` when the queue has no statistics
    /// yet (the broker samples them every few seconds).
    pub fn unacked(&self, queue: &str) -> anyhow::Result<Option<u64>> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(["api", "queues", &self.vhost, queue]);
        url.set_query(Some("columns=messages_unacknowledged"));
        let response = match self
            .agent
            .get(url.as_str())
            .set("Authorization", &self.authorization)
            .call()
        {
            Ok(response) => response,
            Err(ureq::Error::Status(404, _)) => return Ok(None),
            Err(ureq::Error::Status(code, response)) => {
                anyhow::bail!("HTTP {code} {}", response.status_text())
            }
            // Not the transport error's Display: it repeats the URL.
            Err(error) => match error.into_transport() {
                Some(transport) => {
                    let mut text = transport.kind().to_string();
                    for detail in [
                        transport.message().map(String::from),
                        std::error::Error::source(&transport).map(|cause| cause.to_string()),
                    ]
                    .into_iter()
                    .flatten()
                    {
                        text = format!("{text}: {detail}");
                    }
                    anyhow::bail!(text)
                }
                None => anyhow::bail!("the request failed"),
            },
        };
        let body: serde_json::Value =
            serde_json::from_reader(response.into_reader()).context("reading its answer")?;
        Ok(body["messages_unacknowledged"].as_u64())
    }
}

/// The management port that goes with an AMQP port: 15672 for the
/// default ports, else the AMQP port + 10000 (5681 → 15681).
fn management_port(amqp_port: Option<u16>) -> u16 {
    match amqp_port {
        None | Some(5671 | 5672) => 15672,
        Some(port) => port.checked_add(10_000).unwrap_or(15672),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(amqp: &str, base: Option<&str>) -> ManagementApi {
        let base = base.map(|raw| Url::parse(raw).unwrap());
        ManagementApi::new(&Url::parse(amqp).unwrap(), base.as_ref()).unwrap()
    }

    fn basic(user_password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    }

    #[test]
    fn the_management_api_is_derived_from_the_amqp_url() {
        let derived = api("amqp://admin:p%40ss@rabbit.internal:5672/%2f", None);
        assert_eq!(derived.url().as_str(), "http://rabbit.internal:15672/");
        assert_eq!(derived.vhost, "/");
        assert_eq!(derived.authorization, basic("admin:p@ss"));

        let node = api("amqp://127.0.0.1:5681/%2f", None);
        assert_eq!(node.url().as_str(), "http://127.0.0.1:15681/");
        assert_eq!(management_port(Some(60000)), 15672);

        let defaults = api("amqp://127.0.0.1/shop", None);
        assert_eq!(defaults.vhost, "shop");
        assert_eq!(defaults.authorization, basic("guest:guest"));
    }

    #[test]
    fn a_management_url_overrides_address_and_credentials() {
        let own = api(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Some("http://ops:secret@127.0.0.1:15680/rabbit"),
        );
        assert_eq!(own.url().as_str(), "http://127.0.0.1:15680/rabbit/");
        assert_eq!(own.authorization, basic("ops:secret"));
        let err = ManagementApi::new(
            &Url::parse("amqp://127.0.0.1").unwrap(),
            Some(&Url::parse("https://u:hunter2@host").unwrap()),
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
