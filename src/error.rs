//! The consumer's error type: what `build()`, `start()` and `shutdown()` can return.

use crate::event::EntryError;
use crate::store::StoreError;
use crate::transport::TransportError;
use std::time::Duration;

/// `Result` with eventflow's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from configuring, starting and stopping eventflow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is missing or invalid; `field` names the setter.
    #[error("invalid configuration, {field}: {reason}")]
    Config {
        /// The setting at fault.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The database failed (at start: migrating it).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream broker failed (at start: creating the consumer group).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An entry could not be parsed into an event (when replaying a quarantined entry).
    #[error("the entry is still not a valid event: {0}")]
    Entry(#[from] EntryError),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Threads were still busy when the shutdown timeout ran out (a handler that does not
    /// return, say). They stop after their current batch; nothing is lost, since unfinished
    /// rows stay in the inbox and unacknowledged entries stay in the stream.
    #[error("shutdown timed out after {timeout:?}; still running: {still_running:?}")]
    ShutdownTimedOut {
        /// The timeout given.
        timeout: Duration,
        /// Names of the threads still running.
        still_running: Vec<String>,
    },
    /// [`ConsumerHandle::wait_idle`](crate::ConsumerHandle::wait_idle) ran out of time with
    /// the consumer still busy; `waiting_for` says with what (entries not yet read, rows being
    /// handled, a handler that does not return).
    #[error("the consumer was not idle within {timeout:?}; still waiting for {waiting_for}")]
    IdleTimedOut {
        /// The timeout given.
        timeout: Duration,
        /// What the consumer was still doing.
        waiting_for: String,
    },
    /// The consumer was shut down, so it will never be idle with its work done: what it left
    /// stays in the inbox and the stream for the next start.
    #[error("the consumer has been shut down")]
    NotRunning,
    /// The inbox table belongs to another consumer group. An inbox finds duplicates by
    /// `event_id` per table, so a second service on the same table would skip every event the
    /// first one stored: each service (group) needs a table of its own.
    #[error(
        "inbox table {table:?} belongs to consumer group {owner:?}, not {group:?}; give this \
         consumer a table of its own with .table(\"{suggested}\") (eventflow --table for the CLI)"
    )]
    TableOwned {
        /// The inbox table.
        table: String,
        /// The group that owns it.
        owner: String,
        /// The group that was refused.
        group: String,
        /// A table name for the refused group.
        suggested: String,
    },
    /// The quarantined entry does not exist or was replayed already.
    #[error("quarantined entry {0} not found or already replayed")]
    NotFound(uuid::Uuid),
}

impl Error {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            field,
            reason: reason.into(),
        }
    }
}
