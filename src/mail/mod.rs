//! Emails: sending over SMTP (pooled connections, see [`smtp`]) or writing
//! `.eml` files when no SMTP URL is set; what each email says is in
//! [`render`].

pub mod error;
pub mod render;
pub mod smtp;

pub use error::{mail_error, MailError};
pub use render::{confirmation, message_id};

use std::path::PathBuf;

use anyhow::Context;
use lettre::{FileTransport, Message, Transport};

use self::smtp::SmtpPool;
use crate::config::SmtpSettings;
use crate::send_rate::SendRate;

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
    /// An SMTP mailer with up to `pool_size` connections open at once, or
    /// an `.eml` writer into `mail_dir`.
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
