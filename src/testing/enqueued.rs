//! What a transaction wrote to the outbox, read back inside that transaction.

use crate::store::outbox::OutboxRow;
use crate::store::{validate_table_name, StoreError};

/// A connection or transaction the outbox can be read through, inside whatever transaction it
/// is in: the same types [`OutboxWriter`](crate::outbox::OutboxWriter) writes through.
pub trait OutboxReader {
    /// The pending rows of `table` (a validated name) in id order.
    fn pending_outbox(&mut self, table: &str) -> Result<Vec<OutboxRow>, StoreError>;
}

/// Implements [`OutboxReader`] for `$reader` by handing it, as `$as`, to the backend's
/// `list_pending`.
macro_rules! reads_through {
    ($feature:literal, $backend:ident, $($reader:ty => |$r:ident| $as:expr),+ $(,)?) => {$(
        #[cfg(feature = $feature)]
        impl OutboxReader for $reader {
            fn pending_outbox(&mut self, table: &str) -> Result<Vec<OutboxRow>, StoreError> {
                let $r = self;
                crate::store::outbox::$backend::list_pending($as, table)
            }
        }
    )+};
}

reads_through!(
    "postgres",
    postgres,
    postgres::Client => |r| r,
    postgres::Transaction<'_> => |r| r,
    crate::store::PgTransaction<'_> => |r| &mut **r,
);

reads_through!(
    "sqlite",
    sqlite,
    rusqlite::Connection => |r| r,
    rusqlite::Transaction<'_> => |r| r,
    rusqlite::Savepoint<'_> => |r| r,
);

/// The events waiting in the outbox `table` (`event_outbox` unless the application names
/// another), as `reader` sees them, in the order they would be published: what the test's
/// transaction enqueued, plus any pending rows committed before it, so give each test a
/// database or table of its own.
///
/// ```
/// use eventflow::{outbox, testing, Event};
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// outbox::migrate(&mut conn)?;
/// let mut tx = conn.transaction()?;
/// let event = Event::new("InvoiceIssued", uuid::Uuid::new_v4(), serde_json::json!({"total": 12}));
/// outbox::enqueue(&mut tx, "invoices", &event)?;
///
/// let rows = testing::enqueued(&mut tx, "event_outbox")?;
/// assert_eq!(rows.len(), 1);
/// assert_eq!((rows[0].stream.as_str(), &rows[0].event), ("invoices", &event));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn enqueued<R: OutboxReader + ?Sized>(
    reader: &mut R,
    table: &str,
) -> Result<Vec<OutboxRow>, StoreError> {
    validate_table_name(table)?;
    reader.pending_outbox(table)
}

/// Asserts that exactly one event of `event_type` waits in the outbox `table` for `stream`, as
/// `reader` sees it (see [`enqueued`]), and returns its row so the test can check the payload.
///
/// # Panics
/// When there is none or more than one, or the table cannot be read; the message lists every
/// pending row.
///
/// ```
/// use eventflow::{outbox, testing, Event};
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// outbox::migrate(&mut conn)?;
/// let mut tx = conn.transaction()?;
/// let event = Event::new("InvoiceIssued", uuid::Uuid::new_v4(), serde_json::json!({"total": 12}));
/// outbox::enqueue(&mut tx, "invoices", &event)?;
///
/// let row = testing::assert_enqueued(&mut tx, "event_outbox", "invoices", "InvoiceIssued");
/// assert_eq!(row.event.payload["total"], 12);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[track_caller]
pub fn assert_enqueued<R: OutboxReader + ?Sized>(
    reader: &mut R,
    table: &str,
    stream: &str,
    event_type: &str,
) -> OutboxRow {
    let rows = match enqueued(reader, table) {
        Ok(rows) => rows,
        Err(error) => panic!("cannot read the outbox table {table}: {error}"),
    };
    let mut matching: Vec<&OutboxRow> = rows
        .iter()
        .filter(|row| row.stream == stream && row.event.event_type == event_type)
        .collect();
    if matching.len() == 1 {
        return matching.remove(0).clone();
    }
    let listing: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "  {} -> {} (event_id {})",
                row.event.event_type, row.stream, row.event.event_id
            )
        })
        .collect();
    let listing = if listing.is_empty() {
        "  nothing".to_string()
    } else {
        listing.join("\n")
    };
    panic!(
        "expected one {event_type} event enqueued for stream {stream}, found {}; {table} holds:\n{listing}",
        matching.len()
    );
}
