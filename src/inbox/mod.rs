//! The inbox consumer: stream → inbox table → worker pool.
//!
//! Reader threads (`receiver.rs`) read batches with the consumer group, store them in one
//! transaction and acknowledge them only after it commits, then hand the new rows to a fixed pool
//! of worker threads (`worker.rs`) over bounded channels, so readers wait when workers fall behind.
//! Workers also claim due rows on a tick (retries whose time has come, rows left by a crashed
//! process, rows stored by other processes). Each row is locked by one worker from claim to
//! commit, and the handler's writes commit with the row's move to `processed`.
//!
//! Observing a running consumer: [`ConsumerHandle::wait_idle`] blocks until it has settled
//! what it was given, [`ConsumerHandle::stats`] counts what it did, [`metrics`]
//! records the same and more through the `metrics` facade, [`ConsumerHandle::health`] answers
//! liveness and readiness probes, and [`ConsumerBuilder::on_dead_letter`] hears of every dead
//! letter.
//!
//! Handlers: one function for every event ([`ConsumerBuilder::handler`]), or one per event type
//! through a [`Router`] ([`ConsumerBuilder::route`], [`ConsumerBuilder::route_typed`]).

mod builder;
mod consumer;
mod dead_letter;
mod handle;
mod handler_span;
pub(crate) use handle::Threads;
pub(crate) use worker::panic_message;
mod health;
mod idle;
pub(crate) mod in_flight;
pub(crate) mod liveness;
pub mod metrics;
mod polls;
mod receiver;
mod router;
mod settings;
mod stats;
mod suspects;
pub(crate) mod verdict;
mod waiting_aggregates;
pub(crate) mod worker;

#[cfg(feature = "postgres")]
pub use builder::PostgresUrl;
#[cfg(feature = "sqlite")]
pub use builder::SqlitePath;
pub use builder::{ConsumerBuilder, NoStore, Prebuilt, StoreOptions, StoreSource};
pub use consumer::{Handler, InboxConsumer};
pub use dead_letter::{DeadLetter, DEAD_LETTER_MESSAGE};
pub use handle::{ConsumerHandle, ShutdownReport};
pub use health::{Health, ThreadCount, PING_TIMEOUT};
pub use in_flight::HungHandler;
pub use router::{Router, UnknownEvents};
pub use stats::ConsumerStats;
