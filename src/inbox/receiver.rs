//! Reader threads: stream → inbox table.
//!
//! A reader reads a batch with the consumer group, stores it in one transaction (new events as
//! pending rows, duplicates skipped, malformed entries quarantined), hands the new rows to the
//! workers and acknowledges the whole batch, both only after that commits. On a database error
//! the batch stays unacknowledged and is retried; on a broker error the reader backs off and
//! reconnects.
//! Every `reclaim_interval` it also takes over entries that a dead consumer read but never
//! acknowledged. A consumer group found missing is created again after the newest entry the
//! inbox has stored from the stream, so the stream's history is not handled again.
//!
//! A consumer runs `readers` readers per stream. In ordered mode a reader stores a batch only
//! once the group has no entry before it pending (read by some consumer, not yet stored and
//! acknowledged), so each stream is stored in its own order whatever the number of readers
//! and processes; entries a consumer has held past `reclaim_idle` are taken over and stored
//! first. It then hands the aggregates it stored to a worker waiting for work, which claims
//! their heads; when none is free they wait in memory for busy workers, which follow the
//! aggregates they settle and top their claims up from there.
//!
//! Input is bounded: an entry over `max_entry_bytes` is quarantined with only its size, names
//! and a prefix of its values (see [`crate::quarantine`]); a read batch is stored in chunks of
//! at most `max_batch_bytes`, and the next read's `COUNT` shrinks to what fits that many bytes
//! at the last batch's average entry size (Redis cannot be asked for bytes).

use super::health::Heartbeats;
use super::idle::Activity;
use super::liveness::Liveness;
use super::settings::Settings;
use super::stats::Counters;
use super::waiting_aggregates::WaitingAggregates;
use super::worker::{panic_message, Work};
use crate::backoff::Backoff;
use crate::event::InboxRow;
use crate::quarantine::{encode_fields, triage};
use crate::store::{
    printable, InboxStore, MalformedEntry, ReceivedBatch, ReceivedEvent, StoreError, Stored,
};
use crate::transport::{
    parse_entry_id, ReadRequest, ReclaimRequest, StreamEntry, Transport, TransportError,
};
use chrono::{DateTime, Utc};
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Condvar, Mutex};
use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The longest pause between two looks at whether earlier entries are stored yet (ordered
/// mode): another reader's batch is usually stored within a few milliseconds, and each look is
/// one cheap `XPENDING`, so a waiting reader looks often rather than add latency.
const MAX_ORDER_PAUSE: Duration = Duration::from_millis(5);

pub(crate) struct Reader<S: InboxStore> {
    pub store: Arc<S>,
    pub transport: Arc<dyn Transport>,
    pub settings: Arc<Settings>,
    pub counters: Arc<Counters>,
    pub heartbeats: Arc<Heartbeats>,
    pub stream: String,
    pub consumer: String,
    pub work: Sender<Work>,
    pub stop: Arc<AtomicBool>,
    /// Told when a batch is being stored and when a hand-over is queued, for
    /// `ConsumerHandle::wait_idle`.
    pub activity: Arc<Activity>,
    /// Rung by each of this consumer's readers once a batch is stored and acknowledged, so a
    /// reader waiting for earlier entries (ordered mode) looks again at once rather than after
    /// its pause; entries held by other processes are still seen on the pause.
    pub stored: Arc<StoredSignal>,
    /// This process's number, recorded on the rows it stores.
    pub liveness: Arc<Liveness>,
    /// Ordered mode: where the aggregates go that no worker was free to take.
    pub waiting: Arc<WaitingAggregates>,
    /// The `COUNT` of the next read or reclaim: `read_batch`, lowered after large entries so
    /// that a batch holds about `max_batch_bytes` (see [`next_read_count`]).
    pub read_count: Cell<usize>,
}

impl<S: InboxStore> Reader<S> {
    pub fn run(self) {
        let mut backoff = Backoff::new();
        // start() created the group.
        let mut group_ready = true;
        // Reclaim at once: entries left by a consumer that died before this one started.
        let mut next_reclaim = Instant::now();
        while !self.stopping() {
            // A panic in a clock, a store or a transport must not end the reader silently; what
            // it was storing stays unacknowledged and is read again later.
            let step = catch_unwind(AssertUnwindSafe(|| {
                self.step(&mut group_ready, &mut next_reclaim, &mut backoff)
            }));
            if let Err(panic) = step {
                tracing::error!(panic = %panic_message(panic.as_ref()), consumer = %self.consumer, "reader panicked; going on after a pause");
                backoff.wait(&self.stop);
            }
        }
        tracing::debug!(consumer = %self.consumer, "reader stopped");
    }

    /// One turn of the loop: recreate the group if lost, reclaim when due, read and store a batch.
    fn step(&self, group_ready: &mut bool, next_reclaim: &mut Instant, backoff: &mut Backoff) {
        let settings = &self.settings;
        if !*group_ready {
            // After the newest entry the inbox has stored, not from the start: the entries
            // before it are stored (or were, and retention deleted them), and reading them
            // again would handle again those whose rows are gone.
            let after = match self.store.newest_stream_id(&self.stream) {
                Ok(after) => after,
                Err(error) => {
                    tracing::warn!(%error, stream = %self.stream, "cannot find the newest stored entry to create the consumer group after; retrying");
                    backoff.wait(&self.stop);
                    return;
                }
            };
            let after = after.as_deref().unwrap_or("0");
            match self
                .transport
                .create_group(&self.stream, &settings.group, after)
            {
                Ok(()) => {
                    tracing::info!(stream = %self.stream, group = %settings.group, after, "consumer group created again, after the newest stored entry");
                    *group_ready = true;
                    // Wakes a `wait_idle` that found the group missing.
                    drop(self.activity.busy());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot create the consumer group; retrying");
                    backoff.wait(&self.stop);
                    return;
                }
            }
        }
        if Instant::now() >= *next_reclaim {
            // A failed reclaim is tried again next interval; reading goes on meanwhile.
            *next_reclaim = Instant::now() + settings.reclaim_interval;
            let reclaimed = self.reclaim(|entries| {
                let _busy = self.activity.busy();
                self.take(entries, true)
            });
            if let Err(error) = reclaimed {
                tracing::warn!(%error, "reclaiming stale entries failed; trying again later");
                if let TransportError::NoGroup { .. } = error {
                    *group_ready = false;
                    return;
                }
            }
        }
        let request = ReadRequest {
            stream: &self.stream,
            group: &settings.group,
            consumer: &self.consumer,
            count: self.read_count.get(),
            block: settings.block,
        };
        match self.transport.read_group(&request) {
            Ok(mut entries) => {
                self.heartbeats.read();
                backoff.reset();
                if !entries.is_empty() {
                    self.read_more(&request, &mut entries);
                    let _busy = self.activity.busy();
                    self.take(entries, true);
                }
            }
            Err(error) => *group_ready = self.on_transport_error(error, backoff),
        }
    }

    /// Adds to a batch the entries that arrived while its read was answered. A blocking read
    /// returns as soon as the first entry lands, though the producer may be writing more right
    /// behind it (a pipelined batch, a burst): without this, those wait until the first is
    /// stored, a transaction later. One more read, which does not block, costs a round trip to
    /// Redis only when the first came back short of its count. If it fails, the batch goes on
    /// as it is; what it missed is read next time.
    ///
    /// Not in ordered mode: there a batch must be a run of consecutive entries, since it is
    /// stored once nothing before its first entry is pending (see `wait_for_earlier`), and a
    /// sibling reader may have been handed the entries between the two reads.
    fn read_more(&self, request: &ReadRequest<'_>, entries: &mut Vec<StreamEntry>) {
        if self.settings.ordered || request.block.is_zero() || entries.len() >= request.count {
            return;
        }
        let more = ReadRequest {
            count: request.count - entries.len(),
            block: Duration::ZERO,
            ..*request
        };
        match self.transport.read_group(&more) {
            Ok(more) => entries.extend(more),
            Err(error) => {
                tracing::debug!(%error, consumer = %self.consumer, "a read for more entries failed; storing the batch as it is")
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Logs a broker error and waits; returns whether the group is still there.
    fn on_transport_error(&self, error: TransportError, backoff: &mut Backoff) -> bool {
        if let TransportError::NoGroup { .. } = error {
            tracing::warn!(%error, "consumer group is gone (broker restarted?); creating it again");
            return false;
        }
        tracing::warn!(%error, consumer = %self.consumer, "stream read failed; backing off");
        backoff.wait(&self.stop);
        true
    }

    /// Takes over entries other consumers left unacknowledged for longer than `reclaim_idle`,
    /// passing them to `take` a page at a time, in stream order.
    fn reclaim(&self, mut take: impl FnMut(Vec<StreamEntry>)) -> Result<(), TransportError> {
        let settings = &self.settings;
        let mut cursor = "0-0".to_string();
        loop {
            let reclaimed = self.transport.reclaim_stale(&ReclaimRequest {
                stream: &self.stream,
                group: &settings.group,
                consumer: &self.consumer,
                min_idle: settings.reclaim_idle,
                cursor: &cursor,
                count: self.read_count.get(),
            })?;
            if !reclaimed.deleted.is_empty() {
                // Trimmed from the stream before any consumer stored them: nothing is left to keep.
                tracing::error!(
                    stream = %self.stream, ids = ?reclaimed.deleted,
                    "pending entries were trimmed from the stream before they were stored; their content is lost"
                );
            }
            if !reclaimed.entries.is_empty() {
                tracing::info!(count = reclaimed.entries.len(), consumer = %self.consumer, "took over stale pending entries");
                self.counters
                    .reclaimed(&self.stream, reclaimed.entries.len());
                take(reclaimed.entries);
            }
            if reclaimed.next_cursor == "0-0" || self.stopping() {
                return Ok(());
            }
            cursor = reclaimed.next_cursor;
        }
    }

    /// Stores a batch, acknowledges it once stored, and hands the new rows to the workers. In
    /// ordered mode it first waits for the earlier entries of the stream to be stored, taking
    /// over stale ones when `may_reclaim`. The batch is stored in chunks of at most
    /// `max_batch_bytes`, in stream order, and sets the next read's count.
    fn take(&self, entries: Vec<StreamEntry>, may_reclaim: bool) {
        let settings = &self.settings;
        let sizes: Vec<usize> = entries.iter().map(StreamEntry::size).collect();
        self.read_count.set(next_read_count(
            &sizes,
            settings.max_batch_bytes,
            settings.read_batch,
        ));
        let mut later = Vec::new();
        if settings.ordered {
            match self.wait_for_earlier(&entries, may_reclaim) {
                Some(taken_over) => later = taken_over,
                // Unacknowledged, so this or another consumer reclaims the batch later.
                None => return,
            }
        }
        let mut entries = entries.into_iter();
        for chunk in chunk_lengths(&sizes, settings.max_batch_bytes) {
            if self.stopping() {
                // The rest stays unacknowledged, and is read again after a reclaim.
                return;
            }
            self.store_and_ack(entries.by_ref().take(chunk).collect());
        }
        if !later.is_empty() {
            self.take(later, true);
        }
    }

    /// Waits until the group has no entry before `entries` pending: every earlier entry of
    /// the stream is stored (and acknowledged). Entries held past `reclaim_idle` (their
    /// consumer most likely died) are taken over, when `may_reclaim`: those before the batch
    /// are stored first; those after it are returned, to be stored after it. `None` when
    /// shutdown began.
    fn wait_for_earlier(
        &self,
        entries: &[StreamEntry],
        may_reclaim: bool,
    ) -> Option<Vec<StreamEntry>> {
        let settings = &self.settings;
        let first = entries
            .iter()
            .min_by_key(|entry| parse_entry_id(&entry.id))?
            .id
            .clone();
        let mut later = Vec::new();
        let mut pause = Duration::from_micros(500);
        let mut backoff = Backoff::new();
        loop {
            if self.stopping() {
                return None;
            }
            // Taken before looking, so a batch acknowledged in between still wakes the wait.
            let rung = self.stored.rung();
            match self
                .transport
                .oldest_pending_before(&self.stream, &settings.group, &first)
            {
                Ok(None) => return Some(later),
                Ok(Some(earlier)) if may_reclaim && earlier.idle >= settings.reclaim_idle => {
                    tracing::info!(stream = %self.stream, held_by = %earlier.consumer, id = %earlier.id, "taking over stale entries that come before a batch");
                    let before = parse_entry_id(&first);
                    let reclaimed = self.reclaim(|taken: Vec<StreamEntry>| {
                        let (earlier, after): (Vec<_>, Vec<_>) = taken
                            .into_iter()
                            .partition(|entry| parse_entry_id(&entry.id) < before);
                        if !earlier.is_empty() {
                            self.take(earlier, false);
                        }
                        later.extend(after);
                    });
                    if let Err(error) = reclaimed {
                        tracing::warn!(%error, "taking over stale entries failed; retrying");
                        backoff.wait(&self.stop);
                    }
                }
                Ok(Some(_)) => {
                    self.stored.wait_after(rung, pause);
                    pause = (pause * 2).min(MAX_ORDER_PAUSE);
                }
                Err(error) => {
                    tracing::warn!(%error, stream = %self.stream, "cannot see which earlier entries are pending; retrying");
                    if !backoff.wait(&self.stop) {
                        return None;
                    }
                }
            }
        }
    }

    /// Stores a batch, hands the new rows to the workers and acknowledges the batch once stored
    /// (in ordered mode, acknowledges it first: a sibling reader waits for that).
    fn store_and_ack(&self, entries: Vec<StreamEntry>) {
        let settings = &self.settings;
        self.counters.received(&self.stream, entries.len());
        let mut events = Vec::with_capacity(entries.len());
        let mut raw_fields = Vec::with_capacity(entries.len());
        let mut malformed = Vec::new();
        for entry in entries {
            match triage(&entry, settings.max_entry_bytes) {
                Ok(event) => {
                    raw_fields.push(entry.fields);
                    events.push(ReceivedEvent {
                        row_id: Uuid::now_v7(),
                        stream_id: entry.id,
                        event,
                    });
                }
                Err(record) => {
                    tracing::warn!(stream = %self.stream, stream_id = %entry.id, size = entry.size(), reason = %record.reason, "malformed entry quarantined");
                    malformed.push(record);
                }
            }
        }

        let received_at = settings.clock.now();
        let (stored, ids) = match self.store_batch(&events, &malformed, received_at) {
            Attempt::Stored(stored) => {
                let ids = events
                    .iter()
                    .map(|e| &e.stream_id)
                    .chain(malformed.iter().map(|m| &m.stream_id));
                (stored, ids.cloned().collect())
            }
            Attempt::Refused(error) => {
                tracing::warn!(%error, "the database refused part of a read batch; storing its entries one by one");
                match self.store_each(&events, &raw_fields, malformed, received_at) {
                    Some(outcome) => outcome,
                    None => return,
                }
            }
            // Unacknowledged, so this or another consumer reclaims the batch later.
            Attempt::Stopped => return,
        };
        self.counters.duplicates(&self.stream, stored.duplicates);
        self.counters.quarantined(&self.stream, stored.quarantined);
        if stored.duplicates > 0 {
            tracing::debug!(
                duplicates = stored.duplicates,
                "skipped events already in the inbox"
            );
        }
        if settings.ordered {
            self.ack(&ids);
            // A sibling reader may be waiting for this batch (see `wait_for_earlier`).
            self.stored.ring();
            // Idle workers claim the heads of the aggregates just stored (these rows, or earlier
            // ones still open). Busy workers are following the aggregates they settle, so when
            // the channel is full the rest wait for them in `waiting`, from which they top up
            // each claim: a backlog is worked through in full batches of distinct aggregates
            // instead of many small ones fighting over the same heads.
            let aggregates = stored_aggregates(&events, &stored.inserted);
            for (index, chunk) in aggregates.chunks(settings.claim_batch).enumerate() {
                // Counted before the send, so a worker never ends a hand-over not yet begun.
                self.activity.enter();
                if self
                    .work
                    .try_send(Work::Aggregates(chunk.to_vec()))
                    .is_err()
                {
                    self.activity.leave(false);
                    self.waiting
                        .add(&aggregates[index * settings.claim_batch..]);
                    break;
                }
            }
            return;
        }
        // Spread the rows over the workers; a full channel makes the reader wait here.
        let fresh = fresh_rows(
            events,
            &self.stream,
            &stored.inserted,
            received_at,
            settings.max_retries,
        );
        let chunk = fresh
            .len()
            .div_ceil(settings.workers)
            .clamp(1, settings.claim_batch);
        // Acknowledged after the hand-over, so the rows' handlers need not wait for Redis: they
        // are committed, and an entry a crash leaves unacknowledged is read again and absorbed
        // as a duplicate. But before waiting for busy workers: an entry left pending that long
        // (slow handlers) would be reclaimed by other consumers and stored again for nothing.
        let mut acknowledged = false;
        for rows in fresh.chunks(chunk) {
            // Counted before the send, so a worker never takes rows not yet counted.
            self.counters.metrics.queued(rows.len() as i64);
            self.activity.enter();
            let sent = match self.work.try_send(Work::Rows(rows.to_vec())) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(work)) => {
                    if !acknowledged {
                        self.ack(&ids);
                        acknowledged = true;
                    }
                    self.work.send(work).map_err(drop)
                }
                Err(TrySendError::Disconnected(_)) => Err(()),
            };
            if sent.is_err() {
                self.counters.metrics.queued(-(rows.len() as i64));
                self.activity.leave(false);
                break; // workers halted; the rows stay pending for the next start
            }
        }
        if !acknowledged {
            self.ack(&ids);
        }
    }

    /// Acknowledges stored entries.
    fn ack(&self, ids: &[String]) {
        if let Err(error) = self.transport.ack(&self.stream, &self.settings.group, ids) {
            // Stored already: redelivery after reclaim is absorbed as duplicates.
            tracing::warn!(%error, entries = ids.len(), "acknowledging a stored batch failed; it will be reclaimed and deduplicated");
        }
    }

    /// Stores events and quarantined entries in one transaction, retrying (with backoff) while
    /// the database is unavailable or out of order (a lock or statement timeout, a missing
    /// table, a permission error: see [`StoreError::is_refusal`]); a refusal of the data itself
    /// is returned at once, another refusal after the third attempt.
    fn store_batch(
        &self,
        events: &[ReceivedEvent],
        malformed: &[MalformedEntry],
        received_at: DateTime<Utc>,
    ) -> Attempt {
        let mut backoff = Backoff::new();
        let mut refusals = 0;
        loop {
            let batch = ReceivedBatch {
                stream: &self.stream,
                ordered: self.settings.ordered,
                events,
                malformed,
                received_at,
                max_retries: self.settings.max_retries,
                stored_by: self.liveness.process(),
            };
            match self.store.store_received(&batch) {
                Ok(stored) => return Attempt::Stored(stored),
                Err(error) if error.is_data_error() => return Attempt::Refused(error),
                // Refused for another reason (a batch too large for the server, say) more than
                // once: the batch itself may be the problem, so it is split.
                Err(error) if error.is_refusal() && refusals >= 2 => {
                    return Attempt::Refused(error)
                }
                Err(error) => {
                    refusals += usize::from(error.is_refusal());
                    // An outage (a lock or statement timeout, a missing table, a permission
                    // error): nothing is quarantined and nothing acknowledged.
                    tracing::warn!(%error, sqlstate = error.sqlstate().unwrap_or(""), entries = events.len() + malformed.len(), "cannot store a read batch; it stays unacknowledged and is retried");
                    if !backoff.wait(&self.stop) {
                        return Attempt::Stopped;
                    }
                }
            }
        }
    }

    /// Stores a batch entry by entry, so that an entry the database refuses (a timestamp out of
    /// its range, say) is quarantined with the database's reason instead of holding back the
    /// rest. Returns what was stored and the ids to acknowledge; `None` if shutdown began.
    fn store_each(
        &self,
        events: &[ReceivedEvent],
        raw_fields: &[Vec<(Vec<u8>, Vec<u8>)>],
        malformed: Vec<MalformedEntry>,
        received_at: DateTime<Utc>,
    ) -> Option<(Stored, Vec<String>)> {
        let mut total = Stored::default();
        let mut ids = Vec::new();
        let mut keep = |stored: Stored, stream_id: &str| {
            total.inserted.extend(stored.inserted);
            total.duplicates += stored.duplicates;
            total.quarantined += stored.quarantined;
            ids.push(stream_id.to_string());
        };
        let mut to_quarantine = malformed;
        for (event, fields) in events.iter().zip(raw_fields) {
            match self.store_batch(std::slice::from_ref(event), &[], received_at) {
                Attempt::Stored(stored) => keep(stored, &event.stream_id),
                Attempt::Refused(error) => {
                    let reason = format!("refused by the database: {error}");
                    tracing::warn!(stream_id = %event.stream_id, %reason, "entry quarantined");
                    to_quarantine.push(quarantined(&event.stream_id, fields, reason));
                }
                Attempt::Stopped => return None,
            }
        }
        for entry in to_quarantine {
            match self.store_batch(&[], std::slice::from_ref(&entry), received_at) {
                Attempt::Stored(stored) => keep(stored, &entry.stream_id),
                Attempt::Refused(error) => {
                    // Left unacknowledged: reclaimed and tried again later, never dropped.
                    tracing::error!(stream_id = %entry.stream_id, %error, "cannot quarantine an entry; it stays pending in the stream");
                }
                Attempt::Stopped => return None,
            }
        }
        Some((total, ids))
    }
}

/// What became of an attempt to store entries.
enum Attempt {
    Stored(Stored),
    /// The database refused the data; retrying the same statement cannot succeed.
    Refused(StoreError),
    Stopped,
}

/// The aggregates of the rows just inserted, each once, in storing order.
fn stored_aggregates(events: &[ReceivedEvent], inserted: &[Uuid]) -> Vec<Uuid> {
    let inserted: HashSet<&Uuid> = inserted.iter().collect();
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|received| inserted.contains(&received.row_id))
        .map(|received| received.event.aggregate_id)
        .filter(|aggregate| seen.insert(*aggregate))
        .collect()
}

/// The rows just inserted, as they now stand in the inbox, for the workers.
fn fresh_rows(
    events: Vec<ReceivedEvent>,
    stream: &str,
    inserted: &[Uuid],
    received_at: DateTime<Utc>,
    max_retries: i32,
) -> Vec<InboxRow> {
    let inserted: HashSet<&Uuid> = inserted.iter().collect();
    events
        .into_iter()
        .filter(|received| inserted.contains(&received.row_id))
        .map(|received| received.into_pending_row(stream, received_at, max_retries))
        .collect()
}

/// The `COUNT` for the next read after a batch of entries of `sizes` bytes: as many entries of
/// the batch's average size as fit `max_batch_bytes`, at least 1 and at most `read_batch`. An
/// empty batch says nothing of sizes, so the count goes back to `read_batch`.
fn next_read_count(sizes: &[usize], max_batch_bytes: usize, read_batch: usize) -> usize {
    if sizes.is_empty() {
        return read_batch;
    }
    let total = sizes.iter().copied().fold(0, usize::saturating_add);
    let average = (total / sizes.len()).max(1);
    (max_batch_bytes / average).clamp(1, read_batch)
}

/// How many entries of `sizes` go in each chunk, in order, so that no chunk holds more than
/// `max_bytes` unless it is a single entry larger than that.
fn chunk_lengths(sizes: &[usize], max_bytes: usize) -> Vec<usize> {
    let mut chunks = Vec::new();
    let (mut count, mut bytes) = (0usize, 0usize);
    for &size in sizes {
        if count > 0 && bytes.saturating_add(size) > max_bytes {
            chunks.push(count);
            (count, bytes) = (0, 0);
        }
        count += 1;
        bytes = bytes.saturating_add(size);
    }
    if count > 0 {
        chunks.push(count);
    }
    chunks
}

fn quarantined(stream_id: &str, fields: &[(Vec<u8>, Vec<u8>)], reason: String) -> MalformedEntry {
    MalformedEntry {
        id: Uuid::now_v7(),
        stream_id: stream_id.to_string(),
        raw_fields: encode_fields(fields),
        reason: printable(&reason),
    }
}

/// How a consumer's readers tell each other a batch was stored and acknowledged: a counter
/// that only grows, and a condition variable to wait for it to move.
#[derive(Default)]
pub(crate) struct StoredSignal {
    rings: Mutex<u64>,
    moved: Condvar,
}

impl StoredSignal {
    /// How often it has rung so far.
    pub fn rung(&self) -> u64 {
        *self.rings.lock()
    }

    pub fn ring(&self) {
        *self.rings.lock() += 1;
        self.moved.notify_all();
    }

    /// Waits until it has rung more than `rung` times, or `timeout` has passed.
    pub fn wait_after(&self, rung: u64, timeout: Duration) {
        let mut rings = self.rings.lock();
        if *rings == rung {
            let _ = self.moved.wait_for(&mut rings, timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader waiting for earlier entries wakes when another reader of its consumer rings,
    /// long before its pause ends; a ring that came before the wait began is not missed.
    #[test]
    fn a_waiting_reader_wakes_when_another_stores_a_batch() {
        let signal = Arc::new(StoredSignal::default());
        let long = Duration::from_secs(60);
        let rung = signal.rung();
        let waiter = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                signal.wait_after(rung, long);
                started.elapsed()
            })
        };
        signal.ring();
        assert!(waiter.join().unwrap() < long, "woken by the ring");
        let started = Instant::now();
        signal.wait_after(rung, long);
        assert!(started.elapsed() < long, "a ring before the wait counts");
        assert_eq!(signal.rung(), rung + 1);
    }

    #[test]
    fn the_next_read_count_fits_the_batch_bytes_at_the_last_average_size() {
        const MIB: usize = 1024 * 1024;
        // 100 entries of 1 MiB: 16 MiB holds 16 of them.
        assert_eq!(next_read_count(&[MIB; 100], 16 * MIB, 100), 16);
        // Small entries: the count stays at read_batch.
        assert_eq!(next_read_count(&[200; 100], 16 * MIB, 100), 100);
        // Entries larger than the whole budget: one at a time.
        assert_eq!(next_read_count(&[64 * MIB; 2], 16 * MIB, 100), 1);
        // Nothing read: back to read_batch.
        assert_eq!(next_read_count(&[], 16 * MIB, 100), 100);
        assert_eq!(next_read_count(&[0, 0], 16, 100), 16);
    }

    #[test]
    fn chunks_hold_at_most_the_batch_bytes_unless_one_entry_is_larger() {
        assert_eq!(chunk_lengths(&[4, 4, 4, 4, 4], 10), [2, 2, 1]);
        assert_eq!(chunk_lengths(&[30, 1, 1, 30, 2], 10), [1, 2, 1, 1]);
        assert_eq!(chunk_lengths(&[10, 10], 10), [1, 1]);
        assert_eq!(chunk_lengths(&[], 10), Vec::<usize>::new());
        let sizes = [3, 9, 2, 2, 2, 11, 1];
        let chunks = chunk_lengths(&sizes, 10);
        assert_eq!(chunks.iter().sum::<usize>(), sizes.len());
        let mut rest = &sizes[..];
        for length in chunks {
            let (chunk, after) = rest.split_at(length);
            assert!(
                length == 1 || chunk.iter().sum::<usize>() <= 10,
                "{chunk:?}"
            );
            rest = after;
        }
    }
}
