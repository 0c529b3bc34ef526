//! The `eventflow::testing` helpers: a handler run on one event in a SQLite or PostgreSQL
//! transaction gives what the consumer would record; the outbox rows a transaction enqueued;
//! `ConsumerHandle::wait_idle` on embedded and real services. Also the README's testing
//! example, kept here so it compiles and passes.

mod support;

use eventflow::inbox::Router;
use eventflow::outbox::{self, OutboxTable};
use eventflow::retry::ExponentialBackoff;
use eventflow::store::{InboxStore, PgTransaction, PostgresStore, SqliteStore};
use eventflow::testing::{assert_enqueued, enqueued, run_handler, Outcome, RunError, RunOptions};
use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{Error, Event, HandlerError, HandlerResult, InboxConsumer, InboxRow, ManualClock};
use rusqlite::{Connection, Transaction};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn event(event_type: &str, payload: serde_json::Value) -> Event {
    Event::new(event_type, Uuid::new_v4(), payload)
}

/// A SQLite connection with a `charges` table.
fn sqlite() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch("CREATE TABLE charges (amount INTEGER NOT NULL)")
        .unwrap();
    conn
}

fn charges(tx: &Transaction<'_>) -> Vec<i64> {
    let mut statement = tx
        .prepare("SELECT amount FROM charges ORDER BY rowid")
        .unwrap();
    let amounts = statement.query_map([], |row| row.get(0)).unwrap();
    amounts.collect::<Result<_, _>>().unwrap()
}

/// Writes a charge, then fails as the payload says: after writing, so a failure must undo it.
fn charge(tx: &mut Transaction<'_>, row: &InboxRow) -> HandlerResult {
    let payload = &row.event.payload;
    tx.execute(
        "INSERT INTO charges (amount) VALUES (?1)",
        [payload["amount"].as_i64().unwrap_or(0)],
    )?;
    match payload["then"].as_str() {
        Some("fail") => Err("the payment service is down".into()),
        Some("give up") => Err(HandlerError::give_up("card refused")),
        Some("panic") => panic!("lost the card"),
        _ => Ok(()),
    }
}

/// The README's "Testing your handlers" example, word for word: keep the two the same.
mod readme {
    /// The README's first Rust block after its testing heading is this module's example.
    #[test]
    fn the_readme_shows_this_example() {
        let readme = include_str!("../README.md");
        let section = &readme[readme
            .find("## Testing your handlers")
            .expect("the README's testing section")..];
        let start = section.find("```rust\n").expect("a Rust block") + "```rust\n".len();
        let shown = &section[start..start + section[start..].find("```").unwrap()];
        let source = include_str!("testing_helpers.rs");
        let begin = source.find("    // README example start\n").unwrap()
            + "    // README example start\n".len();
        let end = source.find("    // README example end\n").unwrap();
        let kept: String = source[begin..end]
            .lines()
            .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
            .collect();
        assert!(kept.contains("fn charge("), "the markers moved: {kept}");
        assert_eq!(shown, kept, "update the README's testing example");
    }

    // README example start
    use eventflow::testing::{run_handler, Outcome, RunOptions};
    use eventflow::{Clock, Event, HandlerError, HandlerResult, InboxRow, ManualClock};
    use rusqlite::{Connection, Transaction};
    use serde_json::json;
    use std::time::Duration;

    fn charge(tx: &mut Transaction<'_>, row: &InboxRow) -> HandlerResult {
        let amount = row.event.payload["amount"]
            .as_i64()
            .ok_or_else(|| HandlerError::give_up("no amount"))?;
        tx.execute("INSERT INTO charges (amount) VALUES (?1)", [amount])?;
        Ok(())
    }

    #[test]
    fn a_charge_is_written_a_bad_one_dead_lettered_a_database_error_retried() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute("CREATE TABLE charges (amount INTEGER)", [])
            .unwrap();
        let mut tx = conn.transaction().unwrap();
        let clock = ManualClock::starting_now();
        let options = RunOptions::new().clock(clock.clone());
        let event = |payload| Event::new("ChargeRequested", uuid::Uuid::new_v4(), payload);

        let ok = run_handler(&charge, &mut tx, &event(json!({"amount": 5})), &options).unwrap();
        assert_eq!(ok, Outcome::Processed);
        let bad = run_handler(&charge, &mut tx, &event(json!({})), &options).unwrap();
        assert!(matches!(bad, Outcome::DeadLetter { .. }) && bad.reason() == Some("no amount"));
        tx.execute("DROP TABLE charges", []).unwrap(); // the database fails: retried in a minute
        let retry = run_handler(&charge, &mut tx, &event(json!({"amount": 5})), &options).unwrap();
        let in_a_minute = clock.now() + Duration::from_secs(60);
        assert!(
            matches!(retry, Outcome::Retry { next_attempt_at, .. } if next_attempt_at == in_a_minute)
        );
    }
    // README example end
}

// run_handler on SQLite

#[test]
fn a_processed_event_keeps_its_writes_in_the_transaction() {
    let mut conn = sqlite();
    let mut tx = conn.transaction().unwrap();
    let outcome = run_handler(
        &charge,
        &mut tx,
        &event("ChargeRequested", json!({"amount": 5})),
        &RunOptions::new(),
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Processed);
    assert!(outcome.is_processed() && outcome.reason().is_none());
    assert_eq!(charges(&tx), [5]);
}

#[test]
fn a_failure_is_rolled_back_and_retried_on_the_policy_schedule_under_the_clock() {
    let mut conn = sqlite();
    let mut tx = conn.transaction().unwrap();
    let clock = ManualClock::starting_now();
    let now = eventflow::Clock::now(&clock);
    let failing = event("ChargeRequested", json!({"amount": 7, "then": "fail"}));
    let options = RunOptions::new().clock(clock.clone());

    let retry_at = |outcome: Outcome| match outcome {
        Outcome::Retry {
            next_attempt_at,
            retry_count,
            reason,
        } => {
            assert_eq!(reason, "the payment service is down");
            (next_attempt_at - now, retry_count)
        }
        other => panic!("expected a retry, got {other:?}"),
    };
    let first = run_handler(&charge, &mut tx, &failing, &options).unwrap();
    assert_eq!(retry_at(first), (chrono::Duration::seconds(60), 1));
    // The second failure waits twice as long; jitter lengthens it as the consumer's would.
    let second = run_handler(
        &charge,
        &mut tx,
        &failing,
        &options.clone().retry_count(1).jitter(0.5),
    )
    .unwrap();
    assert_eq!(retry_at(second), (chrono::Duration::seconds(126), 2));
    // A policy of the application's own.
    let quick = ExponentialBackoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(30),
        jitter_ratio: 0.0,
    };
    let third = run_handler(
        &charge,
        &mut tx,
        &failing,
        &options.clone().retry_policy(quick).retry_count(1),
    )
    .unwrap();
    assert_eq!(retry_at(third), (chrono::Duration::seconds(10), 2));
    // Every failed run's write was undone.
    assert!(charges(&tx).is_empty(), "{:?}", charges(&tx));
}

#[test]
fn the_last_attempt_and_a_give_up_are_dead_letters_and_a_panic_is_a_failure() {
    let mut conn = sqlite();
    let mut tx = conn.transaction().unwrap();
    let failing = event("ChargeRequested", json!({"amount": 7, "then": "fail"}));
    let last = run_handler(
        &charge,
        &mut tx,
        &failing,
        &RunOptions::new().retry_count(2),
    );
    assert_eq!(
        last.unwrap(),
        Outcome::DeadLetter {
            reason: "the payment service is down".into(),
            retry_count: 3,
        }
    );
    // max_retries 0 retries for ever.
    let forever = RunOptions::new().max_retries(0).retry_count(40);
    let outcome = run_handler(&charge, &mut tx, &failing, &forever).unwrap();
    assert!(matches!(
        outcome,
        Outcome::Retry {
            retry_count: 41,
            ..
        }
    ));

    let refused = event("ChargeRequested", json!({"amount": 7, "then": "give up"}));
    let outcome = run_handler(&charge, &mut tx, &refused, &RunOptions::new()).unwrap();
    assert_eq!(
        outcome,
        Outcome::DeadLetter {
            reason: "card refused".into(),
            retry_count: 1,
        }
    );

    let panics = event("ChargeRequested", json!({"amount": 7, "then": "panic"}));
    let outcome = run_handler(&charge, &mut tx, &panics, &RunOptions::new()).unwrap();
    assert!(matches!(outcome, Outcome::Retry { retry_count: 1, .. }));
    assert_eq!(outcome.reason(), Some("handler panicked: lost the card"));
    assert!(charges(&tx).is_empty());
}

#[test]
fn a_router_runs_the_handler_of_the_type_and_dead_letters_unknown_types() {
    #[derive(serde::Deserialize)]
    struct Refund {
        amount: i64,
    }
    let router = Router::<SqliteStore>::new()
        .on("ChargeRequested", charge)
        .on_typed("RefundRequested", |tx, _row, refund: Refund| {
            tx.execute("INSERT INTO charges (amount) VALUES (?1)", [-refund.amount])?;
            Ok(())
        });
    let mut conn = sqlite();
    let mut tx = conn.transaction().unwrap();
    let options = RunOptions::new();

    let charged = event("ChargeRequested", json!({"amount": 3}));
    assert!(run_handler(&router, &mut tx, &charged, &options)
        .unwrap()
        .is_processed());
    let refunded = event("RefundRequested", json!({"amount": 2}));
    assert!(run_handler(&router, &mut tx, &refunded, &options)
        .unwrap()
        .is_processed());
    assert_eq!(charges(&tx), [3, -2]);

    let unknown = event("ChargeDisputed", json!({}));
    assert_eq!(
        run_handler(&router, &mut tx, &unknown, &options).unwrap(),
        Outcome::DeadLetter {
            reason: "no handler for event type ChargeDisputed".into(),
            retry_count: 1,
        }
    );
    let malformed = event("RefundRequested", json!({"amount": "two"}));
    let outcome = run_handler(&router, &mut tx, &malformed, &options).unwrap();
    let reason = outcome.reason().unwrap();
    assert!(
        matches!(outcome, Outcome::DeadLetter { .. })
            && reason.starts_with("payload of event type RefundRequested is not a "),
        "{outcome:?}"
    );
}

#[test]
fn bad_options_and_events_are_refused_with_what_is_wrong() {
    let mut conn = sqlite();
    let mut tx = conn.transaction().unwrap();
    let fine = event("ChargeRequested", json!({"amount": 1}));
    let mut refused = |options: RunOptions| match run_handler(&charge, &mut tx, &fine, &options) {
        Err(RunError::InvalidOption { option, .. }) => option,
        other => panic!("expected an invalid option, got {other:?}"),
    };
    assert_eq!(refused(RunOptions::new().jitter(1.0)), "jitter");
    assert_eq!(refused(RunOptions::new().jitter(f64::NAN)), "jitter");
    assert_eq!(refused(RunOptions::new().retry_count(-1)), "retry_count");
    assert_eq!(refused(RunOptions::new().max_retries(-1)), "max_retries");
    assert_eq!(refused(RunOptions::new().stream(" ")), "stream");

    let mut nameless = fine.clone();
    nameless.event_id = String::new();
    let error = run_handler(&charge, &mut tx, &nameless, &RunOptions::new()).unwrap_err();
    assert!(matches!(error, RunError::InvalidEvent(_)), "{error}");
    assert!(error.to_string().contains("event_id"), "{error}");
    assert!(charges(&tx).is_empty());
}

// The outbox on SQLite

/// A SQLite connection to a file with the outbox table migrated, and the file's directory.
fn sqlite_with_outbox() -> (Connection, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(support::unique_name("eventflow_testing"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.db");
    let relay_side = eventflow::store::outbox::SqliteOutbox::open(&path).unwrap();
    eventflow::store::outbox::OutboxStore::migrate(&relay_side).unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE charges (amount INTEGER NOT NULL)")
        .unwrap();
    (conn, dir)
}

/// A handler that records the charge and emits an `InvoiceIssued` event through the outbox.
fn invoice(tx: &mut Transaction<'_>, row: &InboxRow) -> HandlerResult {
    charge(tx, row)?;
    let amount = row.event.payload["amount"].clone();
    let issued = Event::new(
        "InvoiceIssued",
        row.event.aggregate_id,
        json!({ "amount": amount }),
    );
    outbox::enqueue(tx, "invoices", &issued)?;
    Ok(())
}

#[test]
fn what_a_handler_enqueued_is_listed_and_asserted_and_a_failure_enqueues_nothing() {
    let (mut conn, dir) = sqlite_with_outbox();
    let mut tx = conn.transaction().unwrap();
    let ok = event("ChargeRequested", json!({"amount": 9}));
    assert!(run_handler(&invoice, &mut tx, &ok, &RunOptions::new())
        .unwrap()
        .is_processed());
    let row = assert_enqueued(&mut tx, "event_outbox", "invoices", "InvoiceIssued");
    assert_eq!(row.event.payload, json!({"amount": 9}));
    assert_eq!(row.event.aggregate_id, ok.aggregate_id);

    let failing = event("ChargeRequested", json!({"amount": 4, "then": "fail"}));
    let outcome = run_handler(&invoice, &mut tx, &failing, &RunOptions::new()).unwrap();
    assert!(matches!(outcome, Outcome::Retry { .. }));
    // Failing before it enqueued: still one row.
    assert_eq!(enqueued(&mut tx, "event_outbox").unwrap().len(), 1);

    // A table name that is not one is refused, not interpolated.
    assert!(enqueued(&mut tx, "event_outbox; DROP TABLE charges").is_err());
    drop(tx);
    drop(conn);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn assert_enqueued_names_what_the_outbox_holds_when_it_fails() {
    let (mut conn, dir) = sqlite_with_outbox();
    let mut tx = conn.transaction().unwrap();
    let issued = event("InvoiceIssued", json!({}));
    outbox::enqueue(&mut tx, "invoices", &issued).unwrap();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_enqueued(&mut tx, "event_outbox", "invoices", "InvoiceVoided")
    }))
    .unwrap_err();
    let message = failed.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("expected one InvoiceVoided event enqueued for stream invoices, found 0")
            && message.contains(&format!(
                "InvoiceIssued -> invoices (event_id {})",
                issued.event_id
            )),
        "{message}"
    );
    drop(tx);
    drop(conn);
    std::fs::remove_dir_all(dir).unwrap();
}

// PostgreSQL

/// Charges into a temporary table (private to the test's session), then fails as told.
fn pg_charge(tx: &mut PgTransaction<'_>, row: &InboxRow) -> HandlerResult {
    let amount = row.event.payload["amount"].as_i64().unwrap_or(0);
    tx.execute("INSERT INTO charges (amount) VALUES ($1)", &[&amount])?;
    match row.event.payload["then"].as_str() {
        Some("fail") => Err("the payment service is down".into()),
        // A statement that fails, its error swallowed: PostgreSQL aborts the transaction.
        Some("swallow") => {
            let _ = tx.execute("SELECT 1/0", &[]);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[test]
fn run_handler_on_postgres_keeps_or_rolls_back_as_the_consumer_does() {
    if !support::postgres_available("run_handler_on_postgres") {
        return;
    }
    let table = support::unique_name("testing_pg");
    let store = PostgresStore::builder(support::postgres_url())
        .table(&table)
        .pool_size(1)
        .build()
        .unwrap();
    let mut conn = store.pool().get().unwrap();
    let mut tx = conn.transaction().unwrap();
    tx.batch_execute("CREATE TEMP TABLE charges (amount bigint NOT NULL) ON COMMIT DROP")
        .unwrap();
    let sum = |tx: &mut PgTransaction<'_>| -> (i64, i64) {
        let row = tx
            .query_one(
                "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM charges",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let options = RunOptions::new();

    let ok = event("ChargeRequested", json!({"amount": 5}));
    assert!(run_handler(&pg_charge, &mut tx, &ok, &options)
        .unwrap()
        .is_processed());
    let failing = event("ChargeRequested", json!({"amount": 7, "then": "fail"}));
    let outcome = run_handler(&pg_charge, &mut tx, &failing, &options).unwrap();
    assert_eq!(outcome.reason(), Some("the payment service is down"));
    let swallowing = event("ChargeRequested", json!({"amount": 11, "then": "swallow"}));
    let outcome = run_handler(&pg_charge, &mut tx, &swallowing, &options).unwrap();
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. }
            if reason.contains("a statement it ran had failed, aborting its transaction")),
        "{outcome:?}"
    );
    // Both failures were undone and the transaction is usable again.
    assert_eq!(sum(&mut tx), (1, 5));

    // A router over the PostgreSQL store.
    let router = Router::<PostgresStore>::new().on("ChargeRequested", pg_charge);
    let unknown = event("ChargeDisputed", json!({}));
    assert!(matches!(
        run_handler(&router, &mut tx, &unknown, &options).unwrap(),
        Outcome::DeadLetter { .. }
    ));
    assert!(run_handler(&router, &mut tx, &ok, &options)
        .unwrap()
        .is_processed());
    assert_eq!(sum(&mut tx), (2, 10));
}

#[test]
fn enqueued_on_postgres_sees_the_transaction_own_rows_only_until_it_commits() {
    if !support::postgres_available("enqueued_on_postgres") {
        return;
    }
    let table = support::unique_name("testing_outbox");
    let relay_side = eventflow::store::outbox::PostgresOutbox::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    eventflow::store::outbox::OutboxStore::migrate(&relay_side).unwrap();
    let outbox_table = OutboxTable::named(&table).unwrap();
    let mut client = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    let mut other = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();

    let mut tx = client.transaction().unwrap();
    let first = event("InvoiceIssued", json!({"n": 1}));
    let second = event("InvoiceVoided", json!({"n": 2}));
    outbox_table.enqueue(&mut tx, "invoices", &first).unwrap();
    outbox_table.enqueue(&mut tx, "invoices", &second).unwrap();
    let rows = enqueued(&mut tx, &table).unwrap();
    let types: Vec<&str> = rows.iter().map(|r| r.event.event_type.as_str()).collect();
    assert_eq!(types, ["InvoiceIssued", "InvoiceVoided"]);
    assert_eq!(
        assert_enqueued(&mut tx, &table, "invoices", "InvoiceVoided").event,
        second
    );
    // Another session sees nothing until the commit.
    assert!(enqueued(&mut other, &table).unwrap().is_empty());
    tx.commit().unwrap();
    assert_eq!(enqueued(&mut other, &table).unwrap().len(), 2);
    other.batch_execute(&format!("DROP TABLE {table}")).unwrap();
    other
        .execute(
            "DELETE FROM eventflow_migrations WHERE target = 'outbox:' || $1",
            &[&table],
        )
        .unwrap();
}

// wait_idle

fn embedded_consumer(
    stream: &MemoryStream,
    clock: &ManualClock,
    handler: impl Fn(&mut Transaction<'_>, &InboxRow) -> HandlerResult + Send + Sync + 'static,
) -> eventflow::ConsumerHandle {
    let store = SqliteStore::open_in_memory().unwrap();
    store.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE charges (amount INTEGER NOT NULL)")
            .unwrap()
    });
    InboxConsumer::builder()
        .transport(stream.clone())
        .store(Arc::new(store))
        .stream("payments")
        .group("billing")
        .clock(clock.clone())
        // Longer than any test: only wait_idle's own sweep can find a retry in time.
        .poll_interval(Duration::from_secs(600))
        .handler(handler)
        .build()
        .unwrap()
        .start()
        .unwrap()
}

fn publish(stream: &impl Transport, name: &str, event: &Event) {
    stream.publish(name, event.to_entry_fields()).unwrap();
}

#[test]
fn wait_idle_returns_once_everything_published_is_handled() {
    let stream = MemoryStream::new();
    let handle = embedded_consumer(&stream, &ManualClock::starting_now(), charge);
    for amount in 0..50 {
        publish(
            &stream,
            "payments",
            &event("ChargeRequested", json!({ "amount": amount })),
        );
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 50);
    // Idle stays idle.
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().received, 50);
    handle.shutdown(WAIT).unwrap();
    assert!(matches!(handle.wait_idle(WAIT), Err(Error::NotRunning)));
}

#[test]
fn wait_idle_handles_the_retries_a_clock_advance_makes_due_without_waiting_for_a_poll() {
    let stream = MemoryStream::new();
    let clock = ManualClock::starting_now();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let handle = embedded_consumer(&stream, &clock, move |_tx, _row| {
        // Fails twice, then succeeds.
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Err("not yet".into()),
            _ => Ok(()),
        }
    });
    publish(&stream, "payments", &event("ChargeRequested", json!({})));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!((handle.stats().failed, handle.stats().processed), (1, 0));

    // Not due yet: waiting changes nothing.
    clock.advance(Duration::from_secs(30));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_secs(40)); // 70 s: past 60 s plus jitter
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().failed, 2);
    clock.advance(Duration::from_secs(140));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    handle.shutdown(WAIT).unwrap();
}

#[test]
fn wait_idle_times_out_naming_what_is_still_going_on() {
    let stream = MemoryStream::new();
    let (release, held) = crossbeam_channel::bounded::<()>(0);
    let held = parking_lot::Mutex::new(held);
    let handle = embedded_consumer(&stream, &ManualClock::starting_now(), move |_tx, _row| {
        let _ = held.lock().recv();
        Ok(())
    });
    publish(&stream, "payments", &event("ChargeRequested", json!({})));
    match handle.wait_idle(Duration::from_millis(300)) {
        Err(error @ Error::IdleTimedOut { .. }) => {
            assert!(
                error.to_string().contains("not idle within 300ms"),
                "{error}"
            )
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(release); // the handler returns
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 1);
    handle.shutdown(WAIT).unwrap();
}

#[test]
fn wait_idle_on_redis_and_postgres() {
    if !support::postgres_available("wait_idle_on_redis_and_postgres")
        || !support::redis_available("wait_idle_on_redis_and_postgres")
    {
        return;
    }
    let table = support::unique_name("testing_idle");
    let stream_name = support::unique_name("testing_idle_stream");
    let store = PostgresStore::builder(support::postgres_url())
        .table(&table)
        .build()
        .unwrap();
    store.migrate().unwrap();
    let redis = RedisStreams::connect(&support::redis_url()).unwrap();
    let handle = InboxConsumer::builder()
        .transport(RedisStreams::connect(&support::redis_url()).unwrap())
        .store(Arc::new(store))
        .stream(&stream_name)
        .group("billing")
        .poll_interval(Duration::from_secs(600))
        .handler(|_tx: &mut PgTransaction<'_>, _row: &InboxRow| Ok(()))
        .build()
        .unwrap()
        .start()
        .unwrap();
    for n in 0..200 {
        publish(
            &redis,
            &stream_name,
            &event("ChargeRequested", json!({ "n": n })),
        );
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 200);
    handle.shutdown(WAIT).unwrap();
    let mut db = postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
    support::drop_inbox_table(&mut db, &table, &[]);
    let _: () = redis::cmd("DEL")
        .arg(&stream_name)
        .query(
            &mut redis::Client::open(support::redis_url().as_str())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
}
