//! Trims the streams a relay publishes to: entries older than the configured age that every
//! consumer group has read and acknowledged. Entries a group has not read, or read and not
//! acknowledged, are never trimmed.

use super::Service;
use crate::clock::Clock;
use crate::outbox::Counters;
use crate::transport::{Transport, TransportError};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct StreamTrim {
    pub transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
    /// Entries younger than this stay even when consumed.
    pub keep: Duration,
    pub interval: Duration,
    /// Streams published to so far.
    pub streams: Arc<Mutex<BTreeSet<String>>>,
    /// Where the relay counts what went.
    pub counters: Arc<Counters>,
}

impl StreamTrim {
    fn trim_all(&self) -> Result<u64, TransportError> {
        // Stream ids begin with the broker's clock in milliseconds.
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let cutoff = self
            .clock
            .now()
            .checked_sub_signed(keep)
            .map_or(0, |at| at.timestamp_millis().max(0));
        let floor = format!("{cutoff}-0");
        let streams: Vec<String> = self.streams.lock().iter().cloned().collect();
        let mut total = 0;
        for stream in streams {
            let trimmed = self.transport.trim_consumed(&stream, &floor)?;
            self.counters.trimmed(trimmed);
            total += trimmed;
        }
        Ok(total)
    }
}

impl Service for StreamTrim {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn run_once(&mut self, _stopping: &dyn Fn() -> bool) {
        match self.trim_all() {
            Ok(0) => {}
            Ok(trimmed) => tracing::debug!(trimmed, "trimmed consumed stream entries"),
            Err(error) => tracing::warn!(%error, "stream trimming failed; trying again next round"),
        }
    }
}
