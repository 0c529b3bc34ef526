//! The outbox in SQLite: one connection behind a mutex, for tests and small single-process
//! services. SQLite has one writer at a time, so ids are drawn in commit order and a batch is
//! published under the write lock (`BEGIN IMMEDIATE`), which also keeps relays in other
//! processes out. Values are stored in the same text forms as the inbox's.

use super::{
    hand_over, set_aside, set_aside_round, tally, ClaimDue, Delivery, HandedOver, OutboxCounts,
    OutboxPage, OutboxRow, OutboxStatus, OutboxStore, PublishRound, ReadRow, Requeue, RowOutcome,
    DEFAULT_OUTBOX_TABLE,
};
use crate::event::Event;
use crate::headers;
use crate::store::migrations::{Migration, PendingMigration};
use crate::store::sqlite::{
    apply_migrations, apply_migrations_on, lite, open_file, open_memory, parse_opt_ts, parse_ts,
    parse_uuid, pending_migrations, ts, wait_when_busy,
};
use crate::store::{truncate_error, validate_table_name, StoreError};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::{params, Connection, Row, TransactionBehavior};
use std::path::Path;

/// The embedded outbox migrations for SQLite, from `sql/sqlite/outbox/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_event_outbox.sql",
        sql: include_str!("../../../sql/sqlite/outbox/0001_event_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "0002_headers.sql",
        sql: include_str!("../../../sql/sqlite/outbox/0002_headers.sql"),
    },
];

const COLUMNS: &str = "id, stream, event_id, event_type, aggregate_id, correlation_id, \
     causation_id, occurred_on, payload, status, attempts, next_attempt_at, created_at, \
     published_at, last_error, last_error_at, stream_entry_id, headers";

/// The outbox in SQLite, for relays.
///
/// Applications enqueue with [`crate::outbox::enqueue`] on their own connection to the same
/// database file, or through [`with_connection`](Self::with_connection) (the only way into an
/// in-memory database, which is private to its connection).
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    table: String,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl SqliteOutbox {
    /// Opens (creating if needed) the database file at `path`, in WAL mode, with the default
    /// table name `event_outbox`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::from_connection(open_file(path.as_ref())?, DEFAULT_OUTBOX_TABLE)
    }

    /// A private in-memory database, gone when the outbox is dropped; enqueue through
    /// [`with_connection`](Self::with_connection).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::from_connection(open_memory()?, DEFAULT_OUTBOX_TABLE)
    }

    /// The same database with the outbox table named `table`.
    pub fn with_table(self, table: impl Into<String>) -> Result<Self, StoreError> {
        Self::from_connection(self.conn.into_inner(), &table.into())
    }

    fn from_connection(conn: Connection, table: &str) -> Result<Self, StoreError> {
        validate_table_name(table)?;
        wait_when_busy(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
            table: table.to_string(),
        })
    }

    /// Runs `f` with the outbox's connection, for the application's own transactions. Blocks
    /// while a relay publishes a batch.
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut self.conn.lock())
    }
}

impl OutboxStore for SqliteOutbox {
    fn table(&self) -> &str {
        &self.table
    }

    fn migrate(&self) -> Result<(), StoreError> {
        apply_migrations(
            &mut self.conn.lock(),
            &format!("outbox:{}", self.table),
            MIGRATIONS,
            &|migration| migration.render_as(DEFAULT_OUTBOX_TABLE, &self.table),
        )
    }

    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        pending_migrations(
            &self.conn.lock(),
            &format!("outbox:{}", self.table),
            MIGRATIONS,
            &|migration| migration.render_as(DEFAULT_OUTBOX_TABLE, &self.table),
        )
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn publish_due(
        &self,
        claim: &ClaimDue,
        publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
    ) -> Result<PublishRound, StoreError> {
        let t = &self.table;
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(lite("begin claim"))?;
        let now = ts(claim.now);
        // Due rows in id order, less those behind an earlier row of their aggregate that waits
        // (a retry not yet due, a dead letter). An earlier row that is due is in this batch,
        // being earlier, unless the limit cut it off, and then so are the later ones.
        let read: Vec<ReadRow> = {
            let mut statement = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM {t} AS o
                     WHERE o.status IN ('pending', 'failed')
                       AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= ?1)
                       AND NOT EXISTS (
                         SELECT 1 FROM {t} AS b
                         WHERE b.aggregate_id = o.aggregate_id AND b.id < o.id
                           AND b.status IN ('failed', 'dead_letter')
                           AND (b.status = 'dead_letter' OR b.next_attempt_at > ?1))
                     ORDER BY o.id
                     LIMIT ?2"
                ))
                .map_err(lite("prepare claim"))?;
            let limit = i64::try_from(claim.limit).unwrap_or(i64::MAX);
            let rows = statement
                .query_map(params![now, limit], |row| {
                    // A column that cannot be read (a NULL where none belongs, a value of
                    // another type) makes that row unreadable, not the claim.
                    let id: i64 = row.get(0)?;
                    let columns = read_columns(row).map_err(|error| StoreError::Corrupt {
                        row: id.to_string(),
                        reason: error.to_string(),
                    });
                    Ok((id, columns.and_then(into_row)))
                })
                .map_err(lite("claim due outbox rows"))?;
            rows.map(|row| row.map_err(lite("read outbox row")))
                .collect::<Result<_, _>>()?
        };
        let claimed = read.len();
        let (rows, unreadable) = set_aside(t, read);
        if !unreadable.is_empty() {
            let mut dead = tx
                .prepare_cached(&format!(
                    "UPDATE {t} SET status = 'dead_letter', last_error = ?2, last_error_at = ?3
                     WHERE id = ?1"
                ))
                .map_err(lite("prepare set-aside"))?;
            for (id, reason) in &unreadable {
                dead.execute(params![id, truncate_error(reason), now])
                    .map_err(lite("dead-letter an unreadable outbox row"))?;
            }
            drop(dead);
            tx.commit().map_err(lite("commit set-aside rows"))?;
            return Ok(set_aside_round(claimed, unreadable.len()));
        }
        if rows.is_empty() {
            return Ok(PublishRound::default());
        }
        let outcomes = match hand_over(&rows, publish)? {
            HandedOver::Record(outcomes) => outcomes,
            // Dropping the transaction rolls it back and frees the rows.
            HandedOver::Abandoned(round) => return Ok(round),
        };
        {
            let mut published = tx
                .prepare_cached(&format!(
                    "UPDATE {t} SET status = 'published', attempts = attempts + 1,
                         next_attempt_at = NULL, published_at = ?2, stream_entry_id = ?3
                     WHERE id = ?1"
                ))
                .map_err(lite("prepare record"))?;
            let mut failed = tx
                .prepare_cached(&format!(
                    "UPDATE {t} SET status = ?2, attempts = attempts + 1, next_attempt_at = ?3,
                         last_error = ?4, last_error_at = ?5
                     WHERE id = ?1"
                ))
                .map_err(lite("prepare record"))?;
            for (row, outcome) in rows.iter().zip(&outcomes) {
                match outcome {
                    RowOutcome::Published { entry_id } => {
                        published.execute(params![row.id, now, entry_id])
                    }
                    RowOutcome::Retry { error, at } => failed.execute(params![
                        row.id,
                        OutboxStatus::Failed.as_str(),
                        ts(*at),
                        truncate_error(error),
                        now
                    ]),
                    RowOutcome::DeadLetter { error } => failed.execute(params![
                        row.id,
                        OutboxStatus::DeadLetter.as_str(),
                        None::<String>,
                        truncate_error(error),
                        now
                    ]),
                    // Left as it was.
                    RowOutcome::Deferred { .. } => continue,
                }
                .map_err(lite("record publish outcome"))?;
            }
        }
        tx.commit().map_err(lite("commit published batch"))?;
        Ok(tally(rows.len(), &outcomes))
    }

    fn delete_published_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let t = &self.table;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .lock()
            .execute(
                &format!(
                    "DELETE FROM {t} WHERE id IN (
                        SELECT id FROM {t}
                        WHERE status = 'published' AND published_at < ?1
                        ORDER BY published_at LIMIT ?2)"
                ),
                params![ts(before), limit],
            )
            .map_err(lite("delete published outbox rows"))
    }

    fn count_by_status(&self) -> Result<OutboxCounts, StoreError> {
        let t = &self.table;
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT status, count(*),
                        min(CASE WHEN status IN ('pending', 'failed') THEN created_at END)
                 FROM {t} GROUP BY status"
            ))
            .map_err(lite("count outbox rows"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })
            .map_err(lite("count outbox rows"))?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let (status, count, oldest) = row.map_err(lite("count outbox rows"))?;
            counts.add(t, &status, count as u64, parse_opt_ts(oldest)?)?;
        }
        Ok(counts)
    }

    fn find_by_event_id(&self, event_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let t = &self.table;
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM {t} WHERE event_id = ?1 ORDER BY id"
            ))
            .map_err(lite("find outbox rows"))?;
        let rows = statement
            .query_map([event_id], read_columns)
            .map_err(lite("find outbox rows"))?;
        rows.map(|row| row.map_err(lite("read outbox row")).and_then(into_row))
            .collect()
    }

    fn list_rows(&self, page: &OutboxPage) -> Result<Vec<OutboxRow>, StoreError> {
        let t = &self.table;
        let conn = self.conn.lock();
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM {t}
                 WHERE (?1 IS NULL OR status = ?1) AND id > ?2
                 ORDER BY id LIMIT ?3"
            ))
            .map_err(lite("list outbox rows"))?;
        let limit = i64::try_from(page.limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(
                params![
                    page.status.map(OutboxStatus::as_str),
                    page.after_id.unwrap_or(i64::MIN),
                    limit
                ],
                read_columns,
            )
            .map_err(lite("list outbox rows"))?;
        rows.map(|row| row.map_err(lite("read outbox row")).and_then(into_row))
            .collect()
    }

    fn requeue_dead_letters(&self, which: Requeue<'_>) -> Result<usize, StoreError> {
        let t = &self.table;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(lite("begin requeue"))?;
        let sql = format!(
            "UPDATE {t} SET status = 'pending', attempts = 0, next_attempt_at = NULL
             WHERE status = 'dead_letter'"
        );
        let requeued = match which {
            Requeue::All => tx.execute(&sql, []).map_err(lite("requeue dead letters"))?,
            Requeue::Ids(ids) => {
                let mut statement = tx
                    .prepare(&format!("{sql} AND id = ?1"))
                    .map_err(lite("requeue dead letters"))?;
                let mut requeued = 0;
                for id in ids {
                    requeued += statement
                        .execute([id])
                        .map_err(lite("requeue dead letters"))?;
                }
                requeued
            }
        };
        tx.commit().map_err(lite("commit requeue"))?;
        Ok(requeued)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.conn
            .lock()
            .execute_batch("SELECT 1")
            .map_err(lite("ping"))
    }
}

/// Writes `events` to `table` bound for `stream` through the caller's connection or
/// transaction, with statements cached on that connection.
/// Creates or upgrades outbox `table` (a validated name) on the application's `conn`, in a
/// transaction of its own or a savepoint of the caller's; recorded as the relay's own
/// migration is.
pub(crate) fn migrate_on(conn: &Connection, table: &str) -> Result<(), StoreError> {
    apply_migrations_on(conn, &format!("outbox:{table}"), MIGRATIONS, &|migration| {
        migration.render_as(DEFAULT_OUTBOX_TABLE, table)
    })
}

pub(crate) fn enqueue(
    conn: &Connection,
    table: &str,
    entries: &[(&str, &Event)],
) -> Result<(), StoreError> {
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO {table} (event_id, stream, event_type, aggregate_id, correlation_id,
                                  causation_id, occurred_on, payload, created_at, headers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
        ))
        .map_err(lite("prepare enqueue"))?;
    let created_at = ts(Utc::now());
    for (stream, event) in entries {
        insert
            .execute(params![
                event.event_id,
                stream,
                event.event_type,
                event.aggregate_id.to_string(),
                event.correlation_id,
                event.causation_id,
                ts(event.occurred_on),
                event.payload.to_string(),
                created_at,
                headers::to_column_text(&event.headers),
            ])
            .map_err(lite("enqueue outbox event"))?;
    }
    Ok(())
}

/// The unpublished (pending) rows of `table` that `conn` sees, in id order: what the caller's
/// transaction enqueued, for [`crate::testing::enqueued`].
pub(crate) fn list_pending(conn: &Connection, table: &str) -> Result<Vec<OutboxRow>, StoreError> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM {table} WHERE status = 'pending' ORDER BY id"
        ))
        .map_err(lite("list enqueued outbox rows"))?;
    let rows = statement
        .query_map([], read_columns)
        .map_err(lite("list enqueued outbox rows"))?;
    rows.map(|row| row.map_err(lite("read outbox row")).and_then(into_row))
        .collect()
}

/// A row's columns as read, before parsing (which can fail with a store error, not a
/// rusqlite one).
type Columns = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    i32,
    [Option<String>; 3],
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn read_columns(row: &Row<'_>) -> rusqlite::Result<Columns> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        [row.get(11)?, Some(row.get(12)?), row.get(13)?],
        row.get(14)?,
        row.get(15)?,
        row.get(16)?,
        row.get(17)?,
    ))
}

fn into_row(columns: Columns) -> Result<OutboxRow, StoreError> {
    let (
        id,
        stream,
        event_id,
        event_type,
        aggregate_id,
        correlation_id,
        causation_id,
        occurred_on,
        payload,
        status,
        attempts,
        [next_attempt_at, created_at, published_at],
        last_error,
        last_error_at,
        stream_entry_id,
        headers,
    ) = columns;
    let corrupt = |reason: String| StoreError::Corrupt {
        row: id.to_string(),
        reason,
    };
    Ok(OutboxRow {
        id,
        stream,
        event: Event {
            event_id,
            event_type,
            aggregate_id: parse_uuid(&aggregate_id)?,
            occurred_on: parse_ts(&occurred_on)?,
            payload: serde_json::from_str(&payload)
                .map_err(|error| corrupt(format!("payload is not JSON: {error}")))?,
            correlation_id,
            causation_id,
            headers: headers::from_column_text(headers.as_deref()).map_err(corrupt)?,
        },
        status: OutboxStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("unknown outbox status {status:?}")))?,
        attempts,
        next_attempt_at: parse_opt_ts(next_attempt_at)?,
        created_at: parse_ts(created_at.as_deref().unwrap_or_default())?,
        published_at: parse_opt_ts(published_at)?,
        last_error,
        last_error_at: parse_opt_ts(last_error_at)?,
        stream_entry_id,
    })
}
