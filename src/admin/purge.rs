//! Deleting processed rows past their retention, in small batches.

use super::{Admin, AdminError, AdminResult, BATCH_ROWS};
use crate::clock::Clock;
use crate::store::{Cleanup, InboxStore, ProcessedCleanup, QuarantineCleanup};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// The moment `older_than` before `clock`'s now: rows finished before it are purged.
pub(super) fn cutoff(clock: &dyn Clock, older_than: Duration) -> AdminResult<DateTime<Utc>> {
    chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|older_than| clock.now().checked_sub_signed(older_than))
        .ok_or_else(|| AdminError::InvalidInput("the age is too large".into()))
}

impl<S: InboxStore> Admin<S> {
    /// Deletes processed rows whose `processed_at` is more than `older_than` ago, oldest first,
    /// [`BATCH_ROWS`] per transaction, so the table stays available to the consumer meanwhile.
    /// Rows in any other status are kept. `progress` hears the running total after each batch.
    /// Returns how many rows went.
    ///
    /// ```
    /// # use eventflow::transport::{MemoryStream, Transport};
    /// # use eventflow::{admin::Admin, Event, HandlerError, HandlerResult};
    /// # use eventflow::{InboxConsumer, SqliteStore};
    /// # use std::{sync::Arc, time::Duration};
    /// # let store = Arc::new(SqliteStore::open_in_memory()?);
    /// # let stream = MemoryStream::new();
    /// # let handle = InboxConsumer::builder().transport(stream.clone()).store(store.clone())
    /// #     .stream("orders").group("billing")
    /// #     .handler(|_tx, row| -> HandlerResult {
    /// #         if row.event.event_id == "e-1" { return Err(HandlerError::give_up("bad payload")); }
    /// #         Ok(())
    /// #     })
    /// #     .build()?.start()?;
    /// # for id in ["e-1", "e-2"] {
    /// #     let event = Event::new("OrderCreated", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    /// #         .with_event_id(id);
    /// #     stream.publish("orders", event.to_entry_fields())?;
    /// # }
    /// # stream.publish("orders", vec![("data".to_string(), b"{oops".to_vec())])?;
    /// # handle.wait_idle(Duration::from_secs(10))?;
    /// # handle.shutdown(Duration::from_secs(10))?;
    /// // e-1 was dead-lettered (its handler gave up), e-2 processed, and one entry quarantined.
    /// let admin = Admin::new(store);
    /// // Processed rows older than a week; an age under 1 s would take every processed row.
    /// let purged = admin.purge_processed(Duration::from_secs(7 * 86_400), &mut |_so_far| {})?;
    /// assert_eq!(purged, 0, "e-2 was processed just now");
    /// assert_eq!(admin.purge_processed(Duration::ZERO, &mut |_so_far| {})?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn purge_processed(
        &self,
        older_than: Duration,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let before = cutoff(self.clock.as_ref(), older_than)?;
        let mut total = 0;
        loop {
            let cleanup = ProcessedCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: false,
            };
            let deleted = match self.store.delete_processed_before(&cleanup)? {
                Cleanup::Deleted(deleted) => deleted,
                Cleanup::Busy => 0, // not asked for exclusivity, so never
            };
            total += deleted;
            progress(total);
            if (deleted as usize) < BATCH_ROWS {
                break;
            }
        }
        tracing::info!(deleted = total, %before, "purged processed rows");
        Ok(total)
    }

    /// Deletes quarantined entries, replayed or not, quarantined more than `older_than` ago,
    /// oldest first, [`BATCH_ROWS`] per transaction. `progress` hears the running total after
    /// each batch. Returns how many entries went.
    ///
    /// ```
    /// # use eventflow::transport::{MemoryStream, Transport};
    /// # use eventflow::{admin::Admin, Event, HandlerError, HandlerResult};
    /// # use eventflow::{InboxConsumer, SqliteStore};
    /// # use std::{sync::Arc, time::Duration};
    /// # let store = Arc::new(SqliteStore::open_in_memory()?);
    /// # let stream = MemoryStream::new();
    /// # let handle = InboxConsumer::builder().transport(stream.clone()).store(store.clone())
    /// #     .stream("orders").group("billing")
    /// #     .handler(|_tx, row| -> HandlerResult {
    /// #         if row.event.event_id == "e-1" { return Err(HandlerError::give_up("bad payload")); }
    /// #         Ok(())
    /// #     })
    /// #     .build()?.start()?;
    /// # for id in ["e-1", "e-2"] {
    /// #     let event = Event::new("OrderCreated", eventflow::uuid::Uuid::new_v4(), serde_json::json!({}))
    /// #         .with_event_id(id);
    /// #     stream.publish("orders", event.to_entry_fields())?;
    /// # }
    /// # stream.publish("orders", vec![("data".to_string(), b"{oops".to_vec())])?;
    /// # handle.wait_idle(Duration::from_secs(10))?;
    /// # handle.shutdown(Duration::from_secs(10))?;
    /// // e-1 was dead-lettered (its handler gave up), e-2 processed, and one entry quarantined.
    /// let admin = Admin::new(store);
    /// let purged = admin.purge_quarantined(Duration::ZERO, &mut |so_far| eprintln!("{so_far}"))?;
    /// assert_eq!(purged, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn purge_quarantined(
        &self,
        older_than: Duration,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let before = cutoff(self.clock.as_ref(), older_than)?;
        let mut total = 0;
        loop {
            let cleanup = QuarantineCleanup {
                before,
                limit: BATCH_ROWS,
                exclusive: false,
            };
            let deleted = match self.store.delete_quarantined_before(&cleanup)? {
                Cleanup::Deleted(deleted) => deleted,
                Cleanup::Busy => 0, // not asked for exclusivity, so never
            };
            total += deleted;
            progress(total);
            if (deleted as usize) < BATCH_ROWS {
                break;
            }
        }
        tracing::info!(deleted = total, %before, "purged quarantined entries");
        Ok(total)
    }
}
