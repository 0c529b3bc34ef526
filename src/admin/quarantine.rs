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
