//! [`Secret`]: credentials and URLs with passwords, kept out of logs and error messages. Its own
//! module, because configuration, providers and the store all hold secrets.

use std::fmt;

/// A value that must not reach logs: `Debug` shows only its redacted form.
#[derive(Clone)]
pub struct Secret {
    value: String,
    redaction: Redaction,
}

#[derive(Clone, Copy)]
enum Redaction {
    /// A URL: only its password is hidden, the rest helps when reading logs.
    UrlPassword,
    /// An API key or similar: nothing of it is shown.
    Whole,
}

impl Secret {
    /// A URL whose password, if any, is redacted.
    pub fn new(value: String) -> Self {
        Self {
            value,
            redaction: Redaction::UrlPassword,
        }
    }

    /// A value (an API key) that is redacted entirely.
    pub fn opaque(value: String) -> Self {
        Self {
            value,
            redaction: Redaction::Whole,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The value fit for logs and error messages.
    pub fn redacted(&self) -> String {
        match self.redaction {
            Redaction::UrlPassword => redact_url_password(&self.value),
            Redaction::Whole => "[redacted]".to_owned(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let s = Secret::new("postgres://app:hunter2@db:5432/refunds?sslmode=require".into());
        assert_eq!(
            s.redacted(),
            "postgres://app:***@db:5432/refunds?sslmode=require"
        );
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            Secret::new(crate::config::DEFAULT_DATABASE_URL.into()).redacted(),
            crate::config::DEFAULT_DATABASE_URL
        );
        assert_eq!(
            Secret::new("postgres://postgres@127.0.0.1/x".into()).redacted(),
            "postgres://postgres@127.0.0.1/x"
        );
    }

    #[test]
    fn api_keys_never_show() {
        let s = Secret::opaque("sk_live_abc123".into());
        assert!(!format!("{s:?}").contains("abc123"));
        assert_eq!(s.redacted(), "[redacted]");
        assert_eq!(s.expose(), "sk_live_abc123");
    }
}
