//! `GET /`: the admin dashboard, one self-contained page compiled into the
//! binary; `POST /login` and `POST /logout` set and clear its session
//! cookie.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use crate::http::auth::{cookie, is_admin};
use crate::http::credentials::SESSION_TTL;
use crate::http::error::ApiError;
use crate::http::state::AppState;

const PAGE: &str = include_str!("../dashboard.html");
/// How long a wrong token waits for its 401.
const FAILED_LOGIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The page, 200 when logged in; without a session the same page shows its
/// login form, with 401 (the data it would load needs the login).
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let admin = is_admin(&state, &headers);
    let status = if admin {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let html = PAGE.replace("__AUTHENTICATED__", if admin { "true" } else { "false" });
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        Html(html),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `{"token": "..."}` → a session cookie (HttpOnly, SameSite=Strict).
pub async fn login(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let login: Login = serde_json::from_slice(&body).map_err(ApiError::from_json)?;
    if !state.admin.matches(&login.token) {
        // Slows down guessing a short, chosen token through the login form.
        tokio::time::sleep(FAILED_LOGIN_PAUSE).await;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong admin token"));
    }
    let session = state.sessions.create();
    let cookie = format!(
        "{}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        state.cookie_name,
        SESSION_TTL.as_secs()
    );
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// Ends the session and clears the cookie.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = cookie(&headers, &state.cookie_name) {
        state.sessions.remove(session);
    }
    let cookie = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        state.cookie_name
    );
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}
