//! Helpers for testing handlers and the code around them, without threads or sleeps.
//!
//! - [`run_handler`] runs a handler, plain or a [`Router`](crate::Router), on one event inside
//!   a SQLite or PostgreSQL transaction the test holds, and returns what the consumer would
//!   record: [`Outcome::Processed`], [`Outcome::Retry`] with the next attempt's time under the
//!   test's clock, or [`Outcome::DeadLetter`] with its reason. The decision is the consumer's
//!   own code, not a copy of it.
//! - [`enqueued`] lists what a transaction wrote to the outbox, and [`assert_enqueued`] checks
//!   that it wrote one event of a type for a stream.
//! - [`ConsumerHandle::wait_idle`](crate::ConsumerHandle::wait_idle) blocks until a running
//!   consumer has settled everything it was given, instead of polling its stats.
//!
//! ```
//! use eventflow::testing::{run_handler, Outcome, RunOptions};
//! use eventflow::{Event, HandlerError, HandlerResult, InboxRow};
//!
//! fn charge(tx: &mut rusqlite::Transaction<'_>, row: &InboxRow) -> HandlerResult {
//!     let amount = row.event.payload["amount"].as_i64()
//!         .ok_or_else(|| HandlerError::give_up("no amount"))?;
//!     tx.execute("INSERT INTO charges (amount) VALUES (?1)", [amount])?;
//!     Ok(())
//! }
//!
//! let mut conn = rusqlite::Connection::open_in_memory()?;
//! conn.execute("CREATE TABLE charges (amount INTEGER NOT NULL)", [])?;
//! let mut tx = conn.transaction()?;
//! let event = Event::new("ChargeRequested", uuid::Uuid::new_v4(), serde_json::json!({"amount": 5}));
//! assert_eq!(run_handler(&charge, &mut tx, &event, &RunOptions::new())?, Outcome::Processed);
//!
//! let bad = Event::new("ChargeRequested", uuid::Uuid::new_v4(), serde_json::json!({}));
//! let outcome = run_handler(&charge, &mut tx, &bad, &RunOptions::new())?;
//! assert_eq!(outcome, Outcome::DeadLetter { reason: "no amount".into(), retry_count: 1 });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod enqueued;
mod run;
mod transaction;

pub use enqueued::{assert_enqueued, enqueued, OutboxReader};
pub use run::{run_handler, Outcome, RunError, RunOptions};
pub use transaction::HandlerTransaction;
