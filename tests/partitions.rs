//! Partitioned streams end to end: a relay splits a logical stream into partitions by each
//! event's aggregate, consumers read every partition, and each aggregate's events are handled
//! once each, in order.
//!
//! On the in-process stream and a single Redis (partitions are plain streams there), and on
//! the Redis Cluster of `EVENTFLOW_REDIS_CLUSTER_URL` with two consumer processes (this test
//! binary run again with an ignored entry-point test, as in `tests/crash.rs`). Tests that need
//! a service skip with a message when it does not answer, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use eventflow::outbox::{self, OutboxRelay, OutboxTable};
use eventflow::store::outbox::{OutboxStore, SqliteOutbox};
use eventflow::transport::partition::{partition_of, partition_stream, partition_streams};
use eventflow::transport::{MemoryStream, ReadRequest, RedisStreams, Transport};
use eventflow::{Error, Event, HandlerResult, InboxConsumer, InboxStore, SqliteStore};
use serde_json::json;
use support::child::{report_until_killed, ChildProcess};
use support::cluster;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const PARTITIONS: u32 = 3;

/// The event numbered `seq` of `aggregate`.
fn numbered(aggregate: Uuid, seq: u32) -> Event {
    let mut event = Event::new("Numbered", aggregate, json!({ "seq": seq }));
    event.event_id = format!("{aggregate}-{seq}");
    event
}

fn config_field(error: Error) -> &'static str {
    match error {
        Error::Config { field, .. } => field,
        other => panic!("not a configuration error: {other}"),
    }
}

#[test]
fn builders_refuse_a_partition_count_out_of_range() {
    let consumer = |partitions| {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .sqlite_in_memory()
            .partitioned_stream("orders", partitions)
            .group("billing")
            .handler(|_tx, _row| -> HandlerResult { Ok(()) })
            .build()
    };
    assert_eq!(config_field(consumer(0).unwrap_err()), "partitioned_stream");
    assert_eq!(
        config_field(consumer(1025).unwrap_err()),
        "partitioned_stream"
    );
    assert!(consumer(1).is_ok() && consumer(3).is_ok());

    let relay = |streams: &[(&str, u32)]| {
        let db = Scratch::new();
        let mut builder = OutboxRelay::builder()
            .store(SqliteOutbox::open(&db.path).unwrap())
            .transport(MemoryStream::new());
        for (stream, partitions) in streams {
            builder = builder.partitioned_stream(*stream, *partitions);
        }
        builder.build().map(drop)
    };
    for bad in [
        &[("orders", 0)][..],
        &[("orders", 3), ("orders", 4)],
        &[("", 3)],
    ] {
        assert_eq!(config_field(relay(bad).unwrap_err()), "partitioned_stream");
    }
    assert!(relay(&[("orders", 3), ("payments", 1)]).is_ok());
}

/// A SQLite file private to one test, removed when it ends.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        Self {
            path: std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_part"))),
        }
    }

    fn connect(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// An ordered consumer reading the partitions of `logical` (`partitions` of them) into an
/// in-memory inbox whose handler records each event, its sequence number and its stream.
fn start_consumer(
    transport: Arc<dyn Transport>,
    logical: &str,
    partitions: u32,
) -> (eventflow::ConsumerHandle, Arc<SqliteStore>) {
    let inbox = Arc::new(SqliteStore::open_in_memory().unwrap());
    inbox.with_connection(|conn| {
        conn.execute_batch(
            "CREATE TABLE handled (id INTEGER PRIMARY KEY, event_id TEXT, aggregate_id TEXT, \
             seq INTEGER, stream TEXT)",
        )
        .unwrap()
    });
    let consumer = InboxConsumer::builder()
        .transport(transport)
        .store(inbox.clone())
        .partitioned_stream(logical, partitions)
        .group("ledger")
        .ordered(true)
        .block(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .handler(|tx, row| -> HandlerResult {
            tx.execute(
                "INSERT INTO handled (event_id, aggregate_id, seq, stream) VALUES (?1, ?2, ?3, ?4)",
                (
                    &row.event.event_id,
                    row.event.aggregate_id.to_string(),
                    row.event.payload["seq"].as_i64(),
                    &row.stream,
                ),
            )?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    (consumer, inbox)
}

fn start_relay(
    transport: Arc<dyn Transport>,
    db: &Scratch,
    logical: &str,
    partitions: u32,
) -> eventflow::RelayHandle {
    let outbox = SqliteOutbox::open(&db.path).unwrap();
    outbox.migrate().unwrap();
    OutboxRelay::builder()
        .store(outbox)
        .transport(transport)
        .partitioned_stream(logical, partitions)
        .workers(2)
        .batch_size(50)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
        .start()
        .unwrap()
}

/// Enqueues events `from..to` of each aggregate, one transaction per aggregate and round.
fn enqueue_rounds(db: &Scratch, logical: &str, aggregates: &[Uuid], from: u32, to: u32) {
    let mut conn = db.connect();
    for seq in from..to {
        for aggregate in aggregates {
            let mut tx = conn.transaction().unwrap();
            outbox::enqueue(&mut tx, logical, &numbered(*aggregate, seq)).unwrap();
            tx.commit().unwrap();
        }
    }
}

/// What the handler recorded: per aggregate, its sequence numbers in handling order and the
/// streams they came from.
fn handled(inbox: &SqliteStore) -> BTreeMap<String, (Vec<u32>, HashSet<String>)> {
    inbox.with_connection(|conn| {
        let mut query = conn
            .prepare("SELECT aggregate_id, seq, stream FROM handled ORDER BY id")
            .unwrap();
        let mut per_aggregate: BTreeMap<String, (Vec<u32>, HashSet<String>)> = BTreeMap::new();
        let rows = query
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
            })
            .unwrap();
        for row in rows {
            let (aggregate, seq, stream) = row.unwrap();
            let entry = per_aggregate.entry(aggregate).or_default();
            entry.0.push(seq);
            entry.1.insert(stream);
        }
        per_aggregate
    })
}

/// Every aggregate's events handled once each, in order, all from the partition its id hashes
/// to; and every partition used.
fn assert_handled_in_order(
    inbox: &SqliteStore,
    logical: &str,
    aggregates: &[Uuid],
    per_aggregate: u32,
) {
    let handled = handled(inbox);
    assert_eq!(handled.len(), aggregates.len());
    let mut used = HashSet::new();
    for aggregate in aggregates {
        let (seqs, streams) = &handled[&aggregate.to_string()];
        assert_eq!(*seqs, (0..per_aggregate).collect::<Vec<_>>(), "{aggregate}");
        let expected = partition_stream(logical, partition_of(aggregate, PARTITIONS));
        assert_eq!(*streams, HashSet::from([expected.clone()]), "{aggregate}");
        used.insert(expected);
    }
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "every partition holds some aggregates"
    );
}

/// Outbox → 3 partitions → one ordered consumer, on `transport`.
fn relay_to_consumer_over(transport: Arc<dyn Transport>, logical: &str) {
    const AGGREGATES: usize = 30;
    const PER_AGGREGATE: u32 = 20;
    let db = Scratch::new();
    let relay = start_relay(transport.clone(), &db, logical, PARTITIONS);
    let (consumer, inbox) = start_consumer(transport.clone(), logical, PARTITIONS);
    let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::new_v4()).collect();
    enqueue_rounds(&db, logical, &aggregates, 0, PER_AGGREGATE);

    let total = AGGREGATES as u64 * u64::from(PER_AGGREGATE);
    assert!(
        support::wait_until(WAIT, || relay.stats().published == total),
        "published {:?}",
        relay.stats()
    );
    consumer.wait_idle(WAIT).unwrap();
    relay.shutdown(WAIT).unwrap();
    consumer.shutdown(WAIT).unwrap();
    assert_handled_in_order(&inbox, logical, &aggregates, PER_AGGREGATE);

    // The partitions hold every event once, nothing is left for the group, and nothing went
    // to the unsplit stream.
    let mut published = Vec::new();
    for stream in partition_streams(logical, PARTITIONS) {
        let stats = transport.group_stats(&stream, "ledger").unwrap();
        assert_eq!((stats.pending, stats.lag), (0, Some(0)), "{stream}");
        published.extend(read_everything(transport.as_ref(), &stream));
    }
    let distinct: HashSet<&String> = published.iter().collect();
    assert_eq!(
        (published.len(), distinct.len()),
        (total as usize, total as usize)
    );
    assert_ne!(
        transport.stream_exists(logical).unwrap(),
        Some(true),
        "{logical} was written"
    );
}

/// The `event_id` of every entry of `stream`, read by a group of its own.
fn read_everything(transport: &dyn Transport, stream: &str) -> Vec<String> {
    transport.ensure_group(stream, "audit").unwrap();
    let entries = transport
        .read_group(&ReadRequest {
            stream,
            group: "audit",
            consumer: "audit",
            count: 100_000,
            block: Duration::ZERO,
        })
        .unwrap();
    entries
        .iter()
        .map(|entry| Event::from_entry(entry).unwrap().event_id)
        .collect()
}

#[test]
fn in_process_stream_partitions_keep_each_aggregates_order() {
    relay_to_consumer_over(Arc::new(MemoryStream::new()), "orders");
}

#[test]
fn single_redis_partitions_keep_each_aggregates_order() {
    if !support::redis_available("single_redis_partitions_keep_each_aggregates_order") {
        return;
    }
    let logical = support::unique_name("ef_part");
    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    relay_to_consumer_over(Arc::new(redis), &logical);
    let mut conn = redis::Client::open(support::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    for stream in partition_streams(&logical, PARTITIONS) {
        let _: i64 = redis::cmd("DEL").arg(stream).query(&mut conn).unwrap();
    }
}

/// Growing from 2 partitions to 3 by the README's procedure keeps each aggregate's order,
/// though some aggregates move to another partition: consumers read the larger count first,
/// the old relay stops and its partitions drain, then the relay with the new count starts.
#[test]
fn growing_the_partition_count_by_the_procedure_keeps_order() {
    const AGGREGATES: usize = 30;
    let transport: Arc<dyn Transport> = Arc::new(MemoryStream::new());
    let db = Scratch::new();
    let (consumer, inbox) = start_consumer(transport.clone(), "orders", 3);
    let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::new_v4()).collect();
    let moved = aggregates
        .iter()
        .filter(|aggregate| partition_of(aggregate, 2) != partition_of(aggregate, 3))
        .count();
    assert!(moved > 0, "some aggregates change partition");

    let old = start_relay(transport.clone(), &db, "orders", 2);
    enqueue_rounds(&db, "orders", &aggregates, 0, 10);
    assert!(support::wait_until(WAIT, || old.stats().published == 300));
    old.shutdown(WAIT).unwrap();
    // The drain: everything the old relay published is stored (lag and pending zero).
    consumer.wait_idle(WAIT).unwrap();
    enqueue_rounds(&db, "orders", &aggregates, 10, 20);
    let new = start_relay(transport.clone(), &db, "orders", 3);
    assert!(support::wait_until(WAIT, || new.stats().published == 300));
    consumer.wait_idle(WAIT).unwrap();
    new.shutdown(WAIT).unwrap();
    consumer.shutdown(WAIT).unwrap();

    for (aggregate, (seqs, streams)) in handled(&inbox) {
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "{aggregate}");
        let id: Uuid = aggregate.parse().unwrap();
        let before = partition_stream("orders", partition_of(&id, 2));
        let after = partition_stream("orders", partition_of(&id, 3));
        assert_eq!(streams, HashSet::from([before, after]), "{aggregate}");
    }
}

const CLUSTER_EVENTS: u32 = 20_000;
const CLUSTER_AGGREGATES: usize = 300;
const CLUSTER_GROUP: &str = "partitioned";

/// Not a test: a consumer process of the cluster test below, which runs it with `--ignored
/// --exact partitioned_consumer_child`. Ordered, reading the three partitions of
/// `EVENTFLOW_PART_STREAM` into the PostgreSQL inbox `EVENTFLOW_PART_TABLE`; its handler
/// records each event with its sequence number, its stream and this process.
#[test]
#[ignore = "a child process of outbox_to_three_cluster_partitions_to_two_processes_handles_every_event_once_in_order"]
fn partitioned_consumer_child() {
    let Ok(logical) = std::env::var("EVENTFLOW_PART_STREAM") else {
        return;
    };
    let table = std::env::var("EVENTFLOW_PART_TABLE").unwrap();
    let process = std::env::var("EVENTFLOW_PART_PROCESS").unwrap();
    let insert = format!(
        "INSERT INTO {table}_handled (event_id, aggregate_id, seq, stream, process) \
         VALUES ($1, $2, $3, $4, $5)"
    );
    let name = process.clone();
    let handle = InboxConsumer::builder()
        .redis(cluster::cluster_url())
        .postgres(support::postgres_url())
        .table(&table)
        .partitioned_stream(&logical, PARTITIONS)
        .group(CLUSTER_GROUP)
        .consumer_prefix(&process)
        .ordered(true)
        .workers(4)
        .read_batch(200)
        .block(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .handler(move |tx, row| -> HandlerResult {
            let seq = row.event.payload["seq"].as_i64().map(|seq| seq as i32);
            tx.execute(
                &insert,
                &[
                    &row.event.event_id,
                    &row.event.aggregate_id,
                    &seq,
                    &row.stream,
                    &name,
                ],
            )?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    report_until_killed(
        &format!("partitioned consumer {process}"),
        Duration::from_secs(2),
        || handle.stats(),
    )
}

/// The PostgreSQL tables and cluster streams of the cluster test, removed when it ends.
struct ClusterScratch {
    table: String,
    streams: Vec<String>,
}

impl Drop for ClusterScratch {
    fn drop(&mut self) {
        if let Ok(mut db) = postgres::Client::connect(&support::postgres_url(), postgres::NoTls) {
            support::drop_inbox_table(&mut db, &self.table, &["handled", "o"]);
            let outbox = format!("outbox:{}_o", self.table);
            let _ = db.execute(
                "DELETE FROM eventflow_migrations WHERE target = $1",
                &[&outbox],
            );
        }
        if let Ok(mut conn) = cluster::raw_cluster() {
            cluster::delete_keys(&mut conn, &self.streams);
        }
    }
}

/// Outbox → Redis Cluster (3 partitions, one on each master) → two consumer processes: 20,000
/// committed events over 300 aggregates (and the events of transactions rolled back, never
/// published), every committed event handled exactly once and each aggregate's in order.
#[test]
fn outbox_to_three_cluster_partitions_to_two_processes_handles_every_event_once_in_order() {
    let test =
        "outbox_to_three_cluster_partitions_to_two_processes_handles_every_event_once_in_order";
    if !cluster::cluster_available(test) || !support::postgres_available(test) {
        return;
    }
    let logical = support::unique_name("efp");
    let scratch = ClusterScratch {
        table: support::unique_name("efp"),
        streams: partition_streams(&logical, PARTITIONS),
    };
    let table = scratch.table.clone();
    let mut raw = cluster::raw_cluster().unwrap();
    let masters: HashSet<String> = scratch
        .streams
        .iter()
        .map(|stream| cluster::master_of(&mut raw, stream))
        .collect();
    assert_eq!(
        masters.len(),
        3,
        "the three partitions live on three masters: {masters:?}"
    );

    let mut db = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (id bigserial PRIMARY KEY, event_id text NOT NULL, \
         aggregate_id uuid NOT NULL, seq int NOT NULL, stream text NOT NULL, process text NOT NULL)"
    ))
    .unwrap();
    let relay = OutboxRelay::builder()
        .postgres(support::postgres_url())
        .redis(cluster::cluster_url())
        .table(format!("{table}_o"))
        .partitioned_stream(&logical, PARTITIONS)
        .workers(2)
        .build()
        .unwrap()
        .start()
        .unwrap();
    let children: Vec<ChildProcess> = ["a", "b"]
        .iter()
        .map(|process| {
            ChildProcess::spawn(
                "partitioned_consumer_child",
                &[
                    ("EVENTFLOW_PART_STREAM", logical.as_str()),
                    ("EVENTFLOW_PART_TABLE", table.as_str()),
                    ("EVENTFLOW_PART_PROCESS", process),
                ],
            )
        })
        .collect();

    // The application: transactions of one aggregate each, 1 to 4 events, one in 23 rolled
    // back (its events never to be published, its numbers used again).
    let outbox_table = OutboxTable::named(format!("{table}_o")).unwrap();
    let aggregates: Vec<Uuid> = (0..CLUSTER_AGGREGATES).map(|_| Uuid::new_v4()).collect();
    let mut next = vec![0u32; CLUSTER_AGGREGATES];
    let (mut committed, mut rolled_back) = (0u32, 0u32);
    let mut round = 0usize;
    while committed < CLUSTER_EVENTS {
        let index = (round * 7) % CLUSTER_AGGREGATES;
        let count = (1 + (round % 4) as u32).min(CLUSTER_EVENTS - committed);
        let events: Vec<Event> = (next[index]..next[index] + count)
            .map(|seq| numbered(aggregates[index], seq))
            .collect();
        let mut tx = db.transaction().unwrap();
        outbox_table
            .enqueue_batch(&mut tx, &logical, &events)
            .unwrap();
        // 23 is prime to the 300 aggregates, so no aggregate has every transaction rolled back.
        if round % 23 == 13 {
            tx.rollback().unwrap();
            rolled_back += count;
        } else {
            tx.commit().unwrap();
            next[index] += count;
            committed += count;
        }
        round += 1;
    }
    assert!(rolled_back > 0);

    let handled_count = |db: &mut postgres::Client| -> i64 {
        db.query_one(&format!("SELECT count(*) FROM {table}_handled"), &[])
            .unwrap()
            .get(0)
    };
    let patience = Duration::from_secs(600);
    assert!(
        support::wait_until(patience, || handled_count(&mut db)
            >= i64::from(CLUSTER_EVENTS)),
        "handled {} of {CLUSTER_EVENTS}; relay {:?}",
        handled_count(&mut db),
        relay.stats()
    );
    // Anything handled twice would show by now: the relay has published everything and the
    // groups hold nothing pending or unread.
    let transport = RedisStreams::connect(&cluster::cluster_url()).unwrap();
    for stream in &scratch.streams {
        assert!(
            support::wait_until(WAIT, || {
                let stats = transport.group_stats(stream, CLUSTER_GROUP).unwrap();
                stats.pending == 0 && stats.lag == Some(0)
            }),
            "{stream}: {:?}",
            transport.group_stats(stream, CLUSTER_GROUP)
        );
    }
    relay.shutdown(WAIT).unwrap();
    drop(children);

    let (rows, distinct): (i64, i64) = {
        let row = db
            .query_one(
                &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}_handled"),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (rows, distinct),
        (i64::from(CLUSTER_EVENTS), i64::from(CLUSTER_EVENTS)),
        "every committed event handled exactly once"
    );
    // Each aggregate: exactly its committed numbers, in order, from its own partition.
    let mut per_aggregate: BTreeMap<Uuid, (Vec<u32>, HashSet<String>)> = BTreeMap::new();
    let mut processes = HashSet::new();
    for row in db
        .query(
            &format!("SELECT aggregate_id, seq, stream, process FROM {table}_handled ORDER BY id"),
            &[],
        )
        .unwrap()
    {
        let entry = per_aggregate.entry(row.get(0)).or_default();
        entry.0.push(row.get::<_, i32>(1) as u32);
        entry.1.insert(row.get(2));
        processes.insert(row.get::<_, String>(3));
    }
    for (index, aggregate) in aggregates.iter().enumerate() {
        assert!(next[index] > 0, "{aggregate} committed events");
        let (seqs, streams) = per_aggregate.remove(aggregate).unwrap_or_default();
        assert_eq!(
            seqs,
            (0..next[index]).collect::<Vec<_>>(),
            "{aggregate} in order"
        );
        let expected = partition_stream(&logical, partition_of(aggregate, PARTITIONS));
        assert_eq!(streams, HashSet::from([expected]), "{aggregate}");
    }
    assert!(per_aggregate.is_empty(), "no event of another aggregate");
    assert_eq!(processes.len(), 2, "both processes handled events");
    let per_partition: Vec<usize> = scratch
        .streams
        .iter()
        .map(|stream| {
            aggregates
                .iter()
                .filter(|aggregate| {
                    partition_stream(&logical, partition_of(aggregate, PARTITIONS)) == *stream
                })
                .count()
        })
        .collect();
    assert!(per_partition.iter().all(|&n| n > 0), "{per_partition:?}");
}

/// `eventflow status --partitions orders=3` shows each partition's pending entries and lag,
/// or which of stream and group is missing, in text and JSON.
#[test]
fn status_shows_each_partitions_lag() {
    if !support::redis_available("status_shows_each_partitions_lag") {
        return;
    }
    let db = Scratch::new();
    SqliteStore::open(&db.path).unwrap().migrate().unwrap();
    let logical = support::unique_name("ef_part");
    let partitions = partition_streams(&logical, PARTITIONS);
    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    // Partition 0 read to the end, partition 1 with two entries unread, partition 2 never
    // written.
    redis.ensure_group(&partitions[0], "billing").unwrap();
    redis.ensure_group(&partitions[1], "billing").unwrap();
    for n in 0..2 {
        let event = numbered(Uuid::new_v4(), n);
        redis
            .publish(&partitions[1], event.to_entry_fields())
            .unwrap();
    }

    let database_url = format!("sqlite://{}", db.path.display());
    let split = format!("{logical}={PARTITIONS}");
    let status = |json: bool| {
        let mut args = vec!["status", "--group", "billing", "--partitions", &split];
        if json {
            args.insert(0, "--json");
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .env_remove("EVENTFLOW_STREAM")
            .env_remove("EVENTFLOW_PARTITIONS")
            .env("EVENTFLOW_DATABASE_URL", &database_url)
            .env("EVENTFLOW_REDIS_URL", support::redis_url())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let parsed: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let streams = parsed["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3, "{parsed}");
    for (partition, stream) in streams.iter().enumerate() {
        assert_eq!(stream["stream"], partitions[partition].as_str());
        assert_eq!(stream["partition_of"], logical.as_str());
        assert_eq!(stream["partition"], partition);
    }
    assert_eq!(
        (&streams[0]["pending"], &streams[0]["lag"]),
        (&json!(0), &json!(0))
    );
    assert_eq!(
        (&streams[1]["pending"], &streams[1]["lag"]),
        (&json!(0), &json!(2))
    );
    assert_eq!(streams[2]["missing"], "stream");

    let text = status(false);
    for (partition, stream) in partitions.iter().enumerate() {
        assert!(
            text.contains(&format!("stream: {stream}, group billing")),
            "{text}"
        );
        assert!(
            text.contains(&format!("partition {partition} of {logical}")),
            "{text}"
        );
    }
    assert!(
        text.contains("lag (not yet delivered)                2"),
        "{text}"
    );

    let mut conn = redis::Client::open(support::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    for stream in &partitions {
        let _: i64 = redis::cmd("DEL").arg(stream).query(&mut conn).unwrap();
    }
}

/// `eventflow publish --stream orders --partitions orders=3` sends the event where the relay
/// would: to its aggregate's partition.
#[test]
fn the_command_publishes_to_the_aggregates_partition() {
    if !support::redis_available("the_command_publishes_to_the_aggregates_partition") {
        return;
    }
    let logical = support::unique_name("ef_part");
    let aggregate = Uuid::new_v4();
    let expected = partition_stream(&logical, partition_of(&aggregate, PARTITIONS));
    let event = json!({"event_type": "OrderCreated", "aggregate_id": aggregate, "payload": {}});
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .env_remove("EVENTFLOW_DATABASE_URL")
        .env("EVENTFLOW_REDIS_URL", support::redis_url())
        .env("EVENTFLOW_STREAM", &logical)
        .env("EVENTFLOW_PARTITIONS", format!("{logical}={PARTITIONS}"))
        .args(["--json", "publish", &event.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(said["stream"], expected.as_str(), "{said}");
    assert_eq!(said["partition_of"], logical.as_str(), "{said}");
    assert_eq!(
        said["partition"],
        partition_of(&aggregate, PARTITIONS),
        "{said}"
    );

    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    let published = read_everything(&redis, &expected);
    assert_eq!(
        published,
        vec![said["event_id"].as_str().unwrap().to_string()]
    );
    assert_ne!(redis.stream_exists(&logical).unwrap(), Some(true));
    let mut conn = redis::Client::open(support::redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("DEL").arg(&expected).query(&mut conn).unwrap();
}
