//! Shared test plumbing: service URLs from the environment, and skipping (or failing, under
//! `EVENTFLOW_REQUIRE_SERVICES=1`) when a service is not there.
#![allow(dead_code)]

pub mod child;
#[cfg(feature = "redis")]
pub mod cluster;
#[cfg(all(feature = "postgres", feature = "redis"))]
pub mod pipeline;
pub mod recorder;
pub mod secrets;

use std::time::{Duration, Instant};

/// PostgreSQL URL for tests: `EVENTFLOW_TEST_DATABASE_URL`, else `EVENTFLOW_DATABASE_URL`,
/// else the local default.
pub fn postgres_url() -> String {
    std::env::var("EVENTFLOW_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("EVENTFLOW_DATABASE_URL"))
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_string())
}

/// The test PostgreSQL URL as `key=value` text, with its database and its `options` (server
/// settings for every session, e.g. `-c synchronous_commit=off`) replaced when given.
pub fn postgres_url_with(dbname: Option<&str>, options: Option<&str>) -> String {
    use postgres::config::Host;
    let config: postgres::Config = postgres_url().parse().expect("a valid test database URL");
    let quote = |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.to_string_lossy().into_owned(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    let mut parts = vec![format!("host={}", quote(&hosts.join(",")))];
    if !ports.is_empty() {
        parts.push(format!("port={}", ports.join(",")));
    }
    if let Some(user) = config.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote(&String::from_utf8_lossy(password))
        ));
    }
    if let Some(dbname) = dbname.or(config.get_dbname()) {
        parts.push(format!("dbname={}", quote(dbname)));
    }
    if let Some(options) = options.or(config.get_options()) {
        parts.push(format!("options={}", quote(options)));
    }
    parts.join(" ")
}

/// Redis URL for tests: `EVENTFLOW_TEST_REDIS_URL`, else `EVENTFLOW_REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("EVENTFLOW_TEST_REDIS_URL")
        .or_else(|_| std::env::var("EVENTFLOW_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn services_required() -> bool {
    std::env::var("EVENTFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

/// Whether PostgreSQL answers. When it does not: panics under `EVENTFLOW_REQUIRE_SERVICES=1`,
/// otherwise prints why the test is skipped and returns false.
pub fn postgres_available(test: &str) -> bool {
    let url = postgres_url();
    let result = postgres::Client::connect(&url, postgres::NoTls)
        .and_then(|mut client| client.simple_query("SELECT 1").map(|_| ()));
    available("PostgreSQL", test, result.map_err(|e| e.to_string()))
}

/// Whether Redis answers; same rules as [`postgres_available`].
pub fn redis_available(test: &str) -> bool {
    let url = redis_url();
    let result = redis::Client::open(url.as_str())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn).map(|_| ()));
    available("Redis", test, result.map_err(|e| e.to_string()))
}

pub(crate) fn available(service: &str, test: &str, result: Result<(), String>) -> bool {
    match result {
        Ok(()) => true,
        Err(error) if services_required() => {
            panic!("{test}: {service} is required (EVENTFLOW_REQUIRE_SERVICES=1) but unreachable: {error}")
        }
        Err(error) => {
            skipped(&format!(
                "{test}: {service} unreachable ({error}); set its URL or start it"
            ));
            false
        }
    }
}

/// Says a test is skipped, on the real stderr: the test harness hides what `eprintln!` prints
/// from a passing test, and a skip must be seen.
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {why}");
}

/// A name unique to this test run, for tables and streams, so tests can run in parallel.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
        .chars()
        .take(40)
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An error with its causes, joined by `: ` (the PostgreSQL driver's own message says only
/// "db error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Drops a test's inbox `table`, its quarantine and the test's own tables named
/// `<table>_<suffix>` for each of `extra`, and forgets what eventflow recorded for it
/// (migrations, owner, stream positions). Best effort: a statement that fails does not stop
/// the others.
pub fn drop_inbox_table(db: &mut postgres::Client, table: &str, extra: &[&str]) {
    for suffix in extra {
        let _ = db.batch_execute(&format!("DROP TABLE IF EXISTS {table}_{suffix}"));
    }
    let _ = db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}_quarantine; DROP TABLE IF EXISTS {table}"
    ));
    for forget in [
        "DELETE FROM eventflow_migrations WHERE target IN ('inbox:' || $1, 'inbox-ordered:' || $1)",
        "DELETE FROM eventflow_inbox_owners WHERE inbox_table = $1",
        "DELETE FROM eventflow_inbox_streams WHERE inbox_table = $1",
        "DELETE FROM eventflow_consumer_processes WHERE inbox_table = $1",
    ] {
        let _ = db.execute(forget, &[&table]);
    }
}
