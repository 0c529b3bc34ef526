//! Trims the streams a relay publishes to: entries older than the configured age that every
//! consumer group has read and acknowledged. Entries a group has not read, or read and not
//! acknowledged, are never trimmed.

use crate::clock::Clock;
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
    /// Streams published to so far.
    pub streams: Arc<Mutex<BTreeSet<String>>>,
}

impl StreamTrim {
    /// Trims every stream published to; returns how many entries went.
    pub fn run_once(&self) -> Result<u64, TransportError> {
        // Stream ids begin with the broker's clock in milliseconds.
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let cutoff = self
            .clock
            .now()
            .checked_sub_signed(keep)
            .map_or(0, |at| at.timestamp_millis().max(0));
        let floor = format!("{cutoff}-0");
        let streams: Vec<String> = self.streams.lock().iter().cloned().collect();
        let mut trimmed = 0;
        for stream in streams {
            trimmed += self.transport.trim_consumed(&stream, &floor)?;
        }
        Ok(trimmed)
    }
}
