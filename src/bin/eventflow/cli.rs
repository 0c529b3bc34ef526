//! The command line, as clap parses it.

use super::text::{parse_age, parse_time, parse_timeout};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use eventflow::store::outbox::OutboxStatus;
use eventflow::store::Cursor;
use eventflow::transport::partition::{partition_stream, MAX_PARTITIONS};
use std::path::PathBuf;
use std::time::Duration;

/// Operate an eventflow inbox and outbox: counts and lag, dead letters, quarantined entries,
/// purges, and publishing events by hand.
///
/// Exit codes: 0 ok; 1 the operation failed; 2 usage error; 3 cannot connect to the database
/// or Redis; 4 not found (a row, an event, a parked aggregate), or the inbox or outbox table
/// does not exist. Under `--json`, an error is a JSON object on standard error.
#[derive(Debug, Parser)]
#[command(name = "eventflow", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,

    /// Print JSON instead of tables, for scripts; errors too, as
    /// `{"error": {"kind", "exit_code", "message", "causes"}}` on standard error.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes:\n  0  ok\n  1  the operation failed\n  2  usage error\n  \
                          3  cannot connect to the database or Redis\n  4  not found (a row, an event, \
                          a parked aggregate), or the inbox or outbox table does not exist";

/// Where the inbox and the stream are. Its `Debug` shows the settings redacted.
#[derive(Args)]
pub struct Connection {
    /// The inbox database: `postgres://user:password@host/db` (or `host=... user=...`), or a
    /// SQLite file: `sqlite:path` (`migrate` creates it), or the plain path of an existing
    /// file (a plain path to no file is refused, as a likely typo). TLS as in libpq: `sslmode`
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert`
    /// and `sslkey`.
    #[arg(
        long,
        env = "EVENTFLOW_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,

    /// The Redis server (`redis://[:password@]host:port[/db]`, `rediss://...` for TLS), or a
    /// Redis Cluster by its seed nodes (`redis+cluster://[:password@]host:port,host:port`).
    #[arg(
        long,
        env = "EVENTFLOW_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// For a `rediss://` URL: a PEM file of the certificate authorities to trust, in place of
    /// the system's trust store.
    #[arg(
        long,
        env = "EVENTFLOW_REDIS_CA_FILE",
        global = true,
        value_name = "PEM"
    )]
    pub redis_ca_file: Option<PathBuf>,

    /// For a `rediss://` URL: a client certificate (PEM), with `--redis-client-key`.
    #[arg(
        long,
        env = "EVENTFLOW_REDIS_CLIENT_CERT",
        global = true,
        value_name = "PEM",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// The unencrypted private key (PEM) of `--redis-client-cert`.
    #[arg(
        long,
        env = "EVENTFLOW_REDIS_CLIENT_KEY",
        global = true,
        value_name = "PEM",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,

    /// The inbox table (the quarantine table is `<table>_quarantine`).
    #[arg(
        long,
        env = "EVENTFLOW_TABLE",
        default_value = "event_inbox",
        global = true
    )]
    pub table: String,

    /// The outbox table, in the same database as the inbox (for `migrate --outbox`, `status`
    /// and `outbox ...`).
    #[arg(
        long,
        env = "EVENTFLOW_OUTBOX_TABLE",
        default_value = "event_outbox",
        global = true
    )]
    pub outbox_table: String,

    /// How long to wait for a connection before giving up (exit code 3): `5s`, `500ms`, up
    /// to `1h`.
    #[arg(long, default_value = "5s", value_parser = parse_timeout, global = true)]
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use eventflow::redact::redact;
        f.debug_struct("Connection")
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("redis_url", &redact(&self.redis_url))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_client_cert", &self.redis_client_cert)
            .field("table", &self.table)
            .field("outbox_table", &self.outbox_table)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the inbox tables (idempotent; safe while consumers run: on
    /// PostgreSQL indexes build concurrently and DDL waits at most 2 s for a table lock, then
    /// retries); with --outbox, the outbox table too. For consumers built with
    /// `.migrations(Migrations::Verify)`, which check the schema but do not change it.
    /// Prints the migrations it applied.
    #[command(args_conflicts_with_subcommands = true)]
    Migrate {
        /// Also create or upgrade the outbox table (--outbox-table).
        #[arg(long)]
        outbox: bool,
        /// Also apply what consumers with per-aggregate order need (on PostgreSQL, the index
        /// their claims probe, which a table consumed without order is better off without).
        /// Ordered consumers apply it at start unless built with Migrations::Verify.
        #[arg(long)]
        ordered: bool,
        /// Print what would run (version, file, whether it runs in a transaction or
        /// concurrently, and its statements) and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(subcommand)]
        list: Option<MigrateList>,
    },
    /// The inbox's owner, counts by status (in all and per stream) and lag, parked aggregates,
    /// quarantined entries, the consumer group's pending entries and lag on each --stream and
    /// each partition of a --partitions stream (or whether the stream or the group is
    /// missing), and the outbox backlog.
    Status {
        #[command(flatten)]
        streams: StreamArgs,
    },
    /// Events whose handling was given up on.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Stream entries that did not parse into events.
    #[command(subcommand)]
    Quarantine(Quarantine),
    /// Aggregates whose later events wait behind a dead letter (consumers with per-aggregate
    /// order). Release one by skipping its dead letter, or requeue the dead letter with
    /// `dead-letters requeue`.
    #[command(subcommand)]
    Parked(Parked),
    /// The outbox table: rows by status, dead letters requeued, published rows purged. Exit
    /// code 4 when the table does not exist.
    #[command(subcommand)]
    Outbox(Outbox),
    /// Delete processed rows older than an age, 1,000 per transaction.
    Purge(PurgeArgs),
    /// Add an event to the stream (needs --stream), in the recommended `data` style, after
    /// checking it. `event_id` and `occurred_on` may be left out: they become a random UUID
    /// and now.
    Publish {
        /// The stream to add to (one).
        #[arg(
            long,
            env = "EVENTFLOW_STREAM",
            value_delimiter = ',',
            value_name = "STREAM"
        )]
        stream: Vec<String>,
        /// Streams split into partitions by the relay, as STREAM=N: an event for a split
        /// stream goes to the partition its aggregate_id hashes to, as the relay sends it.
        #[arg(
            long,
            env = "EVENTFLOW_PARTITIONS",
            value_delimiter = ',',
            value_name = "STREAM=N[,STREAM=N...]",
            value_parser = parse_partitions
        )]
        partitions: Vec<(String, u32)>,
        /// The event as a JSON object; `-` reads standard input.
        #[arg(conflicts_with = "file", required_unless_present = "file")]
        event: Option<String>,
        /// Read the event from this file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Serve a web console: counts and lag, dead letters (requeue, skip), quarantined entries
    /// (replay), parked aggregates (release) and the outbox (requeue). Runs until stopped.
    Console(ConsoleArgs),
}

/// `console`: where to listen and who may come in.
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The address to listen on, `IP:PORT` (port 0 picks a free port; the address is printed).
    /// Any address but a loopback one needs --basic-auth-user.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "IP:PORT")]
    pub listen: std::net::SocketAddr,
    /// Ask for HTTP basic authentication as this user. The password is read from
    /// EVENTFLOW_CONSOLE_PASSWORD only, never from a flag, so it stays out of `ps` and shell
    /// history.
    #[arg(long, env = "EVENTFLOW_CONSOLE_USER", value_name = "USER")]
    pub basic_auth_user: Option<String>,
    /// The streams whose pending entries and lag the overview shows, for `--group`.
    #[command(flatten)]
    pub streams: StreamArgs,
}

/// `migrate list`
#[derive(Debug, Subcommand)]
pub enum MigrateList {
    /// Every migration, in order, and whether the table has it.
    List {
        /// The outbox table's migrations (--outbox-table) instead of the inbox's.
        #[arg(long, conflicts_with = "ordered")]
        outbox: bool,
        /// The inbox's migrations for per-aggregate order (see `migrate --ordered`) instead.
        #[arg(long)]
        ordered: bool,
    },
}

/// The streams `status` reports on, and the consumer group whose progress it shows.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The streams, comma-separated or with the flag repeated.
    #[arg(
        long,
        env = "EVENTFLOW_STREAM",
        value_delimiter = ',',
        value_name = "STREAM[,STREAM...]"
    )]
    pub stream: Vec<String>,

    /// The consumer group.
    #[arg(long, env = "EVENTFLOW_GROUP")]
    pub group: Option<String>,

    /// Streams split into partitions by the relay, as STREAM=N: each is shown partition by
    /// partition (its N streams STREAM:{..}), whether or not --stream names it too.
    #[arg(
        long,
        env = "EVENTFLOW_PARTITIONS",
        value_delimiter = ',',
        value_name = "STREAM=N[,STREAM=N...]",
        value_parser = parse_partitions
    )]
    pub partitions: Vec<(String, u32)>,
}

/// One stream `status` shows: a stream as given, or one partition of a split stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownStream {
    /// The stream's name in Redis.
    pub stream: String,
    /// The split stream and partition number, for a partition.
    pub partition_of: Option<(String, u32)>,
}

impl StreamArgs {
    /// The streams to show: each `--stream` in order, a split one replaced by its partitions,
    /// then the split streams `--stream` does not name.
    pub fn shown(&self) -> Vec<ShownStream> {
        let split = |stream: &str| self.partitions.iter().find(|(name, _)| name == stream);
        let expand = |stream: &str, partitions: u32| -> Vec<ShownStream> {
            (0..partitions)
                .map(|partition| ShownStream {
                    stream: partition_stream(stream, partition),
                    partition_of: Some((stream.to_string(), partition)),
                })
                .collect()
        };
        let mut shown = Vec::new();
        for stream in &self.stream {
            match split(stream) {
                Some((_, partitions)) => shown.extend(expand(stream, *partitions)),
                None => shown.push(ShownStream {
                    stream: stream.clone(),
                    partition_of: None,
                }),
            }
        }
        for (stream, partitions) in &self.partitions {
            if !self.stream.contains(stream) {
                shown.extend(expand(stream, *partitions));
            }
        }
        shown
    }

    /// Whether any stream is to be shown.
    pub fn any(&self) -> bool {
        !self.stream.is_empty() || !self.partitions.is_empty()
    }
}

/// `STREAM=N`, N between 1 and the most partitions a stream may have.
fn parse_partitions(value: &str) -> Result<(String, u32), String> {
    let (stream, count) = value
        .rsplit_once('=')
        .ok_or_else(|| format!("{value:?} is not STREAM=N, e.g. orders=3"))?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|_| format!("{count:?} in {value:?} is not a number of partitions"))?;
    if stream.trim().is_empty() || !(1..=MAX_PARTITIONS).contains(&count) {
        return Err(format!(
            "{value:?}: give a stream and between 1 and {MAX_PARTITIONS} partitions"
        ));
    }
    Ok((stream.to_string(), count))
}

/// What a purge deletes: rows older than an age, after asking when the age takes them all.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// E.g. `7d`, `1w`, `12h`, `1h30m`, `90s`. Under one second means every row, and is asked
    /// about first (or needs --yes).
    #[arg(long, value_parser = parse_age)]
    pub older_than: Duration,
    /// Do not ask before deleting every row (`--older-than 0s`): for scripts.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `dead-letters ...`
#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: RowFilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one row (any status), by event id or row id.
    Show {
        /// Event id or row id.
        key: String,
    },
    /// Put dead letters back to pending (retries reset), one by key, those matching the
    /// filters, or all of them with --all.
    #[command(group(
        clap::ArgGroup::new("which")
            .required(true)
            .multiple(true)
            .args(["key", "all", "event_type", "error", "since", "until", "stream"])
    ))]
    Requeue {
        /// Event id or row id of one dead letter.
        #[arg(conflicts_with_all = ["all", "event_type", "error", "since", "until", "stream"])]
        key: Option<String>,
        /// Every dead letter.
        #[arg(long, conflicts_with_all = ["event_type", "error", "since", "until", "stream"])]
        all: bool,
        #[command(flatten)]
        filter: RowFilterArgs,
    },
}

/// Filters on inbox rows.
#[derive(Debug, Args, Default)]
pub struct RowFilterArgs {
    /// Only this event type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only rows whose error contains this text (either case).
    #[arg(long)]
    pub error: Option<String>,
    /// Only rows received at or after this time: RFC 3339, or an age such as `2h` (ago).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only rows received before this time: RFC 3339, or an age such as `30m` (ago).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Only rows read from this stream. (Never from EVENTFLOW_STREAM: a filter set by the
    /// environment would hide rows silently.)
    #[arg(long, value_name = "STREAM", alias = "from-stream")]
    pub stream: Option<String>,
}

impl RowFilterArgs {
    pub fn is_empty(&self) -> bool {
        self.event_type.is_none()
            && self.error.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.stream.is_none()
    }
}

/// Paging.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Most items to list.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Continue after this cursor (printed at the end of a full page, `next_cursor` in JSON).
    #[arg(long, value_name = "CURSOR", value_parser = |s: &str| s.parse::<Cursor>())]
    pub after: Option<Cursor>,
}

/// `parked ...`
#[derive(Debug, Subcommand)]
pub enum Parked {
    /// List parked aggregates, by aggregate id, with the dead letter holding each back.
    List {
        /// Most aggregates to list.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Continue after this cursor, an aggregate id (printed at the end of a full page,
        /// `next_cursor` in JSON).
        #[arg(long, value_name = "CURSOR")]
        after: Option<uuid::Uuid>,
    },
    /// Show one parked aggregate: its dead letter and what waits behind it. Exit code 4 when
    /// it is not parked.
    Show {
        /// The aggregate id.
        aggregate_id: uuid::Uuid,
    },
    /// Release a parked aggregate by skipping the dead letter that holds it back (it stays a
    /// dead letter, marked skipped), or skip one dead letter by --event-id. The waiting events
    /// are handled on the workers' next poll. Exit code 4 when the aggregate is not parked or
    /// the event is unknown.
    #[command(group(
        clap::ArgGroup::new("which")
            .required(true)
            .args(["aggregate_id", "event_id"])
    ))]
    Skip {
        /// The parked aggregate's id.
        aggregate_id: Option<uuid::Uuid>,
        /// Skip this dead letter instead (event id or row id).
        #[arg(long, value_name = "EVENT_ID")]
        event_id: Option<String>,
    },
}

/// `quarantine ...`
#[derive(Debug, Subcommand)]
pub enum Quarantine {
    /// List quarantined entries, oldest first.
    List {
        /// Only entries from this stream.
        #[arg(long, value_name = "STREAM", alias = "from-stream")]
        stream: Option<String>,
        /// Only entries whose reason contains this text (either case).
        #[arg(long)]
        reason: Option<String>,
        /// Only entries quarantined at or after this time (RFC 3339, or an age: `2h` ago).
        #[arg(long, value_parser = parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only entries quarantined before this time (RFC 3339, or an age).
        #[arg(long, value_parser = parse_time)]
        until: Option<DateTime<Utc>>,
        /// Include entries replayed already.
        #[arg(long)]
        include_replayed: bool,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one quarantined entry with its raw fields.
    Show {
        /// The entry's id.
        id: uuid::Uuid,
    },
    /// Store a quarantined entry as a pending event, once fixed: as it is (after a parser
    /// change), with a corrected `data` JSON object, or with fields set.
    Replay {
        /// The entry's id.
        id: uuid::Uuid,
        /// Replace the entry's fields with one `data` field holding this JSON object.
        #[arg(long, conflicts_with = "set")]
        data: Option<String>,
        /// Set a field, `name=value` (repeatable); replaces the field of that name.
        #[arg(long, value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// The new row's max_retries.
        #[arg(long, default_value_t = 3)]
        max_retries: i32,
    },
    /// Delete quarantined entries, replayed or not, quarantined longer ago than an age, 1,000
    /// per transaction.
    Purge(PurgeArgs),
}

/// `outbox ...`
#[derive(Debug, Subcommand)]
pub enum Outbox {
    /// List outbox rows in enqueue order, all or in one status.
    List {
        /// Only rows in this status.
        #[arg(long, value_parser = outbox_status())]
        status: Option<OutboxStatus>,
        /// Most rows to list.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Continue after this cursor, a row id (printed at the end of a full page,
        /// `next_cursor` in JSON).
        #[arg(long, value_name = "CURSOR")]
        after: Option<i64>,
    },
    /// Show the rows of one event (one per stream it goes to), by event id or row id.
    Show {
        /// Event id or row id.
        key: String,
    },
    /// Put dead letters back to pending (attempts reset): those with the given row ids, or
    /// all of them with --all.
    Requeue {
        /// Row ids of dead letters. Any other id fails and nothing is requeued.
        #[arg(value_name = "ID", conflicts_with = "all")]
        ids: Vec<i64>,
        /// The same, the older spelling (`--id 4711 --id 4712`).
        #[arg(long, value_name = "ID", hide = true, conflicts_with = "all")]
        id: Vec<i64>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete published rows older than an age, 1,000 per transaction.
    Purge(PurgeArgs),
    /// Check published rows against their streams (needs Redis) and list those whose entries
    /// are gone although older ones remain: lost in a failover (see the README's Failover).
    Lost {
        /// Most published rows to check.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Continue after this cursor, a row id (printed at the end of a full page,
        /// `next_cursor` in JSON).
        #[arg(long, value_name = "CURSOR")]
        after: Option<i64>,
        /// Streams the relay splits into partitions, as STREAM=N (as its
        /// `partitioned_stream`): their rows' entries are looked for in their partitions.
        #[arg(
            long = "partitions",
            value_name = "STREAM=N",
            env = "EVENTFLOW_PARTITIONS",
            value_delimiter = ',',
            value_parser = parse_partitions
        )]
        partitions: Vec<(String, u32)>,
    },
}

/// `pending`, `failed`, `published` or `dead_letter`.
fn outbox_status() -> impl clap::builder::TypedValueParser<Value = OutboxStatus> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(OutboxStatus::ALL.map(OutboxStatus::as_str))
        .map(|name| OutboxStatus::parse(&name).expect("one of the possible values"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_settings_debug_redacted() {
        let cli = Cli::parse_from([
            "eventflow",
            "--database-url",
            "host=db user=app password = 'Pw-9 secret'",
            "--redis-url",
            "rediss://default:Pw-9-secret@cache:6380",
            "status",
        ]);
        let debug = format!("{cli:?}");
        assert!(!debug.contains("Pw-9"), "{debug}");
        assert!(
            debug.contains("host=db user=app password=<redacted>"),
            "{debug}"
        );
        assert!(
            debug.contains("rediss://default:<redacted>@cache:6380"),
            "{debug}"
        );
    }

    #[test]
    fn split_streams_are_shown_partition_by_partition() {
        let cli = Cli::parse_from([
            "eventflow",
            "status",
            "--stream",
            "orders,payments",
            "--partitions",
            "orders=2,refunds=1",
        ]);
        let Command::Status { streams } = cli.command else {
            panic!("status")
        };
        let shown: Vec<(String, Option<(String, u32)>)> = streams
            .shown()
            .into_iter()
            .map(|shown| (shown.stream, shown.partition_of))
            .collect();
        let part = |stream: &str, n| Some((stream.to_string(), n));
        assert_eq!(
            shown,
            vec![
                ("orders:{0a}".to_string(), part("orders", 0)),
                ("orders:{1a}".to_string(), part("orders", 1)),
                ("payments".to_string(), None),
                ("refunds:{0a}".to_string(), part("refunds", 0)),
            ]
        );
        for bad in ["orders", "orders=0", "orders=x", "=3", "orders=1025"] {
            assert!(
                Cli::try_parse_from(["eventflow", "status", "--partitions", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
