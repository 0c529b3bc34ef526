//! An inbox for real services, against PostgreSQL and Redis, by doing the thing: one owner per
//! table, several streams read by several processes, and per-aggregate order through failures,
//! dead letters and a SIGKILLed process.
//!
//! The consumer processes are this test binary run again with `EVENTFLOW_SERVICES_CHILD` set
//! (see `services_child`), so the tests need nothing built beyond themselves.

mod support;

use eventflow::store::{
    AfterDeadLetter, DeadLetterRequeue, DeadLetterSkip, InboxStore, ParkedPage, PostgresStore,
    RowFilter,
};
use eventflow::transport::{RedisStreams, Transport};
use eventflow::{Error, Event, EventStatus, HandlerError, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;
use support::child::{report_until_killed, ChildProcess};
use support::{postgres_url, redis_url, unique_name, wait_until};
use uuid::Uuid;

fn services(test: &str) -> bool {
    support::postgres_available(test) && support::redis_available(test)
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

fn drop_inbox(db: &mut Client, table: &str) {
    support::drop_inbox_table(db, table, &["handled", "fixed"]);
}

fn entry(event_id: String, aggregate: Uuid, payload: serde_json::Value) -> Vec<(String, Vec<u8>)> {
    let mut event = Event::new("OrderChanged", aggregate, payload);
    event.event_id = event_id;
    event.to_entry_fields()
}

fn consumer_on(
    table: &str,
    stream: &str,
    group: &str,
) -> eventflow::inbox::ConsumerBuilder<eventflow::inbox::PostgresUrl, ()> {
    InboxConsumer::builder()
        .redis(redis_url())
        .postgres(postgres_url())
        .table(table)
        .stream(stream)
        .group(group)
        .block(Duration::from_millis(100))
}

#[test]
fn a_second_group_on_an_owned_table_is_refused_and_two_tables_serve_two_groups() {
    let test = "a_second_group_on_an_owned_table_is_refused_and_two_tables_serve_two_groups";
    if !services(test) {
        return;
    }
    let stream = unique_name("owned_stream");
    let (billing_table, shipping_table) = (unique_name("owned_b"), unique_name("owned_s"));
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();

    // A table migrated before anyone consumed from it has no owner; the first group adopts it.
    let store = PostgresStore::builder(postgres_url())
        .table(&billing_table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    assert_eq!(store.find_owner().unwrap(), None);
    for table in [&billing_table, &shipping_table] {
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_handled (event_id TEXT NOT NULL)"
        ))
        .ok();
    }
    let handler_for = |table: &str| {
        let insert = format!("INSERT INTO {table}_handled (event_id) VALUES ($1)");
        move |tx: &mut eventflow::store::PgTransaction<'_>,
              row: &eventflow::InboxRow|
              -> HandlerResult {
            tx.execute(&insert, &[&row.event.event_id])?;
            Ok(())
        }
    };
    let billing = consumer_on(&billing_table, &stream, "billing")
        .handler(handler_for(&billing_table))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(store.find_owner().unwrap().as_deref(), Some("billing"));

    // Another service on the same table would see every event as a duplicate: refused.
    let refused = consumer_on(&billing_table, &stream, "shipping")
        .handler(handler_for(&shipping_table))
        .build()
        .unwrap()
        .start();
    match refused {
        Err(Error::TableOwned {
            table,
            owner,
            group,
            suggested,
        }) => {
            assert_eq!(
                (table.as_str(), owner.as_str(), group.as_str()),
                (billing_table.as_str(), "billing", "shipping")
            );
            assert_eq!(suggested, "shipping_inbox");
        }
        other => panic!("expected TableOwned, got {other:?}"),
    }
    let message = consumer_on(&billing_table, &stream, "shipping")
        .handler(handler_for(&shipping_table))
        .build()
        .unwrap()
        .start()
        .unwrap_err()
        .to_string();
    for part in [
        billing_table.as_str(),
        "\"billing\"",
        "\"shipping\"",
        ".table(\"shipping_inbox\")",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part}");
    }

    // With a table of its own, the second service handles every event too.
    let shipping = consumer_on(&shipping_table, &stream, "shipping")
        .handler(handler_for(&shipping_table))
        .build()
        .unwrap()
        .start()
        .unwrap();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    let entries: Vec<_> = (0..2_000)
        .map(|i| entry(format!("own-{i}"), Uuid::new_v4(), json!({ "i": i })))
        .collect();
    for chunk in entries.chunks(500) {
        redis.publish_batch(&stream, chunk).unwrap();
    }
    let handled = |db: &mut Client, table: &str| -> (i64, i64) {
        let row = db
            .query_one(
                &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}_handled"),
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let done = wait_until(Duration::from_secs(60), || {
        handled(&mut db, &billing_table).0 >= 2_000 && handled(&mut db, &shipping_table).0 >= 2_000
    });
    billing.shutdown(Duration::from_secs(10)).unwrap();
    shipping.shutdown(Duration::from_secs(10)).unwrap();
    let results = (
        handled(&mut db, &billing_table),
        handled(&mut db, &shipping_table),
    );
    drop_inbox(&mut db, &billing_table);
    drop_inbox(&mut db, &shipping_table);
    assert!(done, "both services handle the stream: {results:?}");
    assert_eq!(
        results,
        ((2_000, 2_000), (2_000, 2_000)),
        "each exactly once"
    );
}

/// Not a test: a consumer process the tests below start (and kill). Ignored so that a normal
/// run does not count it; the tests run it with `--ignored --exact services_child`.
#[test]
#[ignore = "a child process of the multi-process tests in this file"]
fn services_child() {
    let Ok(streams) = std::env::var("EVENTFLOW_SERVICES_STREAMS") else {
        return;
    };
    let table = std::env::var("EVENTFLOW_SERVICES_TABLE").unwrap();
    let prefix = std::env::var("EVENTFLOW_SERVICES_PREFIX").unwrap();
    let ordered = std::env::var("EVENTFLOW_SERVICES_ORDERED").is_ok();
    let builder = InboxConsumer::builder()
        .redis(redis_url())
        .postgres(postgres_url())
        .table(&table)
        .streams(streams.split(','))
        .group("services")
        .consumer_prefix(&prefix)
        .workers(4)
        .read_batch(200)
        .block(Duration::from_millis(100))
        .reclaim_idle(Duration::from_secs(2))
        .reclaim_interval(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100))
        .orphan_after(Duration::from_secs(1))
        .max_attempts(20)
        .retry_policy(RetrySoon);
    let handle = if ordered {
        let insert = format!(
            "INSERT INTO {table}_handled (aggregate, seq, event_id, process) VALUES ($1, $2, $3, $4)"
        );
        let fixed = format!("SELECT count(*) FROM {table}_fixed");
        let process = prefix.clone();
        builder
            .ordered(true)
            .handler(move |tx, row| -> HandlerResult {
                let aggregate = row.event.payload["aggregate"].as_i64().unwrap() as i32;
                let seq = row.event.payload["seq"].as_i64().unwrap() as i32;
                match row.event.payload["poison"].as_str() {
                    Some("always") => return Err(HandlerError::give_up("poison event")),
                    Some("until-fixed") => {
                        let fixed: i64 = tx.query_one(&fixed, &[])?.get(0);
                        if fixed == 0 {
                            return Err(HandlerError::give_up("poison until fixed"));
                        }
                    }
                    _ => {}
                }
                if fails(&row.event.event_id, row.retry_count) {
                    return Err(HandlerError::retry("one attempt in fifty fails"));
                }
                tx.execute(&insert, &[&aggregate, &seq, &row.event.event_id, &process])?;
                Ok(())
            })
            .build()
            .unwrap()
            .start()
            .unwrap()
    } else {
        let insert =
            format!("INSERT INTO {table}_handled (event_id, stream, process) VALUES ($1, $2, $3)");
        let process = prefix.clone();
        builder
            .handler(move |tx, row| -> HandlerResult {
                tx.execute(&insert, &[&row.event.event_id, &row.stream, &process])?;
                Ok(())
            })
            .build()
            .unwrap()
            .start()
            .unwrap()
    };
    report_until_killed(&format!("child {prefix}"), Duration::from_secs(1), || {
        handle.stats()
    })
}

/// Retries after 20 ms, so a test sees its failures retried without waiting out the schedule.
struct RetrySoon;

impl eventflow::RetryPolicy for RetrySoon {
    fn delay(&self, _failures: u32, _jitter: f64) -> Duration {
        Duration::from_millis(20)
    }
}

/// Whether this attempt fails: one in fifty, the same in every process for the same attempt.
fn fails(event_id: &str, attempt: i32) -> bool {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (event_id, attempt).hash(&mut hasher);
    hasher.finish() % 50 == 0
}

fn spawn_child(streams: &[String], table: &str, prefix: &str, ordered: bool) -> ChildProcess {
    let streams = streams.join(",");
    let mut envs = vec![
        ("EVENTFLOW_SERVICES_STREAMS", streams.as_str()),
        ("EVENTFLOW_SERVICES_TABLE", table),
        ("EVENTFLOW_SERVICES_PREFIX", prefix),
    ];
    if ordered {
        envs.push(("EVENTFLOW_SERVICES_ORDERED", "1"));
    }
    ChildProcess::spawn("services_child", &envs)
}

#[test]
fn three_streams_two_processes_every_event_once_with_its_stream() {
    let test = "three_streams_two_processes_every_event_once_with_its_stream";
    if !services(test) {
        return;
    }
    const PER_STREAM: usize = 10_000;
    const DUPLICATES: usize = 1_000;
    let table = unique_name("three");
    let streams: Vec<String> = (0..3).map(|i| unique_name(&format!("three_{i}"))).collect();
    let store = PostgresStore::builder(postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (event_id TEXT NOT NULL, stream TEXT, process TEXT NOT NULL)"
    ))
    .unwrap();

    let first = spawn_child(&streams, &table, "first", false);
    let second = spawn_child(&streams, &table, "second", false);
    // Every stream gets its own events; the first DUPLICATES of stream 0 are sent again on
    // stream 1 and on stream 2, interleaved with the rest.
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    let mut published_on: HashMap<String, HashSet<usize>> = HashMap::new();
    for batch in 0..PER_STREAM / 500 {
        for (s, stream) in streams.iter().enumerate() {
            let mut entries = Vec::new();
            for i in batch * 500..(batch + 1) * 500 {
                let event_id = format!("s{s}-{i}");
                published_on.entry(event_id.clone()).or_default().insert(s);
                entries.push(entry(event_id, Uuid::new_v4(), json!({ "i": i })));
                if s > 0 && i < DUPLICATES {
                    let again = format!("s0-{i}");
                    published_on.entry(again.clone()).or_default().insert(s);
                    entries.push(entry(again, Uuid::new_v4(), json!({ "i": i })));
                }
            }
            redis.publish_batch(stream, &entries).unwrap();
        }
    }
    let total = 3 * PER_STREAM;
    let processed_sql = format!("SELECT count(*) FROM {table} WHERE status = 'processed'");
    let all_acked = || {
        streams
            .iter()
            .all(|s| redis.group_stats(s, "services").unwrap().pending == 0)
    };
    let finished = wait_until(Duration::from_secs(180), || {
        count(&mut db, &processed_sql) == total as i64 && all_acked()
    });
    first.kill();
    second.kill();

    let handled = db
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT event_id), count(DISTINCT process) FROM {table}_handled"
            ),
            &[],
        )
        .unwrap();
    let (handled, distinct, processes): (i64, i64, i64) =
        (handled.get(0), handled.get(1), handled.get(2));
    let rows: Vec<(String, Option<String>, Option<String>)> = db
        .query(
            &format!(
                "SELECT i.event_id, i.stream, h.stream FROM {table} i \
                 LEFT JOIN {table}_handled h ON h.event_id = i.event_id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let pending: Vec<u64> = streams
        .iter()
        .map(|s| redis.group_stats(s, "services").unwrap().pending)
        .collect();
    drop_inbox(&mut db, &table);

    assert!(
        finished,
        "not every event was processed: pending {pending:?}"
    );
    assert_eq!(
        (handled, distinct),
        (total as i64, total as i64),
        "every event handled exactly once"
    );
    assert_eq!(processes, 2, "both processes took part");
    assert_eq!(pending, [0, 0, 0], "nothing pending in any group");
    assert_eq!(rows.len(), total);
    let mut duplicated_on_their_second_stream = 0;
    for (event_id, stored, seen) in rows {
        let stream = stored.expect("every row records its stream");
        let index = streams.iter().position(|s| *s == stream).unwrap();
        assert!(
            published_on[&event_id].contains(&index),
            "{event_id} stored from {stream}, where it was never published"
        );
        assert_eq!(
            seen.as_deref(),
            Some(stream.as_str()),
            "the handler saw the row's stream"
        );
        duplicated_on_their_second_stream +=
            usize::from(!event_id.starts_with(&format!("s{index}-")));
    }
    eprintln!(
        "three streams: {total} handled once; {duplicated_on_their_second_stream} duplicated events were stored from their later stream"
    );
}

const AGGREGATES: usize = 500;
const PER_AGGREGATE: usize = 40;
/// Dead-lettered for good: parks its aggregate until skipped.
const POISONED: (usize, usize) = (7, 10);
/// Dead-lettered until `<table>_fixed` has a row: parks its aggregate until requeued.
const FIXABLE: (usize, usize) = (8, 5);

/// Entries of `stream` read but not acknowledged by the consumers whose names start with `prefix`.
fn unacknowledged_by(stream: &str, prefix: &str) -> usize {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg("services")
        .query(&mut conn)
        .unwrap();
    match reply {
        redis::streams::StreamPendingReply::Data(data) => data
            .consumers
            .iter()
            .filter(|consumer| consumer.name.starts_with(prefix))
            .map(|consumer| consumer.pending)
            .sum(),
        _ => 0,
    }
}

fn aggregate_id(aggregate: usize) -> Uuid {
    Uuid::from_u128(0x0e0f_0000_0000_4000_8000_0000_0000_0000 | aggregate as u128)
}

#[test]
fn ordered_events_stay_in_order_through_failures_parking_and_a_killed_process() {
    let test = "ordered_events_stay_in_order_through_failures_parking_and_a_killed_process";
    if !services(test) {
        return;
    }
    let table = unique_name("ordered");
    let streams = vec![unique_name("ordered_stream")];
    let store = PostgresStore::builder(postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (id BIGSERIAL PRIMARY KEY, aggregate INT NOT NULL, \
         seq INT NOT NULL, event_id TEXT NOT NULL, process TEXT NOT NULL); \
         CREATE TABLE {table}_fixed (fixed BOOL)"
    ))
    .unwrap();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    redis.ensure_group(&streams[0], "services").unwrap();

    let first = spawn_child(&streams, &table, "first", true);
    let second = spawn_child(&streams, &table, "second", true);
    // Each aggregate's events in sequence order, the aggregates interleaved.
    let mut entries = Vec::with_capacity(AGGREGATES * PER_AGGREGATE);
    for seq in 0..PER_AGGREGATE {
        for aggregate in 0..AGGREGATES {
            let mut payload = json!({ "aggregate": aggregate, "seq": seq });
            if (aggregate, seq) == POISONED {
                payload["poison"] = json!("always");
            }
            if (aggregate, seq) == FIXABLE {
                payload["poison"] = json!("until-fixed");
            }
            entries.push(entry(
                format!("o-{aggregate}-{seq}"),
                aggregate_id(aggregate),
                payload,
            ));
        }
    }
    let handled_sql = format!("SELECT count(*) FROM {table}_handled");
    let late = entries.split_off(entries.len() / 2);
    for chunk in entries.chunks(1000) {
        redis.publish_batch(&streams[0], chunk).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || count(&mut db, &handled_sql)
            >= 4_000),
        "the consumers handled nothing"
    );
    // The rest arrive while the first process is killed, so that it dies holding claimed rows
    // and entries it read but had not acknowledged: the others must take both over, in order.
    let stream = streams[0].clone();
    let publisher = std::thread::spawn(move || {
        let redis = RedisStreams::connect(&redis_url()).unwrap();
        for chunk in late.chunks(200) {
            redis.publish_batch(&stream, chunk).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let mut held_at_kill = 0;
    wait_until(Duration::from_secs(20), || {
        held_at_kill = unacknowledged_by(&streams[0], "first-");
        held_at_kill > 0
    });
    first.kill();
    let handled_at_kill = count(&mut db, &handled_sql);
    let third = spawn_child(&streams, &table, "third", true);
    publisher.join().unwrap();

    // Everything but the two parked aggregates' later events gets handled.
    let parked_behind = (PER_AGGREGATE - POISONED.1 - 1) + (PER_AGGREGATE - FIXABLE.1 - 1);
    let expected_before_release = (AGGREGATES * PER_AGGREGATE - 2 - parked_behind) as i64;
    let parked_first = wait_until(Duration::from_secs(180), || {
        count(&mut db, &handled_sql) >= expected_before_release
            && store.parked_summary().unwrap().aggregates == 2
    });
    // Nothing more happens to the parked aggregates while they wait.
    std::thread::sleep(Duration::from_millis(500));
    let handled_while_parked = count(&mut db, &handled_sql);
    let parked = store
        .list_parked(&ParkedPage {
            limit: 10,
            after: None,
            aggregate_id: None,
        })
        .unwrap();
    let summary = store.parked_summary().unwrap();

    // Skip the poisoned event: its aggregate goes on without it.
    let poisoned = store
        .find_by_event_id(&format!("o-{}-{}", POISONED.0, POISONED.1))
        .unwrap()
        .unwrap();
    assert!(store
        .skip_dead_letter(&DeadLetterSkip {
            id: poisoned.id,
            now: chrono::Utc::now(),
        })
        .unwrap());
    // Fix and requeue the other: handled again in its place, then its successors.
    db.batch_execute(&format!("INSERT INTO {table}_fixed VALUES (true)"))
        .unwrap();
    let fixable_id = format!("o-{}-{}", FIXABLE.0, FIXABLE.1);
    let requeued = store
        .requeue_dead_letters(&DeadLetterRequeue {
            filter: &RowFilter {
                event_id: Some(fixable_id.clone()),
                ..RowFilter::default()
            },
            after: None,
            limit: 10,
            now: chrono::Utc::now(),
        })
        .unwrap();
    let total_handled = (AGGREGATES * PER_AGGREGATE - 1) as i64;
    let released = wait_until(Duration::from_secs(60), || {
        count(&mut db, &handled_sql) >= total_handled
            && store.parked_summary().unwrap().aggregates == 0
    });
    std::thread::sleep(Duration::from_millis(300));
    second.kill();
    third.kill();

    let handled: Vec<(i32, i32, String, String)> = db
        .query(
            &format!("SELECT aggregate, seq, event_id, process FROM {table}_handled ORDER BY id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    let statuses: BTreeMap<String, i64> = db
        .query(
            &format!("SELECT status, count(*) FROM {table} GROUP BY status"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    drop_inbox(&mut db, &table);

    eprintln!(
        "ordered: {handled_at_kill} handled and {held_at_kill} entries unacknowledged by the first process when it was killed; \
         {handled_while_parked} while two aggregates were parked; {} in the end; statuses {statuses:?}",
        handled.len()
    );
    assert!(
        parked_first,
        "the other aggregates finished while two were parked"
    );
    assert_eq!(
        handled_while_parked, expected_before_release,
        "parked aggregates' later events wait"
    );
    let parked_ids: Vec<Uuid> = parked.iter().map(|p| p.aggregate_id).collect();
    let mut expected_parked = vec![aggregate_id(POISONED.0), aggregate_id(FIXABLE.0)];
    expected_parked.sort();
    assert_eq!(
        parked_ids, expected_parked,
        "exactly the two aggregates parked"
    );
    for p in &parked {
        let (aggregate, seq) = if p.aggregate_id == aggregate_id(POISONED.0) {
            POISONED
        } else {
            FIXABLE
        };
        assert_eq!(p.dead_letter.event.event_id, format!("o-{aggregate}-{seq}"));
        assert_eq!(p.dead_letter.status, EventStatus::DeadLetter);
        assert_eq!(p.waiting, (PER_AGGREGATE - seq - 1) as u64);
    }
    assert_eq!(summary.aggregates, 2);
    assert!(summary.oldest_waiting.is_some());
    assert_eq!(requeued.count, 1, "the fixed dead letter requeued");
    assert!(released, "skip and requeue released the parked aggregates");

    // Exactly once: every event but the skipped one, once.
    let mut seen = HashSet::new();
    for (_, _, event_id, _) in &handled {
        assert!(seen.insert(event_id.clone()), "{event_id} handled twice");
    }
    assert_eq!(handled.len(), AGGREGATES * PER_AGGREGATE - 1);
    assert!(!seen.contains(&format!("o-{}-{}", POISONED.0, POISONED.1)));
    assert!(seen.contains(&fixable_id));
    // In order: within each aggregate, the committed handler rows have strictly increasing
    // sequence numbers.
    let mut last: HashMap<i32, i32> = HashMap::new();
    for (aggregate, seq, event_id, _) in &handled {
        if let Some(previous) = last.insert(*aggregate, *seq) {
            assert!(
                *seq > previous,
                "aggregate {aggregate}: {event_id} (seq {seq}) handled after seq {previous}"
            );
        }
    }
    let processes: HashSet<&str> = handled.iter().map(|(_, _, _, p)| p.as_str()).collect();
    assert_eq!(
        processes.len(),
        3,
        "all three processes handled events: {processes:?}"
    );
    assert!(
        handled_at_kill > 0 && (handled_at_kill as usize) < AGGREGATES * PER_AGGREGATE,
        "killed mid-run"
    );
    assert!(
        held_at_kill > 0,
        "the kill did not catch entries read but unacknowledged"
    );
    assert_eq!(statuses.get("processed"), Some(&(total_handled)));
    assert_eq!(
        statuses.get("dead_letter"),
        Some(&1),
        "the skipped one stays a dead letter"
    );
}

/// `AfterDeadLetter::Skip` is the other setting: a dead letter lets its aggregate go on.
#[test]
fn after_dead_letter_skip_lets_the_aggregate_go_on() {
    let test = "after_dead_letter_skip_lets_the_aggregate_go_on";
    if !services(test) {
        return;
    }
    let table = unique_name("skipmode");
    let stream = unique_name("skipmode_stream");
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    let insert = format!("INSERT INTO {table}_handled (seq) VALUES ($1)");
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (id BIGSERIAL PRIMARY KEY, seq INT NOT NULL)"
    ))
    .unwrap();
    let handle = consumer_on(&table, &stream, "skipmode")
        .ordered(true)
        .after_dead_letter(AfterDeadLetter::Skip)
        .handler(move |tx, row| -> HandlerResult {
            let seq = row.event.payload["seq"].as_i64().unwrap() as i32;
            if seq == 1 {
                return Err(HandlerError::give_up("poison"));
            }
            tx.execute(&insert, &[&seq])?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    let aggregate = Uuid::new_v4();
    let entries: Vec<_> = (0..5)
        .map(|seq| entry(format!("{table}-{seq}"), aggregate, json!({ "seq": seq })))
        .collect();
    redis.publish_batch(&stream, &entries).unwrap();
    let sql = format!("SELECT count(*) FROM {table}_handled");
    let done = wait_until(Duration::from_secs(30), || count(&mut db, &sql) == 4);
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let seqs: Vec<i32> = db
        .query(&format!("SELECT seq FROM {table}_handled ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop_inbox(&mut db, &table);
    assert!(done, "the aggregate went on past its dead letter: {seqs:?}");
    assert_eq!(seqs, [0, 2, 3, 4]);
}
