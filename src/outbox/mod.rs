//! The transactional outbox: events written in the application's own transaction, published
//! to their stream once that transaction commits, and never if it rolls back.
//!
//! The application calls [`enqueue`] (or [`enqueue_batch`]) inside its business transaction,
//! on PostgreSQL or SQLite; the event becomes a row of the `event_outbox` table and commits or
//! rolls back with everything else. An [`OutboxRelay`] claims committed rows in batches,
//! appends them to their streams with one pipelined round trip per batch (in the `data`-JSON
//! entry style the inbox reads) and marks them published. A relay that crashes after
//! appending and before marking publishes those events again: delivery is at least once, and an
//! inbox consumer's `event_id` deduplication turns that into exactly-once effects.
//!
//! "Published" means the Redis master acknowledged the entry. Redis replicates asynchronously,
//! so an entry whose master fails before passing it on is gone although its row says
//! published; [`RelayBuilder::wait_for_replicas`] marks a row published only once replicas
//! hold its entry, which closes that gap (the README's "Failover" section has the measured
//! difference).
//!
//! Events of one aggregate reach the stream in the order they were enqueued, whatever the
//! number of relay threads and processes (see [`crate::store::outbox`] for how).
//!
//! ```no_run
//! use eventflow::outbox::{self, OutboxRelay};
//! use eventflow::Event;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = postgres::Client::connect("host=127.0.0.1 user=postgres", postgres::NoTls)?;
//! let order_id = uuid::Uuid::new_v4();
//! let mut tx = client.transaction()?;
//! tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&order_id])?;
//! let event = Event::new("OrderPlaced", order_id, serde_json::json!({"total": 42}));
//! outbox::enqueue(&mut tx, "orders", &event)?;
//! tx.commit()?; // committed: published; rolled back: never
//!
//! let relay = OutboxRelay::builder()
//!     .postgres("host=127.0.0.1 user=postgres")
//!     .redis("redis://127.0.0.1:6379")
//!     .workers(2)
//!     .build()?
//!     .start()?;
//! relay.shutdown(Duration::from_secs(10))?;
//! # Ok(()) }
//! ```

mod builder;
mod enqueue;
mod handle;
mod health;
mod listener;
pub mod metrics;
mod migrate;
mod publisher;
mod relay;

pub use builder::RelayBuilder;
pub use enqueue::{
    enqueue, enqueue_batch, enqueue_to_streams, EnqueueError, OutboxTable, OutboxWriter,
};
pub(crate) use handle::Counters;
pub use handle::{RelayHandle, RelayReport, RelayStats};
pub use health::RelayHealth;
pub use migrate::{migrate, OutboxMigrator};
pub use relay::OutboxRelay;
