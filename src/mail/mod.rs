//! Emails: sending over SMTP (a pooled, reused connection) or writing
//! `.eml` files when no SMTP URL is set; what each email says is in
//! [`render`].

pub mod render;

pub use render::{confirmation, message_id};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{FileTransport, Message, SmtpTransport, Transport};

use crate::config::{SmtpSettings, SmtpTls};

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
