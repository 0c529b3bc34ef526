//! The `eventflow` command, run as a process against real PostgreSQL and Redis (and a SQLite
//! file): its output, human and `--json`, and its exit codes. Each test counts what happened
//! to the events it made.

mod support;

use chrono::{DateTime, Utc};
use eventflow::admin::parse_event_json;
use eventflow::outbox::OutboxTable;
use eventflow::store::outbox::{
    ClaimDue, Delivery, OutboxStatus, OutboxStore, PostgresOutbox, RowOutcome, SqliteOutbox,
};
use eventflow::store::{
    AfterDeadLetter, Claim, ClaimParams, Failure, InboxStore, PostgresStore, ReceivedBatch,
    ReceivedEvent, RowHandler, SqliteStore, Verdict,
};
use eventflow::transport::partition::{partition_of, partition_stream};
use eventflow::transport::{MemoryStream, RedisStreams, Transport};
use eventflow::{
    ConsumerHandle, Event, EventStatus, HandlerError, HandlerResult, InboxConsumer, InboxRow,
    SystemClock,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{postgres_url, redis_url, unique_name, wait_until};

const WAIT: Duration = Duration::from_secs(30);
const AGGREGATE: &str = "7c8f0a6a-7b7c-4c74-9cfb-2e2e2b9b1d33";

/// What a run of the command did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The `error` object a `--json` run printed on standard error, after checking its shape: a
/// kind, the exit code the process ended with, a message and a list of causes, and nothing on
/// standard output.
fn json_error(run: &Run) -> Value {
    let parsed: Value = serde_json::from_str(&run.stderr)
        .unwrap_or_else(|error| panic!("stderr not JSON ({error}): {}", run.stderr));
    let error = &parsed["error"];
    assert!(error["kind"].is_string(), "{parsed}");
    assert_eq!(error["exit_code"], run.code, "{parsed}");
    assert!(error["message"].is_string(), "{parsed}");
    assert!(error["causes"].is_array(), "{parsed}");
    assert_eq!(parsed.as_object().unwrap().len(), 1, "{parsed}");
    assert_eq!(error.as_object().unwrap().len(), 4, "{parsed}");
    assert_eq!(run.stdout, "", "nothing on stdout");
    error.clone()
}

/// Runs `eventflow` with `args` and only the environment given (no EVENTFLOW_* leaks in).
fn eventflow(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventflow"));
    for (name, _) in std::env::vars() {
        if name.starts_with("EVENTFLOW_") {
            command.env_remove(name);
        }
    }
    let output = command
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run eventflow");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A PostgreSQL inbox table and a Redis stream of the test's own, removed at the end, and a
/// consumer of them whose handler fails until `fixed` is set.
struct Setup {
    table: String,
    /// Never created: the outbox is not installed.
    outbox_table: String,
    stream: String,
    group: String,
    store: Arc<PostgresStore>,
    fixed: Arc<AtomicBool>,
    handled: Arc<AtomicUsize>,
}

impl Setup {
    fn new(test: &str) -> Option<Self> {
        if !support::postgres_available(test) || !support::redis_available(test) {
            return None;
        }
        let table = unique_name("cli");
        let store = PostgresStore::builder(postgres_url())
            .table(&table)
            .pool_size(8)
            .build()
            .unwrap();
        Some(Self {
            stream: unique_name("cli_stream"),
            outbox_table: unique_name("cli_no_outbox"),
            group: "billing".into(),
            table,
            store: Arc::new(store),
            fixed: Arc::new(AtomicBool::new(false)),
            handled: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("EVENTFLOW_DATABASE_URL", postgres_url()),
            ("EVENTFLOW_REDIS_URL", redis_url()),
            ("EVENTFLOW_TABLE", self.table.clone()),
            ("EVENTFLOW_OUTBOX_TABLE", self.outbox_table.clone()),
            ("EVENTFLOW_STREAM", self.stream.clone()),
            ("EVENTFLOW_GROUP", self.group.clone()),
        ]
    }

    fn run(&self, args: &[&str]) -> Run {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        eventflow(&env, args)
    }

    /// A consumer whose handler fails (one attempt, then dead letter) until `fixed`.
    fn consumer(&self) -> ConsumerHandle {
        let fixed = self.fixed.clone();
        let handled = self.handled.clone();
        InboxConsumer::builder()
            .redis(redis_url())
            .store(self.store.clone())
            .stream(&self.stream)
            .group(&self.group)
            .readers(1)
            .workers(2)
            .block(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(50))
            .orphan_after(Duration::ZERO)
            .max_attempts(1)
            .handler(move |_tx, row| -> HandlerResult {
                if row.event.event_type == "Broken" && !fixed.load(Ordering::SeqCst) {
                    return Err("the billing service is down".into());
                }
                handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .build()
            .unwrap()
            .start()
            .unwrap()
    }

    fn count(&self, status: EventStatus) -> u64 {
        self.store.count_by_status().unwrap().get(status)
    }

    fn sql(&self, sql: &str) {
        let mut conn = self.store.pool().get().unwrap();
        conn.batch_execute(&sql.replace("{t}", &self.table))
            .unwrap();
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(mut conn) = self.store.pool().get() {
            let t = &self.table;
            let _ = conn.batch_execute(&format!("DROP TABLE IF EXISTS {t}_quarantine, {t}"));
            let _ = conn.execute(
                "DELETE FROM eventflow_migrations WHERE target = $1",
                &[&format!("inbox:{t}")],
            );
        }
        if let Ok(client) = redis::Client::open(redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&self.stream).query(&mut conn);
            }
        }
    }
}

fn event_json(event_id: &str, event_type: &str) -> String {
    json!({
        "event_id": event_id,
        "event_type": event_type,
        "aggregate_id": AGGREGATE,
        "occurred_on": "2025-01-01T00:00:00Z",
        "payload": {"order_id": event_id},
    })
    .to_string()
}

/// The full story: events published with the command are handled; one whose handler fails is
/// dead-lettered, listed, shown, then requeued with the command once the handler is fixed, and
/// handled; `status` counts it all; `purge` deletes only old processed rows.
#[test]
fn publish_dead_letter_requeue_status_and_purge() {
    let Some(setup) = Setup::new("cli::publish_dead_letter_requeue_status_and_purge") else {
        return;
    };
    setup.run(&["migrate"]).ok();
    let handle = setup.consumer();

    // `event_id` and `occurred_on` may be left out.
    let minimal = json!({"event_type": "OrderCreated", "aggregate_id": AGGREGATE}).to_string();
    let generated = setup.run(&["--json", "publish", &minimal]).ok().json();
    assert_eq!(generated["event_id"].as_str().unwrap().len(), 36);
    for i in 0..3 {
        let published = setup
            .run(&["publish", &event_json(&format!("ok-{i}"), "OrderCreated")])
            .ok();
        assert!(published
            .stdout
            .contains(&format!("published event ok-{i} to {}", setup.stream)));
    }
    let file = std::env::temp_dir().join(format!("{}.json", unique_name("event")));
    // With headers, which the dead letter keeps and `show` prints.
    let mut broken: Value = serde_json::from_str(&event_json("broken-1", "Broken")).unwrap();
    broken["headers"] = json!({"tenant": "acme"});
    std::fs::write(&file, broken.to_string()).unwrap();
    let published = setup
        .run(&["--json", "publish", "--file", file.to_str().unwrap()])
        .ok()
        .json();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(published["event_id"], "broken-1");
    assert_eq!(published["stream"], setup.stream.as_str());
    assert!(published["entry_id"].as_str().unwrap().contains('-'));

    assert!(wait_until(WAIT, || setup.count(EventStatus::Processed)
        == 4
        && setup.count(EventStatus::DeadLetter) == 1));
    // At least: when the broken event shares a batch with others, their handlers run again in
    // the isolated pass (their first writes rolled back), so the counter, kept outside the
    // transaction, may count them twice. The processed count above is the exact one.
    assert!(setup.handled.load(Ordering::SeqCst) >= 4);

    // Status, as numbers.
    let status = setup.run(&["status", "--json"]).ok().json();
    assert_eq!(status["inbox"]["counts"]["processed"], 4);
    assert_eq!(status["inbox"]["counts"]["dead_letter"], 1);
    assert_eq!(status["inbox"]["counts"]["pending"], 0);
    assert_eq!(status["inbox"]["total"], 5);
    assert_eq!(status["inbox"]["oldest_pending_age_seconds"], Value::Null);
    assert_eq!(status["stream"]["pending"], 0);
    assert_eq!(status["stream"]["lag"], 0);
    assert_eq!(status["outbox"]["installed"], false);
    let human = setup.run(&["status"]).ok().stdout;
    assert!(human.contains("processed    4"), "{human}");
    assert!(human.contains("dead_letter  1"), "{human}");
    assert!(human.contains("outbox: not installed"), "{human}");
    assert!(
        human.contains(&format!("stream: {}, group billing", setup.stream)),
        "{human}"
    );

    // The dead letter, listed and shown.
    let listed = setup.run(&["dead-letters", "list", "--json"]).ok().json();
    let rows = listed["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["event_id"], "broken-1");
    assert_eq!(rows[0]["last_error"], "the billing service is down");
    assert_eq!(rows[0]["headers"], json!({"tenant": "acme"}));
    assert_eq!(listed["next_cursor"], Value::Null);
    let table = setup
        .run(&["dead-letters", "list", "--error", "BILLING"])
        .ok()
        .stdout;
    assert!(table.starts_with("EVENT ID"), "{table}");
    assert!(line(&table, "broken-1 ").contains(" Broken "), "{table}");
    let none = setup
        .run(&["dead-letters", "list", "--event-type", "OrderCreated"])
        .ok();
    assert_eq!(none.stdout.trim(), "no dead letters");
    let shown = setup.run(&["dead-letters", "show", "broken-1"]).ok().stdout;
    assert!(shown.contains("status          dead_letter"), "{shown}");
    assert!(
        shown.contains("headers         {\"tenant\":\"acme\"}"),
        "{shown}"
    );

    // Requeueing a row that is not a dead letter fails; an unknown one is not found.
    let wrong = setup.run(&["dead-letters", "requeue", "ok-0"]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("not a dead letter"),
        "{}",
        wrong.stderr
    );
    let missing = setup.run(&["dead-letters", "requeue", "no-such-event"]);
    assert_eq!(missing.code, 4, "{}", missing.stderr);

    // Fixed: requeued, it succeeds.
    setup.fixed.store(true, Ordering::SeqCst);
    let requeued = setup.run(&["dead-letters", "requeue", "broken-1"]).ok();
    assert!(
        requeued.stdout.contains("requeued broken-1"),
        "{}",
        requeued.stdout
    );
    assert!(wait_until(WAIT, || setup.count(EventStatus::Processed) == 5));
    assert!(setup.handled.load(Ordering::SeqCst) >= 5);
    let shown = setup
        .run(&["--json", "dead-letters", "show", "broken-1"])
        .ok()
        .json();
    assert_eq!(shown["status"], "processed");
    assert_eq!(shown["replay_count"], 1);
    assert_eq!(shown["retry_count"], 0);
    assert!(shown["last_replayed_at"].is_string());

    // Purge: three processed rows made ten days old, two kept young, a pending and a dead
    // letter kept however old.
    handle.shutdown(Duration::from_secs(10)).unwrap();
    setup.sql(
        "UPDATE {t} SET processed_at = now() - interval '10 days' WHERE event_id LIKE 'ok-%'; \
         INSERT INTO {t} (event_id, stream_id, event_type, aggregate_id, occurred_on, payload, \
           status, received_at, processed_at) VALUES \
           ('old-pending', '0-1', 'X', gen_random_uuid(), now(), '{}', 'pending', \
            now() - interval '30 days', now() - interval '30 days'), \
           ('old-dead', '0-2', 'X', gen_random_uuid(), now(), '{}', 'dead_letter', \
            now() - interval '30 days', now() - interval '30 days')",
    );
    let purged = setup
        .run(&["purge", "--older-than", "7d", "--json"])
        .ok()
        .json();
    assert_eq!(purged["deleted"], 3);
    assert_eq!(purged["older_than_seconds"], 7 * 86_400);
    let status = setup.run(&["--json", "status"]).ok().json();
    assert_eq!(status["inbox"]["counts"]["processed"], 2);
    assert_eq!(status["inbox"]["counts"]["pending"], 1);
    assert_eq!(status["inbox"]["counts"]["dead_letter"], 1);
    let again = setup.run(&["purge", "--older-than", "1h"]).ok();
    assert_eq!(
        again.stdout.trim(),
        "deleted 0 processed rows older than 1h"
    );

    // Bulk requeue by filter, with --all as the alternative.
    let bulk = setup
        .run(&["--json", "dead-letters", "requeue", "--all"])
        .ok()
        .json();
    assert_eq!(bulk["requeued"], 1);
    assert_eq!(setup.count(EventStatus::DeadLetter), 0);
    assert_eq!(setup.count(EventStatus::Pending), 2);
}

/// A worker's turn in ordered mode, done through the store: claims the head of each aggregate
/// and gives up on the events named in `give_up` (dead letter at once), handling the rest.
fn ordered_round(store: &PostgresStore, give_up: &[&str]) -> Vec<String> {
    struct GiveUp<'a>(&'a [&'a str]);
    impl RowHandler<PostgresStore> for GiveUp<'_> {
        fn handle(
            &mut self,
            _tx: &mut <PostgresStore as InboxStore>::Tx<'_>,
            row: &InboxRow,
        ) -> Verdict {
            if !self.0.contains(&row.event.event_id.as_str()) {
                return Verdict::Processed;
            }
            Verdict::Failed(Failure {
                status: EventStatus::DeadLetter,
                retry_count: 1,
                next_retry_at: None,
                error_message: "the billing service refused it".into(),
                failed_at: Utc::now(),
            })
        }

        fn failed_after(&mut self, row: &InboxRow, error: String) -> Verdict {
            panic!("{}: {error}", row.event.event_id)
        }
    }
    let claim = ClaimParams {
        claim: Claim::Heads {
            limit: 10,
            after_dead_letter: AfterDeadLetter::Park,
            aggregates: None,
            orphan_after: std::time::Duration::from_secs(3600),
        },
        clock: &SystemClock,
        optimistic: false,
    };
    store
        .process_claimed(&claim, &mut GiveUp(give_up))
        .unwrap()
        .into_iter()
        .map(|settled| settled.row.event.event_id)
        .collect()
}

/// Stores `event_id` of `aggregate` as the receiver does in ordered mode, read from `stream`.
fn store_ordered(store: &PostgresStore, stream: &str, event_id: &str, aggregate: uuid::Uuid) {
    let mut event = parse_event_json(&event_json(event_id, "OrderBilled"), Utc::now()).unwrap();
    event.aggregate_id = aggregate;
    let received = ReceivedEvent {
        row_id: uuid::Uuid::now_v7(),
        stream_id: "1-0".into(),
        event,
    };
    let stored = store
        .store_received(&ReceivedBatch {
            stream,
            ordered: true,
            events: std::slice::from_ref(&received),
            malformed: &[],
            received_at: Utc::now(),
            max_retries: 1,
            stored_by: None,
        })
        .unwrap();
    assert_eq!(stored.inserted.len(), 1);
}

/// `status` shows the table's owner, counts per stream (rows with no stream as `(none)`), the
/// parked aggregates, and each of several streams; `parked list|show|skip` finds the aggregate
/// a dead letter parks and releases it; `dead-letters list --from-stream` filters by stream.
#[test]
fn status_owner_streams_and_parked_aggregates() {
    let Some(setup) = Setup::new("cli::status_owner_streams_and_parked_aggregates") else {
        return;
    };
    setup.run(&["migrate"]).ok();
    let status = setup.run(&["--json", "status"]).ok().json();
    assert_eq!(status["inbox"]["owner"], Value::Null);
    assert_eq!(status["inbox"]["by_stream"], json!([]));
    assert_eq!(status["inbox"]["parked"]["aggregates"], 0);
    let human = setup.run(&["status"]).ok().stdout;
    assert!(human.contains("owner: no owner yet"), "{human}");
    assert!(human.contains("parked: none"), "{human}");

    // Aggregate A (three events) read from the test's stream, B (one) from a second stream,
    // and a row written by another tool that records no stream.
    let payments = format!("{}_pay", setup.stream);
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    setup.store.adopt_owner("billing", Utc::now()).unwrap();
    for id in ["park-1", "park-2", "park-3"] {
        store_ordered(&setup.store, &setup.stream, id, a);
    }
    store_ordered(&setup.store, &payments, "pay-1", b);
    setup.sql(
        "INSERT INTO {t} (event_id, stream_id, event_type, aggregate_id, occurred_on, payload, \
           status, received_at, processed_at) VALUES \
           ('legacy-1', '0-1', 'X', gen_random_uuid(), now(), '{}', 'processed', now(), now())",
    );
    let mut first = ordered_round(&setup.store, &["park-1", "park-2"]);
    first.sort();
    assert_eq!(first, ["park-1", "pay-1"]);
    assert!(ordered_round(&setup.store, &[]).is_empty(), "A is parked");

    // Status: the owner, per stream, parked; three streams of the group: one with the group,
    // one without it, and one that does not exist at all.
    let mut redis_conn = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&setup.stream)
        .arg("billing")
        .arg("$")
        .arg("MKSTREAM")
        .query(&mut redis_conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&payments)
        .arg("*")
        .arg("ping")
        .arg("1")
        .query(&mut redis_conn)
        .unwrap();
    let nowhere = format!("{}_nowhere", setup.stream);
    let streams = format!("{},{payments},{nowhere}", setup.stream);
    let status = setup
        .run(&["--json", "status", "--stream", &streams])
        .ok()
        .json();
    let inbox = &status["inbox"];
    assert_eq!(inbox["owner"], "billing");
    assert_eq!(inbox["parked"]["aggregates"], 1);
    assert!(
        inbox["parked"]["oldest_waiting_age_seconds"]
            .as_u64()
            .unwrap()
            < 60
    );
    let by_stream = inbox["by_stream"].as_array().unwrap();
    assert_eq!(by_stream.len(), 3, "{inbox}");
    assert_eq!(by_stream[0]["stream"], Value::Null);
    assert_eq!(by_stream[0]["counts"]["processed"], 1);
    let ours = by_stream
        .iter()
        .find(|s| s["stream"] == setup.stream.as_str())
        .unwrap();
    assert_eq!(ours["counts"]["dead_letter"], 1);
    assert_eq!(ours["counts"]["pending"], 2);
    assert_eq!(ours["total"], 3);
    let streams = status["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3);
    assert_eq!(streams[0]["stream"], setup.stream.as_str());
    assert_eq!(streams[0]["pending"], 0);
    assert_eq!(streams[0]["lag"], 0);
    assert_eq!(streams[0]["missing"], Value::Null);
    assert_eq!(streams[1]["stream"], payments.as_str());
    assert_eq!(streams[1]["missing"], "group");
    assert_eq!(streams[1]["error"], "the consumer group does not exist");
    assert_eq!(streams[2]["stream"], nowhere.as_str());
    assert_eq!(streams[2]["missing"], "stream");
    assert_eq!(streams[2]["error"], "the stream does not exist");
    assert_eq!(status["stream"], streams[0]);
    let human = setup
        .run(&[
            "status",
            "--stream",
            &setup.stream,
            "--stream",
            &payments,
            "--stream",
            &nowhere,
        ])
        .ok()
        .stdout;
    assert!(human.contains("owner: consumer group billing"), "{human}");
    assert!(line(&human, "  (none) ").ends_with(" 1"), "{human}");
    let ours = line(&human, &format!("  {} ", setup.stream));
    assert!(ours.contains(" 2 ") && ours.ends_with(" 3"), "{human}");
    assert!(
        human.contains("parked: 1 aggregate, the oldest waiting event"),
        "{human}"
    );
    assert!(
        human.contains(&format!("stream: {}, group billing\n", setup.stream)),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "stream: {payments}, group billing: the group does not exist"
        )),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            "stream: {nowhere}, group billing: the stream does not exist"
        )),
        "{human}"
    );

    // Listed and shown; an aggregate that is not parked is not found.
    let listed = setup.run(&["--json", "parked", "list"]).ok().json();
    let parked = listed["aggregates"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{listed}");
    assert_eq!(parked[0]["aggregate_id"], a.to_string());
    assert_eq!(parked[0]["waiting"], 2);
    assert_eq!(parked[0]["dead_letter"]["event_id"], "park-1");
    assert_eq!(parked[0]["dead_letter"]["stream"], setup.stream.as_str());
    assert_eq!(listed["next_cursor"], Value::Null);
    let table = setup.run(&["parked", "list"]).ok().stdout;
    assert!(table.starts_with("AGGREGATE ID"), "{table}");
    let row = line(&table, &a.to_string());
    assert!(
        row.contains(" park-1 ") && row.contains("the billing service refused it"),
        "{table}"
    );
    let page = setup
        .run(&["--json", "parked", "list", "--limit", "1"])
        .ok()
        .json();
    assert_eq!(page["next_cursor"], a.to_string());
    let after = setup
        .run(&["parked", "list", "--after", &a.to_string()])
        .ok();
    assert_eq!(after.stdout.trim(), "no parked aggregates");
    let shown = setup.run(&["parked", "show", &a.to_string()]).ok().stdout;
    assert!(
        shown.contains("parked by       dead letter park-1"),
        "{shown}"
    );
    assert!(shown.contains("waiting         2 events"), "{shown}");
    assert!(shown.contains("status          dead_letter"), "{shown}");
    for args in [["parked", "show"], ["parked", "skip"]] {
        let missing = setup.run(&[args[0], args[1], &b.to_string()]);
        assert_eq!(missing.code, 4, "{args:?}: {}", missing.stderr);
        assert!(
            missing.stderr.contains("parked aggregate"),
            "{}",
            missing.stderr
        );
    }

    // Skipped: the dead letter stays, marked; A goes on, and is parked again by park-2.
    let skipped = setup
        .run(&["--json", "parked", "skip", &a.to_string()])
        .ok()
        .json();
    assert_eq!(skipped["skipped"]["event_id"], "park-1");
    assert_eq!(skipped["released"], 2);
    assert_eq!(skipped["still_parked_by"], Value::Null);
    let mut conn = setup.store.pool().get().unwrap();
    let marked = conn
        .query_one(
            &format!(
                "SELECT status, skipped_at IS NOT NULL FROM {} WHERE event_id = 'park-1'",
                setup.table
            ),
            &[],
        )
        .unwrap();
    assert_eq!(marked.get::<_, String>(0), "dead_letter");
    assert!(marked.get::<_, bool>(1));
    drop(conn);
    let none = setup.run(&["parked", "list"]).ok();
    assert_eq!(none.stdout.trim(), "no parked aggregates");
    assert_eq!(
        ordered_round(&setup.store, &["park-1", "park-2"]),
        ["park-2"]
    );

    // By event id: park-2; a dead letter skipped already is refused, an unknown one not found.
    let by_event = setup
        .run(&["parked", "skip", "--event-id", "park-2"])
        .ok()
        .stdout;
    assert_eq!(
        by_event.trim(),
        format!("skipped dead letter park-2 of aggregate {a}")
    );
    assert_eq!(ordered_round(&setup.store, &[]), ["park-3"]);
    let twice = setup.run(&["parked", "skip", "--event-id", "park-1"]);
    assert_eq!(twice.code, 1, "{}", twice.stderr);
    assert!(twice.stderr.contains("skipped already"), "{}", twice.stderr);
    let unknown = setup.run(&["parked", "skip", "--event-id", "no-such-event"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);

    // Dead letters by the stream they came from.
    let ours = setup
        .run(&["--json", "dead-letters", "list", "--stream", &setup.stream])
        .ok()
        .json();
    let ids: Vec<&str> = ours["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["park-1", "park-2"]);
    // The older spelling still works (a hidden alias).
    let theirs = setup
        .run(&["dead-letters", "list", "--from-stream", &payments])
        .ok();
    assert_eq!(theirs.stdout.trim(), "no dead letters");
    // EVENTFLOW_STREAM, which `status` and `publish` read, never filters a listing: with it
    // naming the other stream, our two dead letters are still listed.
    let mut env = setup.env();
    env.retain(|(name, _)| *name != "EVENTFLOW_STREAM");
    env.push(("EVENTFLOW_STREAM", payments.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let unfiltered = eventflow(&env, &["--json", "dead-letters", "list"])
        .ok()
        .json();
    assert_eq!(
        unfiltered["rows"].as_array().unwrap().len(),
        2,
        "{unfiltered}"
    );
    let _: Result<(), _> = redis::cmd("DEL").arg(&payments).query(&mut redis_conn);
}

/// A malformed entry is quarantined by the consumer, listed, shown, replayed with a corrected
/// `data` object, and then handled.
#[test]
fn quarantine_list_show_and_replay() {
    let Some(setup) = Setup::new("cli::quarantine_list_show_and_replay") else {
        return;
    };
    setup.fixed.store(true, Ordering::SeqCst);
    let handle = setup.consumer();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    redis
        .publish(
            &setup.stream,
            vec![("data".into(), b"{\"event_id\": \"q-1\", oops".to_vec())],
        )
        .unwrap();
    redis
        .publish(&setup.stream, vec![("event_id".into(), b"q-2".to_vec())])
        .unwrap();
    assert!(wait_until(WAIT, || handle.stats().quarantined == 2));
    let status = setup.run(&["--json", "status"]).ok().json();
    let quarantine = &status["inbox"]["quarantine"];
    assert_eq!(quarantine["waiting"], 2, "{status}");
    assert_eq!(quarantine["replayed"], 0, "{status}");
    assert!(quarantine["oldest_waiting_age_seconds"].as_u64().unwrap() < 60);
    let human = setup.run(&["status"]).ok().stdout;
    assert!(
        human.contains("quarantined: 2 waiting, the oldest"),
        "{human}"
    );

    let listed = setup.run(&["quarantine", "list", "--json"]).ok().json();
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let (bad_json, no_type): (Vec<&Value>, Vec<&Value>) = entries
        .iter()
        .partition(|entry| entry["reason"].as_str().unwrap().contains("not JSON"));
    assert_eq!((bad_json.len(), no_type.len()), (1, 1), "{listed}");
    let id = bad_json[0]["id"].as_str().unwrap().to_string();
    let missing_type = setup
        .run(&["quarantine", "list", "--reason", "event_type"])
        .ok()
        .stdout;
    assert!(missing_type.starts_with("ID"), "{missing_type}");
    assert_eq!(missing_type.lines().count(), 2, "{missing_type}");
    let shown = setup.run(&["quarantine", "show", &id]).ok().stdout;
    assert!(
        shown.contains("data = {\"event_id\": \"q-1\", oops"),
        "{shown}"
    );

    // Still broken: the error names the field, nothing is stored.
    let still_bad = setup.run(&[
        "quarantine",
        "replay",
        &id,
        "--data",
        "{\"event_id\": \"q-1\"}",
    ]);
    assert_eq!(still_bad.code, 2, "{}", still_bad.stderr);
    assert!(
        still_bad.stderr.contains("event_type"),
        "{}",
        still_bad.stderr
    );

    let replayed = setup
        .run(&[
            "--json",
            "quarantine",
            "replay",
            &id,
            "--data",
            &event_json("q-1", "OrderCreated"),
        ])
        .ok()
        .json();
    assert_eq!(replayed["event_id"], "q-1");
    assert!(wait_until(WAIT, || setup.count(EventStatus::Processed) == 1));
    assert_eq!(setup.handled.load(Ordering::SeqCst), 1);

    // The second, fixed field by field.
    let second = no_type[0]["id"].as_str().unwrap();
    let occurred = "--set=occurred_on=2025-01-01T00:00:00Z";
    setup
        .run(&[
            "quarantine",
            "replay",
            second,
            "--set",
            "event_type=OrderPaid",
            "--set",
            &format!("aggregate_id={AGGREGATE}"),
            occurred,
        ])
        .ok();
    assert!(wait_until(WAIT, || setup.count(EventStatus::Processed) == 2));

    // Replayed entries leave the default listing; replaying again is refused.
    let left = setup.run(&["--json", "quarantine", "list"]).ok().json();
    assert_eq!(left["entries"].as_array().unwrap().len(), 0);
    let all = setup
        .run(&["--json", "quarantine", "list", "--include-replayed"])
        .ok()
        .json();
    let replayed_as: Vec<&Value> = all["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["replayed_event_id"])
        .collect();
    assert!(replayed_as.contains(&&json!("q-1")) && replayed_as.contains(&&json!("q-2")));
    let status = setup.run(&["--json", "status"]).ok().json();
    let quarantine = &status["inbox"]["quarantine"];
    assert_eq!(
        (&quarantine["waiting"], &quarantine["replayed"]),
        (&json!(0), &json!(2))
    );
    assert_eq!(quarantine["oldest_waiting_age_seconds"], Value::Null);
    let human = setup.run(&["status"]).ok().stdout;
    assert!(
        human.contains("quarantined: none waiting (2 replayed kept)"),
        "{human}"
    );
    let twice = setup.run(&["quarantine", "replay", &id]);
    assert_eq!(twice.code, 1, "{}", twice.stderr);
    let unknown = setup.run(&["quarantine", "show", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    handle.shutdown(Duration::from_secs(10)).unwrap();
}

/// `quarantine purge` deletes only entries quarantined longer ago than the age; `publish`
/// refuses a misspelled field by name, and publishes a payload that is not an object as it is.
#[test]
fn quarantine_purge_and_strict_publish() {
    let Some(setup) = Setup::new("cli::quarantine_purge_and_strict_publish") else {
        return;
    };
    setup.fixed.store(true, Ordering::SeqCst);
    let handle = setup.consumer();
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    for id in ["old-1", "old-2", "young"] {
        redis
            .publish(
                &setup.stream,
                vec![("event_id".into(), id.as_bytes().to_vec())],
            )
            .unwrap();
    }
    assert!(wait_until(WAIT, || handle.stats().quarantined == 3));
    setup.sql(
        "UPDATE {t}_quarantine SET received_at = now() - interval '10 days' \
         WHERE raw_fields::text LIKE '%old-%'",
    );
    let purged = setup
        .run(&["--json", "quarantine", "purge", "--older-than", "7d"])
        .ok()
        .json();
    assert_eq!(purged["deleted"], 2, "{purged}");
    let left = setup.run(&["--json", "quarantine", "list"]).ok().json();
    let left = left["entries"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["fields"][0][1], "young");
    let again = setup
        .run(&["quarantine", "purge", "--older-than", "1h"])
        .ok();
    assert!(
        again.stdout.contains("deleted 0 quarantined entries"),
        "{}",
        again.stdout
    );
    let everything = setup.run(&["quarantine", "purge", "--older-than", "0s"]);
    assert_eq!(everything.code, 2, "{}", everything.stderr);
    assert!(
        everything
            .stderr
            .contains("deletes every quarantined entry; pass --yes"),
        "{}",
        everything.stderr
    );
    let left = setup.run(&["--json", "quarantine", "list"]).ok().json();
    assert_eq!(left["entries"].as_array().unwrap().len(), 1, "nothing went");

    // A misspelled field is refused by name, and nothing is published.
    let misspelled = setup.run(&[
        "publish",
        &json!({"evnet_id": "p-1", "event_type": "OrderCreated", "aggregate_id": AGGREGATE})
            .to_string(),
    ]);
    assert_eq!(misspelled.code, 2, "{}", misspelled.stderr);
    assert!(
        misspelled.stderr.contains("unknown field `evnet_id`")
            && misspelled.stderr.contains("did you mean `event_id`"),
        "{}",
        misspelled.stderr
    );
    // A payload that is not an object reaches the handler's row as it was published.
    setup
        .run(&[
            "publish",
            &json!({"event_id": "p-2", "event_type": "OrderCreated", "aggregate_id": AGGREGATE,
                "payload": "plain text"})
            .to_string(),
        ])
        .ok();
    assert!(wait_until(WAIT, || setup.count(EventStatus::Processed) == 1));
    let row = setup.store.find_by_event_id("p-2").unwrap().unwrap();
    assert_eq!(row.event.payload, json!("plain text"));
    assert_eq!(setup.store.find_by_event_id("p-1").unwrap(), None);
    handle.shutdown(Duration::from_secs(10)).unwrap();
}

/// Bad usage is exit code 2; an unreachable database or Redis is 3, and the password in the
/// connection settings appears nowhere in the output.
#[test]
fn usage_errors_and_unreachable_servers_have_their_exit_codes() {
    for args in [
        &["frobnicate"][..],
        &["purge", "--older-than", "7x"],
        &["purge", "--older-than", "7"],
        &["purge"],
        &["dead-letters", "requeue"],
        &["dead-letters", "list", "--limit", "0"],
        &["publish", "{}"],
        &["parked", "skip"],
        &["parked", "show", "not-an-aggregate-id"],
    ] {
        let run = eventflow(&[("EVENTFLOW_DATABASE_URL", "/nonexistent/inbox.db")], args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
    }
    let two_streams = eventflow(
        &[("EVENTFLOW_STREAM", "orders,payments")],
        &["publish", &event_json("e-2", "OrderCreated")],
    );
    assert_eq!(two_streams.code, 2, "{}", two_streams.stderr);
    assert!(
        two_streams.stderr.contains("just one"),
        "{}",
        two_streams.stderr
    );
    // A misspelt scheme, or a plain path to no file, is refused, never made into a new SQLite
    // file named after the typo; `sqlite:path` creates one.
    let typo = std::env::temp_dir().join(unique_name("cli_typo"));
    let plain = typo.to_string_lossy().to_string();
    for (url, says) in [
        (
            "postgress://postgres:TopSecret-1@127.0.0.1/test".to_string(),
            "is not a database URL",
        ),
        (plain.clone(), "to create one, write it as sqlite:"),
    ] {
        let run = eventflow(&[("EVENTFLOW_DATABASE_URL", url.as_str())], &["migrate"]);
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{url}: {}", run.stderr);
        assert!(!run.stderr.contains("TopSecret-1"), "{}", run.stderr);
    }
    assert!(!typo.exists(), "no file was created");
    let explicit = format!("sqlite:{plain}");
    eventflow(
        &[("EVENTFLOW_DATABASE_URL", explicit.as_str())],
        &["migrate"],
    )
    .ok();
    assert!(typo.exists(), "sqlite:path creates the database");
    let _ = std::fs::remove_file(&typo);

    // A zero or absurd timeout is a setting error, never the pool's panic.
    for (timeout, says) in [
        ("0s", "must be more than zero"),
        ("2h", "at most 1h"),
        ("300000000000y", "at most 1h"),
        ("1000000000000y", "too large"),
    ] {
        let refused = eventflow(
            &[("EVENTFLOW_DATABASE_URL", postgres_url().as_str())],
            &["--connect-timeout", timeout, "status"],
        );
        assert_eq!(refused.code, 2, "{timeout}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("--connect-timeout") && refused.stderr.contains(says),
            "{timeout}: {}",
            refused.stderr
        );
        assert!(!refused.stderr.contains("panicked"), "{}", refused.stderr);
    }
    let no_database = eventflow(&[], &["status"]);
    assert_eq!(no_database.code, 2);
    assert!(no_database.stderr.contains("EVENTFLOW_DATABASE_URL"));
    let invalid_event = eventflow(
        &[("EVENTFLOW_STREAM", "s")],
        &["publish", "{\"event_type\": \"X\"}"],
    );
    assert_eq!(invalid_event.code, 2, "{}", invalid_event.stderr);
    assert!(
        invalid_event.stderr.contains("aggregate_id"),
        "{}",
        invalid_event.stderr
    );

    let password = "TopSecret-8472";
    for url in [
        format!("postgres://postgres:{password}@127.0.0.1:1/test"),
        format!("host=127.0.0.1 port=1 user=postgres password={password} dbname=test"),
    ] {
        for json in [false, true] {
            let mut args = vec!["--connect-timeout", "1s", "status"];
            if json {
                args.push("--json");
            }
            let run = eventflow(&[("EVENTFLOW_DATABASE_URL", url.as_str())], &args);
            assert_eq!(run.code, 3, "{}", run.stderr);
            assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
            assert!(!run.stdout.contains(password) && !run.stderr.contains(password));
        }
    }
    let redis_down = eventflow(
        &[
            (
                "EVENTFLOW_REDIS_URL",
                &format!("redis://:{password}@127.0.0.1:1"),
            ),
            ("EVENTFLOW_STREAM", "s"),
        ],
        &[
            "--connect-timeout",
            "1s",
            "publish",
            &event_json("e-1", "OrderCreated"),
        ],
    );
    assert_eq!(redis_down.code, 3, "{}", redis_down.stderr);
    assert!(!redis_down.stderr.contains(password) && !redis_down.stdout.contains(password));
    let missing_file = eventflow(
        &[("EVENTFLOW_DATABASE_URL", "sqlite:///nonexistent/inbox.db")],
        &["status"],
    );
    assert_eq!(missing_file.code, 3, "{}", missing_file.stderr);

    let help = eventflow(&[], &["--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("4  not found"), "{}", help.stdout);
}

/// Every command, text and `--json`, with a secret in the database and Redis settings in every
/// form the drivers accept, against servers that answer and servers that do not (and with
/// settings that do not parse): neither standard output nor standard error shows the secret.
#[test]
fn no_command_shows_a_secret_in_any_form() {
    use support::secrets::{assert_no_secret, redis_forms, PasswordRedis, PgTarget, SECRET};
    let test = "cli::no_command_shows_a_secret_in_any_form";
    let missing = uuid::Uuid::new_v4().to_string();
    let event = event_json("secret-1", "OrderCreated");
    let commands: Vec<Vec<&str>> = vec![
        vec!["migrate", "--outbox"],
        vec!["status"],
        vec!["dead-letters", "list"],
        vec!["dead-letters", "show", "nope"],
        vec!["dead-letters", "requeue", "--all"],
        vec!["quarantine", "list"],
        vec!["quarantine", "show", &missing],
        vec!["quarantine", "replay", &missing],
        vec!["parked", "list"],
        vec!["parked", "show", &missing],
        vec!["parked", "skip", &missing],
        vec!["outbox", "list"],
        vec!["outbox", "show", "nope"],
        vec!["outbox", "requeue", "--all"],
        vec!["outbox", "purge", "--older-than", "7d"],
        vec!["outbox", "lost"],
        vec!["purge", "--older-than", "7d"],
        vec!["publish", &event],
        vec!["--help"],
        vec!["status", "--help"],
    ];
    let tables = PgTables::new();
    let stream = unique_name("cli_secret");
    // Runs every command with each database form in turn (text and JSON alternating), the
    // Redis forms rotating; the runs go in parallel, and every output is checked.
    let run_all = |databases: &[String], redis: &[String]| -> Vec<(String, Run)> {
        let mut jobs = Vec::new();
        for (i, database) in databases.iter().enumerate() {
            for (j, command) in commands.iter().enumerate() {
                // Room for a TLS handshake per connection (`prefer` takes TLS when the server
                // offers it) while 8 threads run commands at once on a small machine.
                let mut args = vec!["--connect-timeout", "5s"];
                if (i + j) % 2 == 1 {
                    args.push("--json");
                }
                args.extend(command.iter().copied());
                let redis = redis[(i + j) % redis.len()].clone();
                jobs.push((database.clone(), redis, args));
            }
        }
        let runs: Vec<(String, Run)> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks(8)
                .map(|chunk| {
                    let (tables, stream) = (&tables, &stream);
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(database, redis, args)| {
                                let env = [
                                    ("EVENTFLOW_DATABASE_URL", database.as_str()),
                                    ("EVENTFLOW_REDIS_URL", redis.as_str()),
                                    ("EVENTFLOW_TABLE", tables.inbox.as_str()),
                                    ("EVENTFLOW_OUTBOX_TABLE", tables.outbox.as_str()),
                                    ("EVENTFLOW_STREAM", stream.as_str()),
                                    ("EVENTFLOW_GROUP", "g"),
                                ];
                                (format!("{args:?}"), eventflow(&env, args))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for (what, run) in &runs {
            assert_no_secret(&format!("stdout of {what}"), &run.stdout);
            assert_no_secret(&format!("stderr of {what}"), &run.stderr);
        }
        runs
    };

    // Nothing listens: every command fails to connect (exit code 3), or to parse its input.
    let unreachable = run_all(
        &PgTarget::unreachable().forms(),
        &redis_forms("127.0.0.1", 1),
    );
    let help = |what: &str| what.contains("--help");
    assert!(unreachable
        .iter()
        .all(|(what, run)| run.code != 0 || help(what)));
    assert!(unreachable.iter().filter(|(_, run)| run.code == 3).count() >= 6 * 16);

    // Settings that do not parse (an unterminated quote; a URL without its scheme).
    let invalid = [
        format!("host=127.0.0.1 password='{SECRET}"),
        format!("app:{SECRET}@127.0.0.1/app"),
    ];
    let redis_invalid = [format!("redis://:{SECRET}@127.0.0.1:1/not-a-db")];
    let invalid = run_all(&invalid, &redis_invalid);
    assert!(invalid
        .iter()
        .all(|(what, run)| run.code != 0 || help(what)));

    // Servers that answer: the password is ignored by a `trust` PostgreSQL, and required by a
    // private Redis (the shared one is sent a password it does not expect, and refuses).
    let Some(postgres) = PgTarget::reachable() else {
        support::skipped(&format!(
            "{test}: the test database URL has a password of its own"
        ));
        return;
    };
    if !support::postgres_available(test) || !support::redis_available(test) {
        return;
    }
    let Some(private) = PasswordRedis::start(test) else {
        return;
    };
    let shared_port = url::Url::parse(&redis_url())
        .ok()
        .and_then(|url| url.port())
        .unwrap_or(6379);
    let mut redis = redis_forms("127.0.0.1", private.port);
    redis.truncate(2);
    redis.push(redis_forms("127.0.0.1", shared_port).remove(0));
    let forms = postgres.forms();
    let migrated = run_all(&forms[..1], &redis);
    assert_eq!(migrated[0].1.code, 0, "{}", migrated[0].1.stderr);
    let reachable = run_all(&forms, &redis);
    let succeeded = reachable.iter().filter(|(_, run)| run.code == 0).count();
    // status, the listings, requeue --all, the purges and publish succeed on each form (status
    // and publish through the private Redis at least once).
    assert!(succeeded >= 6 * 8, "{succeeded} succeeded");
    assert!(reachable
        .iter()
        .any(|(what, run)| what.contains("publish") && run.code == 0));
    assert!(reachable
        .iter()
        .any(|(what, run)| what.contains("status") && run.stdout.contains("<redacted>")));
}

/// Stored values reach the terminal escaped: rows, dead letters, quarantined entries, parked
/// aggregates and outbox rows whose ids, types, stream, stream ids, errors, payloads and field
/// names hold escape sequences, C1 controls and bidirectional overrides are printed with none
/// of them raw, in text and in JSON (which still parses to the stored values).
#[test]
fn stored_control_characters_never_reach_the_terminal() {
    const EVIL: &str = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\u{7f}\u{202e}\u{2066}\r\n";
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let path: PathBuf = std::env::temp_dir().join(format!("{}.db", unique_name("cli_tty")));
    let url = format!("sqlite://{}", path.display());
    let env = [("EVENTFLOW_DATABASE_URL", url.as_str())];
    eventflow(&env, &["migrate", "--outbox"]).ok();

    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let aggregate = uuid::Uuid::new_v4();
    let evil_event = |id: &str| {
        Event::new(
            format!("Order{EVIL}Created"),
            aggregate,
            json!({ "note": EVIL, EVIL: 1 }),
        )
        .with_event_id(format!("{id}{EVIL}"))
        .with_correlation_id(format!("corr{EVIL}"))
        .with_causation_id(format!("cause{EVIL}"))
    };
    let events = [
        ReceivedEvent {
            row_id: uuid::Uuid::now_v7(),
            stream_id: format!("1-1{EVIL}"),
            event: evil_event("tty-1"),
        },
        ReceivedEvent {
            row_id: uuid::Uuid::now_v7(),
            stream_id: format!("1-2{EVIL}"),
            event: evil_event("tty-2"),
        },
    ];
    store
        .store_received(&ReceivedBatch {
            stream: &format!("orders{EVIL}"),
            ordered: true,
            events: &events,
            malformed: &[],
            received_at: chrono::Utc::now(),
            max_retries: 0,
            stored_by: None,
        })
        .unwrap();
    // An entry that is not an event, with an evil field name and value: quarantined.
    let stream = MemoryStream::new();
    stream
        .publish(
            "orders",
            vec![(
                format!("data{EVIL}"),
                format!("{{not json{EVIL}").into_bytes(),
            )],
        )
        .unwrap();
    // An ordered consumer gives up on the first event: a dead letter with an evil error,
    // parking its aggregate behind it.
    let handle = InboxConsumer::builder()
        .transport(stream)
        .store(store.clone())
        .stream("orders")
        .group("billing")
        .ordered(true)
        .poll_interval(Duration::from_millis(20))
        .handler(|_tx, _row| -> HandlerResult { Err(HandlerError::give_up(format!("boom{EVIL}"))) })
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(wait_until(WAIT, || {
        store
            .count_by_status()
            .unwrap()
            .get(EventStatus::DeadLetter)
            == 1
    }));
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let outbox = SqliteOutbox::open(&path).unwrap();
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    eventflow::outbox::enqueue(&mut conn, &format!("orders{EVIL}"), &evil_event("tty-out"))
        .unwrap();
    drop(outbox);

    let quarantined = eventflow(&env, &["--json", "quarantine", "list"])
        .ok()
        .json();
    let entry_id = quarantined["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let aggregate = aggregate.to_string();
    let first = events[0].row_id.to_string();
    let mut printed = 0;
    for command in [
        &["status"][..],
        &["dead-letters", "list"],
        &["dead-letters", "show", &first],
        &["quarantine", "list"],
        &["quarantine", "show", &entry_id],
        &["parked", "list"],
        &["parked", "show", &aggregate],
        &["outbox", "list"],
        &["outbox", "show", "1"],
    ] {
        for json in [false, true] {
            let mut args = command.to_vec();
            if json {
                args.insert(0, "--json");
            }
            let run = eventflow(&env, &args).ok();
            let raw: Vec<char> = format!("{}{}", run.stdout, run.stderr)
                .chars()
                .filter(|c| unsafe_char(*c) && *c != '\n')
                .collect();
            assert!(
                raw.is_empty(),
                "{args:?} printed {raw:?} raw:\n{}",
                run.stdout
            );
            for line in run.stdout.lines() {
                assert!(
                    !line.contains("owned\u{7}") && !line.ends_with('\r'),
                    "{args:?}: {line:?}"
                );
            }
            if json {
                // Still JSON, decoding to the stored values.
                assert!(
                    run.json().to_string().contains("\\u001b[2J"),
                    "{}",
                    run.stdout
                );
            } else if run.stdout.contains("\\u{1b}[2J") {
                printed += 1;
            }
        }
    }
    // Every text command showed an evil value, escaped (status: the stream's name).
    assert_eq!(printed, 9);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A SQLite file works the same: migrate, status, dead letters listed and requeued.
#[test]
fn sqlite_files_are_operated_too() {
    let path: PathBuf = std::env::temp_dir().join(format!("{}.db", unique_name("cli")));
    let url = format!("sqlite://{}", path.display());
    let env = [("EVENTFLOW_DATABASE_URL", url.as_str())];
    let migrated = eventflow(&env, &["migrate"]).ok();
    assert!(
        migrated.stdout.contains("migrated event_inbox (SQLite)"),
        "{}",
        migrated.stdout
    );
    eventflow(&env, &["migrate"]).ok();

    // A consumer on the same file dead-letters one event of three.
    let stream = MemoryStream::new();
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let handle = start_sqlite_consumer(&stream, &store);
    for (id, event_type) in [
        ("s-1", "OrderCreated"),
        ("s-2", "Poison"),
        ("s-3", "OrderCreated"),
    ] {
        let event = parse_event_json(&event_json(id, event_type), chrono::Utc::now()).unwrap();
        stream.publish("orders", event.to_entry_fields()).unwrap();
    }
    assert!(wait_until(WAIT, || {
        let counts = store.count_by_status().unwrap();
        counts.get(EventStatus::Processed) == 2 && counts.get(EventStatus::DeadLetter) == 1
    }));
    handle.shutdown(Duration::from_secs(10)).unwrap();
    drop(store);

    let status = eventflow(&env, &["--json", "status"]).ok().json();
    assert_eq!(status["inbox"]["database"], "SQLite");
    assert_eq!(status["inbox"]["counts"]["processed"], 2);
    assert_eq!(status["inbox"]["counts"]["dead_letter"], 1);
    assert_eq!(status["stream"], Value::Null);
    let human = eventflow(&env, &["status"]).ok().stdout;
    assert!(human.contains("dead_letter  1"), "{human}");
    let listed = eventflow(&env, &["dead-letters", "list"]).ok().stdout;
    let s2 = line(&listed, "s-2 ");
    assert!(
        s2.contains("Poison") && s2.contains("cannot handle poison"),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let requeued = eventflow(
        &env,
        &[
            "--json",
            "dead-letters",
            "requeue",
            "--event-type",
            "Poison",
        ],
    )
    .ok()
    .json();
    assert_eq!(requeued["requeued"], 1);
    let shown = eventflow(&env, &["--json", "dead-letters", "show", "s-2"])
        .ok()
        .json();
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["replay_count"], 1);
    // Ages as people write them; the processed rows are younger than both.
    for (age, seconds) in [("1h30m", 5400), ("1w", 604_800)] {
        let kept = eventflow(&env, &["--json", "purge", "--older-than", age])
            .ok()
            .json();
        assert_eq!(kept["older_than_seconds"], seconds, "{age}");
        assert_eq!(kept["deleted"], 0, "{age}");
    }
    // An age that takes every row is asked about; with no terminal to ask on it is refused,
    // and nothing goes, until --yes confirms it.
    for args in [
        &["purge", "--older-than", "0s"][..],
        &["purge", "--older-than", "500ms"],
    ] {
        let refused = eventflow(&env, args);
        assert_eq!(refused.code, 2, "{args:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("deletes every processed row")
                && refused.stderr.contains("--yes"),
            "{}",
            refused.stderr
        );
    }
    let refused = eventflow(&env, &["--json", "purge", "--older-than", "0s"]);
    assert_eq!(refused.code, 2);
    assert_eq!(json_error(&refused)["kind"], "usage", "{}", refused.stderr);
    let status = eventflow(&env, &["--json", "status"]).ok().json();
    assert_eq!(status["inbox"]["counts"]["processed"], 2, "nothing deleted");
    let purged = eventflow(&env, &["purge", "--older-than", "0s", "--yes"]).ok();
    assert_eq!(
        purged.stdout.trim(),
        "deleted 2 processed rows older than 0s"
    );

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// An inbox table and an outbox table of a test's own in PostgreSQL, dropped at the end with
/// their migration records.
struct PgTables {
    inbox: String,
    outbox: String,
}

impl PgTables {
    fn new() -> Self {
        Self {
            inbox: unique_name("cli_in"),
            outbox: unique_name("cli_out"),
        }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("EVENTFLOW_DATABASE_URL", postgres_url()),
            ("EVENTFLOW_TABLE", self.inbox.clone()),
        ]
    }

    /// Runs `eventflow` on these tables (the outbox one given by flag, as operators would).
    fn run(&self, args: &[&str]) -> Run {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut all = vec!["--outbox-table", self.outbox.as_str()];
        all.extend_from_slice(args);
        eventflow(&env, &all)
    }
}

impl Drop for PgTables {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&postgres_url(), postgres::NoTls) {
            let (i, o) = (&self.inbox, &self.outbox);
            let _ = client.batch_execute(&format!(
                "DROP TABLE IF EXISTS {i}_quarantine, {i}, {o}; \
                 DELETE FROM eventflow_migrations \
                   WHERE target IN ('inbox:{i}', 'outbox:{o}')"
            ));
        }
    }
}

/// An event with id `id`, of an aggregate of its own (so no row holds back another).
fn outbox_event(id: &str) -> Event {
    let mut event = Event::new(
        "OrderPlaced",
        uuid::Uuid::new_v4(),
        json!({ "order_id": id }),
    );
    event.event_id = id.to_string();
    event
}

/// Claims every due row at `now` and settles each with what `outcome` says of its event id.
fn settle(store: &dyn OutboxStore, now: DateTime<Utc>, outcome: impl Fn(&str) -> RowOutcome) {
    let round = store
        .publish_due(&ClaimDue { limit: 100, now }, &mut |rows| {
            Delivery::Settled(
                rows.iter()
                    .map(|row| outcome(&row.event.event_id))
                    .collect(),
            )
        })
        .unwrap();
    assert!(round.claimed > 0 && !round.abandoned, "{round:?}");
}

/// What the relay makes of the test events: `old-*` and `new-*` published, `dead-*` refused for
/// good, `retry-*` refused until tomorrow.
fn outcome(event_id: &str) -> RowOutcome {
    match event_id.split('-').next() {
        Some("old" | "new") => RowOutcome::Published {
            entry_id: "1-0".into(),
        },
        Some("dead") => RowOutcome::DeadLetter {
            error: "refused by the broker".into(),
        },
        Some("retry") => RowOutcome::Retry {
            error: "timed out".into(),
            at: Utc::now() + chrono::Duration::days(1),
        },
        _ => panic!("unexpected event {event_id}"),
    }
}

/// The outbox operated on PostgreSQL: migrated with the command, counted by `status`, listed by
/// status and a page at a time, shown, dead letters requeued (one by id, then all), published
/// rows purged by age; a missing outbox table and an unknown event are exit code 4.
#[test]
fn outbox_status_list_show_requeue_and_purge() {
    if !support::postgres_available("cli::outbox_status_list_show_requeue_and_purge") {
        return;
    }
    let tables = PgTables::new();

    // Before the migration: not installed, and the commands say so with exit code 4.
    tables.run(&["migrate"]).ok();
    let status = tables.run(&["--json", "status"]).ok().json();
    assert_eq!(status["outbox"]["installed"], false);
    assert_eq!(status["outbox"]["table"], tables.outbox.as_str());
    for args in [
        &["outbox", "list"][..],
        &["outbox", "show", "old-1"],
        &["outbox", "requeue", "--all"],
        &["outbox", "purge", "--older-than", "1d"],
    ] {
        let missing = tables.run(args);
        assert_eq!(missing.code, 4, "{args:?}: {}", missing.stderr);
        assert!(
            missing.stderr.contains("the outbox is not installed")
                && missing.stderr.contains(&tables.outbox),
            "{}",
            missing.stderr
        );
    }

    let migrated = tables.run(&["migrate", "--outbox"]).ok().stdout;
    assert!(
        migrated.contains(&format!("migrated outbox {} (PostgreSQL)", tables.outbox)),
        "{migrated}"
    );
    tables.run(&["migrate", "--outbox"]).ok(); // idempotent

    // Eight events: two published ten days ago, one just now, two dead letters, one waiting
    // for a retry, two pending.
    let store = PostgresOutbox::builder(postgres_url())
        .table(&tables.outbox)
        .pool_size(2)
        .build()
        .unwrap();
    let table = OutboxTable::named(&tables.outbox).unwrap();
    let mut client = postgres::Client::connect(&postgres_url(), postgres::NoTls).unwrap();
    let enqueue = |client: &mut postgres::Client, ids: &[&str]| {
        let mut tx = client.transaction().unwrap();
        for id in ids {
            table.enqueue(&mut tx, "orders", &outbox_event(id)).unwrap();
        }
        tx.commit().unwrap();
    };
    enqueue(
        &mut client,
        &["old-1", "old-2", "dead-1", "dead-2", "retry-1"],
    );
    settle(&store, Utc::now() - chrono::Duration::days(10), outcome);
    enqueue(&mut client, &["new-1"]);
    settle(&store, Utc::now(), outcome);
    enqueue(&mut client, &["wait-1", "wait-2"]);
    let id_of = |event_id: &str| store.find_by_event_id(event_id).unwrap()[0].id;

    // Status, as numbers.
    let status = tables.run(&["status", "--json"]).ok().json();
    let outbox = &status["outbox"];
    assert_eq!(outbox["installed"], true, "{status}");
    assert_eq!(outbox["table"], tables.outbox.as_str());
    assert_eq!(
        outbox["counts"],
        json!({"pending": 2, "failed": 1, "published": 3, "dead_letter": 2})
    );
    assert_eq!(outbox["backlog"], 3);
    let age = outbox["oldest_unpublished_age_seconds"].as_u64().unwrap();
    assert!(age < 60, "{age}");
    let human = tables.run(&["status"]).ok().stdout;
    let (_, outbox_part) = human.split_once("outbox: ").expect(&human);
    assert!(outbox_part.starts_with(&tables.outbox), "{human}");
    assert!(outbox_part.contains("dead_letter  2"), "{human}");
    assert!(outbox_part.contains("published    3"), "{human}");
    assert!(outbox_part.contains("backlog      3"), "{human}");

    // Listed by status, and a page at a time.
    let dead = tables
        .run(&["--json", "outbox", "list", "--status", "dead_letter"])
        .ok()
        .json();
    let rows = dead["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dead-1", "dead-2"]);
    assert_eq!(rows[0]["status"], "dead_letter");
    assert_eq!(rows[0]["attempts"], 1);
    assert_eq!(rows[0]["last_error"], "refused by the broker");
    assert_eq!(dead["next_cursor"], Value::Null);
    let table_text = tables
        .run(&["outbox", "list", "--status", "dead_letter"])
        .ok()
        .stdout;
    assert!(table_text.starts_with("ID"), "{table_text}");
    assert_eq!(table_text.lines().count(), 3, "{table_text}");
    let dead_line = line(&table_text, &format!("{} ", id_of("dead-1")));
    assert!(
        dead_line.contains(" dead-1 ") && dead_line.contains("refused by the broker"),
        "{table_text}"
    );
    let first = tables
        .run(&["--json", "outbox", "list", "--limit", "3"])
        .ok()
        .json();
    assert_eq!(first["rows"].as_array().unwrap().len(), 3);
    assert_eq!(first["next_cursor"], id_of("dead-1").to_string());
    let after = first["next_cursor"].as_str().unwrap();
    let rest = tables
        .run(&["--json", "outbox", "list", "--after", after])
        .ok()
        .json();
    let ids: Vec<&str> = rest["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dead-2", "retry-1", "new-1", "wait-1", "wait-2"]);
    let none = tables
        .run(&[
            "outbox",
            "list",
            "--status",
            "failed",
            "--after",
            &id_of("retry-1").to_string(),
        ])
        .ok();
    assert_eq!(none.stdout.trim(), "no failed rows");

    // Shown, by event id or row id; an unknown event is not found.
    let shown = tables
        .run(&["--json", "outbox", "show", "retry-1"])
        .ok()
        .json();
    let row = &shown["rows"][0];
    assert_eq!(row["status"], "failed");
    assert_eq!(row["stream"], "orders");
    assert_eq!(row["last_error"], "timed out");
    assert!(row["next_attempt_at"].is_string());
    let human = tables
        .run(&["outbox", "show", &id_of("old-1").to_string()])
        .ok()
        .stdout;
    assert!(human.contains("event id        old-1"), "{human}");
    assert!(human.contains("status          published"), "{human}");
    assert!(human.contains("entry id        1-0"), "{human}");
    let unknown = tables.run(&["outbox", "show", "no-such-event"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);

    // Requeue: a row that is not a dead letter fails and nothing moves; one by id; then all.
    let wrong = tables.run(&[
        "outbox",
        "requeue",
        &id_of("dead-1").to_string(),
        &id_of("wait-1").to_string(),
    ]);
    assert_eq!(wrong.code, 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("not a dead letter"),
        "{}",
        wrong.stderr
    );
    assert_eq!(store.count_by_status().unwrap().dead_letter, 2);
    let unsaid = tables.run(&["outbox", "requeue"]);
    assert_eq!(unsaid.code, 2, "{}", unsaid.stderr);
    assert!(
        unsaid.stderr.contains("their row ids, or --all"),
        "{}",
        unsaid.stderr
    );
    let unknown = tables.run(&["outbox", "requeue", "0"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    let one = tables
        .run(&[
            "--json",
            "outbox",
            "requeue",
            "--id",
            &id_of("dead-1").to_string(),
        ])
        .ok()
        .json();
    assert_eq!(one["requeued"], 1);
    let requeued = &store.find_by_event_id("dead-1").unwrap()[0];
    assert_eq!(
        (requeued.status, requeued.attempts),
        (OutboxStatus::Pending, 0)
    );
    assert_eq!(
        store.find_by_event_id("dead-2").unwrap()[0].status,
        OutboxStatus::DeadLetter
    );
    let all = tables.run(&["outbox", "requeue", "--all"]).ok().stdout;
    assert_eq!(all.trim(), "requeued 1 outbox dead letters");
    let counts = store.count_by_status().unwrap();
    assert_eq!(
        (counts.pending, counts.failed, counts.dead_letter),
        (4, 1, 0)
    );

    // Purge: only the rows published ten days ago go.
    let purged = tables
        .run(&["--json", "outbox", "purge", "--older-than", "1d"])
        .ok()
        .json();
    assert_eq!(purged["deleted"], 2);
    assert_eq!(purged["older_than_seconds"], 86_400);
    assert!(store.find_by_event_id("old-1").unwrap().is_empty());
    assert!(store.find_by_event_id("old-2").unwrap().is_empty());
    assert_eq!(store.find_by_event_id("new-1").unwrap().len(), 1);
    let counts = store.count_by_status().unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.failed,
            counts.published,
            counts.dead_letter
        ),
        (4, 1, 1, 0)
    );
    let again = tables.run(&["outbox", "purge", "--older-than", "1d"]).ok();
    assert_eq!(
        again.stdout.trim(),
        "deleted 0 published outbox rows older than 1d"
    );
}

/// `outbox lost` checks published rows against Redis: an entry deleted from the middle of its
/// stream (as a failover loses one) is listed; trimmed ones and present ones are not.
#[test]
fn outbox_lost_lists_published_rows_whose_entries_are_gone() {
    if !support::redis_available("cli::outbox_lost_lists_published_rows_whose_entries_are_gone") {
        return;
    }
    let path: PathBuf = std::env::temp_dir().join(format!("{}.db", unique_name("cli_lost")));
    let url = format!("sqlite://{}", path.display());
    let stream = unique_name("cli_lost");
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    let ids = redis
        .publish_batch(
            &stream,
            &(0..4)
                .map(|n| vec![("n".to_string(), n.to_string().into_bytes())])
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let mut raw = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    // The first trimmed away (as retention does), the third lost.
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids[0])
        .arg(&ids[2])
        .query(&mut raw)
        .unwrap();

    let store = SqliteOutbox::open(&path).unwrap();
    store.migrate().unwrap();
    let table = OutboxTable::named("event_outbox").unwrap();
    store.with_connection(|conn| {
        let mut tx = conn.transaction().unwrap();
        for n in 0..4 {
            table
                .enqueue(&mut tx, &stream, &outbox_event(&format!("old-{n}")))
                .unwrap();
        }
        tx.commit().unwrap();
    });
    settle(&store, Utc::now(), |event_id| RowOutcome::Published {
        entry_id: ids[event_id[4..].parse::<usize>().unwrap()].clone(),
    });
    let env = [
        ("EVENTFLOW_DATABASE_URL", url.as_str()),
        ("EVENTFLOW_REDIS_URL", &redis_url()),
    ];
    let found = eventflow(&env, &["--json", "outbox", "lost"]).ok().json();
    let text = eventflow(&env, &["outbox", "lost"]).ok();
    let _: i64 = redis::cmd("DEL").arg(&stream).query(&mut raw).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    assert_eq!(found["checked"], 4, "{found}");
    assert_eq!(found["unknown"], 0, "{found}");
    let lost: Vec<&str> = found["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(lost, ["old-2"], "{found}");
    assert!(text.stdout.contains("old-2"), "{}", text.stdout);
    assert!(
        text.stdout
            .contains("1 of 4 published rows lost their entries"),
        "{}",
        text.stdout
    );
}

/// `outbox lost --partitions`: rows enqueued for a stream the relay splits keep the stream's
/// name, and their entries are looked for in their aggregates' partitions; an entry deleted
/// there (older ones remaining) is listed. Without the flag nothing is found under the
/// stream's own name, and the rows are counted as unknown, not as lost.
#[test]
fn outbox_lost_looks_for_a_split_streams_entries_in_their_partitions() {
    if !support::redis_available(
        "cli::outbox_lost_looks_for_a_split_streams_entries_in_their_partitions",
    ) {
        return;
    }
    let path: PathBuf = std::env::temp_dir().join(format!("{}.db", unique_name("cli_lost")));
    let url = format!("sqlite://{}", path.display());
    let stream = unique_name("cli_lost");
    let redis = RedisStreams::connect(&redis_url()).unwrap();
    // Two events in each of two partitions, each published to its aggregate's partition.
    let mut entry_ids = std::collections::HashMap::new();
    let mut events = Vec::new();
    for partition in 0..2 {
        let target = partition_stream(&stream, partition);
        for n in 0..2 {
            let mut event = outbox_event(&format!("p{partition}-{n}"));
            while partition_of(&event.aggregate_id, 2) != partition {
                event.aggregate_id = uuid::Uuid::new_v4();
            }
            let id = redis
                .publish_batch(&target, &[vec![("n".to_string(), b"x".to_vec())]])
                .unwrap()
                .remove(0);
            entry_ids.insert(event.event_id.clone(), id);
            events.push(event);
        }
    }
    let mut raw = redis::Client::open(redis_url())
        .unwrap()
        .get_connection()
        .unwrap();
    // Partition 0's second entry is lost; its first, older one remains.
    let _: i64 = redis::cmd("XDEL")
        .arg(partition_stream(&stream, 0))
        .arg(&entry_ids["p0-1"])
        .query(&mut raw)
        .unwrap();

    let store = SqliteOutbox::open(&path).unwrap();
    store.migrate().unwrap();
    let table = OutboxTable::named("event_outbox").unwrap();
    store.with_connection(|conn| {
        let mut tx = conn.transaction().unwrap();
        for event in &events {
            table.enqueue(&mut tx, &stream, event).unwrap();
        }
        tx.commit().unwrap();
    });
    settle(&store, Utc::now(), |event_id| RowOutcome::Published {
        entry_id: entry_ids[event_id].clone(),
    });
    let env = [
        ("EVENTFLOW_DATABASE_URL", url.as_str()),
        ("EVENTFLOW_REDIS_URL", &redis_url()),
    ];
    let split = format!("{stream}=2");
    let found = eventflow(&env, &["--json", "outbox", "lost", "--partitions", &split])
        .ok()
        .json();
    let unsplit = eventflow(&env, &["--json", "outbox", "lost"]).ok().json();
    for partition in 0..2 {
        let _: i64 = redis::cmd("DEL")
            .arg(partition_stream(&stream, partition))
            .query(&mut raw)
            .unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    assert_eq!(
        (&found["checked"], &found["unknown"]),
        (&json!(4), &json!(0)),
        "{found}"
    );
    let lost: Vec<&str> = found["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(lost, ["p0-1"], "{found}");
    assert_eq!(unsplit["unknown"], 4, "{unsplit}");
    assert_eq!(
        unsplit["lost"].as_array().map(Vec::len),
        Some(0),
        "{unsplit}"
    );
}

/// The outbox in a SQLite file, found through EVENTFLOW_OUTBOX_TABLE: migrated, counted,
/// a dead letter listed and requeued, an old published row purged.
#[test]
fn sqlite_outbox_is_operated_too() {
    let path: PathBuf = std::env::temp_dir().join(format!("{}.db", unique_name("cli_outbox")));
    let url = format!("sqlite://{}", path.display());
    let env = [
        ("EVENTFLOW_DATABASE_URL", url.as_str()),
        ("EVENTFLOW_OUTBOX_TABLE", "shop_outbox"),
    ];
    let missing = eventflow(&env, &["outbox", "list"]);
    assert_eq!(missing.code, 3, "no file yet: {}", missing.stderr);
    let migrated = eventflow(&env, &["--json", "migrate", "--outbox"])
        .ok()
        .json();
    assert_eq!(migrated["outbox_table"], "shop_outbox");
    assert_eq!(migrated["database"], "SQLite");

    let store = SqliteOutbox::open(&path)
        .unwrap()
        .with_table("shop_outbox")
        .unwrap();
    let table = OutboxTable::named("shop_outbox").unwrap();
    store.with_connection(|conn| {
        let mut tx = conn.transaction().unwrap();
        for id in ["old-1", "dead-1", "retry-1"] {
            table.enqueue(&mut tx, "orders", &outbox_event(id)).unwrap();
        }
        tx.commit().unwrap();
    });
    settle(&store, Utc::now() - chrono::Duration::days(3), outcome);
    store.with_connection(|conn| {
        table
            .enqueue(conn, "orders", &outbox_event("wait-1"))
            .unwrap()
    });

    let status = eventflow(&env, &["--json", "status"]).ok().json();
    assert_eq!(status["outbox"]["table"], "shop_outbox");
    assert_eq!(
        status["outbox"]["counts"],
        json!({"pending": 1, "failed": 1, "published": 1, "dead_letter": 1})
    );
    assert_eq!(status["outbox"]["backlog"], 2);
    let listed = eventflow(&env, &["outbox", "list", "--status", "dead_letter"])
        .ok()
        .stdout;
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(line(&listed, "2 ").contains(" dead-1 "), "{listed}");
    // By the older spelling, `--id`, kept as a hidden alias of the positional ids.
    let requeued = eventflow(&env, &["--json", "outbox", "requeue", "--id", "2"])
        .ok()
        .json();
    assert_eq!(requeued["requeued"], 1);
    assert_eq!(
        store.find_by_event_id("dead-1").unwrap()[0].status,
        OutboxStatus::Pending
    );
    let everything = eventflow(&env, &["outbox", "purge", "--older-than", "0s"]);
    assert_eq!(everything.code, 2, "{}", everything.stderr);
    assert!(
        everything
            .stderr
            .contains("deletes every published outbox row; pass --yes"),
        "{}",
        everything.stderr
    );
    let purged = eventflow(&env, &["outbox", "purge", "--older-than", "2d"]).ok();
    assert_eq!(
        purged.stdout.trim(),
        "deleted 1 published outbox rows older than 2d"
    );
    let counts = store.count_by_status().unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.failed,
            counts.published,
            counts.dead_letter
        ),
        (2, 1, 0, 0)
    );

    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Starts an embedded consumer of `stream` into `store` that gives up on `Poison` events.
fn start_sqlite_consumer(stream: &MemoryStream, store: &Arc<SqliteStore>) -> ConsumerHandle {
    InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream("orders")
        .group("billing")
        .handler(|_tx, row| -> HandlerResult {
            if row.event.event_type == "Poison" {
                return Err(HandlerError::give_up("cannot handle poison"));
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap()
}

/// The line of `text` that starts with `first`.
fn line<'t>(text: &'t str, first: &str) -> &'t str {
    text.lines()
        .find(|line| line.starts_with(first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{text}"))
}

/// A table of the test's own in PostgreSQL, dropped at the end with what eventflow recorded.
struct MigrateTable(String);

impl Drop for MigrateTable {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&postgres_url(), postgres::NoTls) {
            support::drop_inbox_table(&mut client, &self.0, &[]);
        }
    }
}

/// `migrate --dry-run` prints every pending file (version, name, how it runs, its statements)
/// and changes nothing; a consumer that only verifies the schema refuses to start, naming the
/// command; after `eventflow migrate` it starts, and a dry run has nothing left to show.
#[test]
fn migrate_dry_run_changes_nothing_and_verify_passes_after_migrate() {
    if !support::postgres_available("migrate_dry_run_changes_nothing_and_verify_passes") {
        return;
    }
    let table = MigrateTable(unique_name("cli_dry"));
    let url = postgres_url();
    let env = [
        ("EVENTFLOW_DATABASE_URL", url.as_str()),
        ("EVENTFLOW_TABLE", table.0.as_str()),
    ];
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let exists = |client: &mut postgres::Client| -> bool {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.0])
            .unwrap()
            .get(0)
    };

    let plan = eventflow(&env, &["migrate", "--dry-run"]).ok().stdout;
    assert!(plan.contains("9 migration(s) would run"), "{plan}");
    assert!(
        plan.contains("0007 0007_live_consumers.sql (in one transaction)"),
        "{plan}"
    );
    assert!(
        plan.contains("0008 0008_headers.sql (in one transaction)"),
        "{plan}"
    );
    assert!(
        plan.contains("0005 0005_stream_positions.sql (in one transaction)"),
        "{plan}"
    );
    assert!(
        plan.contains("0006 0006_one_unique_index.sql (in one transaction)\n  DO $$"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "DROP INDEX uq_{}_event_id;\n      END IF;\n  END\n  $$;",
            table.0
        )),
        "the guarded drop is one statement, shown whole: {plan}"
    );
    assert!(
        plan.contains("0001 0001_event_inbox.sql (in one transaction)"),
        "{plan}"
    );
    assert!(
        plan.contains("0002 0002_eventflow_additions.sql (outside a transaction"),
        "{plan}"
    );
    assert!(
        plan.contains(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_{}_due",
            table.0
        )),
        "{plan}"
    );
    let json = eventflow(&env, &["--json", "migrate", "--dry-run"])
        .ok()
        .json();
    let pending = json["tables"][0]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 9, "{json}");
    assert_eq!(pending[1]["transactional"], false);
    assert!(!exists(&mut client), "the dry run created nothing");

    let store = Arc::new(
        PostgresStore::builder(url.clone())
            .table(&table.0)
            .pool_size(2)
            .build()
            .unwrap(),
    );
    let consumer = || {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .store(store.clone())
            .stream("orders")
            .group(&table.0)
            .readers(1)
            .workers(1)
            .migrations(eventflow::Migrations::Verify)
            .handler(|_tx, _row| -> HandlerResult { Ok(()) })
            .build()
            .unwrap()
    };
    let refused = consumer().start().expect_err("not migrated").to_string();
    assert!(
        refused.contains("0001_event_inbox.sql")
            && refused.contains(&format!("eventflow migrate --table {}", table.0)),
        "{refused}"
    );
    assert!(!exists(&mut client), "verifying created nothing");

    // `migrate list` names every file, none applied yet; it creates nothing either.
    let listed = eventflow(&env, &["--json", "migrate", "list"]).ok().json();
    let migrations = listed["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 9, "{listed}");
    assert_eq!(migrations[0]["name"], "0001_event_inbox.sql");
    assert!(migrations.iter().all(|m| m["applied"] == false), "{listed}");
    let human = eventflow(&env, &["migrate", "list"]).ok().stdout;
    assert!(human.contains("9 not applied"), "{human}");
    assert!(line(&human, "  0003").ends_with(" no"), "{human}");
    assert!(!exists(&mut client), "listing created nothing");

    // `migrate` says what it applied, one line a file; a second run, that nothing was left.
    let migrated = eventflow(&env, &["migrate"]).ok().stdout;
    assert!(
        migrated.contains(&format!(
            "migrated {} (PostgreSQL): applied 9 migrations\n  0001 0001_event_inbox.sql\n",
            table.0
        )),
        "{migrated}"
    );
    assert!(
        migrated.contains(
            "  0006 0006_one_unique_index.sql\n  0007 0007_live_consumers.sql\n  0008 0008_headers.sql\n  0009 0009_open_rows_index.sql"
        ),
        "{migrated}"
    );
    let again = eventflow(&env, &["--json", "migrate"]).ok().json();
    assert_eq!(again["tables"][0]["table"], table.0.as_str());
    assert_eq!(again["tables"][0]["applied"], json!([]), "{again}");
    let again = eventflow(&env, &["migrate"]).ok().stdout;
    assert!(again.contains("up to date, nothing to apply"), "{again}");
    let listed = eventflow(&env, &["--json", "migrate", "list"]).ok().json();
    assert!(
        listed["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["applied"] == true),
        "{listed}"
    );
    let human = eventflow(&env, &["migrate", "list"]).ok().stdout;
    assert!(human.contains("up to date"), "{human}");
    // What ordered consumers need comes apart, with --ordered.
    let ordered = eventflow(&env, &["--json", "migrate", "list", "--ordered"])
        .ok()
        .json();
    assert_eq!(
        ordered["migrations"],
        json!([{"version": 1, "name": "inbox_ordered/0001_aggregate_order_index.sql", "applied": false}]),
        "{ordered}"
    );
    let human = eventflow(&env, &["migrate", "list", "--ordered"])
        .ok()
        .stdout;
    assert!(
        human.contains("1 not applied (`eventflow migrate --ordered` applies them)"),
        "{human}"
    );
    let planned = eventflow(&env, &["migrate", "--ordered", "--dry-run"])
        .ok()
        .stdout;
    assert!(
        planned
            .contains("0001 inbox_ordered/0001_aggregate_order_index.sql (outside a transaction")
            && planned.contains(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_{}_aggregate_order",
                table.0
            )),
        "{planned}"
    );
    let migrated = eventflow(&env, &["migrate", "--ordered"]).ok().stdout;
    assert!(
        migrated.contains(&format!(
            "migrated {} (PostgreSQL): applied 1 migration\n  0001 inbox_ordered/0001_aggregate_order_index.sql",
            table.0
        )),
        "{migrated}"
    );
    let human = eventflow(&env, &["migrate", "list", "--ordered"])
        .ok()
        .stdout;
    assert!(human.contains("up to date"), "{human}");
    // The outbox's, in a table never created there.
    let outbox = unique_name("cli_dry_out");
    let outbox_list = eventflow(
        &env,
        &[
            "--json",
            "migrate",
            "list",
            "--outbox",
            "--outbox-table",
            &outbox,
        ],
    )
    .ok()
    .json();
    assert_eq!(outbox_list["table"], outbox.as_str());
    assert_eq!(
        outbox_list["migrations"][0]["applied"], false,
        "{outbox_list}"
    );
    let handle = consumer().start().expect("starts once migrated");
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let plan = eventflow(&env, &["migrate", "--dry-run"]).ok().stdout;
    assert!(plan.contains("is up to date"), "{plan}");
}

/// Under `--json` every failure is one object on standard error, `{"error": {"kind",
/// "exit_code", "message", "causes"}}`: arguments clap refused, a refused port, a database that
/// does not exist, a missing inbox or outbox table, an unknown row. The text form says the same
/// with its causes; a connection error names what failed (the refused port, the missing
/// database), and a missing inbox table says how to create it (exit code 4).
#[test]
fn errors_have_one_json_shape_and_keep_their_causes() {
    let no_file = [("EVENTFLOW_DATABASE_URL", "sqlite:/nonexistent/inbox.db")];
    let bare = eventflow(&no_file, &["--json", "purge", "--older-than", "7"]);
    assert_eq!(bare.code, 2, "{}", bare.stderr);
    let error = json_error(&bare);
    assert_eq!(error["kind"], "usage");
    assert!(
        error["message"].as_str().unwrap().contains("has no unit"),
        "{error}"
    );
    let unknown = eventflow(&no_file, &["frobnicate", "--json"]);
    assert_eq!(json_error(&unknown)["kind"], "usage");
    let help = eventflow(&[], &["--json", "--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Usage:"), "{}", help.stdout);
    let bare_text = eventflow(&no_file, &["purge", "--older-than", "7"]);
    assert_eq!(bare_text.code, 2);
    assert!(
        bare_text.stderr.contains("write 7s, 7m, 7h, 7d or 7w"),
        "{}",
        bare_text.stderr
    );

    // Nothing listens on the port: the refusal is in the message.
    let refused_url = "postgres://postgres@127.0.0.1:1/test";
    let refused = eventflow(
        &[("EVENTFLOW_DATABASE_URL", refused_url)],
        &["--json", "--connect-timeout", "1s", "status"],
    );
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let error = json_error(&refused);
    assert_eq!(error["kind"], "unreachable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{error}"
    );
    let refused = eventflow(
        &[("EVENTFLOW_DATABASE_URL", refused_url)],
        &["--connect-timeout", "1s", "dead-letters", "list"],
    );
    assert_eq!(refused.code, 3);
    assert!(
        refused.stderr.starts_with("eventflow: cannot connect: ")
            && refused.stderr.contains("Connection refused"),
        "{}",
        refused.stderr
    );

    if !support::postgres_available("cli::errors_have_one_json_shape_and_keep_their_causes") {
        return;
    }
    // The server answers, and says the database does not exist.
    let no_database = unique_name("cli_no_db");
    let url = support::postgres_url_with(Some(&no_database), None);
    for json in [true, false] {
        let mut args = vec!["--connect-timeout", "5s", "status"];
        if json {
            args.insert(0, "--json");
        }
        let missing = eventflow(&[("EVENTFLOW_DATABASE_URL", url.as_str())], &args);
        assert_eq!(missing.code, 3, "{}", missing.stderr);
        let says = format!("database \"{no_database}\" does not exist");
        if json {
            let error = json_error(&missing);
            assert_eq!(error["kind"], "unreachable");
            assert!(
                error["message"].as_str().unwrap().contains(&says),
                "{error}"
            );
        } else {
            assert!(missing.stderr.contains(&says), "{}", missing.stderr);
        }
    }

    // A table never migrated: exit code 4, and the command that creates it.
    let tables = PgTables::new();
    for args in [
        &["--json", "dead-letters", "list"][..],
        &["--json", "status"],
        &["--json", "purge", "--older-than", "7d"],
    ] {
        let missing = tables.run(args);
        assert_eq!(missing.code, 4, "{args:?}: {}", missing.stderr);
        let error = json_error(&missing);
        assert_eq!(error["kind"], "not_installed", "{error}");
        assert!(
            error["message"].as_str().unwrap().contains(&format!(
                "create it with `eventflow migrate --table {}`",
                tables.inbox
            )),
            "{error}"
        );
        assert!(
            error["causes"][0]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{error}"
        );
    }
    let missing = tables.run(&["quarantine", "list"]);
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    assert!(
        missing.stderr.starts_with(&format!(
            "eventflow: the inbox is not installed: table {} does not exist",
            tables.inbox
        )) && missing.stderr.contains("\n  caused by: "),
        "{}",
        missing.stderr
    );
    let outbox = tables.run(&["--json", "outbox", "list"]);
    assert_eq!(outbox.code, 4);
    assert_eq!(json_error(&outbox)["kind"], "not_installed");

    // Once migrated, an unknown row is not found.
    tables.run(&["migrate"]).ok();
    let unknown = tables.run(&["--json", "dead-letters", "show", "no-such-event"]);
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    let error = json_error(&unknown);
    assert_eq!(error["kind"], "not_found");
    assert_eq!(error["causes"], json!([]));
}

/// A reader that stops reading (`eventflow ... | head -1`) ends the command quietly, never
/// with a panic about a broken pipe.
#[test]
fn a_closed_standard_output_is_no_panic() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("cli_pipe")));
    let url = format!("sqlite:{}", path.display());
    let env = [("EVENTFLOW_DATABASE_URL", url.as_str())];
    eventflow(&env, &["migrate"]).ok();
    for args in [&["migrate", "list"][..], &["--json", "status"]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .envs(env)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run eventflow");
        // Nobody reads: every write finds the pipe closed.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("exited");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// On a terminal, a purge of every row asks first: "n" (or anything but yes) deletes nothing
/// and exits 1; "y" goes on. The terminal is util-linux's `script`, which runs the command on
/// a pseudo-terminal fed from the test's pipe.
#[test]
fn a_purge_of_everything_asks_on_a_terminal() {
    let has_script = Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !has_script {
        support::skipped("cli::a_purge_of_everything_asks_on_a_terminal: no `script` command");
        return;
    }
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("cli_ask")));
    let url = format!("sqlite:{}", path.display());
    eventflow(&[("EVENTFLOW_DATABASE_URL", url.as_str())], &["migrate"]).ok();
    let store = SqliteStore::open(&path).unwrap();
    let stream = MemoryStream::new();
    let store = Arc::new(store);
    let handle = start_sqlite_consumer(&stream, &store);
    let event = parse_event_json(&event_json("ask-1", "OrderCreated"), Utc::now()).unwrap();
    stream.publish("orders", event.to_entry_fields()).unwrap();
    assert!(wait_until(WAIT, || store
        .count_by_status()
        .unwrap()
        .get(EventStatus::Processed)
        == 1));
    handle.shutdown(Duration::from_secs(10)).unwrap();

    let on_a_terminal = |answer: &str| -> (i32, String) {
        // `script` hands the command to a shell: quoted, in case a path holds a space.
        let quote = |text: &str| format!("'{}'", text.replace('\'', "'\\''"));
        let command = format!(
            "{} --database-url {} purge --older-than 0s",
            quote(env!("CARGO_BIN_EXE_eventflow")),
            quote(&url)
        );
        let mut child = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run script");
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code().expect("exited"), shown)
    };
    let (code, shown) = on_a_terminal("n\n");
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("deletes every processed row, however recent. Go on? [y/N]")
            && shown.contains("not confirmed: nothing was deleted"),
        "{shown}"
    );
    assert_eq!(
        store.count_by_status().unwrap().get(EventStatus::Processed),
        1
    );
    let (code, shown) = on_a_terminal("y\n");
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("deleted 1 processed rows older than 0s"),
        "{shown}"
    );
    assert_eq!(
        store.count_by_status().unwrap().get(EventStatus::Processed),
        0
    );
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
