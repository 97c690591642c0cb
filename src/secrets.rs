//! Secrets in URLs: masked wherever a URL is shown (messages, logs, JSON),
//! including URLs that failed to parse, and decoded where they are used.

use url::Url;

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Masks whatever sits between `user:` and `@` in a string that did not
/// parse as a URL, so even a malformed URL never shows its password.
pub fn redact_str(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_string();
    };
    let rest = &raw[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &raw[..scheme_end + 3],
            &rest[..colon],
            &rest[at..]
        ),
        None => raw.to_string(),
    }
}

/// A percent-encoded URL part (user, password, virtual host) as it is meant.
pub fn decode(part: &str) -> String {
    url::form_urlencoded::parse(format!("x={part}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_masks_the_password_only() {
        let url = Url::parse("amqp://guest:s3cret@host:5672/%2f").unwrap();
        assert_eq!(redact(&url), "amqp://guest:***@host:5672/%2f");
        let url = Url::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(redact(&url), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn malformed_urls_are_masked_too() {
        assert_eq!(
            redact_str("postgres://u:s3cret@host:99999/db"),
            "postgres://u:***@host:99999/db"
        );
        assert_eq!(redact_str("not a url"), "not a url");
    }
}
