//! The transactions a handler can be run in by [`super::run_handler`]: each knows its store,
//! so the handler's store type is inferred from the transaction the test passes, and each
//! undoes a failed handler's writes as the consumer does, with a savepoint.

use crate::store::InboxStore;

/// A transaction a handler can run in: `rusqlite::Transaction` (a [`SqliteStore`]'s handlers)
/// or [`PgTransaction`] (a [`PostgresStore`]'s, opened with
/// [`PgConnection::transaction`]).
///
/// Implemented by eventflow only; it exists so that [`run_handler`](super::run_handler) can
/// tell from the transaction which store's handler it runs.
///
/// [`SqliteStore`]: crate::store::SqliteStore
/// [`PostgresStore`]: crate::store::PostgresStore
/// [`PgTransaction`]: crate::store::PgTransaction
/// [`PgConnection::transaction`]: crate::store::PgConnection::transaction
pub trait HandlerTransaction<'t>: sealed::Savepoints {
    /// The store whose handlers run in this transaction.
    type Store: InboxStore<Tx<'t> = Self>;
}

/// The savepoint that fences one handler run, as the consumer fences each row of a batch.
/// Plain SQL both backends speak alike.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const SAVEPOINT: &str = "SAVEPOINT eventflow_test";
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const RELEASE: &str = "RELEASE SAVEPOINT eventflow_test";
#[cfg(any(feature = "sqlite", feature = "postgres"))]
const UNDO: &str = "ROLLBACK TO SAVEPOINT eventflow_test; RELEASE SAVEPOINT eventflow_test";

pub(crate) mod sealed {
    use crate::store::StoreError;

    /// What [`super::HandlerTransaction`] needs from a backend, kept out of the public API.
    pub trait Savepoints {
        /// Sets the savepoint before the handler runs.
        fn savepoint(&mut self) -> Result<(), StoreError>;
        /// Keeps a successful handler's writes. `Ok(Some(reason))` when the database refused
        /// them (the handler swallowed a failed statement, say): they were rolled back and the
        /// attempt fails with `reason`, the consumer's words for it.
        fn keep(&mut self) -> Result<Option<String>, StoreError>;
        /// Rolls back a failed handler's writes.
        fn undo(&mut self) -> Result<(), StoreError>;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use crate::store::{SqliteStore, StoreError};
    use rusqlite::Transaction;

    fn lite(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
        move |source| StoreError::Sqlite { context, source }
    }

    impl<'t> HandlerTransaction<'t> for Transaction<'t> {
        type Store = SqliteStore;
    }

    impl sealed::Savepoints for Transaction<'_> {
        fn savepoint(&mut self) -> Result<(), StoreError> {
            self.execute_batch(SAVEPOINT)
                .map_err(lite("set a savepoint"))
        }

        fn keep(&mut self) -> Result<Option<String>, StoreError> {
            match self.execute_batch(RELEASE) {
                Ok(()) => Ok(None),
                Err(error) => {
                    self.undo()?;
                    // The store's words (src/store/sqlite) for the same refusal.
                    Ok(Some(format!(
                        "the handler's writes could not be kept: {error}"
                    )))
                }
            }
        }

        fn undo(&mut self) -> Result<(), StoreError> {
            self.execute_batch(UNDO)
                .map_err(lite("roll back a failed handler"))
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use crate::store::{PgTransaction, PostgresStore, StoreError};

    fn pg(context: &'static str) -> impl FnOnce(::postgres::Error) -> StoreError {
        move |source| StoreError::Postgres { context, source }
    }

    impl<'t> HandlerTransaction<'t> for PgTransaction<'t> {
        type Store = PostgresStore;
    }

    impl sealed::Savepoints for PgTransaction<'_> {
        fn savepoint(&mut self) -> Result<(), StoreError> {
            self.batch_execute(SAVEPOINT).map_err(pg("set a savepoint"))
        }

        fn keep(&mut self) -> Result<Option<String>, StoreError> {
            match self.batch_execute(RELEASE) {
                Ok(()) => Ok(None),
                Err(_) => {
                    self.undo()?;
                    // The store's words (src/store/postgres/batch.rs) for the same refusal.
                    Ok(Some(
                        "the handler returned success but a statement it ran had failed, \
                         aborting its transaction"
                            .to_string(),
                    ))
                }
            }
        }

        fn undo(&mut self) -> Result<(), StoreError> {
            self.batch_execute(UNDO)
                .map_err(pg("roll back a failed handler"))
        }
    }
}
