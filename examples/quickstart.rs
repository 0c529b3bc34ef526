//! eventflow's main job in one run: events are produced to two streams, stored in one inbox
//! table, routed by event type to typed handlers and handled exactly once by a worker pool, each
//! handler writing in the row's transaction, each order's events in order.
//!
//! With no servers configured it runs on the embedded default: a SQLite file and the in-process
//! stream. Set `EVENTFLOW_REDIS_URL` and/or `EVENTFLOW_DATABASE_URL` (a PostgreSQL URL) to use
//! the real servers:
//!
//! ```text
//! cargo run --example quickstart
//! EVENTFLOW_REDIS_URL=redis://127.0.0.1:6379 \
//! EVENTFLOW_DATABASE_URL="host=127.0.0.1 user=postgres dbname=test" cargo run --example quickstart
//! ```

use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{ConsumerHandle, Event, HandlerResult, InboxConsumer, InboxRow};
use serde::Deserialize;
use serde_json::json;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

const ORDERS_STREAM: &str = "eventflow-quickstart-orders";
const CUSTOMERS_STREAM: &str = "eventflow-quickstart-customers";
const GROUP: &str = "order-service";
const ORDERS: usize = 10;
const PAID: usize = 5;
const CUSTOMERS: usize = 3;

#[derive(Deserialize)]
struct OrderCreated {
    order_id: String,
    amount_cents: i64,
}

#[derive(Deserialize)]
struct OrderPaid {
    order_id: String,
}

#[derive(Deserialize)]
struct CustomerRegistered {
    email: String,
}

fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("eventflow=info")),
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
    // Two streams into one inbox table, a handler per event type, and each order's events
    // handled one at a time, in order (an order is paid only after it is created).
    let consumer = InboxConsumer::builder().transport(transport.clone());
    let handle = match std::env::var("EVENTFLOW_DATABASE_URL") {
        Ok(url) => {
            println!("inbox: PostgreSQL (EVENTFLOW_DATABASE_URL)");
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS quickstart_orders \
                 (order_id TEXT PRIMARY KEY, amount_cents BIGINT, paid BOOLEAN NOT NULL DEFAULT false); \
                 CREATE TABLE IF NOT EXISTS quickstart_customers (email TEXT PRIMARY KEY)",
            )?;
            consumer
                .postgres(url)
                .streams([ORDERS_STREAM, CUSTOMERS_STREAM])
                .group(GROUP)
                .ordered(true)
                .route_typed("OrderCreated", |tx, row, order: OrderCreated| -> HandlerResult {
                    tx.execute(
                        "INSERT INTO quickstart_orders (order_id, amount_cents) VALUES ($1, $2)",
                        &[&order.order_id, &order.amount_cents],
                    )?;
                    announce(row, &order.order_id);
                    Ok(())
                })
                .route_typed("OrderPaid", |tx, row, paid: OrderPaid| -> HandlerResult {
                    let updated = tx.execute(
                        "UPDATE quickstart_orders SET paid = true WHERE order_id = $1",
                        &[&paid.order_id],
                    )?;
                    if updated != 1 {
                        return Err(format!("order {} does not exist", paid.order_id).into());
                    }
                    announce(row, &paid.order_id);
                    Ok(())
                })
                .route_typed(
                    "CustomerRegistered",
                    |tx, row, customer: CustomerRegistered| -> HandlerResult {
                        tx.execute(
                            "INSERT INTO quickstart_customers (email) VALUES ($1) ON CONFLICT DO NOTHING",
                            &[&customer.email],
                        )?;
                        announce(row, &customer.email);
                        Ok(())
                    },
                )
                .build()?
                .start()?
        }
        Err(_) => {
            let path = std::env::var("EVENTFLOW_SQLITE_PATH")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir().join("eventflow-quickstart.db"));
            println!(
                "inbox: SQLite file {} (set EVENTFLOW_DATABASE_URL to use PostgreSQL)",
                path.display()
            );
            let db = rusqlite::Connection::open(&path)?;
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS quickstart_orders \
                 (order_id TEXT PRIMARY KEY, amount_cents INTEGER, paid INTEGER NOT NULL DEFAULT 0); \
                 CREATE TABLE IF NOT EXISTS quickstart_customers (email TEXT PRIMARY KEY)",
            )?;
            consumer
                .sqlite(path)
                .streams([ORDERS_STREAM, CUSTOMERS_STREAM])
                .group(GROUP)
                .ordered(true)
                .route_typed("OrderCreated", |tx, row, order: OrderCreated| -> HandlerResult {
                    tx.execute(
                        "INSERT INTO quickstart_orders (order_id, amount_cents) VALUES (?1, ?2)",
                        rusqlite::params![order.order_id, order.amount_cents],
                    )?;
                    announce(row, &order.order_id);
                    Ok(())
                })
                .route_typed("OrderPaid", |tx, row, paid: OrderPaid| -> HandlerResult {
                    let updated = tx.execute(
                        "UPDATE quickstart_orders SET paid = 1 WHERE order_id = ?1",
                        [&paid.order_id],
                    )?;
                    if updated != 1 {
                        return Err(format!("order {} does not exist", paid.order_id).into());
                    }
                    announce(row, &paid.order_id);
                    Ok(())
                })
                .route_typed(
                    "CustomerRegistered",
                    |tx, row, customer: CustomerRegistered| -> HandlerResult {
                        tx.execute(
                            "INSERT INTO quickstart_customers (email) VALUES (?1) ON CONFLICT DO NOTHING",
                            [&customer.email],
                        )?;
                        announce(row, &customer.email);
                        Ok(())
                    },
                )
                .build()?
                .start()?
        }
    };
    println!(
        "consumer {} started with 4 workers, ordered per aggregate\n",
        handle.consumer_name()
    );

    produce(transport.as_ref())?;
    wait_for(&handle, (ORDERS + PAID + CUSTOMERS + 2) as u64)?;

    let report = handle.shutdown(Duration::from_secs(10))?;
    let stats = report.stats;
    println!(
        "\nreceived {} entries: {} events handled, {} duplicate skipped, {} malformed entry quarantined, \
         {} dead-lettered (a payload that is not an OrderCreated, and a type with no route)",
        stats.received, stats.processed, stats.duplicates, stats.quarantined, stats.dead_lettered
    );
    println!(
        "each event was handled once, in the transaction that marked it processed; each order's \
         payment after its creation."
    );
    Ok(())
}

/// Orders (one sent twice, one invalid, one of a type nobody routes) and payments on one
/// stream, an entry that is not an event, and customers on another stream.
fn produce(transport: &dyn Transport) -> Result<(), Box<dyn Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let orders: Vec<(String, uuid::Uuid)> = (1..=ORDERS)
        .map(|i| (format!("o-{}-{i}", &run[..8]), uuid::Uuid::new_v4()))
        .collect();
    let mut entries = Vec::new();
    for (i, (order_id, aggregate)) in orders.iter().enumerate() {
        let payload = json!({ "order_id": order_id, "amount_cents": 1000 * (i + 1) });
        let mut event = Event::new("OrderCreated", *aggregate, payload);
        event.correlation_id = Some(format!("checkout-{i}"));
        entries.push(event.to_entry_fields());
    }
    for (order_id, aggregate) in &orders[..PAID] {
        let paid = Event::new("OrderPaid", *aggregate, json!({ "order_id": order_id }));
        entries.push(paid.to_entry_fields());
    }
    entries.push(entries[0].clone()); // a producer retrying its XADD: deduplicated by event_id
    let invalid = json!({ "order_id": "o-bad" }); // no amount: not an OrderCreated, dead letter
    entries.push(Event::new("OrderCreated", uuid::Uuid::new_v4(), invalid).to_entry_fields());
    let unrouted = Event::new("OrderGiftWrapped", uuid::Uuid::new_v4(), json!({}));
    entries.push(unrouted.to_entry_fields()); // no route: dead letter, never silently dropped
    entries.push(vec![("data".to_string(), b"{this is not json".to_vec())]); // quarantined
    let ids = transport.publish_batch(ORDERS_STREAM, &entries)?;
    println!("produced {} entries to stream {ORDERS_STREAM}", ids.len());

    let customers: Vec<_> = (1..=CUSTOMERS)
        .map(|i| {
            let email = json!({ "email": format!("c{i}-{}@example.com", &run[..8]) });
            Event::new("CustomerRegistered", uuid::Uuid::new_v4(), email).to_entry_fields()
        })
        .collect();
    let ids = transport.publish_batch(CUSTOMERS_STREAM, &customers)?;
    println!(
        "produced {} entries to stream {CUSTOMERS_STREAM}",
        ids.len()
    );
    Ok(())
}

fn announce(row: &InboxRow, subject: &str) {
    println!(
        "handled {:<18} {subject} (stream {}, entry {})",
        row.event.event_type,
        row.stream.as_deref().unwrap_or("?"),
        row.stream_id
    );
}

fn wait_for(handle: &ConsumerHandle, settled: u64) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = handle.stats();
        if stats.processed + stats.dead_lettered >= settled && stats.quarantined >= 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for events; so far {stats:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
