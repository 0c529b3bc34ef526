//! Failover without loss (issue 11): the outbox relay publishes 20,000 events over 300
//! aggregates to three streams on the three masters of a private Redis Cluster, two consumer
//! processes handle them in per-aggregate order, and midway the master of one stream is
//! SIGKILLed while events are being enqueued, published and read, with its replica a second
//! behind (stopped with SIGSTOP and its replication link cut for that second, the consumers
//! stopped for most of it). The replica
//! takes over; the killed node is started again and rejoins as the new master's replica (the
//! cluster is whole again at the end, and is stopped with the test).
//!
//! With the relay waiting for a replica (`wait_for_replicas`), every committed event must be
//! handled exactly once and in order. The same run without it is a measurement, ignored by
//! default and run by hand for the README's figures:
//!
//! ```text
//! cargo test --all-features --test cluster_failover -- --ignored --nocapture without
//! ```
//!
//! Needs PostgreSQL (the consumers' inbox) and `redis-server` (for the private cluster);
//! skipped with a message without them, failing under `EVENTFLOW_REQUIRE_SERVICES=1`.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::admin::OutboxAdmin;
use eventflow::outbox::{self, OutboxRelay};
use eventflow::store::outbox::{OutboxStore, SqliteOutbox};
use eventflow::transport::partition::partition_streams;
use eventflow::transport::{OutgoingEntry, RedisStreams, ReplicaWait, Transport, TransportError};
use eventflow::{Event, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use serde_json::json;
use support::child::{report_until_killed, ChildProcess};
use support::cluster::{self, PrivateCluster};
use uuid::Uuid;

const EVENTS: usize = 20_000;
const AGGREGATES: usize = 300;
/// Events enqueued per transaction, and the pause between transactions: the 20,000 events take
/// about ten seconds to enqueue, so the kill lands while all three streams are busy.
const PER_TRANSACTION: usize = 100;
const PAUSE: Duration = Duration::from_millis(40);
/// The logical stream, split in three partitions, which a fresh three-master cluster gives to
/// three different masters (checked before the run).
const STREAM: &str = "failover";
const PARTITIONS: u32 = 3;

/// The partitions' streams, in partition order.
fn streams() -> Vec<String> {
    partition_streams(STREAM, PARTITIONS)
}
const GROUP: &str = "failover";

fn setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set for a failover consumer"))
}

/// Not a test: a consumer process of the tests below, run with `--ignored --exact
/// failover_consumer`. It handles events until the test kills it; its handler records each
/// handling in `<table>_handled`, in the handling transaction.
#[test]
#[ignore = "a child process of the failover tests"]
fn failover_consumer() {
    let Ok(url) = std::env::var("EVENTFLOW_FAILOVER_CLUSTER") else {
        return;
    };
    let table = setting("EVENTFLOW_FAILOVER_TABLE");
    let prefix = setting("EVENTFLOW_FAILOVER_PREFIX");
    let insert = format!("INSERT INTO {table}_handled (event_id, process) VALUES ($1, $2)");
    let process = prefix.clone();
    let handle = InboxConsumer::builder()
        .redis(url)
        .postgres(support::postgres_url())
        .table(&table)
        .partitioned_stream(STREAM, PARTITIONS)
        .group(GROUP)
        .consumer_prefix(&prefix)
        .ordered(true)
        .workers(4)
        .block(Duration::from_millis(200))
        // Entries a failover left pending with no one to store them are taken over soon.
        .reclaim_idle(Duration::from_secs(3))
        .reclaim_interval(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .handler(move |tx, row| -> HandlerResult {
            tx.execute(&insert, &[&row.event.event_id, &process])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    report_until_killed(
        &format!("failover consumer {prefix}"),
        Duration::from_secs(2),
        || handle.stats(),
    )
}

/// The PostgreSQL tables and SQLite file of one run, removed when it ends.
struct Cleanup {
    table: String,
    outbox: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut client) = Client::connect(&support::postgres_url(), NoTls) {
            let table = &self.table;
            let _ = client.batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_quarantine;
                 DROP TABLE IF EXISTS {table}_handled;
                 DELETE FROM eventflow_migrations WHERE target = 'inbox:{table}'"
            ));
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.outbox.display()));
        }
    }
}

/// What one run came to.
#[derive(Debug)]
struct Outcome {
    /// Committed events never handled.
    lost: i64,
    /// Handlings beyond the first of an event.
    handled_twice: i64,
    /// Events handled before an earlier event of their aggregate.
    out_of_order: i64,
    /// Entries in the three streams beyond one per event (copies appended again after a short
    /// replica count, or after an outage hid whether an append happened).
    extra_entries: i64,
    /// Rows the relay left unpublished because no replica acknowledged them in time.
    unreplicated: u64,
    /// Published rows whose entries `OutboxAdmin::lost_entries` reports gone from the stream
    /// (lost events, and events a consumer read from the dying master alone).
    reported_lost: usize,
    /// Events lost (never handled) that `lost_entries` does not report: lost silently.
    unreported: usize,
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// The event id of the `seq`th event of aggregate number `aggregate`: `a<aggregate>-<seq>`.
fn event_for(aggregates: &[Uuid], n: usize) -> Event {
    let aggregate = n % AGGREGATES;
    let seq = n / AGGREGATES;
    let mut event = Event::new("Numbered", aggregates[aggregate], json!({ "seq": seq }));
    event.event_id = format!("a{aggregate}-{seq}");
    event
}

/// One run: enqueue, publish and handle 20,000 events while the master of the first stream is
/// SIGKILLed midway; `None` when skipped.
fn failover_run(test: &str, wait_for_replicas: bool) -> Option<Outcome> {
    if !support::postgres_available(test) {
        return None;
    }
    let private = PrivateCluster::start(test)?;
    let url = private.url();
    let mut raw = cluster::raw_cluster_at(&url).unwrap();
    let masters: HashSet<String> = streams()
        .iter()
        .map(|stream| cluster::master_of(&mut raw, stream))
        .collect();
    assert_eq!(masters.len(), streams().len(), "one partition per master");

    let cleanup = Cleanup {
        table: support::unique_name("ef_fo"),
        outbox: std::env::temp_dir().join(format!("{}.db", support::unique_name("ef_fo"))),
    };
    let table = cleanup.table.clone();
    let mut db = Client::connect(&support::postgres_url(), NoTls).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (n BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
         process TEXT NOT NULL)"
    ))
    .unwrap();

    let outbox = SqliteOutbox::open(&cleanup.outbox).unwrap();
    outbox.migrate().unwrap();
    let mut relay = OutboxRelay::builder()
        .store(outbox)
        .redis(&url)
        .partitioned_stream(STREAM, PARTITIONS)
        .workers(2)
        .batch_size(200)
        .poll_interval(Duration::from_millis(50));
    if wait_for_replicas {
        relay = relay.wait_for_replicas(1, Duration::from_secs(1));
    }
    let relay = relay.build().unwrap().start().unwrap();

    let consumers: Vec<ChildProcess> = ["one", "two"]
        .into_iter()
        .map(|prefix| {
            ChildProcess::spawn(
                "failover_consumer",
                &[
                    ("EVENTFLOW_FAILOVER_CLUSTER", url.as_str()),
                    ("EVENTFLOW_FAILOVER_TABLE", table.as_str()),
                    ("EVENTFLOW_FAILOVER_PREFIX", prefix),
                ],
            )
        })
        .collect();

    // The application: events enqueued in its own transactions, a steady stream of them.
    let enqueued = Arc::new(AtomicUsize::new(0));
    let writer = {
        let enqueued = enqueued.clone();
        let path = cleanup.outbox.clone();
        std::thread::spawn(move || {
            let aggregates: Vec<Uuid> = (0..AGGREGATES).map(|_| Uuid::new_v4()).collect();
            let mut conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            for first in (0..EVENTS).step_by(PER_TRANSACTION) {
                let mut tx = conn.transaction().unwrap();
                for n in first..first + PER_TRANSACTION {
                    let event = event_for(&aggregates, n);
                    outbox::enqueue(&mut tx, STREAM, &event).unwrap();
                }
                tx.commit().unwrap();
                enqueued.fetch_add(PER_TRANSACTION, Ordering::SeqCst);
                std::thread::sleep(PAUSE);
            }
        })
    };

    assert!(
        support::wait_until(Duration::from_secs(120), || enqueued.load(Ordering::SeqCst)
            >= EVENTS / 2),
        "half the events enqueued"
    );
    let handled_sql = format!("SELECT count(DISTINCT event_id) FROM {table}_handled");
    // The replica falls behind, as one under load or behind a slow link does: it stalls and
    // its replication link is cut, so what the master takes from then on only the master
    // holds. For a moment the consumers still read it (and the group's state moves on the
    // master alone), then they stall too, and the master takes writes no one has read. Then
    // it dies. (On loopback an unhindered replica is microseconds behind, and a kill would
    // rarely catch a write it has not got.) Each stall is shorter than the cluster's 2 s
    // node timeout, so no node is taken for failed but the master.
    let master = cluster::master_of(&mut raw, &streams()[0]);
    let replica = private.replica_of(&streams()[0]);
    private.signal_node(&replica, "STOP");
    private.cut_replication_of(&master);
    std::thread::sleep(Duration::from_millis(300));
    for consumer in &consumers {
        consumer.signal("STOP");
    }
    std::thread::sleep(Duration::from_millis(800));
    let at_kill = (relay.stats().published, count(&mut db, &handled_sql));
    let killed = private.kill_master_of(&streams()[0]);
    private.signal_node(&replica, "CONT");
    for consumer in &consumers {
        consumer.signal("CONT");
    }
    let promoted = private.wait_for_new_master_of(&streams()[0], &killed);
    assert_eq!(promoted, replica, "the stalled replica took over");
    eprintln!(
        "killed {killed} with {} published and {} handled; {promoted} took over",
        at_kill.0, at_kill.1
    );
    // The cluster made whole again: the killed node rejoins as the new master's replica (until
    // then, the new master has none, and a relay waiting for one publishes nothing to it).
    private.restart_node(&killed);
    writer.join().unwrap();

    assert!(
        support::wait_until(Duration::from_secs(120), || relay.stats().published
            >= EVENTS as u64),
        "every row published: {:?}",
        relay.stats()
    );
    // Every event handled, or nothing more handled for a while (well past `reclaim_idle`).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (count(&mut db, &handled_sql), Instant::now());
    while last.0 < EVENTS as i64 && last.1.elapsed() < Duration::from_secs(20) {
        assert!(Instant::now() < deadline, "still handling after 2 minutes");
        std::thread::sleep(Duration::from_millis(250));
        let now = count(&mut db, &handled_sql);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    // Time for a second handling to show, if there were one.
    std::thread::sleep(Duration::from_secs(2));
    // Nothing is left pending in the group: what the failover left pending on the promoted
    // replica (deliveries and acknowledgements it had or had not received) was taken over and
    // acknowledged.
    let transport = RedisStreams::connect(&url).unwrap();
    let pending = |stream: &str| transport.group_stats(stream, GROUP).unwrap().pending;
    assert!(
        support::wait_until(Duration::from_secs(30), || streams()
            .iter()
            .all(|stream| pending(stream) == 0)),
        "still pending: {:?}",
        streams()
            .iter()
            .map(|stream| pending(stream))
            .collect::<Vec<_>>()
    );
    let stats = relay.shutdown(Duration::from_secs(30)).unwrap().stats;
    drop(consumers);

    let handled = count(&mut db, &format!("SELECT count(*) FROM {table}_handled"));
    let distinct = count(&mut db, &handled_sql);
    let out_of_order = count(
        &mut db,
        &format!(
            "SELECT count(*) FROM (
               SELECT split_part(event_id, '-', 2)::int AS seq,
                      lag(split_part(event_id, '-', 2)::int) OVER (
                        PARTITION BY split_part(event_id, '-', 1) ORDER BY n) AS before
               FROM {table}_handled) h
             WHERE seq < before"
        ),
    );
    // Lost entries do not go unnoticed: the outbox's published rows checked against the streams.
    let handled_ids: HashSet<String> = db
        .query(
            &format!("SELECT DISTINCT event_id FROM {table}_handled"),
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    let admin = OutboxAdmin::new(Arc::new(SqliteOutbox::open(&cleanup.outbox).unwrap()));
    let mut reported = HashSet::new();
    let mut after = None;
    loop {
        let page = admin
            .lost_entries(&transport, &[(STREAM, PARTITIONS)], after, 1_000)
            .unwrap();
        assert_eq!(page.unknown, 0, "every stream can tell");
        reported.extend(page.lost.into_iter().map(|row| row.event.event_id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let unreported = (0..EVENTS)
        .map(|n| format!("a{}-{}", n % AGGREGATES, n / AGGREGATES))
        .filter(|id| !handled_ids.contains(id) && !reported.contains(id))
        .count();

    let mut raw = cluster::raw_cluster_at(&url).unwrap();
    let entries: i64 = streams()
        .iter()
        .map(|stream| {
            redis::cmd("XLEN")
                .arg(stream)
                .query::<i64>(&mut raw)
                .unwrap()
        })
        .sum();
    let outcome = Outcome {
        lost: EVENTS as i64 - distinct,
        handled_twice: handled - distinct,
        out_of_order,
        extra_entries: entries - EVENTS as i64,
        unreplicated: stats.unreplicated,
        reported_lost: reported.len(),
        unreported,
    };
    eprintln!(
        "failover run, wait_for_replicas {}: {EVENTS} events, {} lost, {} handled twice, \
         {} out of order, {} stream entries beyond one per event, {} rows left unpublished \
         for want of a replica, {} rows reported lost by OutboxAdmin::lost_entries, {} lost \
         events not reported; relay {stats:?}",
        if wait_for_replicas { "on" } else { "off" },
        outcome.lost,
        outcome.handled_twice,
        outcome.out_of_order,
        outcome.extra_entries,
        outcome.unreplicated,
        outcome.reported_lost,
        outcome.unreported,
    );
    Some(outcome)
}

/// On the shared cluster (one replica per master): entries for streams on two masters are
/// confirmed when one replica is asked for, each master answering for its own writes, and
/// reported `NotReplicated` (appended all the same) when two are.
#[test]
fn each_master_confirms_its_own_entries_to_as_many_replicas_as_it_has() {
    if !cluster::cluster_available(
        "each_master_confirms_its_own_entries_to_as_many_replicas_as_it_has",
    ) {
        return;
    }
    let first = cluster::names_on_distinct_masters("ef_fo", &[".b"]);
    let streams = [first.clone(), format!("{first}.b")];
    let transport = RedisStreams::connect(&cluster::cluster_url()).unwrap();
    let fields = vec![("event_id".to_string(), b"e".to_vec())];
    let entries: Vec<OutgoingEntry<'_>> = streams
        .iter()
        .flat_map(|stream| {
            [
                OutgoingEntry {
                    stream,
                    fields: &fields,
                },
                OutgoingEntry {
                    stream,
                    fields: &fields,
                },
            ]
        })
        .collect();
    let wait = |replicas| ReplicaWait {
        replicas,
        timeout: Duration::from_millis(200),
    };
    let confirmed = transport
        .publish_entries_replicated(&entries, wait(1))
        .unwrap();
    let short = transport
        .publish_entries_replicated(&entries, wait(2))
        .unwrap();
    let mut raw = cluster::raw_cluster().unwrap();
    let lengths: Vec<i64> = streams
        .iter()
        .map(|stream| redis::cmd("XLEN").arg(stream).query(&mut raw).unwrap())
        .collect();
    cluster::delete_keys(&mut raw, &streams);
    assert!(confirmed.iter().all(Result::is_ok), "{confirmed:?}");
    assert!(
        short.iter().all(|result| matches!(
            result,
            Err(TransportError::NotReplicated {
                wanted: 2,
                acknowledged: 1
            })
        )),
        "{short:?}"
    );
    assert_eq!(lengths, [4, 4], "every entry appended, confirmed or not");
}

#[test]
fn a_master_killed_midway_loses_nothing_when_the_relay_waits_for_a_replica() {
    let Some(outcome) = failover_run(
        "a_master_killed_midway_loses_nothing_when_the_relay_waits_for_a_replica",
        true,
    ) else {
        return;
    };
    assert_eq!(outcome.lost, 0, "{outcome:?}");
    assert_eq!(outcome.handled_twice, 0, "{outcome:?}");
    assert_eq!(outcome.out_of_order, 0, "{outcome:?}");
    assert_eq!(
        outcome.reported_lost, 0,
        "no published row's entry is gone: {outcome:?}"
    );
}

/// The same run with the relay not waiting: what a failover costs then. Events the replica had
/// not received and no consumer had read are lost although their rows say published, and
/// entries a consumer read from the dying master only are stored out of their stream's new
/// order; those figures are printed, not asserted. An event is still never handled twice, and
/// every lost one is among the rows `OutboxAdmin::lost_entries` reports.
#[test]
#[ignore = "a measurement for the README; run it by hand (see the module docs)"]
fn a_master_killed_midway_without_waiting_for_a_replica() {
    let Some(outcome) = failover_run(
        "a_master_killed_midway_without_waiting_for_a_replica",
        false,
    ) else {
        return;
    };
    assert_eq!(outcome.handled_twice, 0, "{outcome:?}");
    assert_eq!(
        outcome.unreported, 0,
        "every lost event is reported: {outcome:?}"
    );
}
