//! eventflow's main job in one run: events are produced to two streams, stored in one inbox
//! table, routed by event type to typed handlers and handled exactly once by a worker pool, each
//! handler writing in the row's transaction, each order's events in order.
//!
//! With no servers configured it runs on the embedded default: a SQLite file in a new
//! temporary directory, whose path it prints, and the in-process stream. Each run starts
//! afresh, so it can be run again and again. Set `EVENTFLOW_REDIS_URL` and/or
//! `EVENTFLOW_DATABASE_URL` (a PostgreSQL URL) to use the real servers, and
//! `EVENTFLOW_QUICKSTART_STREAM_PREFIX` to name the streams something other than
//! `eventflow-quickstart-orders` and `eventflow-quickstart-customers` (on a shared Redis, say):
//!
//! ```text
//! cargo run --example quickstart
//! EVENTFLOW_REDIS_URL=redis://127.0.0.1:6379 \
//! EVENTFLOW_DATABASE_URL="host=127.0.0.1 user=postgres dbname=test" cargo run --example quickstart
//! EVENTFLOW_QUICKSTART_STREAM_PREFIX=my-try cargo run --example quickstart
//! ```
//!
//! Logs go to stderr, coloured only when stderr is a terminal; `RUST_LOG` sets their level.

use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{Event, HandlerResult, InboxConsumer, InboxRow};
use serde::Deserialize;
use serde_json::json;
use std::error::Error;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// The streams' names start with this unless `EVENTFLOW_QUICKSTART_STREAM_PREFIX` says otherwise.
const DEFAULT_STREAM_PREFIX: &str = "eventflow-quickstart";
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

/// The two streams the example produces to and consumes from.
struct Streams {
    orders: String,
    customers: String,
}

impl Streams {
    fn from_env() -> Result<Self, Box<dyn Error>> {
        let prefix = std::env::var("EVENTFLOW_QUICKSTART_STREAM_PREFIX")
            .unwrap_or_else(|_| DEFAULT_STREAM_PREFIX.to_string());
        if prefix.trim().is_empty() {
            return Err(
                "EVENTFLOW_QUICKSTART_STREAM_PREFIX is empty; unset it or name a prefix".into(),
            );
        }
        Ok(Self {
            orders: format!("{prefix}-orders"),
            customers: format!("{prefix}-customers"),
        })
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("eventflow=info")),
        )
        // Colour codes only for a person watching; a file or a pipe gets plain text.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let streams = Streams::from_env()?;

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
                .streams([&streams.orders, &streams.customers])
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
            // A directory of this run's own: each run starts from an empty inbox, so what it
            // reports is its own doing, and two runs at once never share a file.
            let dir = std::env::temp_dir().join(format!(
                "eventflow-quickstart-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("inbox.db");
            println!(
                "inbox: SQLite file {} (set EVENTFLOW_DATABASE_URL to use PostgreSQL; \
                 the directory is left for you to look at or delete)",
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
                .streams([&streams.orders, &streams.customers])
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

    produce(transport.as_ref(), &streams)?;
    // Everything produced is read, stored and settled: no polling, no sleeping.
    handle.wait_idle(Duration::from_secs(30))?;

    let report = handle.shutdown(Duration::from_secs(10))?;
    let stats = report.stats;
    let settled = (ORDERS + PAID + CUSTOMERS + 2) as u64;
    if stats.processed + stats.dead_lettered != settled || stats.quarantined != 1 {
        return Err(
            format!("expected {settled} events settled and 1 quarantined; got {stats:?}").into(),
        );
    }
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
fn produce(transport: &dyn Transport, streams: &Streams) -> Result<(), Box<dyn Error>> {
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
    let ids = transport.publish_batch(&streams.orders, &entries)?;
    println!(
        "produced {} entries to stream {}",
        ids.len(),
        streams.orders
    );

    let customers: Vec<_> = (1..=CUSTOMERS)
        .map(|i| {
            let email = json!({ "email": format!("c{i}-{}@example.com", &run[..8]) });
            Event::new("CustomerRegistered", uuid::Uuid::new_v4(), email).to_entry_fields()
        })
        .collect();
    let ids = transport.publish_batch(&streams.customers, &customers)?;
    println!(
        "produced {} entries to stream {}",
        ids.len(),
        streams.customers
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
