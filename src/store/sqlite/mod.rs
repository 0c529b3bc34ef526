//! The SQLite store: one connection behind a mutex, so handlers run one at a time (SQLite has a
//! single writer anyway). Meant for unit-testing handlers and for small single-process services.
//!
//! Columns hold UUIDs as lowercase hyphenated text, timestamps as UTC RFC 3339 text with
//! microseconds (`2025-01-01T00:00:00.000000Z`, so text order is time order; times after
//! [`LATEST_STORED_TIME`] are stored as it) and JSON as text.

use super::attempts::{self, Count, Counted};
use super::migrations::{Migration, PendingMigration, MIGRATIONS_TABLE};
use super::refusal::{one_row, Retry};
use super::{
    counts_by_stream, orphaned_before, parse_counted_status, truncate_error, validate_table_name,
    AfterDeadLetter, Claim, ClaimParams, Cleanup, Cursor, DeadLetterRequeue, DeadLetterSkip,
    InboxRecord, InboxStore, Page, ParkedAggregate, ParkedPage, ParkedSummary, ProcessedCleanup,
    QuarantineCleanup, QuarantineFilter, QuarantineReplay, QuarantineSummary, ReceivedBatch,
    ReceivedEvent, Requeued, RowFilter, RowHandler, Settled, StatusCounts, StoreError, Stored,
    Verdict, DEFAULT_INBOX_TABLE,
};
use crate::event::{Event, EventStatus, InboxRow};
use crate::headers;
use crate::quarantine::{decode_record, QuarantinedEntry};
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// The embedded inbox migrations for SQLite, from `sql/sqlite/inbox/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_event_inbox.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0001_event_inbox.sql"),
    },
    Migration {
        version: 2,
        name: "0002_eventflow_additions.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0002_eventflow_additions.sql"),
    },
    Migration {
        version: 3,
        name: "0003_operations.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0003_operations.sql"),
    },
    Migration {
        version: 4,
        name: "0004_services.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0004_services.sql"),
    },
    Migration {
        version: 5,
        name: "0005_stream_positions.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0005_stream_positions.sql"),
    },
    Migration {
        version: 6,
        name: "0006_headers.sql",
        sql: include_str!("../../../sql/sqlite/inbox/0006_headers.sql"),
    },
];

mod queries;

use queries::Queries;

const COLUMNS: &str =
    "id, event_id, stream_id, event_type, aggregate_id, correlation_id, causation_id, \
     occurred_on, payload, status, retry_count, max_retries, received_at, processed_at, \
     next_retry_at, error_message, last_error_at, stream, headers";
/// How many columns [`COLUMNS`] names: the index of the first column a query selects after them.
const COLUMN_COUNT: usize = 19;
const QUARANTINE_COLUMNS: &str =
    "id, stream, stream_id, raw_fields, reason, received_at, replayed_at, replayed_event_id";

/// The inbox in SQLite.
///
/// Handlers receive a [`rusqlite::Transaction`], which derefs to [`rusqlite::Connection`], so
/// functions taking `&Connection` work inside it. A handler must write through that
/// transaction, never through the store (`with_connection` or any store method): the store's one
/// connection is held by the handler's batch, so such a call panics (recorded as a failed
/// attempt) rather than waiting for ever.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    table: String,
    sql: Queries,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// Opens (creating if needed) the database file at `path` in WAL mode, which lets readers in
/// other connections and processes (the application's, an operator's sqlite3 shell) work
/// alongside a writer.
pub(in crate::store) fn open_file(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(lite("open the database file"))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(lite("enable WAL"))?;
    Ok(conn)
}

/// A private in-memory database.
pub(in crate::store) fn open_memory() -> Result<Connection, StoreError> {
    Connection::open_in_memory().map_err(lite("open an in-memory database"))
}

/// Makes `conn` wait up to 5 s for another connection's write lock instead of failing at once.
pub(in crate::store) fn wait_when_busy(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(lite("set the busy timeout"))
}

pub(in crate::store) fn lite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { context, source }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, in WAL mode, with the default
    /// table name `event_inbox`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::from_connection(open_file(path.as_ref())?, DEFAULT_INBOX_TABLE)
    }

    /// A private in-memory database, gone when the store is dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(open_memory()?, DEFAULT_INBOX_TABLE)
    }

    /// The same database with the inbox table named `table` (the quarantine table is
    /// `<table>_quarantine`).
    pub fn with_table(self, table: impl Into<String>) -> Result<Self, StoreError> {
        Self::from_connection(self.conn.into_inner(), &table.into())
    }

    fn from_connection(conn: Connection, table: &str) -> Result<Self, StoreError> {
        validate_table_name(table)?;
        wait_when_busy(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            table: table.to_string(),
            sql: Queries::new(table),
        })
    }

    /// The connection, refusing loudly (a panic, which a worker records as a failed attempt)
    /// when this thread already holds it: a handler calling the store would otherwise wait for
    /// ever on the lock its own batch holds.
    fn lock(&self) -> parking_lot::MutexGuard<'_, Connection> {
        if HANDLING.get() == self as *const Self as usize {
            panic!(
                "a handler called the SQLite store it runs in; write through the handler's \
                 transaction instead (the store's one connection is busy with that batch)"
            );
        }
        self.conn.lock()
    }

    /// Runs `f` with the store's connection, for the application's own queries. Blocks while a
    /// worker holds it; from a handler it panics (use the handler's transaction).
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.lock())
    }

    /// The inbox table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

thread_local! {
    /// The address of the store whose batch this thread is running handlers in, or 0.
    static HANDLING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as running handlers in a store's batch until dropped (also when a
/// panic unwinds). Another store may be used meanwhile; this one may not.
struct Handling;

impl Handling {
    fn begin(store: &SqliteStore) -> Self {
        HANDLING.set(store as *const SqliteStore as usize);
        Handling
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        HANDLING.set(0);
    }
}

/// A timestamp as the SQLite columns hold it.
/// Applies the `migrations` not yet recorded for `target` (`inbox:<table>`, `outbox:<table>`)
/// in one `IMMEDIATE` transaction, which serializes migrating processes.
pub(in crate::store) fn apply_migrations(
    conn: &mut Connection,
    target: &str,
    migrations: &[Migration],
    render: &dyn Fn(&Migration) -> String,
) -> Result<(), StoreError> {
    // IMMEDIATE takes the write lock first, which serializes migrating processes.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(lite("begin migration"))?;
    apply_pending(&tx, target, migrations, render)?;
    tx.commit().map_err(lite("commit migration"))
}

/// [`apply_migrations`] on the application's own connection: in an `IMMEDIATE` transaction of
/// its own when the connection is in none, else in a savepoint of the caller's transaction
/// (which then holds the write lock; the migration commits or rolls back with it).
pub(in crate::store) fn apply_migrations_on(
    conn: &Connection,
    target: &str,
    migrations: &[Migration],
    render: &dyn Fn(&Migration) -> String,
) -> Result<(), StoreError> {
    let (begin, commit, undo) = if conn.is_autocommit() {
        ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
    } else {
        (
            "SAVEPOINT eventflow_migrate",
            "RELEASE eventflow_migrate",
            "ROLLBACK TO eventflow_migrate; RELEASE eventflow_migrate",
        )
    };
    conn.execute_batch(begin).map_err(lite("begin migration"))?;
    match apply_pending(conn, target, migrations, render)
        .and_then(|()| conn.execute_batch(commit).map_err(lite("commit migration")))
    {
        Ok(()) => Ok(()),
        Err(error) => {
            // Best effort: the error says what went wrong, whatever the undo does.
            let _ = conn.execute_batch(undo);
            Err(error)
        }
    }
}

/// The migrations not yet recorded for `target`, applied and recorded on `tx`, which the caller
/// has made a transaction holding the write lock.
fn apply_pending(
    tx: &Connection,
    target: &str,
    migrations: &[Migration],
    render: &dyn Fn(&Migration) -> String,
) -> Result<(), StoreError> {
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            target TEXT NOT NULL,
            version INTEGER NOT NULL,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            PRIMARY KEY (target, version))"
    ))
    .map_err(lite("create the migrations table"))?;
    let applied: Vec<u32> = {
        let mut statement = tx
            .prepare(&format!(
                "SELECT version FROM {MIGRATIONS_TABLE} WHERE target = ?1"
            ))
            .map_err(lite("read applied migrations"))?;
        let versions = statement
            .query_map([&target], |row| row.get(0))
            .map_err(lite("read applied migrations"))?;
        versions
            .collect::<Result<_, _>>()
            .map_err(lite("read applied migrations"))?
    };
    for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| StoreError::Migration {
            version: migration.version,
            name: migration.name,
            source: Box::new(source),
        };
        tx.execute_batch(&render(migration))
            .map_err(|e| failed(lite("apply")(e)))?;
        tx.execute(
            &format!("INSERT INTO {MIGRATIONS_TABLE} (target, version, name) VALUES (?1, ?2, ?3)"),
            params![target, migration.version, migration.name],
        )
        .map_err(|e| failed(lite("record")(e)))?;
        tracing::info!(target_table = %target, version = migration.version, name = migration.name, "applied migration");
    }
    Ok(())
}

/// The `migrations` not yet recorded for `target`, as they would run (SQLite runs every file in
/// one transaction); changes nothing (the migrations table is not created when missing).
pub(in crate::store) fn pending_migrations(
    conn: &Connection,
    target: &str,
    migrations: &[Migration],
    render: &dyn Fn(&Migration) -> String,
) -> Result<Vec<PendingMigration>, StoreError> {
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [MIGRATIONS_TABLE],
            |row| row.get(0),
        )
        .map_err(lite("look for the migrations table"))?;
    let mut applied: Vec<u32> = Vec::new();
    if exists {
        let mut statement = conn
            .prepare(&format!(
                "SELECT version FROM {MIGRATIONS_TABLE} WHERE target = ?1"
            ))
            .map_err(lite("read applied migrations"))?;
        applied = statement
            .query_map([&target], |row| row.get(0))
            .map_err(lite("read applied migrations"))?
            .collect::<Result<_, _>>()
            .map_err(lite("read applied migrations"))?;
    }
    Ok(migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| PendingMigration::new(m, &render(m), true))
        .collect())
}

/// A time as the stored text. Text order is time order only for four-digit years (a year
/// beyond 9999 is written `+10000-...`, which sorts before `2025-...`), so times are clamped to
/// years 0000 to 9999: a later one is stored as [`LATEST_STORED_TIME`] (a far-off retry still
/// sorts after every real time, never before now), an earlier one as year 0000's first instant.
pub(in crate::store) fn ts(at: DateTime<Utc>) -> String {
    at.clamp(earliest_stored_time(), latest_stored_time())
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The latest time the SQLite store keeps; later times are stored as this one.
pub const LATEST_STORED_TIME: &str = "9999-12-31T23:59:59.999999Z";

fn latest_stored_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(LATEST_STORED_TIME)
        .expect("a valid constant")
        .to_utc()
}

fn earliest_stored_time() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(0, 1, 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .expect("a valid date")
        .and_utc()
}

pub(in crate::store) fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.to_utc())
        .map_err(|error| StoreError::Corrupt {
            row: text.to_string(),
            reason: format!("not an RFC 3339 timestamp: {error}"),
        })
}

pub(in crate::store) fn parse_opt_ts(
    text: Option<String>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.as_deref().map(parse_ts).transpose()
}

pub(in crate::store) fn parse_uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|error| StoreError::Corrupt {
        row: text.to_string(),
        reason: format!("not a UUID: {error}"),
    })
}

fn ids_json(ids: impl IntoIterator<Item = Uuid>) -> String {
    serde_json::Value::Array(ids.into_iter().map(|id| id.to_string().into()).collect()).to_string()
}

impl InboxStore for SqliteStore {
    type Tx<'t> = Transaction<'t>;

    fn migrate(&self) -> Result<(), StoreError> {
        apply_migrations(
            &mut self.lock(),
            &format!("inbox:{}", self.table),
            MIGRATIONS,
            &|migration| migration.render(&self.table),
        )
    }

    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        pending_migrations(
            &self.conn.lock(),
            &format!("inbox:{}", self.table),
            MIGRATIONS,
            &|migration| migration.render(&self.table),
        )
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn table(&self) -> &str {
        &self.table
    }

    fn adopt_owner(&self, group: &str, now: DateTime<Utc>) -> Result<String, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin adopting the inbox table"))?;
        tx.execute(&self.sql.adopt_owner, params![group, ts(now)])
            .map_err(lite("adopt the inbox table"))?;
        let owner: String = tx
            .query_row(&self.sql.find_owner, [], |row| row.get(0))
            .map_err(lite("find the inbox table's owner"))?;
        tx.commit()
            .map_err(lite("commit adopting the inbox table"))?;
        Ok(owner)
    }

    fn find_owner(&self) -> Result<Option<String>, StoreError> {
        self.lock()
            .query_row(&self.sql.find_owner, [], |row| row.get(0))
            .optional()
            .map_err(lite("find the inbox table's owner"))
    }

    fn count_by_stream(&self) -> Result<Vec<(Option<String>, StatusCounts)>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.count_by_stream)
            .map_err(lite("count rows by stream"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(lite("count rows by stream"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("count rows by stream"))?;
        let rows = rows
            .into_iter()
            .map(|(stream, status, count)| {
                Ok((stream, parse_counted_status(&status)?, count as u64))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(counts_by_stream(rows))
    }

    fn list_parked(&self, page: &ParkedPage) -> Result<Vec<ParkedAggregate>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.list_parked)
            .map_err(lite("list parked aggregates"))?;
        let raw = statement
            .query_map(
                params![
                    page.after.map(|id| id.to_string()),
                    page.limit as i64,
                    page.aggregate_id.map(|id| id.to_string())
                ],
                |row| {
                    Ok((
                        RawRow::read(row)?,
                        row.get::<_, i64>(COLUMN_COUNT)?,
                        row.get::<_, Option<String>>(COLUMN_COUNT + 1)?,
                    ))
                },
            )
            .map_err(lite("list parked aggregates"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("list parked aggregates"))?;
        raw.into_iter()
            .map(|(row, waiting, oldest)| {
                let dead_letter = row.into_row()?;
                Ok(ParkedAggregate {
                    aggregate_id: dead_letter.event.aggregate_id,
                    dead_letter,
                    waiting: waiting as u64,
                    oldest_waiting: parse_opt_ts(oldest)?,
                })
            })
            .collect()
    }

    fn parked_summary(&self) -> Result<ParkedSummary, StoreError> {
        let (aggregates, oldest): (i64, Option<String>) = self
            .lock()
            .query_row(&self.sql.parked_summary, [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(lite("count parked aggregates"))?;
        Ok(ParkedSummary {
            aggregates: aggregates as u64,
            oldest_waiting: parse_opt_ts(oldest)?,
        })
    }

    fn quarantine_summary(&self) -> Result<QuarantineSummary, StoreError> {
        let (waiting, replayed, oldest): (i64, i64, Option<String>) = self
            .lock()
            .query_row(&self.sql.quarantine_summary, [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .map_err(lite("count quarantined entries"))?;
        Ok(QuarantineSummary {
            waiting: waiting as u64,
            replayed: replayed as u64,
            oldest_waiting: parse_opt_ts(oldest)?,
        })
    }

    fn skip_dead_letter(&self, skip: &DeadLetterSkip) -> Result<bool, StoreError> {
        self.lock()
            .execute(
                &self.sql.skip_dead_letter,
                params![skip.id.to_string(), ts(skip.now)],
            )
            .map_err(lite("skip a dead letter"))
            .map(|changed| changed == 1)
    }

    fn store_received(&self, batch: &ReceivedBatch<'_>) -> Result<Stored, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin storing a batch"))?;
        let mut stored = Stored::default();
        let received_at = ts(batch.received_at);
        {
            let mut insert = tx
                .prepare_cached(&self.sql.insert_event)
                .map_err(lite("prepare insert"))?;
            for received in batch.events {
                let changed = insert_event(
                    &mut insert,
                    received,
                    batch.stream,
                    batch.max_retries,
                    &received_at,
                )
                .map_err(lite("insert an event"))?;
                if changed == 1 {
                    stored.inserted.push(received.row_id);
                } else {
                    stored.duplicates += 1;
                }
            }
            let mut quarantine = tx
                .prepare_cached(&self.sql.insert_quarantine)
                .map_err(lite("prepare quarantine"))?;
            for entry in batch.malformed {
                stored.quarantined += quarantine
                    .execute(params![
                        entry.id.to_string(),
                        batch.stream,
                        entry.stream_id,
                        entry.raw_fields.to_string(),
                        entry.reason,
                        received_at,
                    ])
                    .map_err(lite("quarantine an entry"))?;
            }
        }
        tx.commit().map_err(lite("commit a received batch"))?;
        Ok(stored)
    }

    fn process_claimed(
        &self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
    ) -> Result<Vec<Settled>, StoreError> {
        attempts::process(&mut Batches(self), params, handler)
    }

    fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.count_by_status)
            .map_err(lite("count rows"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(lite("count rows"))?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let (status, count) = row.map_err(lite("count rows"))?;
            counts
                .0
                .insert(parse_counted_status(&status)?, count as u64);
        }
        Ok(counts)
    }

    fn find_by_event_id(&self, event_id: &str) -> Result<Option<InboxRow>, StoreError> {
        let conn = self.lock();
        conn.query_row(&self.sql.find_by_event_id, [event_id], RawRow::read)
            .optional()
            .map_err(lite("find a row"))?
            .map(RawRow::into_row)
            .transpose()
    }

    fn list_quarantined(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.list_quarantined)
            .map_err(lite("list quarantined entries"))?;
        let raw = statement
            .query_map(params![limit as i64, offset as i64], RawQuarantined::read)
            .map_err(lite("list quarantined entries"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("list quarantined entries"))?;
        raw.into_iter().map(RawQuarantined::into_entry).collect()
    }

    fn find_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedEntry>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            &self.sql.find_quarantined,
            [id.to_string()],
            RawQuarantined::read,
        )
        .optional()
        .map_err(lite("find a quarantined entry"))?
        .map(RawQuarantined::into_entry)
        .transpose()
    }

    fn replay_quarantined(&self, replay: &QuarantineReplay<'_>) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin a replay"))?;
        let received = replay.event;
        let event = &received.event;
        let stream: Option<String> = tx
            .query_row(
                &self.sql.mark_replayed,
                params![replay.id.to_string(), ts(replay.now), event.event_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(lite("mark a quarantined entry replayed"))?;
        let Some(stream) = stream else {
            return Ok(false);
        };
        {
            let mut insert = tx
                .prepare_cached(&self.sql.insert_event)
                .map_err(lite("prepare insert"))?;
            insert_event(
                &mut insert,
                received,
                &stream,
                replay.max_retries,
                &ts(replay.now),
            )
            .map_err(lite("store a replayed event"))?;
        }
        tx.commit().map_err(lite("commit a replay"))?;
        Ok(true)
    }

    fn ping(&self) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.query_row("SELECT 1", [], |_| Ok(()))
            .map_err(lite("ping"))
    }

    fn max_connections(&self) -> Option<u32> {
        None
    }

    fn list_rows(&self, filter: &RowFilter, page: &Page) -> Result<Vec<InboxRecord>, StoreError> {
        let mut args = filter_args(filter, page.after.as_ref());
        args.push((page.limit as i64).into());
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.list_rows)
            .map_err(lite("list rows"))?;
        let raw = statement
            .query_map(rusqlite::params_from_iter(args), |row| {
                Ok((
                    RawRow::read(row)?,
                    row.get::<_, i32>(COLUMN_COUNT)?,
                    row.get::<_, Option<String>>(COLUMN_COUNT + 1)?,
                ))
            })
            .map_err(lite("list rows"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("list rows"))?;
        raw.into_iter()
            .map(|(row, replay_count, replayed_at)| {
                Ok(InboxRecord {
                    row: row.into_row()?,
                    replay_count,
                    last_replayed_at: parse_opt_ts(replayed_at)?,
                })
            })
            .collect()
    }

    fn oldest_received(&self, status: EventStatus) -> Result<Option<DateTime<Utc>>, StoreError> {
        let conn = self.lock();
        let oldest: Option<String> = conn
            .query_row(&self.sql.oldest_received, [status.as_str()], |row| {
                row.get(0)
            })
            .map_err(lite("find the oldest row"))?;
        parse_opt_ts(oldest)
    }

    fn requeue_dead_letters(
        &self,
        requeue: &DeadLetterRequeue<'_>,
    ) -> Result<Requeued, StoreError> {
        let mut args = filter_args(requeue.filter, requeue.after.as_ref());
        args[0] = rusqlite::types::Value::Null; // the status: always dead_letter
        args.push((requeue.limit as i64).into());
        args.push(ts(requeue.now).into());
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin a requeue"))?;
        let requeued = {
            let mut statement = tx
                .prepare_cached(&self.sql.requeue_dead_letters)
                .map_err(lite("requeue dead letters"))?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(args), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(lite("requeue dead letters"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(lite("requeue dead letters"))?;
            rows
        };
        tx.commit().map_err(lite("commit a requeue"))?;
        let mut last = None;
        for (received_at, id) in &requeued {
            let cursor = Cursor {
                received_at: parse_ts(received_at)?,
                id: parse_uuid(id)?,
            };
            last = last.max(Some(cursor));
        }
        Ok(Requeued {
            count: requeued.len() as u64,
            last,
        })
    }

    fn list_quarantined_matching(
        &self,
        filter: &QuarantineFilter,
        page: &Page,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(&self.sql.list_quarantined_matching)
            .map_err(lite("list quarantined entries"))?;
        let raw = statement
            .query_map(
                params![
                    filter.id.map(|id| id.to_string()),
                    filter.stream,
                    filter.received_from.map(ts),
                    filter.received_before.map(ts),
                    filter.reason_contains,
                    filter.replayed,
                    page.after.map(|c| ts(c.received_at)),
                    page.after.map(|c| c.id.to_string()),
                    page.limit as i64,
                ],
                RawQuarantined::read,
            )
            .map_err(lite("list quarantined entries"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("list quarantined entries"))?;
        raw.into_iter().map(RawQuarantined::into_entry).collect()
    }

    /// SQLite has one writer, so `exclusive` needs nothing more: two cleaners take turns.
    fn delete_processed_before(&self, cleanup: &ProcessedCleanup) -> Result<Cleanup, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(lite("begin a cleanup"))?;
        let args = params![ts(cleanup.before), cleanup.limit as i64];
        let deleted = tx
            .prepare_cached(&self.sql.keep_newest_deleted)
            .and_then(|mut statement| statement.execute(args))
            .and_then(|_| tx.prepare_cached(&self.sql.delete_processed))
            .and_then(|mut statement| statement.execute(args))
            .map_err(lite("delete processed rows"))?;
        tx.commit().map_err(lite("commit a cleanup"))?;
        Ok(Cleanup::Deleted(deleted as u64))
    }

    fn delete_quarantined_before(
        &self,
        cleanup: &QuarantineCleanup,
    ) -> Result<Cleanup, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(lite("begin a quarantine cleanup"))?;
        let args = params![ts(cleanup.before), cleanup.limit as i64];
        let deleted = tx
            .prepare_cached(&self.sql.keep_newest_quarantined)
            .and_then(|mut statement| statement.execute(args))
            .and_then(|_| tx.prepare_cached(&self.sql.delete_quarantined))
            .and_then(|mut statement| statement.execute(args))
            .map_err(lite("delete quarantined entries"))?;
        tx.commit().map_err(lite("commit a quarantine cleanup"))?;
        Ok(Cleanup::Deleted(deleted as u64))
    }

    fn newest_stream_id(&self, stream: &str) -> Result<Option<String>, StoreError> {
        let conn = self.lock();
        conn.query_row(&self.sql.newest_stream_id, [stream], |row| row.get(0))
            .optional()
            .map_err(lite("find the newest stored stream id"))
    }
}

/// A [`RowFilter`] and a cursor as the parameters `?1` to `?10` of the row filter's conditions.
fn filter_args(filter: &RowFilter, after: Option<&Cursor>) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value;
    let text = |value: Option<String>| value.map_or(Value::Null, Value::Text);
    vec![
        text(filter.status.map(|s| s.as_str().to_string())),
        text(filter.id.map(|id| id.to_string())),
        text(filter.event_id.clone()),
        text(filter.event_type.clone()),
        text(filter.received_from.map(ts)),
        text(filter.received_before.map(ts)),
        text(filter.error_contains.clone()),
        text(after.map(|c| ts(c.received_at))),
        text(after.map(|c| c.id.to_string())),
        text(filter.stream.clone()),
    ]
}

/// Inserts a received event as a pending row unless its `event_id` is there; returns the rows
/// changed (0 for a duplicate).
fn insert_event(
    insert: &mut rusqlite::CachedStatement<'_>,
    received: &ReceivedEvent,
    stream: &str,
    max_retries: i32,
    received_at: &str,
) -> rusqlite::Result<usize> {
    let event = &received.event;
    insert.execute(params![
        received.row_id.to_string(),
        event.event_id,
        received.stream_id,
        event.event_type,
        event.aggregate_id.to_string(),
        event.correlation_id,
        event.causation_id,
        ts(event.occurred_on),
        event.payload.to_string(),
        max_retries,
        received_at,
        stream,
        headers::to_column_text(&event.headers),
    ])
}

impl SqliteStore {
    /// One claim in one transaction (see [`InboxStore::process_claimed`]).
    fn run_batch(
        &self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
        claimed_ids: &mut Vec<Uuid>,
    ) -> Result<Vec<Settled>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin a claim"))?;
        let clock_now = params.clock.now();
        let now = ts(clock_now);
        let rows = {
            let (sql, args) = match params.claim {
                Claim::Rows(ids) => (
                    &self.sql.claim_rows,
                    vec![now.clone().into(), ids_json(ids.iter().copied()).into()],
                ),
                // One connection, so nothing can touch them between claim and commit: fresh rows
                // are claimed like any others (still due, read back as they stand).
                Claim::Fresh(rows) => (
                    &self.sql.claim_rows,
                    vec![
                        now.clone().into(),
                        ids_json(rows.iter().map(|row| row.id)).into(),
                    ],
                ),
                // SQLite records no process on its rows: found by age alone.
                Claim::Due {
                    limit,
                    orphan_after,
                    dead_processes: _,
                } => (
                    &self.sql.claim_due,
                    vec![
                        now.clone().into(),
                        (limit as i64).into(),
                        ts(orphaned_before(clock_now, orphan_after)).into(),
                    ],
                ),
                Claim::Heads {
                    limit,
                    after_dead_letter,
                    aggregates,
                    orphan_after: _,
                } => (
                    &self.sql.claim_heads,
                    vec![
                        now.clone().into(),
                        (limit as i64).into(),
                        (after_dead_letter == AfterDeadLetter::Park).into(),
                        aggregates.map(|ids| ids_json(ids.iter().copied())).into(),
                    ],
                ),
                Claim::Counted(rows) => {
                    let mut statement = tx
                        .prepare_cached(&self.sql.claim_counted)
                        .map_err(lite("prepare claim"))?;
                    let counts: std::collections::HashMap<String, i32> = statement
                        .query_map(params![ids_json(rows.iter().map(|row| row.id))], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .map_err(lite("claim counted rows"))?
                        .collect::<Result<_, _>>()
                        .map_err(lite("claim counted rows"))?;
                    // Only rows still as their count left them: one attempt more than given.
                    let claimed: Vec<InboxRow> = rows
                        .iter()
                        .filter(|row| {
                            counts.get(&row.id.to_string())
                                == Some(&row.retry_count.saturating_add(1))
                        })
                        .cloned()
                        .collect();
                    drop(statement);
                    return self.handle_claimed(tx, params, handler, claimed, claimed_ids);
                }
            };
            self.read_claimed(&tx, sql, args, &now)?
        };
        self.handle_claimed(tx, params, handler, rows, claimed_ids)
    }

    /// Runs the claim `sql` with `args`; a row that cannot be read is dead-lettered instead.
    fn read_claimed(
        &self,
        tx: &Transaction<'_>,
        sql: &str,
        args: Vec<rusqlite::types::Value>,
        now: &str,
    ) -> Result<Vec<InboxRow>, StoreError> {
        let mut statement = tx.prepare_cached(sql).map_err(lite("prepare claim"))?;
        let raw = statement
            .query_map(rusqlite::params_from_iter(args), RawRow::read)
            .map_err(lite("claim rows"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(lite("claim rows"))?;
        let mut readable = Vec::with_capacity(raw.len());
        for raw in raw {
            let id = raw.text[0].clone().unwrap_or_default();
            match raw.into_row() {
                Ok(row) => readable.push(row),
                // A row nobody can read would fail every claim that reaches it, holding up
                // every row behind it: it is dead-lettered with the reason instead.
                Err(StoreError::Corrupt { reason, .. }) => {
                    tracing::error!(row = %id, %reason, "unreadable inbox row dead-lettered");
                    let message = truncate_error(&format!("unreadable row: {reason}"));
                    tx.execute(&self.sql.dead_letter, params![id, message, now])
                        .map_err(lite("dead-letter an unreadable row"))?;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(readable)
    }

    /// Runs the handlers on the claimed `rows` in `tx`, records what became of each, commits.
    fn handle_claimed(
        &self,
        mut tx: Transaction<'_>,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
        rows: Vec<InboxRow>,
        claimed: &mut Vec<Uuid>,
    ) -> Result<Vec<Settled>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        claimed.extend(rows.iter().map(|row| row.id));
        let mut settled = Vec::with_capacity(rows.len());
        let handling = Handling::begin(self);
        for row in rows {
            tx.execute_batch("SAVEPOINT eventflow_row")
                .map_err(lite("set a savepoint"))?;
            let mut verdict = handler.handle(&mut tx, &row);
            if verdict == Verdict::Processed {
                if let Err(error) = tx.execute_batch("RELEASE eventflow_row") {
                    verdict = handler.failed_after(
                        &row,
                        format!("the handler's writes could not be kept: {error}"),
                    );
                }
            }
            if verdict != Verdict::Processed {
                tx.execute_batch("ROLLBACK TO eventflow_row; RELEASE eventflow_row")
                    .map_err(lite("roll back a failed row"))?;
            }
            settled.push(Settled { row, verdict });
        }
        drop(handling);

        let finished_at = ts(params.clock.now());
        let processed = ids_json(
            settled
                .iter()
                .filter(|s| s.verdict == Verdict::Processed)
                .map(|s| s.row.id),
        );
        tx.execute(&self.sql.mark_processed, params![processed, finished_at])
            .map_err(lite("mark rows processed"))?;
        for s in &settled {
            if let Verdict::Failed(failure) = &s.verdict {
                record_failure(&tx, &self.sql.record_failure, s.row.id, failure)
                    .map_err(lite("record a failed attempt"))?;
            }
        }
        tx.commit().map_err(lite("commit handled rows"))?;
        Ok(settled)
    }

    /// Records a failed attempt for row `id`, if it is still due, in a transaction of its own.
    fn record_refusal(
        &self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<Settled>, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin recording a refusal"))?;
        let now = params.clock.now();
        let row = match one_row(params.claim, &id) {
            // A counted row, if still as its count left it.
            Claim::Counted([row]) => tx
                .query_row(&self.sql.claim_counted, params![ids_json([id])], |found| {
                    found.get::<_, i32>(1)
                })
                .optional()
                .map_err(lite("claim a refused row"))?
                .filter(|count| *count == row.retry_count.saturating_add(1))
                .map(|_| row.clone()),
            Claim::Counted(_) => None,
            _ => tx
                .query_row(
                    &self.sql.claim_rows,
                    params![ts(now), ids_json([id])],
                    RawRow::read,
                )
                .optional()
                .map_err(lite("claim a refused row"))?
                .map(RawRow::into_row)
                .transpose()?,
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let verdict = handler.failed_after(&row, reason.to_string());
        if let Verdict::Failed(failure) = &verdict {
            record_failure(&tx, &self.sql.record_failure, row.id, failure)
                .map_err(lite("record a refused row"))?;
        }
        tx.commit().map_err(lite("commit a refusal"))?;
        Ok(Some(Settled { row, verdict }))
    }

    /// Claims the retries and orphans `params` asks for and records each one's attempt up
    /// front, in a transaction of its own (see [`attempts`]).
    fn count_attempts(
        &self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
    ) -> Result<Counted, StoreError> {
        let clock_now = params.clock.now();
        let now = ts(clock_now);
        let (sql, args): (&str, Vec<rusqlite::types::Value>) = match params.claim {
            Claim::Due {
                limit,
                orphan_after,
                dead_processes: _,
            } => (
                &self.sql.claim_due,
                vec![
                    now.clone().into(),
                    (limit as i64).into(),
                    ts(orphaned_before(clock_now, orphan_after)).into(),
                ],
            ),
            Claim::Heads {
                limit,
                after_dead_letter,
                aggregates: None,
                orphan_after,
            } => (
                &self.sql.claim_unfinished_heads,
                vec![
                    now.clone().into(),
                    (limit as i64).into(),
                    (after_dead_letter == AfterDeadLetter::Park).into(),
                    ts(orphaned_before(clock_now, orphan_after)).into(),
                ],
            ),
            _ => return Ok(Counted::default()),
        };
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin counting attempts"))?;
        let Some(rows) = attempts::pick(self.read_claimed(&tx, sql, args, &now)?, handler) else {
            return Ok(Counted {
                refused: true,
                ..Counted::default()
            });
        };
        let mut counted = Counted::default();
        for row in rows {
            let (failure, run) = match attempts::count(&row, handler, clock_now) {
                Count::DeadLetter(failure) => (failure, false),
                Count::Run(failure) => (failure, true),
            };
            record_failure(&tx, &self.sql.record_failure, row.id, &failure)
                .map_err(lite("count an attempt"))?;
            match run {
                true => counted.run.push(row),
                false => counted.settled.push(Settled {
                    row,
                    verdict: Verdict::Failed(failure),
                }),
            }
        }
        tx.commit().map_err(lite("commit counted attempts"))?;
        Ok(counted)
    }
}

/// Batches on the store's one connection.
struct Batches<'a>(&'a SqliteStore);

impl Retry<SqliteStore> for Batches<'_> {
    fn run(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<SqliteStore>,
        claimed: &mut Vec<Uuid>,
    ) -> Result<Vec<Settled>, StoreError> {
        self.0.run_batch(params, handler, claimed)
    }

    fn record_refusal(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<SqliteStore>,
        id: Uuid,
        reason: &str,
    ) -> Result<Option<Settled>, StoreError> {
        self.0.record_refusal(params, handler, id, reason)
    }

    fn count_attempts(
        &mut self,
        params: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<SqliteStore>,
    ) -> Result<Counted, StoreError> {
        self.0.count_attempts(params, handler)
    }
}

fn record_failure(
    tx: &rusqlite::Connection,
    sql: &str,
    id: Uuid,
    failure: &crate::store::Failure,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params![
        id.to_string(),
        failure.status.as_str(),
        failure.retry_count,
        failure.next_retry_at.map(ts),
        failure.error_message,
        ts(failure.failed_at),
    ])
}

/// A row's columns as SQLite returns them, converted outside rusqlite's error type.
struct RawRow {
    text: [Option<String>; COLUMN_COUNT],
    retry_count: i32,
    max_retries: i32,
}

impl RawRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        let mut text: [Option<String>; COLUMN_COUNT] = Default::default();
        for (index, slot) in text.iter_mut().enumerate() {
            if index != 10 && index != 11 {
                *slot = row.get(index)?;
            }
        }
        Ok(Self {
            text,
            retry_count: row.get(10)?,
            max_retries: row.get(11)?,
        })
    }

    fn into_row(self) -> Result<InboxRow, StoreError> {
        let [id, event_id, stream_id, event_type, aggregate_id, correlation_id, causation_id, occurred_on, payload, status, _, _, received_at, processed_at, next_retry_at, error_message, last_error_at, stream, headers] =
            self.text;
        let id = id.unwrap_or_default();
        let corrupt = |reason: String| StoreError::Corrupt {
            row: id.clone(),
            reason,
        };
        let status_text = status.unwrap_or_default();
        let status = EventStatus::parse(&status_text)
            .ok_or_else(|| corrupt(format!("unknown status {status_text:?}")))?;
        let payload = serde_json::from_str::<serde_json::Value>(&payload.unwrap_or_default())
            .map_err(|error| corrupt(format!("payload is not JSON: {error}")))?;
        let headers = headers::from_column_text(headers.as_deref()).map_err(corrupt)?;
        Ok(InboxRow {
            id: parse_uuid(&id)?,
            stream_id: stream_id.unwrap_or_default(),
            stream,
            event: Event {
                event_id: event_id.unwrap_or_default(),
                event_type: event_type.unwrap_or_default(),
                aggregate_id: parse_uuid(&aggregate_id.unwrap_or_default())?,
                occurred_on: parse_ts(&occurred_on.unwrap_or_default())?,
                // Kept as stored, object or not (the reference contract).
                payload,
                correlation_id,
                causation_id,
                headers,
            },
            status,
            retry_count: self.retry_count,
            max_retries: self.max_retries,
            received_at: parse_ts(&received_at.unwrap_or_default())?,
            processed_at: parse_opt_ts(processed_at)?,
            next_retry_at: parse_opt_ts(next_retry_at)?,
            error_message,
            last_error_at: parse_opt_ts(last_error_at)?,
        })
    }
}

struct RawQuarantined([Option<String>; 8]);

impl RawQuarantined {
    fn read(row: &Row<'_>) -> rusqlite::Result<Self> {
        let mut text: [Option<String>; 8] = Default::default();
        for (index, slot) in text.iter_mut().enumerate() {
            *slot = row.get(index)?;
        }
        Ok(Self(text))
    }

    fn into_entry(self) -> Result<QuarantinedEntry, StoreError> {
        let [id, stream, stream_id, raw_fields, reason, received_at, replayed_at, replayed_event_id] =
            self.0;
        let id = parse_uuid(&id.unwrap_or_default())?;
        let corrupt = |reason: String| StoreError::Corrupt {
            row: id.to_string(),
            reason,
        };
        let raw: serde_json::Value = serde_json::from_str(&raw_fields.unwrap_or_default())
            .map_err(|error| corrupt(format!("raw fields are not JSON: {error}")))?;
        let (fields, oversized) = decode_record(&raw).map_err(corrupt)?;
        Ok(QuarantinedEntry {
            id,
            stream: stream.unwrap_or_default(),
            stream_id: stream_id.unwrap_or_default(),
            fields,
            oversized,
            reason: reason.unwrap_or_default(),
            received_at: parse_ts(&received_at.unwrap_or_default())?,
            replayed_at: parse_opt_ts(replayed_at)?,
            replayed_event_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    /// June 1st of `year`, which RFC 3339 text cannot write outside 0000 to 9999.
    fn in_year(year: i32) -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(year, 6, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
    }

    #[test]
    fn stored_times_sort_as_text_in_time_order_over_the_whole_range() {
        use chrono::TimeDelta;
        let now = at("2026-12-06T05:00:00Z");
        let times = [
            DateTime::<Utc>::MIN_UTC,
            in_year(-1),
            at("0000-01-01T00:00:00Z"),
            at("0999-12-31T23:59:59.999999Z"),
            now,
            now + TimeDelta::microseconds(1),
            at("9999-12-31T23:59:59.999998Z"),
            at("9999-12-31T23:59:59.999999Z"),
            in_year(10_000),
            in_year(99_999),
            DateTime::<Utc>::MAX_UTC,
        ];
        for pair in times.windows(2) {
            assert!(
                ts(pair[0]) <= ts(pair[1]),
                "{} sorts after {}",
                ts(pair[0]),
                ts(pair[1])
            );
            if pair[0].year_in_range() && pair[1].year_in_range() {
                assert!(ts(pair[0]) < ts(pair[1]), "{}", ts(pair[0]));
            }
        }
        // Far-future times never sort before now, and read back as the documented maximum.
        assert!(ts(DateTime::<Utc>::MAX_UTC) > ts(now));
        assert_eq!(ts(DateTime::<Utc>::MAX_UTC), LATEST_STORED_TIME);
        assert_eq!(
            parse_ts(&ts(in_year(12_000))).unwrap(),
            latest_stored_time()
        );
        // Times in range are kept exactly.
        for time in &times[2..8] {
            assert_eq!(parse_ts(&ts(*time)).unwrap(), *time);
        }
    }

    trait YearInRange {
        fn year_in_range(&self) -> bool;
    }

    impl YearInRange for DateTime<Utc> {
        fn year_in_range(&self) -> bool {
            use chrono::Datelike;
            (0..=9999).contains(&self.year())
        }
    }
}
