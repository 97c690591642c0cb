//! Confirmation emails: rendering, and sending over SMTP (a pooled,
//! reused connection) or writing `.eml` files when no SMTP URL is set.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{FileTransport, Message, SmtpTransport, Transport};

use crate::config::{SmtpSettings, SmtpTls};
use crate::db::models::User;
use crate::domain::OrderCreated;

const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an email was not sent; decides retry versus dead letter.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A 4xx reply, a connection problem or a timeout.
    #[error("{0}")]
    Transient(String),
    /// A 5xx reply or an address the server will never accept.
    #[error("{0}")]
    Permanent(String),
}

pub enum Mailer {
    Smtp(SmtpTransport),
    Files(FileTransport, PathBuf),
}

impl Mailer {
    /// An SMTP mailer with a pool of up to `pool_size` connections, or an
    /// `.eml` writer into `mail_dir`.
    pub fn new(
        smtp: Option<&SmtpSettings>,
        mail_dir: &std::path::Path,
        pool_size: u32,
    ) -> anyhow::Result<Self> {
        let Some(smtp) = smtp else {
            std::fs::create_dir_all(mail_dir)
                .with_context(|| format!("creating mail directory {}", mail_dir.display()))?;
            return Ok(Self::Files(
                FileTransport::new(mail_dir),
                mail_dir.to_path_buf(),
            ));
        };
        Ok(Self::Smtp(smtp_transport(smtp, pool_size)?))
    }

    /// Sends one email; returns the server's reply (or where the file went).
    pub fn send(&self, email: &Message) -> Result<String, MailError> {
        match self {
            Self::Smtp(transport) => match transport.send(email) {
                Ok(response) => Ok(format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )),
                Err(error) if error.is_permanent() => Err(MailError::Permanent(smtp_error(&error))),
                Err(error) => Err(MailError::Transient(smtp_error(&error))),
            },
            Self::Files(transport, dir) => match transport.send(email) {
                Ok(id) => Ok(format!(
                    "written {}",
                    dir.join(format!("{id}.eml")).display()
                )),
                Err(error) => Err(MailError::Transient(format!("writing .eml file: {error}"))),
            },
        }
    }
}

/// A transport keeping up to `pool_size` SMTP connections open for reuse,
/// with TLS, STARTTLS and credentials as the URL says.
pub fn smtp_transport(smtp: &SmtpSettings, pool_size: u32) -> anyhow::Result<SmtpTransport> {
    let tls = || TlsParameters::new(smtp.host.clone()).with_context(|| format!("TLS for {smtp}"));
    let mut builder = SmtpTransport::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .timeout(Some(SMTP_TIMEOUT))
        .pool_config(PoolConfig::new().max_size(pool_size.max(1)));
    builder = match smtp.tls {
        SmtpTls::None => builder.tls(Tls::None),
        SmtpTls::StartTls => builder.tls(Tls::Required(tls()?)),
        SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls()?)),
    };
    if let Some((user, password)) = &smtp.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

fn smtp_error(error: &lettre::transport::smtp::Error) -> String {
    use std::error::Error;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The Message-ID for an event: the same event always yields the same one,
/// so a duplicate send is detectable downstream.
pub fn message_id(event: &OrderCreated) -> String {
    format!("<{}@ordctl>", event.event_id)
}

/// Renders the confirmation for `event` to `user`. An address the email
/// cannot be built with is a permanent failure.
pub fn confirmation(
    event: &OrderCreated,
    user: &User,
    from: &Mailbox,
) -> Result<Message, MailError> {
    let to: Mailbox = format!(
        "{} <{}>",
        user.name.replace(['<', '>', '"'], ""),
        user.email
    )
    .parse()
    .map_err(|e| {
        MailError::Permanent(format!(
            "invalid address {:?} for user {}: {e}",
            user.email, user.id
        ))
    })?;
    let order = &event.order;
    let body = format!(
        "Hello {name},\n\n\
         thank you for your order #{id}.\n\n\
         Amount: {amount} {currency}\n\
         Placed: {placed}\n\n\
         We will let you know when it ships.\n",
        name = user.name,
        id = order.id,
        amount = order.amount,
        currency = order.currency,
        placed = event.occurred_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("Order #{} confirmed", order.id))
        .message_id(Some(message_id(event)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::Permanent(format!("building the email: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money, OrderSnapshot};
    use lettre::transport::stub::StubTransport;

    fn event() -> OrderCreated {
        let order = OrderSnapshot {
            id: 42,
            user_id: 3,
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
        };
        OrderCreated::new(order, chrono::Utc::now())
    }

    fn user(email: &str) -> User {
        User {
            id: 3,
            name: "Demo User 3".into(),
            email: email.into(),
        }
    }

    #[test]
    fn confirmation_names_order_amount_and_a_stable_message_id() {
        let event = event();
        let from: Mailbox = "Orders <orders@example.com>".parse().unwrap();
        let email = confirmation(&event, &user("user3@example.com"), &from).unwrap();
        let stub = StubTransport::new_ok();
        stub.send(&email).unwrap();
        let (envelope, text) = &stub.messages()[0];
        assert_eq!(envelope.to()[0].to_string(), "user3@example.com");
        assert!(text.contains("Subject: Order #42 confirmed"), "{text}");
        assert!(text.contains("42.00 USD"), "{text}");
        assert!(
            text.contains(&format!("Message-ID: <{}@ordctl>", event.event_id)),
            "{text}"
        );
        let again = confirmation(&event, &user("user3@example.com"), &from).unwrap();
        assert_eq!(
            again.headers().get_raw("Message-ID"),
            email.headers().get_raw("Message-ID")
        );
    }

    #[test]
    fn an_invalid_address_is_permanent() {
        let from: Mailbox = "orders@example.com".parse().unwrap();
        let error = confirmation(&event(), &user("not an address"), &from).unwrap_err();
        assert!(matches!(error, MailError::Permanent(_)), "{error:?}");
    }
}
