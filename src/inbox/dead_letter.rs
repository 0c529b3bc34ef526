//! Announcing dead letters: one log line and the application's hook, per row dead-lettered.
//!
//! A row becomes a dead letter when its handler gives up ([`crate::HandlerError::give_up`]) or
//! fails for the `max_retries`-th time. Once the worker's transaction has committed, the worker
//! logs one `tracing` error with the fixed message `"event dead-lettered"` (for log-based
//! alerting) and calls the hook set with
//! [`ConsumerBuilder::on_dead_letter`](super::ConsumerBuilder::on_dead_letter). A dead-lettering
//! that rolled back is never announced: the row is still due and is tried again.

use crate::event::InboxRow;
use crate::headers::Headers;
use crate::store::Failure;
use chrono::{DateTime, Utc};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use uuid::Uuid;

/// The fixed message of the log line announcing a dead letter, for log-based alerts to match.
pub const DEAD_LETTER_MESSAGE: &str = "event dead-lettered";

/// A row that has just become a dead letter, as given to the
/// [`on_dead_letter`](super::ConsumerBuilder::on_dead_letter) hook.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The stream the event came from.
    pub stream: String,
    /// The consumer group.
    pub group: String,
    /// The inbox row's id.
    pub row_id: Uuid,
    /// The stream entry id the event arrived with.
    pub stream_id: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The entity the event is about.
    pub aggregate_id: Uuid,
    /// The event's correlation id, if the producer set one.
    pub correlation_id: Option<String>,
    /// The event's headers (trace context and other metadata), empty when it had none.
    pub headers: Headers,
    /// Failed attempts, the last one included (the row's `retry_count`).
    pub attempts: i32,
    /// The last attempt's error, at most 1000 characters.
    pub error: String,
    /// When the last attempt failed, by the consumer's clock.
    pub dead_lettered_at: DateTime<Utc>,
}

impl DeadLetter {
    pub(crate) fn new(group: &str, row: &InboxRow, failure: &Failure) -> Self {
        Self {
            stream: row.stream.clone().unwrap_or_default(),
            group: group.to_string(),
            row_id: row.id,
            stream_id: row.stream_id.clone(),
            event_id: row.event.event_id.clone(),
            event_type: row.event.event_type.clone(),
            aggregate_id: row.event.aggregate_id,
            correlation_id: row.event.correlation_id.clone(),
            headers: row.event.headers.clone(),
            attempts: failure.retry_count,
            error: failure.error_message.clone(),
            dead_lettered_at: failure.failed_at,
        }
    }
}

/// The application's dead-letter hook.
pub(crate) type DeadLetterHook = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// Logs the dead letter, then calls the hook, if any; a panicking hook is logged, not raised.
pub(crate) fn announce(dead: &DeadLetter, hook: Option<&DeadLetterHook>) {
    tracing::error!(
        event_id = %dead.event_id,
        event_type = %dead.event_type,
        aggregate_id = %dead.aggregate_id,
        correlation_id = dead.correlation_id.as_deref().unwrap_or(""),
        attempts = dead.attempts,
        error = %dead.error,
        stream = %dead.stream,
        group = %dead.group,
        stream_id = %dead.stream_id,
        "{}",
        DEAD_LETTER_MESSAGE
    );
    let Some(hook) = hook else { return };
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(dead))) {
        tracing::error!(
            event_id = %dead.event_id,
            panic = %super::worker::panic_message(panic.as_ref()),
            "the on_dead_letter hook panicked; the worker goes on"
        );
    }
}
