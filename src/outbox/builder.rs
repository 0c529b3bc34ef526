//! Settings for an [`OutboxRelay`]: every default in one place, checked once in `build()`.

use super::relay::OutboxRelay;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
#[cfg(any(feature = "postgres", feature = "redis"))]
use crate::redact::ConnectionString;
use crate::retry::{ExponentialBackoff, RetryPolicy};
use crate::store::outbox::{OutboxStore, DEFAULT_OUTBOX_TABLE};
use crate::store::{validate_table_name, Migrations};
use crate::transport::partition::{invalid_partition_count, Partitioning};
use crate::transport::{ReplicaWait, Transport};
use std::sync::Arc;
use std::time::Duration;

enum StoreChoice {
    Unset,
    #[cfg(feature = "postgres")]
    Postgres(ConnectionString),
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    Given(Arc<dyn OutboxStore>),
}

enum TransportChoice {
    Unset,
    #[cfg(feature = "redis")]
    Redis(ConnectionString),
    Given(Arc<dyn Transport>),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unset => f.write_str("Unset"),
            #[cfg(feature = "postgres")]
            Self::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Given(_) => f.write_str("Given"),
        }
    }
}

impl std::fmt::Debug for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unset => f.write_str("Unset"),
            #[cfg(feature = "redis")]
            Self::Redis(url) => f.debug_tuple("Redis").field(url).finish(),
            Self::Given(_) => f.write_str("Given"),
        }
    }
}

/// The store, the transport and the main settings; never a password (connection strings show
/// [`redact`](crate::redact::redact)ed).
impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("store", &self.store)
            .field("transport", &self.transport)
            .field("table", &self.table)
            .field("workers", &self.workers)
            .field("batch_size", &self.batch_size)
            .field("partitioned_streams", &self.partitioned_streams)
            .finish_non_exhaustive()
    }
}

/// Settings for an [`OutboxRelay`]; see [`OutboxRelay::builder`]. Every setting has a default
/// but the store and the transport; `build()` checks them and names the one at fault.
///
/// ```
/// use eventflow::outbox::OutboxRelay;
/// use eventflow::store::outbox::SqliteOutbox;
/// use eventflow::transport::MemoryStream;
/// use std::time::Duration;
///
/// let relay = OutboxRelay::builder()
///     .store(SqliteOutbox::open_in_memory()?)  // or .postgres(url) / .sqlite(path)
///     .transport(MemoryStream::new())          // or .redis(url)
///     .workers(2)
///     .batch_size(500)
///     .max_attempts(10)                        // as the consumer's max_attempts
///     .retention(Duration::from_secs(7 * 86_400))
///     .trim_streams(Duration::from_secs(86_400))
///     .build()?;
/// let handle = relay.start()?;
/// handle.shutdown(Duration::from_secs(10))?;
///
/// // A bad setting is named.
/// let error = OutboxRelay::builder()
///     .store(SqliteOutbox::open_in_memory()?)
///     .transport(MemoryStream::new())
///     .workers(0)
///     .build()
///     .unwrap_err();
/// assert!(error.to_string().contains("workers"), "{error}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct RelayBuilder {
    store: StoreChoice,
    transport: TransportChoice,
    table: String,
    workers: usize,
    batch_size: usize,
    partitioned_streams: Vec<(String, u32)>,
    poll_interval: Option<Duration>,
    contention_wait: Option<Duration>,
    max_attempts: u32,
    retry_policy: Arc<dyn RetryPolicy>,
    retention: Option<Duration>,
    retention_interval: Duration,
    trim_after: Option<Duration>,
    trim_interval: Duration,
    replica_wait: Option<ReplicaWait>,
    clock: Arc<dyn Clock>,
    migrations: Migrations,
    #[cfg(feature = "postgres")]
    postgres_tls: crate::tls::TlsSettings,
    #[cfg(feature = "redis")]
    redis_tls: crate::tls::TlsSettings,
}

impl RelayBuilder {
    /// Every default in one place.
    pub(super) fn new() -> Self {
        RelayBuilder {
            store: StoreChoice::Unset,
            transport: TransportChoice::Unset,
            table: DEFAULT_OUTBOX_TABLE.to_string(),
            workers: 2,
            batch_size: 500,
            partitioned_streams: Vec::new(),
            poll_interval: None,
            contention_wait: Some(Duration::from_millis(10)),
            max_attempts: 10,
            retry_policy: Arc::new(ExponentialBackoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
                jitter_ratio: 0.1,
            }),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_interval: Duration::from_secs(60),
            trim_after: None,
            trim_interval: Duration::from_secs(60),
            replica_wait: None,
            clock: Arc::new(SystemClock),
            migrations: Migrations::Apply,
            #[cfg(feature = "postgres")]
            postgres_tls: crate::tls::TlsSettings::default(),
            #[cfg(feature = "redis")]
            redis_tls: crate::tls::TlsSettings::default(),
        }
    }

    /// Publish from the outbox in PostgreSQL at `url`.
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.store = StoreChoice::Postgres(ConnectionString::new(url));
        self
    }

    /// TLS settings in code for the PostgreSQL outbox opened by [`postgres`](Self::postgres)
    /// (its pool and its listener), winning over the connection string's `sslmode`,
    /// `sslrootcert`, `sslcert` and `sslkey`; see [`crate::tls`]. Defaults to none (the
    /// connection string decides).
    #[cfg(feature = "postgres")]
    pub fn postgres_tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.postgres_tls = settings;
        self
    }

    /// TLS settings in code for the Redis transport opened by [`redis`](Self::redis) (a
    /// `rediss://` URL); see [`crate::tls`]. Defaults to none (the URL decides).
    #[cfg(feature = "redis")]
    pub fn redis_tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.redis_tls = settings;
        self
    }

    /// Publish from the outbox in the SQLite file at `path`.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.store = StoreChoice::Sqlite(path.into());
        self
    }

    /// Publish from an outbox store built by hand (a [`SqliteOutbox`] shared with the
    /// application, say). [`table`](Self::table) does not apply to it.
    ///
    /// [`SqliteOutbox`]: crate::store::outbox::SqliteOutbox
    pub fn store(mut self, store: impl OutboxStore) -> Self {
        self.store = StoreChoice::Given(Arc::new(store));
        self
    }

    /// Publish to Redis at `url`.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.transport = TransportChoice::Redis(ConnectionString::new(url));
        self
    }

    /// Publish through any transport (a [`MemoryStream`](crate::transport::MemoryStream) in
    /// tests and demos).
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = TransportChoice::Given(Arc::new(transport));
        self
    }

    /// The outbox table's name, for stores built from a URL or path. Defaults to
    /// `event_outbox`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// Publisher threads. Each publishes its own batches; one aggregate is only ever published
    /// by one of them at a time. Defaults to 2.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Most rows claimed and published per round trip. Each claim is planned afresh (see
    /// [`PostgresOutbox`](crate::store::outbox::PostgresOutbox)), so larger batches spread that
    /// cost: on the bench machine 500 published about 2.5 times as many events per second as
    /// 100. Defaults to 500.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Splits the logical stream `stream` into `partitions` streams: an event enqueued for
    /// `stream` is published to `stream:{<tag>}`, the partition its `aggregate_id` hashes to
    /// (see [`crate::transport::partition`] for the names and the hash), so all the events of one
    /// aggregate go to one partition, in the order they were enqueued, and the partitions can
    /// live on different Redis Cluster masters. Consumers read every partition with
    /// [`ConsumerBuilder::partitioned_stream`](crate::inbox::ConsumerBuilder::partitioned_stream)
    /// and the same count. Call it once per split stream; `partitions` is between 1 and
    /// [`MAX_PARTITIONS`](crate::transport::partition::MAX_PARTITIONS). The outbox row keeps
    /// the logical stream; its entry id is the partition's. Changing the count of a running
    /// system moves aggregates between partitions: see the README's "Partitioned streams" for
    /// the order-keeping procedure. Defaults to no stream split.
    pub fn partitioned_stream(mut self, stream: impl Into<String>, partitions: u32) -> Self {
        self.partitioned_streams.push((stream.into(), partitions));
        self
    }

    /// How often an idle publisher looks for due rows without being woken. Defaults to 1 s
    /// when the store wakes relays on commit (PostgreSQL), 100 ms when it cannot (SQLite).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// How long, at most, a publisher waits when its claim came back short while due rows
    /// remain that another relay holds: they become claimable when that relay commits, and a
    /// sibling publisher in this process wakes it as soon as it does. `None` treats such a
    /// claim like an idle one (wait up to the poll interval, wake no sibling), as earlier
    /// versions did; the bench compares the two. Defaults to 10 ms.
    pub fn contention_wait(mut self, wait: Option<Duration>) -> Self {
        self.contention_wait = wait;
        self
    }

    /// Attempts before a row the broker keeps refusing is dead-lettered. An unreachable
    /// broker counts no attempt. The same name as the consumer's
    /// [`max_attempts`](crate::inbox::ConsumerBuilder::max_attempts); at least 1. Defaults
    /// to 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// When a refused row is tried again. Defaults to 1 s doubling to 5 min, with 10 % jitter.
    pub fn retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.retry_policy = Arc::new(policy);
        self
    }

    /// How long published rows are kept before retention deletes them (in batches of 1,000).
    /// Takes a `Duration` or an `Option<Duration>` (`None` keeps them for ever), as the
    /// consumer's [`retention`](crate::inbox::ConsumerBuilder::retention) does. Defaults to
    /// 7 days.
    pub fn retention(mut self, keep: impl Into<Option<Duration>>) -> Self {
        self.retention = keep.into();
        self
    }

    /// How often retention runs. Defaults to 1 min.
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.retention_interval = interval;
        self
    }

    /// Trims the streams published to: entries older than `keep` that every consumer group
    /// has read and acknowledged go; unread or unacknowledged entries never do. `None` never
    /// trims. Takes a `Duration` or an `Option<Duration>`. Defaults to `None`.
    pub fn trim_streams(mut self, keep: impl Into<Option<Duration>>) -> Self {
        self.trim_after = keep.into();
        self
    }

    /// How often streams are trimmed. Defaults to 1 min.
    pub fn trim_interval(mut self, interval: Duration) -> Self {
        self.trim_interval = interval;
        self
    }

    /// Marks a row published only once `replicas` replicas of its stream's master hold its entry:
    /// after appending a batch the relay sends `WAIT <replicas> <timeout>` (on a Redis Cluster,
    /// one per slot written to, to its master, after that slot's entries on the same
    /// connection). A row whose entry fewer replicas acknowledged within `timeout` stays
    /// unpublished without an attempt counted ([`RelayStats::unreplicated`] counts it, and a
    /// warning names this setting), the publisher backs off, and the row is appended again
    /// later: its stream may then hold the entry twice, which the inbox drops by event id.
    ///
    /// Redis replicates asynchronously, so without this an entry the master acknowledged and
    /// then lost in a failover before passing it on is gone although its row says published.
    /// With it, a row marked published survives the loss of its master as long as one of the
    /// replicas that acknowledged it takes over (Redis Cluster lets the most up-to-date replica
    /// stand for election first). Each batch waits for its slowest replica, up to `timeout`,
    /// and a master with fewer replicas than asked for (one just promoted, say) gets nothing
    /// published until enough are back.
    ///
    /// A broker without replicas never acknowledges: on a single Redis without replicas, or
    /// on the in-process [`MemoryStream`](crate::transport::MemoryStream), nothing is ever
    /// marked published with this on (`build()` cannot tell; the warnings and
    /// `unreplicated` do). `build()` refuses `replicas` = 0 or a zero `timeout`, naming
    /// `wait_for_replicas`. Defaults to off.
    ///
    /// [`RelayStats::unreplicated`]: crate::outbox::RelayStats::unreplicated
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_wait = Some(ReplicaWait { replicas, timeout });
        self
    }

    /// The clock for due times, retry times and retention. Defaults to the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Whether `start()` creates or upgrades the outbox table first: `true` is
    /// [`Migrations::Apply`], `false` [`Migrations::Skip`]. Defaults to true.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrations = if migrate {
            Migrations::Apply
        } else {
            Migrations::Skip
        };
        self
    }

    /// What `start()` does about the schema: apply the missing migrations, only verify that
    /// none is missing (failing with an error that names them and the `eventflow migrate
    /// --outbox` command to run), or nothing. Defaults to [`Migrations::Apply`].
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.migrations = migrations;
        self
    }

    /// Checks the settings and connects lazily (nothing is contacted yet).
    pub fn build(self) -> Result<OutboxRelay> {
        if self.workers == 0 {
            return Err(Error::config("workers", "must be at least 1"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Error::config("batch_size", "must be between 1 and 10,000"));
        }
        if self.max_attempts == 0 {
            return Err(Error::config("max_attempts", "must be at least 1"));
        }
        for (field, interval) in [
            ("poll_interval", self.poll_interval),
            ("contention_wait", self.contention_wait),
            ("retention", self.retention),
            ("retention_interval", Some(self.retention_interval)),
            ("trim_streams", self.trim_after),
            ("trim_interval", Some(self.trim_interval)),
        ] {
            if interval == Some(Duration::ZERO) {
                return Err(Error::config(field, "must be longer than zero"));
            }
        }
        if let Some(wait) = self.replica_wait {
            if wait.replicas == 0 {
                return Err(Error::config(
                    "wait_for_replicas",
                    "must ask for at least 1 replica (leave it unset not to wait)",
                ));
            }
            if wait.timeout.is_zero() {
                return Err(Error::config(
                    "wait_for_replicas",
                    "the timeout must be longer than zero",
                ));
            }
        }
        validate_table_name(&self.table).map_err(|e| Error::config("table", e.to_string()))?;
        let partitioning = partitioning(&self.partitioned_streams)?;
        // Each publisher holds a connection while it publishes, retention one more.
        #[cfg(any(feature = "postgres", feature = "redis"))]
        let connections = self.workers as u32 + 1;
        let store: Arc<dyn OutboxStore> = match self.store {
            StoreChoice::Unset => {
                return Err(Error::config(
                    "store",
                    "choose where the outbox is: .postgres(url), .sqlite(path) or .store(..)",
                ))
            }
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres(url) => Arc::new(
                crate::store::outbox::PostgresOutbox::builder(url.expose())
                    .table(&self.table)
                    .pool_size(connections)
                    .tls(self.postgres_tls.clone())
                    .build()
                    .map_err(|e| Error::config("postgres", e.to_string()))?,
            ),
            #[cfg(feature = "sqlite")]
            StoreChoice::Sqlite(path) => Arc::new(
                crate::store::outbox::SqliteOutbox::open(path)
                    .and_then(|outbox| outbox.with_table(&self.table))?,
            ),
            StoreChoice::Given(store) => store,
        };
        let transport: Arc<dyn Transport> = match self.transport {
            TransportChoice::Unset => {
                return Err(Error::config(
                    "transport",
                    "choose where events go: .redis(url) or .transport(..)",
                ))
            }
            #[cfg(feature = "redis")]
            TransportChoice::Redis(url) => Arc::new(
                crate::transport::RedisStreams::builder(url.expose())
                    .pool_size(connections)
                    .tls(self.redis_tls.clone())
                    .build()
                    .map_err(|e| Error::config("redis", e.to_string()))?,
            ),
            TransportChoice::Given(transport) => transport,
        };
        Ok(OutboxRelay {
            store,
            transport,
            workers: self.workers,
            batch_size: self.batch_size,
            partitioning,
            poll_interval: self.poll_interval,
            contention_wait: self.contention_wait,
            max_attempts: self.max_attempts,
            retry_policy: self.retry_policy,
            retention: self.retention,
            retention_interval: self.retention_interval,
            trim_after: self.trim_after,
            trim_interval: self.trim_interval,
            replica_wait: self.replica_wait,
            clock: self.clock,
            migrations: self.migrations,
        })
    }
}

/// The relay's split streams, each named once with an accepted count.
fn partitioning(streams: &[(String, u32)]) -> Result<Partitioning> {
    let mut partitioning = Partitioning::default();
    for (index, (stream, partitions)) in streams.iter().enumerate() {
        if let Some(why) = invalid_partition_count(stream, *partitions) {
            return Err(Error::config("partitioned_stream", why));
        }
        if streams[..index]
            .iter()
            .any(|(earlier, _)| earlier == stream)
        {
            return Err(Error::config(
                "partitioned_stream",
                format!("{stream:?} is given twice; give each split stream one count"),
            ));
        }
        partitioning.insert(stream.clone(), *partitions);
    }
    Ok(partitioning)
}
