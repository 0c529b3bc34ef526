//! A publisher thread: claim a batch of due rows, append them in one round trip, record what
//! became of each, commit; again at once after a full batch, else after a wake-up or the poll
//! interval, or, when due rows remain that another relay holds, until that relay commits. An
//! unreachable broker, or one that says "try later" (out of memory, loading, a failover),
//! leaves the rows in place without an attempt counted and the thread backs off; an entry the
//! broker refuses (a key of another type) is retried on the policy's schedule, then
//! dead-lettered. With `wait_for_replicas`, an entry too few replicas acknowledged is treated
//! like "try later": its row stays unpublished, no attempt counted.

use super::relay::Shared;
use crate::backoff::{random_unit, Backoff};
use crate::inbox::panic_message;
use crate::store::outbox::{ClaimDue, Delivery, OutboxRow, RowOutcome};
use crate::transport::{OutgoingEntry, TransportError};
use chrono::{DateTime, Utc};
use crossbeam_channel::Receiver;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub(super) fn publish_until_stopped(
    shared: &Shared,
    index: usize,
    wake: &Receiver<()>,
    stop: &Receiver<()>,
) {
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
                shared.beats.round.beat();
                if round.published > 0 {
                    shared.beats.published.beat();
                }
                if shared.contention_wait.is_some()
                    && round.published + round.retried + round.dead_lettered > 0
                {
                    // Rows this relay held may have held back another relay's claim.
                    shared.wake_siblings(index);
                }
                if round.deferred > 0 {
                    // The broker said "try later" for some entries: they stay as they were.
                    if !backoff.wait(&shared.stopping) {
                        return;
                    }
                    continue;
                }
                backoff.reset();
                if round.claimed >= shared.batch_size || round.unreadable > 0 {
                    continue; // more may be waiting
                }
                // Due rows another relay holds become claimable when it commits: wait for
                // that (a sibling in this process wakes this one), not a whole poll interval.
                let contended = shared.contention_wait.is_some() && round.contended;
                let pause = match shared.contention_wait {
                    Some(wait) if contended => wait,
                    _ => shared.poll_interval,
                };
                shared.waiting(index, contended);
                crossbeam_channel::select! {
                    recv(wake) -> _ => {}
                    recv(stop) -> _ => return,
                    default(pause) => {}
                }
                shared.working(index);
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
    // The row's stream, or its aggregate's partition of it when the stream is split.
    let targets: Vec<_> = rows
        .iter()
        .map(|row| {
            shared
                .partitioning
                .stream_for(&row.stream, &row.event.aggregate_id)
        })
        .collect();
    let entries: Vec<OutgoingEntry<'_>> = targets
        .iter()
        .zip(&fields)
        .map(|(stream, fields)| OutgoingEntry { stream, fields })
        .collect();
    let published = match shared.replica_wait {
        Some(wait) => shared.transport.publish_entries_replicated(&entries, wait),
        None => shared.transport.publish_entries(&entries),
    };
    match published {
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
        // Every entry was told "try later" (out of memory, say): nothing was appended, so the
        // batch is left as it was.
        Ok(results)
            if !results.is_empty()
                && results
                    .iter()
                    .all(|result| matches!(result, Err(TransportError::Unavailable(_)))) =>
        {
            let error = results
                .into_iter()
                .find_map(Result::err)
                .map(|error| error.to_string())
                .unwrap_or_default();
            tracing::warn!(%error, rows = rows.len(), "stream broker says try later; the batch stays in the outbox");
            Delivery::Abandoned
        }
        Ok(results) => {
            let mut streams = shared.streams.lock();
            let mut unreplicated = 0;
            let delivery = Delivery::Settled(
                rows.iter()
                    .zip(&targets)
                    .zip(results)
                    .map(|((row, target), result)| match result {
                        Ok(entry_id) => {
                            if !streams.contains(target.as_ref()) {
                                streams.insert(target.to_string());
                            }
                            RowOutcome::Published { entry_id }
                        }
                        // Not this entry's fault: no attempt counted, claimed again later.
                        Err(TransportError::Unavailable(error)) => {
                            tracing::warn!(%error, event_id = %row.event.event_id, stream = %row.stream, "stream broker says try later; the event stays in the outbox");
                            RowOutcome::Deferred {
                                error: error.to_string(),
                            }
                        }
                        // Appended, but not yet safe from a failover: appended again later.
                        Err(error @ TransportError::NotReplicated { .. }) => {
                            unreplicated += 1;
                            RowOutcome::Deferred {
                                error: error.to_string(),
                            }
                        }
                        Err(error) => failed(shared, row, &error.to_string(), now),
                    })
                    .collect(),
            );
            if unreplicated > 0 {
                shared.counters.unreplicated(unreplicated);
                tracing::warn!(
                    rows = unreplicated,
                    wait_for_replicas = ?shared.replica_wait,
                    "too few replicas acknowledged these events in time (wait_for_replicas); \
                     they stay in the outbox and are appended again, and the inbox drops the \
                     copies by event id. A Redis without replicas never acknowledges: turn \
                     wait_for_replicas off for it"
                );
            }
            delivery
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
