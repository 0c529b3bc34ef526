//! Malformed entries: found by filter, shown, and replayed once fixed.

use super::{Admin, AdminError, AdminResult};
use crate::error::Error;
use crate::quarantine::{self, QuarantinedEntry};
use crate::store::{Cursor, InboxStore, Page, QuarantineFilter};
use uuid::Uuid;

/// One page of a quarantine listing.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinePage {
    /// The entries, ordered by `(received_at, id)`.
    pub entries: Vec<QuarantinedEntry>,
    /// Where the next page starts, when this one was full.
    pub next: Option<Cursor>,
}

use crate::quarantine::RawFields as Fields;

/// How to fix a quarantined entry before replaying it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Correction {
    /// Replay the fields as they are (the parser or the contract changed since).
    #[default]
    AsIs,
    /// Replace every field with one `data` field holding this JSON object (the recommended
    /// entry style).
    Data(serde_json::Value),
    /// Set these fields: each replaces the entry's field of the same name, or is added. Not
    /// for an oversized entry, of which only a prefix was kept: replace it whole with `Data`.
    Fields(Vec<(String, String)>),
}

impl Correction {
    /// The entry's fields with the correction applied; `None` to keep them as they are.
    fn apply(self, entry: &QuarantinedEntry) -> AdminResult<Option<Fields>> {
        match self {
            Self::Data(data) if data.is_object() => Ok(Some(vec![(
                b"data".to_vec(),
                data.to_string().into_bytes(),
            )])),
            Self::Data(_) => Err(AdminError::InvalidInput(
                "corrected data must be a JSON object".into(),
            )),
            Self::AsIs | Self::Fields(_) if entry.oversized.is_some() => {
                Err(AdminError::WrongState(format!(
                    "quarantined entry {} was over the maximum entry size and only a prefix of \
                     it was kept; replay it with corrected data (--data) instead",
                    entry.id
                )))
            }
            Self::AsIs => Ok(None),
            Self::Fields(set) => {
                let mut fields = entry.fields.clone();
                for (name, value) in set {
                    let name = name.into_bytes();
                    match fields.iter_mut().find(|(field, _)| *field == name) {
                        Some((_, old)) => *old = value.into_bytes(),
                        None => fields.push((name, value.into_bytes())),
                    }
                }
                Ok(Some(fields))
            }
        }
    }
}

impl<S: InboxStore> Admin<S> {
    /// Quarantined entries matching `filter`, one page.
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
    /// use eventflow::store::{Page, QuarantineFilter};
    ///
    /// let page = admin.list_quarantined(&QuarantineFilter::default(), Page::first(50))?;
    /// assert_eq!(page.entries.len(), 1);
    /// println!("{}: {}", page.entries[0].stream_id, page.entries[0].reason);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn list_quarantined(
        &self,
        filter: &QuarantineFilter,
        page: Page,
    ) -> AdminResult<QuarantinePage> {
        let entries = self.store.list_quarantined_matching(filter, &page)?;
        let next = if entries.len() >= page.limit && page.limit > 0 {
            entries.last().map(|entry| Cursor {
                received_at: entry.received_at,
                id: entry.id,
            })
        } else {
            None
        };
        Ok(QuarantinePage { entries, next })
    }

    /// One quarantined entry.
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
    /// use eventflow::store::{Page, QuarantineFilter};
    ///
    /// # let id = admin.list_quarantined(&QuarantineFilter::default(), Page::first(1))?.entries[0].id;
    /// let entry = admin.find_quarantined(id)?;
    /// assert_eq!(entry.stream, "orders");
    /// assert!(entry.reason.contains("data"), "{}", entry.reason);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn find_quarantined(&self, id: Uuid) -> AdminResult<QuarantinedEntry> {
        self.store
            .find_quarantined(id)?
            .ok_or_else(|| AdminError::NotFound {
                what: "quarantined entry",
                key: id.to_string(),
            })
    }

    /// Parses quarantined entry `id` again, with `correction` applied, and stores it as a new
    /// pending event with `max_retries`; the entry is marked replayed in the same transaction.
    /// Returns the event id. Fails with [`AdminError::InvalidEvent`] (naming the field) when it
    /// still does not parse, and [`AdminError::NotFound`] when it was replayed already.
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
    /// use eventflow::admin::Correction;
    /// use eventflow::store::{Page, QuarantineFilter};
    ///
    /// # let id = admin.list_quarantined(&QuarantineFilter::default(), Page::first(1))?.entries[0].id;
    /// // The producer sent broken JSON; replay the entry with the event it meant.
    /// let fixed = serde_json::json!({
    ///     "event_id": "e-3", "event_type": "OrderCreated",
    ///     "aggregate_id": eventflow::uuid::Uuid::new_v4(), "occurred_on": "2025-01-01T00:00:00Z",
    ///     "payload": {"order_id": "o-3"},
    /// });
    /// let event_id = admin.replay_quarantined(id, Correction::Data(fixed), 3)?;
    /// assert_eq!(event_id, "e-3");
    /// assert_eq!(admin.find_row("e-3")?.row.status, eventflow::EventStatus::Pending);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn replay_quarantined(
        &self,
        id: Uuid,
        correction: Correction,
        max_retries: i32,
    ) -> AdminResult<String> {
        let entry = self.find_quarantined(id)?;
        if entry.replayed_at.is_some() {
            return Err(AdminError::WrongState(format!(
                "quarantined entry {id} was replayed already, as event {}",
                entry.replayed_event_id.as_deref().unwrap_or("?")
            )));
        }
        let corrected = correction.apply(&entry)?;
        quarantine::replay(
            self.store.as_ref(),
            id,
            corrected,
            max_retries,
            self.clock.now(),
        )
        .map_err(|error| match error {
            Error::Store(error) => AdminError::Store(error),
            Error::Entry(error) => AdminError::InvalidEvent(error),
            Error::NotFound(id) => AdminError::NotFound {
                what: "quarantined entry",
                key: id.to_string(),
            },
            other => AdminError::InvalidInput(other.to_string()),
        })
    }
}
