//! Configuring a consumer: [`ConsumerBuilder`].
//!
//! The store is chosen first (`.postgres(..)`, `.sqlite(..)`, `.sqlite_in_memory()` or
//! `.store(..)`), because it decides the transaction type the handler receives; then the handler.
//! All other settings can come in any order. Setters never fail: `build()` checks everything
//! once and names the setting at fault.

use super::consumer::{Handler, InboxConsumer, Runtime};
use super::dead_letter::DeadLetter;
use super::settings::Settings;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::InboxRow;
use crate::handler::HandlerResult;
#[cfg(any(feature = "postgres", feature = "redis"))]
use crate::redact::ConnectionString;
use crate::retry::RetryPolicy;
use crate::store::{AfterDeadLetter, InboxStore, Migrations};
use crate::transport::partition::{invalid_partition_count, partition_streams};
use crate::transport::Transport;
#[cfg(feature = "sqlite")]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Builds an [`InboxConsumer`]. Start with [`InboxConsumer::builder`].
///
/// Choose the store first (it decides the handler's transaction type), then the handler or
/// routes; every other setting can come in any order and says its default. `build()` checks
/// the whole configuration once and names the setting at fault.
///
/// ```
/// use eventflow::transport::MemoryStream;
/// use eventflow::{Error, HandlerResult, InboxConsumer};
/// use std::time::Duration;
///
/// let consumer = InboxConsumer::builder()
///     .transport(MemoryStream::new())         // or .redis(url)
///     .sqlite_in_memory()                     // or .postgres(url) / .sqlite(path) / .store(..)
///     .table("billing_inbox")
///     .streams(["orders", "payments"])
///     .group("billing")
///     .workers(4)
///     .max_attempts(5)
///     .retention(Duration::from_secs(7 * 86_400))
///     .handler(|tx, row| -> HandlerResult {
///         tx.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT)", [])?;
///         tx.execute("INSERT INTO seen VALUES (?1)", [&row.event.event_id])?;
///         Ok(())
///     })
///     .build()?;
///
/// // A bad setting is named.
/// let error = InboxConsumer::builder()
///     .transport(MemoryStream::new())
///     .sqlite_in_memory()
///     .stream("orders")
///     .group("billing")
///     .workers(0)
///     .handler(|_tx, _row| Ok(()))
///     .build()
///     .unwrap_err();
/// assert!(matches!(error, Error::Config { field: "workers", .. }), "{error}");
/// # Ok::<(), Error>(())
/// ```
pub struct ConsumerBuilder<B = NoStore, H = ()> {
    source: B,
    handler: H,
    transport: Option<TransportChoice>,
    table: Option<String>,
    pool_size: Option<u32>,
    settings: Settings,
}

enum TransportChoice {
    #[cfg(feature = "redis")]
    Redis(ConnectionString),
    Given(Arc<dyn Transport>),
}

impl std::fmt::Debug for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "redis")]
            Self::Redis(url) => f.debug_tuple("Redis").field(url).finish(),
            Self::Given(_) => f.write_str("Given"),
        }
    }
}

/// The store, the transport and the table; never a password (connection strings show
/// [`redact`](crate::redact::redact)ed).
impl<B: std::fmt::Debug, H> std::fmt::Debug for ConsumerBuilder<B, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("store", &self.source)
            .field("transport", &self.transport)
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// No store chosen yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

/// A PostgreSQL store to open at `build()`.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct PostgresUrl(ConnectionString);

/// A SQLite store to open at `build()`: a file, or in memory when `None`.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqlitePath(Option<PathBuf>);

/// A store the application opened itself.
#[derive(Debug)]
pub struct Prebuilt<S>(Arc<S>);

/// What the builder needs from the store it opens.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The inbox table name, when set with [`ConsumerBuilder::table`].
    pub table: Option<String>,
    /// The pool size, when set with [`ConsumerBuilder::pool_size`].
    pub pool_size: Option<u32>,
    /// Connections the readers and workers hold at once.
    pub connections_needed: u32,
    /// The handler time limit, from [`ConsumerBuilder::handler_timeout`].
    pub handler_timeout: Duration,
    /// The session limits, when set with [`ConsumerBuilder::session_limits`].
    #[cfg(feature = "postgres")]
    pub session_limits: Option<crate::store::SessionLimits>,
    /// TLS settings, from [`ConsumerBuilder::postgres_tls`].
    #[cfg(feature = "postgres")]
    pub postgres_tls: crate::tls::TlsSettings,
}

/// Something that yields the consumer's store at `build()`.
///
/// The builder's store choice (`.postgres(url)`, `.sqlite(path)`, `.sqlite_in_memory()`,
/// [`ConsumerBuilder::store`]) is one; until one is
/// made the builder holds [`NoStore`], which is not, so `.handler(..)`, `.route(..)` and
/// `build()` are refused at compile time with a message saying to choose the store first:
///
/// ```compile_fail,E0277
/// use eventflow::{HandlerResult, InboxConsumer};
///
/// // error[E0277]: choose the store before the handler: `NoStore` is not a store
/// let builder = InboxConsumer::builder().handler(|_tx, _row| -> HandlerResult { Ok(()) });
/// ```
#[diagnostic::on_unimplemented(
    message = "choose the store before the handler: `{Self}` is not a store",
    label = "the store decides the handler's transaction type, so it must come first",
    note = "call `.postgres(url)`, `.sqlite(path)`, `.sqlite_in_memory()` or `.store(store)` before `.handler(..)`, `.route(..)` or `.build()`",
    note = "with `.postgres(..)` the handler gets `&mut eventflow::store::PgTransaction` (it derefs to `postgres::Transaction`); with `.sqlite(..)` it gets `&mut rusqlite::Transaction`"
)]
pub trait StoreSource {
    /// The store it yields.
    type Store: InboxStore;
    /// Opens the store.
    fn open(self, options: &StoreOptions) -> Result<Arc<Self::Store>>;
}

#[cfg(feature = "postgres")]
impl StoreSource for PostgresUrl {
    type Store = crate::store::PostgresStore;

    fn open(self, options: &StoreOptions) -> Result<Arc<Self::Store>> {
        let mut builder = crate::store::PostgresStore::builder(self.0.expose());
        if let Some(table) = &options.table {
            builder = builder.table(table);
        }
        // Two spare connections for health checks and the application's own use of the pool.
        let pool_size = options.pool_size.unwrap_or(options.connections_needed + 2);
        let limits = options
            .session_limits
            .clone()
            .unwrap_or_default()
            .handler_timeout(options.handler_timeout);
        Ok(Arc::new(
            builder
                .pool_size(pool_size)
                .session_limits(limits)
                .tls(options.postgres_tls.clone())
                .build()?,
        ))
    }
}

#[cfg(feature = "sqlite")]
impl StoreSource for SqlitePath {
    type Store = crate::store::SqliteStore;

    fn open(self, options: &StoreOptions) -> Result<Arc<Self::Store>> {
        if options.pool_size.is_some() {
            return Err(Error::config(
                "pool_size",
                "SQLite uses one connection; remove .pool_size()",
            ));
        }
        #[cfg(feature = "postgres")]
        if options.session_limits.is_some() {
            return Err(Error::config(
                "session_limits",
                "PostgreSQL session limits do not apply to SQLite; remove .session_limits()",
            ));
        }
        let store = match self.0 {
            Some(path) => crate::store::SqliteStore::open(path)?,
            None => crate::store::SqliteStore::open_in_memory()?,
        };
        let store = match &options.table {
            Some(table) => store.with_table(table)?,
            None => store,
        };
        Ok(Arc::new(store))
    }
}

impl<S: InboxStore> StoreSource for Prebuilt<S> {
    type Store = S;

    fn open(self, options: &StoreOptions) -> Result<Arc<S>> {
        if options.table.is_some() {
            return Err(Error::config(
                "table",
                "set the table on the store passed to .store()",
            ));
        }
        if options.pool_size.is_some() {
            return Err(Error::config(
                "pool_size",
                "set the pool size on the store passed to .store()",
            ));
        }
        #[cfg(feature = "postgres")]
        if options.session_limits.is_some() {
            return Err(Error::config(
                "session_limits",
                "set the session limits on the store passed to .store()",
            ));
        }
        Ok(self.0)
    }
}

impl InboxConsumer {
    /// Starts configuring a consumer.
    ///
    /// ```no_run
    /// use eventflow::{InboxConsumer, HandlerResult};
    /// use std::time::Duration;
    ///
    /// let consumer = InboxConsumer::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .postgres("host=127.0.0.1 user=postgres dbname=app")
    ///     .stream("orders")
    ///     .group("billing")
    ///     .workers(4)
    ///     .handler(|tx, row| -> HandlerResult {
    ///         tx.execute("INSERT INTO invoices (order_event) VALUES ($1)", &[&row.event.event_id])?;
    ///         Ok(())
    ///     })
    ///     .build()?;
    /// let handle = consumer.start()?;
    /// // ... until the service stops:
    /// handle.shutdown(Duration::from_secs(10))?;
    /// # Ok::<(), eventflow::Error>(())
    /// ```
    pub fn builder() -> ConsumerBuilder<NoStore, ()> {
        ConsumerBuilder {
            source: NoStore,
            handler: (),
            transport: None,
            table: None,
            pool_size: None,
            settings: Settings::default(),
        }
    }
}

impl<H> ConsumerBuilder<NoStore, H> {
    fn with_source<B>(self, source: B) -> ConsumerBuilder<B, H> {
        ConsumerBuilder {
            source,
            handler: self.handler,
            transport: self.transport,
            table: self.table,
            pool_size: self.pool_size,
            settings: self.settings,
        }
    }

    /// Keeps the inbox in PostgreSQL at `url` (`postgresql://user@host/db` or
    /// `host=... user=... dbname=...`). Handlers receive a
    /// `&mut `[`PgTransaction`](crate::store::PgTransaction), which derefs to
    /// [`postgres::Transaction`] (so `tx.execute(sql, params)` works as usual) and adds
    /// [`prepare_cached`](crate::store::PgTransaction::prepare_cached).
    #[cfg(feature = "postgres")]
    pub fn postgres(self, url: impl Into<String>) -> ConsumerBuilder<PostgresUrl, H> {
        self.with_source(PostgresUrl(ConnectionString::new(url)))
    }

    /// Keeps the inbox in the SQLite file at `path`. Handlers receive a
    /// `&mut `[`rusqlite::Transaction`], which derefs to [`rusqlite::Connection`].
    #[cfg(feature = "sqlite")]
    pub fn sqlite(self, path: impl Into<PathBuf>) -> ConsumerBuilder<SqlitePath, H> {
        self.with_source(SqlitePath(Some(path.into())))
    }

    /// Keeps the inbox in a private in-memory SQLite database, for tests and demos. Handlers
    /// receive a `&mut `[`rusqlite::Transaction`], as with [`sqlite`](Self::sqlite).
    #[cfg(feature = "sqlite")]
    pub fn sqlite_in_memory(self) -> ConsumerBuilder<SqlitePath, H> {
        self.with_source(SqlitePath(None))
    }

    /// Keeps the inbox in a store the application opened (to share its pool, or to query it in
    /// tests). Handlers receive the store's [`InboxStore::Tx`]: `eventflow::store::PgTransaction`
    /// for a `PostgresStore`, `rusqlite::Transaction` for a `SqliteStore`.
    pub fn store<S: InboxStore>(self, store: Arc<S>) -> ConsumerBuilder<Prebuilt<S>, H> {
        self.with_source(Prebuilt(store))
    }
}

// The store bound sits on each method, not on the impl, so that calling one before choosing a
// store reports `StoreSource`'s own message ("choose the store before the handler") rather
// than "the method exists but its trait bounds were not satisfied".
impl<B> ConsumerBuilder<B, ()> {
    /// The function run for each event, inside the transaction that marks it processed.
    ///
    /// It takes `(tx, row)`: `tx` is the store's transaction (`&mut
    /// eventflow::store::PgTransaction`, which derefs to `postgres::Transaction`, with
    /// `.postgres(..)`; `&mut rusqlite::Transaction` with `.sqlite(..)`; see
    /// [`InboxStore::Tx`]) and `row` the
    /// [`InboxRow`] being handled. The store must be chosen first, since it decides `tx`'s type;
    /// calling `handler` on a builder with no store yet is a compile error that says so.
    ///
    /// Return `Ok(())` to commit its writes with the row; return an error (any error converts
    /// with `?`) to roll them back and retry later, or [`crate::HandlerError::give_up`] to
    /// dead-letter the event now. A panic counts as a failed attempt and never kills a worker.
    /// The handler may run more than once for one event (after a failure, or a crash before
    /// commit), so effects outside the transaction should be idempotent. On PostgreSQL a row
    /// fresh from a reader is claimed by marking it processed, so a handler that reads its own
    /// inbox row in the transaction sees `processed` (the `InboxRow` it is given shows the row
    /// as stored); a failure is recorded over that mark before commit.
    pub fn handler<F>(self, handler: F) -> ConsumerBuilder<B, F>
    where
        B: StoreSource,
        F: Fn(&mut <B::Store as InboxStore>::Tx<'_>, &InboxRow) -> HandlerResult
            + Send
            + Sync
            + 'static,
    {
        ConsumerBuilder {
            source: self.source,
            handler,
            transport: self.transport,
            table: self.table,
            pool_size: self.pool_size,
            settings: self.settings,
        }
    }
}

impl<B, H> ConsumerBuilder<B, H> {
    /// Reads from the Redis server at `url` (`redis://[:password@]host:port[/db]`).
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.transport = Some(TransportChoice::Redis(ConnectionString::new(url)));
        self
    }

    /// TLS settings in code for the Redis transport opened by [`redis`](Self::redis) (a
    /// `rediss://` URL): a CA file, a client certificate, verification on or off; see
    /// [`crate::tls`]. Defaults to none (the URL decides).
    #[cfg(feature = "redis")]
    pub fn redis_tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.settings.redis_tls = settings;
        self
    }

    /// TLS settings in code for the PostgreSQL store opened by [`postgres`](ConsumerBuilder::postgres),
    /// winning over the connection string's `sslmode`, `sslrootcert`, `sslcert` and `sslkey`;
    /// see [`crate::tls`]. Defaults to none (the connection string decides).
    #[cfg(feature = "postgres")]
    pub fn postgres_tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.settings.postgres_tls = settings;
        self
    }

    /// Reads from `transport`, for example a [`crate::transport::MemoryStream`] in tests.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(TransportChoice::Given(Arc::new(transport)));
        self
    }

    /// A stream to read; call it once per stream to read several into the one inbox table.
    /// At least one is required.
    ///
    /// Each stream is read with its own `XREADGROUP` (never one command over several keys, so
    /// streams may live on different Redis Cluster slots) by [`readers`](Self::readers) threads,
    /// with the same group name on each; a stream that does not exist yet is created with the
    /// group at `start()`. Every stored row records the stream it came from. Duplicates are
    /// found per table, across streams: an `event_id` seen on any of them is handled once.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.settings.streams.push(stream.into());
        self
    }

    /// Several streams at once; the same as calling [`stream`](Self::stream) for each.
    pub fn streams<I, T>(mut self, streams: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.settings
            .streams
            .extend(streams.into_iter().map(Into::into));
        self
    }

    /// Reads every partition of the logical stream `stream`, split into `partitions` by the
    /// relays that publish to it ([`RelayBuilder::partitioned_stream`] with the same count):
    /// the streams `stream:{<tag>}` named by [`partition_streams`], each read like a stream
    /// given to [`stream`](Self::stream), by its own [`readers`](Self::readers) threads. Every
    /// stored row records its partition's stream. With [`ordered`](Self::ordered), each
    /// aggregate's events keep their order: the relay sends all of an aggregate's events to one
    /// partition, whose order the readers keep. `partitions` is between 1 and
    /// [`MAX_PARTITIONS`](crate::transport::partition::MAX_PARTITIONS).
    ///
    /// While the partition count changes, give the larger count (or, from an unsplit stream,
    /// both `.stream(s)` and `.partitioned_stream(s, n)`) so that the old partitions are read
    /// until they drain; the README's "Partitioned streams" says in which order to change
    /// relays and consumers to keep each aggregate's order. Defaults to no split stream.
    ///
    /// [`RelayBuilder::partitioned_stream`]: crate::outbox::RelayBuilder::partitioned_stream
    /// [`partition_streams`]: crate::transport::partition::partition_streams
    pub fn partitioned_stream(mut self, stream: impl Into<String>, partitions: u32) -> Self {
        let stream = stream.into();
        match invalid_partition_count(&stream, partitions) {
            Some(why) => self.settings.bad_partitions = Some(why),
            None => self
                .settings
                .streams
                .extend(partition_streams(&stream, partitions)),
        }
        self
    }

    /// Handles the events of one `aggregate_id` one at a time, in the order the inbox stored
    /// them, while different aggregates are handled in parallel, by any worker of any process.
    ///
    /// Within one stream the storing order is the stream's order: a reader stores a batch only
    /// once every earlier entry of its stream is stored, waiting for other readers (and taking
    /// over, after [`reclaim_idle`](Self::reclaim_idle), entries a dead consumer left). Across
    /// streams it is the order in which the events were stored. A failing event holds back only
    /// the later events of its own aggregate until it succeeds; a dead letter parks the
    /// aggregate (see [`after_dead_letter`](Self::after_dead_letter)). Nothing relies on "ids
    /// greater than the last seen", so the order holds across crashes, reclaims and several
    /// processes.
    ///
    /// How: a reader hands the aggregates it stored to a waiting worker, which claims their
    /// heads (one index probe per aggregate) and goes on with the aggregates it settled;
    /// workers' polls claim the heads of any aggregate (retries, other processes' rows). As for
    /// fresh rows, a head claimed this way is marked processed by its claim, so a handler that
    /// reads its own inbox row sees `processed` (a failure is recorded over it).
    ///
    /// The cost: a batch holds at most one event per aggregate, so a backlog moves in smaller
    /// batches (60 to 70 % of the unordered throughput over 1,000 aggregates on the 2-core
    /// benchmark machine; one reader per stream, `.readers(1)`, lowers the latency and may cost
    /// up to a sixth of that), and a crashed consumer's unstored entries hold back the storing of
    /// later entries of their stream until `reclaim_idle` passes. Defaults to off.
    ///
    /// The probe reads an index that only ordered consumers need (on PostgreSQL), so `start()`
    /// of an ordered consumer makes it ([`InboxStore::migrate_ordered`], a concurrent build,
    /// slow on a large table only the first time); with
    /// [`Migrations::Verify`](crate::Migrations::Verify), `start()` fails until
    /// `eventflow migrate --ordered` has made it.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.settings.ordered = ordered;
        self
    }

    /// In [ordered](Self::ordered) mode, what a dead letter does to the later events of its
    /// aggregate: [`AfterDeadLetter::Park`] holds them until an operator requeues the dead
    /// letter (handled again in its place in the order) or skips it (`eventflow parked skip`);
    /// [`AfterDeadLetter::Skip`] lets them go on. Defaults to `Park`.
    pub fn after_dead_letter(mut self, after: AfterDeadLetter) -> Self {
        self.settings.after_dead_letter = after;
        self
    }

    /// In [ordered](Self::ordered) mode, how often the parked-aggregate gauges are refreshed
    /// (see [`crate::inbox::metrics`]); between 1 ms and 1 hour. Defaults to 10 s.
    pub fn parked_gauge_interval(mut self, interval: Duration) -> Self {
        self.settings.parked_gauge_interval = interval;
        self
    }

    /// The consumer group, shared by every process of one service. Required.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.settings.group = group.into();
        self
    }

    /// Consumer names are `{prefix}-{hostname}-{pid}`. Defaults to `eventflow`.
    pub fn consumer_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.consumer_prefix = prefix.into();
        self
    }

    /// Worker threads running handlers. Defaults to 4.
    pub fn workers(mut self, workers: usize) -> Self {
        self.settings.workers = workers;
        self
    }

    /// Reader threads per stream, each a consumer of the group (`{prefix}-{hostname}-{pid}`,
    /// then `-1`, `-2`, ... for the others; the same names on every stream). Defaults to 2, so
    /// that one reader reads the next batch while the other stores its own: on the 2-core
    /// benchmark machine a second reader added about a quarter to the throughput, and in
    /// [ordered](Self::ordered) mode (where a stream's batches are stored one at a time) about
    /// 15 %, for 2 ms more latency at the median from `XADD` to handler at 1,000 events/s.
    pub fn readers(mut self, readers: usize) -> Self {
        self.settings.readers = readers;
        self
    }

    /// Most entries per read (`XREADGROUP COUNT`), stored in one transaction. Defaults to 500:
    /// on the 2-core benchmark machine, 100 ran 25 to 30 % slower under a flood (no-op and
    /// one-row handlers), 250 about 12 % slower, and 1,000 ran as 500 did. A larger count adds
    /// no latency when the consumer keeps up, since a read returns with what has arrived; what
    /// it costs is memory on the one read on which entry sizes jump (see
    /// [`max_batch_bytes`](Self::max_batch_bytes)).
    pub fn read_batch(mut self, entries: usize) -> Self {
        self.settings.read_batch = entries;
        self
    }

    /// The largest stream entry (every field name and value, in bytes) stored as an event. A
    /// larger entry is quarantined instead, with its size, its stream id, its field names and
    /// the first 1 KiB of each value ([`crate::quarantine::OVERSIZED_PREFIX_BYTES`]), and
    /// acknowledged, so it is never read again; the reason gives its size and this limit. The
    /// entry is still read whole once: Redis cannot send part of an entry. Between 1 KiB and
    /// 512 MiB. Defaults to 1 MiB.
    pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_entry_bytes = bytes;
        self
    }

    /// The bytes of entries a reader aims to hold at once, besides the
    /// [`read_batch`](Self::read_batch) count. Redis cannot be asked for a number of bytes, so
    /// a reader stores a read batch in chunks of at most this many bytes (an entry larger than
    /// it is a chunk of its own) and, after a batch, lowers the next read's `COUNT` to this
    /// many bytes divided by the batch's average entry size (never below 1, never above
    /// `read_batch`). What it really bounds: while entry sizes stay steady, a reader holds
    /// about this many bytes; the one read on which sizes jump can still bring `read_batch`
    /// entries of the new size, after which the count adapts. Multiply by the readers per
    /// stream and the streams for the consumer's total. At least
    /// [`max_entry_bytes`](Self::max_entry_bytes). Defaults to 16 MiB.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_batch_bytes = bytes;
        self
    }

    /// How long a read waits for new entries (`XREADGROUP BLOCK`), at most 60 s. A reader
    /// notices shutdown between reads, so this is roughly how long shutdown waits for an idle
    /// reader (a reader storing a batch finishes it first). Defaults to 1 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.settings.block = block;
        self
    }

    /// Most rows a worker claims and handles in one transaction. Larger batches mean fewer
    /// commits but more handlers run again when one fails (see
    /// [`optimistic_batches`](Self::optimistic_batches)); on PostgreSQL, more than 64 writing
    /// handlers under savepoints in one transaction overflow the server's subtransaction cache
    /// and slow it down. Defaults to 64.
    pub fn claim_batch(mut self, rows: usize) -> Self {
        self.settings.claim_batch = rows;
        self
    }

    /// Whether a batch's handlers run straight in its transaction, without a savepoint per
    /// event. When a handler fails, the batch is rolled back and redone with a savepoint per
    /// event, so a failure undoes only its own event's writes; the handlers that had succeeded
    /// run again, their first writes having been rolled back, so database effects still happen
    /// once. A worker whose last batch had a failure uses savepoints from the start.
    ///
    /// This saves a round trip per event on PostgreSQL. Turn it off when handlers have costly
    /// effects outside the database and failures are common. Defaults to true.
    pub fn optimistic_batches(mut self, optimistic: bool) -> Self {
        self.settings.optimistic_batches = optimistic;
        self
    }

    /// How often idle workers look for due rows: retries whose time has come, rows left by a
    /// crashed process, rows stored by other processes. New rows read by this process reach
    /// workers at once, not on this tick. Each worker ticks on its own, but a poll that found
    /// nothing due answers for the process's other workers until the next interval, as each poll
    /// walks the index of open rows. Defaults to 500 ms.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// A pending row that no worker has claimed this long after it was stored is taken by any
    /// worker's poll: the process whose reader stored it most likely died. Until then it is left
    /// to the workers its reader handed it to, since a poller taking it would only make them
    /// wait. Retries are not affected: a failed row is due at its `next_retry_at`. Zero lets
    /// polls take every pending row at once. At most 7 days. Defaults to 10 s.
    ///
    /// With [`process_leases`](Self::process_leases) on (PostgreSQL), the rows of a process
    /// known dead are taken at once, whatever their age; this is then the bound for the rest:
    /// rows stored without a lease, or by a process cut off from the database but not yet
    /// known dead.
    ///
    /// An orphan's attempt is counted before it runs (its last attempt may have died with its
    /// process), and a counted attempt is not due again before this long, whatever the retry
    /// policy says: until then it may still be running.
    pub fn orphan_after(mut self, after: Duration) -> Self {
        self.settings.orphan_after = after;
        self
    }

    /// Whether this consumer process holds a lease in the database while it runs, recorded on
    /// the rows it stores, so that when it dies the other processes take the rows it stored
    /// but never handled within about a second instead of after
    /// [`orphan_after`](Self::orphan_after). On PostgreSQL the lease is a session advisory lock
    /// on a connection of its own, outside the pool (one more connection per process); SQLite
    /// has none. Behind a pooler in transaction mode (PgBouncer's `pool_mode = transaction`)
    /// a session lock may outlive the process or end before it: dead processes are then found
    /// late (by `orphan_after`) or live ones early (their fresh rows claimed by others, which
    /// costs a claim, never a second handling); give such a deployment a session-mode pool or
    /// turn this off. Defaults to on.
    pub fn process_leases(mut self, on: bool) -> Self {
        self.settings.process_leases = on;
        self
    }

    /// Entries another consumer read but has not acknowledged for this long are taken over
    /// (`XAUTOCLAIM`): that consumer most likely died. Must be longer than `block`.
    /// Defaults to 60 s.
    pub fn reclaim_idle(mut self, idle: Duration) -> Self {
        self.settings.reclaim_idle = idle;
        self
    }

    /// How often readers look for stale entries to take over. Defaults to 15 s.
    pub fn reclaim_interval(mut self, interval: Duration) -> Self {
        self.settings.reclaim_interval = interval;
        self
    }

    /// Failed attempts after which a row is dead-lettered (a handler error, a panic, an attempt
    /// that died with its process each count one); 0 retries for ever. Stored with each new row
    /// in the reference schema's `max_retries` column, so a row keeps the limit it was stored
    /// with. The same name as the outbox relay's
    /// [`max_attempts`](crate::outbox::RelayBuilder::max_attempts). Defaults to 3 (values past
    /// `i32::MAX`, the column's range, count as `i32::MAX`).
    ///
    /// ```
    /// # use eventflow::{InboxConsumer, transport::MemoryStream};
    /// let consumer = InboxConsumer::builder()
    ///     .transport(MemoryStream::new())
    ///     .sqlite_in_memory()
    ///     .stream("orders")
    ///     .group("billing")
    ///     .max_attempts(5) // dead-lettered at the fifth failure
    ///     .handler(|_tx, _row| Ok(()))
    ///     .build()?;
    /// # Ok::<(), eventflow::Error>(())
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_retries = i32::try_from(attempts).unwrap_or(i32::MAX);
        self
    }

    /// The earlier name of [`max_attempts`](Self::max_attempts), after the reference schema's
    /// column; a negative value fails at `build()`.
    #[deprecated(
        since = "0.1.0",
        note = "renamed `max_attempts`, as the outbox relay's setting for the same idea"
    )]
    pub fn max_retries(mut self, max_retries: i32) -> Self {
        self.settings.max_retries = max_retries;
        self
    }

    /// When failed events are retried. Defaults to [`crate::ExponentialBackoff::default`]:
    /// 60 s doubling to at most 15 min, with up to 10 % jitter.
    pub fn retry_policy(mut self, policy: impl RetryPolicy) -> Self {
        self.settings.retry_policy = Arc::new(policy);
        self
    }

    /// The clock for `received_at`, retry times and due checks. Defaults to the system clock;
    /// tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// Called once for each row that becomes a dead letter (its handler gave up, or failed for
    /// the `max_retries`-th time), after the transaction recording it has committed; never for a
    /// dead-lettering that rolled back. Use it to alert or to count; it runs on the worker
    /// thread, so keep it quick (hand slow work to a channel). A panic in it is caught and
    /// logged; the worker goes on. Each dead letter is also logged once at error level with the
    /// message `"event dead-lettered"`, hook or not. Defaults to no hook.
    ///
    /// ```
    /// use eventflow::inbox::DeadLetter;
    /// use eventflow::transport::MemoryStream;
    /// use eventflow::InboxConsumer;
    ///
    /// let consumer = InboxConsumer::builder()
    ///     .transport(MemoryStream::new())
    ///     .sqlite_in_memory()
    ///     .stream("orders")
    ///     .group("billing")
    ///     .on_dead_letter(|dead: &DeadLetter| {
    ///         eprintln!("ALERT {} {} after {} attempts: {}", dead.event_type, dead.event_id,
    ///                   dead.attempts, dead.error);
    ///     })
    ///     .handler(|_tx, _row| Ok(()))
    ///     .build()?;
    /// # Ok::<(), eventflow::Error>(())
    /// ```
    pub fn on_dead_letter(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.settings.on_dead_letter = Some(Arc::new(hook));
        self
    }

    /// Whether `start()` applies the embedded migrations first: `true` is
    /// [`Migrations::Apply`], `false` [`Migrations::Skip`]. Defaults to true.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.settings.migrations = if migrate {
            Migrations::Apply
        } else {
            Migrations::Skip
        };
        self
    }

    /// What `start()` does about the schema: apply the missing migrations, only verify that
    /// none is missing (failing with an error that names them and the `eventflow migrate`
    /// command to run, for deployments that migrate from the command line), or nothing.
    /// Defaults to [`Migrations::Apply`].
    pub fn migrations(mut self, migrations: Migrations) -> Self {
        self.settings.migrations = migrations;
        self
    }

    /// Deletes processed rows once their `processed_at` is this old, from a background thread
    /// of the consumer, 1,000 rows per transaction, every
    /// [`retention_interval`](Self::retention_interval), so the table does not grow for ever.
    /// Only processed rows go: pending, failed and dead-lettered rows are kept whatever their
    /// age. Several processes may have it on; one cleans at a time (on PostgreSQL by a
    /// per-table advisory lock). Keep rows at least as long as duplicates of an event can
    /// arrive, since a deleted row no longer stops its event being handled again. Between 1 s
    /// and 100 years. Takes a `Duration` or an `Option<Duration>` (`None` keeps rows for ever),
    /// as the outbox relay's [`retention`](crate::outbox::RelayBuilder::retention) does.
    /// Defaults to `None`, off (rows are kept; `eventflow purge` deletes them by hand).
    pub fn retention(mut self, keep: impl Into<Option<Duration>>) -> Self {
        self.settings.retention = keep.into();
        self
    }

    /// Deletes quarantined entries once they were quarantined this long ago, replayed or
    /// not, from a background thread of the consumer, 1,000 per transaction, every
    /// [`retention_interval`](Self::retention_interval), so a producer sending malformed
    /// entries cannot grow the quarantine table for ever. The newest stream id of what it
    /// deletes is remembered, as for the inbox's own retention. One process cleans at a time.
    /// Between 1 s and 100 years. Defaults to off (entries are kept; `eventflow quarantine
    /// purge` deletes them by hand).
    pub fn quarantine_retention(mut self, keep: Duration) -> Self {
        self.settings.quarantine_retention = Some(keep);
        self
    }

    /// How often the retention cleaners run, when [`retention`](Self::retention) or
    /// [`quarantine_retention`](Self::quarantine_retention) is set; between 1 ms and 1 day.
    /// Defaults to 10 min.
    pub fn retention_interval(mut self, interval: Duration) -> Self {
        self.settings.retention_interval = interval;
        self
    }

    /// The handler time limit. A handler running longer makes
    /// [`health()`](super::ConsumerHandle::health) report the consumer not live, naming the
    /// worker and the event ([`Health::hung_handlers`](super::Health::hung_handlers)), and is
    /// logged at error level once. For a PostgreSQL store opened by the builder the server also
    /// enforces it on the handler's transaction ([`SessionLimits::handler_timeout`]): a stuck
    /// handler's transaction is ended and its rows go to other workers. For a store passed to
    /// [`store`](ConsumerBuilder::store), set the same limit on the store's own
    /// [`SessionLimits`]. Between 1 ms and 24 hours. Defaults to 30 s.
    ///
    /// [`SessionLimits::handler_timeout`]: crate::store::SessionLimits::handler_timeout
    /// [`SessionLimits`]: crate::store::SessionLimits
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handler_timeout = timeout;
        self
    }

    /// Timeouts and keepalives for the connections of a PostgreSQL store opened by the builder
    /// (see [`SessionLimits`](crate::store::SessionLimits)); their handler time limit is
    /// replaced by [`handler_timeout`](Self::handler_timeout). Defaults to
    /// `SessionLimits::default()`.
    #[cfg(feature = "postgres")]
    pub fn session_limits(mut self, limits: crate::store::SessionLimits) -> Self {
        self.settings.session_limits = Some(limits);
        self
    }

    /// The inbox table's name, for stores opened by the builder. Defaults to `event_inbox`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// Database pool size, for a PostgreSQL store opened by the builder; at least readers +
    /// workers. Defaults to readers + workers + 2.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = Some(size);
        self
    }
}

impl<B, H> ConsumerBuilder<B, H> {
    /// Checks the configuration and opens the store and transport (connections are made on
    /// first use, so this succeeds while the servers are down).
    pub fn build(self) -> Result<InboxConsumer>
    where
        B: StoreSource,
        H: Handler<B::Store>,
    {
        let settings = self.settings;
        settings.validate()?;
        let transport: Arc<dyn Transport> = match self.transport {
            None => {
                return Err(Error::config(
                    "transport",
                    "required: call .redis(url), or .transport(MemoryStream::new()) for tests",
                ))
            }
            #[cfg(feature = "redis")]
            Some(TransportChoice::Redis(url)) => Arc::new(
                crate::transport::RedisStreams::builder(url.expose())
                    // One blocking connection per reader, plus room for acks and publishes.
                    .pool_size(settings.reader_threads() as u32 + 4)
                    .tls(settings.redis_tls.clone())
                    .build()?,
            ),
            Some(TransportChoice::Given(transport)) => transport,
        };
        let needed = settings.connections_needed();
        let store = self.source.open(&StoreOptions {
            table: self.table,
            pool_size: self.pool_size,
            connections_needed: needed,
            handler_timeout: settings.handler_timeout,
            #[cfg(feature = "postgres")]
            session_limits: settings.session_limits.clone(),
            #[cfg(feature = "postgres")]
            postgres_tls: settings.postgres_tls.clone(),
        })?;
        if let Some(max) = store.max_connections() {
            if max < needed {
                return Err(Error::config(
                    "pool_size",
                    format!(
                        "{max} connections cannot serve {} readers and {} workers; use at least {needed}",
                        settings.reader_threads(), settings.workers
                    ),
                ));
            }
        }
        Ok(InboxConsumer::new(Runtime {
            store,
            transport,
            handler: Arc::new(self.handler),
            settings: Arc::new(settings),
        }))
    }
}

// Routing by event type. Routes are registered on the builder after the store is chosen, so
// that the store's transaction type is known and closures' parameter types are inferred.
// (These imports sit here, not at the top, to keep routing in one block of this file.)

use super::router::{Router, UnknownEvents};
use serde::de::DeserializeOwned;

impl<B> ConsumerBuilder<B, ()> {
    /// Runs `handler` for events of `event_type`, through a [`Router`] that this starts; add
    /// more routes with further `route` and [`route_typed`](Self::route_typed) calls. Its
    /// result means what a [`handler`](Self::handler)'s does. Each event type takes one route:
    /// `build()` refuses a type given two, with an error naming `route`. An event type with no
    /// route is dead-lettered, unless [`unknown_events`](ConsumerBuilder::unknown_events) says
    /// otherwise.
    ///
    /// ```
    /// use eventflow::transport::{MemoryStream, Transport};
    /// use eventflow::{Event, HandlerResult, InboxConsumer, UnknownEvents};
    /// use serde_json::json;
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Deserialize)]
    /// struct OrderCreated {
    ///     order_id: String,
    /// }
    ///
    /// let stream = MemoryStream::new();
    /// let consumer = InboxConsumer::builder()
    ///     .transport(stream.clone())
    ///     .sqlite_in_memory()
    ///     .stream("orders")
    ///     .group("billing")
    ///     .route_typed("OrderCreated", |tx, _row, order: OrderCreated| -> HandlerResult {
    ///         tx.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)", [])?;
    ///         tx.execute("INSERT INTO orders (id) VALUES (?1)", [&order.order_id])?;
    ///         Ok(())
    ///     })
    ///     .route("OrderCancelled", |tx, row| -> HandlerResult {
    ///         let order_id = row.event.payload["order_id"].as_str().unwrap_or_default();
    ///         tx.execute("DELETE FROM orders WHERE id = ?1", [order_id])?;
    ///         Ok(())
    ///     })
    ///     // Events of other types are marked processed and counted, not dead-lettered.
    ///     .unknown_events(UnknownEvents::MarkProcessed)
    ///     .build()?;
    /// let handle = consumer.start()?;
    ///
    /// let created = Event::new("OrderCreated", uuid::Uuid::new_v4(), json!({"order_id": "o-1"}));
    /// let shipped = Event::new("OrderShipped", uuid::Uuid::new_v4(), json!({"order_id": "o-1"}));
    /// stream.publish("orders", created.to_entry_fields())?;
    /// stream.publish("orders", shipped.to_entry_fields())?;
    /// # let deadline = std::time::Instant::now() + Duration::from_secs(10);
    /// # while handle.stats().processed < 2 && std::time::Instant::now() < deadline {
    /// #     std::thread::sleep(Duration::from_millis(10));
    /// # }
    /// let report = handle.shutdown(Duration::from_secs(10))?;
    /// assert_eq!(report.stats.processed, 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route(
        self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut <B::Store as InboxStore>::Tx<'_>, &InboxRow) -> HandlerResult
            + Send
            + Sync
            + 'static,
    ) -> ConsumerBuilder<B, Router<B::Store>>
    where
        B: StoreSource,
    {
        self.router(Router::new()).route(event_type, handler)
    }

    /// Runs `handler` for events of `event_type` with their payload deserialized into `T`,
    /// through a [`Router`] that this starts (see [`route`](Self::route)). A payload that does
    /// not deserialize is dead-lettered at once, with the serde error as its reason.
    pub fn route_typed<T: DeserializeOwned + 'static>(
        self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut <B::Store as InboxStore>::Tx<'_>, &InboxRow, T) -> HandlerResult
            + Send
            + Sync
            + 'static,
    ) -> ConsumerBuilder<B, Router<B::Store>>
    where
        B: StoreSource,
    {
        self.router(Router::new()).route_typed(event_type, handler)
    }

    /// Handles events with `router`, built on its own; more routes can still be added with
    /// [`route`](ConsumerBuilder::route). An event type it registered twice makes `build()`
    /// fail, naming `route`.
    pub fn router(self, router: Router<B::Store>) -> ConsumerBuilder<B, Router<B::Store>>
    where
        B: StoreSource,
    {
        ConsumerBuilder {
            source: self.source,
            handler: router,
            transport: self.transport,
            table: self.table,
            pool_size: self.pool_size,
            settings: self.settings,
        }
        .check_routes()
    }
}

impl<B: StoreSource> ConsumerBuilder<B, Router<B::Store>> {
    /// Adds a route: runs `handler` for events of `event_type`. See
    /// [`route`](ConsumerBuilder::route) on a builder with no handler yet.
    pub fn route(
        mut self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut <B::Store as InboxStore>::Tx<'_>, &InboxRow) -> HandlerResult
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.handler = self.handler.on(event_type, handler);
        self.check_routes()
    }

    /// Adds a typed route: runs `handler` for events of `event_type` with their payload
    /// deserialized into `T`. See [`route_typed`](ConsumerBuilder::route_typed) on a builder
    /// with no handler yet.
    pub fn route_typed<T: DeserializeOwned + 'static>(
        mut self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut <B::Store as InboxStore>::Tx<'_>, &InboxRow, T) -> HandlerResult
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.handler = self.handler.on_typed(event_type, handler);
        self.check_routes()
    }

    /// What happens to an event whose type has no route. Defaults to
    /// [`UnknownEvents::DeadLetter`]: dead-lettered at once with the reason
    /// `no handler for event type X`.
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.handler = self.handler.unknown_events(policy);
        self
    }

    /// Hands a type registered twice to the settings, for `build()` to report.
    fn check_routes(mut self) -> Self {
        if self.settings.duplicate_route.is_none() {
            self.settings.duplicate_route = self.handler.duplicate().map(str::to_string);
        }
        self
    }
}
