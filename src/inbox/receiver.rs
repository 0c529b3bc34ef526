//! Reader threads: stream → inbox table.
//!
//! A reader reads a batch with the consumer group, stores it in one transaction (new events as
//! pending rows, duplicates skipped, malformed entries quarantined), acknowledges the whole batch
//! only after that commits, and hands the new rows to the workers. On a database error the batch
//! stays unacknowledged and is retried; on a broker error the reader backs off and reconnects.
//! Every `reclaim_interval` it also takes over entries that a dead consumer read but never
//! acknowledged.

use super::settings::Settings;
use super::stats::Counters;
use crate::backoff::Backoff;
use crate::event::Event;
use crate::quarantine::encode_fields;
use crate::store::{InboxStore, MalformedEntry, ReceivedBatch, ReceivedEvent};
use crate::transport::{ReadRequest, ReclaimRequest, StreamEntry, Transport, TransportError};
use crossbeam_channel::Sender;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

pub(crate) struct Reader<S: InboxStore> {
    pub store: Arc<S>,
    pub transport: Arc<dyn Transport>,
    pub settings: Arc<Settings>,
    pub counters: Arc<Counters>,
    pub consumer: String,
    pub work: Sender<Vec<Uuid>>,
    pub stop: Arc<AtomicBool>,
}

impl<S: InboxStore> Reader<S> {
    pub fn run(self) {
        let settings = &self.settings;
        let mut backoff = Backoff::new();
        let mut group_ready = true; // start() created it
                                    // Reclaim at once: entries left by a consumer that died before this one started.
        let mut next_reclaim = Instant::now();
        while !self.stopping() {
            if !group_ready {
                match self
                    .transport
                    .ensure_group(&settings.stream, &settings.group)
                {
                    Ok(()) => {
                        tracing::info!(stream = %settings.stream, group = %settings.group, "consumer group created again");
                        group_ready = true;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot create the consumer group; retrying");
                        backoff.wait(&self.stop);
                        continue;
                    }
                }
            }
            if Instant::now() >= next_reclaim {
                match self.reclaim() {
                    Ok(()) => next_reclaim = Instant::now() + settings.reclaim_interval,
                    Err(error) => {
                        group_ready = self.on_transport_error(error, &mut backoff);
                        continue;
                    }
                }
            }
            let request = ReadRequest {
                stream: &settings.stream,
                group: &settings.group,
                consumer: &self.consumer,
                count: settings.read_batch,
                block: settings.block,
            };
            match self.transport.read_group(&request) {
                Ok(entries) => {
                    backoff.reset();
                    if !entries.is_empty() {
                        self.take(entries);
                    }
                }
                Err(error) => group_ready = self.on_transport_error(error, &mut backoff),
            }
        }
        tracing::debug!(consumer = %self.consumer, "reader stopped");
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

    /// Takes over entries other consumers left unacknowledged for longer than `reclaim_idle`.
    fn reclaim(&self) -> Result<(), TransportError> {
        let settings = &self.settings;
        let mut cursor = "0-0".to_string();
        loop {
            let reclaimed = self.transport.reclaim_stale(&ReclaimRequest {
                stream: &settings.stream,
                group: &settings.group,
                consumer: &self.consumer,
                min_idle: settings.reclaim_idle,
                cursor: &cursor,
                count: settings.read_batch,
            })?;
            if !reclaimed.deleted.is_empty() {
                // Trimmed from the stream before any consumer stored them: nothing is left to keep.
                tracing::error!(
                    stream = %settings.stream, ids = ?reclaimed.deleted,
                    "pending entries were trimmed from the stream before they were stored; their content is lost"
                );
            }
            if !reclaimed.entries.is_empty() {
                tracing::info!(count = reclaimed.entries.len(), consumer = %self.consumer, "took over stale pending entries");
                Counters::add(&self.counters.reclaimed, reclaimed.entries.len());
                self.take(reclaimed.entries);
            }
            if reclaimed.next_cursor == "0-0" || self.stopping() {
                return Ok(());
            }
            cursor = reclaimed.next_cursor;
        }
    }

    /// Stores a batch, acknowledges it once stored, and hands the new rows to the workers.
    fn take(&self, entries: Vec<StreamEntry>) {
        let settings = &self.settings;
        Counters::add(&self.counters.received, entries.len());
        let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
        let mut events = Vec::with_capacity(entries.len());
        let mut malformed = Vec::new();
        for entry in entries {
            match Event::from_entry(&entry) {
                Ok(event) => events.push(ReceivedEvent {
                    row_id: Uuid::now_v7(),
                    stream_id: entry.id,
                    event,
                }),
                Err(reason) => {
                    tracing::warn!(stream = %settings.stream, stream_id = %entry.id, %reason, "malformed entry quarantined");
                    malformed.push(MalformedEntry {
                        id: Uuid::now_v7(),
                        raw_fields: encode_fields(&entry.fields),
                        stream_id: entry.id,
                        reason: reason.to_string(),
                    });
                }
            }
        }

        let mut backoff = Backoff::new();
        let stored = loop {
            let batch = ReceivedBatch {
                stream: &settings.stream,
                events: &events,
                malformed: &malformed,
                received_at: settings.clock.now(),
                max_retries: settings.max_retries,
            };
            match self.store.store_received(&batch) {
                Ok(stored) => break stored,
                Err(error) => {
                    tracing::error!(%error, entries = ids.len(), "cannot store a read batch; it stays unacknowledged and is retried");
                    if !backoff.wait(&self.stop) {
                        // Unacknowledged, so this or another consumer reclaims it later.
                        return;
                    }
                }
            }
        };
        Counters::add(&self.counters.duplicates, stored.duplicates);
        Counters::add(&self.counters.quarantined, stored.quarantined);
        if stored.duplicates > 0 {
            tracing::debug!(
                duplicates = stored.duplicates,
                "skipped events already in the inbox"
            );
        }
        if let Err(error) = self.transport.ack(&settings.stream, &settings.group, &ids) {
            // Stored already: redelivery after reclaim is absorbed as duplicates.
            tracing::warn!(%error, entries = ids.len(), "acknowledging a stored batch failed; it will be reclaimed and deduplicated");
        }
        // Spread the rows over the workers; a full channel makes the reader wait here.
        let chunk = stored
            .inserted
            .len()
            .div_ceil(settings.workers)
            .clamp(1, settings.claim_batch);
        for rows in stored.inserted.chunks(chunk) {
            if self.work.send(rows.to_vec()).is_err() {
                return; // workers halted; the rows stay pending for the next start
            }
        }
    }
}
