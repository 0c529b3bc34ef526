//! A poison event: its handler aborts the process, every time. Under a supervisor that restarts
//! the consumer whenever it dies, the event must end as a dead letter after its retries, with
//! the reason that its attempts never finished, and every other event must be handled exactly
//! once: the fleet does not crash-loop for ever, and nothing around the poison is lost or
//! repeated.
//!
//! The consumer processes are this test binary run again with `EVENTFLOW_POISON_STREAM` set.

mod support;

use eventflow::store::{InboxStore, NEVER_FINISHED};
use eventflow::transport::Transport;
use eventflow::{ExponentialBackoff, HandlerResult, InboxConsumer};
use std::time::{Duration, Instant};
use support::child::{report_until_killed, ChildProcess};
use support::pipeline::{publish, Pipeline};
use support::{postgres_url, redis_url};

const GROUP: &str = "poison";
const EVENTS: usize = 300;
const POISON: &str = "p-137";
const MAX_RETRIES: i32 = 3;

/// Not a test: the consumer process the test below starts (and restarts after each abort).
#[test]
#[ignore = "a child process of a_poison_event_ends_as_a_dead_letter"]
fn poison_child() {
    let Ok(stream) = std::env::var("EVENTFLOW_POISON_STREAM") else {
        return;
    };
    let table = std::env::var("EVENTFLOW_POISON_TABLE").unwrap();
    let prefix = std::env::var("EVENTFLOW_POISON_PREFIX").unwrap();
    let insert = format!("INSERT INTO {table}_handled (event_id) VALUES ($1)");
    let handle = InboxConsumer::builder()
        .redis(redis_url())
        .postgres(postgres_url())
        .table(&table)
        .stream(stream)
        .group(GROUP)
        .consumer_prefix(&prefix)
        .workers(2)
        .read_batch(50)
        .block(Duration::from_millis(200))
        .reclaim_idle(Duration::from_secs(1))
        .reclaim_interval(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(100))
        // Orphans are taken after 1 s, retries after 0.2 s, 0.4 s, ... (at least 1 s: a
        // counted attempt is not due again before it would be an orphan).
        .orphan_after(Duration::from_secs(1))
        .max_attempts(MAX_RETRIES as u32)
        .retry_policy(ExponentialBackoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(1),
            jitter_ratio: 0.0,
        })
        .handler(move |tx, row| -> HandlerResult {
            tx.execute(&insert, &[&row.event.event_id])?;
            if row.event.event_id == POISON {
                eprintln!("child {prefix}: {POISON} aborts the process");
                std::process::abort();
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    report_until_killed("child", Duration::from_millis(500), || handle.stats())
}

fn spawn_child(stream: &str, table: &str, generation: usize) -> ChildProcess {
    ChildProcess::spawn(
        "poison_child",
        &[
            ("EVENTFLOW_POISON_STREAM", stream),
            ("EVENTFLOW_POISON_TABLE", table),
            ("EVENTFLOW_POISON_PREFIX", &format!("gen{generation}")),
        ],
    )
}

#[test]
fn a_poison_event_ends_as_a_dead_letter() {
    let test = "a_poison_event_ends_as_a_dead_letter";
    if !(support::postgres_available(test) && support::redis_available(test)) {
        return;
    }
    let Pipeline {
        table,
        stream,
        store,
        mut db,
        redis,
    } = Pipeline::new("poison", GROUP);
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (event_id TEXT NOT NULL)"
    ))
    .unwrap();
    publish(&redis, &stream, (0..EVENTS).map(|i| format!("p-{i}")));

    // The supervisor: restart the consumer whenever it dies, until the poison is settled and
    // everything else processed, or a minute has passed.
    let mut generation = 0;
    let mut child = spawn_child(&stream, &table, generation);
    let mut aborts = 0;
    let settled_sql = format!(
        "SELECT count(*) FILTER (WHERE status = 'processed'), \
         count(*) FILTER (WHERE status = 'dead_letter') FROM {table}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut finished = false;
    while Instant::now() < deadline {
        if child.exited() {
            aborts += 1;
            generation += 1;
            child = spawn_child(&stream, &table, generation);
        }
        let row = db.query_one(&settled_sql, &[]).unwrap();
        let (processed, dead): (i64, i64) = (row.get(0), row.get(1));
        if processed == EVENTS as i64 - 1 && dead == 1 {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill();

    let poison = store
        .find_by_event_id(POISON)
        .unwrap()
        .expect("the poison row");
    let handled: Vec<(String, i64)> = db
        .query(
            &format!("SELECT event_id, count(*) FROM {table}_handled GROUP BY event_id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let others_dead: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE status <> 'processed' AND event_id <> $1"),
            &[&POISON],
        )
        .unwrap()
        .get(0);
    eprintln!(
        "poison test: rows by status {:?}, group {:?}",
        store.count_by_status().unwrap(),
        redis.group_stats(&stream, GROUP).unwrap()
    );
    eprintln!(
        "poison test: {aborts} aborts; the poison row {:?} after {} counted attempts: {:?}; \
         {} events handled",
        poison.status,
        poison.retry_count,
        poison.error_message,
        handled.len()
    );
    let unsettled: Vec<String> = db
        .query(
            &format!(
                "SELECT event_id || ' ' || status || ' after ' || retry_count || ': ' || \
                 coalesce(error_message, '') FROM {table} WHERE status <> 'processed' \
                 ORDER BY event_id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    eprintln!("poison test: rows not processed: {unsettled:#?}");
    support::drop_inbox_table(&mut db, &table, &["handled"]);
    assert!(
        finished,
        "the poison was not settled, or events were left unprocessed"
    );
    assert_eq!(poison.status, eventflow::EventStatus::DeadLetter);
    assert_eq!(poison.retry_count, MAX_RETRIES, "every attempt counted");
    assert_eq!(poison.error_message.as_deref(), Some(NEVER_FINISHED));
    assert!(
        (MAX_RETRIES as usize..=MAX_RETRIES as usize + 1).contains(&aborts),
        "{aborts} aborts: the first attempt uncounted at most, then max_retries counted"
    );
    assert_eq!(others_dead, 0, "every other event processed");
    assert!(
        handled.iter().all(|(id, _)| id != POISON),
        "the poison's writes never committed"
    );
    let repeated: Vec<_> = handled.iter().filter(|(_, n)| *n != 1).collect();
    assert!(repeated.is_empty(), "handled more than once: {repeated:?}");
    assert_eq!(handled.len(), EVENTS - 1, "every other event handled once");
}
