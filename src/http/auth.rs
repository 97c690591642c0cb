//! Admin authentication: `Authorization: Bearer TOKEN`, or the session
//! cookie the dashboard's login sets (the credentials themselves are in
//! [`credentials`](super::credentials)).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

/// Whether the request carries the admin token or a live session.
pub fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return state.admin.matches(token.trim());
    }
    cookie(headers, &state.cookie_name).is_some_and(|id| state.sessions.is_valid(id))
}

/// Middleware for the admin routes: 401 unless [`is_admin`].
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_admin(&state, request.headers()) {
        next.run(request).await
    } else {
        let mut response = ApiError::unauthorized().into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; ordctl_session_80=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, "ordctl_session_80"), Some("xyz"));
        assert_eq!(cookie(&headers, "ordctl_session"), None);
    }
}
