//! Attempts that may never finish: counting a retry or an orphan before it runs.
//!
//! A handler runs inside the transaction that marks its row processed, so an attempt that dies
//! with its process (an abort, an out-of-memory kill, a killed transaction) leaves no trace: the
//! row would be retried for ever, and an event that crashes its consumer would crash the fleet
//! in a loop. So a claim that finds retries or orphans runs them in two transactions: a short
//! one that locks them (skipping locked rows) and records each attempt up front as the failure
//! it is if it never finishes, with the retry policy's delay, and commits; then one that claims
//! those rows again, only if still as recorded, and runs the handlers, whose outcome is recorded
//! over the count (success clears it; a handler error is the same count, not one more).
//!
//! Fresh rows, the hot path, keep one transaction and no extra write: an attempt on a fresh row
//! that dies is not counted, and its row is found later as an orphan. An orphan is counted and
//! run at once rather than only counted and backed off, because it cannot be told apart from a
//! row that was never attempted (stored by a process that crashed before handling it, or waiting
//! behind its aggregate in ordered mode): backing those off would delay every crash's recovery
//! by the retry delay. So an event whose handler kills its process runs at most
//! `max_retries + 1` times: once uncounted, then counted each time, and a row found due again
//! with its last attempt used is dead-lettered with [`NEVER_FINISHED`] without running.
//!
//! A row whose counted attempt never finished is counted alone, just before it runs alone, in
//! transactions of its own (and, through [`RowHandler::admit`], with no other counted attempt
//! of its process unfinished beside it), so that a poison event does not take other rows down
//! with it again and again (they would be counted too, and dead-lettered for its sake); plain
//! retries and orphans are counted and run together, so the rows that shared a poison event's
//! batch are counted once for it (a `max_retries` of 1 dead-letters them: keep it at 2 or
//! more).

use super::refusal::{split_refused, Retry};
use super::{Claim, ClaimParams, Failure, InboxStore, RowHandler, Settled, StoreError};
use crate::event::{EventStatus, InboxRow};
use chrono::{DateTime, Utc};

/// The error recorded for an attempt counted before it ran, and kept when it never finished.
pub const NEVER_FINISHED: &str = "the attempt never finished: its process died or its \
transaction was ended before it committed";

/// What counting a claim's retries and orphans did, in its committed transaction.
#[derive(Default)]
pub(crate) struct Counted {
    /// Rows dead-lettered without running: their last attempt never finished.
    pub settled: Vec<Settled>,
    /// Rows whose attempt is counted, as they were before, to run now.
    pub run: Vec<InboxRow>,
    /// Retries or orphans were found, but the process did not admit them now (see
    /// [`RowHandler::admit`]): they stay due, and nothing else is claimed in their place.
    pub refused: bool,
}

/// What to record for a claimed retry or orphan before anything runs.
pub(crate) enum Count {
    /// Its last attempt was counted and never finished: a dead letter, not run again.
    DeadLetter(Failure),
    /// The attempt about to run, as a failure until it ends.
    Run(Failure),
}

/// Whether `row`'s last attempt is known to have died with its process: it was counted and
/// never finished. Orphans (`pending` or `processing` rows found due) are not: most are rows
/// nobody tried yet (a backlog, a crashed process's stored rows), and taking them one at a
/// time would make every recovery and backlog crawl. Counted together, the rows that shared a
/// batch with a poison event are counted once for it, then run alone.
fn may_have_died(row: &InboxRow) -> bool {
    never_finished(row)
}

fn never_finished(row: &InboxRow) -> bool {
    row.error_message
        .as_deref()
        .is_some_and(|error| error.starts_with(NEVER_FINISHED))
}

/// Decides what to record for `row`, claimed as a retry or an orphan at `now`.
pub(crate) fn count<S: InboxStore>(
    row: &InboxRow,
    handler: &mut dyn RowHandler<S>,
    now: DateTime<Utc>,
) -> Count {
    let failed = row.status == EventStatus::Failed;
    let died = never_finished(row);
    let event = &row.event;
    if died {
        tracing::warn!(row = %row.id, event_id = %event.event_id, event_type = %event.event_type,
            attempts = row.retry_count, "an attempt on this event never finished; it was counted");
    } else if !failed {
        tracing::warn!(row = %row.id, event_id = %event.event_id, event_type = %event.event_type,
            status = %row.status.as_str(),
            "an orphaned row (its process died, or it waited past orphan_after) is taken over; counting the attempt");
    }
    if failed && row.max_retries > 0 && row.retry_count >= row.max_retries {
        tracing::warn!(row = %row.id, event_id = %event.event_id, attempts = row.retry_count,
            "the last attempt on this event never finished; dead-lettering it");
        return Count::DeadLetter(Failure {
            status: EventStatus::DeadLetter,
            retry_count: row.retry_count,
            next_retry_at: None,
            error_message: NEVER_FINISHED.to_string(),
            failed_at: now,
        });
    }
    Count::Run(handler.attempt_started(row, now))
}

/// The rows of a claim to count now, if the process admits them (see [`RowHandler::admit`]):
/// the first row whose last attempt never finished, alone; else every plain retry and orphan.
/// `None` when the process refused them. Rows not picked stay as they are, for a later count:
/// counted together, suspects would all be counted again each time one of them kills the
/// process before the rest have run, and a suspect counted beside other unfinished counted
/// attempts would take them with it.
pub(crate) fn pick<S: InboxStore>(
    rows: Vec<InboxRow>,
    handler: &mut dyn RowHandler<S>,
) -> Option<Vec<InboxRow>> {
    let (suspects, plain): (Vec<InboxRow>, Vec<InboxRow>) =
        rows.into_iter().partition(may_have_died);
    if let Some(suspect) = suspects.into_iter().next() {
        // While a suspect waits for its turn, this worker counts nothing else either.
        return handler.admit(true).then(|| vec![suspect]);
    }
    match plain.is_empty() {
        true => Some(plain),
        false => handler.admit(false).then_some(plain),
    }
}

/// Runs `params`: a claim of retries and orphans ([`Claim::Due`], [`Claim::Heads`] over any
/// aggregate) counts them first and runs them as [`Claim::Counted`], again until it has settled
/// its limit or found none; the others run as they are.
pub(crate) fn process<S: InboxStore>(
    backend: &mut dyn Retry<S>,
    params: &ClaimParams<'_>,
    handler: &mut dyn RowHandler<S>,
) -> Result<Vec<Settled>, StoreError> {
    let limit = match params.claim {
        Claim::Due { limit, .. }
        | Claim::Heads {
            limit,
            aggregates: None,
            ..
        } => limit,
        _ => return split_refused(backend, params, handler),
    };
    let mut settled = Vec::new();
    while settled.len() < limit {
        let count = ClaimParams {
            claim: with_limit(params.claim, limit - settled.len()),
            ..*params
        };
        let Counted {
            settled: dead,
            run,
            refused,
        } = backend.count_attempts(&count, handler)?;
        if refused {
            // Not even the pending heads: one of them may be the refused suspect.
            return Ok(settled);
        }
        let found = !(dead.is_empty() && run.is_empty());
        settled.extend(dead);
        // A suspect was picked alone, so it runs in a transaction of its own: if it kills its
        // process again, it must not take the attempts of other rows with it.
        let outcome = (!run.is_empty()).then(|| {
            let counted = ClaimParams {
                claim: Claim::Counted(&run),
                ..*params
            };
            split_refused(backend, &counted, handler)
        });
        handler.counted_end();
        if let Some(outcome) = outcome {
            settled.extend(outcome?);
        }
        if !found {
            break;
        }
    }
    if settled.is_empty() && matches!(params.claim, Claim::Heads { .. }) {
        // No retries nor orphans among the heads: pending heads, claimed as they are.
        settled = split_refused(backend, params, handler)?;
    }
    Ok(settled)
}

/// `claim` with another limit.
fn with_limit(claim: Claim<'_>, limit: usize) -> Claim<'_> {
    match claim {
        Claim::Due {
            orphan_after,
            dead_processes,
            ..
        } => Claim::Due {
            limit,
            orphan_after,
            dead_processes,
        },
        Claim::Heads {
            after_dead_letter,
            aggregates,
            orphan_after,
            ..
        } => Claim::Heads {
            limit,
            after_dead_letter,
            aggregates,
            orphan_after,
        },
        other => other,
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::SqliteStore;
    use crate::store::Verdict;

    /// Admits what `admit` says, and notes what it was asked.
    struct Gate {
        admit: bool,
        asked: Vec<bool>,
    }

    impl RowHandler<SqliteStore> for Gate {
        fn handle(&mut self, _: &mut rusqlite::Transaction<'_>, _: &InboxRow) -> Verdict {
            Verdict::Processed
        }

        fn failed_after(&mut self, _: &InboxRow, _: String) -> Verdict {
            Verdict::Processed
        }

        fn admit(&mut self, suspect: bool) -> bool {
            self.asked.push(suspect);
            self.admit
        }
    }

    fn row(event_id: &str, never_finished: bool) -> InboxRow {
        let mut row = InboxRow::pending(Event::new(
            "OrderCreated",
            uuid::Uuid::nil(),
            serde_json::json!({}),
        ));
        row.event.event_id = event_id.to_string();
        if never_finished {
            row.status = EventStatus::Failed;
            row.retry_count = 1;
            row.error_message = Some(NEVER_FINISHED.to_string());
        }
        row
    }

    fn ids(rows: &[InboxRow]) -> Vec<&str> {
        rows.iter().map(|row| row.event.event_id.as_str()).collect()
    }

    #[test]
    fn a_suspect_is_picked_alone_and_only_when_admitted() {
        let claim = || vec![row("plain", false), row("s1", true), row("s2", true)];
        let mut admitting = Gate {
            admit: true,
            asked: Vec::new(),
        };
        assert_eq!(ids(&pick(claim(), &mut admitting).unwrap()), ["s1"]);
        assert_eq!(admitting.asked, [true]);

        // Turned away, the suspect stays uncounted, and so do the plain rows beside it: the
        // process counts nothing else until the suspect has had its turn.
        let mut refusing = Gate {
            admit: false,
            asked: Vec::new(),
        };
        assert!(pick(claim(), &mut refusing).is_none());
        assert_eq!(refusing.asked, [true]);
    }

    #[test]
    fn plain_retries_and_orphans_are_picked_together_when_admitted() {
        let claim = || vec![row("a", false), row("b", false)];
        let mut admitting = Gate {
            admit: true,
            asked: Vec::new(),
        };
        assert_eq!(ids(&pick(claim(), &mut admitting).unwrap()), ["a", "b"]);
        assert_eq!(admitting.asked, [false]);
        let mut refusing = Gate {
            admit: false,
            asked: Vec::new(),
        };
        assert!(pick(claim(), &mut refusing).is_none());
        let mut untouched = Gate {
            admit: true,
            asked: Vec::new(),
        };
        assert_eq!(
            pick(Vec::new(), &mut untouched).map(|rows| rows.len()),
            Some(0)
        );
        assert!(
            untouched.asked.is_empty(),
            "nothing to count, nothing asked"
        );
    }
}
