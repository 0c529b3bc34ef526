//! Trace context end to end (feature `otel`): an event enqueued inside a span on a real
//! PostgreSQL outbox, published by the real relay to Redis and handled by a real consumer, is
//! handled in a CONSUMER span of the enqueuing span's trace, as its child; a retry runs in a
//! trace of its own, linked to the enqueuing span.
//!
//! Spans are read back from the OpenTelemetry SDK's in-memory exporter, fed by a
//! `tracing-opentelemetry` layer installed as the global subscriber (worker threads use it).
//! Needs PostgreSQL and Redis (skipped with a message when they are missing, failing under
//! `EVENTFLOW_REQUIRE_SERVICES=1`).

mod support;

use eventflow::otel::{TRACEPARENT, TRACESTATE};
use eventflow::outbox::{OutboxRelay, OutboxTable, RelayHandle};
use eventflow::retry::RetryPolicy;
use eventflow::transport::RedisStreams;
use eventflow::{ConsumerHandle, Event, HandlerError, InboxConsumer, InboxStore, PostgresStore};
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceContextExt, TraceId, TracerProvider};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// The exporter behind the global subscriber, installed once for every test of this binary;
/// each test picks its own spans out by event id.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        // The simple processor exports each span as it ends, so a test sees it at once.
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("eventflow-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other subscriber in this test binary");
        exporter
    })
}

fn finished() -> Vec<SpanData> {
    exporter().get_finished_spans().unwrap()
}

/// The handler spans of `event_id`, in the order they started.
fn process_spans(event_id: &str) -> Vec<SpanData> {
    let mut spans: Vec<SpanData> = finished()
        .into_iter()
        .filter(|span| {
            attribute(span, "messaging.message.id") == Some(Value::from(event_id.to_string()))
        })
        .collect();
    spans.sort_by_key(|span| span.start_time);
    spans
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// Retries at once, so a test need not wait a minute for the second attempt.
struct RetryNow;

impl RetryPolicy for RetryNow {
    fn delay(&self, _failures: u32, _jitter: f64) -> Duration {
        Duration::ZERO
    }
}

/// An outbox table, an inbox table and a stream of the test's own, with a relay and a consumer
/// whose handler fails while an event has failed fewer than `fail_first` times.
struct Pipeline {
    outbox: OutboxTable,
    stream: String,
    group: String,
    relay: Option<RelayHandle>,
    consumer: Option<ConsumerHandle>,
    inbox: Arc<PostgresStore>,
    _cleanup: Cleanup,
}

impl Pipeline {
    fn start(name: &str, fail_first: i32) -> Self {
        let outbox_table = support::unique_name(&format!("{name}_out"));
        let inbox_table = support::unique_name(&format!("{name}_in"));
        let stream = support::unique_name(name);
        let cleanup = Cleanup {
            outbox: outbox_table.clone(),
            inbox: inbox_table.clone(),
            stream: stream.clone(),
        };
        let redis = RedisStreams::connect(&support::redis_url()).unwrap();
        let relay = OutboxRelay::builder()
            .postgres(support::postgres_url())
            .table(&outbox_table)
            .transport(redis.clone())
            .build()
            .unwrap()
            .start()
            .unwrap();
        let inbox = Arc::new(
            PostgresStore::builder(support::postgres_url())
                .table(&inbox_table)
                .pool_size(4)
                .build()
                .unwrap(),
        );
        let consumer = InboxConsumer::builder()
            .transport(redis)
            .store(inbox.clone())
            .stream(&stream)
            .group(&inbox_table)
            .readers(1)
            .workers(2)
            .poll_interval(Duration::from_millis(100))
            .retry_policy(RetryNow)
            .handler(move |_tx, row| {
                tracing::info!("handling");
                match row.retry_count < fail_first {
                    true => Err(HandlerError::retry("not yet")),
                    false => Ok(()),
                }
            })
            .build()
            .unwrap()
            .start()
            .unwrap();
        Self {
            outbox: OutboxTable::named(&outbox_table).unwrap(),
            stream,
            group: inbox_table,
            relay: Some(relay),
            consumer: Some(consumer),
            inbox,
            _cleanup: cleanup,
        }
    }

    /// Enqueues `event` in a transaction inside a span of its own; returns that span's trace
    /// and span ids, once the span has ended.
    fn enqueue_in_a_span(&self, event: &Event) -> (TraceId, SpanId) {
        let span = tracing::info_span!("place order");
        let ids = span.in_scope(|| {
            let context = tracing::Span::current().context();
            let ids = (
                context.span().span_context().trace_id(),
                context.span().span_context().span_id(),
            );
            let mut client =
                postgres::Client::connect(&support::postgres_url(), postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            self.outbox.enqueue(&mut tx, &self.stream, event).unwrap();
            tx.commit().unwrap();
            ids
        });
        drop(span);
        assert_ne!(ids.0, TraceId::INVALID, "the layer gave the span a context");
        ids
    }

    fn wait_processed(&self, processed: u64) {
        let consumer = self.consumer.as_ref().unwrap();
        assert!(
            support::wait_until(WAIT, || consumer.stats().processed == processed),
            "{:?}",
            consumer.stats()
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            let _ = relay.shutdown(WAIT);
        }
        if let Some(consumer) = self.consumer.take() {
            let _ = consumer.shutdown(WAIT);
        }
    }
}

fn servers_available(test: &str) -> bool {
    support::postgres_available(test) && support::redis_available(test)
}

#[test]
fn the_handler_span_is_a_consumer_child_of_the_enqueuing_span_across_relay_and_redis() {
    if !servers_available("the_handler_span_is_a_consumer_child_of_the_enqueuing_span") {
        return;
    }
    exporter();
    let pipeline = Pipeline::start("ef_otel", 0);
    let event = Event::new("OrderPlaced", Uuid::new_v4(), json!({"order": 1}));
    let (trace_id, enqueue_span) = pipeline.enqueue_in_a_span(&event);
    pipeline.wait_processed(1);

    // The outbox row carried the context: W3C traceparent naming the enqueuing span.
    let row = pipeline
        .inbox
        .find_by_event_id(&event.event_id)
        .unwrap()
        .unwrap();
    assert_eq!(
        row.event.headers[TRACEPARENT],
        format!("00-{trace_id}-{enqueue_span}-01")
    );
    assert!(!row.event.headers.contains_key(TRACESTATE), "none was set");

    let spans = process_spans(&event.event_id);
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let span = &spans[0];
    assert_eq!(span.name, format!("process {}", pipeline.stream));
    assert_eq!(span.span_kind, SpanKind::Consumer);
    assert_eq!(
        span.span_context.trace_id(),
        trace_id,
        "the producer's trace"
    );
    assert_eq!(
        span.parent_span_id, enqueue_span,
        "a child of the enqueuing span"
    );
    assert!(span.parent_span_is_remote);
    assert!(span.links.links.is_empty());
    assert_ne!(span.status, Status::error(""));
    for (key, value) in [
        ("messaging.system", "redis"),
        ("messaging.operation.type", "process"),
        ("messaging.operation.name", "process"),
        ("messaging.destination.name", pipeline.stream.as_str()),
        ("messaging.consumer.group.name", pipeline.group.as_str()),
        ("messaging.message.id", event.event_id.as_str()),
    ] {
        assert_eq!(
            attribute(span, key),
            Some(value.to_string().into()),
            "{key}"
        );
    }
    // What the handler logged is an event of its span.
    assert!(
        span.events.iter().any(|e| e.name == "handling"),
        "{:?}",
        span.events
    );
}

#[test]
fn a_retry_runs_in_a_new_trace_linked_to_the_enqueuing_span() {
    if !servers_available("a_retry_runs_in_a_new_trace_linked_to_the_enqueuing_span") {
        return;
    }
    exporter();
    let pipeline = Pipeline::start("ef_otel_retry", 1);
    let event = Event::new("OrderPlaced", Uuid::new_v4(), json!({"order": 2}));
    let (trace_id, enqueue_span) = pipeline.enqueue_in_a_span(&event);
    pipeline.wait_processed(1);

    // The first delivery may run the handler twice (a batch that met a failure is redone with
    // a savepoint per event), each run a child of the enqueuing span; the retry runs once.
    let (first, retries): (Vec<SpanData>, Vec<SpanData>) = process_spans(&event.event_id)
        .into_iter()
        .partition(|span| attribute(span, "retry_count") == Some(0i64.into()));
    assert!(!first.is_empty(), "the first delivery's span");
    for span in &first {
        assert_eq!(span.span_context.trace_id(), trace_id);
        assert_eq!(span.parent_span_id, enqueue_span);
        assert!(
            matches!(span.status, Status::Error { .. }),
            "the failed attempt is marked: {:?}",
            span.status
        );
        assert_eq!(
            attribute(span, "error.type"),
            Some("handler_error".to_string().into())
        );
    }
    assert_eq!(retries.len(), 1, "{retries:#?}");
    let retry = &retries[0];
    assert_eq!(attribute(retry, "retry_count"), Some(1i64.into()));
    assert_eq!(retry.span_kind, SpanKind::Consumer);
    assert_ne!(
        retry.span_context.trace_id(),
        trace_id,
        "a trace of its own"
    );
    assert_eq!(retry.parent_span_id, SpanId::INVALID, "a root span");
    let links = &retry.links.links;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].span_context.trace_id(), trace_id);
    assert_eq!(links[0].span_context.span_id(), enqueue_span);
    assert!(!matches!(retry.status, Status::Error { .. }));
}

struct Cleanup {
    outbox: String,
    inbox: String,
    stream: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(mut db) = postgres::Client::connect(&support::postgres_url(), postgres::NoTls) {
            support::drop_inbox_table(&mut db, &self.inbox, &[]);
            let _ = db.batch_execute(&format!(
                "DROP TABLE IF EXISTS {0}; \
                 DELETE FROM eventflow_migrations WHERE target = 'outbox:{0}'",
                self.outbox
            ));
        }
        if let Ok(client) = redis::Client::open(support::redis_url()) {
            if let Ok(mut conn) = client.get_connection() {
                let _ = redis::cmd("DEL").arg(&self.stream).query::<i64>(&mut conn);
            }
        }
    }
}
