//! Why an email was not sent, and what that means to the consumer runtime.

use anyhow::anyhow;

use crate::messaging::consumer::HandleError;

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
