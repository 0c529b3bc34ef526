//! Routing: the checks every request passes (its `Host`, then basic authentication, then for
//! a POST the CSRF token), and which page or action a method and path name.

use super::auth::{BasicAuth, CHALLENGE};
use super::backends::Backends;
use super::csrf::Csrf;
use super::html::Html;
use super::layout;
use super::listen::HostCheck;
use super::pages::{dead_letters, outbox, overview, parked, quarantine, Ctx, PageError};
use super::reply::Reply;
use super::request::{Method, Request};
use eventflow::store::InboxStore;

/// What every request is checked against.
#[derive(Debug)]
pub struct Guard {
    /// Which `Host` headers are answered.
    pub hosts: HostCheck,
    /// The user and password, when the console asks for them.
    pub auth: Option<BasicAuth>,
    /// The CSRF token.
    pub csrf: Csrf,
}

type Page<S> = fn(&Backends<S>, Ctx<'_>, &Request) -> Result<Html, PageError>;
type Action<S> = fn(&Backends<S>, &Request) -> Result<Html, PageError>;

fn page<S: InboxStore>(path: &str) -> Option<Page<S>> {
    Some(match path {
        "/" => overview::show,
        "/dead-letters" => dead_letters::list,
        "/event" => dead_letters::show,
        "/quarantine" => quarantine::list,
        "/quarantine/entry" => quarantine::show,
        "/parked" => parked::list,
        "/outbox" => outbox::list,
        _ => return None,
    })
}

fn action<S: InboxStore>(path: &str) -> Option<Action<S>> {
    Some(match path {
        "/dead-letters/requeue" => dead_letters::requeue,
        "/dead-letters/requeue-matching" => dead_letters::requeue_matching,
        "/dead-letters/skip" => dead_letters::skip,
        "/quarantine/replay" => quarantine::replay,
        "/parked/skip" => parked::skip,
        "/outbox/requeue" => outbox::requeue,
        "/outbox/requeue-all" => outbox::requeue_all,
        _ => return None,
    })
}

/// Answers one request.
pub fn handle<S: InboxStore>(backends: &Backends<S>, guard: &Guard, request: &Request) -> Reply {
    if !guard.hosts.accepts(request) {
        // 421 Misdirected Request: this console does not answer to that name.
        return Reply::plain(
            421,
            "this console answers only to loopback host names (localhost, 127.0.0.1, [::1])",
        );
    }
    if let Some(auth) = &guard.auth {
        if !auth.accepts(request) {
            return Reply::plain(401, "authentication required")
                .with_header("WWW-Authenticate", CHALLENGE.to_string());
        }
    }
    let ctx = Ctx {
        csrf_token: guard.csrf.token(),
    };
    let reply = match request.method {
        Method::Get => match page::<S>(&request.path) {
            Some(page) => answer(backends, page(backends, ctx, request)),
            None => not_found(),
        },
        Method::Post => match action::<S>(&request.path) {
            Some(_) if !guard.csrf.accepts(request) => Reply::page(403, forbidden()),
            Some(action) => answer(backends, action(backends, request)),
            None => not_found(),
        },
        Method::Other => {
            Reply::plain(405, "method not allowed").with_header("Allow", "GET, POST".into())
        }
    };
    // Every page (re)sets the cookie, so a browser holds it before it posts any form.
    reply.with_header("Set-Cookie", guard.csrf.set_cookie())
}

fn answer<S: InboxStore>(backends: &Backends<S>, result: Result<Html, PageError>) -> Reply {
    match result {
        Ok(html) => Reply::page(200, html),
        Err(error) => Reply::page(error.status(), error.page(backends)),
    }
}

fn not_found() -> Reply {
    let mut body = Html::new();
    layout::message(&mut body, "problem", "There is no such page.");
    body.raw("<p>");
    layout::link(&mut body, "/", "Back to the overview");
    body.raw("</p>");
    Reply::page(404, layout::page("Not found", "", body))
}

fn forbidden() -> Html {
    let mut body = Html::new();
    layout::message(
        &mut body,
        "problem",
        "This action was refused: it did not carry the console's CSRF token. Actions come \
         only from the console's own forms; if the console was restarted since the page was \
         loaded, go back and reload it.",
    );
    body.raw("<p>");
    layout::link(&mut body, "/", "Back to the overview");
    body.raw("</p>");
    layout::page("Refused", "", body)
}
