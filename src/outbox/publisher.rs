//! A publisher thread: claim a batch of due rows, append them in one round trip, record what
//! became of each, commit; again at once after a full batch, else after a wake-up or the poll
//! interval. An unreachable broker leaves the batch in place and the thread backs off; an
//! entry the broker refuses is retried on the policy's schedule, then dead-lettered.

use super::relay::Shared;
use crate::backoff::{random_unit, Backoff};
use crate::inbox::panic_message;
use crate::store::outbox::{ClaimDue, Delivery, OutboxRow, RowOutcome};
use crate::transport::{OutgoingEntry, TransportError};
use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(super) fn publish_until_stopped(shared: &Shared, wake: &Receiver<()>, stop: &Receiver<()>) {
    let mut backoff = Backoff::new();
    while !shared.stopping() {
        let now = shared.clock.now();
        let claim = ClaimDue {
            limit: shared.batch_size,
            now,
        };
        // When the published rows were enqueued, recorded once their batch commits.
        let mut enqueued = Vec::new();
        // A panicking clock, policy or transport must not end the thread.
        let round = catch_unwind(AssertUnwindSafe(|| {
            shared.store.publish_due(&claim, &mut |rows| {
                let delivery = deliver(shared, rows, now);
                if let Delivery::Settled(outcomes) = &delivery {
                    enqueued.clear();
                    enqueued.extend(rows.iter().zip(outcomes).filter_map(|(row, outcome)| {
                        matches!(outcome, RowOutcome::Published { .. }).then_some(row.created_at)
                    }));
                }
                delivery
            })
        }));
        match round {
            Ok(Ok(round)) if round.abandoned => {
                shared.counters.abandoned();
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
            Ok(Ok(round)) => {
                shared
                    .counters
                    .record(&round, &enqueued, shared.clock.now());
                backoff.reset();
                if round.claimed >= shared.batch_size {
                    continue; // more may be waiting
                }
                crossbeam_channel::select! {
                    recv(wake) -> _ => {}
                    recv(stop) -> _ => return,
                    default(shared.poll_interval) => {}
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "outbox relay cannot publish; backing off");
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
            Err(panic) => {
                tracing::error!(panic = %panic_message(&*panic), "outbox relay batch panicked; backing off");
                if !backoff.wait(&shared.stopping) {
                    return;
                }
            }
        }
    }
}

/// Appends a claimed batch in one round trip and says what became of each row.
fn deliver(shared: &Shared, rows: &[OutboxRow], now: DateTime<Utc>) -> Delivery {
    let fields: Vec<Vec<(String, Vec<u8>)>> =
        rows.iter().map(|row| row.event.to_entry_fields()).collect();
    let entries: Vec<OutgoingEntry<'_>> = rows
        .iter()
        .zip(&fields)
        .map(|(row, fields)| OutgoingEntry {
            stream: &row.stream,
            fields,
        })
        .collect();
    match shared.transport.publish_entries(&entries) {
        Err(TransportError::Unavailable(error)) => {
            tracing::warn!(%error, rows = rows.len(), "stream broker unreachable; the batch stays in the outbox");
            Delivery::Abandoned
        }
        // The round trip failed as a whole in a way a retry may not cure: count an attempt.
        Err(error) => {
            let error = error.to_string();
            Delivery::Settled(
                rows.iter()
                    .map(|row| failed(shared, row, &error, now))
                    .collect(),
            )
        }
        Ok(results) => {
            let mut streams = shared.streams.lock();
            Delivery::Settled(
                rows.iter()
                    .zip(results)
                    .map(|(row, result)| match result {
                        Ok(entry_id) => {
                            if !streams.contains(&row.stream) {
                                streams.insert(row.stream.clone());
                            }
                            RowOutcome::Published { entry_id }
                        }
                        Err(error) => failed(shared, row, &error.to_string(), now),
                    })
                    .collect(),
            )
        }
    }
}

fn failed(shared: &Shared, row: &OutboxRow, error: &str, now: DateTime<Utc>) -> RowOutcome {
    let attempts = u32::try_from(row.attempts).unwrap_or(0).saturating_add(1);
    if attempts >= shared.max_attempts {
        tracing::error!(
            outbox_id = row.id,
            event_id = %row.event.event_id,
            event_type = %row.event.event_type,
            aggregate_id = %row.event.aggregate_id,
            stream = %row.stream,
            attempts,
            error,
            "outbox event dead-lettered"
        );
        return RowOutcome::DeadLetter {
            error: error.to_string(),
        };
    }
    let delay = shared.retry_policy.delay(attempts, random_unit());
    let at = chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    tracing::warn!(event_id = %row.event.event_id, stream = %row.stream, attempts, error, %at, "outbox event refused; retrying later");
    RowOutcome::Retry {
        error: error.to_string(),
        at,
    }
}
