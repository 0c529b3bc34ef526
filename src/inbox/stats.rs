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

/// A consumer's counters, and the metrics that count the same things (see [`super::metrics`]).
pub(crate) struct Counters {
    received: AtomicU64,
    duplicates: AtomicU64,
    quarantined: AtomicU64,
    reclaimed: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    pub metrics: InboxMetrics,
}

impl Counters {
    pub fn new(metrics: InboxMetrics) -> Self {
        Self {
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            metrics,
        }
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn received(&self, stream: &str, n: usize) {
        Self::add(&self.received, n);
        self.metrics.received(stream, n);
    }

    pub fn duplicates(&self, stream: &str, n: usize) {
        Self::add(&self.duplicates, n);
        self.metrics.duplicates(stream, n);
    }

    pub fn quarantined(&self, stream: &str, n: usize) {
        Self::add(&self.quarantined, n);
        self.metrics.quarantined(stream, n);
    }

    pub fn reclaimed(&self, stream: &str, n: usize) {
        Self::add(&self.reclaimed, n);
        self.metrics.reclaimed(stream, n);
    }

    /// A row committed as processed at `now`.
    pub fn processed(&self, row: &InboxRow, now: DateTime<Utc>) {
        Self::add(&self.processed, 1);
        self.metrics.processed(
            row.stream.as_deref(),
            row.event.occurred_on,
            row.received_at,
            now,
        );
    }

    pub fn failed(&self, row: &InboxRow) {
        Self::add(&self.failed, 1);
        self.metrics.failed_attempt(row.stream.as_deref());
    }

    pub fn dead_lettered(&self, row: &InboxRow) {
        Self::add(&self.dead_lettered, 1);
        self.metrics.dead_lettered(row.stream.as_deref());
    }

    pub fn snapshot(&self) -> ConsumerStats {
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
