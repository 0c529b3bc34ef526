//! The consumer's metrics, recorded through the [`metrics`] facade.
//!
//! eventflow only records; the application picks the exporter (Prometheus, StatsD, OpenTelemetry,
//! ...) by installing a [`metrics::Recorder`] **before** [`InboxConsumer::start`], which
//! registers the consumer's metrics with the recorder installed at that moment. Without a
//! recorder, recording costs next to nothing. `examples/prometheus.rs` serves them to Prometheus.
//!
//! Every metric carries two labels, `stream` and `group`, except the four named in the table.
//! Counters and histograms are per stream: the stream an entry was read from, or the stream
//! recorded on the row (empty for rows that record none, such as rows written by the reference
//! toolkit). The queue and busy gauges are per consumer: their `stream` label lists the
//! consumer's streams, comma-separated (just the stream's name for a consumer of one). Nothing
//! per event (an event id) is ever a label, so the number of series stays bounded by the number
//! of consumers and streams. The exception is `eventflow_inbox_unhandled_total`, recorded by a
//! [`Router`](super::Router) with [`UnknownEvents::MarkProcessed`]: its one label is
//! `event_type`, since which types go unhandled is the point of it, and the router, being a
//! handler, does not know the consumer's stream and group. Its series are as many as the
//! unhandled types producers send. Durations are in seconds.
//!
//! | name | kind | unit | what |
//! |---|---|---|---|
//! | `eventflow_inbox_received_total` | counter | entries | stream entries read, reclaimed ones included |
//! | `eventflow_inbox_duplicates_total` | counter | events | events whose `event_id` was already in the inbox, not stored again |
//! | `eventflow_inbox_quarantined_total` | counter | entries | malformed entries kept in the quarantine table |
//! | `eventflow_inbox_reclaimed_total` | counter | entries | entries taken over from consumers that left them unacknowledged |
//! | `eventflow_inbox_processed_total` | counter | events | rows handled and committed as processed |
//! | `eventflow_inbox_failed_attempts_total` | counter | attempts | failed attempts scheduled for a retry (an attempt that dead-letters its row counts as dead-lettered instead) |
//! | `eventflow_inbox_dead_lettered_total` | counter | events | rows moved to `dead_letter` |
//! | `eventflow_inbox_handler_duration_seconds` | histogram | seconds | one handler call, whatever its outcome |
//! | `eventflow_inbox_occurred_to_processed_seconds` | histogram | seconds | from the event's `occurred_on` (the producer's clock) to its commit as processed |
//! | `eventflow_inbox_received_to_processed_seconds` | histogram | seconds | from the row's `received_at` to its commit as processed, retry delays included |
//! | `eventflow_inbox_queued_rows` | gauge | rows | rows stored and handed to the workers, not yet taken by one |
//! | `eventflow_inbox_busy_workers` | gauge | workers | workers running handlers for a claimed batch |
//! | `eventflow_inbox_parked_aggregates` | gauge | aggregates | ordered mode: aggregates held back by a dead letter neither requeued nor skipped (label `group` only: a table's count) |
//! | `eventflow_inbox_oldest_parked_seconds` | gauge | seconds | ordered mode: how long the oldest event waiting behind such a dead letter has waited; 0 when none (label `group` only) |
//! | `eventflow_inbox_hung_handlers` | gauge | handlers | handlers running past the handler time limit (label `group` only) |
//! | `eventflow_inbox_unhandled_total` | counter | events | events of a type with no route that a router marked processed (label `event_type` only; counted in the handler's transaction, so again if it rolls back and the event is handled again) |
//!
//! The counters match [`ConsumerStats`](super::ConsumerStats), which counts the same things per
//! consumer. The end-to-end histograms are recorded once per processed event, after its commit,
//! with the consumer's clock; a negative span (a producer's clock ahead of ours) counts as zero.
//! Rows dead-lettered because the store cannot read them are not counted: they have no event to
//! report (the store logs them).
//!
//! [`InboxConsumer::start`]: super::InboxConsumer::start
//! [`UnknownEvents::MarkProcessed`]: super::UnknownEvents::MarkProcessed

use chrono::{DateTime, Utc};
use metrics::{Counter, Gauge, Histogram, Unit};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Counter: stream entries read, reclaimed ones included.
pub const RECEIVED: &str = "eventflow_inbox_received_total";
/// Counter: events already in the inbox (by `event_id`), not stored again.
pub const DUPLICATES: &str = "eventflow_inbox_duplicates_total";
/// Counter: malformed entries kept in the quarantine table.
pub const QUARANTINED: &str = "eventflow_inbox_quarantined_total";
/// Counter: entries taken over from consumers that left them unacknowledged.
pub const RECLAIMED: &str = "eventflow_inbox_reclaimed_total";
/// Counter: rows handled and committed as processed.
pub const PROCESSED: &str = "eventflow_inbox_processed_total";
/// Counter: failed attempts scheduled for a retry.
pub const FAILED_ATTEMPTS: &str = "eventflow_inbox_failed_attempts_total";
/// Counter: rows moved to `dead_letter`.
pub const DEAD_LETTERED: &str = "eventflow_inbox_dead_lettered_total";
/// Histogram, seconds: one handler call, whatever its outcome.
pub const HANDLER_DURATION: &str = "eventflow_inbox_handler_duration_seconds";
/// Histogram, seconds: from an event's `occurred_on` to its commit as processed.
pub const OCCURRED_TO_PROCESSED: &str = "eventflow_inbox_occurred_to_processed_seconds";
/// Histogram, seconds: from a row's `received_at` to its commit as processed.
pub const RECEIVED_TO_PROCESSED: &str = "eventflow_inbox_received_to_processed_seconds";
/// Gauge, rows: rows handed to the workers and not yet taken by one.
pub const QUEUED_ROWS: &str = "eventflow_inbox_queued_rows";
/// Gauge, workers: workers running handlers for a claimed batch.
pub const BUSY_WORKERS: &str = "eventflow_inbox_busy_workers";
/// Counter, label [`LABEL_EVENT_TYPE`] only: events of a type with no route that a
/// [`Router`](super::Router) marked processed.
pub const UNHANDLED: &str = "eventflow_inbox_unhandled_total";

/// Gauge, aggregates: aggregates held back by a dead letter (ordered mode).
pub const PARKED_AGGREGATES: &str = "eventflow_inbox_parked_aggregates";
/// Gauge, seconds: how long the oldest event waiting behind a parking dead letter has waited.
pub const OLDEST_PARKED: &str = "eventflow_inbox_oldest_parked_seconds";
/// Gauge: handlers running past the handler time limit (label `group` only).
pub const HUNG_HANDLERS: &str = "eventflow_inbox_hung_handlers";

/// Label holding the stream name.
pub const LABEL_STREAM: &str = "stream";
/// Label holding the consumer group name.
pub const LABEL_GROUP: &str = "group";
/// Label holding the event type, on [`UNHANDLED`] only.
pub const LABEL_EVENT_TYPE: &str = "event_type";

/// One stream's counters and histograms, registered once so recording does no lookups.
struct StreamMetrics {
    received: Counter,
    duplicates: Counter,
    quarantined: Counter,
    reclaimed: Counter,
    processed: Counter,
    failed_attempts: Counter,
    dead_lettered: Counter,
    handler_duration: Histogram,
    occurred_to_processed: Histogram,
    received_to_processed: Histogram,
}

impl StreamMetrics {
    fn new(stream: &str, group: &str) -> Self {
        let labels = labels(stream, group);
        Self {
            received: metrics::counter!(RECEIVED, &labels),
            duplicates: metrics::counter!(DUPLICATES, &labels),
            quarantined: metrics::counter!(QUARANTINED, &labels),
            reclaimed: metrics::counter!(RECLAIMED, &labels),
            processed: metrics::counter!(PROCESSED, &labels),
            failed_attempts: metrics::counter!(FAILED_ATTEMPTS, &labels),
            dead_lettered: metrics::counter!(DEAD_LETTERED, &labels),
            handler_duration: metrics::histogram!(HANDLER_DURATION, &labels),
            occurred_to_processed: metrics::histogram!(OCCURRED_TO_PROCESSED, &labels),
            received_to_processed: metrics::histogram!(RECEIVED_TO_PROCESSED, &labels),
        }
    }
}

fn labels(stream: &str, group: &str) -> [(&'static str, String); 2] {
    [
        (LABEL_STREAM, stream.to_string()),
        (LABEL_GROUP, group.to_string()),
    ]
}

/// One consumer's metric handles, registered once at start so recording does no lookups.
pub(crate) struct InboxMetrics {
    /// Per configured stream; a consumer reads a handful, so a list is the quickest lookup.
    streams: Vec<(String, StreamMetrics)>,
    /// Rows whose stream is not one of the consumer's (replayed, or written by other writers).
    others: parking_lot::Mutex<Vec<(String, std::sync::Arc<StreamMetrics>)>>,
    group: String,
    queued_rows: Gauge,
    busy_workers: Gauge,
    /// This consumer's share of the gauges, so what it leaves behind can be taken back at
    /// shutdown: gauges are moved by increments, since two consumers of one stream and group in
    /// one process share the series.
    queued_now: AtomicI64,
    busy_now: AtomicI64,
}

impl InboxMetrics {
    /// Registers the metrics of a consumer of `streams` with the recorder installed now.
    pub fn new(streams: &[String], group: &str) -> Self {
        describe();
        let consumer = labels(&streams.join(","), group);
        Self {
            streams: streams
                .iter()
                .map(|stream| (stream.clone(), StreamMetrics::new(stream, group)))
                .collect(),
            others: Default::default(),
            group: group.to_string(),
            queued_rows: metrics::gauge!(QUEUED_ROWS, &consumer),
            busy_workers: metrics::gauge!(BUSY_WORKERS, &consumer),
            queued_now: AtomicI64::new(0),
            busy_now: AtomicI64::new(0),
        }
    }

    /// Runs `record` on the metrics of `stream`.
    fn of(&self, stream: Option<&str>, record: impl FnOnce(&StreamMetrics)) {
        let stream = stream.unwrap_or("");
        if let Some((_, metrics)) = self.streams.iter().find(|(name, _)| name == stream) {
            return record(metrics);
        }
        let metrics = {
            let mut others = self.others.lock();
            match others.iter().find(|(name, _)| name == stream) {
                Some((_, metrics)) => metrics.clone(),
                None => {
                    let metrics = std::sync::Arc::new(StreamMetrics::new(stream, &self.group));
                    others.push((stream.to_string(), metrics.clone()));
                    metrics
                }
            }
        };
        record(&metrics)
    }

    pub fn received(&self, stream: &str, n: usize) {
        self.of(Some(stream), |m| m.received.increment(n as u64));
    }

    pub fn duplicates(&self, stream: &str, n: usize) {
        self.of(Some(stream), |m| m.duplicates.increment(n as u64));
    }

    pub fn quarantined(&self, stream: &str, n: usize) {
        self.of(Some(stream), |m| m.quarantined.increment(n as u64));
    }

    pub fn reclaimed(&self, stream: &str, n: usize) {
        self.of(Some(stream), |m| m.reclaimed.increment(n as u64));
    }

    pub fn failed_attempt(&self, stream: Option<&str>) {
        self.of(stream, |m| m.failed_attempts.increment(1));
    }

    pub fn dead_lettered(&self, stream: Option<&str>) {
        self.of(stream, |m| m.dead_lettered.increment(1));
    }

    pub fn handler_ran(&self, stream: Option<&str>, took: Duration) {
        self.of(stream, |m| m.handler_duration.record(took.as_secs_f64()));
    }

    /// A row committed as processed at `now`.
    pub fn processed(
        &self,
        stream: Option<&str>,
        occurred_on: DateTime<Utc>,
        received_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        self.of(stream, |m| {
            m.processed.increment(1);
            m.occurred_to_processed
                .record(seconds_between(occurred_on, now));
            m.received_to_processed
                .record(seconds_between(received_at, now));
        });
    }

    /// Rows handed to the workers (negative: taken by a worker, or never handed over).
    pub fn queued(&self, rows: i64) {
        self.queued_now.fetch_add(rows, Ordering::Relaxed);
        self.queued_rows.increment(rows as f64);
    }

    /// Marks a worker busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_now.fetch_add(1, Ordering::Relaxed);
        self.busy_workers.increment(1.0);
        Busy(self)
    }

    /// Takes back what this consumer still adds to the gauges; called once its threads are gone
    /// (rows left in the queue by halted workers are pending in the inbox, not queued).
    pub fn release_gauges(&self) {
        let queued = self.queued_now.swap(0, Ordering::Relaxed);
        self.queued_rows.decrement(queued as f64);
        let busy = self.busy_now.swap(0, Ordering::Relaxed);
        self.busy_workers.decrement(busy as f64);
    }
}

/// The parked-aggregate gauges of an ordered consumer's table, set from a periodic count.
pub(crate) struct ParkedGauges {
    aggregates: Gauge,
    oldest: Gauge,
}

impl ParkedGauges {
    pub fn new(group: &str) -> Self {
        let labels = [(LABEL_GROUP, group.to_string())];
        Self {
            aggregates: metrics::gauge!(PARKED_AGGREGATES, &labels),
            oldest: metrics::gauge!(OLDEST_PARKED, &labels),
        }
    }

    pub fn set(&self, summary: &crate::store::ParkedSummary, now: DateTime<Utc>) {
        self.aggregates.set(summary.aggregates as f64);
        self.oldest.set(
            summary
                .oldest_waiting
                .map_or(0.0, |oldest| seconds_between(oldest, now)),
        );
    }
}

/// A worker counted busy; dropping it (also when unwinding) counts it idle again.
pub(crate) struct Busy<'a>(&'a InboxMetrics);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_now.fetch_sub(1, Ordering::Relaxed);
        self.0.busy_workers.decrement(1.0);
    }
}

/// Seconds from `from` to `to`, zero when `to` is earlier.
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from)
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Tells the recorder each metric's unit and meaning, for exporters that show them (Prometheus
/// `# HELP`). Done at every start, so that a recorder installed between two starts hears it too.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    {
        describe_counter!(
            RECEIVED,
            Unit::Count,
            "Stream entries read, reclaimed ones included."
        );
        describe_counter!(
            DUPLICATES,
            Unit::Count,
            "Events already in the inbox, not stored again."
        );
        describe_counter!(
            QUARANTINED,
            Unit::Count,
            "Malformed entries kept in the quarantine table."
        );
        describe_counter!(
            RECLAIMED,
            Unit::Count,
            "Entries taken over from consumers that left them unacknowledged."
        );
        describe_counter!(
            PROCESSED,
            Unit::Count,
            "Rows handled and committed as processed."
        );
        describe_counter!(
            FAILED_ATTEMPTS,
            Unit::Count,
            "Failed attempts scheduled for a retry."
        );
        describe_counter!(DEAD_LETTERED, Unit::Count, "Rows moved to dead_letter.");
        describe_histogram!(
            HANDLER_DURATION,
            Unit::Seconds,
            "One handler call, whatever its outcome."
        );
        describe_histogram!(
            OCCURRED_TO_PROCESSED,
            Unit::Seconds,
            "From an event's occurred_on to its commit as processed."
        );
        describe_histogram!(
            RECEIVED_TO_PROCESSED,
            Unit::Seconds,
            "From a row's received_at to its commit as processed."
        );
        describe_gauge!(
            QUEUED_ROWS,
            Unit::Count,
            "Rows handed to the workers and not yet taken by one."
        );
        describe_gauge!(
            BUSY_WORKERS,
            Unit::Count,
            "Workers running handlers for a claimed batch."
        );
        describe_gauge!(
            PARKED_AGGREGATES,
            Unit::Count,
            "Aggregates held back by a dead letter neither requeued nor skipped."
        );
        describe_gauge!(
            HUNG_HANDLERS,
            Unit::Count,
            "Handlers running past the handler time limit."
        );
        describe_gauge!(
            OLDEST_PARKED,
            Unit::Seconds,
            "How long the oldest event waiting behind a parking dead letter has waited."
        );
        describe_counter!(
            UNHANDLED,
            Unit::Count,
            "Events of a type with no route that a router marked processed."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_seconds_and_never_negative() {
        let start = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let later = start + chrono::Duration::milliseconds(1500);
        assert_eq!(seconds_between(start, later), 1.5);
        assert_eq!(seconds_between(later, start), 0.0);
    }
}
