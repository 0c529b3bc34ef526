//! Aggregates parked by per-aggregate order: listed, shown, and released by skipping the dead
//! letter that holds them back.
//!
//! With a consumer's `.ordered(true)`, a dead letter (neither requeued nor skipped) parks its
//! aggregate: the aggregate's later events wait behind it. An operator either requeues the dead
//! letter ([`Admin::requeue_dead_letter`]; it is handled again in its place in the order, and
//! the aggregate goes on once it succeeds) or skips it ([`Admin::skip_parked`],
//! [`Admin::skip_dead_letter`]; it stays a dead letter, and the waiting events go on now).
//!
//! ```
//! use eventflow::admin::{Admin, AdminError};
//! use eventflow::store::ParkedPage;
//! use eventflow::SqliteStore;
//! use std::sync::Arc;
//!
//! let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
//! admin.migrate()?;
//! let page = ParkedPage { limit: 50, after: None, aggregate_id: None };
//! let listed = admin.list_parked(page)?;
//! assert!(listed.aggregates.is_empty() && listed.next.is_none());
//! assert_eq!(admin.inbox_status()?.parked.aggregates, 0);
//! // Skipping an aggregate that is not parked changes nothing and says so.
//! let not_parked = admin.skip_parked(uuid::Uuid::new_v4());
//! assert!(matches!(not_parked, Err(AdminError::NotFound { what: "parked aggregate", .. })));
//! # Ok::<(), eventflow::admin::AdminError>(())
//! ```

use super::{Admin, AdminError, AdminResult};
use crate::event::EventStatus;
use crate::store::{DeadLetterSkip, InboxRecord, InboxStore, ParkedAggregate, ParkedPage};
use uuid::Uuid;

/// One page of parked aggregates, from [`Admin::list_parked`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedList {
    /// The parked aggregates, ordered by aggregate id.
    pub aggregates: Vec<ParkedAggregate>,
    /// Where the next page starts (pass it as [`ParkedPage::after`]), when this one was full.
    pub next: Option<Uuid>,
}

impl<S: InboxStore> Admin<S> {
    /// Parked aggregates ordered by aggregate id, one page: each with the dead letter that
    /// holds it back and how many events wait behind it.
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// use eventflow::store::ParkedPage;
    ///
    /// admin.migrate()?;
    /// let list = admin.list_parked(ParkedPage { limit: 50, after: None, aggregate_id: None })?;
    /// for parked in &list.aggregates {
    ///     println!("aggregate {} waits behind a dead letter", parked.aggregate_id);
    /// }
    /// assert!(list.aggregates.is_empty() && list.next.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_parked(&self, page: ParkedPage) -> AdminResult<ParkedList> {
        let aggregates = self.store.list_parked(&page)?;
        let next = if aggregates.len() >= page.limit && page.limit > 0 {
            aggregates.last().map(|parked| parked.aggregate_id)
        } else {
            None
        };
        Ok(ParkedList { aggregates, next })
    }

    /// The aggregate `aggregate_id` if it is parked: its earliest dead letter neither requeued
    /// nor skipped, and what waits behind it. `None` when it is not parked (or unknown).
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// admin.migrate()?;
    /// let aggregate = eventflow::uuid::Uuid::new_v4();
    /// assert!(admin.parked_aggregate(aggregate)?.is_none(), "nothing holds it back");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parked_aggregate(&self, aggregate_id: Uuid) -> AdminResult<Option<ParkedAggregate>> {
        let page = ParkedPage {
            limit: 1,
            after: None,
            aggregate_id: Some(aggregate_id),
        };
        Ok(self.store.list_parked(&page)?.pop())
    }

    /// Releases the parked aggregate `aggregate_id` by skipping the dead letter that holds it
    /// back (the one [`list_parked`](Self::list_parked) reports): the dead letter stays, marked
    /// skipped, and the waiting events are claimed on the workers' next poll. Returns the
    /// aggregate as it was parked.
    ///
    /// A later dead letter of the same aggregate, neither requeued nor skipped, parks it again
    /// from there: [`parked_aggregate`](Self::parked_aggregate) tells.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] when the aggregate is not parked; [`AdminError::WrongState`] when
    /// its dead letter was requeued or skipped by someone else meanwhile.
    ///
    /// ```
    /// # use eventflow::{admin::Admin, SqliteStore};
    /// # use std::sync::Arc;
    /// let admin = Admin::new(Arc::new(SqliteStore::open_in_memory()?));
    /// use eventflow::admin::AdminError;
    ///
    /// admin.migrate()?;
    /// let aggregate = eventflow::uuid::Uuid::new_v4();
    /// // An aggregate that is not parked cannot be released.
    /// assert!(matches!(admin.skip_parked(aggregate), Err(AdminError::NotFound { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn skip_parked(&self, aggregate_id: Uuid) -> AdminResult<ParkedAggregate> {
        let parked = self
            .parked_aggregate(aggregate_id)?
            .ok_or_else(|| AdminError::NotFound {
                what: "parked aggregate",
                key: aggregate_id.to_string(),
            })?;
        let skip = DeadLetterSkip {
            id: parked.dead_letter.id,
            now: self.clock.now(),
        };
        if !self.store.skip_dead_letter(&skip)? {
            return Err(AdminError::WrongState(format!(
                "the dead letter {} parking aggregate {aggregate_id} was requeued or skipped \
                 meanwhile; look again with `eventflow parked show {aggregate_id}`",
                parked.dead_letter.event.event_id
            )));
        }
        tracing::info!(
            %aggregate_id,
            event_id = %parked.dead_letter.event.event_id,
            waiting = parked.waiting,
            "skipped the dead letter parking an aggregate"
        );
        Ok(parked)
    }

    /// Skips one dead letter, found by event id or row id as [`find_row`](Self::find_row)
    /// does: it stays a dead letter, marked skipped, and no longer holds back its aggregate's
    /// later events in ordered mode (without ordered mode, the mark changes nothing). A requeue
    /// clears the mark. Returns the row.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] when no row matches `key`; [`AdminError::WrongState`] when the
    /// row is not a dead letter or was skipped already.
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
    /// let record = admin.skip_dead_letter("e-1")?;
    /// assert_eq!(record.row.status, eventflow::EventStatus::DeadLetter, "it stays a dead letter");
    /// assert!(admin.skip_dead_letter("e-1").is_err(), "skipped already");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn skip_dead_letter(&self, key: &str) -> AdminResult<InboxRecord> {
        let found = self.find_row(key)?;
        if found.row.status != EventStatus::DeadLetter {
            return Err(AdminError::WrongState(format!(
                "inbox row {key} is {}, not a dead letter; only dead letters are skipped",
                found.row.status
            )));
        }
        let skip = DeadLetterSkip {
            id: found.row.id,
            now: self.clock.now(),
        };
        if !self.store.skip_dead_letter(&skip)? {
            return Err(AdminError::WrongState(format!(
                "the dead letter {key} was skipped already (or requeued meanwhile)"
            )));
        }
        tracing::info!(event_id = %found.row.event.event_id, "skipped a dead letter");
        Ok(found)
    }
}
