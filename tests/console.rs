//! `eventflow console`, run as a process: the refusals that come before it listens, basic
//! authentication, escaping and CSRF seen over plain HTTP, and a dead letter requeued by
//! clicking its button in a real headless Chromium, driven through chromedriver over the
//! WebDriver protocol, then handled by a consumer.
//!
//! The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them):
//! without them it is skipped, or fails under `EVENTFLOW_REQUIRE_SERVICES=1`. With
//! `EVENTFLOW_CONSOLE_SCREENSHOT=<file.png>` it saves a screenshot of the overview there.

mod support;

use base64::Engine;
use eventflow::admin::publish_event;
use eventflow::outbox::OutboxTable;
use eventflow::store::outbox::{
    ClaimDue, Delivery, OutboxRow, OutboxStatus, OutboxStore, PostgresOutbox, RowOutcome,
};
use eventflow::store::{InboxStore, PostgresStore};
use eventflow::transport::{RedisStreams, Transport};
use eventflow::{ConsumerHandle, Event, EventStatus, HandlerResult, InboxConsumer};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{postgres_url, redis_url, unique_name, wait_until};

const WAIT: Duration = Duration::from_secs(30);

/// Stored in the dead letter's payload and error: must reach the page as text, never markup.
const SCRIPT: &str = "<script>alert('xss')</script>";
const IMG: &str = "<img src=x onerror=alert(1)>";

/// `eventflow` with only the environment given (no EVENTFLOW_* from the test's own leaks in).
fn eventflow(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTFLOW_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).args(args);
    command
}

/// A console process, killed when dropped.
struct Console {
    child: Child,
    /// `http://127.0.0.1:PORT`, without the final slash.
    url: String,
    /// The line it printed on starting.
    banner: String,
}

impl Console {
    /// Starts `eventflow console --listen 127.0.0.1:0 ...` and waits for the address it prints.
    fn start(env: &[(&str, &str)], extra: &[&str]) -> Self {
        let mut args = vec!["console", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = eventflow(env, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start eventflow console");
        let mut banner = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        if banner.is_empty() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the console did not start: {stderr}");
        }
        let url = banner
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {banner:?}"))
            .trim_end_matches('/')
            .to_string();
        Self { child, url, banner }
    }

    fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that reports every status as it is (the tests look at 401s and 403s).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response's status, one header and body.
struct Answer {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.expect("the console answers");
    Answer {
        status: response.status().as_u16(),
        set_cookie: response
            .headers()
            .get("set-cookie")
            .map(|value| value.to_str().unwrap().to_string()),
        body: response.body_mut().read_to_string().unwrap(),
    }
}

fn get(url: &str) -> Answer {
    answer(agent().get(url).call())
}

fn post(url: &str, form: &str, cookie: Option<&str>) -> Answer {
    let mut request = agent()
        .post(url)
        .header("Content-Type", "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    answer(request.send(form))
}

/// The status line's code of a request written by hand: for headers a client would not let
/// us forge, such as `Host`.
fn raw_status(address: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"))
}

/// The CSRF cookie (`name=value`) and token a page hands out, for posting as its forms do.
struct Session {
    cookie: String,
    token: String,
}

impl Session {
    fn from(page: &Answer) -> Self {
        let cookie = page
            .set_cookie
            .as_deref()
            .expect("pages set the CSRF cookie");
        Self {
            cookie: cookie.split(';').next().unwrap().to_string(),
            token: form_token(&page.body).to_string(),
        }
    }

    /// Posts `form` (plus the token) to `path` of `console`.
    fn post(&self, console: &Console, path: &str, form: &str) -> Answer {
        let url = format!("{}{path}", console.url);
        post(
            &url,
            &format!("{form}&csrf={}", self.token),
            Some(&self.cookie),
        )
    }
}

/// The target of the link whose text starts with `label`, unescaped.
fn link_before(html: &str, label: &str) -> String {
    let end = html
        .find(&format!("\">{label}"))
        .unwrap_or_else(|| panic!("no link {label:?} in {html}"));
    let start = html[..end].rfind("href=\"").unwrap() + 6;
    html[start..end].replace("&amp;", "&")
}

/// The CSRF token in a page's forms.
fn form_token(html: &str) -> &str {
    let start = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with the token")
        + 19;
    &html[start..start + 64]
}

#[test]
fn refuses_a_public_address_without_authentication_and_half_set_auth() {
    let database = ["--database-url", "sqlite:/nonexistent/never-opened.db"];
    /// The environment, the flags, and what the refusal must say.
    type Refusal<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let refusals: [Refusal; 3] = [
        (&[], &["--listen", "0.0.0.0:0"], "--basic-auth-user"),
        (
            &[],
            &["--basic-auth-user", "ops"],
            "EVENTFLOW_CONSOLE_PASSWORD",
        ),
        (
            &[("EVENTFLOW_CONSOLE_PASSWORD", "Pw-9-secret")],
            &[],
            "--basic-auth-user is not",
        ),
    ];
    for (env, args, expected) in refusals {
        let mut all = vec!["console"];
        all.extend_from_slice(&database);
        all.extend_from_slice(args);
        let output = eventflow(env, &all).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("Pw-9"), "{stderr}");
    }
}

#[test]
fn basic_authentication_guards_every_page() {
    let file = std::env::temp_dir().join(format!("{}.db", unique_name("console_auth")));
    let url = format!("sqlite:{}", file.display());
    let env = [
        ("EVENTFLOW_DATABASE_URL", url.as_str()),
        ("EVENTFLOW_CONSOLE_PASSWORD", "Pw-9 secret:x"),
    ];
    let migrated = eventflow(&env, &["migrate"]).output().unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    let console = Console::start(&env, &["--basic-auth-user", "ops"]);
    assert!(
        console.banner.contains("basic authentication"),
        "{}",
        console.banner
    );
    assert!(!console.banner.contains("Pw-9"));

    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    for path in ["/", "/dead-letters", "/outbox"] {
        let url = format!("{}{path}", console.url);
        let anonymous = agent().get(&url).call().unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let challenge = anonymous.headers().get("www-authenticate").unwrap();
        assert!(challenge.to_str().unwrap().starts_with("Basic realm="));
        for wrong in ["ops:Pw-9 secret", "ops:Pw-9 secret:y", "opz:Pw-9 secret:x"] {
            let refused = agent()
                .get(&url)
                .header("Authorization", basic(wrong))
                .call();
            assert_eq!(answer(refused).status, 401, "{path} as {wrong}");
        }
        let allowed = agent()
            .get(&url)
            .header("Authorization", basic("ops:Pw-9 secret:x"))
            .call();
        let allowed = answer(allowed);
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.body);
        assert!(allowed.body.contains("eventflow console"));
    }
    // Authentication comes before the CSRF check: an anonymous POST learns nothing.
    let post_url = format!("{}/dead-letters/requeue", console.url);
    assert_eq!(post(&post_url, "key=x", None).status, 401);
    drop(console);
    let _ = std::fs::remove_file(&file);
}

/// A PostgreSQL inbox and a Redis stream of the test's own, removed at the end, and a
/// consumer whose handler fails (once, then dead letter) on `Broken` events until `fixed`.
struct Setup {
    table: String,
    /// Not created unless a test migrates it: then the outbox shows as installed.
    outbox_table: String,
    stream: String,
    group: String,
    store: Arc<PostgresStore>,
    fixed: Arc<AtomicBool>,
}

impl Setup {
    fn new(test: &str) -> Option<Self> {
        if !support::postgres_available(test) || !support::redis_available(test) {
            return None;
        }
        let table = unique_name("console");
        let store = PostgresStore::builder(postgres_url())
            .table(&table)
            .pool_size(4)
            .build()
            .unwrap();
        store.migrate().unwrap();
        Some(Self {
            table,
            outbox_table: unique_name("console_outbox"),
            stream: unique_name("console_stream"),
            group: "billing".into(),
            store: Arc::new(store),
            fixed: Arc::new(AtomicBool::new(false)),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EVENTFLOW_DATABASE_URL", postgres_url()),
            ("EVENTFLOW_REDIS_URL", redis_url()),
            ("EVENTFLOW_TABLE", self.table.clone()),
            ("EVENTFLOW_OUTBOX_TABLE", self.outbox_table.clone()),
            ("EVENTFLOW_STREAM", self.stream.clone()),
            ("EVENTFLOW_GROUP", self.group.clone()),
        ]
    }

    fn console(&self) -> Console {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Console::start(&env, &[])
    }

    fn consumer(&self) -> ConsumerHandle {
        let fixed = self.fixed.clone();
        InboxConsumer::builder()
            .redis(redis_url())
            .store(self.store.clone())
            .stream(&self.stream)
            .group(&self.group)
            .readers(1)
            .workers(1)
            .block(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(50))
            .max_attempts(1)
            .handler(move |_tx, row| -> HandlerResult {
                if row.event.event_type == "Broken" && !fixed.load(Ordering::SeqCst) {
                    return Err(format!("billing is down {IMG}").into());
                }
                Ok(())
            })
            .build()
            .unwrap()
            .start()
            .unwrap()
    }

    /// Publishes a `Broken` event carrying markup and waits until it is a dead letter.
    fn dead_letter(&self) -> Event {
        let mut event = Event::new(
            "Broken",
            uuid::Uuid::new_v4(),
            json!({"note": SCRIPT, "order": 7}),
        );
        event.event_id = unique_name("broken");
        let redis = RedisStreams::builder(redis_url()).build().unwrap();
        publish_event(&redis, &self.stream, &event).unwrap();
        assert!(
            wait_until(WAIT, || self.status(&event.event_id)
                == Some(EventStatus::DeadLetter)),
            "the event was not dead-lettered"
        );
        event
    }

    fn status(&self, event_id: &str) -> Option<EventStatus> {
        let filter = eventflow::store::RowFilter {
            event_id: Some(event_id.to_string()),
            ..Default::default()
        };
        self.store
            .list_rows(&filter, &eventflow::store::Page::first(1))
            .unwrap()
            .pop()
            .map(|record| record.row.status)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(mut db) = postgres::Client::connect(&postgres_url(), postgres::NoTls) {
            support::drop_inbox_table(&mut db, &self.table, &[]);
            let outbox = &self.outbox_table;
            let _ = db.batch_execute(&format!(
                "DROP TABLE IF EXISTS {outbox}; \
                 DELETE FROM eventflow_migrations WHERE target = 'outbox:{outbox}'"
            ));
        }
        if let Ok(client) = redis::Client::open(redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&self.stream).query(&mut conn);
            }
        }
    }
}

/// Over plain HTTP: values from the stream are shown escaped; a POST without the token, or
/// with the token but not the cookie, is refused with 403 and changes nothing; a request for
/// another host name is refused; with the token and cookie of a page, the action is done.
#[test]
fn pages_escape_stored_values_and_actions_need_the_csrf_token() {
    let Some(setup) =
        Setup::new("console::pages_escape_stored_values_and_actions_need_the_csrf_token")
    else {
        return;
    };
    let consumer = setup.consumer();
    let event = setup.dead_letter();
    let console = setup.console();

    let shown = get(&format!("{}/event?key={}", console.url, event.event_id));
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert!(!shown.body.contains("<script"), "{}", shown.body);
    assert!(!shown.body.contains("<img"), "{}", shown.body);
    assert!(shown
        .body
        .contains("&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;"));
    assert!(shown
        .body
        .contains("billing is down &lt;img src=x onerror=alert(1)&gt;"));
    let listed = get(&format!("{}/dead-letters", console.url));
    assert!(listed.body.contains(&event.event_id), "{}", listed.body);
    assert!(!listed.body.contains("<img"), "{}", listed.body);

    let set_cookie = listed.set_cookie.as_deref().unwrap_or_default();
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let session = Session::from(&listed);
    let (cookie, token) = (&session.cookie, &session.token);
    let requeue = format!("{}/dead-letters/requeue", console.url);
    let key = format!("key={}", event.event_id);
    let forged = [
        post(&requeue, &key, None),
        post(&requeue, &key, Some(cookie)),
        post(&requeue, &format!("{key}&csrf={token}"), None),
        post(
            &requeue,
            &format!("{key}&csrf={}", "0".repeat(64)),
            Some(cookie),
        ),
    ];
    for refused in forged {
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(refused.body.contains("CSRF token"), "{}", refused.body);
    }
    assert_eq!(setup.status(&event.event_id), Some(EventStatus::DeadLetter));

    let address = console.address();
    let foreign = "GET / HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(address, foreign), 421);
    let own = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(address, &own), 200);

    // Skipping through the console, with the page's token and cookie, works.
    let skipped = session.post(
        &console,
        "/dead-letters/skip",
        &format!("{key}&back=%2Fdead-letters"),
    );
    assert_eq!(skipped.status, 200, "{}", skipped.body);
    assert!(
        skipped.body.contains("Skipped dead letter"),
        "{}",
        skipped.body
    );
    let again = session.post(&console, "/dead-letters/skip", &key);
    assert_eq!(again.status, 409, "skipped twice: {}", again.body);
    consumer.shutdown(WAIT).unwrap();
}

/// Dead letters a page at a time: the next page's link keeps the page size and the filters,
/// and the last page has none; filters narrow the listing and the bulk requeue, which
/// requeues every match across pages.
#[test]
fn dead_letters_page_by_page_and_requeued_by_filter() {
    let Some(setup) = Setup::new("console::dead_letters_page_by_page_and_requeued_by_filter")
    else {
        return;
    };
    let consumer = setup.consumer();
    let events: Vec<Event> = (0..3).map(|_| setup.dead_letter()).collect();
    let console = setup.console();
    let shown = |page: &Answer| {
        events
            .iter()
            .filter(|event| page.body.contains(&event.event_id))
            .count()
    };
    let first = get(&format!(
        "{}/dead-letters?event_type=Broken&limit=2",
        console.url
    ));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(shown(&first), 2);
    let next = link_before(&first.body, "Next page");
    assert!(
        next.contains("limit=2") && next.contains("event_type=Broken"),
        "{next}"
    );
    let second = get(&format!("{}{next}", console.url));
    assert_eq!(shown(&second), 1, "{}", second.body);
    assert!(!second.body.contains("Next page"), "{}", second.body);
    assert!(second.body.contains("First page"), "{}", second.body);

    let other = get(&format!("{}/dead-letters?event_type=Other", console.url));
    assert_eq!(shown(&other), 0);
    assert!(other
        .body
        .contains("No dead letters matching these filters"));
    let bad = get(&format!("{}/dead-letters?since=yesterday", console.url));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("since"), "{}", bad.body);

    let session = Session::from(&first);
    let none = session.post(
        &console,
        "/dead-letters/requeue-matching",
        "event_type=Other",
    );
    assert!(
        none.body.contains("Requeued 0 dead letters"),
        "{}",
        none.body
    );
    setup.fixed.store(true, Ordering::SeqCst);
    let all = session.post(
        &console,
        "/dead-letters/requeue-matching",
        "event_type=Broken",
    );
    assert!(all.body.contains("Requeued 3 dead letters"), "{}", all.body);
    assert!(wait_until(WAIT, || events.iter().all(|event| setup
        .status(&event.event_id)
        == Some(EventStatus::Processed))));
    consumer.shutdown(WAIT).unwrap();
}

/// The other sections over HTTP: the outbox page lists a dead letter and requeues it; a
/// malformed entry is listed escaped in the quarantine and replayed with corrected data, then
/// handled; the dead letter's aggregate is listed as parked and released by skipping it.
#[test]
fn quarantine_replay_parked_release_and_outbox_requeue() {
    let Some(setup) = Setup::new("console::quarantine_replay_parked_release_and_outbox_requeue")
    else {
        return;
    };
    let outbox = PostgresOutbox::builder(postgres_url())
        .table(&setup.outbox_table)
        .pool_size(1)
        .build()
        .unwrap();
    outbox.migrate().unwrap();
    let mut db = postgres::Client::connect(&postgres_url(), postgres::NoTls).unwrap();
    let mut tx = db.transaction().unwrap();
    let refused = Event::new("OrderPlaced", uuid::Uuid::new_v4(), json!({"order": 1}));
    OutboxTable::named(&setup.outbox_table)
        .unwrap()
        .enqueue(&mut tx, "orders", &refused)
        .unwrap();
    tx.commit().unwrap();
    outbox
        .publish_due(
            &ClaimDue {
                limit: 10,
                now: chrono::Utc::now(),
            },
            &mut |rows| {
                let refuse = |_row: &OutboxRow| RowOutcome::DeadLetter {
                    error: "refused by the broker <b>".into(),
                };
                Delivery::Settled(rows.iter().map(refuse).collect())
            },
        )
        .unwrap();
    let outbox_row = outbox.find_by_event_id(&refused.event_id).unwrap()[0].id;

    setup.fixed.store(true, Ordering::SeqCst);
    let consumer = setup.consumer();
    let redis = RedisStreams::builder(redis_url()).build().unwrap();
    let malformed = "{\"event_id\": \"<b>q-1</b>\", oops";
    redis
        .publish(
            &setup.stream,
            vec![("data".into(), malformed.as_bytes().to_vec())],
        )
        .unwrap();
    assert!(wait_until(WAIT, || consumer.stats().quarantined == 1));
    setup.fixed.store(false, Ordering::SeqCst);
    let dead = setup.dead_letter();
    let console = setup.console();

    // The outbox: its dead letter listed (the default view), escaped, and requeued.
    let listed = get(&format!("{}/outbox", console.url));
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.body.contains(&refused.event_id), "{}", listed.body);
    assert!(
        listed.body.contains("refused by the broker &lt;b&gt;"),
        "{}",
        listed.body
    );
    let session = Session::from(&listed);
    let requeued = session.post(&console, "/outbox/requeue", &format!("id={outbox_row}"));
    assert_eq!(requeued.status, 200, "{}", requeued.body);
    let row = outbox
        .find_by_event_id(&refused.event_id)
        .unwrap()
        .remove(0);
    assert_eq!(row.status, OutboxStatus::Pending);
    let again = session.post(&console, "/outbox/requeue", &format!("id={outbox_row}"));
    assert_eq!(
        again.status, 409,
        "not a dead letter any more: {}",
        again.body
    );

    // The quarantine: listed escaped, shown, replayed with corrected data, then handled.
    let listed = get(&format!("{}/quarantine", console.url));
    assert!(
        listed.body.contains("&lt;b&gt;q-1&lt;/b&gt;"),
        "{}",
        listed.body
    );
    assert!(!listed.body.contains("<b>q-1"), "{}", listed.body);
    let start = listed.body.find("id=\"entry-").expect("an entry row") + 10;
    let entry = listed.body[start..start + 36].to_string();
    let shown = get(&format!("{}/quarantine/entry?id={entry}", console.url));
    assert!(
        shown.body.contains("Replay with this data"),
        "{}",
        shown.body
    );
    let not_json = session.post(
        &console,
        "/quarantine/replay",
        &format!("id={entry}&data=%7Boops"),
    );
    assert_eq!(not_json.status, 400, "{}", not_json.body);
    let corrected = json!({
        "event_id": "q-1",
        "event_type": "OrderCreated",
        "aggregate_id": uuid::Uuid::new_v4(),
        "occurred_on": "2025-01-01T00:00:00Z",
        "payload": {},
    })
    .to_string();
    let form = format!("id={entry}&data={}", encode(&corrected));
    let replayed = session.post(&console, "/quarantine/replay", &form);
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert!(replayed.body.contains("as event q-1"), "{}", replayed.body);
    assert!(wait_until(WAIT, || setup.status("q-1") == Some(EventStatus::Processed)));

    // Parked: the dead letter's aggregate, released by skipping it.
    let parked = get(&format!("{}/parked", console.url));
    let aggregate = dead.aggregate_id.to_string();
    assert!(parked.body.contains(&aggregate), "{}", parked.body);
    let released = session.post(
        &console,
        "/parked/skip",
        &format!("aggregate_id={aggregate}"),
    );
    assert_eq!(released.status, 200, "{}", released.body);
    assert!(
        released.body.contains("released aggregate"),
        "{}",
        released.body
    );
    let parked = get(&format!("{}/parked", console.url));
    assert!(
        parked.body.contains("No parked aggregates"),
        "{}",
        parked.body
    );
    let twice = session.post(
        &console,
        "/parked/skip",
        &format!("aggregate_id={aggregate}"),
    );
    assert_eq!(twice.status, 404, "{}", twice.body);
    consumer.shutdown(WAIT).unwrap();
}

/// `text` percent-encoded for a form body.
fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The story in a browser: the overview counts the dead letter; clicking its "Requeue"
/// button on the dead-letters page requeues it; the fixed handler handles it; its page then
/// says processed.
#[test]
fn a_dead_letter_requeued_in_chromium_is_handled() {
    let test = "console::a_dead_letter_requeued_in_chromium_is_handled";
    let Some(browser) = Browser::find(test) else {
        return;
    };
    let Some(setup) = Setup::new(test) else {
        return;
    };
    let consumer = setup.consumer();
    let event = setup.dead_letter();
    let console = setup.console();
    let driver = WebDriver::start(&browser);

    driver.open(&format!("{}/", console.url));
    assert!(driver.title().starts_with("Overview"), "{}", driver.title());
    assert_eq!(driver.text(&driver.find("#count-dead_letter")), "1");
    if let Ok(path) = std::env::var("EVENTFLOW_CONSOLE_SCREENSHOT") {
        std::fs::write(&path, driver.screenshot()).unwrap();
    }

    setup.fixed.store(true, Ordering::SeqCst);
    driver.open(&format!("{}/dead-letters", console.url));
    let row = format!("tr[data-event-id=\"{}\"]", event.event_id);
    assert!(driver
        .text(&driver.find(&row))
        .contains("billing is down <img"));
    driver.click(&driver.find(&format!("{row} button.requeue")));
    // The click submits a form; the result page may still be loading when it returns.
    let notice = driver.text(&driver.find_soon("p.notice"));
    assert!(
        notice.starts_with(&format!("Requeued dead letter {}", event.event_id)),
        "{notice}"
    );

    assert!(
        wait_until(WAIT, || setup.status(&event.event_id)
            == Some(EventStatus::Processed)),
        "the requeued event was not handled"
    );
    driver.open(&format!("{}/event?key={}", console.url, event.event_id));
    assert_eq!(driver.text(&driver.find("#status")), "processed");
    // The payload's markup is shown as text, and ran nothing: no alert is open.
    assert!(driver.text(&driver.find("#payload")).contains(SCRIPT));
    assert!(!driver.alert_open());
    consumer.shutdown(WAIT).unwrap();
}

/// Where Chromium and chromedriver are.
struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Browser {
    /// Debian's paths, or `EVENTFLOW_CHROMIUM` and `EVENTFLOW_CHROMEDRIVER`. When either is
    /// missing: panics under `EVENTFLOW_REQUIRE_SERVICES=1`, else says the test is skipped.
    fn find(test: &str) -> Option<Self> {
        let path = |env: &str, default: &str| {
            PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()))
        };
        let browser = Self {
            chromium: path("EVENTFLOW_CHROMIUM", "/usr/bin/chromium"),
            chromedriver: path("EVENTFLOW_CHROMEDRIVER", "/usr/bin/chromedriver"),
        };
        let missing: Vec<&Path> = [&browser.chromium, &browser.chromedriver]
            .into_iter()
            .map(PathBuf::as_path)
            .filter(|path| !path.exists())
            .collect();
        if missing.is_empty() {
            return Some(browser);
        }
        let why = format!(
            "{test}: no {missing:?} (apt-get install chromium chromium-driver, or set \
             EVENTFLOW_CHROMIUM and EVENTFLOW_CHROMEDRIVER)"
        );
        if std::env::var("EVENTFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true") {
            panic!("{why}; required under EVENTFLOW_REQUIRE_SERVICES=1");
        }
        support::skipped(&why);
        None
    }
}

/// A headless Chromium session through chromedriver, spoken to in WebDriver's JSON over HTTP.
/// Dropping it ends the session (closing the browser) and stops chromedriver.
struct WebDriver {
    driver: Child,
    base: String,
    session: String,
    profile: PathBuf,
}

/// The key WebDriver gives an element reference under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    fn start(browser: &Browser) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(&browser.chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let profile = std::env::temp_dir().join(unique_name("console_chromium"));
        let mut driver = Self {
            driver,
            base,
            session: String::new(),
            profile,
        };
        let ready = wait_until(WAIT, || {
            agent()
                .get(&format!("{}/status", driver.base))
                .call()
                .ok()
                .and_then(|mut response| response.body_mut().read_json::<Value>().ok())
                .is_some_and(|status| status["value"]["ready"] == true)
        });
        assert!(ready, "chromedriver did not come up on port {port}");
        // The flags a closed network needs: without the background-networking ones Chromium
        // keeps trying to reach Google's hosts.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": browser.chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", driver.profile.display()),
                ],
            },
        }}});
        let created = driver.call("POST", "/session", Some(capabilities));
        driver.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        driver
    }

    /// One WebDriver command on the session (`path` after `/session/{id}`, or a whole path
    /// before there is one); returns its `value`, panicking on an error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if self.session.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let agent = agent();
        let response = match method {
            "GET" => agent.get(&url).call(),
            "DELETE" => agent.delete(&url).call(),
            _ => agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = response.unwrap_or_else(|error| panic!("{method} {url}: {error}"));
        let status = response.status().as_u16();
        let reply: Value = response.body_mut().read_json().unwrap();
        assert_eq!(status, 200, "{method} {path}: {reply}");
        reply["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn title(&self) -> String {
        self.call("GET", "/title", None)
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The first element matching a CSS selector.
    fn find(&self, css: &str) -> String {
        let found = self.call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// The first element matching `css`, waiting for it to appear (a page still loading).
    fn find_soon(&self, css: &str) -> String {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let query = json!({"using": "css selector", "value": css});
        let mut found = None;
        let appeared = wait_until(WAIT, || {
            let Ok(mut response) = agent().post(&url).send_json(&query) else {
                return false;
            };
            let reply: Value = response.body_mut().read_json().unwrap_or_default();
            found = reply["value"][ELEMENT].as_str().map(str::to_string);
            found.is_some()
        });
        assert!(appeared, "no element {css} appeared");
        found.unwrap()
    }

    fn text(&self, element: &str) -> String {
        let text = self.call("GET", &format!("/element/{element}/text"), None);
        text.as_str().unwrap().to_string()
    }

    fn click(&self, element: &str) {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        );
    }

    /// Whether a JavaScript alert is open (WebDriver answers "no such alert" with 404).
    fn alert_open(&self) -> bool {
        let url = format!("{}/session/{}/alert/text", self.base, self.session);
        agent().get(&url).call().unwrap().status() == 200
    }

    /// A PNG of the viewport.
    fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = agent().delete(&url).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
