//! What operators ask of a store: rows and quarantined entries found by filter, a page at a
//! time; dead letters requeued; old processed rows deleted in batches. [`crate::admin`] builds
//! the operations API on these.

use crate::event::{EventStatus, InboxRow};
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// A position in a listing ordered by `(received_at, id)`: the listing goes on after it.
///
/// Keyset paging stays stable while rows come and go, where an offset would skip or repeat
/// rows. Written as `<received_at RFC 3339 with microseconds>/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The last listed item's `received_at`.
    pub received_at: DateTime<Utc>,
    /// The last listed item's id.
    pub id: Uuid,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.received_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
            self.id
        )
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (at, id) = text
            .split_once('/')
            .ok_or("a cursor is <received_at>/<id>, as a listing prints it")?;
        Ok(Self {
            received_at: DateTime::parse_from_rfc3339(at)
                .map_err(|e| format!("cursor time {at:?}: {e}"))?
                .to_utc(),
            id: Uuid::parse_str(id).map_err(|e| format!("cursor id {id:?}: {e}"))?,
        })
    }
}

/// A page of a listing: at most `limit` items after `after` (from the start when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Most items to return.
    pub limit: usize,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
}

impl Page {
    /// The first `limit` items.
    pub fn first(limit: usize) -> Self {
        Self { limit, after: None }
    }
}

/// Which inbox rows an operation is about. Every field set must match; an empty filter
/// matches every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowFilter {
    /// Rows in this status.
    pub status: Option<EventStatus>,
    /// The row with this id.
    pub id: Option<Uuid>,
    /// The row holding this `event_id`.
    pub event_id: Option<String>,
    /// Rows of this `event_type` (exact).
    pub event_type: Option<String>,
    /// Rows received at or after this time.
    pub received_from: Option<DateTime<Utc>>,
    /// Rows received before this time.
    pub received_before: Option<DateTime<Utc>>,
    /// Rows whose `error_message` contains this text (ASCII letters match either case).
    pub error_contains: Option<String>,
    /// Rows read from this stream (exact). Rows that record no stream (stored before
    /// eventflow recorded it, or by another writer) match no stream filter.
    pub stream: Option<String>,
}

/// An inbox row with what operators did to it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxRecord {
    /// The row.
    pub row: InboxRow,
    /// How often it was requeued from `dead_letter`.
    pub replay_count: i32,
    /// When it was last requeued.
    pub last_replayed_at: Option<DateTime<Utc>>,
}

impl InboxRecord {
    /// Where a listing ending with this row goes on.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            received_at: self.row.received_at,
            id: self.row.id,
        }
    }
}

/// Parameters of [`super::InboxStore::requeue_dead_letters`].
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterRequeue<'a> {
    /// Which dead letters; its `status` is ignored (only `dead_letter` rows are requeued).
    pub filter: &'a RowFilter,
    /// Only rows after this position in `(received_at, id)` order.
    pub after: Option<Cursor>,
    /// Most rows to requeue in this call (one transaction).
    pub limit: usize,
    /// The requeue's time, recorded as `last_replayed_at`.
    pub now: DateTime<Utc>,
}

/// What [`super::InboxStore::requeue_dead_letters`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requeued {
    /// Rows moved back to `pending`.
    pub count: u64,
    /// The last of them in `(received_at, id)` order: pass it as `after` to go on. A row that
    /// fails again and is dead-lettered while a bulk requeue runs is then not requeued twice.
    pub last: Option<Cursor>,
}

/// How much is quarantined, for `eventflow status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuarantineSummary {
    /// Entries not replayed yet: what an operator still has to look at.
    pub waiting: u64,
    /// Entries replayed already, kept until retention or a purge deletes them.
    pub replayed: u64,
    /// When the oldest entry not replayed yet was quarantined.
    pub oldest_waiting: Option<DateTime<Utc>>,
}

/// Which quarantined entries an operation is about. Every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineFilter {
    /// The entry with this id.
    pub id: Option<Uuid>,
    /// Entries from this stream.
    pub stream: Option<String>,
    /// Entries quarantined at or after this time.
    pub received_from: Option<DateTime<Utc>>,
    /// Entries quarantined before this time.
    pub received_before: Option<DateTime<Utc>>,
    /// Entries whose reason contains this text (ASCII letters match either case).
    pub reason_contains: Option<String>,
    /// `Some(false)`: only entries not replayed yet; `Some(true)`: only replayed ones.
    pub replayed: Option<bool>,
}

/// Parameters of [`super::InboxStore::delete_processed_before`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessedCleanup {
    /// Processed rows whose `processed_at` is before this time go.
    pub before: DateTime<Utc>,
    /// Most rows to delete in this call (one transaction), so the table stays available: each
    /// call holds its rows' locks only briefly.
    pub limit: usize,
    /// Whether to give way when another process is cleaning the same table (on PostgreSQL, an
    /// advisory lock per table taken with `pg_try_advisory_xact_lock`). Background cleaners set
    /// it, so that several consumer processes do not all delete at once.
    pub exclusive: bool,
}

/// Parameters of [`super::InboxStore::delete_quarantined_before`].
#[derive(Debug, Clone)]
pub struct QuarantineCleanup {
    /// Entries quarantined (`received_at`) before this time go, replayed or not.
    pub before: DateTime<Utc>,
    /// Most entries to delete in this call (one transaction).
    pub limit: usize,
    /// Whether to give way when another process is cleaning the same quarantine table (on
    /// PostgreSQL, an advisory lock per table); background cleaners set it.
    pub exclusive: bool,
}

/// What [`super::InboxStore::delete_processed_before`] and
/// [`super::InboxStore::delete_quarantined_before`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// This many rows were deleted; fewer than the limit means none are left.
    Deleted(u64),
    /// Another process holds the cleanup lock; nothing was deleted.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_as_text() {
        let cursor = Cursor {
            received_at: DateTime::parse_from_rfc3339("2025-01-01T00:00:00.123456Z")
                .unwrap()
                .to_utc(),
            id: Uuid::now_v7(),
        };
        let text = cursor.to_string();
        assert!(text.starts_with("2025-01-01T00:00:00.123456Z/"), "{text}");
        assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        assert!("nonsense".parse::<Cursor>().is_err());
        assert!("2025-01-01T00:00:00Z/not-a-uuid".parse::<Cursor>().is_err());
    }
}
