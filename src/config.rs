//! Settings shared by every subcommand: flags, then environment, then a
//! `.env` file, then defaults. URLs are parsed once here; passwords are
//! masked (by [`crate::secrets`]) wherever a URL is shown.

use std::fmt;
use std::path::PathBuf;

use lettre::message::Mailbox;
use url::Url;

use crate::domain::Namespace;
use crate::error::InvalidInput;
use crate::messaging::topology::QueueType;
use crate::messaging::Brokers;
use crate::secrets::{decode, redact, redact_str};

/// The global flags, as clap parses them. Values stay strings here so that a
/// malformed URL is reported by [`Settings::parse`] with its password masked
/// (clap would echo it verbatim).
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/ordctl"
    )]
    pub database_url: String,

    /// RabbitMQ URL (amqp:// or amqps://), or the nodes of a cluster
    /// comma-separated: each connection tries them in turn and moves on to
    /// the next live node when one goes away.
    #[arg(
        long,
        env = "AMQP_URL",
        global = true,
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// Redis URL for the user cache.
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub redis_url: String,

    /// SMTP server: smtp://host:port (plain), smtps:// (implicit TLS),
    /// ?tls=starttls (required STARTTLS); user and password from the URL.
    /// Unset: each email is written as an .eml file under --mail-dir.
    #[arg(long, env = "SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// Directory for .eml files when no SMTP URL is set.
    #[arg(long, env = "MAIL_DIR", global = true, default_value = "./var/mail")]
    pub mail_dir: PathBuf,

    /// Sender of confirmation emails.
    #[arg(
        long,
        env = "MAIL_FROM",
        global = true,
        default_value = "Orders <orders@example.com>"
    )]
    pub mail_from: String,

    /// Prefix of every exchange, queue and Redis key this tool creates.
    #[arg(
        long,
        env = "ORDCTL_NAMESPACE",
        global = true,
        default_value = "ordctl"
    )]
    pub namespace: String,

    /// Type of the work, retry and dead-letter queues; quorum for a
    /// RabbitMQ cluster. Every process of a namespace must use the same.
    #[arg(long, env = "ORDCTL_QUEUE_TYPE", global = true, value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,
}

/// Validated settings. `Debug` and `Display` never show a password.
#[derive(Clone)]
pub struct Settings {
    pub database_url: Url,
    pub amqp_url: Brokers,
    pub redis_url: Url,
    pub smtp: Option<SmtpSettings>,
    pub mail_dir: PathBuf,
    pub mail_from: Mailbox,
    pub namespace: Namespace,
    pub queue_type: QueueType,
}

impl Settings {
    pub fn parse(args: &SettingsArgs) -> Result<Self, InvalidInput> {
        Ok(Self {
            database_url: parse_url(
                "--database-url",
                &args.database_url,
                &["postgres", "postgresql"],
            )?,
            amqp_url: parse_brokers("--amqp-url", &args.amqp_url)?,
            redis_url: parse_url("--redis-url", &args.redis_url, &["redis", "rediss"])?,
            smtp: args
                .smtp_url
                .as_deref()
                .filter(|url| !url.is_empty())
                .map(SmtpSettings::parse)
                .transpose()?,
            mail_dir: args.mail_dir.clone(),
            mail_from: args.mail_from.parse().map_err(|e| {
                InvalidInput::new(format!(
                    "--mail-from {:?} is not a mailbox: {e}",
                    args.mail_from
                ))
            })?,
            namespace: Namespace::parse(&args.namespace)?,
            queue_type: args.queue_type,
        })
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact(&self.database_url))
            .field("amqp_url", &self.amqp_url)
            .field("redis_url", &redact(&self.redis_url))
            .field("smtp", &self.smtp)
            .field("mail_dir", &self.mail_dir)
            .field("mail_from", &self.mail_from.to_string())
            .field("namespace", &self.namespace)
            .field("queue_type", &self.queue_type)
            .finish()
    }
}

/// How to reach the SMTP server.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, String)>,
    url: Url,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

impl SmtpSettings {
    /// The URL as given, credentials included: to hand to a child process
    /// (in its environment, never on its command line). Display masks the
    /// password; this does not.
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let url = parse_url("--smtp-url", raw, &["smtp", "smtps"])?;
        let masked = redact(&url);
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| InvalidInput::new(format!("--smtp-url {masked} has no host")))?
            .to_string();
        let mut tls = if url.scheme() == "smtps" {
            SmtpTls::Implicit
        } else {
            SmtpTls::None
        };
        for (key, value) in url.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("tls", "starttls") if tls == SmtpTls::None => tls = SmtpTls::StartTls,
                ("tls", "none") if tls == SmtpTls::None => {}
                _ => {
                    return Err(InvalidInput::new(format!(
                        "--smtp-url {masked}: unsupported option {key}={value} (use ?tls=starttls with smtp://)"
                    )))
                }
            }
        }
        let port = url.port().unwrap_or(match tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
        });
        let credentials = match url.username() {
            "" => None,
            user => Some((decode(user), decode(url.password().unwrap_or("")))),
        };
        Ok(Self {
            host,
            port,
            tls,
            credentials,
            url,
        })
    }
}

impl fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Display for SmtpSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

/// `--amqp-url` (or another `flag` taking RabbitMQ nodes): one URL or
/// several, comma-separated (spaces around the commas allowed).
pub fn parse_brokers(flag: &str, raw: &str) -> Result<Brokers, InvalidInput> {
    let urls = raw
        .split(',')
        .map(str::trim)
        .map(|url| match url {
            "" => Err(InvalidInput::new(format!(
                "{flag} {} has an empty entry (separate URLs with one comma)",
                redact_str(raw)
            ))),
            url => parse_url(flag, url, &["amqp", "amqps"]),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Brokers::new(urls))
}

fn parse_url(flag: &str, raw: &str, schemes: &[&str]) -> Result<Url, InvalidInput> {
    let url = Url::parse(raw).map_err(|e| {
        InvalidInput::new(format!(
            "{flag} {} is not a valid URL: {e}",
            redact_str(raw)
        ))
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(InvalidInput::new(format!(
            "{flag} {} must start with {}://",
            redact(&url),
            schemes.join(":// or ")
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_url_forms() {
        let plain = SmtpSettings::parse("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.port, plain.tls, plain.credentials.clone()),
            (2525, SmtpTls::None, None)
        );
        let starttls =
            SmtpSettings::parse("smtp://me:p%40ss@mail.example.com?tls=starttls").unwrap();
        assert_eq!((starttls.port, starttls.tls), (587, SmtpTls::StartTls));
        assert_eq!(starttls.credentials, Some(("me".into(), "p@ss".into())));
        assert_eq!(
            starttls.to_string(),
            "smtp://me:***@mail.example.com?tls=starttls"
        );
        let implicit = SmtpSettings::parse("smtps://mail.example.com").unwrap();
        assert_eq!((implicit.port, implicit.tls), (465, SmtpTls::Implicit));
        assert!(SmtpSettings::parse("smtp://host?tls=maybe").is_err());
        assert!(SmtpSettings::parse("http://host").is_err());
    }

    #[test]
    fn amqp_url_takes_a_comma_separated_list_of_nodes() {
        let one = parse_brokers("--amqp-url", "amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(one.urls().len(), 1);
        let three = parse_brokers(
            "--amqp-url",
            "amqp://u:pw1@127.0.0.1:5681/%2f, amqp://u:pw2@127.0.0.1:5682/%2f,amqps://u:pw3@h/%2f",
        )
        .unwrap();
        let ports: Vec<_> = three.urls().iter().map(Url::port).collect();
        assert_eq!(ports, [Some(5681), Some(5682), None]);
        assert_eq!(three.first().port(), Some(5681));
        let debug = format!("{:?}", three);
        assert!(!debug.contains("pw"), "{debug}");
        for bad in [
            "",
            "amqp://h/%2f,",
            "amqp://h/%2f,,amqp://i/%2f",
            "amqp://h/%2f,http://u:pw9@i",
        ] {
            let err = parse_brokers("--amqp-url", bad).unwrap_err().to_string();
            assert!(err.starts_with("--amqp-url"), "{err}");
            assert!(!err.contains("pw9"), "{err}");
        }
    }

    #[test]
    fn settings_errors_never_show_passwords() {
        let err = parse_url("--amqp-url", "amqp://guest:hunter2@[bad", &["amqp"]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse_url("--amqp-url", "http://guest:hunter2@host", &["amqp"]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
