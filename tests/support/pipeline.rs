//! What the multi-process tests (crash, poison, faults) start from: a migrated PostgreSQL inbox
//! table and a Redis stream with the group on it, and a way to publish numbered events.

use eventflow::store::{InboxStore, PostgresStore};
use eventflow::transport::{RedisStreams, Transport};
use eventflow::Event;
use postgres::{Client, NoTls};
use serde_json::json;
use uuid::Uuid;

/// A migrated inbox table and a stream with `group`, both named after the test's prefix.
pub struct Pipeline {
    pub table: String,
    pub stream: String,
    pub store: PostgresStore,
    /// A plain connection for the test's own tables and checks.
    pub db: Client,
    pub redis: RedisStreams,
}

impl Pipeline {
    pub fn new(prefix: &str, group: &str) -> Self {
        let table = super::unique_name(prefix);
        let stream = super::unique_name(&format!("{prefix}_stream"));
        let store = PostgresStore::builder(super::postgres_url())
            .table(&table)
            .build()
            .unwrap();
        store.migrate().unwrap();
        let db = Client::connect(&super::postgres_url(), NoTls).unwrap();
        let redis = RedisStreams::connect(&super::redis_url()).unwrap();
        redis.ensure_group(&stream, group).unwrap();
        Self {
            table,
            stream,
            store,
            db,
            redis,
        }
    }

    /// Publishes one event per id, in batches of 500.
    pub fn publish(&self, ids: impl IntoIterator<Item = String>) {
        publish(&self.redis, &self.stream, ids);
    }
}

/// Publishes one event per id to `stream`, each of a new aggregate, in batches of 500.
pub fn publish(redis: &RedisStreams, stream: &str, ids: impl IntoIterator<Item = String>) {
    let entries: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(n, id)| {
            let mut event = Event::new("OrderCreated", Uuid::new_v4(), json!({ "n": n }));
            event.event_id = id;
            event.to_entry_fields()
        })
        .collect();
    for chunk in entries.chunks(500) {
        redis.publish_batch(stream, chunk).unwrap();
    }
}
