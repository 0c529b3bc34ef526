//! The PostgreSQL store: an r2d2 pool of `postgres` clients keeping their prepared statements,
//! claims with `FOR UPDATE SKIP LOCKED`, one transaction per claimed batch (see [`batch`]).

mod batch;
mod connection;
pub(crate) mod conninfo;
mod liveness;
mod migrate;
mod queries;
mod session;
mod tls;

pub use connection::{PgConnectError, PgConnection, PgManager, PgTransaction};
pub(in crate::store) use migrate::{
    apply_migrations, apply_migrations_on, pending_migrations, MigrationTarget,
    DEFAULT_MIGRATION_LOCK_TIMEOUT,
};
pub(crate) use queries::by_id_only;
use queries::Queries;
pub use session::SessionLimits;
pub(in crate::store) use tls::PgConnector;

use super::migrations::{Migration, PendingMigration};
use super::{
    counts_by_stream, parse_counted_status, validate_table_name, ClaimParams, Cleanup, Cursor,
    DeadLetterRequeue, DeadLetterSkip, InboxRecord, InboxStore, Page, ParkedAggregate, ParkedPage,
    ParkedSummary, ProcessLease, ProcessedCleanup, QuarantineCleanup, QuarantineFilter,
    QuarantineReplay, QuarantineSummary, ReceivedBatch, Requeued, RowFilter, RowHandler, Settled,
    StatusCounts, StoreError, Stored, DEFAULT_INBOX_TABLE,
};
use crate::event::{Event, EventStatus, InboxRow};
use crate::headers;
use crate::quarantine::{decode_record, QuarantinedEntry};
use crate::redact::ConnectionString;
use crate::tls::TlsSettings;
use chrono::{DateTime, Utc};
use postgres::error::SqlState;
use postgres::{GenericClient, Row, Statement};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// The store's connection pool.
pub type Pool = r2d2::Pool<PgManager>;

/// The embedded inbox migrations for PostgreSQL, from `sql/postgres/inbox/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_event_inbox.sql",
        sql: include_str!("../../../sql/postgres/inbox/0001_event_inbox.sql"),
    },
    Migration {
        version: 2,
        name: "0002_eventflow_additions.sql",
        sql: include_str!("../../../sql/postgres/inbox/0002_eventflow_additions.sql"),
    },
    Migration {
        version: 3,
        name: "0003_operations.sql",
        sql: include_str!("../../../sql/postgres/inbox/0003_operations.sql"),
    },
    Migration {
        version: 4,
        name: "0004_services.sql",
        sql: include_str!("../../../sql/postgres/inbox/0004_services.sql"),
    },
    Migration {
        version: 5,
        name: "0005_stream_positions.sql",
        sql: include_str!("../../../sql/postgres/inbox/0005_stream_positions.sql"),
    },
    Migration {
        version: 6,
        name: "0006_one_unique_index.sql",
        sql: include_str!("../../../sql/postgres/inbox/0006_one_unique_index.sql"),
    },
    Migration {
        version: 7,
        name: "0007_live_consumers.sql",
        sql: include_str!("../../../sql/postgres/inbox/0007_live_consumers.sql"),
    },
    Migration {
        version: 8,
        name: "0008_headers.sql",
        sql: include_str!("../../../sql/postgres/inbox/0008_headers.sql"),
    },
    Migration {
        version: 9,
        name: "0009_open_rows_index.sql",
        sql: include_str!("../../../sql/postgres/inbox/0009_open_rows_index.sql"),
    },
];

/// The embedded migrations that only consumers with per-aggregate order need, from
/// `sql/postgres/inbox_ordered/`: applied by [`InboxStore::migrate_ordered`], recorded apart
/// from [`MIGRATIONS`] (as `inbox-ordered:<table>`), so a table consumed without order never
/// gets them.
pub const ORDERED_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "inbox_ordered/0001_aggregate_order_index.sql",
    sql: include_str!("../../../sql/postgres/inbox_ordered/0001_aggregate_order_index.sql"),
}];

/// The first key of the per-table cleanup lock (`pg_try_advisory_xact_lock(key, hashtext(table))`);
/// the two-key form never collides with the migration lock's one-key form.
const CLEANUP_LOCK_KEY: i32 = 0x6566_636c; // "efcl"

pub(super) const COLUMNS: &str =
    "id, event_id, stream_id, event_type, aggregate_id, correlation_id, causation_id, \
     occurred_on, payload, status, retry_count, max_retries, received_at, processed_at, \
     next_retry_at, error_message, last_error_at, stream, headers";
/// How many columns [`COLUMNS`] names: the index of the first column a query selects after them.
const COLUMN_COUNT: usize = 19;
pub(super) const QUARANTINE_COLUMNS: &str =
    "id, stream, stream_id, raw_fields, reason, received_at, replayed_at, replayed_event_id";

/// Configures a [`PostgresStore`]; see [`PostgresStore::builder`]. Every setter says its
/// default, and `build()` checks the settings and names the one at fault.
///
/// ```no_run
/// use eventflow::store::{PostgresStore, SessionLimits};
/// use eventflow::InboxConsumer;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let store = PostgresStore::builder("postgresql://app@db/app?sslmode=verify-full")
///     .table("billing_inbox")
///     .pool_size(16)
///     .connect_timeout(Duration::from_secs(5))
///     .session_limits(SessionLimits::default().statement_timeout(Duration::from_secs(30)))
///     .build()?;
/// let store = Arc::new(store);
/// // Shared with a consumer, and queried by the application itself.
/// let consumer = InboxConsumer::builder()
///     .store(store.clone())
///     .redis("redis://127.0.0.1:6379")
///     .stream("orders")
///     .group("billing")
///     .handler(|_tx, _row| Ok(()))
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    url: ConnectionString,
    pool_size: u32,
    connect_timeout: Duration,
    table: String,
    limits: SessionLimits,
    migration_lock_timeout: Duration,
    database_clock: bool,
    tls: TlsSettings,
}

impl PostgresStoreBuilder {
    /// TLS settings in code: a CA file, a client certificate, verification on or off. They win
    /// over the connection string's `sslrootcert`, `sslcert`, `sslkey` and `sslmode`; see
    /// [`crate::tls`] for the modes. Defaults to none (the connection string decides).
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.tls = settings;
        self
    }

    /// How long a migration's DDL statement (`ALTER TABLE ...`) waits for its table lock before
    /// giving up, pausing and trying again (logged, up to 30 attempts). A waiting `ALTER TABLE`
    /// queues every writer of the table behind it, so this bounds how long a migration behind a
    /// long transaction can stall inserts. Concurrent index builds do not block writers and
    /// wait as long as they must. Defaults to 2 s.
    pub fn migration_lock_timeout(mut self, timeout: Duration) -> Self {
        self.migration_lock_timeout = timeout;
        self
    }

    /// Most pooled connections. Each reader and each worker holds one while it works.
    /// Defaults to 10.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// How long to wait for a connection before reporting the database unavailable.
    /// Defaults to 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The inbox table's name; the quarantine table is named `<table>_quarantine`.
    /// Defaults to `event_inbox`.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = name.into();
        self
    }

    /// The timeouts and keepalives every pooled connection carries, and the handler time
    /// limit. Defaults to [`SessionLimits::default()`].
    pub fn session_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether the store takes times from the database's clock rather than the [`Clock`]
    /// the runtime passes: a row's `received_at`, and for claims of retries and orphans the due
    /// time and the orphan cutoff, with the failures they record (`last_error_at`,
    /// `next_retry_at`, `processed_at`) moved onto the database's time. So every host judges
    /// by one clock: a host whose clock runs ahead or behind neither steals fresh rows as
    /// orphans nor leaves orphans waiting. Fresh rows handed over by a reader are marked
    /// processed at the host's time (no extra round trip on the hot path). Turn it off to
    /// drive every time from the injected clock, as tests with a manual clock do.
    /// Defaults to on.
    ///
    /// [`Clock`]: crate::Clock
    pub fn database_clock(mut self, on: bool) -> Self {
        self.database_clock = on;
        self
    }

    /// Validates the settings and creates the pool. Connections are made on first use, so this
    /// succeeds while the database is down.
    pub fn build(self) -> Result<PostgresStore, StoreError> {
        validate_table_name(&self.table)?;
        validate_pool(self.pool_size, self.connect_timeout)?;
        let (config, connector) = parse_url(self.url.expose(), &self.tls)?;
        let manager = new_manager(config, connector, &self.limits);
        let pool = new_pool(manager.clone(), self.pool_size, self.connect_timeout);
        Ok(PostgresStore {
            pool,
            manager: std::sync::Arc::new(manager),
            handler_statement: self.limits.handler_statement(),
            sql: Queries::new(&self.table),
            table: self.table,
            pool_size: self.pool_size,
            migration_lock_timeout: self.migration_lock_timeout,
            database_clock: self.database_clock,
        })
    }
}

/// The inbox in PostgreSQL.
///
/// Handlers receive a [`PgTransaction`], which derefs to a [`postgres::Transaction`] and keeps
/// prepared statements per connection.
pub struct PostgresStore {
    pool: Pool,
    /// Opens the sessions that hold consumer processes' leases, outside the pool.
    manager: std::sync::Arc<PgManager>,
    /// `SET LOCAL` of the handler time limit, when it differs from the session's limits.
    handler_statement: Option<String>,
    table: String,
    sql: Queries,
    pool_size: u32,
    migration_lock_timeout: Duration,
    /// See [`PostgresStoreBuilder::database_clock`].
    pub(super) database_clock: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No connection string: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Settings for a store at `url` (`postgresql://user@host/db` or `host=... user=...`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: ConnectionString::new(url),
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            table: DEFAULT_INBOX_TABLE.to_string(),
            limits: SessionLimits::default(),
            migration_lock_timeout: DEFAULT_MIGRATION_LOCK_TIMEOUT,
            database_clock: true,
            tls: TlsSettings::default(),
        }
    }

    /// A store at `url` with default settings.
    pub fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// The connection pool, for the application's own queries.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The inbox table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn connection(&self) -> Result<r2d2::PooledConnection<PgManager>, StoreError> {
        self.pool.get().map_err(StoreError::Pool)
    }
}

/// A connection string as a driver config and the TLS connector for it (`tls` winning over
/// the string's TLS keys); errors never repeat the string (it may hold a password): see
/// [`crate::redact::parse_error`].
pub(in crate::store) fn parse_url(
    url: &str,
    tls: &TlsSettings,
) -> Result<(postgres::Config, PgConnector), StoreError> {
    let mut info = conninfo::parse(url).map_err(|error| {
        StoreError::InvalidConfig(format!("PostgreSQL connection string: {error}"))
    })?;
    let connector = PgConnector::new(&mut info, tls)?;
    Ok((info.config, connector))
}

/// The pool settings both PostgreSQL builders take, checked in `build()` (the pool itself
/// panics on a zero timeout).
pub(in crate::store) fn validate_pool(
    size: u32,
    connect_timeout: Duration,
) -> Result<(), StoreError> {
    if size == 0 {
        return Err(StoreError::InvalidConfig(
            "pool_size must be at least 1".into(),
        ));
    }
    if connect_timeout.is_zero() {
        return Err(StoreError::InvalidConfig(
            "connect_timeout must be more than zero".into(),
        ));
    }
    Ok(())
}

/// What opens the store's connections: the pool's, and any it holds outside the pool.
pub(in crate::store) fn new_manager(
    mut config: postgres::Config,
    connector: PgConnector,
    limits: &SessionLimits,
) -> PgManager {
    limits.apply(&mut config);
    PgManager { config, connector }
}

/// A pool that connects on first use, so it can be built while the database is down.
pub(in crate::store) fn new_pool(manager: PgManager, size: u32, connect_timeout: Duration) -> Pool {
    r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        .build_unchecked(manager)
}

pub(in crate::store) fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { context, source }
}

/// The transaction was aborted by an earlier statement: the handler swallowed a database error.
pub(super) fn is_aborted(error: &postgres::Error) -> bool {
    error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
}

impl PostgresStore {
    fn store_received_on(
        &self,
        conn: &mut PgConnection,
        batch: &ReceivedBatch<'_>,
    ) -> Result<Stored, StoreError> {
        let insert_events = conn
            .prepared(&self.sql.insert_events)
            .map_err(pg("prepare insert"))?;
        let insert_quarantine = conn
            .prepared(&self.sql.insert_quarantine)
            .map_err(pg("prepare quarantine"))?;
        let ordered = batch.ordered && !batch.events.is_empty();
        // Null: stamped with the database's time (see `database_clock`).
        let received_at = (!self.database_clock).then_some(batch.received_at);
        let statements = StoreStatements {
            insert_events,
            insert_quarantine,
            received_at,
        };
        // One statement is its own transaction: no begin and commit round trips, which a
        // consumer that keeps up pays on every event's way to its handler.
        if !ordered && (batch.events.is_empty() || batch.malformed.is_empty()) {
            return statements.store(&mut **conn, batch);
        }
        let lock_aggregates = match ordered {
            true => Some(
                conn.prepared(&self.sql.lock_aggregates)
                    .map_err(pg("prepare aggregate locks"))?,
            ),
            false => None,
        };
        let mut tx = conn.transaction().map_err(pg("begin storing a batch"))?;
        if let Some(lock) = lock_aggregates {
            // Held to commit: a reader storing rows of the same aggregates waits, so within an
            // aggregate `seq` order is commit order and a worker never sees a later row before
            // an earlier one.
            let aggregates: Vec<Uuid> = batch.events.iter().map(|e| e.event.aggregate_id).collect();
            tx.execute(&lock, &[&aggregates])
                .map_err(pg("lock the batch's aggregates"))?;
        }
        let stored = statements.store(&mut *tx, batch)?;
        tx.commit().map_err(pg("commit a received batch"))?;
        Ok(stored)
    }
}

/// The statements that store a read batch, run in a transaction or, when only one of them has
/// rows to write, on their own.
struct StoreStatements {
    insert_events: Statement,
    insert_quarantine: Statement,
    received_at: Option<DateTime<Utc>>,
}

impl StoreStatements {
    fn store(
        &self,
        client: &mut impl GenericClient,
        batch: &ReceivedBatch<'_>,
    ) -> Result<Stored, StoreError> {
        let mut stored = Stored::default();
        let received_at = &self.received_at;
        if !batch.events.is_empty() {
            let events = batch.events;
            let ids: Vec<Uuid> = events.iter().map(|e| e.row_id).collect();
            let event_ids: Vec<&str> = events.iter().map(|e| e.event.event_id.as_str()).collect();
            let stream_ids: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
            let types: Vec<&str> = events.iter().map(|e| e.event.event_type.as_str()).collect();
            let aggregates: Vec<Uuid> = events.iter().map(|e| e.event.aggregate_id).collect();
            let correlations: Vec<Option<&str>> = events
                .iter()
                .map(|e| e.event.correlation_id.as_deref())
                .collect();
            let causations: Vec<Option<&str>> = events
                .iter()
                .map(|e| e.event.causation_id.as_deref())
                .collect();
            let occurred: Vec<DateTime<Utc>> = events.iter().map(|e| e.event.occurred_on).collect();
            let payloads: Vec<String> =
                events.iter().map(|e| e.event.payload.to_string()).collect();
            let headers: Vec<Option<String>> = events
                .iter()
                .map(|e| headers::to_column_text(&e.event.headers))
                .collect();
            let inserted: HashSet<Uuid> = client
                .query(
                    &self.insert_events,
                    &[
                        &ids,
                        &event_ids,
                        &stream_ids,
                        &types,
                        &aggregates,
                        &correlations,
                        &causations,
                        &occurred,
                        &payloads,
                        &batch.max_retries,
                        received_at,
                        &batch.stream,
                        &batch.stored_by,
                        &headers,
                    ],
                )
                .map_err(pg("insert events"))?
                .iter()
                .map(|row| row.get(0))
                .collect();
            stored.inserted = ids.into_iter().filter(|id| inserted.contains(id)).collect();
            stored.duplicates = events.len() - stored.inserted.len();
        }
        if !batch.malformed.is_empty() {
            let entries = batch.malformed;
            let ids: Vec<Uuid> = entries.iter().map(|m| m.id).collect();
            let stream_ids: Vec<&str> = entries.iter().map(|m| m.stream_id.as_str()).collect();
            let fields: Vec<String> = entries.iter().map(|m| m.raw_fields.to_string()).collect();
            let reasons: Vec<&str> = entries.iter().map(|m| m.reason.as_str()).collect();
            stored.quarantined = client
                .execute(
                    &self.insert_quarantine,
                    &[
                        &batch.stream,
                        &ids,
                        &stream_ids,
                        &fields,
                        &reasons,
                        received_at,
                    ],
                )
                .map_err(pg("quarantine malformed entries"))?
                as usize;
        }
        Ok(stored)
    }
}

impl PostgresStore {
    fn migration_target(&self) -> MigrationTarget<'_> {
        self.target("inbox", MIGRATIONS)
    }

    fn ordered_migration_target(&self) -> MigrationTarget<'_> {
        self.target("inbox-ordered", ORDERED_MIGRATIONS)
    }

    /// `migrations` for this table, recorded as `<kind>:<table>`.
    fn target(&self, kind: &str, migrations: &'static [Migration]) -> MigrationTarget<'_> {
        MigrationTarget {
            target: format!("{kind}:{}", self.table),
            migrations,
            render: Box::new(|migration| migration.render(&self.table)),
            lock_timeout: self.migration_lock_timeout,
        }
    }
}

impl InboxStore for PostgresStore {
    type Tx<'t> = PgTransaction<'t>;

    fn migrate(&self) -> Result<(), StoreError> {
        apply_migrations(&self.pool, &self.migration_target())
    }

    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        pending_migrations(&self.pool, &self.migration_target())
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn migrate_ordered(&self) -> Result<(), StoreError> {
        apply_migrations(&self.pool, &self.ordered_migration_target())
    }

    fn pending_ordered_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        pending_migrations(&self.pool, &self.ordered_migration_target())
    }

    fn ordered_migrations(&self) -> &'static [Migration] {
        ORDERED_MIGRATIONS
    }

    fn table(&self) -> &str {
        &self.table
    }

    fn adopt_owner(&self, group: &str, now: DateTime<Utc>) -> Result<String, StoreError> {
        let mut conn = self.connection()?;
        conn.query_one(&self.sql.adopt_owner, &[&group, &now])
            .map_err(pg("adopt the inbox table"))
            .map(|row| row.get(0))
    }

    fn find_owner(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.connection()?;
        conn.query_opt(&self.sql.find_owner, &[])
            .map_err(pg("find the inbox table's owner"))
            .map(|row| row.map(|row| row.get(0)))
    }

    fn count_by_stream(&self) -> Result<Vec<(Option<String>, StatusCounts)>, StoreError> {
        let mut conn = self.connection()?;
        let rows = conn
            .query(&self.sql.count_by_stream, &[])
            .map_err(pg("count rows by stream"))?;
        let rows = rows
            .iter()
            .map(|row| {
                let count: i64 = row.get(2);
                Ok((row.get(0), parse_counted_status(row.get(1))?, count as u64))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(counts_by_stream(rows))
    }

    fn list_parked(&self, page: &ParkedPage) -> Result<Vec<ParkedAggregate>, StoreError> {
        let mut conn = self.connection()?;
        conn.query(
            &self.sql.list_parked,
            &[&page.after, &(page.limit as i64), &page.aggregate_id],
        )
        .map_err(pg("list parked aggregates"))?
        .iter()
        .map(|row| {
            let dead_letter = inbox_row(row)?;
            let waiting: i64 = row.get(COLUMN_COUNT);
            Ok(ParkedAggregate {
                aggregate_id: dead_letter.event.aggregate_id,
                dead_letter,
                waiting: waiting as u64,
                oldest_waiting: row.get(COLUMN_COUNT + 1),
            })
        })
        .collect()
    }

    fn parked_summary(&self) -> Result<ParkedSummary, StoreError> {
        let mut conn = self.connection()?;
        let row = conn
            .query_one(&self.sql.parked_summary, &[])
            .map_err(pg("count parked aggregates"))?;
        let aggregates: i64 = row.get(0);
        Ok(ParkedSummary {
            aggregates: aggregates as u64,
            oldest_waiting: row
                .try_get(1)
                .map_err(|e| corrupt(&"parked rows", "received_at", e))?,
        })
    }

    fn quarantine_summary(&self) -> Result<QuarantineSummary, StoreError> {
        let mut conn = self.connection()?;
        let row = conn
            .query_one(&self.sql.quarantine_summary, &[])
            .map_err(pg("count quarantined entries"))?;
        let (waiting, replayed): (i64, i64) = (row.get(0), row.get(1));
        Ok(QuarantineSummary {
            waiting: waiting as u64,
            replayed: replayed as u64,
            oldest_waiting: row
                .try_get(2)
                .map_err(|e| corrupt(&"quarantined entries", "received_at", e))?,
        })
    }

    fn skip_dead_letter(&self, skip: &DeadLetterSkip) -> Result<bool, StoreError> {
        let mut conn = self.connection()?;
        conn.execute(&self.sql.skip_dead_letter, &[&skip.id, &skip.now])
            .map_err(pg("skip a dead letter"))
            .map(|changed| changed == 1)
    }

    fn store_received(&self, batch: &ReceivedBatch<'_>) -> Result<Stored, StoreError> {
        let mut conn = self.connection()?;
        let stored = self.store_received_on(&mut conn, batch);
        if stored.is_err() {
            conn.forget_statements(); // they may have gone stale
        }
        stored
    }
    fn process_claimed(
        &self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
    ) -> Result<Vec<Settled>, StoreError> {
        batch::process(self, params, handler)
    }

    fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let mut conn = self.connection()?;
        let rows = conn
            .query(&self.sql.count_by_status, &[])
            .map_err(pg("count rows by status"))?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let count: i64 = row.get(1);
            counts
                .0
                .insert(parse_counted_status(row.get(0))?, count as u64);
        }
        Ok(counts)
    }

    fn find_by_event_id(&self, event_id: &str) -> Result<Option<InboxRow>, StoreError> {
        let mut conn = self.connection()?;
        conn.query_opt(&self.sql.find_by_event_id, &[&event_id])
            .map_err(pg("find a row"))?
            .as_ref()
            .map(inbox_row)
            .transpose()
    }

    fn list_quarantined(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        let mut conn = self.connection()?;
        conn.query(
            &self.sql.list_quarantined,
            &[&(limit as i64), &(offset as i64)],
        )
        .map_err(pg("list quarantined entries"))?
        .iter()
        .map(quarantined_entry)
        .collect()
    }

    fn find_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedEntry>, StoreError> {
        let mut conn = self.connection()?;
        conn.query_opt(&self.sql.find_quarantined, &[&id])
            .map_err(pg("find a quarantined entry"))?
            .as_ref()
            .map(quarantined_entry)
            .transpose()
    }

    fn replay_quarantined(&self, replay: &QuarantineReplay<'_>) -> Result<bool, StoreError> {
        let mut conn = self.connection()?;
        let mut tx = conn.transaction().map_err(pg("begin a replay"))?;
        let Some(marked) = tx
            .query_opt(
                &self.sql.mark_replayed,
                &[&replay.id, &replay.now, &replay.event.event.event_id],
            )
            .map_err(pg("mark a quarantined entry replayed"))?
        else {
            return Ok(false);
        };
        let stream: String = marked.get(0);
        let received = replay.event;
        let event = &received.event;
        tx.execute(
            &self.sql.insert_one,
            &[
                &received.row_id,
                &event.event_id,
                &received.stream_id,
                &event.event_type,
                &event.aggregate_id,
                &event.correlation_id,
                &event.causation_id,
                &event.occurred_on,
                &event.payload,
                &replay.max_retries,
                &replay.now,
                &stream,
                &headers::to_column(&event.headers),
            ],
        )
        .map_err(pg("store a replayed event"))?;
        tx.commit().map_err(pg("commit a replay"))?;
        Ok(true)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.connection()?
            .simple_query("SELECT 1")
            .map_err(pg("ping"))
            .map(drop)
    }

    fn max_connections(&self) -> Option<u32> {
        Some(self.pool_size)
    }

    fn open_process_lease(
        &self,
        consumer: &str,
    ) -> Result<Option<Box<dyn ProcessLease>>, StoreError> {
        let lease = liveness::PgProcessLease::open(self.manager.clone(), &self.table, consumer)?;
        Ok(Some(Box::new(lease)))
    }

    fn dead_processes(&self, me: i32, forget_after: Duration) -> Result<Vec<i32>, StoreError> {
        let mut conn = self.connection()?;
        liveness::dead_processes(&mut conn, &self.table, me, forget_after)
    }

    fn list_rows(&self, filter: &RowFilter, page: &Page) -> Result<Vec<InboxRecord>, StoreError> {
        let args = FilterArgs::new(filter, page.after.as_ref());
        let limit = page.limit as i64;
        let mut params = args.params();
        params.push(&limit);
        let mut conn = self.connection()?;
        conn.query(&self.sql.list_rows, &params)
            .map_err(pg("list rows"))?
            .iter()
            .map(|row| {
                Ok(InboxRecord {
                    row: inbox_row(row)?,
                    replay_count: row.get(COLUMN_COUNT),
                    last_replayed_at: row.get(COLUMN_COUNT + 1),
                })
            })
            .collect()
    }

    fn oldest_received(&self, status: EventStatus) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut conn = self.connection()?;
        conn.query_one(&self.sql.oldest_received, &[&status.as_str()])
            .map_err(pg("find the oldest row"))?
            .try_get(0)
            .map_err(|e| corrupt(&status, "received_at", e))
    }

    fn requeue_dead_letters(
        &self,
        requeue: &DeadLetterRequeue<'_>,
    ) -> Result<Requeued, StoreError> {
        let mut args = FilterArgs::new(requeue.filter, requeue.after.as_ref());
        args.status = None;
        let limit = requeue.limit as i64;
        let mut params = args.params();
        params.push(&limit);
        params.push(&requeue.now);
        let mut conn = self.connection()?;
        let rows = conn
            .query(&self.sql.requeue_dead_letters, &params)
            .map_err(pg("requeue dead letters"))?;
        Ok(Requeued {
            count: rows.len() as u64,
            last: rows
                .iter()
                .map(|row| Cursor {
                    received_at: row.get(0),
                    id: row.get(1),
                })
                .max(),
        })
    }

    fn list_quarantined_matching(
        &self,
        filter: &QuarantineFilter,
        page: &Page,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        let mut conn = self.connection()?;
        conn.query(
            &self.sql.list_quarantined_matching,
            &[
                &filter.id,
                &filter.stream,
                &filter.received_from,
                &filter.received_before,
                &filter.reason_contains,
                &filter.replayed,
                &page.after.map(|c| c.received_at),
                &page.after.map(|c| c.id),
                &(page.limit as i64),
            ],
        )
        .map_err(pg("list quarantined entries"))?
        .iter()
        .map(quarantined_entry)
        .collect()
    }

    fn delete_processed_before(&self, cleanup: &ProcessedCleanup) -> Result<Cleanup, StoreError> {
        let mut conn = self.connection()?;
        let mut tx = conn.transaction().map_err(pg("begin a cleanup"))?;
        if cleanup.exclusive {
            let locked: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                    &[&CLEANUP_LOCK_KEY, &self.table],
                )
                .map_err(pg("take the cleanup lock"))?
                .get(0);
            if !locked {
                return Ok(Cleanup::Busy);
            }
        }
        let deleted: i64 = tx
            .query_one(
                &self.sql.delete_processed,
                &[&cleanup.before, &(cleanup.limit as i64)],
            )
            .map_err(pg("delete processed rows"))?
            .get(0);
        tx.commit().map_err(pg("commit a cleanup"))?;
        Ok(Cleanup::Deleted(deleted as u64))
    }

    fn delete_quarantined_before(
        &self,
        cleanup: &QuarantineCleanup,
    ) -> Result<Cleanup, StoreError> {
        let mut conn = self.connection()?;
        let mut tx = conn
            .transaction()
            .map_err(pg("begin a quarantine cleanup"))?;
        if cleanup.exclusive {
            // The inbox cleaner's lock key, on the quarantine table's name: the two cleaners
            // do not wait for each other.
            let locked: bool = tx
                .query_one(
                    "SELECT pg_try_advisory_xact_lock($1, hashtext($2 || '_quarantine'))",
                    &[&CLEANUP_LOCK_KEY, &self.table],
                )
                .map_err(pg("take the quarantine cleanup lock"))?
                .get(0);
            if !locked {
                return Ok(Cleanup::Busy);
            }
        }
        let deleted: i64 = tx
            .query_one(
                &self.sql.delete_quarantined,
                &[&cleanup.before, &(cleanup.limit as i64)],
            )
            .map_err(pg("delete quarantined entries"))?
            .get(0);
        tx.commit().map_err(pg("commit a quarantine cleanup"))?;
        Ok(Cleanup::Deleted(deleted as u64))
    }

    fn newest_stream_id(&self, stream: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.connection()?;
        conn.query_opt(&self.sql.newest_stream_id, &[&stream])
            .map_err(pg("find the newest stored stream id"))
            .map(|row| row.map(|row| row.get(0)))
    }
}

/// A [`RowFilter`] and a cursor as the parameters of `queries::row_filter`.
struct FilterArgs<'a> {
    status: Option<&'static str>,
    id: Option<Uuid>,
    event_id: Option<&'a str>,
    event_type: Option<&'a str>,
    received_from: Option<DateTime<Utc>>,
    received_before: Option<DateTime<Utc>>,
    error_contains: Option<&'a str>,
    after_at: Option<DateTime<Utc>>,
    after_id: Option<Uuid>,
    stream: Option<&'a str>,
}

impl<'a> FilterArgs<'a> {
    fn new(filter: &'a RowFilter, after: Option<&Cursor>) -> Self {
        Self {
            status: filter.status.map(EventStatus::as_str),
            id: filter.id,
            event_id: filter.event_id.as_deref(),
            event_type: filter.event_type.as_deref(),
            received_from: filter.received_from,
            received_before: filter.received_before,
            error_contains: filter.error_contains.as_deref(),
            after_at: after.map(|c| c.received_at),
            after_id: after.map(|c| c.id),
            stream: filter.stream.as_deref(),
        }
    }

    fn params(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        vec![
            &self.status,
            &self.id,
            &self.event_id,
            &self.event_type,
            &self.received_from,
            &self.received_before,
            &self.error_contains,
            &self.after_at,
            &self.after_id,
            &self.stream,
        ]
    }
}

/// Reads an inbox row; a value eventflow cannot hold (an `infinity` timestamp, a status of
/// its own) is an error naming the row, never a panic.
pub(super) fn inbox_row(row: &Row) -> Result<InboxRow, StoreError> {
    let id: Uuid = row.try_get(0).map_err(|e| corrupt(&"?", "id", e))?;
    macro_rules! column {
        ($index:expr, $name:literal) => {
            row.try_get($index).map_err(|e| corrupt(&id, $name, e))?
        };
    }
    let status: String = column!(9, "status");
    let status = EventStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
        row: id.to_string(),
        reason: format!("unknown status {status:?}"),
    })?;
    let payload: serde_json::Value = column!(8, "payload");
    let headers =
        headers::from_column(column!(18, "headers")).map_err(|reason| StoreError::Corrupt {
            row: id.to_string(),
            reason,
        })?;
    Ok(InboxRow {
        id,
        event: Event {
            event_id: column!(1, "event_id"),
            event_type: column!(3, "event_type"),
            aggregate_id: column!(4, "aggregate_id"),
            correlation_id: column!(5, "correlation_id"),
            causation_id: column!(6, "causation_id"),
            occurred_on: column!(7, "occurred_on"),
            // Kept as stored, object or not (the reference contract).
            payload,
            headers,
        },
        stream_id: column!(2, "stream_id"),
        stream: column!(17, "stream"),
        status,
        retry_count: column!(10, "retry_count"),
        max_retries: column!(11, "max_retries"),
        received_at: column!(12, "received_at"),
        processed_at: column!(13, "processed_at"),
        next_retry_at: column!(14, "next_retry_at"),
        error_message: column!(15, "error_message"),
        last_error_at: column!(16, "last_error_at"),
    })
}

fn corrupt(row: &dyn std::fmt::Display, column: &str, error: postgres::Error) -> StoreError {
    StoreError::Corrupt {
        row: row.to_string(),
        reason: format!("column {column}: {error}"),
    }
}

fn quarantined_entry(row: &Row) -> Result<QuarantinedEntry, StoreError> {
    let id: Uuid = row.get(0);
    let raw: serde_json::Value = row.get(3);
    let (fields, oversized) = decode_record(&raw).map_err(|reason| StoreError::Corrupt {
        row: id.to_string(),
        reason,
    })?;
    Ok(QuarantinedEntry {
        id,
        stream: row.get(1),
        stream_id: row.get(2),
        fields,
        oversized,
        reason: row.get(4),
        received_at: row.get(5),
        replayed_at: row.get(6),
        replayed_event_id: row.get(7),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::PostgresOutbox;

    /// Both PostgreSQL builders refuse an empty pool and a zero connect timeout in `build()`,
    /// naming the setting, where the pool would panic. No server is needed: nothing connects.
    #[test]
    fn builders_refuse_pool_settings_the_pool_would_panic_on() {
        let url = "host=127.0.0.1 user=postgres dbname=test";
        let refused = |result: Result<(), StoreError>| match result {
            Err(StoreError::InvalidConfig(message)) => message,
            other => panic!("expected InvalidConfig, got {other:?}"),
        };
        let store = |size, timeout| {
            PostgresStore::builder(url)
                .pool_size(size)
                .connect_timeout(timeout)
                .build()
                .map(drop)
        };
        let outbox = |size, timeout| {
            PostgresOutbox::builder(url)
                .pool_size(size)
                .connect_timeout(timeout)
                .build()
                .map(drop)
        };
        let second = Duration::from_secs(1);
        for build in [&store as &dyn Fn(u32, Duration) -> _, &outbox] {
            assert!(refused(build(0, second)).contains("pool_size"));
            assert!(refused(build(2, Duration::ZERO)).contains("connect_timeout"));
            assert!(build(2, second).is_ok());
        }
    }
}
