//! Where the outbox lives: the [`OutboxStore`] contract the relay works through, and its
//! backends.
//!
//! The application writes rows with [`crate::outbox::enqueue`] in its own transaction; a relay
//! claims due rows through [`OutboxStore::publish_due`], publishes them while holding them, and
//! records each row's outcome in the same transaction. Every backend passes the same
//! conformance suite (`tests/outbox_conformance.rs`).
//!
//! **Order.** Rows of one aggregate are published in `id` order. A row is claimable only when
//! every earlier row of its aggregate is published or claimed in the same batch, so a row
//! waiting for a retry, or dead-lettered, holds back the later rows of its aggregate until it
//! is published or requeued. Backends make sure that within one aggregate a smaller `id` also
//! committed first (PostgreSQL: a per-aggregate lock taken at enqueue; SQLite: one writer), so
//! no row can appear below one already published.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

#[cfg(feature = "postgres")]
pub use self::postgres::PostgresOutbox;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteOutbox;

use super::{Migration, PendingMigration, StoreError};
use crate::event::Event;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The outbox table's default name.
pub const DEFAULT_OUTBOX_TABLE: &str = "event_outbox";

/// Where an outbox row stands. The names are the `status` column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OutboxStatus {
    /// Enqueued, not yet published.
    Pending,
    /// The last publish attempt failed; retried at `next_attempt_at`.
    Failed,
    /// Appended to its stream; `stream_entry_id` holds the entry's id.
    Published,
    /// Given up on after too many failed attempts; holds back later events of its aggregate
    /// until requeued.
    DeadLetter,
}

impl OutboxStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [OutboxStatus; 4] = [
        OutboxStatus::Pending,
        OutboxStatus::Failed,
        OutboxStatus::Published,
        OutboxStatus::DeadLetter,
    ];

    /// The `status` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Published => "published",
            OutboxStatus::DeadLetter => "dead_letter",
        }
    }

    /// The status named by a `status` column value.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

/// One row of the outbox table.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Enqueue order.
    pub id: i64,
    /// The stream it is published to.
    pub stream: String,
    /// The event.
    pub event: Event,
    /// Where it stands.
    pub status: OutboxStatus,
    /// Publish attempts the broker answered: each refusal, and the attempt that published the
    /// row. So 0 for a row not yet tried, the refusals so far for a pending or failed row, 1
    /// for a row published at once (one more per refusal before it), and the relay's
    /// `max_attempts` for a row it dead-lettered. Attempts the broker never answered (it was
    /// unreachable, or said "try later") are not counted; a requeue starts again from 0.
    pub attempts: i32,
    /// When a failed row is tried again; `None` means now.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was enqueued (the database's clock).
    pub created_at: DateTime<Utc>,
    /// When it was published.
    pub published_at: Option<DateTime<Utc>>,
    /// The last publish error.
    pub last_error: Option<String>,
    /// When the last publish attempt failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// The stream entry id it got when published.
    pub stream_entry_id: Option<String>,
}

/// Which rows [`OutboxStore::publish_due`] claims.
#[derive(Debug, Clone, Copy)]
pub struct ClaimDue {
    /// Most rows to claim.
    pub limit: usize,
    /// The relay's clock: rows whose `next_attempt_at` is later are not due.
    pub now: DateTime<Utc>,
}

/// What the relay made of a claimed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One outcome per claimed row, in order; the store records them and commits.
    Settled(Vec<RowOutcome>),
    /// Nothing is known (the broker could not be reached): the claim is rolled back and the
    /// rows stay as they were, without an attempt counted.
    Abandoned,
}

/// What became of one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    /// Appended to its stream as entry `entry_id`.
    Published {
        /// The stream entry id.
        entry_id: String,
    },
    /// Refused; try again at `at`.
    Retry {
        /// Why it failed.
        error: String,
        /// When to try again.
        at: DateTime<Utc>,
    },
    /// Refused too often: dead-letter it.
    DeadLetter {
        /// Why it failed.
        error: String,
    },
    /// Not published, for a reason that is not the row's (the broker said "try later": out of
    /// memory, loading, a failover): the row stays as it was, without an attempt counted, and
    /// is claimed again.
    Deferred {
        /// What the broker said.
        error: String,
    },
}

/// What one [`OutboxStore::publish_due`] call did, once committed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishRound {
    /// Rows claimed and handed to the publisher.
    pub claimed: usize,
    /// Rows marked published.
    pub published: usize,
    /// Rows scheduled for another attempt.
    pub retried: usize,
    /// Rows dead-lettered.
    pub dead_lettered: usize,
    /// Rows left as they were because the broker said "try later" ([`RowOutcome::Deferred`]).
    pub deferred: usize,
    /// Rows the claim could not read (a timestamp out of range, an unexpected NULL), set aside
    /// as dead letters with the reason; they are also counted in `dead_lettered`.
    pub unreadable: usize,
    /// Whether the publisher abandoned the batch (nothing was recorded).
    pub abandoned: bool,
    /// Whether due rows were left out of a short claim because another relay held them (or an
    /// earlier row of their aggregate): they become claimable when it commits, so the caller
    /// should not wait a whole poll interval.
    pub contended: bool,
}

/// Row counts per status, for health checks and the `status` command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Rows not yet published.
    pub pending: u64,
    /// Rows waiting for a retry.
    pub failed: u64,
    /// Rows published and not yet deleted by retention.
    pub published: u64,
    /// Dead-lettered rows.
    pub dead_letter: u64,
    /// When the oldest unpublished row (pending or failed) was enqueued.
    pub oldest_unpublished: Option<DateTime<Utc>>,
}

impl OutboxCounts {
    /// Rows waiting to be published: pending plus failed.
    pub fn backlog(&self) -> u64 {
        self.pending + self.failed
    }
}

/// Which dead-lettered rows [`OutboxStore::requeue_dead_letters`] sends back to `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue<'a> {
    /// These rows, by id.
    Ids(&'a [i64]),
    /// Every dead-lettered row.
    All,
}

/// Which rows [`OutboxStore::list_rows`] returns: a page in `id` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxPage {
    /// Only rows in this status; `None` for every status.
    pub status: Option<OutboxStatus>,
    /// Only rows with a larger id: the last id of the previous page.
    pub after_id: Option<i64>,
    /// Most rows returned.
    pub limit: usize,
}

/// Wakes a relay when rows are committed to the outbox, so it need not poll.
pub trait EnqueueListener: Send {
    /// Waits up to `timeout` for a notice that rows were enqueued; `Ok(true)` when one came.
    /// An error means the notice channel broke; the relay polls and opens a new listener.
    fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError>;
}

/// A database that holds an outbox table.
///
/// Implementations are shared by relay threads; every operation is atomic.
pub trait OutboxStore: Send + Sync + 'static {
    /// The outbox table's name.
    fn table(&self) -> &str;

    /// Creates or upgrades the outbox table by applying the embedded migrations not yet
    /// applied. Idempotent, and safe to run from several processes at once.
    fn migrate(&self) -> Result<(), StoreError>;

    /// The embedded migrations not yet applied, in order, as they would run; changes nothing.
    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError>;

    /// Every embedded migration, applied or not, in order: with [`Self::pending_migrations`],
    /// what `eventflow migrate list` shows. Defaults to none, for stores that embed no
    /// migrations of their own; a store wrapping another should return the inner one's.
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }

    /// Claims up to `claim.limit` due rows (pending, or failed with `next_attempt_at` passed)
    /// in `id` order, keeping per-aggregate order (see the module docs), hands them to
    /// `publish` while holding them, then records what it returns and commits. Rows claimed
    /// here are invisible to other relays, in this process or another, until the commit.
    fn publish_due(
        &self,
        claim: &ClaimDue,
        publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
    ) -> Result<PublishRound, StoreError>;

    /// Deletes up to `limit` published rows published before `before`; returns how many.
    /// Callers repeat until it returns less than `limit`, so each transaction stays small.
    fn delete_published_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError>;

    /// Row counts per status and the age of the backlog.
    fn count_by_status(&self) -> Result<OutboxCounts, StoreError>;

    /// Every row of the event, in enqueue order (one event may go to several streams).
    fn find_by_event_id(&self, event_id: &str) -> Result<Vec<OutboxRow>, StoreError>;

    /// A page of rows in `id` order, for operators.
    fn list_rows(&self, page: &OutboxPage) -> Result<Vec<OutboxRow>, StoreError>;

    /// Sends dead-lettered rows back to `pending` with attempts reset; returns how many.
    fn requeue_dead_letters(&self, which: Requeue<'_>) -> Result<usize, StoreError>;

    /// A listener woken when rows are enqueued, when the backend has one (PostgreSQL
    /// `LISTEN`/`NOTIFY`); `None` makes the relay poll.
    fn listener(&self) -> Result<Option<Box<dyn EnqueueListener>>, StoreError> {
        Ok(None)
    }

    /// Checks that the database answers.
    fn ping(&self) -> Result<(), StoreError>;
}

impl<S: OutboxStore + ?Sized> OutboxStore for std::sync::Arc<S> {
    fn table(&self) -> &str {
        (**self).table()
    }
    fn migrate(&self) -> Result<(), StoreError> {
        (**self).migrate()
    }
    fn pending_migrations(&self) -> Result<Vec<PendingMigration>, StoreError> {
        (**self).pending_migrations()
    }
    fn migrations(&self) -> &'static [Migration] {
        (**self).migrations()
    }
    fn publish_due(
        &self,
        claim: &ClaimDue,
        publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
    ) -> Result<PublishRound, StoreError> {
        (**self).publish_due(claim, publish)
    }
    fn delete_published_before(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        (**self).delete_published_before(before, limit)
    }
    fn count_by_status(&self) -> Result<OutboxCounts, StoreError> {
        (**self).count_by_status()
    }
    fn find_by_event_id(&self, event_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        (**self).find_by_event_id(event_id)
    }
    fn list_rows(&self, page: &OutboxPage) -> Result<Vec<OutboxRow>, StoreError> {
        (**self).list_rows(page)
    }
    fn requeue_dead_letters(&self, which: Requeue<'_>) -> Result<usize, StoreError> {
        (**self).requeue_dead_letters(which)
    }
    fn listener(&self) -> Result<Option<Box<dyn EnqueueListener>>, StoreError> {
        (**self).listener()
    }
    fn ping(&self) -> Result<(), StoreError> {
        (**self).ping()
    }
}

/// Counts what a batch's outcomes will do, for [`PublishRound`].
pub(crate) fn tally(claimed: usize, outcomes: &[RowOutcome]) -> PublishRound {
    let mut round = PublishRound {
        claimed,
        ..PublishRound::default()
    };
    for outcome in outcomes {
        match outcome {
            RowOutcome::Published { .. } => round.published += 1,
            RowOutcome::Retry { .. } => round.retried += 1,
            RowOutcome::DeadLetter { .. } => round.dead_lettered += 1,
            RowOutcome::Deferred { .. } => round.deferred += 1,
        }
    }
    round
}

/// A claimed row as read: the row, or why it cannot be read, with its id either way.
pub(crate) type ReadRow = (i64, Result<OutboxRow, StoreError>);

/// Splits a claim's rows into those the relay can publish and those it cannot read, logging
/// each of the latter. One unreadable row (an `infinity` timestamp, a NULL where none belongs)
/// must not stop the relay: it is set aside as a dead letter with the reason, which also holds
/// back the later rows of its aggregate, so their order is kept.
pub(crate) fn set_aside(table: &str, read: Vec<ReadRow>) -> (Vec<OutboxRow>, Vec<(i64, String)>) {
    let mut rows = Vec::with_capacity(read.len());
    let mut unreadable = Vec::new();
    for (id, row) in read {
        match row {
            Ok(row) => rows.push(row),
            Err(error) => {
                tracing::error!(table, outbox_id = id, %error, "outbox row cannot be read; dead-lettered");
                unreadable.push((id, format!("the relay cannot read this row: {error}")));
            }
        }
    }
    (rows, unreadable)
}

/// The round of a claim that set `unreadable` rows aside (and published nothing, so that the
/// rest, with those rows now dead letters, is claimed again at once with their order kept).
pub(crate) fn set_aside_round(claimed: usize, unreadable: usize) -> PublishRound {
    PublishRound {
        claimed,
        dead_lettered: unreadable,
        unreadable,
        ..PublishRound::default()
    }
}

/// What a store does with a claimed batch once the publisher has seen it.
pub(crate) enum HandedOver {
    /// Record these outcomes, one per row, and commit.
    Record(Vec<RowOutcome>),
    /// Roll back and report this round.
    Abandoned(PublishRound),
}

/// Hands claimed `rows` to `publish`. A publisher that broke its contract (a wrong number of
/// outcomes) must not mark rows it never published: that is an error, and the batch is rolled
/// back.
pub(crate) fn hand_over(
    rows: &[OutboxRow],
    publish: &mut dyn FnMut(&[OutboxRow]) -> Delivery,
) -> Result<HandedOver, StoreError> {
    match publish(rows) {
        Delivery::Settled(outcomes) if outcomes.len() == rows.len() => {
            Ok(HandedOver::Record(outcomes))
        }
        Delivery::Settled(outcomes) => Err(StoreError::Corrupt {
            row: format!("outbox batch of {}", rows.len()),
            reason: format!("the publisher returned {} outcomes", outcomes.len()),
        }),
        Delivery::Abandoned => Ok(HandedOver::Abandoned(PublishRound {
            claimed: rows.len(),
            abandoned: true,
            ..PublishRound::default()
        })),
    }
}

impl OutboxCounts {
    /// Adds one `GROUP BY status` row of `table`: the status column's value, its row count and,
    /// for unpublished statuses, the oldest `created_at`.
    pub(crate) fn add(
        &mut self,
        table: &str,
        status: &str,
        count: u64,
        oldest: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let slot = match OutboxStatus::parse(status) {
            Some(OutboxStatus::Pending) => &mut self.pending,
            Some(OutboxStatus::Failed) => &mut self.failed,
            Some(OutboxStatus::Published) => &mut self.published,
            Some(OutboxStatus::DeadLetter) => &mut self.dead_letter,
            None => {
                return Err(StoreError::Corrupt {
                    row: format!("{table} rows"),
                    reason: format!("unknown status {status:?}"),
                })
            }
        };
        *slot = count;
        if let Some(oldest) = oldest {
            self.oldest_unpublished = Some(
                self.oldest_unpublished
                    .map_or(oldest, |known| known.min(oldest)),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_column_values() {
        for status in OutboxStatus::ALL {
            assert_eq!(OutboxStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OutboxStatus::parse("processed"), None);
    }
}
