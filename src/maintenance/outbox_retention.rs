//! Deletes published outbox rows once they are older than the retention age, in small
//! batches so the table stays online and each transaction stays short.

use crate::clock::Clock;
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
}

impl OutboxRetention {
    /// Deletes every published row older than `keep`, batch by batch; returns how many went.
    pub fn run_once(&self) -> Result<usize, StoreError> {
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let before = self
            .clock
            .now()
            .checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let mut deleted = 0;
        loop {
            let batch = self.store.delete_published_before(before, BATCH)?;
            deleted += batch;
            if batch < BATCH {
                return Ok(deleted);
            }
        }
    }
}
