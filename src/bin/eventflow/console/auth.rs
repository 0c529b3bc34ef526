//! HTTP basic authentication, when the console is started with `--basic-auth-user`.
//!
//! Basic credentials cross the network readable by anyone on the path: outside loopback, put
//! the console behind a TLS-terminating proxy.

use super::request::Request;
use base64::Engine;
use subtle::ConstantTimeEq;

/// The one user allowed in, and the password from `EVENTFLOW_CONSOLE_PASSWORD`. Its `Debug`
/// never shows the password.
#[derive(Clone)]
pub struct BasicAuth {
    user: String,
    password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The realm the browser shows in its login prompt.
pub const CHALLENGE: &str = "Basic realm=\"eventflow console\", charset=\"UTF-8\"";

impl BasicAuth {
    /// `user` with `password`. Both must be non-empty, and the user name may not hold `:`
    /// (basic credentials are `user:password`, split at the first colon).
    pub fn new(user: String, password: String) -> Result<Self, String> {
        if user.is_empty() || user.contains(':') {
            return Err("--basic-auth-user must be a non-empty name without ':'".into());
        }
        if password.is_empty() {
            return Err("EVENTFLOW_CONSOLE_PASSWORD is empty".into());
        }
        Ok(Self { user, password })
    }

    /// Whether the request's `Authorization` header names this user with this password. The
    /// user and the password are both compared in constant time (and both always compared),
    /// so timing tells nothing about which part of a guess was wrong.
    pub fn accepts(&self, request: &Request) -> bool {
        let Some(encoded) = request
            .authorization
            .as_deref()
            .and_then(|header| header.strip_prefix("Basic "))
        else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&byte| byte == b':') else {
            return false;
        };
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        let user_ok = user.ct_eq(self.user.as_bytes());
        let password_ok = password.ct_eq(self.password.as_bytes());
        bool::from(user_ok & password_ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::request::Method;

    fn with_credentials(header: Option<String>) -> Request {
        let mut request = Request::new(Method::Get, "/");
        request.authorization = header;
        request
    }

    fn basic(credentials: &str) -> Option<String> {
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        ))
    }

    #[test]
    fn only_the_right_user_and_password_get_in() {
        let auth = BasicAuth::new("ops".into(), "s3cret:pw".into()).unwrap();
        assert!(auth.accepts(&with_credentials(basic("ops:s3cret:pw"))));
        assert!(!auth.accepts(&with_credentials(basic("ops:s3cret"))));
        assert!(!auth.accepts(&with_credentials(basic("opz:s3cret:pw"))));
        assert!(!auth.accepts(&with_credentials(basic("ops"))));
        assert!(!auth.accepts(&with_credentials(None)));
        assert!(!auth.accepts(&with_credentials(Some("Basic !!!".into()))));
        assert!(!auth.accepts(&with_credentials(Some("Bearer x".into()))));
    }

    #[test]
    fn bad_settings_are_refused_and_the_password_never_shown() {
        assert!(BasicAuth::new(String::new(), "pw".into()).is_err());
        assert!(BasicAuth::new("a:b".into(), "pw".into()).is_err());
        assert!(BasicAuth::new("ops".into(), String::new()).is_err());
        let auth = BasicAuth::new("ops".into(), "Pw-9-secret".into()).unwrap();
        assert!(!format!("{auth:?}").contains("Pw-9"));
    }
}
