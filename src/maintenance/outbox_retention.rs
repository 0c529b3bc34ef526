//! Deletes published outbox rows once they are older than the retention age, in small
//! batches so the table stays online and each transaction stays short.

use super::Service;
use crate::clock::Clock;
use crate::outbox::Counters;
use crate::store::outbox::OutboxStore;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// Rows per delete: small enough to hold locks briefly, large enough to keep up.
pub(crate) const BATCH: usize = 1_000;

pub(crate) struct OutboxRetention {
    pub store: Arc<dyn OutboxStore>,
    pub clock: Arc<dyn Clock>,
    /// Published rows older than this go.
    pub keep: Duration,
    pub interval: Duration,
    /// Where the relay counts what went.
    pub counters: Arc<Counters>,
}

impl OutboxRetention {
    /// Deletes published rows older than `keep`, batch by batch, until none are left or
    /// shutdown begins; returns how many went.
    fn delete_old(&self, stopping: &dyn Fn() -> bool) -> Result<u64, StoreError> {
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let Some(before) = self.clock.now().checked_sub_signed(keep) else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let deleted = self.store.delete_published_before(before, BATCH)?;
            total += deleted as u64;
            self.counters.deleted(deleted as u64);
            if deleted < BATCH || stopping() {
                return Ok(total);
            }
        }
    }
}

impl Service for OutboxRetention {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn run_once(&mut self, stopping: &dyn Fn() -> bool) {
        match self.delete_old(stopping) {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, table = %self.store.table(), "deleted published outbox rows past retention")
            }
            Err(error) => {
                tracing::warn!(%error, "outbox retention failed; trying again next round")
            }
        }
    }
}
