//! Refreshes the parked-aggregate gauges of an ordered consumer: how many aggregates a dead
//! letter holds back, and how long the oldest event waiting behind one has waited. A query per
//! round, not per event, so the gauges cost nothing on the hot path.

use super::Service;
use crate::clock::Clock;
use crate::inbox::metrics::ParkedGauges;
use crate::store::InboxStore;
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct ParkedGaugeRefresh<S: InboxStore> {
    pub store: Arc<S>,
    pub clock: Arc<dyn Clock>,
    pub gauges: ParkedGauges,
    pub interval: Duration,
}

impl<S: InboxStore> Service for ParkedGaugeRefresh<S> {
    fn interval(&self) -> Duration {
        self.interval
    }

    fn run_once(&mut self, _stopping: &dyn Fn() -> bool) {
        match self.store.parked_summary() {
            Ok(summary) => self.gauges.set(&summary, self.clock.now()),
            // The gauges keep their last values; the next round tries again.
            Err(error) => tracing::warn!(%error, "cannot count parked aggregates"),
        }
    }
}
