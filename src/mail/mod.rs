//! Emails: sending over SMTP (pooled connections, see [`smtp`]) or writing
//! `.eml` files when no SMTP URL is set; what each email says is in
//! [`render`].

pub mod render;
pub mod smtp;

pub use render::{confirmation, message_id};

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use lettre::{FileTransport, Message, Transport};

use self::smtp::SmtpPool;
use crate::config::SmtpSettings;
use crate::messaging::consumer::HandleError;
use crate::send_rate::SendRate;

/// Why an email was not sent; decides retry versus dead letter.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// A 4xx reply, a connection problem or a timeout.
    #[error("{0}")]
    Transient(String),
    /// A 5xx reply or an address the server will never accept.
    #[error("{0}")]
    Permanent(String),
    /// Not this message: the server takes no email at all right now
    /// (refused connection, failed TLS, rejected credentials).
    #[error("{0}")]
    Unavailable(String),
    /// Not this message: the provider says we send too fast (421, 454).
    #[error("{0}")]
    Throttled(String),
}

/// How the consumer runtime treats a mail failure: each kind of
/// [`MailError`] is the [`HandleError`] of the same name, and a throttled
/// send is held like an outage, without using an attempt, while the send
/// rate slows down.
pub fn mail_error(error: MailError) -> HandleError {
    match error {
        MailError::Transient(text) => HandleError::Transient(anyhow!(text)),
        MailError::Permanent(text) => HandleError::Permanent(anyhow!(text)),
        MailError::Unavailable(text) | MailError::Throttled(text) => {
            HandleError::Unavailable(anyhow!(text))
        }
    }
}

/// Sends emails, at most at the fleet's send rate when one is set.
pub struct Mailer {
    via: Via,
    rate: Option<SendRate>,
}

enum Via {
    Smtp(Box<SmtpPool>),
    Files(FileTransport, PathBuf),
}

impl Mailer {
    /// An SMTP mailer keeping up to `pool_size` connections open, or an
    /// `.eml` writer into `mail_dir`.
    pub fn new(
        smtp: Option<&SmtpSettings>,
        mail_dir: &std::path::Path,
        pool_size: u32,
    ) -> anyhow::Result<Self> {
        let Some(smtp) = smtp else {
            std::fs::create_dir_all(mail_dir)
                .with_context(|| format!("creating mail directory {}", mail_dir.display()))?;
            return Ok(Self::with(Via::Files(
                FileTransport::new(mail_dir),
                mail_dir.to_path_buf(),
            )));
        };
        Ok(Self::with(Via::Smtp(Box::new(SmtpPool::new(
            smtp,
            pool_size as usize,
        )?))))
    }

    fn with(via: Via) -> Self {
        Self { via, rate: None }
    }

    /// Every send waits for its turn under `rate`, and a throttling reply
    /// slows it down.
    pub fn limited_by(self, rate: SendRate) -> Self {
        Self {
            rate: Some(rate),
            ..self
        }
    }

    /// Sends one email, once the send rate allows; returns the server's
    /// reply (or where the file went).
    pub fn send(&self, email: &Message) -> Result<String, MailError> {
        if let Some(rate) = &self.rate {
            rate.acquire();
        }
        let sent = self.via.send(email);
        if let (Err(MailError::Throttled(_)), Some(rate)) = (&sent, &self.rate) {
            rate.throttled();
        }
        sent
    }
}

impl Via {
    fn send(&self, email: &Message) -> Result<String, MailError> {
        match self {
            Self::Smtp(pool) => pool.send(email),
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
