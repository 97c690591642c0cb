//! The API's errors: `{"error": "one line"}` with the status the README gives
//! each kind, and a layer that turns every other 4xx/5xx (an unknown route,
//! a body over the limit, a timeout) into the same JSON shape.

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{invalid_input, not_found, refused};

/// The largest request body accepted; larger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// An error response. Built from the library's error kinds: `InvalidInput`
/// is 422, `NotFound` 404, `Refused` 409; anything else is an operational
/// failure (500), logged with its cause chain and shown without it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "admin token required: send Authorization: Bearer TOKEN or log in at /",
        )
    }

    /// A request body that is not JSON (400) or not the JSON expected (422).
    pub fn from_json(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Self::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {error}"))
            }
            Category::Data => Self::invalid(format!("invalid request: {error}")),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        if let Some(invalid) = invalid_input(&error) {
            return Self::invalid(invalid.to_string());
        }
        if let Some(missing) = not_found(&error) {
            return Self::not_found(missing.to_string());
        }
        if let Some(refused) = refused(&error) {
            return Self::new(StatusCode::CONFLICT, refused.to_string());
        }
        tracing::error!("request failed: {error:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error (the server log has the cause)",
        )
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        anyhow::Error::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = one_line(&self.message);
        (self.status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

/// The message on one line, whatever a library put in it.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Middleware: a 4xx/5xx plain-text response (axum's and tower-http's
/// rejections) becomes `{"error": "..."}`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    // Only plain-text rejections: JSON errors and the dashboard's login
    // page (401, HTML) pass as they are.
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|value| value.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "request body too large (the limit is {} KiB)",
            BODY_LIMIT / 1024
        ),
        StatusCode::REQUEST_TIMEOUT => "request timed out".to_string(),
        StatusCode::NOT_FOUND if text.trim().is_empty() => "no such route".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this route".to_string(),
        _ if !text.trim().is_empty() => one_line(&text),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).expect("JSON");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
