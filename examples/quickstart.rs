//! eventflow's main job in one run: events are produced to a stream, stored in the inbox, and
//! handled exactly once by a worker pool, each handler writing in the row's transaction.
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
use eventflow::{ConsumerHandle, Event, HandlerError, HandlerResult, InboxConsumer, InboxRow};
use serde::Deserialize;
use serde_json::json;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

const STREAM: &str = "eventflow-quickstart";
const GROUP: &str = "order-service";
const ORDERS: usize = 10;

#[derive(Deserialize)]
struct OrderCreated {
    order_id: String,
    amount_cents: i64,
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
    let consumer = InboxConsumer::builder().transport(transport.clone());
    let handle = match std::env::var("EVENTFLOW_DATABASE_URL") {
        Ok(url) => {
            println!("inbox: PostgreSQL (EVENTFLOW_DATABASE_URL)");
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(
                "CREATE TABLE IF NOT EXISTS quickstart_orders (order_id TEXT PRIMARY KEY, amount_cents BIGINT)",
            )?;
            consumer
                .postgres(url)
                .stream(STREAM)
                .group(GROUP)
                .handler(|tx, row| -> HandlerResult {
                    let order = parse(row)?;
                    tx.execute(
                        "INSERT INTO quickstart_orders (order_id, amount_cents) VALUES ($1, $2)",
                        &[&order.order_id, &order.amount_cents],
                    )?;
                    announce(row, &order);
                    Ok(())
                })
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
                "CREATE TABLE IF NOT EXISTS quickstart_orders (order_id TEXT PRIMARY KEY, amount_cents INTEGER)",
            )?;
            consumer
                .sqlite(path)
                .stream(STREAM)
                .group(GROUP)
                .handler(|tx, row| -> HandlerResult {
                    let order = parse(row)?;
                    tx.execute(
                        "INSERT INTO quickstart_orders (order_id, amount_cents) VALUES (?1, ?2)",
                        rusqlite::params![order.order_id, order.amount_cents],
                    )?;
                    announce(row, &order);
                    Ok(())
                })
                .build()?
                .start()?
        }
    };
    println!(
        "consumer {} started with 4 workers\n",
        handle.consumer_name()
    );

    produce(transport.as_ref())?;
    wait_for(&handle, ORDERS as u64 + 1)?;

    let report = handle.shutdown(Duration::from_secs(10))?;
    let stats = report.stats;
    println!(
        "\nreceived {} entries: {} events handled, {} duplicate skipped, {} malformed entry quarantined, \
         {} dead-lettered",
        stats.received, stats.processed, stats.duplicates, stats.quarantined, stats.dead_lettered
    );
    println!("each order was written once, in the transaction that marked its event processed.");
    Ok(())
}

/// Ten orders, one of them sent twice, one invalid order, and one entry that is not an event.
fn produce(transport: &dyn Transport) -> Result<(), Box<dyn Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut entries = Vec::new();
    for i in 1..=ORDERS {
        let order = json!({ "order_id": format!("o-{}-{i}", &run[..8]), "amount_cents": 1000 * i });
        let mut event = Event::new("OrderCreated", uuid::Uuid::new_v4(), order);
        event.correlation_id = Some(format!("checkout-{i}"));
        entries.push(event.to_entry_fields());
    }
    entries.push(entries[0].clone()); // a producer retrying its XADD: deduplicated by event_id
    let invalid = Event::new(
        "OrderCreated",
        uuid::Uuid::new_v4(),
        json!({ "order_id": "o-bad" }),
    );
    entries.push(invalid.to_entry_fields()); // no amount: the handler gives up, dead letter
    entries.push(vec![("data".to_string(), b"{this is not json".to_vec())]); // quarantined
    let ids = transport.publish_batch(STREAM, &entries)?;
    println!(
        "produced {} entries to stream {STREAM} ({} .. {})",
        ids.len(),
        ids[0],
        ids[ids.len() - 1]
    );
    Ok(())
}

fn parse(row: &InboxRow) -> Result<OrderCreated, HandlerError> {
    row.event
        .payload_as::<OrderCreated>()
        .map_err(|error| HandlerError::give_up(format!("not an OrderCreated payload: {error}")))
}

fn announce(row: &InboxRow, order: &OrderCreated) {
    println!(
        "handled {} {} for {:>6.2} (event {}, stream entry {})",
        row.event.event_type,
        order.order_id,
        order.amount_cents as f64 / 100.0,
        row.event.event_id,
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
