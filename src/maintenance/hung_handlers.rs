//! Logs and counts handlers that run past the handler time limit, so a stuck worker is seen
//! without anyone calling [`health()`](crate::inbox::ConsumerHandle::health).
//!
//! Each hang is logged once at error level, naming the worker and the event, when first seen
//! and again when it ends (with how long it ran); the gauge `eventflow_inbox_hung_handlers`
//! says how many are stuck now.

use super::Service;
use crate::inbox::in_flight::InFlight;
use crate::inbox::metrics::HUNG_HANDLERS;
use metrics::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Looks at the workers' handlers a few times per time limit.
pub(crate) struct HungHandlerWatch {
    in_flight: Arc<InFlight>,
    limit: Duration,
    gauge: Gauge,
    /// The hangs already logged: worker to event id.
    reported: HashMap<String, String>,
}

impl HungHandlerWatch {
    pub fn new(in_flight: Arc<InFlight>, limit: Duration, group: &str) -> Self {
        Self {
            in_flight,
            limit,
            gauge: metrics::gauge!(HUNG_HANDLERS, "group" => group.to_string()),
            reported: HashMap::new(),
        }
    }
}

impl Service for HungHandlerWatch {
    fn interval(&self) -> Duration {
        (self.limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }

    fn run_once(&mut self, _stopping: &dyn Fn() -> bool) {
        let hung = self.in_flight.running_longer_than(self.limit);
        self.gauge.set(hung.len() as f64);
        for handler in &hung {
            if self.reported.get(&handler.worker) == Some(&handler.event_id) {
                continue;
            }
            tracing::error!(
                worker = %handler.worker, event_id = %handler.event_id,
                event_type = %handler.event_type, running_for = ?handler.running_for,
                limit = ?self.limit,
                "a handler has run past the handler time limit; the consumer reports itself not live"
            );
            self.reported
                .insert(handler.worker.clone(), handler.event_id.clone());
        }
        self.reported.retain(|worker, event_id| {
            let still = hung
                .iter()
                .any(|h| &h.worker == worker && &h.event_id == event_id);
            if !still {
                tracing::warn!(%worker, %event_id, "the handler past its time limit has returned");
            }
            still
        });
    }
}
