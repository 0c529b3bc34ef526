//! The transactional outbox in one run: an order service writes each order and its
//! `OrderPlaced` event in one transaction, a relay publishes the committed events to a stream,
//! and a shipping service handles them through its inbox. An order whose transaction rolls back
//! leaves no event behind: it is never published, never shipped.
//!
//! With no servers configured it runs on the embedded default: SQLite files in a temporary
//! directory and the in-process stream. Set `EVENTFLOW_DATABASE_URL` (a PostgreSQL URL) and/or
//! `EVENTFLOW_REDIS_URL` to use the real servers:
//!
//! ```text
//! cargo run --example outbox
//! EVENTFLOW_REDIS_URL=redis://127.0.0.1:6379 \
//! EVENTFLOW_DATABASE_URL="host=127.0.0.1 user=postgres dbname=test" cargo run --example outbox
//! ```

use eventflow::outbox::{self, OutboxRelay};
use eventflow::store::outbox::OutboxStore;
use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{ConsumerHandle, Event, HandlerError, HandlerResult, InboxRow, RelayHandle};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;
use uuid::Uuid;

const STREAM: &str = "eventflow-example-orders";
const GROUP: &str = "shipping";
const INBOX_TABLE: &str = "shipping_inbox";

#[derive(Serialize, Deserialize)]
struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    total_cents: i64,
}

/// A service's database connection: the order service's, or the shipping service's.
enum Db {
    Postgres(postgres::Client),
    Sqlite(rusqlite::Connection),
}

impl Db {
    /// Writes the order and its `OrderPlaced` event in one transaction, then commits it or, when
    /// `commit` is false (the payment was declined, say), rolls it back.
    fn place_order(&mut self, order: &OrderPlaced, commit: bool) -> Result<Event, Box<dyn Error>> {
        let event = Event::new("OrderPlaced", order.order_id, json!(order));
        match self {
            Db::Postgres(client) => {
                let mut tx = client.transaction()?;
                tx.execute(
                    "INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3)",
                    &[&order.order_id, &order.customer, &order.total_cents],
                )?;
                outbox::enqueue(&mut tx, STREAM, &event)?;
                if commit {
                    tx.commit()?;
                } else {
                    tx.rollback()?;
                }
            }
            Db::Sqlite(conn) => {
                let mut tx = conn.transaction()?;
                tx.execute(
                    "INSERT INTO orders (id, customer, total_cents) VALUES (?1, ?2, ?3)",
                    rusqlite::params![
                        order.order_id.to_string(),
                        order.customer,
                        order.total_cents
                    ],
                )?;
                outbox::enqueue(&mut tx, STREAM, &event)?;
                if commit {
                    tx.commit()?;
                } else {
                    tx.rollback()?;
                }
            }
        }
        Ok(event)
    }

    /// Whether `table` has a row whose `column` is `id`.
    fn has(&mut self, table: &str, column: &str, id: Uuid) -> Result<bool, Box<dyn Error>> {
        Ok(match self {
            Db::Postgres(client) => client
                .query_opt(
                    &format!("SELECT 1 FROM {table} WHERE {column} = $1"),
                    &[&id],
                )?
                .is_some(),
            Db::Sqlite(conn) => conn
                .prepare(&format!("SELECT 1 FROM {table} WHERE {column} = ?1"))?
                .exists([id.to_string()])?,
        })
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("eventflow=warn")),
        )
        .init();

    let transport: Arc<dyn Transport> = match std::env::var("EVENTFLOW_REDIS_URL") {
        Ok(url) => {
            println!("stream: Redis (EVENTFLOW_REDIS_URL)");
            Arc::new(RedisStreams::connect(&url)?)
        }
        Err(_) => {
            println!("stream: in-process (set EVENTFLOW_REDIS_URL to use Redis)");
            Arc::new(MemoryStream::new())
        }
    };
    let temp_dir = std::env::temp_dir().join(format!("eventflow-outbox-{}", std::process::id()));
    let relay = OutboxRelay::builder()
        .transport(transport.clone())
        .workers(2);
    let consumer = eventflow::InboxConsumer::builder()
        .transport(transport.clone())
        .stream(STREAM)
        .group(GROUP)
        .table(INBOX_TABLE)
        .workers(2);

    let (mut orders, mut shipments, relay, shipping) = match std::env::var("EVENTFLOW_DATABASE_URL")
    {
        Ok(url) => {
            println!("databases: PostgreSQL (EVENTFLOW_DATABASE_URL)");
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS orders (
                     id UUID PRIMARY KEY, customer TEXT NOT NULL, total_cents BIGINT NOT NULL);
                 CREATE TABLE IF NOT EXISTS shipments (
                     order_id UUID PRIMARY KEY, customer TEXT NOT NULL);",
            )?;
            let relay = relay.postgres(url.clone()).build()?;
            let shipping = consumer
                .postgres(url.clone())
                .handler(|tx, row| -> HandlerResult {
                    let order = parse(row)?;
                    tx.execute(
                        "INSERT INTO shipments (order_id, customer) VALUES ($1, $2)",
                        &[&order.order_id, &order.customer],
                    )?;
                    announce(row, &order);
                    Ok(())
                })
                .build()?;
            let shipping_client = postgres::Client::connect(&url, postgres::NoTls)?;
            (
                Db::Postgres(client),
                Db::Postgres(shipping_client),
                relay,
                shipping,
            )
        }
        Err(_) => {
            std::fs::create_dir_all(&temp_dir)?;
            let orders_db = temp_dir.join("orders.db");
            let shipping_db = temp_dir.join("shipping.db");
            println!(
                "databases: SQLite files in {} (set EVENTFLOW_DATABASE_URL to use PostgreSQL)",
                temp_dir.display()
            );
            let conn = rusqlite::Connection::open(&orders_db)?;
            // The relay writes to the same file; wait for its lock instead of failing.
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS orders (
                     id TEXT PRIMARY KEY, customer TEXT NOT NULL, total_cents INTEGER NOT NULL);",
            )?;
            let shipping_conn = rusqlite::Connection::open(&shipping_db)?;
            shipping_conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS shipments (
                     order_id TEXT PRIMARY KEY, customer TEXT NOT NULL);",
            )?;
            let relay = relay.sqlite(&orders_db).build()?;
            let shipping = consumer
                .sqlite(&shipping_db)
                .handler(|tx, row| -> HandlerResult {
                    let order = parse(row)?;
                    tx.execute(
                        "INSERT INTO shipments (order_id, customer) VALUES (?1, ?2)",
                        rusqlite::params![order.order_id.to_string(), order.customer],
                    )?;
                    announce(row, &order);
                    Ok(())
                })
                .build()?;
            (Db::Sqlite(conn), Db::Sqlite(shipping_conn), relay, shipping)
        }
    };
    // Kept to look rows up once the relay owns the store.
    let outbox_store = relay.store().clone();
    let relay = relay.start()?; // creates the outbox table, then publishes
    let shipping = shipping.start()?;
    println!("relay and shipping consumer started\n");

    let placed = [("ada", 4_250), ("grace", 1_999), ("linus", 12_000)];
    let mut committed = Vec::new();
    for (customer, total_cents) in placed {
        let order = OrderPlaced {
            order_id: Uuid::new_v4(),
            customer: customer.to_string(),
            total_cents,
        };
        let event = orders.place_order(&order, true)?;
        println!(
            "order service: order {} for {customer} committed with event {}",
            order.order_id, event.event_id
        );
        committed.push((order.order_id, event));
    }
    let declined = OrderPlaced {
        order_id: Uuid::new_v4(),
        customer: "mallory".to_string(),
        total_cents: 99_999,
    };
    let declined_event = orders.place_order(&declined, false)?;
    println!(
        "order service: order {} for mallory rolled back (payment declined), with its event {}",
        declined.order_id, declined_event.event_id
    );

    wait_for(&relay, &shipping, committed.len() as u64)?;
    println!();
    for (order_id, event) in &committed {
        let row = outbox_store
            .find_by_event_id(&event.event_id)?
            .pop()
            .ok_or("a committed event is missing from the outbox")?;
        println!(
            "outbox: event {} {} as stream entry {}; order {order_id} shipped: {}",
            event.event_id,
            row.status.as_str(),
            row.stream_entry_id.as_deref().unwrap_or("-"),
            shipments.has("shipments", "order_id", *order_id)?
        );
    }
    let declined_rows = outbox_store.find_by_event_id(&declined_event.event_id)?;
    println!(
        "rolled back: order {} stored: {}, outbox rows: {}, shipped: {}",
        declined.order_id,
        orders.has("orders", "id", declined.order_id)?,
        declined_rows.len(),
        shipments.has("shipments", "order_id", declined.order_id)?
    );
    if !declined_rows.is_empty() || shipments.has("shipments", "order_id", declined.order_id)? {
        return Err("the rolled-back order's event escaped its transaction".into());
    }

    let relay_stats = relay.shutdown(Duration::from_secs(10))?.stats;
    let shipping_stats = shipping.shutdown(Duration::from_secs(10))?.stats;
    println!(
        "\nrelay: {} events published in {} batch(es); shipping: {} received, {} handled, \
         {} duplicates skipped",
        relay_stats.published,
        relay_stats.batches,
        shipping_stats.received,
        shipping_stats.processed,
        shipping_stats.duplicates
    );
    println!(
        "each order and its event were committed together; the declined order left nothing \
         to publish."
    );
    let _ = std::fs::remove_dir_all(&temp_dir);
    Ok(())
}

fn parse(row: &InboxRow) -> Result<OrderPlaced, HandlerError> {
    row.event
        .payload_as::<OrderPlaced>()
        .map_err(|error| HandlerError::give_up(format!("not an OrderPlaced payload: {error}")))
}

fn announce(row: &InboxRow, order: &OrderPlaced) {
    println!(
        "shipping: shipment scheduled for order {} ({}, {:.2}) from event {} at stream entry {}",
        order.order_id,
        order.customer,
        order.total_cents as f64 / 100.0,
        row.event.event_id,
        row.stream_id
    );
}

/// Waits until the relay has published and shipping has handled `orders` events.
fn wait_for(
    relay: &RelayHandle,
    shipping: &ConsumerHandle,
    orders: u64,
) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.stats().published < orders || shipping.stats().processed < orders {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out: relay {:?}, shipping {:?}",
                relay.stats(),
                shipping.stats()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
