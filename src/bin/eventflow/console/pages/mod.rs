//! The console's pages, one file per section: each draws its listing (GET) and carries out
//! its actions (POST), through the operations API only.

pub mod dead_letters;
pub mod outbox;
pub mod overview;
pub mod parked;
pub mod quarantine;

use super::backends::Backends;
use super::html::Html;
use super::layout;
use super::request::Params;
use chrono::{DateTime, Utc};
use eventflow::admin::AdminError;
use eventflow::store::{Cursor, InboxStore};

/// Most items on a page unless `limit` says otherwise; and the most `limit` may say, as the
/// CLI's `--limit`.
pub const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 10_000;

/// What a page needs besides the backends: the CSRF token its forms carry.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The token for the hidden field of every form.
    pub csrf_token: &'a str,
}

/// Why a page or an action could not be done; decides the status code.
#[derive(Debug)]
pub enum PageError {
    /// A parameter could not be understood (400).
    BadInput(String),
    /// What the operations API said.
    Admin(AdminError),
}

impl From<AdminError> for PageError {
    fn from(error: AdminError) -> Self {
        Self::Admin(error)
    }
}

impl PageError {
    /// The status code: 400 bad input, 404 not found, 409 wrong state, 503 unreachable, else
    /// 500.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadInput(_) => 400,
            Self::Admin(error) if error.is_unreachable() => 503,
            Self::Admin(AdminError::NotFound { .. } | AdminError::NotInstalled { .. }) => 404,
            Self::Admin(AdminError::WrongState(_)) => 409,
            Self::Admin(AdminError::InvalidEvent(_) | AdminError::InvalidInput(_)) => 400,
            Self::Admin(_) => 500,
        }
    }

    /// The message shown, with any secret of the connection settings scrubbed (a driver's
    /// message can quote them).
    pub fn message<S: InboxStore>(&self, backends: &Backends<S>) -> String {
        let text = match self {
            Self::BadInput(message) => message.clone(),
            Self::Admin(error) if error.is_unreachable() => format!("cannot connect: {error}"),
            Self::Admin(error) => error.to_string(),
        };
        backends.scrubber.scrub(&text)
    }

    /// The error page.
    pub fn page<S: InboxStore>(&self, backends: &Backends<S>) -> Html {
        let mut body = Html::new();
        layout::message(&mut body, "problem", &self.message(backends));
        body.raw("<p>");
        layout::link(&mut body, "/", "Back to the overview");
        body.raw("</p>");
        layout::page("Could not do that", "", body)
    }
}

/// `limit`: 1 to 10,000, [`DEFAULT_LIMIT`] when absent.
pub fn limit(params: &Params) -> Result<usize, PageError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                PageError::BadInput(format!("limit {text:?} is not a number from 1 to 10000"))
            }),
    }
}

/// `after`: a listing cursor, as the previous page's "next" link wrote it.
pub fn cursor(params: &Params) -> Result<Option<Cursor>, PageError> {
    params
        .get("after")
        .map(|text| {
            text.parse::<Cursor>()
                .map_err(|error| PageError::BadInput(format!("after: {error}")))
        })
        .transpose()
}

/// A time parameter: RFC 3339, or an age such as `2h` meaning that long ago.
pub fn time(params: &Params, name: &str) -> Result<Option<DateTime<Utc>>, PageError> {
    params
        .get(name)
        .map(|text| {
            super::super::text::parse_time(text)
                .map_err(|error| PageError::BadInput(format!("{name}: {error}")))
        })
        .transpose()
}

/// A parameter an action cannot do without.
pub fn required<'p>(params: &'p Params, name: &str) -> Result<&'p str, PageError> {
    params
        .get(name)
        .ok_or_else(|| PageError::BadInput(format!("{name} is missing")))
}

/// Where an action's "back" link goes: the page the form was on, when it names a path of this
/// console, else the overview. Never another site: `//host`, `\` (which browsers read as `/`)
/// and whitespace or controls (which browsers drop from URLs: `/\t/host`) are refused.
pub fn back(params: &Params) -> &str {
    params
        .get("back")
        .filter(|path| {
            path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains(|c: char| c == '\\' || c.is_whitespace() || c.is_control())
        })
        .unwrap_or("/")
}

/// The page an action answers with: what was done, and the way back.
pub fn done(title: &str, what: &str, back: &str) -> Html {
    let mut body = Html::new();
    layout::message(&mut body, "notice", what);
    body.raw("<p>");
    layout::link(&mut body, back, "Back");
    body.raw(" · ");
    layout::link(&mut body, "/", "Overview");
    body.raw("</p>");
    layout::page(title, "", body)
}

/// The current page's path and query, as the "back" field of its forms.
pub fn here(path: &str, params: &[(&str, &str)]) -> String {
    layout::href(path, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursors_are_checked() {
        assert_eq!(limit(&Params::parse("")).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(&Params::parse("limit=7")).unwrap(), 7);
        for bad in ["limit=0", "limit=10001", "limit=x"] {
            assert!(
                matches!(limit(&Params::parse(bad)), Err(PageError::BadInput(_))),
                "{bad}"
            );
        }
        assert!(cursor(&Params::parse("after=nonsense")).is_err());
        let text = "2025-01-01T00:00:00.000001Z/7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33";
        let params = Params::parse(&layout::href("/", &[("after", text)])[2..]);
        assert_eq!(cursor(&params).unwrap().unwrap().to_string(), text);
    }

    #[test]
    fn back_links_stay_on_the_console() {
        assert_eq!(
            back(&Params::parse("back=%2Fparked%3Fafter%3Dx")),
            "/parked?after=x"
        );
        for bad in [
            "back=https://evil.example/",
            "back=//evil.example",
            "back=/%5Cevil",
            "back=/%09/evil.example",
            "",
        ] {
            assert_eq!(back(&Params::parse(bad)), "/", "{bad}");
        }
    }
}
