//! The consumer's metrics, counted exactly: what it recorded through the `metrics` facade for
//! events whose fate each test knows.
//!
//! The consumer records from its own threads, so a recorder must be global: one is installed
//! per test binary (this one), and each test reads only the series labelled with its own
//! stream name, so the tests run in parallel.

mod support;

use chrono::{DateTime, Utc};
use eventflow::inbox::metrics::{
    BUSY_WORKERS, DEAD_LETTERED, DUPLICATES, FAILED_ATTEMPTS, HANDLER_DURATION, LABEL_GROUP,
    LABEL_STREAM, OCCURRED_TO_PROCESSED, PROCESSED, QUARANTINED, QUEUED_ROWS, RECEIVED,
    RECEIVED_TO_PROCESSED, RECLAIMED,
};
use eventflow::outbox::metrics as relay;
use eventflow::quarantine::QuarantinedEntry;
use eventflow::store::{
    Claim, ClaimParams, InboxStore, QuarantineReplay, ReceivedBatch, RowHandler, Settled,
    SqliteStore, StatusCounts, StoreError, Stored, Verdict,
};
use eventflow::transport::{MemoryStream, ReadRequest, Transport};
use eventflow::{
    Event, EventStatus, HandlerError, HandlerResult, InboxConsumer, InboxRow, ManualClock,
};
use metrics::Key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::recorder::recorder;
use support::{unique_name, wait_until};
use uuid::Uuid;

const GROUP: &str = "billing";
const WAIT: Duration = Duration::from_secs(30);

/// The series of `name` for `stream` (and the test group), checking its labels are exactly
/// `stream` and `group`.
fn series<'a, T>(map: &'a HashMap<Key, T>, name: &str, stream: &str) -> Option<&'a T> {
    map.iter()
        .find(|(key, _)| {
            key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == LABEL_STREAM && l.value() == stream)
        })
        .map(|(key, value)| {
            let mut labels: Vec<_> = key.labels().map(|l| (l.key(), l.value())).collect();
            labels.sort();
            assert_eq!(labels, [(LABEL_GROUP, GROUP), (LABEL_STREAM, stream)]);
            value
        })
}

fn counter(name: &str, stream: &str) -> u64 {
    series(&recorder().counters.lock(), name, stream)
        .unwrap_or_else(|| panic!("no counter {name} for {stream}"))
        .load(Ordering::SeqCst)
}

fn gauge(name: &str, stream: &str) -> f64 {
    let bits = series(&recorder().gauges.lock(), name, stream)
        .unwrap_or_else(|| panic!("no gauge {name} for {stream}"))
        .load(Ordering::SeqCst);
    f64::from_bits(bits)
}

fn samples(name: &str, stream: &str) -> Vec<f64> {
    series(&recorder().histograms.lock(), name, stream)
        .unwrap_or_else(|| panic!("no histogram {name} for {stream}"))
        .0
        .lock()
        .clone()
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn event(event_id: &str, event_type: &str, occurred_on: DateTime<Utc>) -> Event {
    let mut event = Event::new(event_type, Uuid::new_v4(), serde_json::json!({}));
    event.event_id = event_id.to_string();
    event.occurred_on = occurred_on;
    event
}

#[test]
fn counters_and_histograms_count_what_happened_to_every_entry() {
    recorder();
    let stream_name = unique_name("ef_metrics");
    let stream = MemoryStream::new();
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    // Whole seconds, so that times read back from SQLite (microseconds) are exact.
    let start = at("2030-01-01T00:00:00Z");
    let clock = ManualClock::new(start);
    let occurred = start - chrono::Duration::seconds(5);

    // 20 good events, a flaky one (fails once), a hopeless one (gives up), 5 of the good ones
    // sent again, 3 malformed entries: 30 entries.
    let good: Vec<Event> = (0..20)
        .map(|i| event(&format!("good-{i}"), "Fine", occurred))
        .collect();
    let mut entries: Vec<_> = good.iter().map(Event::to_entry_fields).collect();
    entries.push(event("flaky", "Flaky", occurred).to_entry_fields());
    entries.push(event("hopeless", "Hopeless", occurred).to_entry_fields());
    entries.extend(good[..5].iter().map(Event::to_entry_fields));
    entries.push(vec![("data".into(), b"{not json".to_vec())]);
    entries.push(vec![("event_id".into(), b"x-1".to_vec())]);
    entries.push(vec![("data".into(), vec![0xff, 0x00, 0xfe])]);
    stream.ensure_group(&stream_name, GROUP).unwrap();
    stream.publish_batch(&stream_name, &entries).unwrap();
    // A consumer reads two entries and dies: the consumer under test reclaims them.
    let dead = stream
        .read_group(&ReadRequest {
            stream: &stream_name,
            group: GROUP,
            consumer: "dead",
            count: 2,
            block: Duration::ZERO,
        })
        .unwrap();
    assert_eq!(dead.len(), 2);

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flaky_failed = Arc::new(AtomicUsize::new(0));
    let failed_once = flaky_failed.clone();
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(&stream_name)
        .group(GROUP)
        // One reader, which cannot take over its own entries while it stores them.
        .readers(1)
        .workers(2)
        .read_batch(7)
        .clock(clock.clone())
        .block(Duration::from_millis(20))
        .poll_interval(Duration::from_millis(10))
        .reclaim_idle(Duration::from_millis(100))
        .reclaim_interval(Duration::from_millis(50))
        .handler(move |_tx, row| -> HandlerResult {
            counted.fetch_add(1, Ordering::SeqCst);
            match row.event.event_type.as_str() {
                "Flaky" if failed_once.fetch_add(1, Ordering::SeqCst) == 0 => {
                    Err("fails once".into())
                }
                "Hopeless" => Err(HandlerError::give_up("cannot ever work")),
                _ => Ok(()),
            }
        })
        .build()
        .unwrap()
        .start()
        .unwrap();

    let status = |id: &str| store.find_by_event_id(id).unwrap().map(|r| r.status);
    // Idle only once the entries another consumer held are reclaimed and handled.
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(
        (handle.stats().received, handle.stats().processed),
        (30, 20)
    );
    assert_eq!(status("flaky"), Some(EventStatus::Failed));
    assert_eq!(status("hopeless"), Some(EventStatus::DeadLetter));
    clock.advance(Duration::from_secs(70)); // past the first retry's 60 s + 10 %
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(status("flaky"), Some(EventStatus::Processed));
    let report = handle.shutdown(Duration::from_secs(10)).unwrap();

    let s = stream_name.as_str();
    assert_eq!(counter(RECEIVED, s), 30);
    assert_eq!(counter(RECLAIMED, s), 2);
    assert_eq!(counter(DUPLICATES, s), 5);
    assert_eq!(counter(QUARANTINED, s), 3);
    assert_eq!(counter(PROCESSED, s), 21);
    assert_eq!(counter(FAILED_ATTEMPTS, s), 1);
    assert_eq!(counter(DEAD_LETTERED, s), 1);
    let stats = report.stats;
    assert_eq!(
        [
            stats.received,
            stats.reclaimed,
            stats.duplicates,
            stats.quarantined,
            stats.processed,
            stats.failed,
            stats.dead_lettered
        ],
        [30, 2, 5, 3, 21, 1, 1],
        "ConsumerStats counts the same"
    );

    // 20 good events once, the flaky one twice, the hopeless one once.
    assert_eq!(calls.load(Ordering::SeqCst), 23);
    let durations = samples(HANDLER_DURATION, s);
    assert_eq!(durations.len(), 23);
    assert!(durations.iter().all(|d| *d >= 0.0));

    // Processed at the clock's time: the good events at `start`, the flaky one 70 s later.
    let mut occurred_to_processed = samples(OCCURRED_TO_PROCESSED, s);
    occurred_to_processed.sort_by(f64::total_cmp);
    let mut expected = vec![5.0; 20];
    expected.push(75.0);
    assert_eq!(occurred_to_processed, expected);
    let mut received_to_processed = samples(RECEIVED_TO_PROCESSED, s);
    received_to_processed.sort_by(f64::total_cmp);
    let mut expected = vec![0.0; 20];
    expected.push(70.0);
    assert_eq!(received_to_processed, expected);

    assert_eq!(gauge(QUEUED_ROWS, s), 0.0);
    assert_eq!(gauge(BUSY_WORKERS, s), 0.0);
}

/// A SQLite store whose workers wait at a gate before each claim, outside any transaction,
/// until the test opens it (drops the sender); the readers can store meanwhile. It says when a
/// worker reaches the gate, how many rows each claim of handed-over rows holds, and how many
/// rows were stored.
struct Gated {
    inner: SqliteStore,
    gate: crossbeam_channel::Receiver<()>,
    arrived: crossbeam_channel::Sender<()>,
    fresh_claims: parking_lot::Mutex<Vec<usize>>,
    stored: AtomicUsize,
}

struct Forward<'a>(&'a mut dyn RowHandler<Gated>);

impl RowHandler<SqliteStore> for Forward<'_> {
    fn handle(&mut self, tx: &mut rusqlite::Transaction<'_>, row: &InboxRow) -> Verdict {
        self.0.handle(tx, row)
    }
    fn failed_after(&mut self, row: &InboxRow, error: String) -> Verdict {
        self.0.failed_after(row, error)
    }
}

impl InboxStore for Gated {
    type Tx<'t> = rusqlite::Transaction<'t>;
    fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate()
    }
    fn pending_migrations(&self) -> Result<Vec<eventflow::store::PendingMigration>, StoreError> {
        self.inner.pending_migrations()
    }
    fn store_received(&self, batch: &ReceivedBatch<'_>) -> Result<Stored, StoreError> {
        let stored = self.inner.store_received(batch)?;
        self.stored
            .fetch_add(stored.inserted.len(), Ordering::SeqCst);
        Ok(stored)
    }
    fn process_claimed(
        &self,
        claim: &ClaimParams<'_>,
        handler: &mut dyn RowHandler<Self>,
    ) -> Result<Vec<Settled>, StoreError> {
        if let Claim::Fresh(rows) = claim.claim {
            self.fresh_claims.lock().push(rows.len());
        }
        let _ = self.arrived.try_send(());
        let _ = self.gate.recv();
        self.inner.process_claimed(claim, &mut Forward(handler))
    }
    fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.inner.count_by_status()
    }
    fn table(&self) -> &str {
        InboxStore::table(&self.inner)
    }
    fn adopt_owner(
        &self,
        group: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, StoreError> {
        self.inner.adopt_owner(group, now)
    }
    fn find_owner(&self) -> Result<Option<String>, StoreError> {
        self.inner.find_owner()
    }
    fn count_by_stream(&self) -> Result<Vec<(Option<String>, StatusCounts)>, StoreError> {
        self.inner.count_by_stream()
    }
    fn list_parked(
        &self,
        page: &eventflow::store::ParkedPage,
    ) -> Result<Vec<eventflow::store::ParkedAggregate>, StoreError> {
        self.inner.list_parked(page)
    }
    fn parked_summary(&self) -> Result<eventflow::store::ParkedSummary, StoreError> {
        self.inner.parked_summary()
    }
    fn skip_dead_letter(
        &self,
        skip: &eventflow::store::DeadLetterSkip,
    ) -> Result<bool, StoreError> {
        self.inner.skip_dead_letter(skip)
    }
    fn find_by_event_id(&self, event_id: &str) -> Result<Option<InboxRow>, StoreError> {
        self.inner.find_by_event_id(event_id)
    }
    fn list_quarantined(
        &self,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        self.inner.list_quarantined(limit, offset)
    }
    fn find_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedEntry>, StoreError> {
        self.inner.find_quarantined(id)
    }
    fn replay_quarantined(&self, replay: &QuarantineReplay<'_>) -> Result<bool, StoreError> {
        self.inner.replay_quarantined(replay)
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }
    fn list_rows(
        &self,
        filter: &eventflow::store::RowFilter,
        page: &eventflow::store::Page,
    ) -> Result<Vec<eventflow::store::InboxRecord>, StoreError> {
        self.inner.list_rows(filter, page)
    }
    fn oldest_received(
        &self,
        status: eventflow::EventStatus,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.inner.oldest_received(status)
    }
    fn requeue_dead_letters(
        &self,
        requeue: &eventflow::store::DeadLetterRequeue<'_>,
    ) -> Result<eventflow::store::Requeued, StoreError> {
        self.inner.requeue_dead_letters(requeue)
    }
    fn list_quarantined_matching(
        &self,
        filter: &eventflow::store::QuarantineFilter,
        page: &eventflow::store::Page,
    ) -> Result<Vec<QuarantinedEntry>, StoreError> {
        self.inner.list_quarantined_matching(filter, page)
    }
    fn delete_processed_before(
        &self,
        cleanup: &eventflow::store::ProcessedCleanup,
    ) -> Result<eventflow::store::Cleanup, StoreError> {
        self.inner.delete_processed_before(cleanup)
    }
    fn delete_quarantined_before(
        &self,
        cleanup: &eventflow::store::QuarantineCleanup,
    ) -> Result<eventflow::store::Cleanup, StoreError> {
        self.inner.delete_quarantined_before(cleanup)
    }
    fn newest_stream_id(&self, stream: &str) -> Result<Option<String>, StoreError> {
        self.inner.newest_stream_id(stream)
    }
}

#[test]
fn gauges_show_queued_rows_and_busy_workers_and_return_to_zero() {
    recorder();
    let stream_name = unique_name("ef_gauges");
    let s = stream_name.as_str();
    let stream = MemoryStream::new();
    let (open_gate, gate) = crossbeam_channel::bounded::<()>(0);
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let (arrived_tx, arrived) = crossbeam_channel::unbounded();
    let store = Arc::new(Gated {
        inner: SqliteStore::open_in_memory().unwrap(),
        gate,
        arrived: arrived_tx,
        fresh_claims: parking_lot::Mutex::new(Vec::new()),
        stored: AtomicUsize::new(0),
    });
    let handle = InboxConsumer::builder()
        .transport(stream.clone())
        .store(store.clone())
        .stream(&stream_name)
        .group(GROUP)
        .readers(1)
        .workers(1)
        .read_batch(1)
        .block(Duration::from_millis(20))
        .poll_interval(Duration::from_millis(20))
        .handler(move |_tx, row| -> HandlerResult {
            if row.event.event_type == "Blocks" {
                let _ = released.recv(); // until the test lets go
            }
            Ok(())
        })
        .build()
        .unwrap()
        .start()
        .unwrap();
    // The worker's first poll waits at the gate before anything is published.
    arrived.recv_timeout(WAIT).expect("the worker polls");
    let now = Utc::now();
    let mut entries = vec![event("blocks", "Blocks", now).to_entry_fields()];
    entries.extend((0..3).map(|i| event(&format!("q-{i}"), "T", now).to_entry_fields()));
    stream.publish_batch(&stream_name, &entries).unwrap();

    // One row per read. The channel holds two hand-overs (two per worker) and the reader the
    // third, counted before it waits to hand it over; the fourth is not read yet.
    let gauges = || (gauge(QUEUED_ROWS, s), gauge(BUSY_WORKERS, s));
    assert!(
        wait_until(WAIT, || gauges() == (3.0, 0.0)),
        "{:?}",
        gauges()
    );
    // Stored, so acknowledged, the third too: a reader acknowledges before it waits for busy
    // workers, or slow handlers would leave its entries pending for others to reclaim.
    let pending = || stream.group_stats(s, GROUP).unwrap().pending;
    assert!(wait_until(WAIT, || pending() == 0), "{} pending", pending());
    // Through the gate, the worker takes the queued hand-overs (two, or three if the reader's
    // refill came in time) into one claim and runs the blocking handler first. The rows stored
    // and not in that claim stay queued. (The fourth may not be stored yet: the in-memory
    // SQLite store's one connection is the worker's until it commits.)
    drop(open_gate);
    assert!(wait_until(WAIT, || gauges().1 == 1.0), "{:?}", gauges());
    let first_claim = store.fresh_claims.lock().first().copied().unwrap();
    assert!(
        first_claim >= 2,
        "the queued hand-overs joined the first claim: {first_claim}"
    );
    let left = || (store.stored.load(Ordering::SeqCst) - first_claim) as f64;
    assert!(
        wait_until(WAIT, || gauges() == (left(), 1.0)),
        "{:?}, {first_claim} rows taken, {} left",
        gauges(),
        left()
    );
    drop(release);
    handle.wait_idle(WAIT).unwrap();
    assert_eq!(handle.stats().processed, 4);
    assert!(
        wait_until(WAIT, || gauges() == (0.0, 0.0)),
        "{:?}",
        gauges()
    );
    handle.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(gauges(), (0.0, 0.0));
}

/// The relay's series for outbox table `table`.
fn relay_series<'a, T>(map: &'a HashMap<Key, T>, name: &str, table: &str) -> Option<&'a T> {
    map.iter()
        .find(|(key, _)| {
            key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == relay::LABEL_TABLE && l.value() == table)
        })
        .map(|(_, value)| value)
}

fn relay_counter(name: &str, table: &str) -> u64 {
    relay_series(&recorder().counters.lock(), name, table)
        .unwrap_or_else(|| panic!("no counter {name} for {table}"))
        .load(Ordering::SeqCst)
}

#[test]
fn the_relay_counts_what_it_published_and_deleted_and_how_long_rows_waited() {
    recorder();
    let table = unique_name("ef_relay_metrics");
    let outbox = eventflow::store::outbox::SqliteOutbox::open_in_memory()
        .unwrap()
        .with_table(&table)
        .unwrap();
    eventflow::store::outbox::OutboxStore::migrate(&outbox).unwrap();
    outbox.with_connection(|conn| {
        let mut tx = conn.transaction().unwrap();
        let events: Vec<Event> = (0..3)
            .map(|n| Event::new("Numbered", Uuid::new_v4(), serde_json::json!({ "n": n })))
            .collect();
        eventflow::outbox::OutboxTable::named(&table)
            .unwrap()
            .enqueue_batch(&mut tx, "orders", &events)
            .unwrap();
        tx.commit().unwrap();
    });
    let clock = ManualClock::starting_now();
    let relay = eventflow::OutboxRelay::builder()
        .store(outbox)
        .transport(MemoryStream::new())
        .clock(clock.clone())
        .retention(Some(Duration::from_secs(3600)))
        .retention_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .start()
        .unwrap();
    assert!(wait_until(WAIT, || relay.stats().published == 3));
    clock.advance(Duration::from_secs(2 * 3600));
    assert!(wait_until(WAIT, || relay.stats().deleted == 3));
    relay.shutdown(WAIT).unwrap();

    assert_eq!(relay_counter(relay::PUBLISHED, &table), 3);
    assert_eq!(relay_counter(relay::DELETED, &table), 3);
    assert_eq!(relay_counter(relay::RETRIED, &table), 0);
    assert_eq!(relay_counter(relay::DEAD_LETTERED, &table), 0);
    let waited = relay_series(
        &recorder().histograms.lock(),
        relay::ENQUEUED_TO_PUBLISHED,
        &table,
    )
    .expect("the latency histogram")
    .0
    .lock()
    .clone();
    assert_eq!(waited.len(), 3, "one sample per published row: {waited:?}");
    assert!(waited.iter().all(|s| (0.0..60.0).contains(s)), "{waited:?}");
}
