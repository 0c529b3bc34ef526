//! A request as the console's routes see it: method, path, query and form parameters, and the
//! few headers the checks read. The server turns each HTTP request into one, so the routes and
//! pages are tested without a socket.

use url::form_urlencoded;

/// The HTTP methods the console answers; every other is [`Method::Other`] (405).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Pages, and the `HEAD` of them.
    Get,
    /// Actions.
    Post,
    /// Anything else.
    Other,
}

/// Decoded `name=value` pairs, in order; a name given twice keeps both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` text: a query string or a form body.
    pub fn parse(encoded: &str) -> Self {
        Self(
            form_urlencoded::parse(encoded.as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; `None` when absent or blank, as an empty filter
    /// field in a form means no filter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .filter(|value| !value.is_empty())
    }

    /// The first value of `name` exactly as sent (a JSON text area, say), unless absent or blank.
    pub fn get_untrimmed(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.trim().is_empty())
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string's parameters.
    pub query: Params,
    /// The form body's parameters (empty unless a form was posted).
    pub form: Params,
    /// The `Host` header.
    pub host: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Cookie` header(s), joined with `; `.
    pub cookies: Option<String>,
}

impl Request {
    /// A request for `target` (path and query, as on the request line) with no headers and no
    /// body.
    pub fn new(method: Method, target: &str) -> Self {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Self {
            method,
            path: path.to_string(),
            query: Params::parse(query),
            form: Params::default(),
            host: None,
            authorization: None,
            cookies: None,
        }
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .as_deref()?
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_form_and_cookies_are_decoded() {
        let mut request = Request::new(
            Method::Get,
            "/dead-letters?event_type=Order+Paid&error=&x=%3Cb%3E",
        );
        assert_eq!(request.path, "/dead-letters");
        assert_eq!(request.query.get("event_type"), Some("Order Paid"));
        assert_eq!(
            request.query.get("error"),
            None,
            "a blank field is no filter"
        );
        assert_eq!(request.query.get("x"), Some("<b>"));
        request.cookies = Some("a=1; eventflow_csrf_80=tok; b=2".into());
        assert_eq!(request.cookie("eventflow_csrf_80"), Some("tok"));
        assert_eq!(request.cookie("c"), None);
        request.form = Params::parse("data=%7B%22a%22%3A1%7D%0A");
        assert_eq!(request.form.get_untrimmed("data"), Some("{\"a\":1}\n"));
    }
}
