//! The error kinds callers branch on; everything else is `anyhow`.

/// Bad input from the user: a flag, an id, an amount, a URL. The binary
/// exits 2 with this one-line message, and nothing has been written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Returns the `InvalidInput` somewhere in an error's chain, if any.
pub fn invalid_input(error: &anyhow::Error) -> Option<&InvalidInput> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<InvalidInput>())
}

/// Valid input that a business rule refuses (not enough stock). The binary
/// exits 3 with this one-line message, and nothing has been written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Returns the `Refused` somewhere in an error's chain, if any.
pub fn refused(error: &anyhow::Error) -> Option<&Refused> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<Refused>())
}

/// Something the input names does not exist (an unknown user, order or
/// product). Invalid input to the CLI (exit 2); 404 over HTTP.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

impl NotFound {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Returns the `NotFound` somewhere in an error's chain, if any.
pub fn not_found(error: &anyhow::Error) -> Option<&NotFound> {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<NotFound>())
}
