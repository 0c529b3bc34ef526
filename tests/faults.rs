//! Peers that stop without dying, and handlers that hang: the session limits and the handler
//! time limit must keep the rest of the fleet going, and nothing may be handled twice.
//!
//! The consumer processes are this test binary run again with `EVENTFLOW_FAULT_CHILD` set.

mod support;

use eventflow::store::SessionLimits;
use eventflow::transport::RedisStreams;
use eventflow::{ExponentialBackoff, HandlerResult, InboxConsumer};
use postgres::{Client, NoTls};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::child::{report_until_killed, ChildProcess};
use support::pipeline::{publish, Pipeline};
use support::{postgres_url, redis_url, unique_name, wait_until};

const GROUP: &str = "faults";

/// The limits of the stopped-peer test's consumers: short, so the test takes seconds.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);
const LOCK_TIMEOUT: Duration = Duration::from_millis(500);
const RECLAIM_IDLE: Duration = Duration::from_secs(1);
const RECLAIM_INTERVAL: Duration = Duration::from_millis(300);
const ORPHAN_AFTER: Duration = Duration::from_secs(1);
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// How long the insert trigger sleeps on a `slow-` event: long enough to stop its reader
/// inside the storing transaction.
const TRIGGER_SLEEP: Duration = Duration::from_secs(2);
/// How long a `hold-` event's handler runs: its worker sits in an open transaction meanwhile.
const HOLD: Duration = Duration::from_millis(300);

/// `url` with an `application_name`, so the test can find a process's sessions.
fn with_application_name(url: &str, name: &str) -> String {
    if url.contains("://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

fn fast_retries() -> ExponentialBackoff {
    ExponentialBackoff {
        initial: RETRY_DELAY,
        max: RETRY_DELAY,
        jitter_ratio: 0.0,
    }
}

/// Not a test: a consumer process of `a_stopped_peer_does_not_wedge_the_others`.
#[test]
#[ignore = "a child process of a_stopped_peer_does_not_wedge_the_others"]
fn fault_child() {
    let Ok(stream) = std::env::var("EVENTFLOW_FAULT_STREAM") else {
        return;
    };
    let table = std::env::var("EVENTFLOW_FAULT_TABLE").unwrap();
    let name = std::env::var("EVENTFLOW_FAULT_NAME").unwrap();
    let insert = format!("INSERT INTO {table}_handled (event_id, process) VALUES ($1, $2)");
    let process = name.clone();
    let limits = SessionLimits::default()
        .idle_in_transaction_timeout(IDLE_IN_TRANSACTION)
        .lock_timeout(LOCK_TIMEOUT)
        .statement_timeout(TRIGGER_SLEEP * 3);
    let handle = InboxConsumer::builder()
        .redis(redis_url())
        .postgres(with_application_name(&postgres_url(), &name))
        .table(&table)
        .stream(stream)
        .group(GROUP)
        .consumer_prefix(&name)
        .workers(3)
        .read_batch(50)
        .claim_batch(8)
        .block(Duration::from_millis(200))
        .reclaim_idle(RECLAIM_IDLE)
        .reclaim_interval(RECLAIM_INTERVAL)
        .poll_interval(Duration::from_millis(100))
        .orphan_after(ORPHAN_AFTER)
        .retry_policy(fast_retries())
        .max_attempts(0)
        .session_limits(limits)
        .handler_timeout(IDLE_IN_TRANSACTION)
        .handler(move |tx, row| -> HandlerResult {
            tx.execute(&insert, &[&row.event.event_id, &process])?;
            if row.event.event_id.starts_with("hold-") {
                std::thread::sleep(HOLD);
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    report_until_killed(&format!("child {name}"), Duration::from_millis(500), || {
        handle.stats()
    })
}

fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// The sessions of process `name`: (state, wait event) each.
fn sessions(db: &mut Client, name: &str) -> Vec<(String, Option<String>)> {
    db.query(
        "SELECT coalesce(state, ''), wait_event FROM pg_stat_activity WHERE application_name = $1",
        &[&name],
    )
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Whether process `name` is inside a storing transaction stopped in the trigger's sleep, and
/// inside a worker transaction (a handler running for a claimed batch).
fn holds_both(sessions: &[(String, Option<String>)]) -> bool {
    let storing = sessions
        .iter()
        .any(|(_, wait)| wait.as_deref() == Some("PgSleep"));
    let handling = sessions
        .iter()
        .any(|(state, _)| state == "idle in transaction");
    storing && handling
}

#[test]
fn a_stopped_peer_does_not_wedge_the_others() {
    let test = "a_stopped_peer_does_not_wedge_the_others";
    if !(support::postgres_available(test) && support::redis_available(test)) {
        return;
    }
    let Pipeline {
        table,
        stream,
        mut db,
        redis,
        ..
    } = Pipeline::new("stopped", GROUP);
    let sleep_seconds = TRIGGER_SLEEP.as_secs_f64();
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (event_id TEXT NOT NULL, process TEXT NOT NULL);
         CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.event_id LIKE 'slow-%' THEN PERFORM pg_sleep({sleep_seconds}); END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER {table}_slow BEFORE INSERT ON {table}
           FOR EACH ROW EXECUTE FUNCTION {table}_slow();"
    ))
    .unwrap();

    let names = [format!("{table}_a"), format!("{table}_b")];
    let children: Vec<ChildProcess> = names
        .iter()
        .map(|name| {
            ChildProcess::spawn(
                "fault_child",
                &[
                    ("EVENTFLOW_FAULT_STREAM", stream.as_str()),
                    ("EVENTFLOW_FAULT_TABLE", table.as_str()),
                    ("EVENTFLOW_FAULT_NAME", name.as_str()),
                ],
            )
        })
        .collect();

    // Handlers that hold their transactions open, and one event whose storing stalls in the
    // trigger: stop the process that stores it while it also runs a handler.
    let mut published = 0;
    let mut holds = 0;
    let mut stopped = None;
    for attempt in 0..10 {
        publish(
            &redis,
            &stream,
            (0..60).map(|i| format!("hold-{attempt}-{i}")),
        );
        publish(&redis, &stream, [format!("slow-{attempt}")]);
        published += 61;
        holds += 60;
        let found = wait_until(Duration::from_secs(10), || {
            names
                .iter()
                .any(|name| holds_both(&sessions(&mut db, name)))
        });
        if !found {
            continue;
        }
        let Some(index) = names
            .iter()
            .position(|name| holds_both(&sessions(&mut db, name)))
        else {
            continue;
        };
        children[index].signal("STOP");
        // Stopped in time only if it still holds both now that it cannot move.
        std::thread::sleep(Duration::from_millis(50));
        if holds_both(&sessions(&mut db, &names[index])) {
            stopped = Some(index);
            break;
        }
        children[index].signal("CONT");
    }
    let stopped = stopped.expect("never caught a process storing and handling at once");
    let survivor = 1 - stopped;
    let stopped_at = Instant::now();

    publish(&redis, &stream, (0..2_000).map(|i| format!("more-{i}")));
    published += 2_000;

    // The survivor waits out: the stopped peer's entries going stale (reclaim), its sessions
    // ending (idle in transaction), its rows becoming orphans, a retry, and the two trigger
    // sleeps its own storing of `slow-` events takes; plus the work itself.
    let recovery = RECLAIM_IDLE
        + RECLAIM_INTERVAL * 2
        + IDLE_IN_TRANSACTION
        + LOCK_TIMEOUT * 4
        + ORPHAN_AFTER
        + RETRY_DELAY
        + TRIGGER_SLEEP * 2;
    // Every `hold-` event on the survivor's three workers, and a margin for the rest.
    let work = HOLD * holds / 3 + Duration::from_secs(20);
    let handled_distinct = format!("SELECT count(DISTINCT event_id) FROM {table}_handled");
    let processed = format!("SELECT count(*) FROM {table} WHERE status = 'processed'");
    let finished = wait_until(recovery + work, || {
        count(&mut db, &processed) == published as i64
    });
    let took = stopped_at.elapsed();
    let stopped_sessions = sessions(&mut db, &names[stopped]);
    let survivor_sessions = sessions(&mut db, &names[survivor]).len();

    // Resumed, the stopped process finds its sessions ended: its late commits fail.
    children[stopped].signal("CONT");
    std::thread::sleep(TRIGGER_SLEEP + HOLD * 8 + Duration::from_secs(2));
    let row = db
        .query_one(
            &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}_handled"),
            &[],
        )
        .unwrap();
    let (handled, distinct): (i64, i64) = (row.get(0), row.get(1));
    let by_stopped = count(
        &mut db,
        &format!(
            "SELECT count(*) FROM {table}_handled WHERE process = '{}'",
            names[stopped]
        ),
    );
    drop(children);
    support::drop_inbox_table(&mut db, &table, &["handled"]);
    let _ = db.batch_execute(&format!("DROP FUNCTION IF EXISTS {table}_slow()"));
    eprintln!(
        "stopped-peer test: {published} events, the survivor finished in {took:?} \
         (bound {:?}); {handled} handled, {distinct} distinct, {by_stopped} by the stopped process",
        recovery + work
    );
    assert!(survivor_sessions > 0, "the survivor had no sessions");
    assert!(
        finished,
        "the survivor did not finish within {:?} while its peer was stopped; handled {}",
        recovery + work,
        count(&mut db, &handled_distinct)
    );
    // Its sessions inside a transaction were ended; pooled connections idle outside one hold
    // no locks and may stay.
    assert!(
        stopped_sessions.iter().all(|(state, _)| state == "idle"),
        "the stopped process's transactions were not ended by the server: {stopped_sessions:?}"
    );
    assert_eq!(
        (handled, distinct),
        (published as i64, published as i64),
        "every event handled exactly once"
    );
}

/// A handler stuck in its own code (not in a statement) past the handler time limit: health
/// names it and says not live, the server ends its transaction, and its batch goes to the
/// other worker; released, it cannot commit, so nothing is handled twice.
#[test]
fn a_hung_handler_is_reported_and_its_rows_go_to_other_workers() {
    let test = "a_hung_handler_is_reported_and_its_rows_go_to_other_workers";
    if !(support::postgres_available(test) && support::redis_available(test)) {
        return;
    }
    let table = unique_name("hung");
    let stream = unique_name("hung_stream");
    let mut db = Client::connect(&postgres_url(), NoTls).unwrap();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
    let stuck_once = Arc::new(AtomicBool::new(false));
    let insert = format!("INSERT INTO {table}_handled (event_id) VALUES ($1)");
    let limit = Duration::from_millis(500);
    let handle = {
        let stuck_once = stuck_once.clone();
        InboxConsumer::builder()
            .redis(redis_url())
            .postgres(postgres_url())
            .table(&table)
            .stream(&stream)
            .group(GROUP)
            .workers(2)
            .readers(1)
            .claim_batch(10)
            .poll_interval(Duration::from_millis(50))
            .orphan_after(Duration::from_millis(200))
            .retry_policy(fast_retries())
            .max_attempts(0)
            .handler_timeout(limit)
            .handler(move |tx, row| -> HandlerResult {
                tx.execute(&insert, &[&row.event.event_id])?;
                if row.event.event_id == "e-stuck" && !stuck_once.swap(true, Ordering::SeqCst) {
                    let _ = release_rx.recv();
                }
                Ok(())
            })
            .build()
            .unwrap()
    };
    // The ledger exists before the consumer starts (it migrates its own table at start).
    db.batch_execute(&format!(
        "CREATE TABLE {table}_handled (event_id TEXT NOT NULL)"
    ))
    .unwrap();
    let handle = handle.start().unwrap();
    let ids: Vec<String> = std::iter::once("e-stuck".to_string())
        .chain((0..40).map(|i| format!("e-{i}")))
        .collect();
    publish(&redis, &stream, ids.clone());

    let reported = wait_until(Duration::from_secs(20), || {
        !handle.health().hung_handlers.is_empty()
    });
    let health = handle.health();
    let all_done = wait_until(Duration::from_secs(30), || {
        handle.stats().processed >= ids.len() as u64
    });
    let before_release = handle.stats();
    release_tx.send(()).unwrap();
    let live_again = wait_until(Duration::from_secs(10), || handle.health().is_live());
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    let row = db
        .query_one(
            &format!("SELECT count(*), count(DISTINCT event_id) FROM {table}_handled"),
            &[],
        )
        .unwrap();
    let (handled, distinct): (i64, i64) = (row.get(0), row.get(1));
    support::drop_inbox_table(&mut db, &table, &["handled"]);
    if let Ok(mut conn) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&stream).query(&mut conn);
    }

    assert!(reported, "health never reported the hung handler");
    assert!(
        !health.is_live(),
        "a hung handler leaves the consumer not live"
    );
    let hung = &health.hung_handlers[0];
    assert_eq!(hung.event_id, "e-stuck");
    assert!(hung.worker.starts_with("eventflow-worker-"), "{hung:?}");
    assert!(hung.running_for > limit, "{hung:?}");
    assert!(
        all_done,
        "the stuck worker's rows did not go to the other worker: {before_release:?}"
    );
    assert!(
        live_again,
        "the consumer stayed not live after the handler returned"
    );
    assert_eq!(
        (handled, distinct),
        (ids.len() as i64, ids.len() as i64),
        "every event handled exactly once: {report:?}"
    );
}
