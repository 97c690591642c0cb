//! The admin's credentials: the token (compared in constant time, never
//! logged: its `Debug` is masked) and the dashboard's login sessions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::InvalidInput;

/// How long a dashboard login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// The admin token of `--admin-token` / `ORDCTL_ADMIN_TOKEN`.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// At least 8 characters, none of them whitespace.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.chars().count() < 8 || raw.chars().any(char::is_whitespace) {
            return Err(InvalidInput::new(
                "the admin token must be at least 8 characters without spaces",
            ));
        }
        Ok(Self(raw.to_string()))
    }

    /// 256 random bits (two v4 UUIDs' worth, from the OS's generator), hex.
    pub fn generate() -> Self {
        Self(format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ))
    }

    /// The token itself, to print once when it was generated.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison: the time taken does not depend on where
    /// a wrong guess differs.
    pub fn matches(&self, candidate: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), candidate.as_bytes())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    difference == 0
}

/// Dashboard logins: random session ids, kept in memory (a restart logs
/// everyone out, which for an admin page is fine).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    pub fn create(&self) -> String {
        let id = AdminToken::generate().0;
        let mut sessions = self.0.lock().expect("sessions");
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        sessions.insert(id.clone(), now + SESSION_TTL);
        id
    }

    pub fn is_valid(&self, id: &str) -> bool {
        self.0
            .lock()
            .expect("sessions")
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    pub fn remove(&self, id: &str) {
        self.0.lock().expect("sessions").remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let token = AdminToken::parse("s3cret-token").unwrap();
        assert!(token.matches("s3cret-token"));
        for wrong in ["", "s3cret-tokem", "s3cret-token2", "S3CRET-TOKEN"] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        for raw in ["", "short", "has a space in it"] {
            assert!(AdminToken::parse(raw).is_err(), "{raw:?}");
        }
        assert_eq!(AdminToken::generate().reveal().len(), 64);
    }
}
