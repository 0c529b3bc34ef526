//! Handler routing by event type: [`Router`] runs the handler registered for each event's
//! `event_type`, and decides by [`UnknownEvents`] what happens to a type with none.

use super::consumer::Handler;
use super::metrics::{LABEL_EVENT_TYPE, UNHANDLED};
use crate::event::InboxRow;
use crate::handler::{HandlerError, HandlerResult};
use crate::store::InboxStore;
use serde::de::DeserializeOwned;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt;

/// What a [`Router`] does with an event whose type has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownEvents {
    /// Dead-letter the event at once, with the reason `no handler for event type X`, so an
    /// event nobody handles is never lost silently: it waits in the inbox, where it can be
    /// requeued once a handler exists. The default.
    #[default]
    DeadLetter,
    /// Mark the event processed without doing anything, log it at debug level, and count it in
    /// the `eventflow_inbox_unhandled_total` counter (see [`super::metrics::UNHANDLED`]). For
    /// consumers that read a shared stream and want only some of its event types.
    MarkProcessed,
}

/// A [`Handler`] that picks the handler registered for each event's `event_type`.
///
/// Register a plain handler with [`on`](Self::on), or a typed one with
/// [`on_typed`](Self::on_typed), whose payload arrives deserialized with serde (a payload that
/// does not deserialize is dead-lettered at once, with the serde error as its reason: retrying
/// would fail the same way). An event type with no handler is dead-lettered unless
/// [`unknown_events`](Self::unknown_events) says otherwise. Each handler runs, like any handler,
/// in the transaction that marks its event processed.
///
/// Each event type takes one handler. Registering a type twice is a mistake that replacing or
/// chaining would hide, so the router keeps the first handler and the consumer builder refuses
/// to build, with a configuration error naming `route`. (A router used as a [`Handler`]
/// outside the builder runs the first handler.)
///
/// Routes are usually registered on the consumer builder, with
/// [`ConsumerBuilder::route`](super::ConsumerBuilder::route) and
/// [`route_typed`](super::ConsumerBuilder::route_typed), once the store (and so the
/// transaction type) is chosen. A router built on its own is passed with
/// [`ConsumerBuilder::router`](super::ConsumerBuilder::router); its store type must then be
/// named:
///
/// ```
/// use eventflow::inbox::Router;
/// use eventflow::transport::MemoryStream;
/// use eventflow::{HandlerResult, InboxConsumer, SqliteStore};
///
/// #[derive(serde::Deserialize)]
/// struct OrderCreated {
///     order_id: String,
/// }
///
/// let router = Router::<SqliteStore>::new()
///     .on_typed("OrderCreated", |tx, _row, order: OrderCreated| -> HandlerResult {
///         tx.execute("INSERT INTO orders (id) VALUES (?1)", [&order.order_id])?;
///         Ok(())
///     })
///     .on("OrderCancelled", |_tx, _row| Ok(()));
/// let consumer = InboxConsumer::builder()
///     .transport(MemoryStream::new())
///     .sqlite_in_memory()
///     .stream("orders")
///     .group("billing")
///     .router(router)
///     .build()?;
/// # Ok::<(), eventflow::Error>(())
/// ```
pub struct Router<S: InboxStore> {
    routes: HashMap<String, Box<dyn Handler<S>>>,
    unknown: UnknownEvents,
    /// The first event type registered twice, reported by the consumer builder.
    duplicate: Option<String>,
}

impl<S: InboxStore> Router<S> {
    /// A router with no routes, which dead-letters every event until some are added.
    pub fn new() -> Self {
        Self {
            routes: HashMap::new(),
            unknown: UnknownEvents::default(),
            duplicate: None,
        }
    }

    /// Runs `handler` for events of `event_type`, with the event's transaction and inbox row.
    ///
    /// Its result means what any handler's does (see
    /// [`ConsumerBuilder::handler`](super::ConsumerBuilder::handler)).
    pub fn on(
        mut self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut S::Tx<'_>, &InboxRow) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.insert(event_type.into(), Box::new(handler));
        self
    }

    /// Runs `handler` for events of `event_type`, with the payload deserialized into `T`.
    ///
    /// A payload that does not deserialize into `T` is dead-lettered at once, without calling
    /// `handler`, with a reason naming the event type, `T` and the serde error: it would fail
    /// the same way on every retry.
    pub fn on_typed<T: DeserializeOwned + 'static>(
        self,
        event_type: impl Into<String>,
        handler: impl Fn(&mut S::Tx<'_>, &InboxRow, T) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.on(event_type, move |tx, row| {
            let payload = row.event.payload_as::<T>().map_err(|error| {
                HandlerError::give_up(format!(
                    "payload of event type {} is not a {}: {error}",
                    row.event.event_type,
                    std::any::type_name::<T>()
                ))
            })?;
            handler(tx, row, payload)
        })
    }

    /// What happens to an event whose type has no handler. Defaults to
    /// [`UnknownEvents::DeadLetter`].
    pub fn unknown_events(mut self, policy: UnknownEvents) -> Self {
        self.unknown = policy;
        self
    }

    /// The first event type registered twice, if any.
    pub(crate) fn duplicate(&self) -> Option<&str> {
        self.duplicate.as_deref()
    }

    fn insert(&mut self, event_type: String, handler: Box<dyn Handler<S>>) {
        match self.routes.entry(event_type) {
            Entry::Vacant(route) => {
                route.insert(handler);
            }
            Entry::Occupied(route) => {
                self.duplicate.get_or_insert_with(|| route.key().clone());
            }
        }
    }
}

impl<S: InboxStore> Default for Router<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: InboxStore> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut event_types: Vec<&String> = self.routes.keys().collect();
        event_types.sort();
        f.debug_struct("Router")
            .field("event_types", &event_types)
            .field("unknown_events", &self.unknown)
            .finish_non_exhaustive()
    }
}

impl<S: InboxStore> Handler<S> for Router<S> {
    fn handle(&self, tx: &mut S::Tx<'_>, row: &InboxRow) -> HandlerResult {
        let event_type = &row.event.event_type;
        if let Some(handler) = self.routes.get(event_type) {
            return handler.handle(tx, row);
        }
        match self.unknown {
            UnknownEvents::DeadLetter => Err(HandlerError::give_up(format!(
                "no handler for event type {event_type}"
            ))),
            UnknownEvents::MarkProcessed => {
                tracing::debug!(
                    event_id = %row.event.event_id, event_type = %event_type,
                    "no handler for the event type; marked processed"
                );
                // Counted here, in the handler's transaction, since the router hears nothing
                // after the commit: like a handler, it counts again if that transaction rolls
                // back and the event is handled again.
                metrics::counter!(UNHANDLED, LABEL_EVENT_TYPE => event_type.clone()).increment(1);
                Ok(())
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::event::{Event, EventStatus};
    use crate::store::SqliteStore;
    use rusqlite::Connection;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize)]
    struct OrderCreated {
        order_id: String,
    }

    fn row(event_type: &str, payload: serde_json::Value) -> InboxRow {
        InboxRow {
            id: uuid::Uuid::new_v4(),
            stream_id: "1-0".into(),
            stream: Some("orders".into()),
            event: Event::new(event_type, uuid::Uuid::nil(), payload),
            status: EventStatus::Pending,
            retry_count: 0,
            max_retries: 3,
            received_at: chrono::Utc::now(),
            processed_at: None,
            next_retry_at: None,
            error_message: None,
            last_error_at: None,
        }
    }

    /// Runs `router` on `row` in a real SQLite transaction holding a `seen` table, and returns
    /// its result with what the handlers wrote.
    fn run(router: &Router<SqliteStore>, row: &InboxRow) -> (HandlerResult, Vec<String>) {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE seen (what TEXT NOT NULL)")
            .unwrap();
        let mut tx = conn.transaction().unwrap();
        let result = router.handle(&mut tx, row);
        let mut statement = tx.prepare("SELECT what FROM seen ORDER BY rowid").unwrap();
        let seen = statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (result, seen)
    }

    fn routes() -> Router<SqliteStore> {
        Router::<SqliteStore>::new()
            .on("OrderCancelled", |tx, row| -> HandlerResult {
                tx.execute(
                    "INSERT INTO seen VALUES (?1)",
                    [format!("cancelled {}", row.event.event_type)],
                )?;
                Ok(())
            })
            .on_typed("OrderCreated", |tx, _row, order: OrderCreated| {
                tx.execute(
                    "INSERT INTO seen VALUES (?1)",
                    [format!("created {}", order.order_id)],
                )?;
                Ok(())
            })
    }

    fn give_up_message(result: HandlerResult) -> String {
        match result {
            Err(error) if error.is_give_up() => error.to_string(),
            other => panic!("expected a give-up, got {other:?}"),
        }
    }

    #[test]
    fn each_event_goes_to_the_handler_of_its_type() {
        let router = routes();
        let (result, seen) = run(&router, &row("OrderCancelled", json!({})));
        assert!(result.is_ok());
        assert_eq!(seen, ["cancelled OrderCancelled"]);
        let (result, seen) = run(&router, &row("OrderCreated", json!({"order_id": "o-1"})));
        assert!(result.is_ok());
        assert_eq!(seen, ["created o-1"]);
    }

    #[test]
    fn a_payload_that_does_not_deserialize_gives_up_with_the_serde_error() {
        let (result, seen) = run(&routes(), &row("OrderCreated", json!({"order_id": 7})));
        let message = give_up_message(result);
        assert!(seen.is_empty(), "the typed handler must not run");
        assert!(message.starts_with("payload of event type OrderCreated is not a "));
        assert!(message.contains("OrderCreated: invalid type: integer `7`, expected a string"));
        assert!(message.contains("router::tests::OrderCreated"), "{message}");
    }

    #[test]
    fn unknown_types_are_dead_lettered_by_default() {
        assert_eq!(
            Router::<SqliteStore>::new().unknown,
            UnknownEvents::DeadLetter
        );
        let (result, seen) = run(&routes(), &row("OrderShipped", json!({})));
        assert_eq!(
            give_up_message(result),
            "no handler for event type OrderShipped"
        );
        assert!(seen.is_empty());
    }

    #[test]
    fn unknown_types_can_be_marked_processed_and_counted() {
        let router = routes().unknown_events(UnknownEvents::MarkProcessed);
        let recorder = counting::Counting::default();
        let (result, seen) = metrics::with_local_recorder(&recorder, || {
            run(&router, &row("OrderShipped", json!({})))
        });
        assert!(result.is_ok());
        assert!(seen.is_empty());
        assert_eq!(
            recorder.counted(),
            ["eventflow_inbox_unhandled_total{event_type=OrderShipped} 1"]
        );
    }

    #[test]
    fn a_type_registered_twice_keeps_its_first_handler_and_is_reported() {
        let router = routes().on("OrderCancelled", |_tx, _row| {
            Err(HandlerError::give_up("the second handler ran"))
        });
        assert_eq!(router.duplicate(), Some("OrderCancelled"));
        let (result, seen) = run(&router, &row("OrderCancelled", json!({})));
        assert!(result.is_ok());
        assert_eq!(seen, ["cancelled OrderCancelled"]);
        assert_eq!(routes().duplicate(), None);
    }

    /// A recorder that keeps each counter's count (a local one, so tests run in parallel).
    mod counting {
        use metrics::Unit;
        use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};

        #[derive(Default)]
        pub struct Counting(Mutex<Vec<(Key, Arc<AtomicU64>)>>);

        impl Counting {
            /// Each counter as `name{label=value,...} count`.
            pub fn counted(&self) -> Vec<String> {
                self.0
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(key, count)| {
                        let labels: Vec<String> = key
                            .labels()
                            .map(|l| format!("{}={}", l.key(), l.value()))
                            .collect();
                        let count = count.load(Ordering::SeqCst);
                        format!("{}{{{}}} {count}", key.name(), labels.join(","))
                    })
                    .collect()
            }
        }

        impl Recorder for Counting {
            fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
            fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
                let count = Arc::new(AtomicU64::new(0));
                self.0.lock().unwrap().push((key.clone(), count.clone()));
                Counter::from_arc(count)
            }

            fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
                Gauge::noop()
            }

            fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
                Histogram::noop()
            }
        }
    }
}
