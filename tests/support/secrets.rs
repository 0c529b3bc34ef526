//! Connection settings carrying a recognisable secret, in every form the drivers accept, and a
//! private Redis that requires a password: for the tests that no secret is ever shown.

use super::{postgres_url, wait_until};
use std::time::Duration;

/// The secret every form carries. A test fails if it shows up anywhere.
pub const SECRET: &str = "Pw-7c1d-Zebra";

/// A PostgreSQL server's address and role, to write connection strings for.
#[derive(Clone)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
}

impl PgTarget {
    /// The test database, when its URL carries no password of its own (the forms below add
    /// theirs, which a server with `trust` authentication ignores).
    pub fn reachable() -> Option<Self> {
        use postgres::config::Host;
        let config: postgres::Config = postgres_url().parse().ok()?;
        if config.get_password().is_some() {
            return None;
        }
        let host = match config.get_hosts().first()? {
            Host::Tcp(name) => name.clone(),
            Host::Unix(_) => return None,
        };
        Some(Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_string(),
            dbname: config.get_dbname().unwrap_or("postgres").to_string(),
        })
    }

    /// Port 1 on loopback, where nothing listens.
    pub fn unreachable() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1,
            user: "app".into(),
            dbname: "app".into(),
        }
    }

    /// Every form of connection string with [`SECRET`] as its password: URL userinfo, the
    /// `password` query parameter, `key=value` with and without spaces around `=`, quoted, and
    /// quoted with a space inside.
    pub fn forms(&self) -> Vec<String> {
        let Self {
            host,
            port,
            user,
            dbname,
        } = self;
        vec![
            format!("postgres://{user}:{SECRET}@{host}:{port}/{dbname}"),
            format!("postgresql://{user}@{host}:{port}/{dbname}?password={SECRET}"),
            format!("host={host} port={port} user={user} password={SECRET} dbname={dbname}"),
            format!("host={host} port={port} user={user} password = {SECRET} dbname={dbname}"),
            format!("host={host} port={port} password='{SECRET}' user={user} dbname={dbname}"),
            format!(
                "host={host} port={port} user={user} dbname={dbname} password = 'se cret {SECRET}'"
            ),
        ]
    }
}

/// Every form of Redis URL with [`SECRET`] as its password, for the Redis at `host:port`: only
/// a password, a user and a password, and `rediss://` (TLS; with no TLS support built in, the
/// URL is refused, which must not show it either).
pub fn redis_forms(host: &str, port: u16) -> Vec<String> {
    vec![
        format!("redis://:{SECRET}@{host}:{port}"),
        format!("redis://default:{SECRET}@{host}:{port}/0"),
        format!("rediss://default:{SECRET}@{host}:{port}/0"),
    ]
}

/// `text` with no trace of [`SECRET`], or a panic saying where it showed.
pub fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} shows the secret: {text}");
    // The quoted form's first word would be its start.
    assert!(!text.contains("se cret"), "{what} shows the secret: {text}");
}

/// A `redis-server` of the test's own on a free port, requiring [`SECRET`] as its password.
pub struct PasswordRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PasswordRedis {
    /// Starts one; `None` when `redis-server` cannot be started (skip, or fail under
    /// `EVENTFLOW_REQUIRE_SERVICES=1`).
    pub fn start(test: &str) -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .ok()?;
        let started = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--requirepass", SECRET])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match started {
            Ok(child) => child,
            Err(error) => {
                let message = format!("{test}: cannot start redis-server ({error})");
                if std::env::var("EVENTFLOW_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
                    panic!("{message}");
                }
                super::skipped(&message);
                return None;
            }
        };
        let server = Self { port, child };
        let url = format!("redis://:{SECRET}@127.0.0.1:{port}");
        let up = wait_until(Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|client| client.get_connection())
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
                .is_ok()
        });
        assert!(up, "{test}: the private redis-server did not answer");
        Some(server)
    }
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
