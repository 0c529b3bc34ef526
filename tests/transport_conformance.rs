//! The transport conformance suite: what every [`Transport`] must do, written once.
//!
//! Each check is a function generic over the transport. The `conformance!` list at the bottom
//! runs all of them against `MemoryStream` always, against `RedisStreams` when Redis answers
//! (`EVENTFLOW_TEST_REDIS_URL`), and against `RedisStreams` on a Redis Cluster when one answers
//! (`EVENTFLOW_REDIS_CLUSTER_URL`, started by `.ci/redis-cluster start`); a missing server
//! skips with a message, or fails under `EVENTFLOW_REQUIRE_SERVICES=1`. On the cluster each
//! check's stream and its second stream (`<stream>.b`) live on different masters. Every test
//! works on its own streams, so they run in parallel. The lag checks expect Redis 7 or later,
//! which reports lag.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use eventflow::transport::{
    FoundEntries, MemoryStream, OutgoingEntry, ReadRequest, ReclaimRequest, RedisStreams,
    StreamEntry, Transport, TransportError,
};

const GROUP: &str = "workers";

/// Reclaim threshold: short so tests stay quick, long enough that an entry read just before a
/// reclaim call is certainly younger than it, even on a loaded machine.
const MIN_IDLE: Duration = Duration::from_millis(100);
/// How long tests sleep to make entries stale: just past [`MIN_IDLE`].
const STALE_AFTER: Duration = Duration::from_millis(150);

/// What the suite needs beyond [`Transport`]: losing a group the way a Redis restart without
/// persistence, or an operator's `XGROUP DESTROY`, loses it.
trait Harness: Transport {
    fn lose_group(&self, stream: &str, group: &str);
}

impl Harness for MemoryStream {
    fn lose_group(&self, stream: &str, group: &str) {
        assert!(
            self.destroy_group(stream, group),
            "group to destroy existed"
        );
    }
}

impl Harness for RedisStreams {
    fn lose_group(&self, stream: &str, group: &str) {
        let destroyed: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream)
            .arg(group)
            .query(&mut raw_redis())
            .expect("XGROUP DESTROY");
        assert_eq!(destroyed, 1, "group to destroy existed");
    }
}

/// The cluster runs hand the transport over in an `Arc` (itself a [`Transport`]), which tells
/// their harness to reach the streams through the cluster.
impl Harness for Arc<RedisStreams> {
    fn lose_group(&self, stream: &str, group: &str) {
        let destroyed: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(stream)
            .arg(group)
            .query(&mut support::cluster::raw_cluster().expect("raw cluster connection"))
            .expect("XGROUP DESTROY");
        assert_eq!(destroyed, 1, "group to destroy existed");
    }
}

fn raw_redis() -> redis::Connection {
    redis::Client::open(support::redis_url())
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
        .expect("raw Redis connection")
}

fn fields(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_vec()))
        .collect()
}

fn read<T: Transport>(
    t: &T,
    stream: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> Vec<StreamEntry> {
    t.read_group(&ReadRequest {
        stream,
        group: GROUP,
        consumer,
        count,
        block,
    })
    .expect("read_group")
}

fn reclaim<T: Transport>(
    t: &T,
    stream: &str,
    consumer: &str,
    min_idle: Duration,
    cursor: &str,
    count: usize,
) -> eventflow::transport::Reclaimed {
    t.reclaim_stale(&ReclaimRequest {
        stream,
        group: GROUP,
        consumer,
        min_idle,
        cursor,
        count,
    })
    .expect("reclaim_stale")
}

fn ids(entries: &[StreamEntry]) -> Vec<String> {
    entries.iter().map(|entry| entry.id.clone()).collect()
}

fn id_order(id: &str) -> (u64, u64) {
    let (millis, seq) = id.split_once('-').expect("id is <millis>-<seq>");
    (millis.parse().unwrap(), seq.parse().unwrap())
}

fn pending<T: Transport>(t: &T, stream: &str) -> u64 {
    t.group_stats(stream, GROUP).expect("group_stats").pending
}

fn publish_numbered<T: Transport>(t: &T, stream: &str, count: usize) -> Vec<String> {
    let batch: Vec<_> = (0..count)
        .map(|n| fields(&[("n", n.to_string().as_bytes())]))
        .collect();
    t.publish_batch(stream, &batch).expect("publish_batch")
}

fn assert_no_group(result: Result<impl std::fmt::Debug, TransportError>, stream: &str) {
    match result {
        Err(TransportError::NoGroup {
            stream: got_stream,
            group,
        }) => {
            assert_eq!(got_stream, stream);
            assert_eq!(group, GROUP);
        }
        other => panic!("expected NoGroup, got {other:?}"),
    }
}

fn group_creation_is_idempotent<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    t.ensure_group(stream, GROUP).unwrap();
    let stats = t.group_stats(stream, GROUP).unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.lag, Some(0));

    // Creating it again must not reset where the group stands.
    publish_numbered(t, stream, 2);
    assert_eq!(read(t, stream, "c1", 1, Duration::ZERO).len(), 1);
    t.ensure_group(stream, GROUP).unwrap();
    let rest = read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(rest.len(), 1, "only the undelivered entry is left");
    assert_eq!(rest[0].field("n"), Some(&b"1"[..]));
    assert_eq!(pending(t, stream), 2);
}

/// A group created after an id reads only the entries after it (ids compared as numbers), on a
/// stream that exists or not; creating an existing group with another id does not move it.
fn a_group_created_after_an_id_reads_only_later_entries<T: Harness>(t: &T, stream: &str) {
    let published = publish_numbered(t, stream, 12);
    // The tenth entry: its id compares after the second's as a number, whatever the text says.
    t.create_group(stream, GROUP, &published[9]).unwrap();
    let read_now = read(t, stream, "c1", 100, Duration::ZERO);
    assert_eq!(ids(&read_now), published[10..].to_vec());
    t.create_group(stream, GROUP, "0").unwrap();
    assert_eq!(
        read(t, stream, "c1", 100, Duration::ZERO),
        vec![],
        "not moved back"
    );

    // Lost and created again after the newest entry anyone stored: only what comes next.
    t.lose_group(stream, GROUP);
    t.create_group(stream, GROUP, &published[11]).unwrap();
    assert_eq!(read(t, stream, "c1", 100, Duration::ZERO), vec![]);
    let later = publish_numbered(t, stream, 2);
    assert_eq!(ids(&read(t, stream, "c1", 100, Duration::ZERO)), later);

    // A stream that does not exist yet is created, its group after the given id.
    let fresh = format!("{stream}.b");
    t.create_group(&fresh, GROUP, "5-0").unwrap();
    let written = t
        .publish_batch(&fresh, &[fields(&[("n", b"0")]), fields(&[("n", b"1")])])
        .expect("publish_batch");
    assert!(
        written.iter().all(|id| id_order(id) > (5, 0)),
        "{written:?}"
    );
    assert_eq!(ids(&read(t, &fresh, "c1", 100, Duration::ZERO)), written);
}

fn read_returns_entries_in_order_with_fields_intact<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = vec![
        fields(&[("type", b"order.created"), ("payload", b"{\"id\":1}")]),
        fields(&[("payload", b"\xff\xfe\x00not utf-8\x80")]),
        fields(&[("a", b""), ("b", b"2"), ("a", b"3")]),
    ];
    let published_ids = t.publish_batch(stream, &published).unwrap();

    let first = read(t, stream, "c1", 2, Duration::ZERO);
    let rest = read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(first.len(), 2, "count limits a read");
    let got: Vec<_> = first.into_iter().chain(rest).collect();
    assert_eq!(ids(&got), published_ids);
    let got_fields: Vec<_> = got.iter().map(|entry| entry.fields.clone()).collect();
    let published_raw: Vec<Vec<(Vec<u8>, Vec<u8>)>> = published
        .iter()
        .map(|entry| {
            entry
                .iter()
                .map(|(name, value)| (name.clone().into_bytes(), value.clone()))
                .collect()
        })
        .collect();
    assert_eq!(
        got_fields, published_raw,
        "names, raw bytes and order survive"
    );
    assert_eq!(
        got[1].field("payload"),
        Some(&b"\xff\xfe\x00not utf-8\x80"[..])
    );
    assert_eq!(
        got[2].field("a"),
        Some(&b""[..]),
        "field() finds the first of a repeated name"
    );
}

fn empty_read_waits_about_block_and_returns_nothing<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();

    let started = Instant::now();
    assert!(read(t, stream, "c1", 10, Duration::ZERO).is_empty());
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "zero block returns at once"
    );

    let block = Duration::from_millis(300);
    let started = Instant::now();
    assert!(read(t, stream, "c1", 10, block).is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "returned after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "returned after {waited:?}");
}

fn publish_wakes_a_blocked_read<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let started = Instant::now();
    let got = thread::scope(|scope| {
        let reader = scope.spawn(|| read(t, stream, "c1", 10, Duration::from_secs(10)));
        // Give the reader time to block first; the wake-up is what is being tested.
        thread::sleep(Duration::from_millis(200));
        t.publish(stream, fields(&[("k", b"v")])).unwrap();
        reader.join().unwrap()
    });
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].field("k"), Some(&b"v"[..]));
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "woke after {waited:?}");
}

fn delivered_entries_are_not_delivered_again<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let first_ids = publish_numbered(t, stream, 2);
    assert_eq!(ids(&read(t, stream, "c1", 10, Duration::ZERO)), first_ids);
    assert!(read(t, stream, "c1", 10, Duration::ZERO).is_empty());
    assert!(
        read(t, stream, "c2", 10, Duration::ZERO).is_empty(),
        "other consumers neither"
    );

    let later = t.publish(stream, fields(&[("n", b"2")])).unwrap();
    assert_eq!(ids(&read(t, stream, "c2", 10, Duration::ZERO)), vec![later]);
    assert_eq!(pending(t, stream), 3, "unacknowledged entries stay pending");
}

fn concurrent_readers_split_entries_without_overlap<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 60);
    let per_reader: Vec<Vec<String>> = thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|n| {
                scope.spawn(move || {
                    let consumer = format!("c{n}");
                    let mut got = Vec::new();
                    loop {
                        let batch = read(t, stream, &consumer, 4, Duration::ZERO);
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(ids(&batch));
                    }
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let all: Vec<String> = per_reader.into_iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(
        all.len(),
        published.len(),
        "every entry delivered exactly once"
    );
    assert_eq!(unique, published.iter().collect::<HashSet<_>>());
}

fn ack_removes_from_pending_and_counts<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 3);
    read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(pending(t, stream), 3);

    assert_eq!(t.ack(stream, GROUP, &[]).unwrap(), 0);
    let never_delivered = "1-1".to_string();
    let acked = t
        .ack(
            stream,
            GROUP,
            &[published[0].clone(), published[1].clone(), never_delivered],
        )
        .unwrap();
    assert_eq!(acked, 2, "only pending ids count");
    assert_eq!(pending(t, stream), 1);
    assert_eq!(
        t.ack(stream, GROUP, &published[..2]).unwrap(),
        0,
        "acking twice counts nothing"
    );
    assert_eq!(t.ack(stream, GROUP, &published[2..]).unwrap(), 1);
    assert_eq!(pending(t, stream), 0);

    // Acknowledged entries are done: nothing is left to reclaim.
    thread::sleep(STALE_AFTER);
    let reclaimed = reclaim(t, stream, "c2", MIN_IDLE, "0-0", 10);
    assert!(reclaimed.entries.is_empty() && reclaimed.deleted.is_empty());
}

fn reclaim_takes_only_stale_entries_and_walks_the_cursor<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 3);
    let stale = read(t, stream, "c1", 2, Duration::ZERO);
    thread::sleep(STALE_AFTER);
    let fresh = read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(ids(&fresh), published[2..]);

    let taken = reclaim(t, stream, "c2", MIN_IDLE, "0-0", 10);
    assert_eq!(
        taken.entries, stale,
        "stale entries come back with their fields"
    );
    assert!(taken.deleted.is_empty());
    assert_eq!(
        taken.next_cursor, "0-0",
        "the whole pending list was walked"
    );

    // Taking an entry over restarts its idle time, so a second reclaimer finds nothing.
    let again = reclaim(t, stream, "c3", MIN_IDLE, "0-0", 10);
    assert!(again.entries.is_empty(), "{again:?}");
    assert_eq!(pending(t, stream), 3, "reclaimed entries stay pending");

    // One entry per call: the cursor points at the next pending id, then back to the start.
    thread::sleep(STALE_AFTER);
    let mut cursor = "0-0".to_string();
    let mut walked = Vec::new();
    for expected_next in [published[1].as_str(), published[2].as_str(), "0-0"] {
        let step = reclaim(t, stream, "c3", MIN_IDLE, &cursor, 1);
        assert_eq!(step.entries.len(), 1, "{step:?}");
        assert_eq!(step.next_cursor, expected_next);
        walked.extend(ids(&step.entries));
        cursor = step.next_cursor;
    }
    assert_eq!(walked, published);
    assert_eq!(t.ack(stream, GROUP, &published).unwrap(), 3);
}

fn reclaim_reports_trimmed_entries_as_deleted<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 4);
    read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(t.trim(stream, 2).unwrap(), 2);
    assert_eq!(t.trim(stream, 2).unwrap(), 0, "already short enough");
    assert_eq!(
        pending(t, stream),
        4,
        "trimming leaves pending records behind"
    );

    let reclaimed = reclaim(t, stream, "c2", Duration::ZERO, "0-0", 10);
    assert_eq!(reclaimed.deleted, published[..2]);
    assert_eq!(ids(&reclaimed.entries), published[2..]);
    assert_eq!(reclaimed.next_cursor, "0-0");
    assert_eq!(pending(t, stream), 2, "deleted ids left the pending list");
    assert_eq!(t.ack(stream, GROUP, &published).unwrap(), 2);
}

fn missing_group_gives_no_group_until_ensured_again<T: Harness>(t: &T, stream: &str) {
    let request = ReadRequest {
        stream,
        group: GROUP,
        consumer: "c1",
        count: 10,
        block: Duration::from_millis(100),
    };
    assert_no_group(t.read_group(&request), stream);
    assert_no_group(t.group_stats(stream, GROUP), stream);
    assert_no_group(
        t.reclaim_stale(&ReclaimRequest {
            stream,
            group: GROUP,
            consumer: "c1",
            min_idle: Duration::ZERO,
            cursor: "0-0",
            count: 10,
        }),
        stream,
    );

    // Only `stream_exists` tells a missing stream from a missing group.
    assert_eq!(t.stream_exists(stream).unwrap(), Some(false));

    // A stream that exists without the group is no different.
    let published = publish_numbered(t, stream, 2);
    assert_no_group(t.read_group(&request), stream);
    assert_no_group(t.group_stats(stream, GROUP), stream);
    assert_eq!(t.stream_exists(stream).unwrap(), Some(true));

    // Losing the group after reads: readers see NoGroup, recreate it and start from the beginning.
    t.ensure_group(stream, GROUP).unwrap();
    assert_eq!(read(t, stream, "c1", 1, Duration::ZERO).len(), 1);
    t.lose_group(stream, GROUP);
    assert_no_group(t.read_group(&request), stream);
    t.ensure_group(stream, GROUP).unwrap();
    assert_eq!(ids(&t.read_group(&request).unwrap()), published);
    assert_eq!(pending(t, stream), 2);
}

fn publish_batch_returns_increasing_ids<T: Harness>(t: &T, stream: &str) {
    assert!(t.publish_batch(stream, &[]).unwrap().is_empty());
    let batch = publish_numbered(t, stream, 5);
    let single = t.publish(stream, fields(&[("n", b"5")])).unwrap();
    let all: Vec<String> = batch.into_iter().chain([single]).collect();
    assert_eq!(all.len(), 6);
    for pair in all.windows(2) {
        assert!(
            id_order(&pair[0]) < id_order(&pair[1]),
            "{pair:?} not increasing"
        );
    }

    let refused = t.publish_batch(stream, &[fields(&[("n", b"6")]), Vec::new()]);
    assert!(
        matches!(refused, Err(TransportError::Broker(_))),
        "{refused:?}"
    );

    t.ensure_group(stream, GROUP).unwrap();
    let got = read(t, stream, "c1", 100, Duration::ZERO);
    assert_eq!(ids(&got), all, "a refused batch adds nothing");
    let numbers: Vec<_> = got
        .iter()
        .map(|entry| entry.field("n").unwrap().to_vec())
        .collect();
    let expected: Vec<_> = (0..6).map(|n: u8| vec![b'0' + n]).collect();
    assert_eq!(numbers, expected);
}

fn lag_counts_undelivered_entries<T: Harness>(t: &T, stream: &str) {
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 3);
    let stats = |pending, lag| eventflow::transport::GroupStats {
        pending,
        lag: Some(lag),
    };
    assert_eq!(t.group_stats(stream, GROUP).unwrap(), stats(0, 3));
    read(t, stream, "c1", 2, Duration::ZERO);
    assert_eq!(t.group_stats(stream, GROUP).unwrap(), stats(2, 1));
    read(t, stream, "c2", 10, Duration::ZERO);
    assert_eq!(t.group_stats(stream, GROUP).unwrap(), stats(3, 0));
    t.ack(stream, GROUP, &published).unwrap();
    assert_eq!(t.group_stats(stream, GROUP).unwrap(), stats(0, 0));
}

fn publish_entries_reports_each_entry_across_streams<T: Harness>(t: &T, stream: &str) {
    let other = format!("{stream}.b");
    let one = fields(&[("n", b"1")]);
    let two = fields(&[("n", b"2")]);
    let results = t
        .publish_entries(&[
            OutgoingEntry {
                stream,
                fields: &one,
            },
            OutgoingEntry {
                stream,
                fields: &[],
            },
            OutgoingEntry {
                stream: &other,
                fields: &two,
            },
        ])
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        matches!(results[1], Err(TransportError::Broker(_))),
        "{results:?}"
    );
    let first = results[0].as_ref().expect("first entry appended").clone();
    let third = results[2].as_ref().expect("third entry appended").clone();

    t.ensure_group(stream, GROUP).unwrap();
    t.ensure_group(&other, GROUP).unwrap();
    let got = read(t, stream, "c1", 10, Duration::ZERO);
    assert_eq!(ids(&got), vec![first]);
    assert_eq!(got[0].field("n"), Some(&b"1"[..]));
    let got = read(t, &other, "c1", 10, Duration::ZERO);
    assert_eq!(ids(&got), vec![third]);
    assert_eq!(got[0].field("n"), Some(&b"2"[..]));
}

fn trim_consumed_keeps_what_a_group_has_not_read_or_acknowledged<T: Harness>(t: &T, stream: &str) {
    const LATER: &str = "99999999999999-0";
    let published = publish_numbered(t, stream, 6);
    assert_eq!(
        t.trim_consumed(stream, LATER).unwrap(),
        0,
        "no group: nobody read it"
    );
    assert_eq!(t.trim_consumed("ef_tc_no_such_stream", LATER).unwrap(), 0);

    t.ensure_group(stream, GROUP).unwrap();
    let delivered = read(t, stream, "c1", 4, Duration::ZERO);
    assert_eq!(ids(&delivered), published[..4]);
    t.ack(stream, GROUP, &published[..2]).unwrap();
    assert_eq!(
        t.trim_consumed(stream, LATER).unwrap(),
        2,
        "only acknowledged entries go"
    );
    t.ack(stream, GROUP, &published[2..4]).unwrap();
    assert_eq!(
        t.trim_consumed(stream, &published[3]).unwrap(),
        1,
        "nothing at or after `before` goes"
    );
    assert_eq!(t.trim_consumed(stream, LATER).unwrap(), 1);
    assert_eq!(
        t.trim_consumed(stream, LATER).unwrap(),
        0,
        "unread entries stay"
    );

    // A second group that has read nothing holds everything left.
    t.ensure_group(stream, "late").unwrap();
    read(t, stream, "c1", 10, Duration::ZERO);
    t.ack(stream, GROUP, &published[4..]).unwrap();
    assert_eq!(t.trim_consumed(stream, LATER).unwrap(), 0);
    let late = t
        .read_group(&ReadRequest {
            stream,
            group: "late",
            consumer: "c9",
            count: 10,
            block: Duration::ZERO,
        })
        .unwrap();
    assert_eq!(ids(&late), published[4..]);
}

fn ping_answers_even_while_a_read_blocks<T: Harness>(t: &T, stream: &str) {
    t.ping(Duration::from_secs(2)).expect("ping");
    t.ensure_group(stream, GROUP).unwrap();
    thread::scope(|scope| {
        let reader = scope.spawn(|| read(t, stream, "c1", 1, Duration::from_millis(300)));
        t.ping(Duration::from_secs(2))
            .expect("ping beside a blocked read");
        assert!(reader.join().unwrap().is_empty());
    });
}

/// The oldest entry delivered and not acknowledged with an id below a bound (exclusive),
/// whoever holds it, with how long ago it was delivered.
fn oldest_pending_before_finds_the_oldest_unacknowledged_entry<T: Harness>(t: &T, stream: &str) {
    let beyond = format!("{}-0", u64::MAX / 2);
    assert_no_group(t.oldest_pending_before(stream, GROUP, &beyond), stream);
    t.ensure_group(stream, GROUP).unwrap();
    let published = publish_numbered(t, stream, 4);
    assert_eq!(
        t.oldest_pending_before(stream, GROUP, &beyond).unwrap(),
        None,
        "nothing delivered yet"
    );
    match t.oldest_pending_before(stream, "another_group", &beyond) {
        Err(TransportError::NoGroup { stream: s, group }) => {
            assert_eq!((s.as_str(), group.as_str()), (stream, "another_group"));
        }
        other => panic!("expected NoGroup, got {other:?}"),
    }

    assert_eq!(
        ids(&read(t, stream, "c1", 2, Duration::ZERO)),
        published[..2]
    );
    assert_eq!(
        ids(&read(t, stream, "c2", 2, Duration::ZERO)),
        published[2..]
    );
    let oldest = |before: &str| {
        t.oldest_pending_before(stream, GROUP, before)
            .expect("oldest_pending_before")
    };
    let first = oldest(&published[3]).expect("a pending entry");
    assert_eq!(
        (first.id.as_str(), first.consumer.as_str()),
        (published[0].as_str(), "c1")
    );
    assert!(first.idle < Duration::from_secs(5), "{:?}", first.idle);
    assert_eq!(oldest(&published[0]), None, "the bound is exclusive");
    assert_eq!(
        oldest(&published[1]).map(|e| e.id),
        Some(published[0].clone())
    );

    thread::sleep(STALE_AFTER);
    let later = oldest(&beyond).expect("still pending");
    assert_eq!(later.id, published[0]);
    assert!(
        later.idle >= first.idle + Duration::from_millis(100),
        "idle grows: {:?}, then {:?}",
        first.idle,
        later.idle
    );

    // Acknowledged entries are no longer pending; the next is reported with its own consumer.
    assert_eq!(t.ack(stream, GROUP, &published[..2]).unwrap(), 2);
    assert_eq!(oldest(&published[2]), None);
    let next = oldest(&beyond).expect("c2's entries are pending");
    assert_eq!(
        (next.id.as_str(), next.consumer.as_str()),
        (published[2].as_str(), "c2")
    );

    // Taken over, an entry is held by its new consumer, its idle time restarted.
    let taken = reclaim(t, stream, "c3", MIN_IDLE, "0-0", 1);
    assert_eq!(ids(&taken.entries), [published[2].clone()]);
    let reclaimed = oldest(&beyond).expect("pending");
    assert_eq!(
        (reclaimed.id.as_str(), reclaimed.consumer.as_str()),
        (published[2].as_str(), "c3")
    );
    assert!(reclaimed.idle < later.idle, "{:?}", reclaimed.idle);

    assert_eq!(t.ack(stream, GROUP, &published[2..]).unwrap(), 2);
    assert_eq!(oldest(&beyond), None, "all acknowledged");
}

/// Deletes a test's Redis stream when the test ends, passed or not.
struct DropStream(String);

impl Drop for DropStream {
    fn drop(&mut self) {
        let _ = redis::cmd("DEL")
            .arg(&self.0)
            .arg(format!("{}.b", self.0))
            .query::<i64>(&mut raw_redis());
    }
}

/// Deletes a test's streams on the cluster when the test ends, passed or not.
struct DropClusterStreams(String);

impl Drop for DropClusterStreams {
    fn drop(&mut self) {
        if let Ok(mut conn) = support::cluster::raw_cluster() {
            support::cluster::delete_keys(&mut conn, &[self.0.clone(), format!("{}.b", self.0)]);
        }
    }
}

/// Entries trimmed away (older than the oldest) and entries never there (younger than the
/// newest) are both absent; the oldest entry tells which is which.
fn find_entries_tells_what_the_stream_holds<T: Harness>(t: &T, stream: &str) {
    let ids = publish_numbered(t, stream, 4);
    assert_eq!(t.trim(stream, 3).unwrap(), 1);
    let (last_millis, _) = id_order(&ids[3]);
    let never = format!("{}-0", last_millis + 1_000);
    let asked = [ids[0].clone(), ids[1].clone(), ids[3].clone(), never];
    let found = t
        .find_entries(stream, &asked)
        .unwrap()
        .expect("the transport can tell");
    assert_eq!(found.oldest.as_deref(), Some(ids[1].as_str()));
    assert_eq!(found.present, [false, true, true, false]);

    let elsewhere = t
        .find_entries(&format!("{stream}.none"), &ids[1..2])
        .unwrap()
        .expect("the transport can tell");
    assert_eq!(
        elsewhere,
        FoundEntries {
            oldest: None,
            present: vec![false]
        }
    );
}

fn cluster_transport() -> Arc<RedisStreams> {
    Arc::new(
        RedisStreams::builder(support::cluster::cluster_url())
            .pool_size(8)
            .build()
            .expect("RedisStreams from the test cluster URL"),
    )
}

fn redis_transport() -> RedisStreams {
    RedisStreams::builder(support::redis_url())
        .pool_size(8)
        .build()
        .expect("RedisStreams from the test URL")
}

/// Runs each listed check once per transport, as `memory::<check>`, `redis_streams::<check>`
/// and `redis_cluster::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $check() {
                    let stream = crate::support::unique_name("ef_tc");
                    super::$check(&eventflow::transport::MemoryStream::new(), &stream);
                }
            )*
        }

        mod redis_streams {
            $(
                #[test]
                fn $check() {
                    if !crate::support::redis_available(concat!("redis_streams::", stringify!($check))) {
                        return;
                    }
                    let stream = crate::support::unique_name("ef_tc");
                    let _cleanup = super::DropStream(stream.clone());
                    super::$check(&super::redis_transport(), &stream);
                }
            )*
        }

        mod redis_cluster {
            $(
                #[test]
                fn $check() {
                    if !crate::support::cluster::cluster_available(concat!("redis_cluster::", stringify!($check))) {
                        return;
                    }
                    let stream = crate::support::cluster::names_on_distinct_masters("ef_tcc", &[".b"]);
                    let _cleanup = super::DropClusterStreams(stream.clone());
                    super::$check(&super::cluster_transport(), &stream);
                }
            )*
        }
    };
}

conformance!(
    group_creation_is_idempotent,
    a_group_created_after_an_id_reads_only_later_entries,
    read_returns_entries_in_order_with_fields_intact,
    empty_read_waits_about_block_and_returns_nothing,
    publish_wakes_a_blocked_read,
    delivered_entries_are_not_delivered_again,
    concurrent_readers_split_entries_without_overlap,
    ack_removes_from_pending_and_counts,
    reclaim_takes_only_stale_entries_and_walks_the_cursor,
    reclaim_reports_trimmed_entries_as_deleted,
    missing_group_gives_no_group_until_ensured_again,
    publish_batch_returns_increasing_ids,
    lag_counts_undelivered_entries,
    publish_entries_reports_each_entry_across_streams,
    trim_consumed_keeps_what_a_group_has_not_read_or_acknowledged,
    ping_answers_even_while_a_read_blocks,
    oldest_pending_before_finds_the_oldest_unacknowledged_entry,
    find_entries_tells_what_the_stream_holds,
);

/// Redis refuses an `XADD` to a key holding another type; the other entries of the pipeline
/// are still appended and reported one by one.
#[test]
fn redis_refuses_one_entry_and_appends_the_rest() {
    if !support::redis_available("redis_refuses_one_entry_and_appends_the_rest") {
        return;
    }
    let stream = support::unique_name("ef_tc");
    let _cleanup = DropStream(stream.clone());
    let wrong_type = format!("{stream}.b");
    redis::cmd("SET")
        .arg(&wrong_type)
        .arg("not a stream")
        .query::<()>(&mut raw_redis())
        .unwrap();
    let entry = fields(&[("n", b"1")]);
    let results = redis_transport()
        .publish_entries(&[
            OutgoingEntry {
                stream: &wrong_type,
                fields: &entry,
            },
            OutgoingEntry {
                stream: &stream,
                fields: &entry,
            },
        ])
        .unwrap();
    assert!(
        matches!(results[0], Err(TransportError::Broker(_))),
        "{results:?}"
    );
    assert!(results[1].is_ok(), "{results:?}");
}

/// The same on a cluster, where a pipeline spans masters and reports only the refused entry:
/// the entries around it are still appended, each reported with its own id.
#[test]
fn redis_cluster_refuses_one_entry_and_appends_the_rest() {
    if !support::cluster::cluster_available("redis_cluster_refuses_one_entry_and_appends_the_rest")
    {
        return;
    }
    let stream = support::cluster::names_on_distinct_masters("ef_tcc", &[".b"]);
    let _cleanup = DropClusterStreams(stream.clone());
    let wrong_type = format!("{stream}.b");
    redis::cmd("SET")
        .arg(&wrong_type)
        .arg("not a stream")
        .query::<()>(&mut support::cluster::raw_cluster().unwrap())
        .unwrap();
    let one = fields(&[("n", b"1")]);
    let two = fields(&[("n", b"2")]);
    let transport = cluster_transport();
    let results = transport
        .publish_entries(&[
            OutgoingEntry {
                stream: &stream,
                fields: &one,
            },
            OutgoingEntry {
                stream: &wrong_type,
                fields: &one,
            },
            OutgoingEntry {
                stream: &stream,
                fields: &two,
            },
        ])
        .unwrap();
    assert!(
        matches!(results[1], Err(TransportError::Broker(_))),
        "{results:?}"
    );
    let first = results[0].as_ref().expect("first entry appended").clone();
    let third = results[2].as_ref().expect("third entry appended").clone();
    transport.ensure_group(&stream, GROUP).unwrap();
    let got = read(&transport, &stream, "c1", 10, Duration::ZERO);
    let got_ids = ids(&got);
    assert!(
        got_ids.contains(&first) && got_ids.contains(&third),
        "{got_ids:?}"
    );
    assert_eq!(got.last().unwrap().field("n"), Some(&b"2"[..]));
}
