//! Routing by event type end to end, written once over a [`Backend`] and run on both: SQLite in
//! memory with the in-process stream, and PostgreSQL with Redis (skipped when they are not
//! reachable, unless `EVENTFLOW_REQUIRE_SERVICES=1`). Each test counts what happened to every
//! event it published.
//!
//! The router records `eventflow_inbox_unhandled_total` from the consumer's threads, so a
//! global recorder is installed for this test binary; each test reads only the series of an
//! event type named for it alone, so the tests run in parallel.

mod support;

use eventflow::inbox::metrics::{LABEL_EVENT_TYPE, UNHANDLED};
use eventflow::inbox::{ConsumerBuilder, Prebuilt};
use eventflow::store::{InboxStore, PostgresStore, SqliteStore};
use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{
    ConsumerHandle, Error, Event, EventStatus, HandlerResult, InboxConsumer, InboxRow, Router,
    UnknownEvents,
};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::recorder::recorder;
use support::{postgres_url, redis_url, unique_name};
use uuid::Uuid;

const GROUP: &str = "billing";
const WAIT: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize)]
struct OrderCreated {
    order_id: String,
}

#[derive(serde::Deserialize)]
struct OrderCancelled {
    order_id: String,
    reason: String,
}

/// Where the inbox lives and where events come from, with the handler's own table.
trait Backend: Sized {
    type Store: InboxStore;

    /// A fresh inbox, stream and handler table; `None` when the services are not there.
    fn open(test: &str) -> Option<Self>;

    fn store(&self) -> &Arc<Self::Store>;

    /// A builder reading this backend's stream into its store, with quick polls.
    fn builder(&self) -> ConsumerBuilder<Prebuilt<Self::Store>, ()>;

    fn publish(&self, event: &Event);

    /// The handler table's name.
    fn handled_table(&self) -> &str;

    /// Writes one handled row to `table` in the handler's transaction.
    fn write(
        tx: &mut <Self::Store as InboxStore>::Tx<'_>,
        table: &str,
        kind: &str,
        detail: &str,
    ) -> HandlerResult;

    /// Every row the handlers wrote, sorted.
    fn handled(&self) -> Vec<(String, String)>;
}

/// SQLite in memory, fed by the in-process stream.
struct Embedded {
    stream: String,
    handled: String,
    transport: MemoryStream,
    store: Arc<SqliteStore>,
}

impl Backend for Embedded {
    type Store = SqliteStore;

    fn open(_test: &str) -> Option<Self> {
        let handled = unique_name("handled");
        let store = SqliteStore::open_in_memory().unwrap();
        store.with_connection(|conn| {
            conn.execute_batch(&format!(
                "CREATE TABLE {handled} (kind TEXT NOT NULL, detail TEXT NOT NULL)"
            ))
            .unwrap()
        });
        Some(Self {
            stream: unique_name("stream"),
            handled,
            transport: MemoryStream::new(),
            store: Arc::new(store),
        })
    }

    fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    fn builder(&self) -> ConsumerBuilder<Prebuilt<SqliteStore>, ()> {
        InboxConsumer::builder()
            .transport(self.transport.clone())
            .store(self.store.clone())
            .stream(&self.stream)
            .group(GROUP)
            .poll_interval(Duration::from_millis(50))
    }

    fn publish(&self, event: &Event) {
        self.transport
            .publish(&self.stream, event.to_entry_fields())
            .unwrap();
    }

    fn handled_table(&self) -> &str {
        &self.handled
    }

    fn write(
        tx: &mut rusqlite::Transaction<'_>,
        table: &str,
        kind: &str,
        detail: &str,
    ) -> HandlerResult {
        tx.execute(
            &format!("INSERT INTO {table} (kind, detail) VALUES (?1, ?2)"),
            [kind, detail],
        )?;
        Ok(())
    }

    fn handled(&self) -> Vec<(String, String)> {
        self.store.with_connection(|conn| {
            let mut statement = conn
                .prepare(&format!(
                    "SELECT kind, detail FROM {} ORDER BY kind, detail",
                    self.handled
                ))
                .unwrap();
            statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        })
    }
}

/// PostgreSQL, fed by Redis; drops its tables and stream when done.
struct Servers {
    stream: String,
    table: String,
    handled: String,
    redis: RedisStreams,
    store: Arc<PostgresStore>,
}

fn pg() -> postgres::Client {
    postgres::Client::connect(&postgres_url(), postgres::NoTls).unwrap()
}

impl Backend for Servers {
    type Store = PostgresStore;

    fn open(test: &str) -> Option<Self> {
        if !(support::postgres_available(test) && support::redis_available(test)) {
            return None;
        }
        let table = unique_name("inbox");
        let handled = format!("{table}_handled");
        pg().batch_execute(&format!(
            "CREATE TABLE {handled} (kind TEXT NOT NULL, detail TEXT NOT NULL)"
        ))
        .unwrap();
        let store = PostgresStore::builder(postgres_url())
            .table(&table)
            .pool_size(10)
            .build()
            .unwrap();
        Some(Self {
            stream: unique_name("stream"),
            table,
            handled,
            redis: RedisStreams::connect(&redis_url()).unwrap(),
            store: Arc::new(store),
        })
    }

    fn store(&self) -> &Arc<PostgresStore> {
        &self.store
    }

    fn builder(&self) -> ConsumerBuilder<Prebuilt<PostgresStore>, ()> {
        InboxConsumer::builder()
            .redis(redis_url())
            .store(self.store.clone())
            .stream(&self.stream)
            .group(GROUP)
            .block(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(50))
    }

    fn publish(&self, event: &Event) {
        self.redis
            .publish(&self.stream, event.to_entry_fields())
            .unwrap();
    }

    fn handled_table(&self) -> &str {
        &self.handled
    }

    fn write(
        tx: &mut eventflow::store::PgTransaction<'_>,
        table: &str,
        kind: &str,
        detail: &str,
    ) -> HandlerResult {
        tx.execute(
            &format!("INSERT INTO {table} (kind, detail) VALUES ($1, $2)"),
            &[&kind, &detail],
        )?;
        Ok(())
    }

    fn handled(&self) -> Vec<(String, String)> {
        pg().query(
            &format!(
                "SELECT kind, detail FROM {} ORDER BY kind, detail",
                self.handled
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = pg().batch_execute(&format!(
            "DROP TABLE IF EXISTS {0}; DROP TABLE IF EXISTS {1}; DROP TABLE IF EXISTS {1}_quarantine; \
             DELETE FROM eventflow_migrations WHERE target = 'inbox:{1}'",
            self.handled, self.table
        ));
        if let Ok(client) = redis::Client::open(redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&self.stream).query(&mut conn);
            }
        }
    }
}

fn event(event_type: &str, payload: Value) -> Event {
    Event::new(event_type, Uuid::new_v4(), payload)
}

/// Waits until the consumer is idle, stops it, and checks it processed and dead-lettered
/// exactly this many.
fn settle(handle: ConsumerHandle, processed: u64, dead_lettered: u64) {
    handle.wait_idle(WAIT).unwrap();
    let stats = handle.shutdown(WAIT).unwrap().stats;
    assert_eq!(
        (stats.processed, stats.dead_lettered, stats.failed),
        (processed, dead_lettered, 0),
        "{stats:?}"
    );
}

fn row<B: Backend>(backend: &B, event: &Event) -> InboxRow {
    backend
        .store()
        .find_by_event_id(&event.event_id)
        .unwrap()
        .unwrap_or_else(|| panic!("{} is not in the inbox", event.event_id))
}

fn assert_dead_letter<B: Backend>(backend: &B, event: &Event, reason: &str) {
    let row = row(backend, event);
    assert_eq!(row.status, EventStatus::DeadLetter);
    assert_eq!(row.retry_count, 1, "dead-lettered at the first attempt");
    assert_eq!(row.error_message.as_deref(), Some(reason));
}

/// Two typed routes, each event handled by its own; a payload that does not deserialize and an
/// event type with no route are dead letters at once.
fn typed_routes_dispatch_and_refuse_what_they_cannot_handle<B: Backend>(test: &str) {
    let Some(backend) = B::open(test) else { return };
    let created_table = backend.handled_table().to_string();
    let cancelled_table = created_table.clone();
    let handle = backend
        .builder()
        .route_typed("OrderCreated", move |tx, _row, order: OrderCreated| {
            B::write(tx, &created_table, "created", &order.order_id)
        })
        .route_typed("OrderCancelled", move |tx, _row, order: OrderCancelled| {
            let detail = format!("{} ({})", order.order_id, order.reason);
            B::write(tx, &cancelled_table, "cancelled", &detail)
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    for order in ["o-1", "o-2", "o-3"] {
        backend.publish(&event("OrderCreated", json!({ "order_id": order })));
    }
    for order in ["o-4", "o-5"] {
        backend.publish(&event(
            "OrderCancelled",
            json!({ "order_id": order, "reason": "out of stock" }),
        ));
    }
    let bad_payload = event("OrderCreated", json!({ "order_id": 7 }));
    backend.publish(&bad_payload);
    let unknown = event("OrderShipped", json!({ "order_id": "o-1" }));
    backend.publish(&unknown);
    settle(handle, 5, 2);

    assert_eq!(
        backend.handled(),
        rows(&[
            ("cancelled", "o-4 (out of stock)"),
            ("cancelled", "o-5 (out of stock)"),
            ("created", "o-1"),
            ("created", "o-2"),
            ("created", "o-3"),
        ])
    );
    assert_dead_letter(
        &backend,
        &bad_payload,
        &format!(
            "payload of event type OrderCreated is not a {}: invalid type: integer `7`, expected a string",
            std::any::type_name::<OrderCreated>()
        ),
    );
    assert_dead_letter(&backend, &unknown, "no handler for event type OrderShipped");
    let counts = backend.store().count_by_status().unwrap();
    assert_eq!(counts.get(EventStatus::Processed), 5);
    assert_eq!(counts.get(EventStatus::DeadLetter), 2);
}

fn rows(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(kind, detail)| (kind.to_string(), detail.to_string()))
        .collect()
}

/// With `MarkProcessed`, events of a type with no route are processed without a handler and
/// counted in `eventflow_inbox_unhandled_total`.
fn unknown_types_marked_processed_are_counted<B: Backend>(test: &str) {
    let Some(backend) = B::open(test) else { return };
    recorder();
    // The counter's only label is the event type: one no other test publishes.
    let unrouted = unique_name("Shipped");
    let table = backend.handled_table().to_string();
    let handle = backend
        .builder()
        .route_typed("OrderCreated", move |tx, _row, order: OrderCreated| {
            B::write(tx, &table, "created", &order.order_id)
        })
        .unknown_events(UnknownEvents::MarkProcessed)
        .build()
        .unwrap()
        .start()
        .unwrap();

    for order in ["o-1", "o-2"] {
        backend.publish(&event("OrderCreated", json!({ "order_id": order })));
    }
    let unhandled: Vec<Event> = (0..3)
        .map(|_| event(&unrouted, json!({ "order_id": "o-1" })))
        .collect();
    for event in &unhandled {
        backend.publish(event);
    }
    settle(handle, 5, 0);

    assert_eq!(
        backend.handled(),
        rows(&[("created", "o-1"), ("created", "o-2")])
    );
    for event in &unhandled {
        let row = row(&backend, event);
        assert_eq!(row.status, EventStatus::Processed);
        assert_eq!(row.retry_count, 0);
        assert_eq!(row.error_message, None);
    }
    assert_eq!(unhandled_count(&unrouted), 3);
}

#[test]
fn embedded_typed_routes_dispatch_and_refuse_what_they_cannot_handle() {
    typed_routes_dispatch_and_refuse_what_they_cannot_handle::<Embedded>(
        "embedded_typed_routes_dispatch_and_refuse_what_they_cannot_handle",
    );
}

#[test]
fn servers_typed_routes_dispatch_and_refuse_what_they_cannot_handle() {
    typed_routes_dispatch_and_refuse_what_they_cannot_handle::<Servers>(
        "servers_typed_routes_dispatch_and_refuse_what_they_cannot_handle",
    );
}

#[test]
fn embedded_unknown_types_marked_processed_are_counted() {
    unknown_types_marked_processed_are_counted::<Embedded>(
        "embedded_unknown_types_marked_processed_are_counted",
    );
}

#[test]
fn servers_unknown_types_marked_processed_are_counted() {
    unknown_types_marked_processed_are_counted::<Servers>(
        "servers_unknown_types_marked_processed_are_counted",
    );
}

/// A type given two routes is a configuration error, however the routes were registered.
#[test]
fn build_refuses_an_event_type_routed_twice() {
    fn field(result: eventflow::Result<InboxConsumer>) -> &'static str {
        match result {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }
    let builder = || {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .sqlite_in_memory()
            .stream("orders")
            .group(GROUP)
    };
    let twice = builder()
        .route("OrderCreated", |_tx, _row| Ok(()))
        .route("OrderCancelled", |_tx, _row| Ok(()))
        .route_typed::<OrderCreated>("OrderCreated", |_tx, _row, _order| Ok(()))
        .build();
    assert_eq!(field(twice), "route");

    let router = Router::<SqliteStore>::new()
        .on("OrderCreated", |_tx, _row| Ok(()))
        .on("OrderCreated", |_tx, _row| Ok(()));
    assert_eq!(field(builder().router(router).build()), "route");

    let once = builder()
        .route("OrderCreated", |_tx, _row| Ok(()))
        .route("OrderCancelled", |_tx, _row| Ok(()))
        .build();
    assert!(once.is_ok(), "{once:?}");
}

/// `eventflow_inbox_unhandled_total` for `event_type`, checking `event_type` is its only label.
fn unhandled_count(event_type: &str) -> u64 {
    let counters = recorder().counters.lock();
    let (key, count) = counters
        .iter()
        .find(|(key, _)| {
            key.name() == UNHANDLED
                && key
                    .labels()
                    .any(|l| l.key() == LABEL_EVENT_TYPE && l.value() == event_type)
        })
        .unwrap_or_else(|| panic!("no {UNHANDLED} for {event_type}"));
    assert_eq!(key.labels().count(), 1, "{key:?}");
    count.load(Ordering::SeqCst)
}
