//! Which handler each worker is running, and since when: how a handler stuck past the handler
//! time limit becomes visible, in [`Health`](super::Health) and in the log.
//!
//! A worker notes the row before it calls the handler and clears the note after; both are a
//! store to an atomic and a short uncontended lock, next to nothing beside a handler's
//! transaction. Times are on the monotonic clock, so a wall-clock jump cannot make a handler
//! look stuck.

use crate::event::InboxRow;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A handler that has been running for longer than the handler time limit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HungHandler {
    /// The worker thread's name (`eventflow-worker-<n>`).
    pub worker: String,
    /// The event the handler is running for.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// How long the handler has been running.
    pub running_for: Duration,
}

/// One slot per worker.
pub(crate) struct InFlight {
    origin: Instant,
    slots: Vec<Slot>,
}

struct Slot {
    worker: String,
    /// Nanoseconds after `origin` at which the running handler started, plus one; zero when
    /// the worker runs none.
    since: AtomicU64,
    row: Mutex<(String, String)>,
}

impl InFlight {
    /// Slots for workers named `names`, in worker order.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            origin: Instant::now(),
            slots: names
                .into_iter()
                .map(|worker| Slot {
                    worker,
                    since: AtomicU64::new(0),
                    row: Mutex::new((String::new(), String::new())),
                })
                .collect(),
        }
    }

    /// Worker `worker` starts the handler for `row`.
    pub fn started(&self, worker: usize, row: &InboxRow) {
        let Some(slot) = self.slots.get(worker) else {
            return;
        };
        {
            let mut noted = slot.row.lock();
            noted.0.clone_from(&row.event.event_id);
            noted.1.clone_from(&row.event.event_type);
        }
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        slot.since.store(nanos + 1, Ordering::Release);
    }

    /// Worker `worker`'s handler returned (or panicked).
    pub fn finished(&self, worker: usize) {
        if let Some(slot) = self.slots.get(worker) {
            slot.since.store(0, Ordering::Release);
        }
    }

    /// The handlers running for longer than `limit`, longest first.
    pub fn running_longer_than(&self, limit: Duration) -> Vec<HungHandler> {
        let now = self.origin.elapsed();
        let mut hung: Vec<HungHandler> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let since = slot.since.load(Ordering::Acquire);
                if since == 0 {
                    return None;
                }
                let running_for = now.saturating_sub(Duration::from_nanos(since - 1));
                if running_for <= limit {
                    return None;
                }
                let (event_id, event_type) = slot.row.lock().clone();
                Some(HungHandler {
                    worker: slot.worker.clone(),
                    event_id,
                    event_type,
                    running_for,
                })
            })
            .collect();
        hung.sort_by_key(|handler| std::cmp::Reverse(handler.running_for));
        hung
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::store::ReceivedEvent;

    fn row(event_id: &str) -> InboxRow {
        let mut event = Event::new("OrderPlaced", uuid::Uuid::new_v4(), serde_json::json!({}));
        event.event_id = event_id.to_string();
        let received = ReceivedEvent {
            row_id: uuid::Uuid::new_v4(),
            stream_id: "1-0".into(),
            event,
        };
        received.into_pending_row("orders", chrono::Utc::now(), 3)
    }

    #[test]
    fn only_a_handler_running_past_the_limit_is_reported() {
        let in_flight = InFlight::new(["w-0".to_string(), "w-1".to_string()]);
        in_flight.started(0, &row("e-stuck"));
        in_flight.started(1, &row("e-quick"));
        in_flight.finished(1);
        std::thread::sleep(Duration::from_millis(20));

        assert_eq!(
            in_flight.running_longer_than(Duration::from_secs(60)),
            vec![]
        );
        let hung = in_flight.running_longer_than(Duration::from_millis(10));
        assert_eq!(hung.len(), 1, "{hung:?}");
        assert_eq!(hung[0].worker, "w-0");
        assert_eq!(hung[0].event_id, "e-stuck");
        assert_eq!(hung[0].event_type, "OrderPlaced");
        assert!(hung[0].running_for >= Duration::from_millis(20));

        in_flight.finished(0);
        assert_eq!(in_flight.running_longer_than(Duration::ZERO), vec![]);
    }
}
