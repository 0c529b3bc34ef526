//! Counters of what a running consumer did.

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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub quarantined: AtomicU64,
    pub reclaimed: AtomicU64,
    pub processed: AtomicU64,
    pub failed: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
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
