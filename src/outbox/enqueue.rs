//! Writing events to the outbox inside the application's transaction.

use crate::event::{EntryError, Event, MAX_ID_LEN};
use crate::store::outbox::DEFAULT_OUTBOX_TABLE;
use crate::store::{validate_table_name, StoreError};
use std::borrow::Borrow;

/// Errors from [`enqueue`]; nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// An event would not be readable by an inbox (an empty id, a payload that is not an
    /// object, ...).
    #[error("event {event_id:?} cannot be enqueued: {source}")]
    InvalidEvent {
        /// The event's id.
        event_id: String,
        /// What is wrong with it.
        #[source]
        source: EntryError,
    },
    /// The stream name is empty, too long or holds a NUL character.
    #[error("invalid stream name {stream:?}: {reason}")]
    InvalidStream {
        /// The name given.
        stream: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database refused the insert (the outbox table is missing: run the relay's
    /// migration, or `eventflow migrate`). The caller's transaction is then aborted, as after
    /// any failed statement.
    #[error("cannot write to the outbox: {0}")]
    Store(#[from] StoreError),
}

impl EnqueueError {
    /// Whether running the caller's whole transaction again is the right answer: the database
    /// ended it for a conflict with a concurrent transaction (a serialization failure, a
    /// deadlock; see [`StoreError::is_retryable`]). Invalid events and stream names never are.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_retryable(),
            _ => false,
        }
    }
}

/// A connection or transaction the outbox can be written through. `enqueue` never begins,
/// commits or rolls back anything itself: the rows are part of whatever transaction the
/// writer is in.
///
/// Implemented for `postgres::Client` and `postgres::Transaction`, eventflow's
/// [`PgTransaction`](crate::store::PgTransaction) (so an inbox handler can emit events in
/// the transaction that marks its event processed), and `rusqlite::Connection`,
/// `rusqlite::Transaction` and `rusqlite::Savepoint`.
pub trait OutboxWriter {
    /// Inserts `entries` (each event with the stream it is bound for), in order, into `table`
    /// (a validated name). A backend that locks aggregates takes all of the call's locks in one
    /// global order, whatever their streams.
    fn write_outbox(&mut self, table: &str, entries: &[(&str, &Event)]) -> Result<(), StoreError>;
}

/// Implements [`OutboxWriter`] for `$writer` by handing it, as `$as`, to the backend's
/// `enqueue`.
macro_rules! writes_through {
    ($feature:literal, $backend:ident, $($writer:ty => |$w:ident| $as:expr),+ $(,)?) => {$(
        #[cfg(feature = $feature)]
        impl OutboxWriter for $writer {
            fn write_outbox(
                &mut self,
                table: &str,
                entries: &[(&str, &Event)],
            ) -> Result<(), StoreError> {
                let $w = self;
                crate::store::outbox::$backend::enqueue($as, table, entries)
            }
        }
    )+};
}

writes_through!(
    "postgres",
    postgres,
    postgres::Client => |w| w,
    postgres::Transaction<'_> => |w| w,
    crate::store::PgTransaction<'_> => |w| &mut **w,
);

writes_through!(
    "sqlite",
    sqlite,
    rusqlite::Connection => |w| w,
    rusqlite::Transaction<'_> => |w| w,
    rusqlite::Savepoint<'_> => |w| w,
);

/// An outbox table other than the default `event_outbox`.
///
/// ```no_run
/// # fn f(tx: &mut rusqlite::Transaction<'_>, event: &eventflow::Event) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = eventflow::outbox::OutboxTable::named("billing_outbox")?;
/// outbox.enqueue(tx, "invoices", event)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    name: String,
}

impl Default for OutboxTable {
    fn default() -> Self {
        Self {
            name: DEFAULT_OUTBOX_TABLE.to_string(),
        }
    }
}

impl OutboxTable {
    /// The table `name`, which must be a plain SQL identifier of at most 40 characters.
    pub fn named(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        validate_table_name(&name)?;
        Ok(Self { name })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `event` to this table in `writer`'s transaction; see [`enqueue`].
    pub fn enqueue<W: OutboxWriter + ?Sized>(
        &self,
        writer: &mut W,
        stream: &str,
        event: &Event,
    ) -> Result<(), EnqueueError> {
        self.enqueue_batch(writer, stream, std::slice::from_ref(event))
    }

    /// Writes `events` (owned or borrowed: `&[Event]`, `[&a, &b]`, a `Vec<Event>`, ...), in
    /// order, to this table in `writer`'s transaction; see [`enqueue_batch`].
    pub fn enqueue_batch<W, I>(
        &self,
        writer: &mut W,
        stream: &str,
        events: I,
    ) -> Result<(), EnqueueError>
    where
        W: OutboxWriter + ?Sized,
        I: IntoIterator<Item: Borrow<Event>>,
    {
        check_stream(stream)?;
        let events: Vec<I::Item> = events.into_iter().collect();
        let entries: Vec<(&str, &Event)> = events
            .iter()
            .map(|event| (stream, event.borrow()))
            .collect();
        self.write(writer, &entries)
    }

    /// Writes events bound for several streams, in order, to this table in `writer`'s
    /// transaction; see [`enqueue_to_streams`].
    pub fn enqueue_to_streams<W: OutboxWriter + ?Sized>(
        &self,
        writer: &mut W,
        entries: &[(&str, Event)],
    ) -> Result<(), EnqueueError> {
        for (stream, _) in entries {
            check_stream(stream)?;
        }
        let entries: Vec<(&str, &Event)> = entries
            .iter()
            .map(|(stream, event)| (*stream, event))
            .collect();
        self.write(writer, &entries)
    }

    fn write<W: OutboxWriter + ?Sized>(
        &self,
        writer: &mut W,
        entries: &[(&str, &Event)],
    ) -> Result<(), EnqueueError> {
        // With `otel`, the events go out carrying the current span's trace context.
        #[cfg(feature = "otel")]
        let traced = crate::otel::with_current_context(entries);
        #[cfg(feature = "otel")]
        let traced_entries: Vec<(&str, &Event)>;
        #[cfg(feature = "otel")]
        let entries = match &traced {
            Some(traced) => {
                traced_entries = traced
                    .iter()
                    .map(|(stream, event)| (*stream, event))
                    .collect();
                &traced_entries[..]
            }
            None => entries,
        };
        for (_, event) in entries {
            event
                .validate()
                .map_err(|source| EnqueueError::InvalidEvent {
                    event_id: event.event_id.clone(),
                    source,
                })?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        writer.write_outbox(&self.name, entries)?;
        Ok(())
    }
}

/// Writes `event` to the `event_outbox` table, bound for `stream`, inside `writer`'s
/// transaction: it is published once that transaction commits, and never if it rolls back.
///
/// The event is validated first (an invalid one is refused and nothing is written). On
/// PostgreSQL this also takes a lock on the event's aggregate until the transaction ends, so
/// concurrent transactions enqueueing for one aggregate are published in commit order; and it
/// wakes listening relays on commit. A transaction that enqueues for several aggregates should
/// do so in one call ([`enqueue_batch`] for one stream, [`enqueue_to_streams`] for several),
/// which takes their locks in one global order: separate calls in different orders in two
/// concurrent transactions can deadlock (PostgreSQL then aborts one), as row locks taken in
/// different orders can.
///
/// The event's [`headers`](Event::headers) are published with it. With the `otel` feature, the
/// current span's trace context is added to them as W3C `traceparent` (and `tracestate`), so
/// the handler that consumes the event joins the trace; an event that already has a
/// `traceparent` keeps its own.
pub fn enqueue<W: OutboxWriter + ?Sized>(
    writer: &mut W,
    stream: &str,
    event: &Event,
) -> Result<(), EnqueueError> {
    OutboxTable::default().enqueue(writer, stream, event)
}

/// Writes `events` to the `event_outbox` table in order, like [`enqueue`], in one statement on
/// PostgreSQL. Every event is validated before anything is written.
///
/// The events may be owned or borrowed: a slice (`&events`), an array of references to
/// events the application keeps (`[&created, &paid]`), a `Vec` it hands over, or any iterator
/// of these; nothing needs cloning.
///
/// ```no_run
/// # fn f(tx: &mut postgres::Transaction<'_>, created: &eventflow::Event, paid: &eventflow::Event) -> Result<(), Box<dyn std::error::Error>> {
/// eventflow::outbox::enqueue_batch(tx, "orders", [created, paid])?;
/// # Ok(()) }
/// ```
pub fn enqueue_batch<W, I>(writer: &mut W, stream: &str, events: I) -> Result<(), EnqueueError>
where
    W: OutboxWriter + ?Sized,
    I: IntoIterator<Item: Borrow<Event>>,
{
    OutboxTable::default().enqueue_batch(writer, stream, events)
}

/// Writes events bound for several streams (`(stream, event)` pairs) to the `event_outbox` table
/// in order, like [`enqueue`], in one statement on PostgreSQL. Every stream name and event is
/// validated before anything is written.
///
/// A transaction that emits events to several streams should use this rather than one call per
/// stream: one call takes all of its aggregates' locks in one global order, so two transactions
/// enqueueing for the same aggregates on different streams in opposite orders cannot deadlock.
///
/// ```no_run
/// # fn f(tx: &mut postgres::Transaction<'_>, order: eventflow::Event, invoice: eventflow::Event) -> Result<(), Box<dyn std::error::Error>> {
/// eventflow::outbox::enqueue_to_streams(tx, &[("orders", order), ("invoices", invoice)])?;
/// # Ok(()) }
/// ```
pub fn enqueue_to_streams<W: OutboxWriter + ?Sized>(
    writer: &mut W,
    entries: &[(&str, Event)],
) -> Result<(), EnqueueError> {
    OutboxTable::default().enqueue_to_streams(writer, entries)
}

fn check_stream(stream: &str) -> Result<(), EnqueueError> {
    let reason = if stream.is_empty() {
        "it is empty"
    } else if stream.len() > MAX_ID_LEN {
        "it is longer than 255 bytes"
    } else if stream.contains('\0') {
        "it holds a NUL character"
    } else {
        return Ok(());
    };
    Err(EnqueueError::InvalidStream {
        stream: stream.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_stream_names_are_refused() {
        assert!(check_stream("orders").is_ok());
        for bad in ["", "a\0b", &"s".repeat(256)] {
            assert!(
                matches!(check_stream(bad), Err(EnqueueError::InvalidStream { .. })),
                "{bad:?}"
            );
        }
    }
}
