//! Worker threads: claim rows, run the handler in the row's transaction, record the outcome.
//!
//! A worker waits on three things: rows a reader has just stored (in ordered mode, the aggregates),
//! a tick on which it claims due rows itself (retries, orphans; in ordered mode, aggregate heads),
//! and the halt signal. A handler error or panic is recorded as a failed attempt with the
//! retry policy's delay, or as a dead letter once out of retries; the worker goes on either way.

use super::consumer::Handler;
use super::dead_letter::{announce, DeadLetter};
use super::handler_span::{handler_span, record_outcome};
use super::health::Heartbeats;
use super::idle::{Activity, SweepRequest, Swept};
use super::in_flight::InFlight;
use super::liveness::Liveness;
use super::metrics::{Busy, InboxMetrics};
use super::polls::EmptyPolls;
use super::settings::Settings;
use super::stats::Counters;
use super::suspects::SuspectGate;
use super::verdict::{Jitter, Rules, MAX_RETRY_DELAY};
use super::waiting_aggregates::WaitingAggregates;
use crate::backoff::Backoff;
use crate::event::{EventStatus, InboxRow};
use crate::store::{
    Claim, ClaimParams, Failure, InboxStore, RowHandler, StoreError, Verdict, NEVER_FINISHED,
};
use chrono::{DateTime, Utc};
use crossbeam_channel::{select, Receiver};
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Tries at a batch of handed-over rows before leaving them to the orphan polls.
const FRESH_ATTEMPTS: usize = 3;

/// What a reader sends the workers.
pub(crate) enum Work {
    /// Rows just stored, to claim as they are (unordered mode).
    Rows(Vec<InboxRow>),
    /// Rows of these aggregates were just stored: claim their heads (ordered mode).
    Aggregates(Vec<Uuid>),
    /// A consumer process was found dead: claim due rows now, its rows among them, rather
    /// than on the next tick.
    Sweep,
}

pub(crate) struct Worker<S: InboxStore> {
    /// This worker's number, its slot in `in_flight`.
    pub index: usize,
    pub in_flight: Arc<InFlight>,
    pub store: Arc<S>,
    pub handler: Arc<dyn Handler<S>>,
    pub settings: Arc<Settings>,
    pub counters: Arc<Counters>,
    pub heartbeats: Arc<Heartbeats>,
    pub work: Receiver<Work>,
    pub halt: Receiver<()>,
    pub stop: Arc<AtomicBool>,
    /// The consumer processes found dead, whose rows are orphans at any age.
    pub liveness: Arc<Liveness>,
    /// Shared by the process's workers: a suspect runs with no other counted attempt.
    pub suspects: Arc<SuspectGate>,
    /// Ordered mode: aggregates stored while every worker was busy, to top claims up with.
    pub waiting: Arc<WaitingAggregates>,
    /// Shared by the process's workers: when one last polled and found nothing due.
    pub polls: Arc<EmptyPolls>,
    /// Told when a hand-over or a claim begins and ends, for `ConsumerHandle::wait_idle`.
    pub activity: Arc<Activity>,
    /// Requests from `ConsumerHandle::wait_idle` to claim every due row now.
    pub sweeps: Receiver<SweepRequest>,
    /// Rows this worker has settled, and batches it failed to process, so a sweep can say what
    /// it did.
    pub settled: Cell<usize>,
    pub failed_batches: Cell<usize>,
    /// Set when the last batch had a failure: the next batch runs with a savepoint per event
    /// from the start, since failures tend to come in runs (a dependency is down).
    pub recent_failure: Cell<bool>,
}

impl<S: InboxStore> Worker<S> {
    pub fn run(self) {
        let tick = crossbeam_channel::tick(self.settings.poll_interval);
        let mut backoff = Backoff::new();
        loop {
            select! {
                recv(self.work) -> work => match work {
                    Ok(work) => self.take(work, &mut backoff),
                    // Every reader has stopped and the queue is drained.
                    Err(_) => break,
                },
                recv(tick) -> _ => {
                    // Another worker's poll that just found nothing due answers for this one.
                    let interval = self.settings.poll_interval;
                    if !self.polls.recently_empty(self.index, Instant::now(), interval) {
                        let mut busy = self.activity.busy();
                        let swept = self.sweep(&mut backoff, self.settings.orphan_after);
                        self.polls.record(self.index, Instant::now(), swept.settled > 0);
                        busy.did_something(swept.settled > 0);
                    }
                }
                // Asked by `ConsumerHandle::wait_idle` once readers and hand-overs are quiet:
                // then every pending row is one a hand-over left behind (a replayed quarantine
                // entry, a batch that failed on a database error), so none is left to wait
                // out `orphan_after`.
                recv(self.sweeps) -> request => if let Ok(reply) = request {
                    let mut busy = self.activity.busy();
                    let swept = self.sweep(&mut backoff, Duration::ZERO);
                    busy.did_something(swept.settled > 0);
                    // Ended before answering, so the waiter finds the consumer quiet.
                    drop(busy);
                    let _ = reply.send(swept);
                },
                recv(self.halt) -> _ => break,
            }
        }
        tracing::debug!("worker stopped");
    }

    /// Does what a reader or the process liveness check sent.
    fn take(&self, work: Work, backoff: &mut Backoff) {
        match work {
            Work::Rows(rows) => {
                let (rows, hand_overs, next) = gather(&self.work, rows, self.settings.claim_batch);
                self.counters.metrics.queued(-(rows.len() as i64));
                self.handle_fresh(&rows, backoff);
                for _ in 0..hand_overs {
                    self.activity.leave(true);
                }
                if let Some(next) = next {
                    self.take(next, backoff);
                }
            }
            Work::Aggregates(aggregates) => {
                // A chain that moved a full batch at some step met a backlog. Its aggregates
                // were all handed over or queued in `waiting`, and the chain drained that,
                // unless it overflowed: then look for heads of any aggregate before waiting
                // for the next hand-over or tick.
                if self.follow_heads(aggregates, backoff) >= self.settings.claim_batch
                    && self.waiting.overflowed()
                {
                    self.drain_due(backoff, self.settings.orphan_after);
                }
                self.activity.leave(true);
            }
            Work::Sweep => self.drain_due(backoff, self.settings.orphan_after),
        }
    }

    /// Handles rows a reader handed over. A batch that fails on a database error is tried again
    /// after a pause (the rows are still fresh), a few times, before they are left to the polls
    /// that pick up orphaned rows.
    fn handle_fresh(&self, rows: &[InboxRow], backoff: &mut Backoff) {
        for _ in 0..FRESH_ATTEMPTS {
            if self.process(Claim::Fresh(rows), backoff).is_some() {
                return;
            }
            if self.halted() {
                return;
            }
        }
    }

    fn halted(&self) -> bool {
        matches!(
            self.halt.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Claims every due row ([`drain_due`](Self::drain_due)) and says what that did.
    fn sweep(&self, backoff: &mut Backoff, orphan_after: Duration) -> Swept {
        let (settled, failed) = (self.settled.get(), self.failed_batches.get());
        self.drain_due(backoff, orphan_after);
        Swept {
            settled: self.settled.get() - settled,
            failed: self.failed_batches.get() > failed,
        }
    }

    /// Claims due rows batch after batch until there are none left (or shutdown begins). In
    /// ordered mode it claims aggregate heads, following each batch's aggregates to their next
    /// heads before looking for more. Pending rows count as orphaned after `orphan_after`.
    fn drain_due(&self, backoff: &mut Backoff, orphan_after: Duration) {
        let settings = &self.settings;
        let limit = settings.claim_batch;
        let dead_processes = self.liveness.dead();
        while !self.stop.load(Ordering::Relaxed) {
            let claim = match settings.ordered {
                true => self.heads(None, orphan_after),
                false => Claim::Due {
                    limit,
                    orphan_after,
                    dead_processes: &dead_processes,
                },
            };
            let Some(settled) = self.process(claim, backoff) else {
                return;
            };
            let full = settled.len() == limit;
            if settings.ordered {
                let _ = self.follow_heads(settled, backoff);
            }
            if !full {
                return;
            }
        }
    }

    /// Claims the heads of `aggregates`, then of the aggregates of the rows it settled, and so
    /// on until none is left: settling a head is what makes the next row of its aggregate a
    /// head, so following them costs one lookup by aggregate per batch instead of a scan of
    /// every due row. A row stored after the lookup is handed over by its reader. Each claim
    /// is topped up to a full batch with aggregates waiting for a free worker.
    /// Returns the largest batch it settled.
    fn follow_heads(&self, aggregates: Vec<Uuid>, backoff: &mut Backoff) -> usize {
        let limit = self.settings.claim_batch;
        let mut aggregates = distinct(aggregates);
        let mut largest = 0;
        loop {
            let room = limit.saturating_sub(aggregates.len());
            self.waiting.take_into(&mut aggregates, room);
            if aggregates.is_empty() || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let heads = self.heads(Some(&aggregates), self.settings.orphan_after);
            match self.process(heads, backoff) {
                Some(settled) => {
                    largest = largest.max(settled.len());
                    aggregates = distinct(settled);
                }
                // Rolled back after a pause: the polls find these heads again.
                None => break,
            }
        }
        largest
    }

    fn heads<'a>(&self, aggregates: Option<&'a [Uuid]>, orphan_after: Duration) -> Claim<'a> {
        Claim::Heads {
            limit: self.settings.claim_batch,
            after_dead_letter: self.settings.after_dead_letter,
            aggregates,
            orphan_after,
        }
    }

    /// Claims and handles one batch; returns the aggregate of each row it settled, or `None`
    /// when it failed (after pausing).
    fn process(&self, claim: Claim<'_>, backoff: &mut Backoff) -> Option<Vec<Uuid>> {
        let mut attempt = Attempt {
            handler: self.handler.as_ref(),
            settings: &self.settings,
            metrics: &self.counters.metrics,
            busy: None,
            in_flight: (&self.in_flight, self.index),
            suspects: &self.suspects,
            entered: None,
        };
        let params = ClaimParams {
            claim,
            clock: self.settings.clock.as_ref(),
            optimistic: self.settings.optimistic_batches && !self.recent_failure.get(),
        };
        // Handler panics are caught per row; this catches the rest (a retry policy, a clock, a
        // store), which roll the batch back, so one bad row cannot end the worker.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.store.process_claimed(&params, &mut attempt)
        }))
        .unwrap_or_else(|panic| {
            tracing::error!(panic = %panic_message(panic.as_ref()), "worker panicked outside the handler; the batch rolled back");
            Err(StoreError::Panicked(panic_message(panic.as_ref())))
        });
        drop(attempt); // the worker is idle again
        match outcome {
            Ok(settled) => {
                backoff.reset();
                self.settled.set(self.settled.get() + settled.len());
                let failed = settled.iter().any(|s| s.verdict != Verdict::Processed);
                self.recent_failure.set(failed);
                if !settled.is_empty() {
                    self.heartbeats.committed();
                }
                // Committed: what is reported now has happened.
                let now = self.settings.clock.now();
                for outcome in &settled {
                    self.record(&outcome.row, &outcome.verdict, now);
                }
                Some(
                    settled
                        .iter()
                        .map(|outcome| outcome.row.event.aggregate_id)
                        .collect(),
                )
            }
            Err(error) => {
                // The batch rolled back: its rows stay due and are claimed again after the pause.
                self.failed_batches.set(self.failed_batches.get() + 1);
                tracing::warn!(%error, sqlstate = error.sqlstate().unwrap_or(""), "worker could not process a batch; backing off");
                let pause = backoff.next_pause();
                let _ = self.halt.recv_timeout(pause);
                None
            }
        }
    }

    fn record(&self, row: &InboxRow, verdict: &Verdict, now: chrono::DateTime<chrono::Utc>) {
        let event = &row.event;
        match verdict {
            Verdict::Processed => {
                self.counters.processed(row, now);
                tracing::debug!(event_id = %event.event_id, event_type = %event.event_type, stream_id = %row.stream_id, "event processed");
            }
            Verdict::Failed(failure) if failure.status == EventStatus::DeadLetter => {
                self.counters.dead_lettered(row);
                let settings = &self.settings;
                announce(
                    &DeadLetter::new(&settings.group, row, failure),
                    settings.on_dead_letter.as_ref(),
                );
            }
            Verdict::Failed(failure) => {
                self.counters.failed(row);
                tracing::warn!(
                    event_id = %event.event_id, event_type = %event.event_type,
                    attempts = failure.retry_count, next_retry_at = ?failure.next_retry_at,
                    error = %failure.error_message, "event handling failed; will retry"
                );
            }
        }
    }
}

/// Runs the user's handler for the store and turns its result into a [`Verdict`].
struct Attempt<'a, S: InboxStore> {
    handler: &'a dyn Handler<S>,
    settings: &'a Settings,
    metrics: &'a InboxMetrics,
    /// Set when the first handler of the batch starts; the worker is busy until it is dropped.
    busy: Option<Busy<'a>>,
    /// Where this worker notes the handler it runs, and its slot there.
    in_flight: (&'a InFlight, usize),
    /// Keeps a suspect's attempt apart from the process's other counted attempts.
    suspects: &'a SuspectGate,
    /// The admission taken at the gate and not yet given back (a suspect's or not), released
    /// on drop if an error or a panic skipped `counted_end`.
    entered: Option<bool>,
}

impl<S: InboxStore> Drop for Attempt<'_, S> {
    fn drop(&mut self) {
        if let Some(suspect) = self.entered.take() {
            self.suspects.leave(suspect);
        }
    }
}

impl<S: InboxStore> RowHandler<S> for Attempt<'_, S> {
    fn handle(&mut self, tx: &mut S::Tx<'_>, row: &InboxRow) -> Verdict {
        let metrics = self.metrics;
        self.busy.get_or_insert_with(|| metrics.busy());
        let started = Instant::now();
        let (in_flight, slot) = self.in_flight;
        in_flight.started(slot, row);
        let span = handler_span(row, &self.settings.group);
        let outcome =
            span.in_scope(|| catch_unwind(AssertUnwindSafe(|| self.handler.handle(tx, row))));
        in_flight.finished(slot);
        self.metrics
            .handler_ran(row.stream.as_deref(), started.elapsed());
        record_outcome(&span, &outcome);
        self.rules().after_handler(row, outcome)
    }

    fn failed_after(&mut self, row: &InboxRow, error: String) -> Verdict {
        self.rules().failure(row, error, false)
    }

    fn admit(&mut self, suspect: bool) -> bool {
        // One admission at a time per claim: `pick` asks once per count.
        if let Some(held) = self.entered.take() {
            self.suspects.leave(held);
        }
        let admitted = self.suspects.try_admit(suspect);
        if admitted {
            self.entered = Some(suspect);
        }
        admitted
    }

    fn counted_end(&mut self) {
        if let Some(suspect) = self.entered.take() {
            self.suspects.leave(suspect);
        }
    }

    /// One more failure with the retry policy's delay, never a dead letter: the attempt about
    /// to run is the row's last chance when this reaches `max_retries`. Due again no sooner
    /// than `orphan_after`, as a pending row: before that the attempt may still be running.
    fn attempt_started(&mut self, row: &InboxRow, now: DateTime<Utc>) -> Failure {
        let failures = row.retry_count.saturating_add(1);
        let orphan_after = chrono::Duration::from_std(self.settings.orphan_after)
            .unwrap_or(MAX_RETRY_DELAY)
            .min(MAX_RETRY_DELAY);
        Failure {
            status: EventStatus::Failed,
            retry_count: failures,
            next_retry_at: Some(now + self.rules().retry_delay(failures).max(orphan_after)),
            error_message: NEVER_FINISHED.to_string(),
            failed_at: now,
        }
    }
}

impl<S: InboxStore> Attempt<'_, S> {
    /// The consumer's decision rules, with its clock and retry policy.
    fn rules(&self) -> Rules<'_> {
        Rules {
            clock: self.settings.clock.as_ref(),
            retry_policy: self.settings.retry_policy.as_ref(),
            jitter: Jitter::Random,
        }
    }
}

/// Adds to `rows` the rows of hand-overs queued behind it in `work`, until it holds `limit`:
/// they queue while every worker is busy, and one transaction for them all costs the database
/// less than one each, which is what lets the workers catch up. Returns the rows, how many
/// hand-overs they came in, and other work taken from the queue on the way.
fn gather(
    work: &Receiver<Work>,
    mut rows: Vec<InboxRow>,
    limit: usize,
) -> (Vec<InboxRow>, usize, Option<Work>) {
    let mut hand_overs = 1;
    while rows.len() < limit {
        match work.try_recv() {
            Ok(Work::Rows(more)) => {
                rows.extend(more);
                hand_overs += 1;
            }
            Ok(other) => return (rows, hand_overs, Some(other)),
            Err(_) => break,
        }
    }
    (rows, hand_overs, None)
}

/// `ids` without repeats, in their first order.
fn distinct(ids: Vec<Uuid>) -> Vec<Uuid> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.into_iter().filter(|id| seen.insert(*id)).collect()
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn rows(n: usize) -> Vec<InboxRow> {
        (0..n)
            .map(|_| InboxRow::pending(Event::new("t", Uuid::now_v7(), serde_json::json!({}))))
            .collect()
    }

    #[test]
    fn queued_hand_overs_join_the_claim_up_to_a_batch() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for n in [3, 4, 5] {
            tx.send(Work::Rows(rows(n))).unwrap();
        }
        let (gathered, hand_overs, next) = gather(&rx, rows(2), 8);
        // 2 + 3 + 4 reached 8: the third queued hand-over waits for the next claim.
        assert_eq!((gathered.len(), hand_overs), (9, 3));
        assert!(next.is_none());
        assert!(matches!(rx.try_recv(), Ok(Work::Rows(left)) if left.len() == 5));
    }

    #[test]
    fn other_work_met_on_the_way_is_returned_not_lost() {
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(Work::Rows(rows(1))).unwrap();
        tx.send(Work::Sweep).unwrap();
        tx.send(Work::Rows(rows(1))).unwrap();
        let (gathered, hand_overs, next) = gather(&rx, rows(1), 64);
        assert_eq!((gathered.len(), hand_overs), (2, 2));
        assert!(matches!(next, Some(Work::Sweep)));
        assert_eq!(rx.len(), 1, "the rows behind the sweep stay queued");
    }
}
