//! The consumer end to end on the embedded backends: SQLite and the in-process stream.
//! Each test counts what happened to every event it published.

mod support;

use eventflow::inbox::{ConsumerBuilder, DeadLetter, Prebuilt, DEAD_LETTER_MESSAGE};
use eventflow::store::{InboxStore, SqliteStore};
use eventflow::transport::{GroupStats, MemoryStream, ReadRequest, StreamEntry, Transport};
use eventflow::{
    ConsumerHandle, Error, Event, EventStatus, HandlerError, HandlerResult, InboxConsumer,
    InboxRow, ManualClock,
};
use parking_lot::Mutex;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::wait_until;
use uuid::Uuid;

const STREAM: &str = "orders";
const GROUP: &str = "billing";
const WAIT: Duration = Duration::from_secs(30);

fn event(event_id: &str, event_type: &str) -> Event {
    let mut event = Event::new(event_type, Uuid::new_v4(), json!({ "n": event_id }));
    event.event_id = event_id.to_string();
    event
}

fn flattened(event: &Event) -> Vec<(String, Vec<u8>)> {
    vec![
        ("event_id".into(), event.event_id.clone().into_bytes()),
        ("event_type".into(), event.event_type.clone().into_bytes()),
        (
            "aggregate_id".into(),
            event.aggregate_id.to_string().into_bytes(),
        ),
        (
            "occurred_on".into(),
            event.occurred_on.to_rfc3339().into_bytes(),
        ),
        ("payload".into(), event.payload.to_string().into_bytes()),
    ]
}

/// An in-memory SQLite store with a `handled` table the handlers write to.
fn store() -> Arc<SqliteStore> {
    let store = SqliteStore::open_in_memory().unwrap();
    store.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE handled (event_id TEXT NOT NULL, attempt INTEGER)")
            .unwrap()
    });
    Arc::new(store)
}

fn handled(store: &SqliteStore) -> (u64, u64) {
    store.with_connection(|conn| {
        conn.query_row(
            "SELECT count(*), count(DISTINCT event_id) FROM handled",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap()
    })
}

fn count(store: &SqliteStore, status: EventStatus) -> u64 {
    store.count_by_status().unwrap().get(status)
}

fn record(tx: &rusqlite::Transaction<'_>, row: &InboxRow) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO handled (event_id, attempt) VALUES (?1, ?2)",
        rusqlite::params![row.event.event_id, row.retry_count + 1],
    )
}

type Builder = ConsumerBuilder<Prebuilt<SqliteStore>, ()>;

/// Starts a consumer of `transport` into `store` whose handler records each event, with the
/// settings `tune` adds.
fn start_recording(
    transport: impl Transport,
    store: &Arc<SqliteStore>,
    tune: impl FnOnce(Builder) -> Builder,
) -> ConsumerHandle {
    tune(
        InboxConsumer::builder()
            .transport(transport)
            .store(store.clone())
            .stream(STREAM)
            .group(GROUP),
    )
    .handler(|tx, row| -> HandlerResult {
        record(tx, row)?;
        Ok(())
    })
    .build()
    .unwrap()
    .start()
    .unwrap()
}

fn group_stats(stream: &MemoryStream) -> GroupStats {
    stream.group_stats(STREAM, GROUP).unwrap()
}

#[test]
fn every_event_is_handled_once_across_duplicates_styles_and_malformed_entries() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder.workers(4).read_batch(50)
    });

    let events: Vec<Event> = (0..300)
        .map(|i| event(&format!("e-{i}"), "OrderCreated"))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let fields = if i % 3 == 0 {
            flattened(event)
        } else {
            event.to_entry_fields()
        };
        stream.publish(STREAM, fields).unwrap();
    }
    // The same events again, as a producer retrying its XADD would send them.
    for event in &events[..50] {
        stream.publish(STREAM, event.to_entry_fields()).unwrap();
    }
    let malformed: Vec<Vec<(String, Vec<u8>)>> = vec![
        vec![("data".into(), b"{not json".to_vec())],
        vec![("event_id".into(), b"x-1".to_vec())],
        vec![("data".into(), vec![0xff, 0x00, 0xfe])],
    ];
    for fields in &malformed {
        stream.publish(STREAM, fields.clone()).unwrap();
    }

    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 300);
    assert_eq!(handle.stats().quarantined, 3);
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        handled(&store),
        (300, 300),
        "each event handled exactly once"
    );
    assert_eq!(report.stats.received, 353);
    assert_eq!(report.stats.duplicates, 50);
    assert_eq!(report.stats.processed, 300);
    assert_eq!(group_stats(&stream).pending, 0, "every entry acknowledged");

    let quarantined = store.list_quarantined(10, 0).unwrap();
    assert_eq!(quarantined.len(), 3);
    let kept: Vec<_> = quarantined.iter().map(|q| q.fields.clone()).collect();
    for fields in &malformed {
        let raw = StreamEntry::from_text_fields("0-0", fields.clone()).fields;
        assert!(kept.contains(&raw), "raw fields kept exactly: {fields:?}");
    }
    assert!(quarantined
        .iter()
        .any(|q| q.reason.contains("missing required field `event_type`")));
    assert!(quarantined
        .iter()
        .all(|q| q.stream == STREAM && !q.stream_id.is_empty()));
}

#[test]
fn a_fixed_quarantined_entry_can_be_replayed_and_is_then_handled() {
    let stream = MemoryStream::new();
    let store = store();
    // The default poll interval and orphan_after: wait_idle has a worker take the replayed
    // row, which no reader handed over, without waiting for either.
    let handle = start_recording(stream.clone(), &store, |builder| builder);
    let good = event("fixed-1", "OrderCreated");
    let mut data = good.to_json();
    data.as_object_mut().unwrap().remove("aggregate_id");
    stream
        .publish(STREAM, vec![("data".into(), data.to_string().into_bytes())])
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().quarantined, 1);

    let entry = store.list_quarantined(10, 0).unwrap().remove(0);
    assert!(entry.reason.contains("aggregate_id"), "{}", entry.reason);
    let replayed = eventflow::quarantine::replay(
        store.as_ref(),
        entry.id,
        Some(StreamEntry::from_text_fields("0-0", good.to_entry_fields()).fields),
        3,
        chrono::Utc::now(),
    )
    .unwrap();
    assert_eq!(replayed, "fixed-1");
    // Workers find the replayed row on their own: no stream entry announces it.
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 1);
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(handled(&store), (1, 1));
    let entry = store.find_quarantined(entry.id).unwrap().unwrap();
    assert_eq!(entry.replayed_event_id.as_deref(), Some("fixed-1"));
    assert!(matches!(
        eventflow::quarantine::replay(store.as_ref(), entry.id, None, 3, chrono::Utc::now()),
        Err(Error::NotFound(_)) | Err(Error::Entry(_))
    ));
}

#[test]
fn failures_follow_the_retry_schedule_then_dead_letter_and_panics_never_kill_the_worker() {
    let stream = MemoryStream::new();
    let store = store();
    let clock = ManualClock::starting_now();
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = attempts.clone();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .workers(1) // one worker: the panic must not take it down
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .handler(move |tx, row| -> HandlerResult {
            let attempt = {
                let mut attempts = seen.lock();
                let n = attempts.entry(row.event.event_id.clone()).or_default();
                *n += 1;
                *n
            };
            record(tx, row)?; // rolled back whenever the attempt fails
            match row.event.event_type.as_str() {
                "Flaky" if attempt < 3 => {
                    Err(HandlerError::retry(format!("flaky attempt {attempt}")))
                }
                "Broken" => Err("always broken".into()),
                "Hopeless" => Err(HandlerError::give_up("cannot ever work")),
                "Panics" if attempt == 1 => panic!("boom on first attempt"),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    for (id, kind) in [
        ("flaky", "Flaky"),
        ("broken", "Broken"),
        ("hopeless", "Hopeless"),
        ("panics", "Panics"),
    ] {
        stream
            .publish(STREAM, event(id, kind).to_entry_fields())
            .unwrap();
    }
    let row = |id: &str| store.find_by_event_id(id).unwrap().unwrap();
    let is = |id: &str, check: &dyn Fn(&InboxRow) -> bool| {
        store
            .find_by_event_id(id)
            .unwrap()
            .is_some_and(|r| check(&r))
    };
    handle.wait_idle(WAIT).unwrap();
    assert!(is("flaky", &|r| r.retry_count == 1));
    assert!(is("broken", &|r| r.retry_count == 1));
    assert!(is("hopeless", &|r| r.status == EventStatus::DeadLetter));
    assert!(is("panics", &|r| r.retry_count == 1));

    let flaky = row("flaky");
    assert_eq!(flaky.status, EventStatus::Failed);
    assert_eq!(flaky.error_message.as_deref(), Some("flaky attempt 1"));
    let delay = flaky.next_retry_at.unwrap() - flaky.last_error_at.unwrap();
    assert!(
        (60..=66).contains(&delay.num_seconds()),
        "first retry after 60 s + up to 10 %, got {delay}"
    );
    let hopeless = row("hopeless");
    assert_eq!(
        (hopeless.retry_count, hopeless.next_retry_at),
        (1, None),
        "given up at once"
    );
    let panicked = row("panics");
    assert_eq!(panicked.status, EventStatus::Failed);
    let message = panicked.error_message.unwrap();
    assert!(
        message.contains("handler panicked: boom on first attempt"),
        "{message}"
    );

    // The worker survived the panic: a new event is handled.
    stream
        .publish(STREAM, event("after-panic", "Plain").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(row("after-panic").status, EventStatus::Processed);

    // Nothing is retried before its time: wait_idle has a worker claim every due row.
    clock.advance(Duration::from_secs(50));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(row("flaky").retry_count, 1);

    clock.advance(Duration::from_secs(20)); // 70 s: past 60 s + 10 %
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(row("flaky").retry_count, 2);
    assert_eq!(row("panics").status, EventStatus::Processed);
    let flaky = row("flaky");
    let delay = flaky.next_retry_at.unwrap() - flaky.last_error_at.unwrap();
    assert!(
        (120..=132).contains(&delay.num_seconds()),
        "second retry after 120 s + up to 10 %, got {delay}"
    );

    clock.advance(Duration::from_secs(140));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(row("flaky").status, EventStatus::Processed);
    assert_eq!(row("broken").status, EventStatus::DeadLetter);
    handle.shutdown(Duration::from_secs(10)).unwrap();

    let flaky = row("flaky");
    assert_eq!(
        (flaky.retry_count, flaky.error_message, flaky.next_retry_at),
        (0, None, None)
    );
    let broken = row("broken");
    assert_eq!(
        (broken.retry_count, broken.next_retry_at),
        (3, None),
        "dead-lettered after max_retries = 3"
    );
    assert_eq!(broken.error_message.as_deref(), Some("always broken"));
    let attempts = attempts.lock();
    assert_eq!(
        (
            attempts["flaky"],
            attempts["broken"],
            attempts["hopeless"],
            attempts["panics"]
        ),
        (3, 3, 1, 2)
    );
    // Only the successful attempts' writes survived.
    let kept: Vec<(String, i64)> = store.with_connection(|conn| {
        let mut statement = conn
            .prepare("SELECT event_id, attempt FROM handled ORDER BY event_id")
            .unwrap();
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    });
    assert_eq!(
        kept,
        vec![
            ("after-panic".into(), 1),
            ("flaky".into(), 3),
            ("panics".into(), 2)
        ]
    );
}

#[test]
fn shutdown_drains_in_flight_work_and_can_be_called_twice() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .workers(2)
        .read_batch(20)
        .block(Duration::from_millis(100))
        .reclaim_idle(Duration::from_secs(5))
        .handler(|tx, row| -> HandlerResult {
            std::thread::sleep(Duration::from_millis(3));
            record(tx, row)?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    for i in 0..400 {
        stream
            .publish(STREAM, event(&format!("d-{i}"), "Slow").to_entry_fields())
            .unwrap();
    }
    assert!(wait_until(WAIT, || handle.stats().processed >= 20));
    let report = handle.shutdown(Duration::from_secs(30)).unwrap();
    assert!(report.stopped_now);
    assert_eq!(
        report.threads_joined, 5,
        "two readers, two workers and the hung-handler watch"
    );
    assert!(
        report.drained > 0,
        "queued rows were handled during shutdown: {report:?}"
    );

    // Everything stored was handled; everything not read is still in the stream, undelivered.
    assert_eq!(count(&store, EventStatus::Pending), 0);
    let processed = count(&store, EventStatus::Processed);
    assert_eq!(processed, report.stats.processed);
    assert_eq!(handled(&store), (processed, processed));
    let stats = group_stats(&stream);
    assert_eq!(stats.pending, 0, "nothing read was left unacknowledged");
    assert_eq!(processed + stats.lag.unwrap(), 400, "no event lost");

    let again = handle.shutdown(Duration::from_secs(1)).unwrap();
    assert!(!again.stopped_now);
    assert!(!handle.is_running());
}

#[test]
fn entries_a_dead_consumer_left_pending_are_reclaimed() {
    let stream = MemoryStream::new();
    let store = store();
    stream.ensure_group(STREAM, GROUP).unwrap();
    for i in 0..30 {
        stream
            .publish(STREAM, event(&format!("r-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    // A consumer reads ten entries and dies before storing or acknowledging them.
    let read = stream
        .read_group(&ReadRequest {
            stream: STREAM,
            group: GROUP,
            consumer: "dead",
            count: 10,
            block: Duration::ZERO,
        })
        .unwrap();
    assert_eq!(read.len(), 10);

    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .reclaim_idle(Duration::from_millis(200))
            .reclaim_interval(Duration::from_millis(50))
    });
    // Idle only once the dead consumer's entries are taken over and handled.
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 30);
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(report.stats.reclaimed, 10);
    assert_eq!(handled(&store), (30, 30));
    assert_eq!(group_stats(&stream).pending, 0);
}

#[test]
fn a_lost_consumer_group_is_created_again_and_redelivery_is_deduplicated() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .reclaim_idle(Duration::from_secs(5))
    });
    for i in 0..5 {
        stream
            .publish(STREAM, event(&format!("g-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 5);
    assert!(stream.destroy_group(STREAM, GROUP));
    for i in 5..10 {
        stream
            .publish(STREAM, event(&format!("g-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    // Idle once the group is back and has delivered the new entries.
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 10);
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    // The new group starts after the newest stored entry: the first five are not read again.
    assert_eq!(report.stats.duplicates, 0);
    assert_eq!(handled(&store), (10, 10));
}

/// Issue 9 part 6: a group lost after retention purged the rows it had stored does not replay
/// the stream's history. 1,000 events handled and purged, the group destroyed, 100 more
/// published: 100 more handler runs, not 1,100.
#[test]
fn a_lost_group_does_not_replay_history_that_retention_purged() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .read_batch(100)
            .reclaim_idle(Duration::from_secs(5))
    });
    for i in 0..1000 {
        stream
            .publish(STREAM, event(&format!("h-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 1000);
    let purged = store
        .delete_processed_before(&eventflow::store::ProcessedCleanup {
            before: chrono::Utc::now() + chrono::Duration::days(1),
            limit: 10_000,
            exclusive: true,
        })
        .unwrap();
    assert_eq!(purged, eventflow::store::Cleanup::Deleted(1000));
    assert_eq!(count(&store, EventStatus::Processed), 0);
    assert!(stream.destroy_group(STREAM, GROUP));
    for i in 1000..1100 {
        stream
            .publish(STREAM, event(&format!("h-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    // Idle: the group is back and has delivered every entry, all acknowledged and handled.
    handle.wait_idle(WAIT).unwrap();
    let stats = group_stats(&stream);
    assert_eq!((stats.lag, stats.pending), (Some(0), 0));
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        handled(&store),
        (1100, 1100),
        "100 more handler runs, not 1,100"
    );
    assert_eq!(count(&store, EventStatus::Processed), 100);
    assert_eq!(report.stats.duplicates, 0);
}

/// A group lost while no consumer runs is created at start after the newest entry the inbox
/// stored, not from the start of the stream, even once retention purged those rows.
#[test]
fn start_creates_a_missing_group_after_the_newest_stored_entry() {
    let stream = MemoryStream::new();
    let store = store();
    let first = start_recording(stream.clone(), &store, |builder| {
        builder.block(Duration::from_millis(20))
    });
    for i in 0..50 {
        stream
            .publish(STREAM, event(&format!("s-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    first.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 50);
    first.shutdown(Duration::from_secs(10)).unwrap();
    store
        .delete_processed_before(&eventflow::store::ProcessedCleanup {
            before: chrono::Utc::now() + chrono::Duration::days(1),
            limit: 1000,
            exclusive: true,
        })
        .unwrap();
    assert!(stream.destroy_group(STREAM, GROUP));
    for i in 50..60 {
        stream
            .publish(STREAM, event(&format!("s-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    let second = start_recording(stream.clone(), &store, |builder| {
        builder.block(Duration::from_millis(20))
    });
    second.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 10);
    let stats = group_stats(&stream);
    assert_eq!((stats.lag, stats.pending), (Some(0), 0));
    let report = second.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(handled(&store), (60, 60), "10 more handler runs, not 60");
    assert_eq!(report.stats.received, 10);
}

/// A transport that fails every call while `down` is set, as a broker outage would.
#[derive(Clone)]
struct Outage {
    inner: MemoryStream,
    down: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    /// Fail only `XAUTOCLAIM`, as a Redis older than 6.2 or an ACL would.
    no_reclaim: bool,
}

impl Outage {
    fn new(no_reclaim: bool) -> Self {
        Self {
            inner: MemoryStream::new(),
            down: Arc::default(),
            failures: Arc::default(),
            no_reclaim,
        }
    }

    fn check(&self) -> Result<(), eventflow::transport::TransportError> {
        if self.down.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(eventflow::transport::TransportError::Unavailable(
                "connection refused".into(),
            ));
        }
        Ok(())
    }
}

impl Transport for Outage {
    fn create_group(
        &self,
        stream: &str,
        group: &str,
        after: &str,
    ) -> Result<(), eventflow::transport::TransportError> {
        self.check()?;
        self.inner.create_group(stream, group, after)
    }
    fn read_group(
        &self,
        request: &ReadRequest<'_>,
    ) -> Result<Vec<eventflow::transport::StreamEntry>, eventflow::transport::TransportError> {
        self.check()?;
        self.inner.read_group(request)
    }
    fn ack(
        &self,
        stream: &str,
        group: &str,
        ids: &[String],
    ) -> Result<u64, eventflow::transport::TransportError> {
        self.check()?;
        self.inner.ack(stream, group, ids)
    }
    fn reclaim_stale(
        &self,
        request: &eventflow::transport::ReclaimRequest<'_>,
    ) -> Result<eventflow::transport::Reclaimed, eventflow::transport::TransportError> {
        self.check()?;
        if self.no_reclaim {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(eventflow::transport::TransportError::Broker(
                "ERR unknown command 'XAUTOCLAIM'".into(),
            ));
        }
        self.inner.reclaim_stale(request)
    }
    fn publish_entries(
        &self,
        entries: &[eventflow::transport::OutgoingEntry<'_>],
    ) -> Result<
        Vec<Result<String, eventflow::transport::TransportError>>,
        eventflow::transport::TransportError,
    > {
        self.inner.publish_entries(entries)
    }
    fn trim(
        &self,
        stream: &str,
        max_len: usize,
    ) -> Result<u64, eventflow::transport::TransportError> {
        self.inner.trim(stream, max_len)
    }
    fn trim_consumed(
        &self,
        stream: &str,
        before: &str,
    ) -> Result<u64, eventflow::transport::TransportError> {
        self.inner.trim_consumed(stream, before)
    }
    fn group_stats(
        &self,
        stream: &str,
        group: &str,
    ) -> Result<GroupStats, eventflow::transport::TransportError> {
        self.inner.group_stats(stream, group)
    }
    fn oldest_pending_before(
        &self,
        stream: &str,
        group: &str,
        before: &str,
    ) -> Result<Option<eventflow::transport::PendingEntry>, eventflow::transport::TransportError>
    {
        self.check()?;
        self.inner.oldest_pending_before(stream, group, before)
    }
    fn ping(&self, timeout: Duration) -> Result<(), eventflow::transport::TransportError> {
        self.check()?;
        self.inner.ping(timeout)
    }
}

#[test]
fn a_broker_outage_is_waited_out_without_losing_events() {
    let outage = Outage::new(false);
    let store = store();
    let handle = start_recording(outage.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .reclaim_idle(Duration::from_secs(5))
    });
    outage.down.store(true, Ordering::SeqCst);
    for i in 0..50 {
        outage
            .publish(STREAM, event(&format!("o-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    assert!(wait_until(WAIT, || outage.failures.load(Ordering::SeqCst) >= 3));
    assert!(handle.is_running(), "an outage does not stop the consumer");
    outage.down.store(false, Ordering::SeqCst);
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 50);
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(handled(&store), (50, 50));
}

#[test]
fn build_rejects_bad_configuration_naming_the_field() {
    let field = |result: Result<eventflow::InboxConsumer, Error>| match result {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let ok = |_: &mut rusqlite::Transaction<'_>, _: &InboxRow| -> HandlerResult { Ok(()) };
    assert_eq!(
        field(
            InboxConsumer::builder()
                .sqlite_in_memory()
                .stream("s")
                .group("g")
                .handler(ok)
                .build()
        ),
        "transport"
    );
    assert_eq!(
        field(
            InboxConsumer::builder()
                .transport(MemoryStream::new())
                .sqlite_in_memory()
                .group("g")
                .handler(ok)
                .build()
        ),
        "stream"
    );
    assert_eq!(
        field(
            InboxConsumer::builder()
                .transport(MemoryStream::new())
                .sqlite_in_memory()
                .stream("s")
                .group("g")
                .block(Duration::from_secs(5))
                .reclaim_idle(Duration::from_secs(2))
                .handler(ok)
                .build()
        ),
        "reclaim_idle"
    );
    let pg = InboxConsumer::builder()
        .transport(MemoryStream::new())
        .postgres("host=127.0.0.1 user=postgres")
        .stream("s")
        .group("g")
        .workers(8)
        .pool_size(4)
        .handler(|_, _| Ok(()))
        .build();
    assert_eq!(field(pg), "pool_size");
    let bad_table = InboxConsumer::builder()
        .transport(MemoryStream::new())
        .sqlite_in_memory()
        .table("inbox; DROP TABLE users")
        .stream("s")
        .group("g")
        .handler(ok)
        .build();
    assert!(matches!(
        bad_table,
        Err(Error::Store(
            eventflow::store::StoreError::InvalidTableName { .. }
        ))
    ));
}

/// A store that refuses, as a data error, any batch holding an event whose id starts with
/// `poison`, the way PostgreSQL refuses a value out of its range.
struct Refusing(SqliteStore);

fn refused() -> eventflow::store::StoreError {
    eventflow::store::StoreError::Sqlite {
        context: "insert an event",
        source: rusqlite::Error::ToSqlConversionFailure("value out of range".into()),
    }
}

struct Forward<'a>(&'a mut dyn eventflow::store::RowHandler<Refusing>);

impl eventflow::store::RowHandler<SqliteStore> for Forward<'_> {
    fn handle(
        &mut self,
        tx: &mut rusqlite::Transaction<'_>,
        row: &InboxRow,
    ) -> eventflow::store::Verdict {
        self.0.handle(tx, row)
    }
    fn failed_after(&mut self, row: &InboxRow, error: String) -> eventflow::store::Verdict {
        self.0.failed_after(row, error)
    }
}

impl InboxStore for Refusing {
    type Tx<'t> = rusqlite::Transaction<'t>;
    fn migrate(&self) -> Result<(), eventflow::store::StoreError> {
        self.0.migrate()
    }
    fn pending_migrations(
        &self,
    ) -> Result<Vec<eventflow::store::PendingMigration>, eventflow::store::StoreError> {
        self.0.pending_migrations()
    }
    fn store_received(
        &self,
        batch: &eventflow::store::ReceivedBatch<'_>,
    ) -> Result<eventflow::store::Stored, eventflow::store::StoreError> {
        if batch
            .events
            .iter()
            .any(|e| e.event.event_id.starts_with("poison"))
        {
            return Err(refused());
        }
        self.0.store_received(batch)
    }
    fn process_claimed(
        &self,
        claim: &eventflow::store::ClaimParams<'_>,
        handler: &mut dyn eventflow::store::RowHandler<Self>,
    ) -> Result<Vec<eventflow::store::Settled>, eventflow::store::StoreError> {
        self.0.process_claimed(claim, &mut Forward(handler))
    }
    fn count_by_status(
        &self,
    ) -> Result<eventflow::store::StatusCounts, eventflow::store::StoreError> {
        self.0.count_by_status()
    }
    fn table(&self) -> &str {
        InboxStore::table(&self.0)
    }
    fn adopt_owner(
        &self,
        group: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, eventflow::store::StoreError> {
        self.0.adopt_owner(group, now)
    }
    fn find_owner(&self) -> Result<Option<String>, eventflow::store::StoreError> {
        self.0.find_owner()
    }
    #[allow(clippy::type_complexity)]
    fn count_by_stream(
        &self,
    ) -> Result<Vec<(Option<String>, eventflow::store::StatusCounts)>, eventflow::store::StoreError>
    {
        self.0.count_by_stream()
    }
    fn list_parked(
        &self,
        page: &eventflow::store::ParkedPage,
    ) -> Result<Vec<eventflow::store::ParkedAggregate>, eventflow::store::StoreError> {
        self.0.list_parked(page)
    }
    fn parked_summary(
        &self,
    ) -> Result<eventflow::store::ParkedSummary, eventflow::store::StoreError> {
        self.0.parked_summary()
    }
    fn skip_dead_letter(
        &self,
        skip: &eventflow::store::DeadLetterSkip,
    ) -> Result<bool, eventflow::store::StoreError> {
        self.0.skip_dead_letter(skip)
    }
    fn find_by_event_id(
        &self,
        event_id: &str,
    ) -> Result<Option<InboxRow>, eventflow::store::StoreError> {
        self.0.find_by_event_id(event_id)
    }
    fn list_quarantined(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<eventflow::quarantine::QuarantinedEntry>, eventflow::store::StoreError> {
        self.0.list_quarantined(limit, offset)
    }
    fn find_quarantined(
        &self,
        id: Uuid,
    ) -> Result<Option<eventflow::quarantine::QuarantinedEntry>, eventflow::store::StoreError> {
        self.0.find_quarantined(id)
    }
    fn replay_quarantined(
        &self,
        replay: &eventflow::store::QuarantineReplay<'_>,
    ) -> Result<bool, eventflow::store::StoreError> {
        self.0.replay_quarantined(replay)
    }
    fn ping(&self) -> Result<(), eventflow::store::StoreError> {
        self.0.ping()
    }
    fn list_rows(
        &self,
        filter: &eventflow::store::RowFilter,
        page: &eventflow::store::Page,
    ) -> Result<Vec<eventflow::store::InboxRecord>, eventflow::store::StoreError> {
        self.0.list_rows(filter, page)
    }
    fn oldest_received(
        &self,
        status: EventStatus,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, eventflow::store::StoreError> {
        self.0.oldest_received(status)
    }
    fn requeue_dead_letters(
        &self,
        requeue: &eventflow::store::DeadLetterRequeue<'_>,
    ) -> Result<eventflow::store::Requeued, eventflow::store::StoreError> {
        self.0.requeue_dead_letters(requeue)
    }
    fn list_quarantined_matching(
        &self,
        filter: &eventflow::store::QuarantineFilter,
        page: &eventflow::store::Page,
    ) -> Result<Vec<eventflow::quarantine::QuarantinedEntry>, eventflow::store::StoreError> {
        self.0.list_quarantined_matching(filter, page)
    }
    fn delete_processed_before(
        &self,
        cleanup: &eventflow::store::ProcessedCleanup,
    ) -> Result<eventflow::store::Cleanup, eventflow::store::StoreError> {
        self.0.delete_processed_before(cleanup)
    }
    fn delete_quarantined_before(
        &self,
        cleanup: &eventflow::store::QuarantineCleanup,
    ) -> Result<eventflow::store::Cleanup, eventflow::store::StoreError> {
        self.0.delete_quarantined_before(cleanup)
    }
    fn newest_stream_id(
        &self,
        stream: &str,
    ) -> Result<Option<String>, eventflow::store::StoreError> {
        self.0.newest_stream_id(stream)
    }
}

#[test]
fn an_entry_the_database_refuses_is_quarantined_without_holding_back_its_batch() {
    assert!(refused().is_data_error());
    let stream = MemoryStream::new();
    let inner = SqliteStore::open_in_memory().unwrap();
    inner.with_connection(|conn| {
        conn.execute_batch("CREATE TABLE handled (event_id TEXT NOT NULL, attempt INTEGER)")
            .unwrap()
    });
    let store = Arc::new(Refusing(inner));
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .readers(1)
        .handler(|tx, row| -> HandlerResult {
            record(tx, row)?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let mut entries: Vec<_> = (0..10)
        .map(|i| event(&format!("ok-{i}"), "T").to_entry_fields())
        .collect();
    entries.insert(4, event("poison-1", "T").to_entry_fields());
    stream.publish_batch(STREAM, &entries).unwrap();
    // Later batches are read too: the reader is not stuck on the refused one.
    stream
        .publish(STREAM, event("later", "T").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(
        store.count_by_status().unwrap().get(EventStatus::Processed),
        11
    );
    assert_eq!(handle.stats().quarantined, 1);
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let quarantined = store.list_quarantined(10, 0).unwrap();
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].reason.contains("refused by the database"),
        "{}",
        quarantined[0].reason
    );
    let replayable = Event::from_entry(&quarantined[0].to_stream_entry()).unwrap();
    assert_eq!(
        replayable.event_id, "poison-1",
        "raw fields kept for replay"
    );
    assert_eq!(group_stats(&stream).pending, 0, "every entry acknowledged");
}

#[test]
fn a_broker_without_reclaim_still_gets_read() {
    let outage = Outage::new(true);
    let store = store();
    let handle = start_recording(outage.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .reclaim_idle(Duration::from_millis(100))
            .reclaim_interval(Duration::from_millis(50))
    });
    for i in 0..20 {
        outage
            .publish(STREAM, event(&format!("n-{i}"), "T").to_entry_fields())
            .unwrap();
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 20);
    assert!(
        outage.failures.load(Ordering::SeqCst) >= 2,
        "reclaim was tried and failed"
    );
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(handled(&store), (20, 20));
}

/// A retry policy that panics, counting how often it was asked.
struct PanickingPolicy(Arc<AtomicUsize>);

impl eventflow::RetryPolicy for PanickingPolicy {
    fn delay(&self, _failures: u32, _jitter: f64) -> Duration {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("retry policy bug");
    }
}

#[test]
fn a_panic_outside_the_handler_rolls_back_the_batch_and_the_worker_goes_on() {
    let stream = MemoryStream::new();
    let store = store();
    let asked = Arc::new(AtomicUsize::new(0));
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .workers(1)
        .retry_policy(PanickingPolicy(asked.clone()))
        .handler(|tx, row| -> HandlerResult {
            record(tx, row)?;
            if row.event.event_type == "Bad" {
                return Err("fails, so the policy is asked".into());
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    stream
        .publish(STREAM, event("bad", "Bad").to_entry_fields())
        .unwrap();
    assert!(wait_until(WAIT, || asked.load(Ordering::SeqCst) >= 1));
    stream
        .publish(STREAM, event("good", "Good").to_entry_fields())
        .unwrap();
    assert!(
        wait_until(WAIT, || store
            .find_by_event_id("good")
            .unwrap()
            .is_some_and(|r| r.status == EventStatus::Processed)),
        "the only worker survived the panic"
    );
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let bad = store.find_by_event_id("bad").unwrap().unwrap();
    assert_eq!(
        (bad.status, bad.retry_count),
        (EventStatus::Pending, 0),
        "its batch rolled back"
    );
    assert_eq!(
        handled(&store),
        (1, 1),
        "only the good event's write committed"
    );
}

#[test]
fn a_sqlite_handler_that_calls_its_store_fails_instead_of_hanging() {
    let stream = MemoryStream::new();
    let store = store();
    let inner = store.clone();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .handler(move |_tx, _row| -> HandlerResult {
            inner.with_connection(|_| ());
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    stream
        .publish(STREAM, event("self-call", "T").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    handle.shutdown(Duration::from_secs(10)).unwrap();
    let row = store.find_by_event_id("self-call").unwrap().unwrap();
    assert_eq!((row.status, row.retry_count), (EventStatus::Failed, 1));
    assert!(row
        .error_message
        .unwrap()
        .contains("called the SQLite store it runs in"));
}

#[test]
fn readers_wait_for_slow_workers_so_stored_but_unhandled_rows_stay_bounded() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .readers(1)
        .workers(1)
        .read_batch(50)
        .handler(|tx, row| -> HandlerResult {
            std::thread::sleep(Duration::from_millis(1));
            record(tx, row)?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let entries: Vec<_> = (0..1500)
        .map(|i| event(&format!("b-{i}"), "T").to_entry_fields())
        .collect();
    stream.publish_batch(STREAM, &entries).unwrap();
    // One worker, a channel of two 50-row batches: at most one batch being handled, two queued
    // and one the reader holds while it waits to hand it over.
    let bound = 4 * 50;
    let mut most_pending = 0;
    let mut most_lag = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while count(&store, EventStatus::Processed) < 1500 {
        assert!(std::time::Instant::now() < deadline, "{:?}", handle.stats());
        most_pending = most_pending.max(count(&store, EventStatus::Pending));
        most_lag = most_lag.max(group_stats(&stream).lag.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert!(
        most_lag > 500,
        "the stream was ahead of the workers (lag {most_lag})"
    );
    assert!(
        most_pending <= bound,
        "{most_pending} rows stored but unhandled, bound {bound}"
    );
    assert_eq!(handled(&store), (1500, 1500));
}

/// A retry policy that panics the first time it is asked, then says 60 s.
struct PanicsOnce(AtomicBool);

impl eventflow::RetryPolicy for PanicsOnce {
    fn delay(&self, _failures: u32, _jitter: f64) -> Duration {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("retry policy bug, once");
        }
        Duration::from_secs(60)
    }
}

#[test]
fn the_dead_letter_hook_fires_once_per_dead_letter_after_its_commit() {
    let stream = MemoryStream::new();
    let store = store();
    let clock = ManualClock::starting_now();
    let dead: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let heard = dead.clone();
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let seen = attempts.clone();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .readers(1)
        .workers(1) // one worker: the panicking hook must not take it down
        .max_attempts(2)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(10))
        .retry_policy(PanicsOnce(AtomicBool::new(false)))
        .on_dead_letter(move |letter: &DeadLetter| {
            let first = {
                let mut heard = heard.lock();
                heard.push(letter.clone());
                heard.len() == 1
            };
            if first {
                panic!("alerting is down");
            }
        })
        .handler(move |tx, row| -> HandlerResult {
            *seen.lock().entry(row.event.event_id.clone()).or_default() += 1;
            record(tx, row)?;
            match row.event.event_type.as_str() {
                "Hopeless" => Err(HandlerError::give_up("cannot ever work")),
                "Broken" => Err("always broken".into()),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    // One read batch, one claim: the hopeless event is dead-lettered first, then the broken
    // one's failure makes the policy panic, which rolls the whole batch back. The batch is
    // redone: only that second dead-lettering is committed, and only it is announced.
    let mut hopeless = event("hopeless", "Hopeless");
    hopeless.correlation_id = Some("corr-1".into());
    let entries = vec![
        hopeless.to_entry_fields(),
        event("broken", "Broken").to_entry_fields(),
        event("fine", "Fine").to_entry_fields(),
    ];
    stream.publish_batch(STREAM, &entries).unwrap();
    let status = |id: &str| store.find_by_event_id(id).unwrap().map(|r| r.status);
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(status("hopeless"), Some(EventStatus::DeadLetter));
    assert_eq!(status("broken"), Some(EventStatus::Failed));
    assert_eq!(status("fine"), Some(EventStatus::Processed));
    assert_eq!(
        attempts.lock()["hopeless"],
        2,
        "handled twice: the first dead-lettering rolled back"
    );
    assert_eq!(dead.lock().len(), 1);

    // The second failure of the broken event exhausts max_retries = 2.
    clock.advance(Duration::from_secs(70));
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(status("broken"), Some(EventStatus::DeadLetter));
    // The hook panicked the first time; the only worker still handles events.
    stream
        .publish(STREAM, event("after", "Fine").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(status("after"), Some(EventStatus::Processed));
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();

    assert_eq!(report.stats.dead_lettered, 2);
    let dead = dead.lock();
    assert_eq!(dead.len(), 2, "once per dead letter: {dead:?}");
    let hopeless_letter = &dead[0];
    assert_eq!(
        (
            hopeless_letter.event_id.as_str(),
            hopeless_letter.event_type.as_str(),
            hopeless_letter.aggregate_id,
            hopeless_letter.correlation_id.as_deref(),
            hopeless_letter.attempts,
            hopeless_letter.error.as_str(),
            hopeless_letter.stream.as_str(),
            hopeless_letter.group.as_str(),
        ),
        (
            "hopeless",
            "Hopeless",
            hopeless.aggregate_id,
            Some("corr-1"),
            1,
            "cannot ever work",
            STREAM,
            GROUP,
        )
    );
    let broken_letter = &dead[1];
    assert_eq!(
        (
            broken_letter.event_id.as_str(),
            broken_letter.attempts,
            broken_letter.error.as_str()
        ),
        ("broken", 2, "always broken"),
        "dead-lettered after exhausting its retries"
    );
    assert_eq!(
        broken_letter.row_id,
        store.find_by_event_id("broken").unwrap().unwrap().id
    );
}

/// `tracing` events with the dead-letter message, as field name → value, captured from every
/// thread: the consumer logs from its workers.
fn dead_letter_logs() -> &'static Mutex<Vec<HashMap<String, String>>> {
    use tracing_subscriber::layer::SubscriberExt;

    struct Capture;
    struct Fields(HashMap<String, String>);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields(HashMap::new());
            event.record(&mut fields);
            if fields.0.get("message").map(String::as_str) == Some(DEAD_LETTER_MESSAGE) {
                fields
                    .0
                    .insert("level".into(), event.metadata().level().to_string());
                LOGS.lock().push(fields.0);
            }
        }
    }

    static LOGS: Mutex<Vec<HashMap<String, String>>> = Mutex::new(Vec::new());
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other global subscriber in this test binary");
    });
    &LOGS
}

#[test]
fn each_dead_letter_is_logged_once_with_the_fields_alerts_match_on() {
    let logs = dead_letter_logs();
    let stream = MemoryStream::new();
    let store = store();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .handler(|_tx, _row| -> HandlerResult { Err(HandlerError::give_up("no such customer")) })
        .build()
        .unwrap()
        .start()
        .unwrap();
    // Event ids unique to this test, since the capture sees every test of this binary.
    let id = format!("logged-{}", Uuid::new_v4());
    let mut logged = event(&id, "CustomerDeleted");
    logged.correlation_id = Some("corr-9".into());
    stream.publish(STREAM, logged.to_entry_fields()).unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().dead_lettered, 1);
    handle.shutdown(Duration::from_secs(10)).unwrap();

    let lines: Vec<_> = logs
        .lock()
        .iter()
        .filter(|fields| fields.get("event_id") == Some(&id))
        .cloned()
        .collect();
    assert_eq!(lines.len(), 1, "one line per dead letter: {lines:?}");
    let line = &lines[0];
    let field = |name: &str| line.get(name).map(String::as_str);
    assert_eq!(field("level"), Some("ERROR"));
    assert_eq!(field("event_type"), Some("CustomerDeleted"));
    let aggregate_id = logged.aggregate_id.to_string();
    assert_eq!(field("aggregate_id"), Some(aggregate_id.as_str()));
    assert_eq!(field("correlation_id"), Some("corr-9"));
    assert_eq!(field("attempts"), Some("1"));
    assert_eq!(field("error"), Some("no such customer"));
    assert_eq!(field("stream"), Some(STREAM));
}

#[test]
fn a_running_consumer_is_live_and_ready_and_not_live_after_shutdown() {
    let began = std::time::Instant::now();
    let stream = MemoryStream::new();
    let store = store();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .readers(2)
            .workers(3)
            .block(Duration::from_millis(20))
    });
    stream
        .publish(STREAM, event("h-1", "T").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 1);

    let health = handle.health();
    assert!(health.is_live() && health.is_ready(), "{health:?}");
    assert!(health.running);
    assert_eq!((health.readers.alive, health.readers.configured), (2, 2));
    assert_eq!((health.workers.alive, health.workers.configured), (3, 3));
    assert_eq!(
        (health.database.clone(), health.broker.clone()),
        (Ok(()), Ok(()))
    );
    // Both happened during this test, so they are younger than it.
    let since_read = health.since_last_read.expect("the stream was read");
    let since_commit = health.since_last_commit.expect("a batch was committed");
    assert!(since_read < began.elapsed() && since_commit < began.elapsed());

    handle.shutdown(Duration::from_secs(10)).unwrap();
    let health = handle.health();
    assert!(!health.is_live() && !health.is_ready(), "{health:?}");
    assert!(!health.running);
    assert_eq!((health.readers.alive, health.workers.alive), (0, 0));
}

#[test]
fn time_limits_are_checked_at_build_naming_the_field() {
    let builder = || {
        InboxConsumer::builder()
            .transport(MemoryStream::new())
            .sqlite_in_memory()
            .stream("s")
            .group("g")
    };
    let field = |result: Result<eventflow::InboxConsumer, Error>| match result {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let ok = |_: &mut rusqlite::Transaction<'_>, _: &InboxRow| -> HandlerResult { Ok(()) };
    let zero = builder()
        .handler_timeout(Duration::ZERO)
        .handler(ok)
        .build();
    assert_eq!(field(zero), "handler_timeout");
    let limits = eventflow::store::SessionLimits::default();
    let on_sqlite = builder().session_limits(limits).handler(ok).build();
    assert_eq!(field(on_sqlite), "session_limits");
}

#[test]
fn a_handler_past_the_time_limit_makes_the_consumer_not_live_until_it_returns() {
    let stream = MemoryStream::new();
    let store = store();
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(0);
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .workers(2)
        .handler_timeout(Duration::from_millis(100))
        .handler(move |_tx, row| -> HandlerResult {
            if row.event.event_id == "stuck" {
                let _ = release_rx.recv();
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    stream
        .publish(STREAM, event("stuck", "Slow").to_entry_fields())
        .unwrap();

    assert!(wait_until(WAIT, || !handle
        .health()
        .hung_handlers
        .is_empty()));
    let health = handle.health();
    assert!(!health.is_live(), "{health:?}");
    assert!(health.workers.all_alive(), "{health:?}");
    let hung = &health.hung_handlers[0];
    assert_eq!(
        (hung.event_id.as_str(), hung.event_type.as_str()),
        ("stuck", "Slow")
    );
    assert!(hung.running_for > Duration::from_millis(100), "{hung:?}");

    release_tx.send(()).unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 1);
    assert!(wait_until(WAIT, || handle.health().is_live()));
    handle.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn a_consumer_whose_broker_does_not_answer_is_live_but_not_ready() {
    let outage = Outage::new(false);
    let store = store();
    let handle = start_recording(outage.clone(), &store, |builder| {
        builder
            .block(Duration::from_millis(20))
            .reclaim_idle(Duration::from_secs(5))
    });
    assert!(handle.health().is_ready());

    outage.down.store(true, Ordering::SeqCst);
    let health = handle.health();
    assert!(health.is_live(), "waiting out an outage needs no restart");
    assert!(!health.is_ready());
    assert_eq!(health.database, Ok(()));
    let error = health.broker.unwrap_err();
    assert!(error.contains("connection refused"), "{error}");

    outage.down.store(false, Ordering::SeqCst);
    assert!(handle.health().is_ready());
    handle.shutdown(Duration::from_secs(10)).unwrap();
}

/// The retention cleaner deletes processed rows once they are older than the retention, by
/// the consumer's clock, and nothing else: young processed rows, failed rows and dead letters
/// stay, as do the handlers' own writes.
#[test]
fn retention_deletes_only_processed_rows_past_their_age() {
    const DAY: Duration = Duration::from_secs(86_400);
    let stream = MemoryStream::new();
    let store = store();
    let clock = ManualClock::starting_now();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(STREAM)
        .group(GROUP)
        .clock(clock.clone())
        .max_attempts(0)
        .retention(7 * DAY)
        .retention_interval(Duration::from_millis(5))
        .handler(|tx, row| -> HandlerResult {
            match row.event.event_type.as_str() {
                "Poison" => Err(HandlerError::give_up("cannot handle this")),
                "Flaky" => Err("not yet".into()),
                _ => {
                    record(tx, row)?;
                    Ok(())
                }
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    let publish = |id: &str, event_type: &str| {
        stream
            .publish(STREAM, event(id, event_type).to_entry_fields())
            .unwrap();
    };

    for i in 0..5 {
        publish(&format!("old-{i}"), "OrderCreated");
    }
    publish("poison", "Poison");
    publish("flaky", "Flaky");
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 5);
    assert_eq!(count(&store, EventStatus::DeadLetter), 1);
    assert_eq!(count(&store, EventStatus::Failed), 1);

    clock.advance(4 * DAY);
    for i in 0..2 {
        publish(&format!("young-{i}"), "OrderCreated");
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 7);

    // Now the first five are 8 days old and the last two 4 days: the round that deletes the
    // old ones sees the young ones in the same statement.
    clock.advance(4 * DAY);
    assert!(
        wait_until(WAIT, || count(&store, EventStatus::Processed) == 2),
        "counts: {:?}",
        store.count_by_status().unwrap()
    );
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        report.threads_joined, 8,
        "two readers, four workers, the hung-handler watch and the cleaner"
    );
    for i in 0..5 {
        assert_eq!(store.find_by_event_id(&format!("old-{i}")).unwrap(), None);
    }
    for i in 0..2 {
        let young = store.find_by_event_id(&format!("young-{i}")).unwrap();
        assert_eq!(young.map(|row| row.status), Some(EventStatus::Processed));
    }
    assert_eq!(count(&store, EventStatus::DeadLetter), 1);
    assert_eq!(count(&store, EventStatus::Failed), 1);
    assert_eq!(store.count_by_status().unwrap().total(), 4);
    assert_eq!(
        handled(&store),
        (7, 7),
        "the handlers' writes are not the cleaner's"
    );
}

/// Without `.retention(...)` no cleaner runs: processed rows stay however old.
#[test]
fn retention_is_off_by_default() {
    let stream = MemoryStream::new();
    let store = store();
    let clock = ManualClock::starting_now();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder.clock(clock.clone())
    });
    stream
        .publish(STREAM, event("kept", "OrderCreated").to_entry_fields())
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 1);
    clock.advance(Duration::from_secs(100 * 365 * 86_400));
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        report.threads_joined, 7,
        "two readers, four workers, the hung-handler watch, no cleaner"
    );
    assert_eq!(count(&store, EventStatus::Processed), 1);
}

#[test]
fn several_streams_feed_one_table_counted_per_stream_and_owned_by_one_group() {
    let store = store();
    let stream = MemoryStream::new();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .streams(["orders", "payments"])
        .group(GROUP)
        .block(Duration::from_millis(50))
        .handler(|tx, row| -> HandlerResult {
            record(tx, row)?;
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    for i in 0..3 {
        let e = event(&format!("order-{i}"), "OrderCreated");
        stream.publish("orders", e.to_entry_fields()).unwrap();
    }
    for i in 0..2 {
        let e = event(&format!("payment-{i}"), "PaymentReceived");
        stream.publish("payments", e.to_entry_fields()).unwrap();
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 5);
    // The same event again, on the other stream once the first copy is stored: a duplicate,
    // since duplicates are found per table. (Sent at once, either copy could be stored first.)
    let again = event("order-0", "OrderCreated");
    stream.publish("payments", again.to_entry_fields()).unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().duplicates, 1);

    // Another service (group) on the same table is refused; the table stays the first's.
    let refused = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream("orders")
        .group("shipping")
        .handler(|_tx, _row| -> HandlerResult { Ok(()) })
        .build()
        .unwrap()
        .start();
    assert!(
        matches!(&refused, Err(Error::TableOwned { owner, group, .. }) if owner == GROUP && group == "shipping"),
        "{refused:?}"
    );

    let by_stream = handle.stats_by_stream();
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(handled(&store), (5, 5));
    let get = |name: &str| by_stream.iter().find(|(s, _)| s == name).unwrap().1;
    assert_eq!((get("orders").received, get("orders").processed), (3, 3));
    assert_eq!(
        (
            get("payments").received,
            get("payments").processed,
            get("payments").duplicates
        ),
        (3, 2, 1)
    );
    assert_eq!(report.stats.processed, 5);
    let streams = store.count_by_stream().unwrap();
    let names: Vec<(Option<&str>, u64)> = streams
        .iter()
        .map(|(s, counts)| (s.as_deref(), counts.total()))
        .collect();
    assert_eq!(names, [(Some("orders"), 3), (Some("payments"), 2)]);
    assert_eq!(store.find_owner().unwrap().as_deref(), Some(GROUP));
    assert_eq!(
        store
            .find_by_event_id("payment-1")
            .unwrap()
            .unwrap()
            .stream
            .as_deref(),
        Some("payments")
    );
}

/// An entry over `max_entry_bytes` is quarantined with its size, names and a prefix of its
/// values, and acknowledged; the entries around it, read under a small `max_batch_bytes`, are
/// stored and handled as usual.
#[test]
fn an_oversized_entry_is_quarantined_bounded_and_acknowledged() {
    let stream = MemoryStream::new();
    let store = store();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .read_batch(50)
            .max_entry_bytes(4096)
            .max_batch_bytes(8192)
    });
    for i in 0..20 {
        stream
            .publish(
                STREAM,
                event(&format!("small-{i}"), "OrderCreated").to_entry_fields(),
            )
            .unwrap();
    }
    let mut huge = event("huge-1", "OrderCreated").to_json();
    huge["payload"]["blob"] = json!("x".repeat(100_000));
    let huge = huge.to_string().into_bytes();
    let huge_len = huge.len();
    stream
        .publish(
            STREAM,
            vec![("data".into(), huge), ("extra".into(), vec![0xff; 10])],
        )
        .unwrap();
    for i in 20..40 {
        stream
            .publish(
                STREAM,
                event(&format!("small-{i}"), "OrderCreated").to_entry_fields(),
            )
            .unwrap();
    }
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(count(&store, EventStatus::Processed), 40);
    assert_eq!(handle.stats().quarantined, 1);
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        group_stats(&stream).pending,
        0,
        "the oversized entry is acknowledged"
    );
    assert_eq!(store.find_by_event_id("huge-1").unwrap(), None);

    let kept = store.list_quarantined(10, 0).unwrap().remove(0);
    let size = huge_len + "data".len() + "extra".len() + 10;
    assert!(
        kept.reason.contains(&format!("entry is {size} bytes"))
            && kept.reason.contains("4096 bytes"),
        "{}",
        kept.reason
    );
    let oversized = kept.oversized.clone().expect("recorded as oversized");
    assert_eq!(oversized.entry_bytes, size as u64);
    assert_eq!(oversized.field_count, 2);
    assert_eq!(oversized.value_bytes, [huge_len as u64, 10]);
    let names: Vec<&[u8]> = kept.fields.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(names, [b"data".as_slice(), b"extra"]);
    assert_eq!(
        kept.fields[0].1.len(),
        eventflow::quarantine::OVERSIZED_PREFIX_BYTES
    );
    assert_eq!(kept.fields[1].1, vec![0xff; 10]);
    // Only a prefix was kept, so it cannot be replayed as it is.
    let replay =
        eventflow::quarantine::replay(store.as_ref(), kept.id, None, 3, chrono::Utc::now());
    assert!(
        replay
            .as_ref()
            .is_err_and(|e| e.to_string().contains("only a prefix")),
        "{replay:?}"
    );
}

/// `quarantine_retention` deletes quarantined entries once they are older than the age.
#[test]
fn quarantine_retention_deletes_entries_past_their_age() {
    const DAY: Duration = Duration::from_secs(86_400);
    let stream = MemoryStream::new();
    let store = store();
    let clock = ManualClock::starting_now();
    let handle = start_recording(stream.clone(), &store, |builder| {
        builder
            .clock(clock.clone())
            .quarantine_retention(30 * DAY)
            .retention_interval(Duration::from_millis(5))
    });
    stream
        .publish(STREAM, vec![("event_id".into(), b"old".to_vec())])
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().quarantined, 1);
    clock.advance(20 * DAY);
    stream
        .publish(STREAM, vec![("event_id".into(), b"young".to_vec())])
        .unwrap();
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().quarantined, 2);
    clock.advance(11 * DAY);
    let young_only = || {
        let left = store.list_quarantined(10, 0).unwrap();
        left.len() == 1 && left[0].fields[0].1 == b"young"
    };
    assert!(
        wait_until(WAIT, young_only),
        "{:?}",
        store.list_quarantined(10, 0)
    );
    handle.shutdown(Duration::from_secs(10)).unwrap();
}
