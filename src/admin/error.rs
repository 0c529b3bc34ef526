//! The operations API's error type.

use crate::event::EntryError;
use crate::store::StoreError;
use crate::transport::TransportError;

/// `Result` with [`AdminError`].
pub type AdminResult<T> = std::result::Result<T, AdminError>;

/// Errors from the operations API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The database failed or could not be reached ([`AdminError::is_unreachable`] tells).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream broker failed or could not be reached.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// What the operation names does not exist (or, for a quarantined entry, was replayed
    /// already).
    #[error("{what} {key} not found")]
    NotFound {
        /// What was looked for: "inbox row", "quarantined entry", ...
        what: &'static str,
        /// The id or event id given.
        key: String,
    },
    /// The row exists but is not in a state the operation applies to (requeueing a row that
    /// is not a dead letter, say).
    #[error("{0}")]
    WrongState(String),
    /// The event given (to publish, or a quarantined entry's corrected fields) is not a valid
    /// event; the message names the field.
    #[error("not a valid event: {0}")]
    InvalidEvent(#[from] EntryError),
    /// Input that could not be understood (JSON that does not parse, say).
    #[error("{0}")]
    InvalidInput(String),
    /// The outbox table does not exist in the database: the outbox was never migrated there
    /// (or a different `table` was meant).
    #[error(
        "the outbox is not installed: table {table} does not exist \
         (create it with `eventflow migrate --outbox`, or OutboxStore::migrate)"
    )]
    NotInstalled {
        /// The outbox table looked for.
        table: String,
    },
}

impl AdminError {
    /// Whether the database or the broker could not be reached at all (down, wrong address,
    /// refused login), as opposed to answering with an error.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Store(error) => store_unreachable(error),
            Self::Transport(TransportError::Unavailable(_)) => true,
            _ => false,
        }
    }
}

fn store_unreachable(error: &StoreError) -> bool {
    match error {
        StoreError::Pool(_) => true,
        #[cfg(feature = "postgres")]
        StoreError::Postgres { source, .. } => {
            source.is_closed()
                || source.code().is_some_and(|code| {
                    // Connection exceptions and refused logins.
                    let code = code.code();
                    code.starts_with("08") || code.starts_with("28") || code == "3D000"
                })
        }
        #[cfg(feature = "sqlite")]
        StoreError::Sqlite {
            source: rusqlite::Error::SqliteFailure(failure, _),
            ..
        } => matches!(
            failure.code,
            rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::NotADatabase
        ),
        StoreError::Migration { source, .. } => store_unreachable(source),
        _ => false,
    }
}
