//! Inbox rows found by filter, and dead letters put back to work.

use super::{Admin, AdminError, AdminResult, BATCH_ROWS};
use crate::event::EventStatus;
use crate::store::{Cursor, DeadLetterRequeue, InboxRecord, InboxStore, Page, RowFilter};
use uuid::Uuid;

/// One page of a row listing.
#[derive(Debug, Clone, PartialEq)]
pub struct RowPage {
    /// The rows, ordered by `(received_at, id)`.
    pub rows: Vec<InboxRecord>,
    /// Where the next page starts, when this one was full.
    pub next: Option<Cursor>,
}

impl<S: InboxStore> Admin<S> {
    /// Rows matching `filter` (dead letters: `status: Some(EventStatus::DeadLetter)`), one page.
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
    /// use eventflow::store::{Page, RowFilter};
    /// use eventflow::EventStatus;
    ///
    /// let dead = RowFilter { status: Some(EventStatus::DeadLetter), ..RowFilter::default() };
    /// let page = admin.list_rows(&dead, Page::first(50))?;
    /// assert_eq!(page.rows.len(), 1);
    /// assert_eq!(page.rows[0].row.event.event_id, "e-1");
    /// assert!(page.next.is_none(), "no further page");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_rows(&self, filter: &RowFilter, page: Page) -> AdminResult<RowPage> {
        let rows = self.store.list_rows(filter, &page)?;
        let next = if rows.len() >= page.limit && page.limit > 0 {
            rows.last().map(InboxRecord::cursor)
        } else {
            None
        };
        Ok(RowPage { rows, next })
    }

    /// The row holding event id `key`, or else the row whose id is `key`.
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
    /// let record = admin.find_row("e-1")?; // an event id, or a row id
    /// assert_eq!(record.row.status, eventflow::EventStatus::DeadLetter);
    /// assert_eq!(record.row.error_message.as_deref(), Some("bad payload"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn find_row(&self, key: &str) -> AdminResult<InboxRecord> {
        let by_event_id = RowFilter {
            event_id: Some(key.to_string()),
            ..RowFilter::default()
        };
        if let Some(record) = self.store.list_rows(&by_event_id, &Page::first(1))?.pop() {
            return Ok(record);
        }
        if let Ok(id) = Uuid::parse_str(key) {
            let by_id = RowFilter {
                id: Some(id),
                ..RowFilter::default()
            };
            if let Some(record) = self.store.list_rows(&by_id, &Page::first(1))?.pop() {
                return Ok(record);
            }
        }
        Err(AdminError::NotFound {
            what: "inbox row",
            key: key.to_string(),
        })
    }

    /// Requeues one dead letter, found by event id or row id as [`find_row`](Self::find_row)
    /// does; returns the row as it is now (`pending`).
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
    /// let record = admin.requeue_dead_letter("e-1")?;
    /// assert_eq!(record.row.status, eventflow::EventStatus::Pending);
    /// assert_eq!(record.replay_count, 1);
    /// // Only dead letters are requeued.
    /// assert!(admin.requeue_dead_letter("e-2").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn requeue_dead_letter(&self, key: &str) -> AdminResult<InboxRecord> {
        let found = self.find_row(key)?;
        if found.row.status != EventStatus::DeadLetter {
            return Err(AdminError::WrongState(format!(
                "inbox row {key} is {}, not a dead letter; only dead letters are requeued",
                found.row.status
            )));
        }
        let only = RowFilter {
            id: Some(found.row.id),
            ..RowFilter::default()
        };
        let requeued = self.store.requeue_dead_letters(&DeadLetterRequeue {
            filter: &only,
            after: None,
            limit: 1,
            now: self.clock.now(),
        })?;
        if requeued.count == 0 {
            return Err(AdminError::WrongState(format!(
                "inbox row {key} changed meanwhile; it is no longer a dead letter"
            )));
        }
        tracing::info!(event_id = %found.row.event.event_id, "requeued a dead letter");
        self.find_row(&found.row.id.to_string())
    }

    /// Requeues every dead letter matching `filter` (its `status` is ignored), oldest first,
    /// [`BATCH_ROWS`] per transaction. `progress` hears the running total after each batch.
    /// Rows dead-lettered again while this runs are not requeued a second time. Returns how
    /// many were requeued.
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
    /// use eventflow::store::RowFilter;
    /// use eventflow::EventStatus;
    ///
    /// let dead = RowFilter { status: Some(EventStatus::DeadLetter), ..RowFilter::default() };
    /// let requeued = admin.requeue_dead_letters(&dead, &mut |so_far| eprintln!("{so_far} requeued"))?;
    /// assert_eq!(requeued, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn requeue_dead_letters(
        &self,
        filter: &RowFilter,
        progress: &mut dyn FnMut(u64),
    ) -> AdminResult<u64> {
        let now = self.clock.now();
        let mut total = 0;
        let mut after = None;
        loop {
            let requeued = self.store.requeue_dead_letters(&DeadLetterRequeue {
                filter,
                after,
                limit: BATCH_ROWS,
                now,
            })?;
            total += requeued.count;
            progress(total);
            match requeued.last {
                Some(last) if requeued.count as usize >= BATCH_ROWS => after = Some(last),
                _ => break,
            }
        }
        tracing::info!(requeued = total, "requeued dead letters");
        Ok(total)
    }
}
