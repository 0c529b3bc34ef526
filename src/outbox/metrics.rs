//! The relay's metrics, recorded through the [`metrics`] facade, like the inbox consumer's
//! (see [`crate::inbox::metrics`] for how to install an exporter: before `start()`).
//!
//! Every metric carries one label, `table`, the outbox table's name. Durations are in seconds.
//!
//! | name | kind | unit | what |
//! |---|---|---|---|
//! | `eventflow_outbox_published_total` | counter | events | rows appended to their stream and marked published |
//! | `eventflow_outbox_retried_total` | counter | attempts | rows the broker refused, scheduled for another attempt |
//! | `eventflow_outbox_dead_lettered_total` | counter | events | rows dead-lettered after `max_attempts` |
//! | `eventflow_outbox_unreachable_batches_total` | counter | batches | batches left in the outbox because the broker could not be reached |
//! | `eventflow_outbox_unreplicated_total` | counter | events | rows appended but left unpublished because too few replicas acknowledged them (`wait_for_replicas`) |
//! | `eventflow_outbox_deleted_total` | counter | rows | published rows deleted by retention |
//! | `eventflow_outbox_trimmed_total` | counter | entries | stream entries trimmed after every group consumed them |
//! | `eventflow_outbox_enqueued_to_published_seconds` | histogram | seconds | from a row's `created_at` (the database's clock at enqueue) to its publication (the relay's clock) |
//!
//! The counters match [`RelayStats`](super::RelayStats). The histogram is recorded once per
//! published row, after its batch commits; a negative span counts as zero.

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram, Unit};

/// Counter: rows appended to their stream and marked published.
pub const PUBLISHED: &str = "eventflow_outbox_published_total";
/// Counter: rows the broker refused, scheduled for another attempt.
pub const RETRIED: &str = "eventflow_outbox_retried_total";
/// Counter: rows dead-lettered after `max_attempts`.
pub const DEAD_LETTERED: &str = "eventflow_outbox_dead_lettered_total";
/// Counter: batches left in the outbox because the broker could not be reached.
pub const UNREACHABLE_BATCHES: &str = "eventflow_outbox_unreachable_batches_total";
/// Counter: rows appended but left unpublished because too few replicas acknowledged them.
pub const UNREPLICATED: &str = "eventflow_outbox_unreplicated_total";
/// Counter: published rows deleted by retention.
pub const DELETED: &str = "eventflow_outbox_deleted_total";
/// Counter: stream entries trimmed after every group consumed them.
pub const TRIMMED: &str = "eventflow_outbox_trimmed_total";
/// Histogram, seconds: from a row's enqueue to its publication.
pub const ENQUEUED_TO_PUBLISHED: &str = "eventflow_outbox_enqueued_to_published_seconds";

/// Label holding the outbox table's name.
pub const LABEL_TABLE: &str = "table";

/// One relay's metric handles, registered once at start.
pub(crate) struct RelayMetrics {
    pub published: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub unreachable_batches: Counter,
    pub unreplicated: Counter,
    pub deleted: Counter,
    pub trimmed: Counter,
    enqueued_to_published: Histogram,
}

impl RelayMetrics {
    pub fn new(table: &str) -> Self {
        describe();
        let labels = [(LABEL_TABLE, table.to_string())];
        Self {
            published: metrics::counter!(PUBLISHED, &labels),
            retried: metrics::counter!(RETRIED, &labels),
            dead_lettered: metrics::counter!(DEAD_LETTERED, &labels),
            unreachable_batches: metrics::counter!(UNREACHABLE_BATCHES, &labels),
            unreplicated: metrics::counter!(UNREPLICATED, &labels),
            deleted: metrics::counter!(DELETED, &labels),
            trimmed: metrics::counter!(TRIMMED, &labels),
            enqueued_to_published: metrics::histogram!(ENQUEUED_TO_PUBLISHED, &labels),
        }
    }

    /// Records one published row's time in the outbox.
    pub fn published_after(&self, created_at: DateTime<Utc>, published_at: DateTime<Utc>) {
        let seconds = (published_at - created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.enqueued_to_published.record(seconds.max(0.0));
    }
}

fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        PUBLISHED,
        Unit::Count,
        "outbox rows published to their stream"
    );
    describe_counter!(
        RETRIED,
        Unit::Count,
        "outbox rows refused by the broker, to be retried"
    );
    describe_counter!(DEAD_LETTERED, Unit::Count, "outbox rows dead-lettered");
    describe_counter!(
        UNREACHABLE_BATCHES,
        Unit::Count,
        "outbox batches left in place because the broker was unreachable"
    );
    describe_counter!(
        UNREPLICATED,
        Unit::Count,
        "outbox rows appended but not acknowledged by enough replicas, to be appended again"
    );
    describe_counter!(
        DELETED,
        Unit::Count,
        "published outbox rows deleted by retention"
    );
    describe_counter!(TRIMMED, Unit::Count, "consumed stream entries trimmed");
    describe_histogram!(
        ENQUEUED_TO_PUBLISHED,
        Unit::Seconds,
        "time from enqueue to publication"
    );
}
