//! What the console answers: a status, a body and headers, before the server writes them.

use super::html::Html;

/// One response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// Headers beyond those every reply gets (see [`Reply::SECURITY_HEADERS`]).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// Headers on every reply. The policy allows no script at all and only inline style, so
    /// even a value that escaped escaping could not run; the page may not be framed
    /// (clickjacking an action button); nothing is cached, since pages show live state and
    /// the CSRF token.
    pub const SECURITY_HEADERS: [(&'static str, &'static str); 5] = [
        (
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-store"),
    ];

    /// An HTML page.
    pub fn page(status: u16, html: Html) -> Self {
        Self {
            status,
            content_type: "text/html; charset=utf-8",
            body: html.into_string(),
            headers: Vec::new(),
        }
    }

    /// A plain-text answer (refusals that come before any page is drawn).
    pub fn plain(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{text}\n"),
            headers: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }
}
