//! Event headers end to end: set on an event enqueued in the outbox, published by the real relay,
//! carried by the stream, kept on the inbox row the handler sees, on a dead letter, and through
//! the quarantine and its replay; an entry over the headers' bounds is quarantined, naming them.
//!
//! The SQLite test uses the in-process stream and always runs; the PostgreSQL + Redis test needs
//! both servers (skipped with a message when they are missing, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`).

mod support;

use chrono::Utc;
use eventflow::outbox::{OutboxRelay, OutboxTable};
use eventflow::quarantine;
use eventflow::store::outbox::{OutboxStore, PostgresOutbox, SqliteOutbox};
use eventflow::transport::{MemoryStream, RedisStreams, StreamEntry, Transport};
use eventflow::{
    ConsumerHandle, Event, EventStatus, HandlerError, HandlerResult, Headers, InboxConsumer,
    InboxStore, PostgresStore, SqliteStore,
};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// An event with headers, one of which needs JSON escaping, and one without any.
fn events() -> (Event, Event) {
    let with = Event::new("OrderPlaced", Uuid::new_v4(), json!({"n": 1}))
        .with_header("traceparent", TRACEPARENT)
        .with_header("tenant", "ünï \"quoted\"")
        .with_header("empty", "");
    let without = Event::new("OrderPlaced", Uuid::new_v4(), json!({"n": 2}));
    (with, without)
}

/// Each event id the handler saw, with the headers it saw.
type Seen = Arc<Mutex<HashMap<String, Headers>>>;

/// The handler: records what it saw; gives up on events whose payload says `"fail": true`.
fn recording(seen: &Seen) -> impl Fn(&Event) -> HandlerResult + Send + Sync + 'static {
    let seen = seen.clone();
    move |event| {
        seen.lock()
            .insert(event.event_id.clone(), event.headers.clone());
        if event.payload["fail"] == json!(true) {
            return Err(HandlerError::give_up("told to fail"));
        }
        Ok(())
    }
}

fn wait_for(handle: &ConsumerHandle, what: &str, done: impl Fn(&eventflow::ConsumerStats) -> bool) {
    assert!(
        support::wait_until(WAIT, || done(&handle.stats())),
        "{what}: {:?}",
        handle.stats()
    );
}

/// A SQLite database file private to one test, removed when the test ends.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[test]
fn headers_travel_from_the_sqlite_outbox_through_the_stream_to_the_sqlite_inbox() {
    let stream = "orders";
    let db = TempDb(std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_hd"))));
    let outbox = SqliteOutbox::open(&db.0).unwrap();
    outbox.migrate().unwrap();
    let broker = MemoryStream::new();
    let relay = OutboxRelay::builder()
        .store(outbox)
        .transport(broker.clone())
        .build()
        .unwrap()
        .start()
        .unwrap();
    let inbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    let seen = Seen::default();
    let handler = recording(&seen);
    let consumer = InboxConsumer::builder()
        .transport(broker.clone())
        .store(inbox.clone())
        .stream(stream)
        .group("hd")
        .handler(move |_tx, row| handler(&row.event))
        .build()
        .unwrap()
        .start()
        .unwrap();

    let (with, without) = events();
    let doomed = Event::new("OrderPlaced", Uuid::new_v4(), json!({"fail": true}))
        .with_header("tenant", "acme");
    let mut conn = rusqlite::Connection::open(&db.0).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut tx = conn.transaction().unwrap();
    let batch = [with.clone(), without.clone(), doomed.clone()];
    eventflow::outbox::enqueue_batch(&mut tx, stream, &batch).unwrap();
    tx.commit().unwrap();

    // In the outbox table: a JSON object, or null when there are none.
    let columns: Vec<Option<String>> = conn
        .prepare("SELECT headers FROM event_outbox ORDER BY id")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(columns[1], None, "no headers, a null column");
    let stored: Value = serde_json::from_str(columns[0].as_deref().unwrap()).unwrap();
    assert_eq!(stored["tenant"], "ünï \"quoted\"");

    wait_for(&consumer, "two processed, one dead letter", |s| {
        s.processed == 2 && s.dead_lettered == 1
    });
    relay.shutdown(WAIT).unwrap();
    assert_eq!(
        seen.lock()[&with.event_id],
        with.headers,
        "the handler saw them"
    );
    assert!(seen.lock()[&without.event_id].is_empty());
    for event in [&with, &without] {
        let row = inbox.find_by_event_id(&event.event_id).unwrap().unwrap();
        assert_eq!(
            row.event, *event,
            "the inbox row keeps the event, headers included"
        );
    }
    let dead = inbox.find_by_event_id(&doomed.event_id).unwrap().unwrap();
    assert_eq!(dead.status, EventStatus::DeadLetter);
    assert_eq!(
        dead.event.headers, doomed.headers,
        "a dead letter keeps its headers"
    );
    let null_column: Option<String> = inbox.with_connection(|conn| {
        conn.query_row(
            "SELECT headers FROM event_inbox WHERE event_id = ?1",
            [&without.event_id],
            |row| row.get(0),
        )
        .unwrap()
    });
    assert_eq!(null_column, None);

    // Over the bounds: quarantined with a reason naming them; replayed with the headers fixed,
    // the event keeps the headers it was replayed with.
    let too_many: serde_json::Map<String, Value> =
        (0..65).map(|n| (format!("h{n}"), json!("v"))).collect();
    let mut crowded = with.to_json();
    crowded["event_id"] = json!(format!("crowded-{}", Uuid::new_v4()));
    crowded["headers"] = Value::Object(too_many);
    broker
        .publish(
            stream,
            vec![("data".to_string(), crowded.to_string().into_bytes())],
        )
        .unwrap();
    wait_for(&consumer, "quarantined", |s| s.quarantined == 1);
    let kept = inbox.list_quarantined(10, 0).unwrap();
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0].reason.contains("headers") && kept[0].reason.contains("65 headers, at most 64"),
        "{}",
        kept[0].reason
    );
    crowded["headers"] = json!({"tenant": "fixed"});
    let corrected = StreamEntry::from_text_fields(
        "0-0",
        [("data".to_string(), crowded.to_string().into_bytes())],
    )
    .fields;
    let replayed = quarantine::replay(&*inbox, kept[0].id, Some(corrected), 3, Utc::now()).unwrap();
    wait_for(&consumer, "the replayed event processed", |s| {
        s.processed == 3
    });
    assert_eq!(seen.lock()[&replayed]["tenant"], "fixed");
    let row = inbox.find_by_event_id(&replayed).unwrap().unwrap();
    assert_eq!(row.event.headers.len(), 1);
    consumer.shutdown(WAIT).unwrap();
}

#[test]
fn headers_travel_from_the_postgres_outbox_through_redis_to_the_postgres_inbox() {
    let test = "headers_travel_from_the_postgres_outbox_through_redis_to_the_postgres_inbox";
    if !support::postgres_available(test) || !support::redis_available(test) {
        return;
    }
    let outbox_table = support::unique_name("ef_hd_out");
    let inbox_table = support::unique_name("ef_hd_in");
    let stream = support::unique_name("ef_hd");
    let _cleanup = Cleanup {
        outbox: outbox_table.clone(),
        inbox: inbox_table.clone(),
        stream: stream.clone(),
    };
    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    let relay = OutboxRelay::builder()
        .postgres(support::postgres_url())
        .table(&outbox_table)
        .transport(redis.clone())
        .build()
        .unwrap()
        .start()
        .unwrap();
    let inbox = Arc::new(
        PostgresStore::builder(support::postgres_url())
            .table(&inbox_table)
            .pool_size(4)
            .build()
            .unwrap(),
    );
    let seen = Seen::default();
    let handler = recording(&seen);
    let consumer = InboxConsumer::builder()
        .transport(redis.clone())
        .store(inbox.clone())
        .stream(&stream)
        .group(&inbox_table)
        .readers(1)
        .workers(2)
        .handler(move |_tx, row| handler(&row.event))
        .build()
        .unwrap()
        .start()
        .unwrap();

    let (with, without) = events();
    let doomed = Event::new("OrderPlaced", Uuid::new_v4(), json!({"fail": true}))
        .with_header("tenant", "acme");
    let outbox = OutboxTable::named(&outbox_table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let mut tx = client.transaction().unwrap();
    outbox
        .enqueue_batch(
            &mut tx,
            &stream,
            &[with.clone(), without.clone(), doomed.clone()],
        )
        .unwrap();
    tx.commit().unwrap();

    // The outbox column: jsonb, null when there are none.
    let rows = client
        .query(
            &format!("SELECT headers FROM {outbox_table} ORDER BY id"),
            &[],
        )
        .unwrap();
    let columns: Vec<Option<Value>> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(columns[0].as_ref().unwrap()["traceparent"], TRACEPARENT);
    assert_eq!(columns[1], None);
    let store = PostgresOutbox::builder(support::postgres_url())
        .table(&outbox_table)
        .build()
        .unwrap();
    assert_eq!(
        store.find_by_event_id(&with.event_id).unwrap()[0].event,
        with,
        "the outbox row reads back with its headers"
    );

    wait_for(&consumer, "two processed, one dead letter", |s| {
        s.processed == 2 && s.dead_lettered == 1
    });
    relay.shutdown(WAIT).unwrap();
    consumer.shutdown(WAIT).unwrap();

    // On Redis: one `data` field whose object has `headers` only when there are some.
    let mut redis_conn = redis::Client::open(support::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut redis_conn)
        .unwrap();
    let data: Vec<Value> = entries
        .iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "{fields:?}");
            serde_json::from_str(&fields[0].1).unwrap()
        })
        .collect();
    assert_eq!(data[0]["headers"]["tenant"], "ünï \"quoted\"");
    assert!(data[1].get("headers").is_none(), "{}", data[1]);

    assert_eq!(seen.lock()[&with.event_id], with.headers);
    for event in [&with, &without] {
        let row = inbox.find_by_event_id(&event.event_id).unwrap().unwrap();
        assert_eq!(
            row.event, *event,
            "the inbox row keeps the event, headers included"
        );
    }
    let dead = inbox.find_by_event_id(&doomed.event_id).unwrap().unwrap();
    assert_eq!(dead.status, EventStatus::DeadLetter);
    assert_eq!(
        dead.event.headers, doomed.headers,
        "a dead letter keeps its headers"
    );
    let null_column: Option<Value> = client
        .query_one(
            &format!("SELECT headers FROM {inbox_table} WHERE event_id = $1"),
            &[&without.event_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(null_column, None);
}

struct Cleanup {
    outbox: String,
    inbox: String,
    stream: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut db) = postgres::Client::connect(&support::postgres_url(), postgres::NoTls) {
            support::drop_inbox_table(&mut db, &self.inbox, &[]);
            let _ = db.batch_execute(&format!(
                "DROP TABLE IF EXISTS {0}; \
                 DELETE FROM eventflow_migrations WHERE target = 'outbox:{0}'",
                self.outbox
            ));
        }
        if let Ok(client) = redis::Client::open(support::redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _ = redis::cmd("DEL").arg(&self.stream).query::<i64>(&mut conn);
            }
        }
    }
}
