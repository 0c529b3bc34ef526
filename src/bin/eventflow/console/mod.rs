//! `eventflow console`: a small web console over the operations API, served on loopback by
//! default. Pages are drawn on the server, as plain HTML with a little inline style and no
//! script; every action is a POST carrying a CSRF token.
//!
//! It shows what `status` shows (counts, lag, streams, parked aggregates, the outbox), lists
//! dead letters and quarantined entries with filters and paging, and requeues, skips, replays
//! and releases through the same [`eventflow::admin`] calls the other commands make: the
//! console holds no SQL of its own.
//!
//! Who may come in: a loopback address needs nothing (the `Host` check keeps other sites out);
//! any other needs basic authentication, whose password comes only from
//! `EVENTFLOW_CONSOLE_PASSWORD`, so that it appears in no process list, history or log.

mod auth;
mod backends;
mod csrf;
mod html;
mod layout;
mod listen;
mod pages;
mod reply;
mod request;
mod routes;
mod server;

use super::cli::{Cli, Connection, ConsoleArgs, StreamArgs};
use super::connect::{open_database, open_outbox, open_redis, Database};
use super::Failure;
use auth::BasicAuth;
use backends::Backends;
use eventflow::admin::Admin;
use eventflow::redact::{redact, Scrubber};
use eventflow::store::InboxStore;
use listen::HostCheck;
use routes::Guard;
use std::io::Write;
use std::sync::Arc;

/// The environment variable holding the basic-auth password.
const PASSWORD_ENV: &str = "EVENTFLOW_CONSOLE_PASSWORD";

/// Checks the settings, opens the database (and Redis, when a group is to be shown), listens,
/// prints the console's address, and serves until the process is stopped.
pub fn run(cli: &Cli, args: &ConsoleArgs) -> Result<(), Failure> {
    let auth = basic_auth(args)?;
    listen::check_address(args.listen, auth.is_some()).map_err(Failure::Usage)?;
    let connection = &cli.connection;
    let database = open_database(connection, false)?;
    let kind = database.kind();
    match database {
        Database::Postgres(store) => {
            let admin = Admin::new(Arc::new(store));
            start(
                args,
                auth,
                backends(connection, &args.streams, admin, kind)?,
            )
        }
        Database::Sqlite(store) => {
            let admin = Admin::new(Arc::new(store));
            start(
                args,
                auth,
                backends(connection, &args.streams, admin, kind)?,
            )
        }
    }
}

/// Everything the pages read, around the inbox's `admin`: the outbox in the same database,
/// and Redis when `--stream` and `--group` name a consumer group to show.
fn backends<S: InboxStore>(
    connection: &Connection,
    streams: &StreamArgs,
    admin: Admin<S>,
    kind: &'static str,
) -> Result<Backends<S>, Failure> {
    let redis = match (&streams.group, streams.any()) {
        (Some(_), true) => Some(open_redis(connection)?),
        _ => None,
    };
    let database_url = connection.database_url.as_deref().unwrap_or_default();
    Ok(Backends {
        admin,
        outbox: open_outbox(connection, false)?,
        redis,
        // A split stream's partitions, each with its own lag.
        streams: streams
            .shown()
            .into_iter()
            .map(|shown| shown.stream)
            .collect(),
        group: streams.group.clone(),
        table: connection.table.clone(),
        kind,
        database: redact(database_url),
        scrubber: Scrubber::new([database_url, connection.redis_url.as_str()]),
    })
}

/// The basic-auth settings: none without `--basic-auth-user`; with it, the password must be
/// in the environment. A password without a user is refused too, rather than serving without
/// the authentication someone meant to have.
fn basic_auth(args: &ConsoleArgs) -> Result<Option<BasicAuth>, Failure> {
    let password = std::env::var(PASSWORD_ENV).ok();
    match (&args.basic_auth_user, password) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Failure::Usage(format!(
            "{PASSWORD_ENV} is set but --basic-auth-user is not: name the user too"
        ))),
        (Some(_), None) => Err(Failure::Usage(format!(
            "--basic-auth-user needs the password in {PASSWORD_ENV} (never a flag)"
        ))),
        (Some(user), Some(password)) => BasicAuth::new(user.clone(), password)
            .map(Some)
            .map_err(Failure::Usage),
    }
}

fn start<S: InboxStore>(
    args: &ConsoleArgs,
    auth: Option<BasicAuth>,
    backends: Backends<S>,
) -> Result<(), Failure> {
    // Fail now, with exit code 3, when the database cannot be read, rather than on the
    // first page.
    backends.admin.inbox_status()?;
    let server = tiny_http::Server::http(args.listen)
        .map_err(|error| Failure::Usage(format!("cannot listen on {}: {error}", args.listen)))?;
    let address = server
        .server_addr()
        .to_ip()
        .expect("a TCP listener has an IP address");
    let csrf = csrf::Csrf::new(address.port())
        .map_err(|error| Failure::Usage(format!("no randomness for the CSRF token: {error}")))?;
    let guard = Guard {
        hosts: HostCheck::for_address(address),
        auth,
        csrf,
    };
    let who = if guard.auth.is_some() {
        "basic authentication"
    } else {
        "no authentication: loopback only"
    };
    // Whoever started the console may be waiting for this line (a script, a test) on a pipe;
    // one that stopped reading must not stop the console.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "eventflow console: listening on http://{address}/ ({who}); stop with Ctrl-C"
    );
    let _ = stdout.flush();
    server::serve(server, backends, guard);
    Err(Failure::Unreachable(format!(
        "the console stopped serving on {address}"
    )))
}
