//! Counters of what a running consumer did.

use super::metrics::InboxMetrics;
use crate::event::InboxRow;
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a consumer's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Stream entries read (including reclaimed ones).
    pub received: u64,
    /// Events already in the inbox (by `event_id`), not stored again.
    pub duplicates: u64,
    /// Malformed entries kept in the quarantine table.
    pub quarantined: u64,
    /// Entries taken over from consumers that stopped without acknowledging them.
    pub reclaimed: u64,
    /// Rows handled and committed as processed, as confirmed by the database. A commit whose
    /// answer was lost with its connection is not counted, though it may have happened.
    pub processed: u64,
    /// Failed attempts scheduled for retry.
    pub failed: u64,
    /// Rows dead-lettered.
    pub dead_lettered: u64,
}

/// One set of counts, bumped without locks.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    duplicates: AtomicU64,
    quarantined: AtomicU64,
    reclaimed: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Tally {
    fn snapshot(&self) -> ConsumerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerStats {
            received: get(&self.received),
            duplicates: get(&self.duplicates),
            quarantined: get(&self.quarantined),
            reclaimed: get(&self.reclaimed),
            processed: get(&self.processed),
            failed: get(&self.failed),
            dead_lettered: get(&self.dead_lettered),
        }
    }
}

/// A consumer's counters, in all and per stream, and the metrics that count the same things
/// (see [`super::metrics`]).
pub(crate) struct Counters {
    total: Tally,
    /// Per configured stream; rows from other streams (replayed, or written by other writers)
    /// count in the total only.
    streams: Vec<(String, Tally)>,
    pub metrics: InboxMetrics,
}

impl Counters {
    pub fn new(streams: &[String], metrics: InboxMetrics) -> Self {
        Self {
            total: Tally::default(),
            streams: streams
                .iter()
                .map(|stream| (stream.clone(), Tally::default()))
                .collect(),
            metrics,
        }
    }

    /// Adds `n` to one counter, in the total and in `stream`'s tally.
    fn add(&self, stream: Option<&str>, n: usize, counter: fn(&Tally) -> &AtomicU64) {
        counter(&self.total).fetch_add(n as u64, Ordering::Relaxed);
        if let Some((_, tally)) = self
            .streams
            .iter()
            .find(|(name, _)| Some(name.as_str()) == stream)
        {
            counter(tally).fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn received(&self, stream: &str, n: usize) {
        self.add(Some(stream), n, |t| &t.received);
        self.metrics.received(stream, n);
    }

    pub fn duplicates(&self, stream: &str, n: usize) {
        self.add(Some(stream), n, |t| &t.duplicates);
        self.metrics.duplicates(stream, n);
    }

    pub fn quarantined(&self, stream: &str, n: usize) {
        self.add(Some(stream), n, |t| &t.quarantined);
        self.metrics.quarantined(stream, n);
    }

    pub fn reclaimed(&self, stream: &str, n: usize) {
        self.add(Some(stream), n, |t| &t.reclaimed);
        self.metrics.reclaimed(stream, n);
    }

    /// A row committed as processed at `now`.
    pub fn processed(&self, row: &InboxRow, now: DateTime<Utc>) {
        self.add(row.stream.as_deref(), 1, |t| &t.processed);
        self.metrics.processed(
            row.stream.as_deref(),
            row.event.occurred_on,
            row.received_at,
            now,
        );
    }

    pub fn failed(&self, row: &InboxRow) {
        self.add(row.stream.as_deref(), 1, |t| &t.failed);
        self.metrics.failed_attempt(row.stream.as_deref());
    }

    pub fn dead_lettered(&self, row: &InboxRow) {
        self.add(row.stream.as_deref(), 1, |t| &t.dead_lettered);
        self.metrics.dead_lettered(row.stream.as_deref());
    }

    pub fn snapshot(&self) -> ConsumerStats {
        self.total.snapshot()
    }

    pub fn snapshot_by_stream(&self) -> Vec<(String, ConsumerStats)> {
        self.streams
            .iter()
            .map(|(stream, tally)| (stream.clone(), tally.snapshot()))
            .collect()
    }
}
