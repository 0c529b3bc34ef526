//! Cross-site request forgery: every action is a POST that must carry this process's token
//! twice, in a hidden form field and in a `SameSite=Strict` cookie.
//!
//! Another site can make an operator's browser post a form here, but cannot read a page of
//! the console to learn the token (the same-origin policy), and with `SameSite=Strict` the
//! browser does not send the cookie along with a request another site started. The token is
//! random per process, so a restart invalidates pages left open (their POSTs get 403: reload).

use super::request::Request;
use subtle::ConstantTimeEq;

/// The token bytes: 256 bits from the operating system's generator.
const TOKEN_BYTES: usize = 32;

/// This process's token, and the cookie that carries it.
#[derive(Clone)]
pub struct Csrf {
    token: String,
    cookie_name: String,
}

impl std::fmt::Debug for Csrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csrf")
            .field("cookie_name", &self.cookie_name)
            .finish_non_exhaustive()
    }
}

impl Csrf {
    /// The hidden form field's name.
    pub const FIELD: &'static str = "csrf";

    /// A fresh random token for a console on `port`. Cookies do not tell ports apart, so the
    /// port is in the cookie's name: two consoles on one host keep their own.
    pub fn new(port: u16) -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self::with_token(hex(&bytes), port))
    }

    /// A console with a known token (tests).
    pub fn with_token(token: String, port: u16) -> Self {
        Self {
            token,
            cookie_name: format!("eventflow_csrf_{port}"),
        }
    }

    /// The token, for the hidden field of each form.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The `Set-Cookie` value sent with every page. `HttpOnly` since no script needs it.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; SameSite=Strict; HttpOnly",
            self.cookie_name, self.token
        )
    }

    /// Whether a POST carries the token in both its form and its cookie. Compared in constant
    /// time, so the answer's timing tells nothing about how much of a guess was right.
    pub fn accepts(&self, request: &Request) -> bool {
        let expected = self.token.as_bytes();
        let form = request.form.get(Self::FIELD).unwrap_or_default().as_bytes();
        let cookie = request
            .cookie(&self.cookie_name)
            .unwrap_or_default()
            .as_bytes();
        bool::from(form.ct_eq(expected) & cookie.ct_eq(expected))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::request::{Method, Params};

    fn post(form: &str, cookies: Option<&str>) -> Request {
        let mut request = Request::new(Method::Post, "/dead-letters/requeue");
        request.form = Params::parse(form);
        request.cookies = cookies.map(str::to_string);
        request
    }

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (Csrf::new(8080).unwrap(), Csrf::new(8080).unwrap());
        assert_ne!(a.token(), b.token());
        assert_eq!(a.token().len(), 2 * TOKEN_BYTES);
        assert!(a.set_cookie().starts_with("eventflow_csrf_8080="));
        assert!(a.set_cookie().contains("SameSite=Strict"));
    }

    #[test]
    fn a_post_needs_the_token_in_both_form_and_cookie() {
        let csrf = Csrf::with_token("t0ken".into(), 9);
        let cookie = Some("eventflow_csrf_9=t0ken");
        assert!(csrf.accepts(&post("key=1&csrf=t0ken", cookie)));
        assert!(!csrf.accepts(&post("key=1", cookie)), "no field");
        assert!(!csrf.accepts(&post("key=1&csrf=t0ken", None)), "no cookie");
        assert!(!csrf.accepts(&post("csrf=t0ke", Some("eventflow_csrf_9=t0ke"))));
        assert!(!csrf.accepts(&post("csrf=t0ken", Some("eventflow_csrf_8=t0ken"))));
        assert!(!csrf.accepts(&post("csrf=", Some("eventflow_csrf_9="))));
    }
}
