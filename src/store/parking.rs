//! What per-aggregate order asks of a store: the aggregates a dead letter parks, and skipping
//! that dead letter to release them. [`crate::admin`] and `eventflow parked` build on these.

use crate::event::InboxRow;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// What a dead letter does to the later events of its aggregate, in ordered mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AfterDeadLetter {
    /// The aggregate is parked: its later events wait until an operator requeues the dead
    /// letter (it is then handled in its place in the order) or skips it.
    #[default]
    Park,
    /// The aggregate's next event goes on; the dead letter stays for an operator to look at.
    Skip,
}

/// An aggregate held back by a dead letter that was neither requeued nor skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedAggregate {
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// Its earliest dead letter not skipped: what holds it back.
    pub dead_letter: InboxRow,
    /// Its later events waiting behind the dead letter (pending or failed).
    pub waiting: u64,
    /// When the oldest of them was stored.
    pub oldest_waiting: Option<DateTime<Utc>>,
}

/// How much is parked, for gauges and `eventflow status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkedSummary {
    /// Aggregates with a dead letter neither requeued nor skipped.
    pub aggregates: u64,
    /// When the oldest event waiting behind such a dead letter was stored.
    pub oldest_waiting: Option<DateTime<Utc>>,
}

/// Parameters of [`super::InboxStore::list_parked`]: parked aggregates ordered by id, at most
/// `limit` of them after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedPage {
    /// Most aggregates to return.
    pub limit: usize,
    /// Where the previous page ended.
    pub after: Option<Uuid>,
    /// Only this aggregate.
    pub aggregate_id: Option<Uuid>,
}

/// Parameters of [`super::InboxStore::skip_dead_letter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterSkip {
    /// The dead letter's row id.
    pub id: Uuid,
    /// When it is skipped, recorded as `skipped_at`.
    pub now: DateTime<Utc>,
}
