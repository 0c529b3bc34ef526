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
