//! eventflow on a Redis Cluster end to end: the outbox relay publishes to two streams that live
//! on different masters, a consumer reads both, and every event is handled once; the
//! `eventflow` command publishes to the cluster from `EVENTFLOW_REDIS_URL`.
//!
//! Needs the cluster of `EVENTFLOW_REDIS_CLUSTER_URL` (`.ci/redis-cluster start` makes the
//! local default); skipped with a message when it does not answer, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`. The transport conformance suite runs on the cluster too
//! (`tests/transport_conformance.rs`, `redis_cluster::*`).

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use eventflow::outbox::{self, OutboxRelay};
use eventflow::store::outbox::{OutboxStore, SqliteOutbox};
use eventflow::transport::{ReadRequest, RedisStreams, Transport, TransportError};
use eventflow::{Event, HandlerResult, InboxConsumer, SqliteStore};
use serde_json::json;
use support::cluster;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A SQLite file and two cluster streams private to one test, removed when it ends.
struct Scratch {
    db: PathBuf,
    streams: Vec<String>,
}

impl Scratch {
    /// Two streams on different masters.
    fn new() -> Self {
        let first = cluster::names_on_distinct_masters("ef_cl", &[".b"]);
        Self {
            db: std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_cl"))),
            streams: vec![first.clone(), format!("{first}.b")],
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
        if let Ok(mut conn) = cluster::raw_cluster() {
            cluster::delete_keys(&mut conn, &self.streams);
        }
    }
}

#[test]
fn relay_and_consumer_on_two_masters_handle_every_event_once() {
    if !cluster::cluster_available("relay_and_consumer_on_two_masters_handle_every_event_once") {
        return;
    }
    let scratch = Scratch::new();
    let mut raw = cluster::raw_cluster().unwrap();
    assert_ne!(
        cluster::master_of(&mut raw, &scratch.streams[0]),
        cluster::master_of(&mut raw, &scratch.streams[1]),
        "the two streams live on different masters"
    );

    // The application's side: events for both streams, enqueued in its own transactions.
    let outbox = SqliteOutbox::open(&scratch.db).unwrap();
    outbox.migrate().unwrap();
    let mut conn = rusqlite::Connection::open(&scratch.db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    const PER_STREAM: usize = 60;
    for n in 0..PER_STREAM {
        let mut tx = conn.transaction().unwrap();
        for stream in &scratch.streams {
            let mut event = Event::new("Numbered", Uuid::new_v4(), json!({ "n": n }));
            event.event_id = format!("{stream}-{n}");
            outbox::enqueue(&mut tx, stream, &event).unwrap();
        }
        tx.commit().unwrap();
    }

    let relay = OutboxRelay::builder()
        .store(outbox)
        .redis(cluster::cluster_url())
        .workers(2)
        .batch_size(25)
        .build()
        .unwrap()
        .start()
        .unwrap();

    // The consumer's side: an inbox whose handler records what it handled, with no key, so a
    // second handling of an event would show as a second row.
    let inbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    inbox.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE handled (event_id TEXT, stream TEXT)")
            .unwrap()
    });
    let consumer = InboxConsumer::builder()
        .redis(cluster::cluster_url())
        .store(inbox.clone())
        .streams(scratch.streams.clone())
        .group("shipping")
        .readers(2)
        .block(Duration::from_millis(200))
        .handler(|tx, row| -> HandlerResult {
            tx.execute(
                "INSERT INTO handled VALUES (?1, ?2)",
                (&row.event.event_id, &row.stream),
            )?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    let total = (PER_STREAM * scratch.streams.len()) as u64;
    assert!(
        support::wait_until(WAIT, || relay.stats().published == total),
        "published {:?}",
        relay.stats()
    );
    assert!(
        support::wait_until(WAIT, || consumer.stats().processed == total),
        "processed {:?}",
        consumer.stats()
    );
    relay.shutdown(WAIT).unwrap();
    consumer.shutdown(WAIT).unwrap();

    let handled: Vec<(String, String)> = inbox.with_connection(|c| {
        let mut query = c.prepare("SELECT event_id, stream FROM handled").unwrap();
        let rows = query
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    });
    assert_eq!(handled.len() as u64, total, "each event handled once");
    let mut per_stream: HashMap<&str, usize> = HashMap::new();
    for (event_id, stream) in &handled {
        assert!(
            event_id.starts_with(&format!("{stream}-")),
            "{event_id} on {stream}"
        );
        *per_stream.entry(stream.as_str()).or_default() += 1;
    }
    for stream in &scratch.streams {
        assert_eq!(
            per_stream.get(stream.as_str()),
            Some(&PER_STREAM),
            "{stream}"
        );
        let len: u64 = redis::cmd("XLEN").arg(stream).query(&mut raw).unwrap();
        assert_eq!(len, PER_STREAM as u64, "{stream} holds each event once");
    }
}

fn eventflow(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .env_remove("EVENTFLOW_DATABASE_URL")
        .env_remove("EVENTFLOW_REDIS_URL")
        .env_remove("EVENTFLOW_STREAM")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("eventflow runs")
}

#[test]
fn the_command_publishes_to_streams_on_different_masters() {
    if !cluster::cluster_available("the_command_publishes_to_streams_on_different_masters") {
        return;
    }
    let scratch = Scratch::new();
    let url = cluster::cluster_url();
    for stream in &scratch.streams {
        let event = json!({
            "event_id": format!("{stream}-cli"),
            "event_type": "OrderCreated",
            "aggregate_id": Uuid::new_v4(),
            "payload": {},
        })
        .to_string();
        let out = eventflow(
            &[("EVENTFLOW_REDIS_URL", &url), ("EVENTFLOW_STREAM", stream)],
            &["--json", "publish", &event],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entry_id = said["entry_id"].as_str().unwrap().to_string();

        // What the command wrote is on the stream, read back through the transport.
        let redis = RedisStreams::connect(&url).unwrap();
        redis.ensure_group(stream, "audit").unwrap();
        let entries = redis
            .read_group(&ReadRequest {
                stream,
                group: "audit",
                consumer: "audit",
                count: 10,
                block: Duration::ZERO,
            })
            .unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].id, entry_id);
    }
}

#[test]
fn a_bad_cluster_url_is_a_usage_error_that_shows_no_password() {
    let event =
        json!({"event_type": "X", "aggregate_id": Uuid::new_v4(), "payload": {}}).to_string();
    for (url, expected) in [
        ("redis+cluster://:hunter2@", "seed nodes"),
        (
            "redis+cluster://:hunter2@127.0.0.1:7000/3",
            "only database 0",
        ),
    ] {
        let out = eventflow(
            &[("EVENTFLOW_REDIS_URL", url), ("EVENTFLOW_STREAM", "s")],
            &["publish", &event],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(expected), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
    }
}

/// A master is SIGKILLed: calls fail as [`TransportError::Unavailable`] (what readers and the
/// relay back off on) until its replica takes over, and then the same transport finds the new
/// master by itself, with the stream, its group and its entries intact.
#[test]
fn after_a_master_is_killed_the_transport_finds_its_replica() {
    let Some(private) =
        cluster::PrivateCluster::start("after_a_master_is_killed_the_transport_finds_its_replica")
    else {
        return;
    };
    let transport = RedisStreams::builder(private.url())
        .pool_size(4)
        .connect_timeout(Duration::from_secs(1))
        .io_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let stream = "orders";
    let fields = |n: usize| vec![("n".to_string(), n.to_string().into_bytes())];
    transport.ensure_group(stream, "shipping").unwrap();
    let before = transport
        .publish_batch(stream, &(0..10).map(fields).collect::<Vec<_>>())
        .unwrap();
    private.wait_for_replica_of(stream);

    let killed = private.kill_master_of(stream);
    let deadline = std::time::Instant::now() + WAIT;
    let mut outages = 0;
    let after = loop {
        match transport.publish(stream, fields(10)) {
            Ok(id) => break id,
            Err(TransportError::Unavailable(_)) => {
                outages += 1;
                assert!(
                    std::time::Instant::now() < deadline,
                    "still unavailable after {WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(other) => panic!("a failover is an outage, not {other:?}"),
        }
    };
    let promoted = private.wait_for_new_master_of(stream, &killed);
    assert_ne!(promoted, killed);
    assert!(outages > 0, "the killed master was noticed");

    let entries = transport
        .read_group(&ReadRequest {
            stream,
            group: "shipping",
            consumer: "c1",
            count: 100,
            block: Duration::ZERO,
        })
        .unwrap();
    let mut expected = before;
    expected.push(after);
    assert_eq!(
        entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        expected
    );
}

/// The consumer and the relay ride out a failover: events enqueued after the master of their
/// stream is SIGKILLed are published once its replica takes over, and every event, before and
/// after, is handled once. (Writes are quiet at the moment of the kill, and the replica has
/// caught up: what an asynchronous replica had not yet received is lost in a failover, and
/// that is not what this checks.)
#[test]
fn relay_and_consumer_carry_on_after_a_master_is_killed() {
    let Some(private) =
        cluster::PrivateCluster::start("relay_and_consumer_carry_on_after_a_master_is_killed")
    else {
        return;
    };
    let db = std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_cl")));
    let _db_cleanup = Scratch {
        db: db.clone(),
        streams: Vec::new(),
    };
    let stream = "payments";
    let outbox = SqliteOutbox::open(&db).unwrap();
    outbox.migrate().unwrap();
    let mut conn = rusqlite::Connection::open(&db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut enqueue = |from: usize, to: usize| {
        let mut tx = conn.transaction().unwrap();
        for n in from..to {
            let mut event = Event::new("Paid", Uuid::new_v4(), json!({ "n": n }));
            event.event_id = format!("paid-{n}");
            outbox::enqueue(&mut tx, stream, &event).unwrap();
        }
        tx.commit().unwrap();
    };

    let relay = OutboxRelay::builder()
        .store(outbox)
        .redis(private.url())
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let inbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    inbox.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE handled (event_id TEXT)")
            .unwrap()
    });
    let consumer = InboxConsumer::builder()
        .redis(private.url())
        .store(inbox.clone())
        .stream(stream)
        .group("ledger")
        .block(Duration::from_millis(200))
        .handler(|tx, row| -> HandlerResult {
            tx.execute("INSERT INTO handled VALUES (?1)", [&row.event.event_id])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    enqueue(0, 20);
    assert!(support::wait_until(WAIT, || consumer.stats().processed == 20));
    private.wait_for_replica_of(stream);
    let killed = private.kill_master_of(stream);
    enqueue(20, 40);
    private.wait_for_new_master_of(stream, &killed);
    assert!(
        support::wait_until(WAIT, || relay.stats().published == 40),
        "published {:?}",
        relay.stats()
    );
    assert!(
        support::wait_until(WAIT, || consumer.stats().processed == 40),
        "processed {:?}",
        consumer.stats()
    );
    relay.shutdown(WAIT).unwrap();
    consumer.shutdown(WAIT).unwrap();

    let (rows, distinct): (i64, i64) = inbox.with_connection(|c| {
        c.query_row(
            "SELECT count(*), count(DISTINCT event_id) FROM handled",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    });
    assert_eq!((rows, distinct), (40, 40), "each event handled once");
}
