//! Where the inbox lives: the [`InboxStore`] contract and its backends.
//!
//! A store keeps the `event_inbox` table (and its quarantine table) and offers the handful of
//! operations the runtime needs, each one statement or one transaction. Every backend passes the
//! same conformance suite (`tests/store_conformance.rs`). The runtime never asks which backend it
//! has; SQL lives in the backend's own file.

mod attempts;
mod migrations;
mod operations;
pub mod outbox;
mod parking;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
pub(crate) use postgres::conninfo;
mod refusal;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(feature = "postgres")]
pub use self::postgres::{
    PgConnectError, PgConnection, PgManager, PgTransaction, PostgresStore, PostgresStoreBuilder,
    SessionLimits,
};
#[cfg(feature = "sqlite")]
pub use self::sqlite::{SqliteStore, LATEST_STORED_TIME};
pub use attempts::NEVER_FINISHED;
pub(crate) use migrations::not_migrated;
pub use migrations::{
    split_statements, Migration, Migrations, PendingMigration, NO_TRANSACTION_MARKER,
};
pub use operations::{
    Cleanup, Cursor, DeadLetterRequeue, InboxRecord, Page, ProcessedCleanup, QuarantineCleanup,
    QuarantineFilter, QuarantineSummary, Requeued, RowFilter,
};
pub use parking::{AfterDeadLetter, DeadLetterSkip, ParkedAggregate, ParkedPage, ParkedSummary};

use crate::clock::Clock;
use crate::event::{Event, EventStatus, InboxRow};
use crate::quarantine::QuarantinedEntry;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The inbox table's default name, the reference one.
pub const DEFAULT_INBOX_TABLE: &str = "event_inbox";

/// A database that holds the inbox.
///
/// Implementations must be safe to share between the reader and worker threads, and every
/// operation must be atomic: a failed call leaves the table as it was.
pub trait InboxStore: Send + Sync + 'static {
    /// The transaction handlers write in. It commits together with the row's move to
    /// `processed`; a handler must not commit or roll it back itself.
    type Tx<'t>;

    /// Creates or upgrades the tables by applying the embedded migrations not yet applied.
    /// Idempotent, and safe to run from several processes at once.
    fn migrate(&self) -> Result<(), StoreError>;

    /// The embedded migrations not yet applied, in order, as they would run; changes nothing.
    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError>;

    /// Every embedded migration, applied or not, in order: with [`Self::pending_migrations`],
    /// what `eventflow migrate list` shows. Defaults to none, for stores that embed no
    /// migrations of their own; a store wrapping another should return the inner one's.
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }

    /// Applies the migrations that only consumers with per-aggregate order need, not yet
    /// applied, after [`Self::migrate`]'s: on PostgreSQL the index an ordered claim probes, which
    /// would cost a table consumed without order an entry per stored row. A consumer built with
    /// `.ordered(true)` calls it at `start()`; `eventflow migrate --ordered` too. Idempotent, and
    /// safe from several processes at once. Defaults to nothing, for stores whose
    /// [`Self::migrate`] makes all that ordered claims need; a store wrapping another should
    /// forward this and the two methods below to the inner one.
    fn migrate_ordered(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The migrations [`Self::migrate_ordered`] would apply, in order; changes nothing.
    fn pending_ordered_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        Ok(Vec::new())
    }

    /// Every migration of [`Self::migrate_ordered`], applied or not, in order.
    fn ordered_migrations(&self) -> &'static [Migration] {
        &[]
    }

    /// The inbox table's name.
    fn table(&self) -> &str;

    /// Records `group` as the consumer group that owns the inbox table, unless a group owns it
    /// already, and returns the owner: `group`, or the earlier one. Atomic, so of two groups
    /// starting at once on a new table exactly one becomes its owner.
    fn adopt_owner(&self, group: &str, now: DateTime<Utc>) -> Result<String, StoreError>;

    /// The consumer group that owns the inbox table, if one has adopted it.
    fn find_owner(&self) -> Result<Option<String>, StoreError>;

    /// Stores a read batch in one transaction: new events as `pending` (an `event_id` already
    /// present is a duplicate and left alone) and malformed entries in the quarantine table
    /// (an entry already quarantined is left alone).
    fn store_received(&self, batch: &ReceivedBatch<'_>) -> Result<Stored, StoreError>;

    /// Claims rows and runs `handler` on each inside one transaction: a row's handler writes and
    /// its move to `processed` commit together; a failed row's writes are rolled back (to its
    /// own savepoint) and its failure recorded. With `optimistic`, a store may first run the
    /// handlers without savepoints and redo the batch with them when one fails. Claimed rows are locked from
    /// claim to commit, so no other worker (in this process or another) can hold them.
    ///
    /// Returns every claimed row with what became of it, once the transaction has committed.
    fn process_claimed(
        &self,
        claim: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
    ) -> Result<Vec<Settled>, StoreError>
    where
        Self: Sized;

    /// How many rows are in each status.
    fn count_by_status(&self) -> Result<StatusCounts, StoreError>;

    /// How many rows are in each status, per stream (`None`: rows that record no stream),
    /// ordered by stream.
    fn count_by_stream(&self) -> Result<Vec<(Option<String>, StatusCounts)>, StoreError>;

    /// Parked aggregates (see [`AfterDeadLetter::Park`]), by aggregate id, one page of them.
    fn list_parked(&self, page: &ParkedPage) -> Result<Vec<ParkedAggregate>, StoreError>;

    /// How many aggregates are parked, and the oldest event waiting behind one.
    fn parked_summary(&self) -> Result<ParkedSummary, StoreError>;

    /// Marks the dead letter `skip.id` skipped, releasing its aggregate's later events in
    /// ordered mode; the row stays a dead letter. Returns `false`, changing nothing, when the
    /// row is not a dead letter or was skipped already. A requeue clears the mark.
    fn skip_dead_letter(&self, skip: &DeadLetterSkip) -> Result<bool, StoreError>;

    /// The row holding `event_id`, if any.
    fn find_by_event_id(&self, event_id: &str) -> Result<Option<InboxRow>, StoreError>;

    /// Quarantined entries, oldest first, at most `limit`, from `offset`.
    fn list_quarantined(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<QuarantinedEntry>, StoreError>;

    /// One quarantined entry.
    fn find_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedEntry>, StoreError>;

    /// Stores `event` (parsed from a fixed quarantined entry) as a new pending row and marks the
    /// quarantined entry replayed, in one transaction. An `event_id` already in the inbox is a
    /// duplicate, as on the stream: the entry is marked replayed and no row is added. Returns
    /// `false`, changing nothing, when the entry does not exist or was replayed already.
    fn replay_quarantined(&self, replay: &QuarantineReplay<'_>) -> Result<bool, StoreError>;

    /// Checks that the database answers.
    fn ping(&self) -> Result<(), StoreError>;

    /// Rows matching `filter`, ordered by `(received_at, id)`, one page of them, with what
    /// operators did to each.
    fn list_rows(&self, filter: &RowFilter, page: &Page) -> Result<Vec<InboxRecord>, StoreError>;

    /// The `received_at` of the oldest row in `status`, if there is one: how far behind the
    /// workers are (`pending`), or how long the oldest retry has been waiting (`failed`).
    fn oldest_received(&self, status: EventStatus) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Moves up to `limit` dead letters matching the filter, oldest first, back to `pending`
    /// in one transaction: `retry_count` 0, `next_retry_at` null, `replay_count` up by one,
    /// `last_replayed_at` set. The last error is kept for reference until the row is processed.
    /// Workers take requeued rows on their next poll.
    fn requeue_dead_letters(&self, requeue: &DeadLetterRequeue<'_>)
        -> Result<Requeued, StoreError>;

    /// Quarantined entries matching `filter`, ordered by `(received_at, id)`, one page of them.
    fn list_quarantined_matching(
        &self,
        filter: &QuarantineFilter,
        page: &Page,
    ) -> Result<Vec<QuarantinedEntry>, StoreError>;

    /// How many entries are quarantined, replayed or not, and the oldest not replayed. The
    /// default reads every entry a page at a time (for stores wrapping another, and test
    /// doubles); the backends count in one statement.
    fn quarantine_summary(&self) -> Result<QuarantineSummary, StoreError> {
        let mut summary = QuarantineSummary::default();
        let mut page = Page::first(1000);
        loop {
            let entries = self.list_quarantined_matching(&QuarantineFilter::default(), &page)?;
            for entry in &entries {
                if entry.replayed_at.is_some() {
                    summary.replayed += 1;
                } else {
                    summary.waiting += 1;
                    let oldest = summary.oldest_waiting.get_or_insert(entry.received_at);
                    *oldest = (*oldest).min(entry.received_at);
                }
            }
            match entries.last() {
                Some(last) if entries.len() == page.limit => {
                    page.after = Some(Cursor {
                        received_at: last.received_at,
                        id: last.id,
                    })
                }
                _ => return Ok(summary),
            }
        }
    }

    /// Deletes up to `limit` processed rows whose `processed_at` is before `before`, oldest
    /// first, in one transaction. Rows in any other status are never deleted. Call it again
    /// while it returns the limit. The newest stream id among the deleted rows is kept per
    /// stream, for [`InboxStore::newest_stream_id`].
    fn delete_processed_before(&self, cleanup: &ProcessedCleanup) -> Result<Cleanup, StoreError>;

    /// Deletes up to `limit` quarantined entries, replayed or not, quarantined before
    /// `before`, oldest first, in one transaction. Call it again while it returns the limit.
    /// The newest stream id among the deleted entries is kept per stream, for
    /// [`InboxStore::newest_stream_id`].
    fn delete_quarantined_before(&self, cleanup: &QuarantineCleanup)
        -> Result<Cleanup, StoreError>;

    /// The newest stream entry id (`<ms>-<seq>`, compared as two numbers, as Redis does) the
    /// inbox has stored for `stream`: in its rows, its quarantined entries, or rows retention
    /// deleted since. `None` when it has stored nothing from the stream. A consumer group
    /// created again after it was lost starts after this id, so history is not handled again.
    /// Reads every row of the stream (there is no index for it): meant for the rare moments a
    /// group is created, not for a hot path.
    fn newest_stream_id(&self, stream: &str) -> Result<Option<String>, StoreError>;

    /// The most connections the store can hand out at once, when it has a fixed pool.
    /// The consumer checks its readers and workers fit.
    fn max_connections(&self) -> Option<u32> {
        None
    }

    /// Registers a consumer process of this table as alive for as long as the returned lease
    /// lives, on a database session of its own (not one of the pool's): the process records
    /// the lease's number on the rows it stores ([`ReceivedBatch::stored_by`]), and once the
    /// session ends with the process, other processes find it in
    /// [`dead_processes`](Self::dead_processes) and take its rows at once (see
    /// [`Claim::Due`]) instead of after `orphan_after`. `None` when the store cannot tell
    /// one process from another (SQLite: a file one process writes), where rows are found by
    /// age alone.
    fn open_process_lease(
        &self,
        consumer: &str,
    ) -> Result<Option<Box<dyn ProcessLease>>, StoreError> {
        let _ = consumer;
        Ok(None)
    }

    /// The consumer processes of this table, other than `me`, whose lease has ended: they
    /// stopped or died, and the rows they stored but did not settle are free to take. A
    /// process found dead is remembered for `forget_after` (give `orphan_after`: its rows are
    /// orphans by age by then), then forgotten. Empty where processes are not told apart.
    fn dead_processes(
        &self,
        me: i32,
        forget_after: std::time::Duration,
    ) -> Result<Vec<i32>, StoreError> {
        let _ = (me, forget_after);
        Ok(Vec::new())
    }
}

/// A consumer process's proof of life (see [`InboxStore::open_process_lease`]): held open for
/// as long as the process runs, and ended by its death, however sudden.
pub trait ProcessLease: Send {
    /// The process's number, recorded on the rows it stores.
    fn process(&self) -> i32;

    /// Checks that the lease still holds, and takes it again (same number) on a new session if
    /// that session was lost: meanwhile other processes may have taken this one's fresh rows,
    /// which costs them a claim, never a second handling.
    fn keep(&mut self) -> Result<(), StoreError>;
}

/// What the store calls for each claimed row, inside the batch transaction.
pub trait RowHandler<S: InboxStore> {
    /// Runs the user's handler on `row` in `tx` and says what to record.
    fn handle(&mut self, tx: &mut S::Tx<'_>, row: &InboxRow) -> Verdict;

    /// What to record for a row whose handler returned success but whose writes the database
    /// refused afterwards (for example a handler that swallowed a database error, leaving the
    /// transaction aborted). Its writes have been rolled back.
    fn failed_after(&mut self, row: &InboxRow, error: String) -> Verdict;

    /// What to record up front, at `now`, for an attempt about to run on `row`, a retry or an
    /// orphan (see [`NEVER_FINISHED`]): the failure it is if it never finishes. The store
    /// commits this before the attempt starts, so an attempt that dies with its process is
    /// counted; when the attempt ends, its own outcome is recorded over it.
    ///
    /// The row must not be due again before the attempt could have ended: a worker that found
    /// it due meanwhile would count it again and take it over while it still runs.
    ///
    /// Defaults to one more failure, `failed` and due again a minute later (the reference
    /// schedule's first delay), with [`NEVER_FINISHED`] as the error; the consumer's workers use
    /// the retry policy's delay, and at least `orphan_after`, instead.
    fn attempt_started(&mut self, row: &InboxRow, now: DateTime<Utc>) -> Failure {
        Failure {
            status: EventStatus::Failed,
            retry_count: row.retry_count.saturating_add(1),
            next_retry_at: Some(now + chrono::Duration::minutes(1)),
            error_message: NEVER_FINISHED.to_string(),
            failed_at: now,
        }
    }

    /// Asked before retries and orphans are counted: may this process count, and then run,
    /// `suspect` (a single row whose last counted attempt never finished, which may kill the
    /// process again) or otherwise a batch of plain retries and orphans? Refused rows are left
    /// due, uncounted, for a later claim. An admission lasts until
    /// [`counted_end`](Self::counted_end). A consumer admits a suspect only while no other
    /// counted attempt of its process is unfinished, and nothing else while a suspect is, so
    /// that a suspect that dies again takes no other row's counted attempt with it. Defaults
    /// to admitting everything.
    fn admit(&mut self, suspect: bool) -> bool {
        let _ = suspect;
        true
    }

    /// Called once the attempts counted after an [`admit`](Self::admit) are settled (or failed
    /// to be, or turned out to have nothing to run). Defaults to nothing.
    fn counted_end(&mut self) {}
}

/// A read batch to store: parsed events and entries that did not parse.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedBatch<'a> {
    /// The stream the entries came from; recorded on every row.
    pub stream: &'a str,
    /// Whether storing must keep each aggregate's rows in commit order (per-aggregate order
    /// is on): a store whose writers can commit concurrently serializes them per aggregate, so
    /// an aggregate's rows become visible in the order of their storing position.
    pub ordered: bool,
    /// Entries that parsed into events.
    pub events: &'a [ReceivedEvent],
    /// Entries that did not.
    pub malformed: &'a [MalformedEntry],
    /// The `received_at` of every row stored.
    pub received_at: DateTime<Utc>,
    /// The `max_retries` of every event stored.
    pub max_retries: i32,
    /// The storing consumer process's number (see [`InboxStore::open_process_lease`]), recorded
    /// on every row stored; `None` records none (the row is then found by age alone).
    pub stored_by: Option<i32>,
}

/// An event read from the stream, with the id its row gets if it is new.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The row id to use; time-ordered (UUID v7) so rows sort in arrival order.
    pub row_id: Uuid,
    /// The stream entry id.
    pub stream_id: String,
    /// The event.
    pub event: Event,
}

impl ReceivedEvent {
    /// The row [`InboxStore::store_received`] makes of this event when it is new, read from
    /// `stream`.
    pub fn into_pending_row(
        self,
        stream: &str,
        received_at: DateTime<Utc>,
        max_retries: i32,
    ) -> InboxRow {
        InboxRow {
            id: self.row_id,
            stream_id: self.stream_id,
            stream: Some(stream.to_string()),
            event: self.event,
            status: EventStatus::Pending,
            retry_count: 0,
            max_retries,
            received_at,
            processed_at: None,
            next_retry_at: None,
            error_message: None,
            last_error_at: None,
        }
    }
}

/// A stream entry that did not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct MalformedEntry {
    /// The quarantine row id to use.
    pub id: Uuid,
    /// The stream entry id.
    pub stream_id: String,
    /// The raw fields, encoded by [`crate::quarantine::encode_fields`].
    pub raw_fields: serde_json::Value,
    /// Why it did not parse.
    pub reason: String,
}

/// What [`InboxStore::store_received`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Row ids of the events that were new, in the batch's order.
    pub inserted: Vec<Uuid>,
    /// Events whose `event_id` was already in the inbox.
    pub duplicates: usize,
    /// Malformed entries newly quarantined.
    pub quarantined: usize,
}

/// Which rows a worker claims.
#[derive(Debug, Clone, Copy)]
pub enum Claim<'a> {
    /// These rows, those of them still due and not held by another worker.
    Rows(&'a [Uuid]),
    /// Rows just returned by [`InboxStore::store_received`], as stored: those of them nobody has
    /// touched since (still pending, never attempted). How new rows reach the worker that the
    /// reader handed them to. A store may mark them processed as it claims them, in the same
    /// transaction, and record failures over that (`processed_at` is then the claim's time).
    Fresh(&'a [InboxRow]),
    /// Up to `limit` due rows, oldest first: failed rows whose retry time has come, and pending
    /// (or `processing`, as the reference toolkit leaves them) rows received at least
    /// `orphan_after` ago or stored by a process found dead. How retries and rows left by a
    /// crashed process are found; younger
    /// pending rows are on their way to the worker their reader handed them to, and taking them
    /// would only make that worker wait.
    ///
    /// Each attempt is counted before it runs (see [`RowHandler::attempt_started`]): one short
    /// transaction records it as a failure, a second runs the handlers over that, so an attempt
    /// that dies with its process stays counted. A failed row that has used its last attempt
    /// (`retry_count` at a positive `max_retries`) and is found due again is dead-lettered with
    /// [`NEVER_FINISHED`] instead of run.
    Due {
        /// Most rows to claim.
        limit: usize,
        /// How long a pending row is left to its reader's workers before anyone may take it.
        orphan_after: std::time::Duration,
        /// Consumer processes found dead ([`InboxStore::dead_processes`]): the pending rows
        /// they stored are orphans whatever their age. A store that records no process on its
        /// rows ignores it.
        dead_processes: &'a [i32],
    },
    /// Up to `limit` due rows, oldest first, that are the head of their aggregate: no earlier
    /// row of the aggregate (in storing order) is still open, that is pending, processing,
    /// failed, or (with [`AfterDeadLetter::Park`]) dead-lettered and not skipped. How workers
    /// claim in ordered mode: at most one row per aggregate is held at a time, and its
    /// successor becomes claimable only once it commits as processed.
    ///
    /// Without `aggregates`, heads that are retries or orphans (pending or `processing` rows
    /// received at least `orphan_after` ago) are counted before they run, as for [`Claim::Due`],
    /// and claimed first; with `aggregates`, only pending heads are claimed, in one transaction,
    /// and retries are left to the claims without.
    Heads {
        /// Most rows to claim.
        limit: usize,
        /// Whether a dead letter holds back its aggregate's later rows.
        after_dead_letter: AfterDeadLetter,
        /// Only rows of these aggregates (a lookup by aggregate, not a scan of every due row):
        /// the aggregates a reader just stored rows of, or those whose rows a worker just
        /// settled. `None`: any aggregate.
        aggregates: Option<&'a [Uuid]>,
        /// How long a pending head is left alone before it counts as orphaned (see
        /// [`Claim::Due`]).
        orphan_after: std::time::Duration,
    },
    /// Rows whose attempt was just counted (as [`Claim::Due`] does), given as they were before:
    /// those of them still `failed` with one more attempt than given, so a row counted again by
    /// someone else meanwhile is left to them. The handlers see the rows as given, so a failure
    /// they return is the same count, not one more.
    Counted(&'a [InboxRow]),
}

/// Parameters of [`InboxStore::process_claimed`].
#[derive(Clone, Copy)]
pub struct ClaimParams<'a> {
    /// Which rows.
    pub claim: Claim<'a>,
    /// A row is due when `next_retry_at` is null or not after this clock's time.
    pub clock: &'a dyn Clock,
    /// Whether the store may run the batch's handlers without a savepoint each, redoing the
    /// batch with savepoints when one fails (handlers that had succeeded then run again; their
    /// first writes were rolled back). A hint: a store whose savepoints cost nothing ignores it.
    pub optimistic: bool,
}

/// What to record for a claimed row.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Handled: mark `processed`.
    Processed,
    /// Not handled: record the failed attempt.
    Failed(Failure),
}

/// A failed attempt to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// [`EventStatus::Failed`] to retry at `next_retry_at`, or [`EventStatus::DeadLetter`].
    pub status: EventStatus,
    /// The row's new `retry_count`.
    pub retry_count: i32,
    /// When the row is due again; `None` for a dead letter.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// The error, at most 1000 characters.
    pub error_message: String,
    /// When the attempt failed.
    pub failed_at: DateTime<Utc>,
}

/// A claimed row and what was recorded for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    /// The row as claimed.
    pub row: InboxRow,
    /// What was recorded.
    pub verdict: Verdict,
}

/// The `received_at` before which a pending row counts as orphaned, for [`Claim::Due`]. Zero
/// means every pending row, even one stamped ahead of this clock by another machine's; an
/// `orphan_after` beyond a century is taken as a century, to stay within the databases' range.
pub fn orphaned_before(now: DateTime<Utc>, orphan_after: std::time::Duration) -> DateTime<Utc> {
    let century = chrono::Duration::days(36_525);
    if orphan_after.is_zero() {
        return now + century;
    }
    let after = chrono::Duration::from_std(orphan_after).map_or(century, |d| d.min(century));
    now - after
}

/// Row counts by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusCounts(pub BTreeMap<EventStatus, u64>);

impl StatusCounts {
    /// Rows in `status`.
    pub fn get(&self, status: EventStatus) -> u64 {
        self.0.get(&status).copied().unwrap_or(0)
    }

    /// All rows.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// A comma-separated column list with each column qualified by `alias`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn qualified(columns: &str, alias: &str) -> String {
    columns
        .split(',')
        .map(|column| format!("{alias}.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(stream, status, count)` rows, sorted by stream, as counts per stream.
pub(crate) fn counts_by_stream(
    rows: impl IntoIterator<Item = (Option<String>, EventStatus, u64)>,
) -> Vec<(Option<String>, StatusCounts)> {
    let mut counts: Vec<(Option<String>, StatusCounts)> = Vec::new();
    for (stream, status, count) in rows {
        match counts.last_mut() {
            Some((last, by_status)) if *last == stream => {
                by_status.0.insert(status, count);
            }
            _ => counts.push((stream, StatusCounts([(status, count)].into()))),
        }
    }
    counts
}

/// A status as a store counted it; one eventflow does not know is an error, never a panic.
pub(crate) fn parse_counted_status(status: &str) -> Result<EventStatus, StoreError> {
    EventStatus::parse(status).ok_or_else(|| StoreError::Corrupt {
        row: format!("status {status:?}"),
        reason: "unknown status".into(),
    })
}

/// Parameters of [`InboxStore::replay_quarantined`].
#[derive(Debug, Clone, Copy)]
pub struct QuarantineReplay<'a> {
    /// The quarantined entry.
    pub id: Uuid,
    /// The event it parses into now.
    pub event: &'a ReceivedEvent,
    /// When the replay happens; the new row's `received_at`.
    pub now: DateTime<Utc>,
    /// The new row's `max_retries`.
    pub max_retries: i32,
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A PostgreSQL statement failed.
    #[cfg(feature = "postgres")]
    #[error("PostgreSQL, {context}: {}", postgres_detail(source))]
    Postgres {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: ::postgres::Error,
    },
    /// No pooled connection could be had in time: the database is down, unreachable, or every
    /// connection is busy.
    #[error("no database connection available: {0}")]
    Pool(#[source] r2d2::Error),
    /// A SQLite statement failed.
    #[cfg(feature = "sqlite")]
    #[error("SQLite, {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: rusqlite::Error,
    },
    /// An embedded migration failed; nothing of it was applied.
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        /// Its version.
        version: u32,
        /// Its file name.
        name: &'static str,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// The table lacks migrations and the consumer or relay was told only to verify the
    /// schema ([`Migrations::Verify`]): run `command` (`eventflow migrate ...`) first.
    #[error("{table} is missing migrations {}: run `{command}`", missing.join(", "))]
    NotMigrated {
        /// The inbox or outbox table.
        table: String,
        /// The migration files not applied, in order.
        missing: Vec<String>,
        /// The command that applies them.
        command: String,
    },
    /// A configured table name is not a plain SQL identifier.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The connection string could not be understood.
    #[error("invalid database configuration: {0}")]
    InvalidConfig(String),
    /// TLS could not be set up as the connection string and the TLS settings ask: a file
    /// missing or unusable, contradicting settings, or the `tls` feature off.
    #[error("database TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Code called while the store held a transaction (a retry policy, a clock) panicked; the
    /// transaction rolled back.
    #[error("panicked while processing a batch: {0}")]
    Panicked(String),
    /// A connection the store keeps open for itself closed; it is opened again.
    #[error("{0} closed")]
    Closed(&'static str),
    /// A row holds data eventflow cannot read (edited by hand, or from an incompatible writer).
    #[error("unreadable row {row}: {reason}")]
    Corrupt {
        /// The row's id or event id.
        row: String,
        /// What is wrong.
        reason: String,
    },
}

/// The server's own words (severity, SQLSTATE, message) when there are any; the driver's
/// `Display` says only "db error" for those.
#[cfg(feature = "postgres")]
fn postgres_detail(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => error.to_string(),
    }
}

impl StoreError {
    /// Whether the database said the table a statement names does not exist (PostgreSQL
    /// `undefined_table`, SQLite "no such table"): not migrated yet, or another table name.
    pub fn is_missing_table(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            StoreError::Postgres { source, .. } => source
                .code()
                .is_some_and(|code| *code == ::postgres::error::SqlState::UNDEFINED_TABLE),
            #[cfg(feature = "sqlite")]
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(_, Some(message)),
                ..
            } => message.starts_with("no such table"),
            _ => false,
        }
    }

    /// Whether the database refused the data itself (a value out of range, a constraint): the
    /// same statement will fail again, unlike after a lost connection. PostgreSQL: SQLSTATE
    /// classes 22 (data exception) and 23 (integrity constraint violation); SQLite: a
    /// constraint, a type mismatch, a value too big, a value that cannot be converted.
    pub fn is_data_error(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { source, .. } => source
                .code()
                .is_some_and(|code| sqlstate_refuses_data(code.code())),
            #[cfg(feature = "sqlite")]
            Self::Sqlite { source, .. } => sqlite_refuses_data(source),
            Self::Migration { source, .. } => source.is_data_error(),
            _ => false,
        }
    }

    /// Whether the database refused this data, so that retrying the same work as it is will
    /// fail the same way and callers set it aside (the reader quarantines an entry, a worker
    /// records a failed attempt for a row): a [data error](Self::is_data_error) (a deferred
    /// constraint failing at commit is one too), a statement over one of PostgreSQL's limits
    /// (class 54: too many parameters, an index row too large), a row eventflow cannot read, or
    /// code that panicked while the store held the transaction.
    ///
    /// Everything else is an outage to back off from, with the work left where it is: lost
    /// connections, timeouts (`lock_timeout` 55P03, `statement_timeout` 57014), serialization
    /// failures and deadlocks, a missing table or column, a permission error, resources
    /// running out, and an exception a trigger raises (P0001 and other codes outside classes
    /// 22 and 23): those say something about the database, not about the entry, and quarantining
    /// live events for them would lose them from the stream. A trigger that means "this row is
    /// bad" should raise a class 23 code (`RAISE ... USING ERRCODE = 'check_violation'`).
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Migration { source, .. } => source.is_refusal(),
            Self::Corrupt { .. } | Self::Panicked(_) => true,
            #[cfg(feature = "postgres")]
            Self::Postgres { source, .. } => source
                .code()
                .is_some_and(|code| sqlstate_refuses_work(code.code())),
            _ => self.is_data_error(),
        }
    }

    /// Whether running the whole transaction again is the right answer: the database ended it
    /// for a conflict with a concurrent transaction, not for anything in it, and the same work
    /// may well succeed next time. PostgreSQL: SQLSTATE 40001 (`serialization_failure`, also
    /// what `REPEATABLE READ` reports for a row a concurrent transaction changed) and 40P01
    /// (`deadlock_detected`); SQLite: `SQLITE_BUSY` (another connection held the write lock
    /// past the busy timeout) and `SQLITE_LOCKED` (a conflict within a shared cache).
    ///
    /// The transaction is aborted either way: roll it back, then run it again from its
    /// `BEGIN` (re-reading what it read), as an application does around
    /// [`outbox::enqueue`](crate::outbox::enqueue) in a `SERIALIZABLE` transaction:
    ///
    /// ```no_run
    /// # fn place_order(client: &mut postgres::Client, event: &eventflow::Event) -> Result<(), Box<dyn std::error::Error>> {
    /// use eventflow::outbox;
    /// use postgres::error::SqlState;
    ///
    /// loop {
    ///     let mut tx = client.build_transaction()
    ///         .isolation_level(postgres::IsolationLevel::Serializable)
    ///         .start()?;
    ///     match outbox::enqueue(&mut tx, "orders", event) {
    ///         // Dropping `tx` rolls it back; the loop runs the whole transaction again.
    ///         Err(error) if error.is_retryable() => continue,
    ///         other => other?,
    ///     }
    ///     match tx.commit() {
    ///         Err(error) if error.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) => continue,
    ///         other => return Ok(other?),
    ///     }
    /// }
    /// # }
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { source, .. } => source
                .code()
                .is_some_and(|code| sqlstate_is_transient_conflict(code.code())),
            #[cfg(feature = "sqlite")]
            Self::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Migration { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The SQLSTATE the server answered with, if any (PostgreSQL only), for logs.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres { source, .. } => source.code().map(|code| code.code()),
            Self::Migration { source, .. } => source.sqlstate(),
            _ => None,
        }
    }
}

/// Whether a SQLSTATE means the server refuses the data itself: class 22 (data exception: a
/// value out of range, an invalid text representation) or 23 (integrity constraint violation,
/// including deferred constraints checked at commit). Every other class is an outage.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn sqlstate_refuses_data(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23"))
}

/// Whether a SQLSTATE means the server refuses this work as it is: [data](sqlstate_refuses_data)
/// or class 54 (program limit exceeded: a statement with too many parameters, an index row too
/// large), which no outage causes and which splitting the work may cure.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn sqlstate_refuses_work(code: &str) -> bool {
    sqlstate_refuses_data(code) || code.starts_with("54")
}

/// Whether a SQLSTATE means the transaction lost a conflict with a concurrent one and may
/// succeed when run again: 40001 `serialization_failure`, 40P01 `deadlock_detected`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn sqlstate_is_transient_conflict(code: &str) -> bool {
    matches!(code, "40001" | "40P01")
}

/// SQLite's counterpart of [`sqlstate_refuses_data`]: a constraint, a type mismatch, a value
/// too big, a value that cannot be converted for binding.
#[cfg(feature = "sqlite")]
fn sqlite_refuses_data(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::ToSqlConversionFailure(_)
            | rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code: rusqlite::ErrorCode::ConstraintViolation
                        | rusqlite::ErrorCode::TypeMismatch
                        | rusqlite::ErrorCode::TooBig,
                    ..
                },
                _
            )
    )
}

/// Checks that `name` can be used as a table name without quoting: lowercase ASCII letters,
/// digits and `_`, starting with a letter or `_`, not a reserved SQL word, at most 40 characters
/// (the longest name derived from it, `ix_<name>_quarantine_received`, then fits PostgreSQL's
/// 63).
pub fn validate_table_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidTableName {
        name: name.to_string(),
        reason,
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(invalid("empty")),
        Some(first) if !(first.is_ascii_lowercase() || first == '_') => {
            return Err(invalid("must start with a lowercase letter or '_'"))
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(invalid(
            "only lowercase ASCII letters, digits and '_' are allowed",
        ));
    }
    if name.len() > MAX_TABLE_NAME_LEN {
        return Err(invalid("longer than 40 characters"));
    }
    if RESERVED_WORDS.contains(&name) {
        return Err(invalid("a reserved SQL word"));
    }
    Ok(())
}

const MAX_TABLE_NAME_LEN: usize = 40;

/// PostgreSQL's reserved key words, which cannot name a table unquoted (SQLite's are a subset).
const RESERVED_WORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// The first 1000 characters of an error, as the `error_message` column keeps, made storable.
pub fn truncate_error(message: &str) -> String {
    printable(&message.chars().take(1000).collect::<String>())
}

/// `text` with NUL characters written as `\0`: PostgreSQL cannot store U+0000 in text, and a
/// message quoting bad input may hold one.
pub fn printable(text: &str) -> String {
    text.replace('\0', "\\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_must_be_plain_identifiers() {
        for good in ["event_inbox", "_x", "orders_inbox_2"] {
            assert!(validate_table_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Inbox",
            "1inbox",
            "inbox; DROP TABLE x",
            "a\"b",
            "schema.table",
            &"x".repeat(41),
            "order",
            "user",
        ] {
            assert!(validate_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_data_and_integrity_sqlstates_refuse_an_entry() {
        let table = [
            ("22001", true),  // string_data_right_truncation
            ("22008", true),  // datetime_field_overflow
            ("22P02", true),  // invalid_text_representation
            ("23505", true),  // unique_violation (also a deferred one at commit)
            ("23514", true),  // check_violation (how a trigger says "bad row")
            ("55P03", false), // lock_not_available: lock_timeout
            ("57014", false), // query_canceled: statement_timeout
            ("42501", false), // insufficient_privilege
            ("42P01", false), // undefined_table
            ("42703", false), // undefined_column
            ("P0001", false), // raise_exception from a trigger
            ("40001", false), // serialization_failure
            ("40P01", false), // deadlock_detected
            ("53100", false), // disk_full
            ("08006", false), // connection_failure
            ("25006", false), // read_only_sql_transaction (a standby)
            ("XX000", false), // internal_error
            ("", false),
        ];
        for (code, refuses) in table {
            assert_eq!(sqlstate_refuses_data(code), refuses, "SQLSTATE {code}");
            assert_eq!(sqlstate_refuses_work(code), refuses, "SQLSTATE {code}");
        }
        // Over a limit: split and set aside, but not a data error.
        assert!(sqlstate_refuses_work("54000") && !sqlstate_refuses_data("54000"));
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn only_data_errors_refuse_an_entry_on_sqlite() {
        use rusqlite::ffi;
        let failure = |code| StoreError::Sqlite {
            context: "test",
            source: rusqlite::Error::SqliteFailure(ffi::Error::new(code), None),
        };
        let table = [
            (ffi::SQLITE_CONSTRAINT, true),
            (ffi::SQLITE_CONSTRAINT_UNIQUE, true),
            (ffi::SQLITE_MISMATCH, true),
            (ffi::SQLITE_TOOBIG, true),
            (ffi::SQLITE_BUSY, false),
            (ffi::SQLITE_LOCKED, false),
            (ffi::SQLITE_READONLY, false),
            (ffi::SQLITE_PERM, false),
            (ffi::SQLITE_ERROR, false), // no such table, a syntax error
            (ffi::SQLITE_FULL, false),
            (ffi::SQLITE_IOERR, false),
            (ffi::SQLITE_NOMEM, false),
        ];
        for (code, refuses) in table {
            let error = failure(code);
            assert_eq!(error.is_refusal(), refuses, "{error}");
            assert_eq!(error.is_data_error(), refuses, "{error}");
        }
        let corrupt = StoreError::Corrupt {
            row: "1".into(),
            reason: "bad".into(),
        };
        assert!(corrupt.is_refusal());
        assert!(!StoreError::Closed("x").is_refusal());
    }

    #[test]
    fn errors_are_cut_to_a_thousand_characters() {
        assert_eq!(truncate_error(&"é".repeat(1500)).chars().count(), 1000);
        assert_eq!(truncate_error("short"), "short");
        assert_eq!(truncate_error("a\0b"), "a\\0b");
    }
}
