//! The HTTP side: tiny_http's blocking server, a few threads taking requests from it, each
//! request read into a [`Request`] and answered with the [`Reply`] the routes give.

use super::backends::Backends;
use super::reply::Reply;
use super::request::{Method, Params, Request};
use super::routes::{self, Guard};
use eventflow::store::InboxStore;
use std::io::Read;
use std::sync::Arc;

/// Threads answering requests: a browser opens a few connections at once, and one slow
/// database query should not hold up the other pages. More would only wait on the two
/// database connections the console keeps.
const THREADS: usize = 4;

/// The largest form body read (a corrected quarantine entry included); a larger one is
/// refused with 413 rather than held in memory.
const MAX_FORM_BYTES: u64 = 1 << 20;

/// Serves requests until the process is stopped. Returns only if every thread ended (the
/// listening socket failed).
pub fn serve<S: InboxStore>(server: tiny_http::Server, backends: Backends<S>, guard: Guard) {
    let server = Arc::new(server);
    let backends = Arc::new(backends);
    let guard = Arc::new(guard);
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (server, backends, guard) = (server.clone(), backends.clone(), guard.clone());
            std::thread::spawn(move || {
                for request in server.incoming_requests() {
                    answer(&backends, &guard, request);
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

fn answer<S: InboxStore>(backends: &Backends<S>, guard: &Guard, mut raw: tiny_http::Request) {
    let reply = match read(&mut raw) {
        Ok(request) => routes::handle(backends, guard, &request),
        Err(refusal) => refusal,
    };
    // A browser that went away before the answer is nobody's problem.
    let _ = raw.respond(response(reply));
}

/// The request as the routes see it, or the refusal of one too large or not UTF-8.
fn read(raw: &mut tiny_http::Request) -> Result<Request, Reply> {
    let method = match raw.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => Method::Get,
        tiny_http::Method::Post => Method::Post,
        _ => Method::Other,
    };
    let mut request = Request::new(method, raw.url());
    request.host = header(raw, "Host");
    request.authorization = header(raw, "Authorization");
    request.cookies = header(raw, "Cookie");
    if method == Method::Post {
        let mut body = String::new();
        raw.as_reader()
            .take(MAX_FORM_BYTES + 1)
            .read_to_string(&mut body)
            .map_err(|_| Reply::plain(400, "the form is not UTF-8"))?;
        if body.len() as u64 > MAX_FORM_BYTES {
            return Err(Reply::plain(413, "the form is larger than 1 MiB"));
        }
        request.form = Params::parse(&body);
    }
    Ok(request)
}

/// The values of header `name`, joined with `; ` when it came several times (as `Cookie` may).
fn header(raw: &tiny_http::Request, name: &'static str) -> Option<String> {
    let values: Vec<&str> = raw
        .headers()
        .iter()
        .filter(|header| header.field.equiv(name))
        .map(|header| header.value.as_str())
        .collect();
    (!values.is_empty()).then(|| values.join("; "))
}

fn response(reply: Reply) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
            .expect("header names and values here are ASCII without line breaks")
    };
    let mut headers = vec![header("Content-Type", reply.content_type)];
    headers.extend(
        Reply::SECURITY_HEADERS
            .iter()
            .map(|(name, value)| header(name, value)),
    );
    headers.extend(
        reply
            .headers
            .iter()
            .map(|(name, value)| header(name, value)),
    );
    let body = reply.body.into_bytes();
    let length = body.len();
    tiny_http::Response::new(
        reply.status.into(),
        headers,
        std::io::Cursor::new(body),
        Some(length),
        None,
    )
}
