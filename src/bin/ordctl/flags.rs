//! Flags and clap value parsers shared by several subcommands.

use std::time::Duration;

use ordctl::error::InvalidInput;
use ordctl::messaging::management::ManagementApi;
use ordctl::messaging::Brokers;
use url::Url;

/// `--management-url`, for the commands that read the RabbitMQ management
/// API (`status`, `doctor`).
#[derive(clap::Args)]
pub struct Management {
    /// RabbitMQ management API, e.g. http://user:pass@rabbit:15672 (default:
    /// derived from the first AMQP URL).
    #[arg(
        long,
        env = "ORDCTL_MANAGEMENT_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    management_url: Option<String>,
}

impl Management {
    /// The API at `--management-url`, or the one behind the AMQP URL. The
    /// flag is parsed here, not by clap, so that a malformed one is
    /// reported with its password masked.
    pub fn api(&self, brokers: &Brokers) -> Result<ManagementApi, InvalidInput> {
        let base = self
            .management_url
            .as_deref()
            .map(|raw| {
                Url::parse(raw).map_err(|e| {
                    InvalidInput::new(format!(
                        "--management-url {} is not a valid URL: {e}",
                        ordctl::secrets::redact_str(raw)
                    ))
                })
            })
            .transpose()?;
        ManagementApi::new(brokers.first(), base.as_ref())
    }
}

/// A number of seconds, fractions allowed, as for `--exit-when-idle`,
/// `--idle-timeout`: zero or more and finite.
pub fn seconds(raw: &str) -> Result<Duration, String> {
    let secs: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{raw} is not a number of seconds >= 0"))
}

/// [`seconds`] that must be more than zero, as for `--watch` (a zero
/// interval would redraw in a busy loop) and `--latency-secs`.
pub fn positive_seconds(raw: &str) -> Result<Duration, String> {
    seconds(raw)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{raw} is not a number of seconds > 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_fractions_and_refuse_negatives_and_nonsense() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert!(seconds("-1").is_err());
        assert!(seconds("inf").is_err());
        assert!(seconds("NaN").is_err());
        assert!(seconds("soon").is_err());
    }

    #[test]
    fn positive_seconds_refuse_zero() {
        assert_eq!(positive_seconds("2"), Ok(Duration::from_secs(2)));
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("-0.1").is_err());
    }
}
