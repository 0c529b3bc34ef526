//! eventflow acts on each event from a Redis Stream exactly once: an event's handler runs in the
//! database transaction that marks the event processed, so its database writes commit once and
//! only once, however often the event is delivered and whatever crashes in between.
//!
//! It implements the **transactional inbox** for blocking Rust services, with no async runtime:
//! reader threads read stream batches with a consumer group and store them in an `event_inbox`
//! table keyed by `event_id` (duplicates are skipped), acknowledging entries only once stored;
//! a fixed pool of worker threads claims the stored rows (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), runs your handler in the row's transaction, and on failure retries with
//! exponential backoff (60 s doubling to 15 min) or dead-letters the event. Malformed entries
//! are kept in a quarantine table, never dropped.
//!
//! A consumer reads any number of streams into its own table (the first consumer group to start
//! on a table owns it; another group is refused), routes each event type to its own handler
//! ([`ConsumerBuilder::route_typed`](inbox::ConsumerBuilder::route_typed) deserializes the
//! payload first), and can handle each aggregate's events one at a time, in order, while other
//! aggregates go on in parallel ([`ConsumerBuilder::ordered`](inbox::ConsumerBuilder::ordered)).
//!
//! Its producer-side twin is the **transactional outbox** ([`outbox`]): `outbox::enqueue` writes
//! an event in the application's own transaction, and an [`OutboxRelay`] publishes it once that
//! transaction commits (never if it rolls back), keeping each aggregate's events in order.
//!
//! # Quick start
//! ```
//! use eventflow::transport::{MemoryStream, Transport};
//! use eventflow::{Event, HandlerResult, InboxConsumer};
//! use std::time::Duration;
//!
//! let stream = MemoryStream::new();
//! let consumer = InboxConsumer::builder()
//!     .transport(stream.clone())          // or .redis("redis://127.0.0.1:6379")
//!     .sqlite_in_memory()                 // or .postgres(url) / .sqlite("app.db")
//!     .stream("orders")
//!     .group("billing")
//!     .handler(|tx, row| -> HandlerResult {
//!         tx.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT)", [])?;
//!         tx.execute("INSERT INTO seen VALUES (?1)", [&row.event.event_id])?;
//!         Ok(())
//!     })
//!     .build()?;
//! let handle = consumer.start()?;
//!
//! let event = Event::new("OrderCreated", uuid::Uuid::new_v4(), serde_json::json!({"order_id": "o-1"}));
//! stream.publish("orders", event.to_entry_fields())?;
//! handle.wait_idle(Duration::from_secs(10))?;         // read, stored and handled
//! let report = handle.shutdown(Duration::from_secs(10))?;
//! assert_eq!(report.stats.processed, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Testing
//! [`testing::run_handler`] runs a handler on one event inside a test's own transaction and
//! says what the consumer would record; [`ConsumerHandle::wait_idle`] waits for a running
//! consumer to settle what it was given.
//!
//! # Features
//! `postgres`, `sqlite` and `redis` (on by default) each enable one backend; `tls` (on by
//! default) adds TLS to PostgreSQL and Redis. `otel` (off by default) carries OpenTelemetry
//! trace context from `outbox::enqueue` to the handler through the event's
//! [`headers`](Event::headers); see the `otel` module and the README's "Tracing" section. `cli`
//! (off by default) builds the `eventflow` operations command and its web console
//! (`cargo install eventflow --features cli`); the library never needs it.
//!
//! # Re-exported crates
//! Your handlers and enqueuing code name types of `postgres`, `rusqlite` (each with its
//! feature), [`serde_json`] and [`uuid`] (the transaction, a payload, an aggregate id).
//! eventflow re-exports the versions it is built with, so `eventflow::postgres::Transaction`
//! always matches what the handler gets, whichever version your own `Cargo.toml` names.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
mod backoff;
pub mod clock;
mod error;
pub mod event;
mod handler;
pub mod headers;
pub mod inbox;
mod maintenance;
#[cfg(feature = "otel")]
pub mod otel;
pub mod outbox;
mod probe;
pub mod quarantine;
pub mod redact;
pub mod retry;
pub mod store;
pub mod testing;
pub mod tls;
pub mod transport;

#[cfg(feature = "postgres")]
pub use postgres;
#[cfg(feature = "sqlite")]
pub use rusqlite;
pub use serde_json;
pub use uuid;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use event::{EntryError, Event, EventStatus, InboxRow};
pub use handler::{BoxError, HandlerError, HandlerResult};
pub use headers::Headers;
pub use inbox::{
    ConsumerHandle, ConsumerStats, InboxConsumer, Router, ShutdownReport, UnknownEvents,
};
pub use outbox::{OutboxRelay, RelayHandle};
pub use retry::{ExponentialBackoff, RetryPolicy};
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{InboxStore, Migrations};
